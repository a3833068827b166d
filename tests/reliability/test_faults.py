"""Faults against the real app: gunicorn, Celery worker and beat on a private PostgreSQL and Redis.

Short intervals make the faults visible in seconds: the fleet polls every 2 s (heartbeat deadline
= last fetch + 3 s), the sweep runs every second. Devices are registered and polled over HTTP
exactly as agents do (tests/reliability/load.py). Each test breaks one thing and then checks the
database: no 5xx where the issue forbids it, no device Offline that kept fetching, every silent
device Offline exactly once and at its deadline, unbroken transition chains.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from datetime import datetime, timedelta

import pytest

from tests.reliability import figures
from tests.reliability.load import HeartbeatLoad, false_offlines, is_expiry, register_devices, tunnel
from tests.reliability.services import AppStack, PostgresServer, RedisServer, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

POLL_INTERVAL = 2  # seconds; fleet setting
WINDOW = timedelta(seconds=POLL_INTERVAL * 1.5)
SWEEP_INTERVAL = 1.0
# A beat scheduler without the RedBeat lock, as a beat started by mistake with other settings runs.
UNLOCKED = "celery.beat:PersistentScheduler"


def _start(stack: AppStack, devices: int, *, beats: int = 1, vpn_share: float = 0.5) -> tuple[dict, list]:
    keys = stack.probe("setup", poll_interval=POLL_INTERVAL)
    stack.start_web()
    stack.start_worker()
    for i in range(beats):
        # The second beat skips the lock (the default scheduler): two beats really sending sweeps.
        stack.start_beat(*(["beat"] if beats == 1 else [f"beat{i + 1}"] + (["--scheduler", UNLOCKED] if i else [])))
    registered = register_devices(stack.base_url, keys["provisioning_key"], devices)
    with_tunnel = [d.uuid for d in registered[: int(devices * vpn_share)]]
    if with_tunnel:
        tunnel(stack.base_url, keys["service_key"], with_tunnel, up=True)
    return keys, registered


def _transitions(stack: AppStack) -> dict[str, list[tuple[str, str, datetime, str]]]:
    rows = stack.sql(
        "SELECT d.uuid, t.from_status, t.to_status, t.at, t.reason FROM devices_statustransition t "
        "JOIN devices_device d ON d.id = t.device_id ORDER BY t.device_id, t.id"
    )
    out: dict[str, list[tuple[str, str, datetime, str]]] = {}
    for uuid, frm, to, at, reason in rows:
        out.setdefault(uuid, []).append((frm, to, at, reason))
    return out


def _expiries(transitions: dict, uuid: str) -> list[tuple[str, str, datetime, str]]:
    """Transitions caused by the heartbeat expiring (to Offline, or to VPN Only with a tunnel)."""
    return [t for t in transitions.get(uuid, []) if is_expiry(t)]


def _assert_consistent(stack: AppStack) -> dict:
    """The soak invariants, computed by the app's own code: stored == recomputed, unbroken chains."""
    report = stack.probe("check")
    assert report["status_mismatches"] == 0, "\n".join(map(str, report["mismatch_examples"]))
    assert report["broken_chains"] == 0, f"{report['broken_chains']} broken chains:\n" + "\n".join(
        report["broken_examples"]
    )
    return report


def _all_online(stack: AppStack, uuids: list[str]) -> bool:
    states = stack.statuses()
    return all(states[u][1] == "online" for u in uuids)


def _sweeps_since(stack: AppStack, moment: datetime) -> bool:
    rows = stack.sql("SELECT last_success_at FROM devices_taskrun WHERE name = 'sweep'")
    return bool(rows) and rows[0][0] > moment


def _db_now(stack: AppStack) -> datetime:
    return stack.sql("SELECT now()")[0][0]


def test_redis_outage_during_heartbeat_load(make_stack, redis_server: RedisServer) -> None:
    stack = make_stack()
    _keys, devices = _start(stack, 40)
    uuids = [d.uuid for d in devices]
    load = HeartbeatLoad(stack.base_url, devices, period=0.7).start()
    try:
        wait_until(lambda: _all_online(stack, uuids), timeout=30, what="every device's heartbeat online")
        before_outage = load.snapshot()

        # Redis goes away for longer than two heartbeat windows while every device keeps fetching.
        redis_server.stop()
        outage_started = time.monotonic()
        wait_until(
            lambda: time.monotonic() - outage_started > 2 * WINDOW.total_seconds() + 1, timeout=30, what="outage"
        )
        during = load.snapshot() - before_outage
        assert during[200] > len(devices), f"fetches did not keep succeeding during the outage: {dict(during)}"

        # Redis returns empty (no persistence), as after a crash; half the devices go silent now.
        redis_server.start()
        returned_at = _db_now(stack)
        silent, alive = uuids[::2], uuids[1::2]
        load.silence(silent)
        wait_until(lambda: _sweeps_since(stack, returned_at), timeout=60, what="a sweep after Redis returned")
        first_sweep_after = stack.sql("SELECT last_success_at FROM devices_taskrun WHERE name = 'sweep'")[0][0]
        wait_until(
            lambda: all(stack.statuses()[u][1] == "offline" for u in silent), timeout=30, what="silent devices offline"
        )
        converged_at = _db_now(stack)
    finally:
        load.stop()

    assert not load.server_errors, f"5xx other than 503 + Retry-After: {load.server_errors}"
    assert load.missing_retry_after == 0
    transitions = _transitions(stack)
    # No device that kept fetching was ever marked Offline, during or after the outage.
    unearned = false_offlines(load, transitions, WINDOW.total_seconds())
    assert not unearned, "\n".join(unearned)
    wrongly_offline = [u for u in alive if _expiries(transitions, u)]
    assert not wrongly_offline, (
        f"{len(wrongly_offline)} devices that kept fetching were marked Offline: {transitions[wrongly_offline[0]]}"
    )
    for u in silent:
        offline = _expiries(transitions, u)
        assert len(offline) == 1, f"{u}: {offline}"
    # Convergence: once sweeps run again, each silent device turns Offline within two sweep
    # intervals of its deadline (after the store's recovery, deadlines count from its return).
    latest_deadline = max(_expiries(transitions, u)[0][2] for u in silent)
    lag = (converged_at - latest_deadline).total_seconds()
    assert lag <= 2 * SWEEP_INTERVAL + 1.0, f"statuses converged {lag:.1f}s after the last deadline"
    report = _assert_consistent(stack)
    figures.add("faults survived", redis_outage=1)
    figures.add("fault test devices", devices=report["devices"], transitions=report["transitions"], requests=load.total)
    print(
        f"redis outage: {dict(load.codes)}; first sweep {(first_sweep_after - returned_at).total_seconds():.1f}s "
        f"after Redis returned; converged {lag:.1f}s after the last deadline"
    )


def test_postgres_restart_app_and_worker_reconnect(make_stack, pg_cluster: PostgresServer) -> None:
    stack = make_stack()
    # Reconnection rests on these: persistent connections, checked before reuse.
    db = stack.probe("db_settings")
    assert db["CONN_MAX_AGE"] > 0 and db["CONN_HEALTH_CHECKS"] is True, db
    _keys, devices = _start(stack, 30)
    uuids = [d.uuid for d in devices]
    load = HeartbeatLoad(stack.base_url, devices, period=0.7).start()
    try:
        wait_until(lambda: _all_online(stack, uuids), timeout=30, what="every device's heartbeat online")
        baseline = load.snapshot()
        # A fast shutdown terminates every connection the web processes and the worker hold; the
        # server stays down for a moment, so requests arrive while it is gone.
        pg_cluster.stop("fast")
        down = time.monotonic()
        wait_until(lambda: time.monotonic() - down > 1.5, timeout=5)
        pg_cluster.start()
        restarted = time.monotonic()
        outage = load.snapshot() - baseline
        # Persistent connections must be replaced by themselves: after a short grace period every
        # fetch succeeds again, with no process restarted.
        wait_until(lambda: time.monotonic() - restarted > 2, timeout=5)
        after_grace = load.snapshot()
        wait_until(lambda: time.monotonic() - restarted > 5, timeout=10)
        settled = load.snapshot() - after_grace
        silent = uuids[::3]
        silenced_at = _db_now(stack)
        load.silence(silent)
        wait_until(
            lambda: all(stack.statuses()[u][1] == "offline" for u in silent), timeout=30, what="silent devices offline"
        )
        wait_until(
            lambda: _sweeps_since(stack, silenced_at + WINDOW + timedelta(seconds=2)), timeout=30, what="later sweeps"
        )
    finally:
        load.stop()
    # While it was down: 503 with Retry-After (fleetstatus.middleware), never a 500.
    assert not load.server_errors, f"5xx other than 503 + Retry-After: {load.server_errors}"
    assert load.missing_retry_after == 0
    assert settled[200] > 0 and all(not str(code).startswith(("5", "transport")) for code in settled), (
        f"fetches still failing after the restart: {dict(settled)}"
    )
    assert all(stack.running(name) for name in ("web", "worker", "beat")), "a process died instead of reconnecting"
    transitions = _transitions(stack)
    # While PostgreSQL was down no fetch could be authenticated, so a device may truly have gone a
    # whole window without a counted heartbeat; only an Offline it did not earn is a failure.
    unearned = false_offlines(load, transitions, WINDOW.total_seconds())
    assert not unearned, "\n".join(unearned)
    for u in silent:
        # Exactly one Offline after its last successful fetch: none lost, none duplicated.
        offline = [t for t in _expiries(transitions, u) if t[2].timestamp() > load.last_ok[u]]
        assert len(offline) == 1, f"{u}: offline transitions after its last fetch {offline}; all: {transitions[u]}"
    report = _assert_consistent(stack)
    figures.add("faults survived", postgres_restart=1)
    figures.add("fault test devices", devices=report["devices"], transitions=report["transitions"], requests=load.total)
    alive = [u for u in uuids if u not in silent]
    earned = sum(1 for u in alive for _ in _expiries(transitions, u))
    print(
        f"postgres restart: while down {dict(outage)}, afterwards {dict(settled)}; "
        f"{earned} earned expiries of devices that could not fetch while it was down"
    )


@pytest.mark.parametrize("down", ["worker+beat", "worker"])
def test_worker_down_then_one_catch_up_run_at_true_deadlines(make_stack, down: str) -> None:
    stack = make_stack()
    _keys, devices = _start(stack, 24)
    uuids = [d.uuid for d in devices]
    load = HeartbeatLoad(stack.base_url, devices, period=0.7).start()
    try:
        wait_until(lambda: _all_online(stack, uuids), timeout=30, what="every device's heartbeat online")
        # A starved load generator on a busy machine can let a deadline pass while the devices
        # come up: that expiry is real, and not what this test is about.
        settled_at = _db_now(stack)
        stack.stop("worker")
        if down == "worker+beat":
            stack.stop("beat")
        silent = uuids[::2]
        load.silence(silent)
        # Long enough for many deadlines and (with beat up) many queued sweeps to pass unserved.
        stopped = time.monotonic()
        wait_until(lambda: time.monotonic() - stopped > 4 * WINDOW.total_seconds(), timeout=30)
        assert all(stack.statuses()[u][1] == "online" for u in silent), (
            "something expired heartbeats with the worker down"
        )
        returned_at = _db_now(stack)
        runs_before = len(stack.sweep_runs())
        stack.start_worker()
        if down == "worker+beat":
            stack.start_beat()
        wait_until(lambda: all(stack.statuses()[u][1] == "offline" for u in silent), timeout=30, what="catch-up")
        wait_until(lambda: len(stack.sweep_runs()) >= runs_before + 3, timeout=30, what="more sweeps")
    finally:
        load.stop()
    transitions = _transitions(stack)
    deadlines = dict(
        stack.sql("SELECT uuid, heartbeat_deadline FROM devices_device WHERE api_heartbeat_state = 'offline'")
    )
    for u in silent:
        offline = [t for t in _expiries(transitions, u) if t[2] > settled_at]
        assert len(offline) == 1, f"{u}: {offline}"
        at = offline[0][2]
        # Stamped at the deadline (last fetch + window), long before the worker came back.
        assert at == deadlines[u], f"{u}: transition at {at}, deadline {deadlines[u]}"
        assert at < returned_at - WINDOW, (
            f"{u}: transition at {at} is not its true deadline (worker back at {returned_at})"
        )
    alive = [u for u in uuids if u not in silent]
    assert not [u for u in alive if [t for t in _expiries(transitions, u) if t[2] > settled_at]]
    # One catch-up run per group of shards expired them all; the runs after it had nothing to do.
    new_runs = stack.sweep_runs()[runs_before:]
    expiring = [line for line in new_runs if "'expired': 0" not in line]
    groups = [re.search(r"'shards': (\[[\d, ]*\])", line).group(1) for line in expiring]
    assert len(groups) == len(set(groups)), expiring
    assert sum(int(re.search(r"'expired': (\d+)", line).group(1)) for line in expiring) == len(silent), expiring
    report = _assert_consistent(stack)
    figures.add("faults survived", **{f"{down.replace('+', '_')}_down": 1})
    figures.add("fault test devices", devices=report["devices"], transitions=report["transitions"], requests=load.total)


def test_two_beats_each_transition_exactly_once(make_stack) -> None:
    stack = make_stack()
    _keys, devices = _start(stack, 40, beats=2)
    uuids = [d.uuid for d in devices]
    load = HeartbeatLoad(stack.base_url, devices, period=0.7).start()
    try:
        wait_until(lambda: _all_online(stack, uuids), timeout=30, what="every device's heartbeat online")
        silent = uuids[::2]
        load.silence(silent)
        silenced_at = _db_now(stack)
        wait_until(
            lambda: all(stack.statuses()[u][1] == "offline" for u in silent), timeout=30, what="silent devices offline"
        )
        wait_until(
            lambda: _sweeps_since(stack, silenced_at + WINDOW + timedelta(seconds=3)), timeout=30, what="later sweeps"
        )
    finally:
        load.stop()
    # Both beats really scheduled: about two sweeps per interval reached the worker.
    received = [line for line in stack.log_all("worker") if "Task devices.tasks.sweep" in line and "received" in line]
    beat_sends = sum(log.count("Scheduler: Sending due task sweep") for log in (stack.log("beat1"), stack.log("beat2")))
    assert (
        stack.log("beat1").count("Sending due task sweep") > 3
        and stack.log("beat2").count("Sending due task sweep") > 3
    )
    transitions = _transitions(stack)
    duplicates = {u: _expiries(transitions, u) for u in silent if len(_expiries(transitions, u)) != 1}
    assert not duplicates, f"offline transitions not exactly once: {duplicates}"
    alive = [u for u in uuids if u not in silent]
    assert not [u for u in alive if _expiries(transitions, u)]
    report = _assert_consistent(stack)
    figures.add("faults survived", two_beats=1)
    figures.add("fault test devices", devices=report["devices"], transitions=report["transitions"], requests=load.total)
    print(f"two beats: {beat_sends} sweeps sent, {len(received)} received by the worker; {Counter(load.codes)}")
