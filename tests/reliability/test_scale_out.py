"""Several machines' worth of processes: live state on a 3-master Redis Cluster, two web processes,
two Celery workers, two beats (one standby), then a dead web process and a dead active beat.

The devices poll over both web ports as agents behind a load balancer would. Checks, before and
after the faults: statuses equal the rule, silent devices go Offline at their deadlines, each
transition is recorded once, no device that kept fetching is ever Offline, and the standby beat
takes over within two sweep intervals. The broker stays on a plain Redis (Celery's Redis transport
cannot use a cluster); the live state is seen on every master of the cluster.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis

from tests.reliability import figures
from tests.reliability.cluster import RedisClusterServers
from tests.reliability.load import HeartbeatLoad, false_offlines, register_devices
from tests.reliability.services import VENV_BIN, AppStack, ServiceUnavailable, free_port, wait_until
from tests.reliability.test_faults import _all_online, _assert_consistent, _db_now, _expiries, _transitions

pytestmark = [pytest.mark.faults, pytest.mark.slow]

DEVICES = 300
POLL_INTERVAL = 6  # seconds; fleet setting (a window of 9 s: the load generator shares 2 busy cores)
WINDOW = timedelta(seconds=POLL_INTERVAL * 1.5)
SWEEP_INTERVAL = 2
PERIOD = 2.0  # how often each simulated device fetches


@pytest.fixture
def cluster(reliability_dir: Path) -> Iterator[RedisClusterServers]:
    try:
        servers = RedisClusterServers(reliability_dir / f"cluster-{uuid.uuid4().hex[:8]}")
    except ServiceUnavailable as exc:
        if os.environ.get("FLEETSTATUS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"the scale-out test needs real services: {exc}")
        pytest.skip(str(exc))
    try:
        servers.start()
        yield servers
    finally:
        servers.close()


def _start_web(stack: AppStack, name: str, port: int) -> str:
    stack._spawn(
        name,
        [
            str(VENV_BIN / "gunicorn"),
            "fleetstatus.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "4",
            "--graceful-timeout",
            "5",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, timeout=60, what=name)
    return url


def _offline(stack: AppStack, uuids: list[str]) -> bool:
    states = stack.statuses()
    return all(states[u][1] == "offline" for u in uuids)


def _sweep_success(stack: AppStack):
    rows = stack.sql("SELECT last_success_at FROM devices_taskrun WHERE name = 'sweep'")
    return rows[0][0] if rows else None


def test_two_webs_two_workers_two_beats_on_a_redis_cluster(make_stack, cluster: RedisClusterServers) -> None:
    stack = make_stack(
        FLEETSTATUS_LIVE_REDIS_URL=cluster.url(),
        FLEETSTATUS_SWEEP_INTERVAL=str(SWEEP_INTERVAL),
        FLEETSTATUS_DEFAULT_POLL_INTERVAL=str(POLL_INTERVAL),
    )
    keys = stack.probe("setup", poll_interval=POLL_INTERVAL)
    url1 = _start_web(stack, "web1", stack.web_port)
    url2 = _start_web(stack, "web2", free_port())
    stack.start_worker("worker1", concurrency=1)
    stack.start_worker("worker2", concurrency=1)
    stack.start_beat("beat1")
    wait_until(lambda: "Acquired lock" in stack.log("beat1"), timeout=30, what="beat1 holding the lock")
    stack.start_beat("beat2")

    devices = register_devices(url1, keys["provisioning_key"], DEVICES)
    uuids = [d.uuid for d in devices]
    loads = [HeartbeatLoad(url1, devices[::2], period=PERIOD), HeartbeatLoad(url2, devices[1::2], period=PERIOD)]
    for load in loads:
        load.start()
    try:
        wait_until(lambda: _all_online(stack, uuids), timeout=60, what="every device's heartbeat online")
        # The live state really is spread over the cluster: every master holds some of the shards.
        sizes = [redis.Redis(port=p).dbsize() for p in cluster.ports]
        assert all(sizes), f"keys per master: {sizes}"

        # Phase 1: everything up. A few devices on each web port go silent.
        first_silent = uuids[:20]
        for load in loads:
            load.silence(first_silent)
        wait_until(lambda: _offline(stack, first_silent), timeout=40, what="first silent devices offline")
        assert "Sending due task" not in stack.log("beat2"), "the standby beat scheduled while the other held the lock"
        workers_swept = [n for n in ("worker1", "worker2") if "devices.tasks.sweep_shards" in stack.log(n)]

        # Phase 2: web1's machine and the active beat die. Its devices reach web2 (the load balancer).
        stack.stop("web1", signal.SIGKILL)
        moved = HeartbeatLoad(url2, loads[0].devices, period=PERIOD, silenced=set(loads[0].silenced)).start()
        loads[0].stop()
        loads.append(moved)
        before_kill = _db_now(stack)
        killed = time.monotonic()
        stack.stop("beat1", signal.SIGKILL)
        wait_until(lambda: "Acquired lock" in stack.log("beat2"), timeout=4 * SWEEP_INTERVAL, what="standby beat")
        took_over = time.monotonic() - killed
        wait_until(lambda: (_sweep_success(stack) or before_kill) > before_kill, timeout=30, what="a sweep by beat2")
        first_sweep = (_sweep_success(stack) - before_kill).total_seconds()

        second_silent = uuids[20:40]
        for load in loads[1:]:
            load.silence(second_silent)
        wait_until(lambda: _offline(stack, second_silent), timeout=40, what="second silent devices offline")
        # A sweep after the last deadline has run: nobody else may be due.
        settled = _db_now(stack) + timedelta(seconds=SWEEP_INTERVAL)
        wait_until(lambda: _sweep_success(stack) > settled, timeout=30, what="a later sweep")
    finally:
        for load in loads:
            load.stop()

    # The standby took over within two sweep intervals (plus a second for process scheduling here).
    assert took_over <= 2 * SWEEP_INTERVAL + 1, f"standby beat took {took_over:.1f}s to take the lock"
    assert first_sweep <= 2 * SWEEP_INTERVAL + 3, f"first sweep {first_sweep:.1f}s after the active beat died"
    assert len(workers_swept) == 2, "both workers should take sweep tasks"
    for load in loads:
        assert not load.server_errors, f"5xx: {load.server_errors}"
    transitions = _transitions(stack)
    silent = first_silent + second_silent
    for load in loads:
        unearned = false_offlines(load, transitions, WINDOW.total_seconds())
        assert not unearned, "\n".join(unearned)
    wrongly_offline = [u for u in uuids if u not in silent and _expiries(transitions, u)]
    assert not wrongly_offline, f"devices that kept fetching went Offline: {transitions[wrongly_offline[0]]}"
    slack = 0.5
    for u in silent:
        expiries = _expiries(transitions, u)
        assert len(expiries) == 1, f"{u}: {expiries}"
        # At its deadline: the last counted fetch (between sending and its answer) + the window.
        last_sent, last_answered = max(t for load in loads for t in load.ok_times.get(u, []))
        at = expiries[0][2].timestamp()
        window = WINDOW.total_seconds()
        assert last_sent + window - slack <= at <= last_answered + window + slack, (u, expiries[0])
    report = _assert_consistent(stack)
    requests = sum(load.total for load in loads)
    figures.add("faults survived", scale_out=1)
    figures.add("fault test devices", devices=report["devices"], transitions=report["transitions"], requests=requests)
    print(
        f"scale-out: {requests} fetches over 2 web ports, standby beat took the lock {took_over:.1f}s after "
        f"the active one died, first sweep {first_sweep:.1f}s; keys per master {sizes}"
    )
