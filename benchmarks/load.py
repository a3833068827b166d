"""P4/P5: HTTP load from a second process (wrk + Lua) against the production server setup.

Server: gunicorn with the settings of a production process (DEBUG off, a SECRET_KEY, plain HTTP on
loopback, ALLOWED_HOSTS=127.0.0.1, persistent PostgreSQL connections via CONN_MAX_AGE), no access
log, and no Celery beat running, so every database write counted during a run comes from the
requests. See WORKERS below for the worker choice.

The ceiling (P4): the same gunicorn settings serving benchmarks/ceiling.py, a bare WSGI app with
one Redis call per request, under the same wrk load, in runs alternating with P4's. A gthread
worker keeps every keep-alive connection it accepts, so how wrk's connections spread over the
workers decides much of a figure: each run samples it (`ss`, connections per worker pid).

Database writes: pg_stat_database (tup_inserted + tup_updated + tup_deleted) of the bench database,
sampled before and after each run once the counters have settled (PostgreSQL flushes a backend's
counters at most once a second, when it goes idle), divided by the requests wrk completed.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection

from benchmarks import ceiling, warm
from benchmarks.context import RESULTS_DIR, Context
from benchmarks.pages import require_route
from benchmarks.report import NotAvailable, Row, median
from benchmarks.seed import device_key
from devices.models import Device, heartbeat_window
from devices.status import HeartbeatState

ROOT = Path(__file__).resolve().parent.parent
LUA_DIR = Path(__file__).resolve().parent / "wrk"


def free_port() -> int:
    # Other processes on this machine use fixed ports (8000, test servers): let the kernel choose.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = int(os.environ.get("FLEETSTATUS_BENCH_PORT") or free_port())
# The production settings of gunicorn.conf.py (threaded workers with keep-alive, cores + 1
# processes x 4 threads; that file says why), unless FLEETSTATUS_BENCH_* say otherwise, so other
# shapes can be compared (README "Performance" has the comparison).
_CONF = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
WORKERS = int(os.environ.get("FLEETSTATUS_BENCH_WORKERS") or _CONF["workers"])
WORKER_CLASS = os.environ.get("FLEETSTATUS_BENCH_WORKER_CLASS") or _CONF["worker_class"]
THREADS = int(os.environ.get("FLEETSTATUS_BENCH_THREADS") or _CONF["threads"])
REUSE_PORT = bool(_CONF.get("reuse_port"))
# wrk: one thread (the box has two cores and the server needs them); connections enough to keep
# every worker busy with a request queued behind it.
CONNECTIONS = int(os.environ.get("FLEETSTATUS_BENCH_CONNECTIONS", "12"))
# P4 must reach this share of the ceiling (benchmarks/ceiling.py) measured in the same run.
CEILING_SHARE = 0.70


# --- The server --------------------------------------------------------------------------------


class Server:
    """One gunicorn server (P4/P5 use one on PORT; P13 starts two, and points them at a cluster via env)."""

    def __init__(
        self,
        ctx: Context,
        app: str = "fleetstatus.wsgi",
        *,
        port: int = 0,
        workers: int = 0,
        env: dict[str, str] | None = None,
        name: str = "gunicorn",
    ) -> None:
        self.ctx = ctx
        self.app = app
        self.port = port or PORT
        self.workers = workers or WORKERS
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = RESULTS_DIR / f"{name}.log"

    @property
    def description(self) -> str:
        threads = f" x {THREADS} threads" if WORKER_CLASS == "gthread" else ""
        socket = ", a socket per worker (reuse_port)" if REUSE_PORT else ", one shared socket"
        return f"gunicorn {self.workers} {WORKER_CLASS} workers{threads}{socket}"

    def start(self) -> None:
        gunicorn = Path(sys.executable).with_name("gunicorn")
        if not gunicorn.exists():
            raise NotAvailable("gunicorn is not installed in the virtualenv")
        if port_open(self.port):
            raise AssertionError(f"port {self.port} is already in use (set FLEETSTATUS_BENCH_PORT)")
        env = {
            **os.environ,
            "DEBUG": "0",
            "FLEETSTATUS_HTTPS": "0",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DATABASE_URL": os.environ["DATABASE_URL"],
            "REDIS_URL": os.environ["REDIS_URL"],
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "fleetstatus.settings",
            **self.extra_env,
        }
        cmd = [
            str(gunicorn),
            self.app,
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(self.workers),
            "--worker-class",
            WORKER_CLASS,
            "--threads",
            str(THREADS),
            "--backlog",
            "2048",
            "--log-level",
            "warning",
        ]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.ctx.cleanups.append(self.stop)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"gunicorn did not answer /healthz within 60 s; see {self.log_path}")

    def worker_pids(self) -> list[int]:
        if not self.proc:
            return []
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def connection_spread(self) -> dict[int, int]:
        """Established client connections per worker pid now (from `ss`; workers with none count 0)."""
        out = subprocess.run(
            ["ss", "-Htnp", "state", "established", f"( sport = :{self.port} )"], capture_output=True, text=True
        )
        return connections_per_pid(out.stdout, self.worker_pids())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def connections_per_pid(ss_output: str, pids: list[int]) -> dict[int, int]:
    """Count the sockets of `ss -p` lines per owning pid, for the given pids (each listed, 0 if none)."""
    spread = dict.fromkeys(pids, 0)
    for line in ss_output.splitlines():
        for pid in {int(p) for p in re.findall(r"pid=(\d+)", line)}:
            if pid in spread:
                spread[pid] += 1
    return spread


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- Database write counters ---------------------------------------------------------------------


def _stat_conninfo() -> str:
    d = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        dbname=d["NAME"],
        user=d.get("USER") or None,
        password=d.get("PASSWORD") or None,
        host=d.get("HOST") or None,
        port=d.get("PORT") or None,
    )


def db_counters() -> dict[str, int]:
    with psycopg.connect(_stat_conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT tup_inserted, tup_updated, tup_deleted, xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return {"inserted": row[0], "updated": row[1], "deleted": row[2], "commits": row[3]}


SETTLE_TIMEOUT = 15.0


def settled_counters(timeout: float = SETTLE_TIMEOUT) -> dict[str, int]:
    """Counters once two samples a second and a half apart agree (every backend has flushed)."""
    deadline = time.monotonic() + timeout
    previous = db_counters()
    while time.monotonic() < deadline:
        time.sleep(1.5)
        current = db_counters()
        if current == previous:
            return current
        previous = current
    return previous


def writes(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(after[k] - before[k] for k in ("inserted", "updated", "deleted"))


# --- wrk -----------------------------------------------------------------------------------------


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if not path and shutil.which("apt-get") and os.geteuid() == 0:
        # A fresh machine: the load generator is one Debian package away (as chromium is for CI).
        print("   installing wrk (apt-get install -y wrk)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, env=env, stdout=subprocess.DEVNULL)
        path = shutil.which("wrk")
    if not path:
        raise NotAvailable("wrk is not installed (apt-get install -y wrk)")
    return path


def wrk_command(script: str, seconds: int, connections: int = CONNECTIONS, port: int = 0) -> list[str]:
    return [
        wrk_binary(),
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_DIR / script),
        f"http://127.0.0.1:{port or PORT}",
    ]


def wrk_env(devices_file: Path) -> dict[str, str]:
    return {**os.environ, "FLEETSTATUS_BENCH_DEVICES": str(devices_file), "FLEETSTATUS_BENCH_LUA": str(LUA_DIR)}


def parse_wrk(stdout: str, stderr: str = "", returncode: int | None = None) -> dict[str, Any]:
    """The summary line our Lua scripts print (common.lua), with the rate and the errors added up."""
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            result = json.loads(line.removeprefix("WRK_JSON "))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
            return result
    raise AssertionError(f"wrk printed no summary (exit {returncode}): {stdout[-500:]} {stderr[-500:]}")


def run_wrk(
    script: str,
    devices_file: Path,
    seconds: int,
    connections: int = CONNECTIONS,
    server: Server | None = None,
    port: int = 0,
) -> dict[str, Any]:
    """One wrk run; with `server`, the connections per worker are sampled half-way (result["spread"])."""
    port = server.port if server else port
    sampled: dict[int, int] = {}
    sampler = None
    if server:
        sampler = threading.Timer(seconds / 2, lambda: sampled.update(server.connection_spread()))
        sampler.start()
    try:
        out = subprocess.run(
            wrk_command(script, seconds, connections, port),
            capture_output=True,
            text=True,
            env=wrk_env(devices_file),
            timeout=seconds + 120,
        )
    finally:
        if sampler:
            sampler.cancel()
            sampler.join()
    result = parse_wrk(out.stdout, out.stderr, out.returncode)
    if server:
        result["spread"] = {str(pid): n for pid, n in sampled.items()}
    return result


# --- The devices the load picks from ------------------------------------------------------------


def polling_devices_file(ctx: Context) -> tuple[Path, int]:
    """Every device that polls in steady state: heartbeat online (frozen ones too: they get 304)."""
    path = RESULTS_DIR / f"devices-{ctx.plan.name}.txt"
    stamp = ctx.meta.get("seeded_at", "")
    stamp_path = path.with_suffix(".seeded_at")
    if path.exists() and stamp_path.exists() and stamp_path.read_text() == stamp:
        return path, sum(1 for _ in path.open())
    rows = Device.objects.filter(is_active=True).filter(
        api_heartbeat_state=HeartbeatState.ONLINE
    ) | Device.objects.filter(is_frozen=True, is_active=True)
    n = 0
    with path.open("w") as f:
        for (uuid,) in rows.order_by().values_list("uuid").iterator(chunk_size=20_000):
            f.write(f"{uuid} {device_key(uuid)}\n")
            n += 1
    stamp_path.write_text(stamp)
    return path, n


# --- The figures ---------------------------------------------------------------------------------


def spread_text(result: dict[str, Any]) -> str:
    """Connections per worker, most first, e.g. "6/4/2"."""
    counts = sorted(result.get("spread", {}).values(), reverse=True)
    return "/".join(str(n) for n in counts) if counts else "?"


def sample_fetch(devices_file: Path, port: int = 0) -> None:
    """One real fetch through the server, so a broken endpoint fails loudly before a 60 s run."""
    uuid, key = devices_file.open().readline().split()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port or PORT}/device/v3/{uuid}/state", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            if r.status not in (200, 304):
                raise AssertionError(f"sample fetch answered {r.status}")
    except urllib.error.HTTPError as exc:
        if exc.code != 304:
            raise AssertionError(f"sample fetch answered {exc.code}: {exc.read()[:300]!r}") from exc


def _load_figure(
    ctx: Context, script: str, label: str, warm_store: bool, seconds: int, with_ceiling: bool = False
) -> tuple[list[dict[str, Any]], Server, list[dict[str, Any]]]:
    """Runs of `script` against the app; with_ceiling alternates them with runs against the ceiling app."""
    devices_file, n = polling_devices_file(ctx)
    ctx.log(f"   {n:,} polling devices in {devices_file.name}")
    server = Server(ctx)
    servers = [server]
    ceiling_server = None
    try:
        server.start()
        if with_ceiling:
            ceiling.prepare(os.environ["REDIS_URL"])
            ceiling_server = Server(ctx, app="benchmarks.ceiling:application", port=free_port())
            servers.append(ceiling_server)
            ceiling_server.start()
    except BaseException:
        for s in servers:
            s.stop()
        raise
    ctx.log(
        f"   {server.description} on 127.0.0.1:{PORT}"
        + (f" (ceiling app on 127.0.0.1:{ceiling_server.port})" if ceiling_server else "")
        + f"; wrk 1 thread, {CONNECTIONS} connections, {seconds} s per run"
    )
    results: list[dict[str, Any]] = []
    ceiling_results: list[dict[str, Any]] = []
    # warm_heartbeats gives each deadline at least (tolerance - 1) x the device's interval, and at
    # least the floor of every interval, from the moment it STARTS; at a million devices the warm
    # itself takes long enough that counting from its end let the last runs pass the first deadlines.
    floor = settings.FLEETSTATUS_MIN_POLL_INTERVAL
    safe_for = (heartbeat_window(floor).total_seconds() - floor) * 0.95
    # This iteration's P4 run: the short warm-up run, two settles of the write counters at worst, the run.
    worst_run = 3 + 2 * SETTLE_TIMEOUT + seconds + 10
    warmed_at = -float("inf")
    try:
        if warm_store:
            # Steady state includes each polling device's configuration in the device cache (a
            # device's first database-path fetch puts it there; entries live for hours).
            warm.warm_device_cache(log=ctx.log)
        sample_fetch(devices_file)
        for _ in range(ctx.load_runs):
            # Warm again unless this run ends before the earliest warmed deadline, or fetches
            # start arriving late and take the database path (and write).
            if warm_store and time.monotonic() - warmed_at + worst_run > safe_for:
                warmed_at = time.monotonic()
                warm.warm_heartbeats(log=ctx.log)
            # A short run first: every worker connected to PostgreSQL and Redis, code paths warm.
            run_wrk(script, devices_file, 3)
            before = settled_counters()
            result = run_wrk(script, devices_file, seconds, server=server)
            after = settled_counters()
            result["db_writes"] = writes(before, after)
            result["db_commits"] = after["commits"] - before["commits"]
            result["writes_per_request"] = result["db_writes"] / max(result["requests"], 1)
            result["commits_per_request"] = result["db_commits"] / max(result["requests"], 1)
            results.append(result)
            ctx.log(
                f"   {label} run {len(results)}: {result['rps']:,.0f} req/s, p50 {result['p50'] / 1000:.1f} ms, "
                f"p99 {result['p99'] / 1000:.1f} ms, errors {result['errors']}, "
                f"DB writes {result['db_writes']:,} ({result['writes_per_request']:.3f}/request), "
                f"DB transactions {result['commits_per_request']:.2f}/request; "
                f"connections per worker {spread_text(result)}"
            )
            if ceiling_server:
                run_wrk(script, devices_file, 3, server=ceiling_server)
                c = run_wrk(script, devices_file, seconds, server=ceiling_server)
                ceiling_results.append(c)
                ctx.log(
                    f"   ceiling run {len(ceiling_results)}: {c['rps']:,.0f} req/s, p50 {c['p50'] / 1000:.1f} ms, "
                    f"p99 {c['p99'] / 1000:.1f} ms, errors {c['errors']}; connections per worker {spread_text(c)}"
                )
    except BaseException:
        for s in servers:
            s.stop()
        raise
    if ceiling_server:
        ceiling_server.stop()
    return results, server, ceiling_results


def _summary(results: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "rps": median([r["rps"] for r in results]),
        "p99_ms": median([r["p99"] / 1000 for r in results]),
        "p50_ms": median([r["p50"] / 1000 for r in results]),
        "errors": sum(r["errors"] for r in results),
        "writes_per_request": median([r["writes_per_request"] for r in results]),
        "db_writes": sum(r["db_writes"] for r in results),
        "commits_per_request": median([r["commits_per_request"] for r in results]),
    }


def p4(ctx: Context) -> list[Row]:
    require_route("/device/v3/" + "0" * 32 + "/state", "GET /device/v3/<uuid>/state")
    warm.store()
    results, server, ceiling_runs = _load_figure(
        ctx, "state_get.lua", "P4", warm_store=True, seconds=ctx.load_seconds, with_ceiling=True
    )
    try:
        if ctx.args.profile:
            s = _summary(results)
            if s["rps"] < 1700 or s["p99_ms"] > 50:
                profile_server(ctx, server, "state_get.lua", "p4")
    finally:
        server.stop()
    s = _summary(results)
    top = median([r["rps"] for r in ceiling_runs])
    share = s["rps"] / top if top else float("nan")
    ok = (
        s["rps"] >= 1700
        and s["p99_ms"] <= 50
        and s["errors"] == 0
        and s["db_writes"] == 0
        and share >= CEILING_SHARE
        and all(r["errors"] == 0 for r in ceiling_runs)
    )
    spreads = ", ".join(spread_text(r) for r in results)
    ceiling_spreads = ", ".join(spread_text(r) for r in ceiling_runs)
    ctx.log(
        f"   P4 {s['rps']:,.0f} req/s = {share:.0%} of the ceiling's {top:,.0f} req/s (bare WSGI app, one Redis GET); "
        f"connections per worker, by run: P4 {spreads}; ceiling {ceiling_spreads}"
    )
    measured = (
        f"{s['rps']:,.0f} req/s, p99 {s['p99_ms']:.1f} ms, {s['errors']} errors, "
        f"{s['db_writes']} DB writes ({s['writes_per_request']:.3f}/req); "
        f"ceiling {top:,.0f} req/s ({share:.0%}); connections per worker {spreads}"
    )
    return [
        Row(
            "P4",
            f"Heartbeats, {ctx.load_seconds} s x {len(results)} ({server.description})",
            f">= 1,700 req/s, p99 <= 50 ms, 0 errors, 0 DB writes, >= {CEILING_SHARE:.0%} of the ceiling",
            measured,
            ok,
            {
                "runs": results,
                "summary": s,
                "server": server.description,
                "connections": CONNECTIONS,
                "ceiling": {"runs": ceiling_runs, "rps": top, "share": round(share, 3)},
            },
        )
    ]


def p5(ctx: Context) -> list[Row]:
    require_route("/device/v3/state", "PATCH /device/v3/state")
    # Half the P4 run length: enough for a stable median, and it keeps the whole benchmark short.
    seconds = max(ctx.load_seconds // 2, 10)
    results, server, _ = _load_figure(ctx, "state_patch.lua", "P5", warm_store=False, seconds=seconds)
    try:
        if ctx.args.profile:
            s = _summary(results)
            if s["rps"] < 500 or s["p99_ms"] > 100:
                profile_server(ctx, server, "state_patch.lua", "p5")
    finally:
        server.stop()
    s = _summary(results)
    ok = s["rps"] >= 500 and s["p99_ms"] <= 100 and s["errors"] == 0
    measured = f"{s['rps']:,.0f} req/s, p99 {s['p99_ms']:.1f} ms, {s['errors']} errors; {s['writes_per_request']:.2f} DB writes/req"
    return [
        Row(
            "P5",
            f"State reports, {seconds} s x {len(results)} ({server.description})",
            ">= 500 req/s, p99 <= 100 ms, 0 errors",
            measured,
            ok,
            {"runs": results, "summary": s, "server": server.description, "connections": CONNECTIONS},
        )
    ]


# --- Profiling under load ------------------------------------------------------------------------


def profile_server(ctx: Context, server: Server, script: str, name: str, seconds: int = 20) -> None:
    """py-spy on every gunicorn worker during a wrk run; prints the hottest functions (inclusive)."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        ctx.log("   (py-spy is not installed: no profile)")
        return
    devices_file, _ = polling_devices_file(ctx)
    outputs = []
    procs = []
    for pid in server.worker_pids():
        out = RESULTS_DIR / f"profile-{name}-{pid}.txt"
        outputs.append(out)
        procs.append(
            subprocess.Popen(
                [
                    str(py_spy),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    run_wrk(script, devices_file, seconds)
    for p in procs:
        p.wait(timeout=60)
    report = summarize_collapsed([p for p in outputs if p.exists()])
    path = RESULTS_DIR / f"profile-{name}.txt"
    path.write_text(report)
    ctx.log(f"   py-spy profile of the workers under load ({path}):")
    ctx.log("\n".join("   | " + line for line in report.splitlines()[:60]))


def summarize_collapsed(paths: list[Path], top: int = 25) -> str:
    """From py-spy's collapsed stacks: the project's functions (inclusive share of the samples), then
    the functions where the samples sit (self share), e.g. psycopg's wait = waiting for PostgreSQL."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [_frame_name(f) for f in stack.split(";")]
            for f in set(frames):
                inclusive[f] = inclusive.get(f, 0) + n
            own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return "no samples"
    project = ("devices/", "fleets/", "fleetstatus/")
    mine = [(f, n) for f, n in inclusive.items() if f.startswith(project)]
    lines = [f"{total} samples of the gunicorn workers", "", "project code, inclusive % of samples:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(mine, key=lambda kv: -kv[1])[:top]]
    lines += ["", "where the samples are (self %):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    lines += ["", "libraries, inclusive % of samples:"]
    libs = [(f, n) for f, n in inclusive.items() if not f.startswith(project) and not f.startswith("gunicorn")]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(libs, key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)".
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{where}:{name}"
