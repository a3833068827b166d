"""A private 3-master Redis Cluster for the scale-out test: three redis-server processes in a temp dir.

Ports come from a range no other test uses (7100-7199), so a cluster's gossip never meets another
test's server. Nothing is persisted: the cluster is thrown away with its directory.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.reliability.services import ServiceUnavailable, port_open, wait_until

FIRST_PORT = 7101


class RedisClusterServers:
    def __init__(self, base_dir: Path, masters: int = 3, first_port: int = FIRST_PORT) -> None:
        self.server_bin = shutil.which("redis-server")
        self.cli_bin = shutil.which("redis-cli")
        if not self.server_bin or not self.cli_bin:
            raise ServiceUnavailable("redis-server or redis-cli not found")
        self.dir = base_dir / "cluster"
        self.ports = list(range(first_port, first_port + masters))
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        busy = [p for p in self.ports if port_open(p)]
        if busy:
            raise RuntimeError(f"cluster ports already in use: {busy}")
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir(parents=True)
            log = open(node_dir / "server.log", "ab")
            self.procs.append(
                subprocess.Popen(
                    [
                        self.server_bin,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                        "--protected-mode",
                        "no",
                        "--daemonize",
                        "no",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        for port in self.ports:
            wait_until(lambda port=port: port_open(port), timeout=20, what=f"redis cluster node {port}")
        subprocess.run(
            [
                self.cli_bin,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self._ok, timeout=30, what="cluster state ok")

    def _ok(self) -> bool:
        out = subprocess.run(
            [self.cli_bin, "-p", str(self.ports[0]), "cluster", "info"], capture_output=True, text=True, timeout=5
        ).stdout
        return "cluster_state:ok" in out

    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs = []
