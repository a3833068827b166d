"""P13: the scale-out figures. Heartbeat fetches over one and two web servers, against one Redis and
a 3-master Redis Cluster; and the sweep of P6 by one and by two Celery workers.

Fetches: P4's setup (benchmarks/load.py: production gunicorn settings, the live state warmed by the
app's own bulk functions, wrk with the same Lua script, database writes from pg_stat_database) in
three configurations:
  (a) one gunicorn server on one Redis (P4 itself);
  (b) two gunicorn servers on two ports, each with half of P4's worker processes rounded up, on
      one Redis: on one machine the two share its cores, so each gets half of them;
  (c) the same two servers with the live state on a 3-master Redis Cluster the bench starts on
      private ports (FLEETSTATUS_BENCH_CLUSTER_PORT, default 7201-7203) and tears down after.
Every server is up for the whole figure and the runs go a, b, c, a, b, c...: load from other work
on the machine then weighs on each configuration about equally. wrk cannot spread one run over two
hosts, so (b) and (c) run one wrk process per server, each with half of P4's connections, side by
side; their requests and rates add up, and the p99 printed is the larger of the two (percentiles
of two runs do not add). The CPU time of gunicorn (every process of the configuration's servers),
redis-server (INFO cpu of each node) and wrk (rusage of the children) during each run, beside the
machine's busy time from /proc/stat, shows what limits the figure.

Sweep: P6's setup (staleness.measure: exactly 10,000 due deadlines among every device, rows put
back after each run) run by real `celery worker` processes (concurrency 1 each) on the bench's
Redis broker. The bench sends one task per group of shards, the groups of beat's schedule
(settings.CELERY_BEAT_SCHEDULE); the task (benchmarks/sweepworker.py) is the app's sweep_shards
with P6's `now` passed in, and reports to a Redis list when done. Timed from the first enqueue to
the last report; runs alternate between one worker and two.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.test import override_settings

from benchmarks import load, staleness, warm
from benchmarks.context import RESULTS_DIR, Context
from benchmarks.pages import require_route
from benchmarks.report import Row, median

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_FIRST_PORT = int(os.environ.get("FLEETSTATUS_BENCH_CLUSTER_PORT") or 7201)
CLUSTER_MASTERS = 3
# Half of a P4 server's processes each (rounded up): two servers on one machine share its cores.
TWO_SERVER_WORKERS = int(os.environ.get("FLEETSTATUS_BENCH_P13_WORKERS") or -(-load.WORKERS // 2))
SWEEP_QUEUE = "fleetstatus-bench-sweep"
# Only the first worker consumes this one: the "one worker" runs.
FIRST_WORKER_QUEUE = "fleetstatus-bench-sweep-1"
SWEEP_TASK = "benchmarks.sweep_shards_at"
DONE_KEY = "fs:bench:sweep-done"
# The heartbeat store's warmed deadlines are at least half an interval (300 s) ahead (load.py).
WARM_FOR = 290


# --- A private Redis Cluster -----------------------------------------------------------------------


def cluster_server_command(server_bin: str, port: int, node_dir: Path) -> list[str]:
    """One master of a throw-away cluster: loopback only, nothing persisted."""
    return [
        server_bin,
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
        "--maxmemory-policy",
        "noeviction",
        "--daemonize",
        "no",
    ]


def cluster_create_command(cli_bin: str, ports: Sequence[int]) -> list[str]:
    return [
        cli_bin,
        "--cluster",
        "create",
        *(f"127.0.0.1:{p}" for p in ports),
        "--cluster-replicas",
        "0",
        "--cluster-yes",
    ]


def cluster_url(ports: Sequence[int]) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)


class BenchCluster:
    def __init__(self, first_port: int = CLUSTER_FIRST_PORT, masters: int = CLUSTER_MASTERS) -> None:
        self.server_bin = shutil.which("redis-server")
        self.cli_bin = shutil.which("redis-cli")
        self.ports = list(range(first_port, first_port + masters))
        self.procs: list[subprocess.Popen] = []
        self.dir: Path | None = None

    @property
    def url(self) -> str:
        return cluster_url(self.ports)

    def start(self) -> None:
        if not self.server_bin or not self.cli_bin:
            raise AssertionError("redis-server and redis-cli are needed for the cluster of P13")
        busy = [p for p in self.ports if load.port_open(p)]
        if busy:
            raise AssertionError(f"cluster ports already in use: {busy} (set FLEETSTATUS_BENCH_CLUSTER_PORT)")
        self.dir = Path(tempfile.mkdtemp(prefix="fleetstatus-bench-cluster-"))
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir()
            with (node_dir / "server.log").open("ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        cluster_server_command(self.server_bin, port, node_dir),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        _wait(lambda: all(load.port_open(p) for p in self.ports), 20, "the cluster's nodes")
        subprocess.run(cluster_create_command(self.cli_bin, self.ports), check=True, capture_output=True, timeout=60)
        _wait(self._ok, 30, "cluster_state:ok")

    def _ok(self) -> bool:
        return all(redis.Redis(port=p).cluster("info").get("cluster_state") == "ok" for p in self.ports)

    def keys_per_node(self) -> list[int]:
        return [redis.Redis(port=p).dbsize() for p in self.ports]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, redis.RedisError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# --- wrk runs side by side -----------------------------------------------------------------------


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result of wrk processes that ran at the same time: counts and rates add up; of the
    latency percentiles, the worst process's (an upper bound: percentiles do not add)."""
    out: dict[str, Any] = {"processes": len(results)}
    for k in ("requests", "bytes", "connect", "read", "write", "status", "timeout", "errors", "rps"):
        out[k] = sum(r[k] for r in results)
    for k in ("p50", "p90", "p99", "max", "duration_us"):
        out[k] = max(r[k] for r in results)
    return out


# --- CPU accounting ------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def pid_cpu_ticks(stat: str) -> int:
    """utime + stime of /proc/<pid>/stat (fields 14 and 15; the name in parentheses may hold spaces)."""
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def machine_ticks(proc_stat: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all cores from /proc/stat's first line (idle and iowait are not busy)."""
    values = [int(v) for v in proc_stat.splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
    total = sum(values[:8])
    return total - values[3] - values[4], total


def _pids_cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            ticks += pid_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())
        except (OSError, IndexError, ValueError):
            pass
    return ticks / CLOCK_TICKS


def _redis_cpu_seconds(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        info = redis.Redis(port=port).info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def _children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_snapshot(servers: list[load.Server], redis_ports: list[int]) -> dict[str, float]:
    busy, total = machine_ticks(Path("/proc/stat").read_text())
    pids = [pid for s in servers if s.proc for pid in (s.proc.pid, *s.worker_pids())]
    return {
        "at": time.monotonic(),
        "gunicorn": _pids_cpu_seconds(pids),
        "redis": _redis_cpu_seconds(redis_ports),
        "wrk": _children_cpu_seconds(),
        "machine_busy": busy / CLOCK_TICKS,
        "machine_total": total / CLOCK_TICKS,
    }


def cpu_shares(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per process group, percent of one core over the interval; `other` is the rest of the machine's busy time."""
    wall = after["at"] - before["at"]
    shares = {k: 100 * (after[k] - before[k]) / wall for k in ("gunicorn", "redis", "wrk")}
    busy = 100 * (after["machine_busy"] - before["machine_busy"]) / wall
    shares["other"] = max(busy - sum(shares.values()), 0.0)
    shares["machine_busy"] = busy
    cores = (after["machine_total"] - before["machine_total"]) / wall
    shares["machine_percent_of_all"] = busy / cores if cores else float("nan")
    return shares


def cpu_text(s: dict[str, float]) -> str:
    text = (
        f"CPU % of a core: gunicorn {s['gunicorn']:.0f}, redis {s['redis']:.0f}, wrk {s['wrk']:.0f}, "
        f"other {s['other']:.0f}; machine busy {s['machine_percent_of_all']:.0f} %"
    )
    if "gunicorn_ms_per_fetch" in s:
        text += (
            f"; CPU ms per fetch: gunicorn {s['gunicorn_ms_per_fetch']:.2f}, redis {s['redis_ms_per_fetch']:.2f}, "
            f"wrk {s['wrk_ms_per_fetch']:.2f}"
        )
    return text


# --- The fetch configurations ------------------------------------------------------------------


def _live_redis_port() -> int:
    return redis.Redis.from_url(settings.REDIS_URL).connection_pool.connection_kwargs.get("port", 6379)


@dataclass
class Configuration:
    key: str
    label: str
    servers: list[load.Server]
    redis_ports: list[int]
    cluster_url: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)

    def live(self) -> AbstractContextManager:
        """The bench process's own warm-up must write where the servers read."""
        return override_settings(FLEETSTATUS_LIVE_REDIS_URL=self.cluster_url) if self.cluster_url else nullcontext()

    @property
    def store(self) -> str:
        return self.cluster_url or "default"


def _run_once(ctx: Context, c: Configuration, devices_file: Path, seconds: int) -> dict[str, Any]:
    connections = max(load.CONNECTIONS // len(c.servers), 1)
    for server in c.servers:
        load.run_wrk("state_get.lua", devices_file, 3, connections, port=server.port)
    counters_before = load.settled_counters()
    cpu_before = cpu_snapshot(c.servers, c.redis_ports)
    procs = [
        subprocess.Popen(
            load.wrk_command("state_get.lua", seconds, connections, server.port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=load.wrk_env(devices_file),
        )
        for server in c.servers
    ]
    parts = []
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 120)
        parts.append(load.parse_wrk(out, err, proc.returncode))
    cpu_after = cpu_snapshot(c.servers, c.redis_ports)
    counters_after = load.settled_counters()
    result = combine(parts)
    result["per_process_rps"] = [round(p["rps"]) for p in parts]
    result["db_writes"] = load.writes(counters_before, counters_after)
    result["cpu"] = cpu_shares(cpu_before, cpu_after)
    # CPU time per fetch (ms), which contention for the cores does not change the way it changes the rate.
    for k in ("gunicorn", "redis", "wrk"):
        result["cpu"][f"{k}_ms_per_fetch"] = 10 * result["cpu"][k] / result["rps"] if result["rps"] else float("nan")
    c.results.append(result)
    ctx.log(
        f"   P13 {c.key} run {len(c.results)}: {result['rps']:,.0f} req/s {result['per_process_rps']}, "
        f"p99 {result['p99'] / 1000:.1f} ms, errors {result['errors']}, DB writes {result['db_writes']:,}; "
        f"{cpu_text(result['cpu'])}"
    )
    return result


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rps": median([r["rps"] for r in results]),
        "p99_ms": median([r["p99"] / 1000 for r in results]),
        "errors": sum(r["errors"] for r in results),
        "db_writes": sum(r["db_writes"] for r in results),
        "cpu": {k: median([r["cpu"][k] for r in results]) for k in results[0]["cpu"]},
    }


def p13_fetches(ctx: Context) -> list[Row]:
    """The three configurations side by side (every server up at once), their runs interleaved
    a, b, c, a, b, c...: other work on the machine then weighs on each about equally."""
    require_route("/device/v3/" + "0" * 32 + "/state", "GET /device/v3/<uuid>/state")
    warm.store()
    devices_file, n = load.polling_devices_file(ctx)
    ctx.log(f"   {n:,} polling devices in {devices_file.name}")
    seconds = ctx.load_seconds
    cluster = BenchCluster()
    servers: list[load.Server] = []

    def server(workers: int, env: dict[str, str] | None = None, port: int = 0) -> load.Server:
        s = load.Server(
            ctx, port=port or load.free_port(), workers=workers, env=env, name=f"gunicorn-p13-{len(servers)}"
        )
        servers.append(s)
        return s

    try:
        cluster.start()
        ctx.log(f"   started a {CLUSTER_MASTERS}-master Redis Cluster on ports {cluster.ports}")
        on_cluster = {"FLEETSTATUS_LIVE_REDIS_URL": cluster.url}
        configurations = [
            Configuration("(a)", "1 server, 1 Redis", [server(load.WORKERS, port=load.PORT)], [_live_redis_port()]),
            Configuration(
                "(b)",
                "2 servers, 1 Redis",
                [server(TWO_SERVER_WORKERS), server(TWO_SERVER_WORKERS)],
                [_live_redis_port()],
            ),
            Configuration(
                "(c)",
                f"2 servers, {CLUSTER_MASTERS}-master Redis Cluster",
                [server(TWO_SERVER_WORKERS, on_cluster), server(TWO_SERVER_WORKERS, on_cluster)],
                cluster.ports,
                cluster.url,
            ),
        ]
        for s in servers:
            s.start()
        for c in configurations:
            ctx.log(
                f"   {c.key} {c.label}: {len(c.servers)} x {c.servers[0].description} on ports "
                f"{[s.port for s in c.servers]}; {len(c.servers)} wrk x 1 thread x "
                f"{max(load.CONNECTIONS // len(c.servers), 1)} connections, {seconds} s per run"
            )
        warmed: dict[str, float] = {}
        for c in configurations:
            if c.store not in warmed:
                with c.live():
                    warm.warm_device_cache(log=ctx.log)
                warmed[c.store] = -1e9
            for s in c.servers:
                load.sample_fetch(devices_file, s.port)
        for _ in range(ctx.load_runs):
            for c in configurations:
                if time.monotonic() - warmed[c.store] + seconds + 20 > WARM_FOR:
                    with c.live():
                        warm.warm_heartbeats(log=ctx.log)
                    warmed[c.store] = time.monotonic()
                _run_once(ctx, c, devices_file, seconds)
        ctx.log(f"   keys per cluster node: {cluster.keys_per_node()}")
    finally:
        for s in servers:
            s.stop()
        cluster.stop()
    rows = []
    for c in configurations:
        s = _summary(c.results)
        rows.append(
            Row(
                "P13",
                f"{c.key} fetches, {c.label}: {len(c.servers)} x {c.servers[0].description}, "
                f"{seconds} s x {len(c.results)}",
                "(scale-out: informational)",
                f"{s['rps']:,.0f} req/s, p99 {s['p99_ms']:.1f} ms, {s['errors']} errors, "
                f"{s['db_writes']} DB writes; {cpu_text(s['cpu'])}",
                None,
                {"runs": c.results, "summary": s, "servers": len(c.servers), "cluster": bool(c.cluster_url)},
            )
        )
    return rows


# --- The sweep by Celery workers ---------------------------------------------------------------


def sweep_groups() -> list[list[int]]:
    """The shard groups beat sends one sweep_shards task each for, every interval."""
    return [
        list(entry["args"][0])
        for entry in settings.CELERY_BEAT_SCHEDULE.values()
        if entry["task"] == "devices.tasks.sweep_shards"
    ]


def worker_command(celery_bin: str, index: int, queues: Sequence[str]) -> list[str]:
    return [
        celery_bin,
        "-A",
        "benchmarks.sweepworker",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        "1",
        "--queues",
        ",".join(queues),
        "--hostname",
        f"bench-sweep-{index}@%h",
        "--without-gossip",
        "--without-mingle",
    ]


class SweepWorker:
    def __init__(self, ctx: Context, index: int, queues: Sequence[str]) -> None:
        self.ctx = ctx
        self.index = index
        self.queues = list(queues)
        self.log_path = RESULTS_DIR / f"celery-p13-{index}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        celery = Path(sys.executable).with_name("celery")
        self.log_path.write_bytes(b"")
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "fleetstatus.settings"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                worker_command(str(celery), self.index, self.queues),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.ctx.cleanups.append(self.stop)
        _wait(lambda: self.check_alive() and "ready." in self.log_path.read_text(errors="replace"), 60, "celery")

    def check_alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"celery worker exited; see {self.log_path}")
        return True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # Stop the whole group: the prefork child too.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def sweep_by_workers(
    groups: list[list[int]], queue: str, workers: list[SweepWorker], timeout: float = 600
) -> Callable[[datetime], dict[str, Any]]:
    """A sweep callable for staleness.measure: one task per group to the workers, back when all reported."""
    from fleetstatus.celery import app

    client = redis.Redis.from_url(settings.REDIS_URL)

    def run(now: datetime) -> dict[str, Any]:
        client.delete(DONE_KEY)
        for group in groups:
            app.send_task(SWEEP_TASK, args=(group, now.isoformat(), DONE_KEY), queue=queue)
        reports = []
        give_up = time.monotonic() + timeout
        while len(reports) < len(groups):
            item = client.blpop([DONE_KEY], timeout=2)
            if item is not None:
                reports.append(json.loads(item[1]))
                continue
            for worker in workers:
                worker.check_alive()
            if time.monotonic() > give_up:
                raise AssertionError(f"only {len(reports)} of {len(groups)} sweep tasks reported in {timeout} s")
        failed = [r for r in reports if r.get("error")]
        if failed:
            raise AssertionError(f"sweep tasks failed: {failed}")
        return {
            "expired": sum(r["expired"] for r in reports),
            "tasks": len(reports),
            "workers": len({r["worker"] for r in reports}),
            "task_seconds": [r["seconds"] for r in reports],
        }

    return run


def p13_sweep(ctx: Context) -> list[Row]:
    """Runs alternate between one worker and two (both stay up; "one" sends to a queue only the
    first consumes), so other work on the machine weighs on both about equally."""
    staleness._run_sweep()
    warm.store()
    ids = ctx.meta["p6_due_ids"]
    now = datetime.fromisoformat(ctx.meta["seeded_at"])
    groups = sweep_groups()
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(SWEEP_QUEUE, FIRST_WORKER_QUEUE)
    workers = [SweepWorker(ctx, 1, [FIRST_WORKER_QUEUE, SWEEP_QUEUE]), SweepWorker(ctx, 2, [SWEEP_QUEUE])]
    by_one = sweep_by_workers(groups, FIRST_WORKER_QUEUE, workers)
    by_two = sweep_by_workers(groups, SWEEP_QUEUE, workers)
    times: dict[int, list[float]] = {1: [], 2: []}
    details: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    try:
        for worker in workers:
            worker.start()
        # The store empty of fetches to write back (P13's fetch runs left some), then rounds with
        # nothing due: each worker connected to PostgreSQL and Redis, code loaded.
        warm.warm_heartbeats(log=ctx.log)
        by_one(now)
        by_two(now)
        by_two(now)
        for _ in range(3):
            for count, sweep in ((1, by_one), (2, by_two)):
                result = staleness.measure(ctx, ids, now, 1, sweep=sweep, warm_first=False)
                times[count].append(result["median"])
                details[count].append(result["last_details"])
                ctx.log(
                    f"   {len(ids):,} due, {len(groups)} tasks, {count} worker(s): {result['median']:.2f} s "
                    f"({result['last_details']})"
                )
    finally:
        for worker in workers:
            worker.stop()
    one, two = median(times[1]), median(times[2])
    return [
        Row(
            "P13",
            f"sweep, {len(ids):,} due among {ctx.plan.total_devices:,}, {len(groups)} shard tasks: 1 vs 2 workers",
            "(scale-out: informational)",
            f"1 worker {one:.2f} s, 2 workers {two:.2f} s ({one / two:.2f}x)",
            None,
            {"one_worker_s": times[1], "two_workers_s": times[2], "details": details, "groups": groups},
        )
    ]


def p13(ctx: Context) -> list[Row]:
    return p13_fetches(ctx) + p13_sweep(ctx)
