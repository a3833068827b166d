"""Throwaway real services for fault tests: a PostgreSQL cluster, a Redis server and the app's processes.

Fault tests stop, kill and restart these at will, so they must never be the machine's shared
PostgreSQL (5432) or Redis (6379): every instance here lives in a temporary directory, listens on a
free loopback port and is owned by the test that started it. CI runs as root, so initdb and
pg_ctl run as the `postgres` OS user through runuser (PostgreSQL refuses to run as root); a
developer running as themselves runs them directly. A missing tool raises ServiceUnavailable, which
conftest.py turns into a skip with the reason (a failure with FLEETSTATUS_REQUIRE_SERVICES=1).

Everything that waits for a process does so with a bounded poll (`wait_until`), never a bare sleep.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


class ServiceUnavailable(RuntimeError):
    """A tool a fault test needs (server binaries, runuser, the postgres user) is not on this machine."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll predicate until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a service still starting refuses connections: keep polling
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f" (last error: {last_error})" if last_error else "")
            )
        time.sleep(interval)


def _postgres_bin() -> Path:
    # One search for the server binaries, shared with the benchmarks' own cluster.
    from benchmarks.pgserver import postgres_bin

    try:
        return postgres_bin()
    except RuntimeError as exc:
        raise ServiceUnavailable(str(exc)) from None


def _run_as_postgres_prefix() -> list[str]:
    """What runs a command as the `postgres` OS user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServiceUnavailable(
            "running as root, PostgreSQL must run as the postgres user, but runuser is not installed"
        )
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceUnavailable(
            "running as root, PostgreSQL must run as the postgres user, which does not exist"
        ) from None
    return [runuser, "-u", "postgres", "--"]


def _redis_bin() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise ServiceUnavailable("redis-server not found")
    return found


class PostgresServer:
    """A private PostgreSQL cluster in a temp dir, on a free port, socket in the same dir."""

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.bin = _postgres_bin()
        self.dir = base_dir / "pg"
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.log = self.dir / "server.log"
        self.port = port or free_port()
        self._prefix = _run_as_postgres_prefix()
        self._as_postgres = bool(self._prefix)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [*self._prefix, *args]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError as exc:
            raise ServiceUnavailable(f"{cmd[0]} not found: {exc}") from None
        if result.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stdout}{result.stderr}\n{tail}")
        return result

    def init(self) -> None:
        self.socket_dir.mkdir(parents=True)
        if self._as_postgres:
            # mkdtemp makes 0700 directories owned by root; the postgres user must reach its data dir.
            for parent in (self.dir.parent, self.dir):
                parent.chmod(0o755)
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        # fsync off and --no-sync: the cluster is thrown away; durability is not what is tested.
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        wait_until(lambda: port_open(self.port), timeout=30, what=f"PostgreSQL on {self.port}")

    def stop(self, mode: str = "fast") -> None:
        """mode: smart | fast (disconnect clients, clean shutdown) | immediate (like a crash)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists() and port_open(self.port)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def sql(self, statement: str, *, dbname: str = "postgres", params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True, connect_timeout=5
        ) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str, template: str | None = None) -> None:
        self.sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if self.data.exists() and (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except Exception:
                pass


class RedisServer:
    """A private redis-server without persistence: a restart loses every key, like a crash would."""

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.bin = _redis_bin()
        self.dir = base_dir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.dir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                self.bin,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(self.ping, timeout=20, what=f"Redis on {self.port}")

    def ping(self) -> bool:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1).ping())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def close(self) -> None:
        self.stop()


@dataclass
class AppStack:
    """The app's real processes (gunicorn, Celery worker, Celery beat) against private services.

    `env` is the environment every process and every `manage()` call gets; each process's output
    goes to a log file in `dir`, shown when a test fails.
    """

    dir: Path
    env: dict[str, str]
    pg: PostgresServer | None = None
    dbname: str = ""
    web_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        existing = self.procs.get(name)
        assert existing is None or existing.poll() is not None, f"{name} already running"
        log = open(self.dir / f"{name}.log", "ab")
        log.write(f"\n===== start {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n".encode())
        log.flush()
        # Own session: stopping a process stops its children (gunicorn's and Celery's workers) too.
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_web(self, workers: int = 2, threads: int = 4) -> None:
        self._spawn(
            "web",
            [
                str(VENV_BIN / "gunicorn"),
                "fleetstatus.wsgi",
                "--bind",
                f"127.0.0.1:{self.web_port}",
                "--workers",
                str(workers),
                "--threads",
                str(threads),
                "--graceful-timeout",
                "5",
                "--timeout",
                "60",
            ],
        )
        import httpx

        wait_until(
            lambda: httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200, timeout=60, what="gunicorn"
        )

    def start_worker(self, name: str = "worker", concurrency: int = 2) -> None:
        self._spawn(
            name,
            [
                str(VENV_BIN / "celery"),
                "-A",
                "fleetstatus",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
        )
        wait_until(lambda: "ready." in self.log(name), timeout=60, what=f"celery {name}")

    def start_beat(self, name: str = "beat", *extra: str) -> None:
        # Each beat keeps its schedule file in its own directory, as two machines would.
        var = self.dir / f"{name}-var"
        var.mkdir(exist_ok=True)
        self._spawn(
            name,
            [
                str(VENV_BIN / "celery"),
                "-A",
                "fleetstatus",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(var / "celerybeat-schedule"),
                *extra,
            ],
            env={"FLEETSTATUS_VAR_DIR": str(var)},
        )
        wait_until(lambda: "beat: Starting" in self.log(name), timeout=60, what=f"celery {name}")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs_tail(self, chars: int = 8000) -> str:
        return "\n".join(
            f"--- {p.stem} ---\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(self.dir.glob("*.log"))
        )

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """A query on this stack's database straight from the test (no Django start-up cost)."""
        assert self.pg is not None
        return self.pg.sql(statement, dbname=self.dbname, params=params)

    def statuses(self) -> dict[str, tuple[str, str]]:
        """uuid -> (overall_status, api_heartbeat_state), read directly."""
        return {
            u: (s, h) for u, s, h in self.sql("SELECT uuid, overall_status, api_heartbeat_state FROM devices_device")
        }

    def sweep_runs(self) -> list[str]:
        """The worker's log lines of finished sweeps (Celery logs each task's result at INFO)."""
        return [line for line in self.log_all("worker") if "devices.tasks.sweep" in line and "succeeded" in line]

    def log_all(self, prefix: str) -> list[str]:
        return [
            line for p in sorted(self.dir.glob(f"{prefix}*.log")) for line in p.read_text(errors="replace").splitlines()
        ]

    def manage(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def probe(self, command: str, **kwargs: Any) -> Any:
        """Run tests/reliability/probe.py against this stack's database and return its JSON answer."""
        result = subprocess.run(
            [sys.executable, "-m", "tests.reliability.probe", command, json.dumps(kwargs)],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"probe {command} failed: {result.stdout}{result.stderr}")
        return json.loads(result.stdout.strip().splitlines()[-1])


def app_env(pg: PostgresServer, redis_server: RedisServer, dbname: str, **extra: str) -> dict[str, str]:
    """Environment for the app's processes: production settings over plain HTTP, short intervals."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FLEETSTATUS_", "PYTEST"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        DJANGO_SETTINGS_MODULE="fleetstatus.settings",
        SECRET_KEY="fleetstatus-fault-tests-not-secret",
        DEBUG="0",
        FLEETSTATUS_HTTPS="0",
        DATABASE_URL=pg.url(dbname),
        REDIS_URL=redis_server.url(0),
        FLEETSTATUS_SWEEP_INTERVAL="1",
        FLEETSTATUS_MIN_POLL_INTERVAL="1",
        FLEETSTATUS_DEFAULT_POLL_INTERVAL="2",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def make_base_dir(prefix: str = "fs-reliability-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
