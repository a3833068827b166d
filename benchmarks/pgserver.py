"""The benchmarks' own PostgreSQL server, configured as a 1,000,000-device deployment should be.

A developer's or CI's PostgreSQL is set up for tests: on this kind of machine it has the package
default of 128 MB of shared buffers and autovacuum switched off. At a million devices the device
table and its indexes are about 1.2 GB, so with 128 MB most index pages that a device write touches
are not in PostgreSQL's buffers, every checkpoint (1 GB of WAL) makes the next write of each page a
full-page image, and without autovacuum index-only scans degrade run after run. Those are figures of
the server's configuration, not of fleetstatus.

So when DATABASE_URL is not set, `python3 dev.py bench` runs its own cluster (initdb once, kept so
`--skip-seed` can reuse the data, started for the run and stopped after) with the settings README's
"PostgreSQL for a large fleet" recommends (PRODUCTION_SETTINGS). The cluster lives in
`var/bench-postgres/` of the checkout, unless the server must run as the `postgres` user (we are root)
and that user cannot enter the checkout (a clone under /root, a `mktemp -d` folder): then it lives in
/var/tmp/fleetstatus-bench-<hash of the checkout's path> (FLEETSTATUS_BENCH_PG_DIR overrides both).
Durability is not traded for speed: fsync, full_page_writes and synchronous_commit stay on.
With DATABASE_URL set, the bench uses that server as it is (and prints its settings).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DATA_ROOT = ROOT / "var" / "bench-postgres"
PORT = int(os.environ.get("FLEETSTATUS_BENCH_PG_PORT", "55432"))
DATABASE = "fleetstatus_bench"

# A large-fleet deployment on a machine with 24 GB of RAM and an SSD (README "PostgreSQL for a large fleet").
PRODUCTION_SETTINGS: dict[str, str] = {
    "shared_buffers": "4GB",  # ~1/4 of RAM: the device table and its indexes stay in PostgreSQL's cache
    "effective_cache_size": "12GB",
    "max_wal_size": "8GB",  # fewer checkpoints, so fewer full-page images per device write
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    "wal_compression": "on",
    "random_page_cost": "1.1",  # SSD
    "work_mem": "16MB",
    "maintenance_work_mem": "1GB",
    "autovacuum": "on",
    "max_connections": "200",
}

# Shown next to the figures, whichever server ran them.
REPORTED = ("shared_buffers", "max_wal_size", "autovacuum", "synchronous_commit", "fsync", "wal_compression")


def postgres_bin() -> Path:
    """Where initdb and pg_ctl are: FLEETSTATUS_PG_BIN, else Debian's newest /usr/lib/postgresql/<version>/bin, else PATH."""
    configured = os.environ.get("FLEETSTATUS_PG_BIN")
    candidates = [configured] if configured else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(str(Path(found).resolve().parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql or set FLEETSTATUS_PG_BIN"
    )


def _as_postgres_prefix() -> list[str]:
    """Root runs the server as the `postgres` OS user (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root, the bench PostgreSQL must run as the postgres user: install runuser")
    return [runuser, "-u", "postgres", "--"]


def data_root(prefix: list[str]) -> Path:
    """Where the cluster lives: in the checkout if the server's OS user can reach it, else under /var/tmp."""
    configured = os.environ.get("FLEETSTATUS_BENCH_PG_DIR")
    if configured:
        return Path(configured).resolve()
    if not prefix:
        return LOCAL_DATA_ROOT
    LOCAL_DATA_ROOT.parent.mkdir(parents=True, exist_ok=True)
    # The postgres user needs search permission on every folder above its data directory.
    reachable = (
        subprocess.run([*prefix, "test", "-x", str(LOCAL_DATA_ROOT.parent)], capture_output=True).returncode == 0
    )
    if reachable:
        return LOCAL_DATA_ROOT
    digest = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"fleetstatus-bench-{digest}"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class BenchPostgres:
    def __init__(self, log) -> None:
        self.log = log
        self.bin = postgres_bin()
        self.prefix = _as_postgres_prefix()
        self.root = data_root(self.prefix)
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.started_here = False

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{PORT}/{DATABASE}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        # cwd: initdb and postgres change back to the directory they started in, which the postgres
        # user may not be allowed to enter (the checkout); the cluster's own folder always works.
        result = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            tail = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stdout}{result.stderr}\n{tail}")

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.prefix:
                shutil.chown(self.root, "postgres", "postgres")
            self.log(f"initdb {self.data} (once; the seeded data is kept there for --skip-seed)")
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        if _port_open(PORT):
            self.log(f"bench PostgreSQL already listening on 127.0.0.1:{PORT}")
            return
        options = " ".join(
            [f"-p {PORT}", f"-k {self.root}", "-c listen_addresses=127.0.0.1"]
            + [f"-c {name}={value}" for name, value in PRODUCTION_SETTINGS.items()]
        )
        self.log(
            f"starting the bench PostgreSQL on 127.0.0.1:{PORT} ("
            + ", ".join(f"{k}={v}" for k, v in PRODUCTION_SETTINGS.items())
            + ")"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-o",
            options,
            "-w",
            "-t",
            "120",
            "start",
        )
        deadline = time.monotonic() + 30
        while not _port_open(PORT):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the bench PostgreSQL did not listen on {PORT}; see {self.logfile}")
            time.sleep(0.2)
        self.started_here = True

    def stop(self) -> None:
        if self.started_here:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "120", "stop")
            self.started_here = False


def server_settings(connection) -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name", [list(REPORTED)]
        )
        return dict(cursor.fetchall())
