"""The staleness sweep (devices/sweep.py): expiry at the deadline, write-back, races, faults, housekeeping."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import time_machine
from django.conf import settings as django_settings
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices import services
from devices.live import heartbeats
from devices.models import Device, StatusTransition, TaskRun
from devices.status import HeartbeatState, Status
from devices.sweep import prune_transitions, reconcile_all_frozen, run_sweep, sweep_health
from fleets.models import Tier
from tests.hbutil import DEFAULT_WINDOW, T0, closed_port_url, fetch, history, no_redis, reload, store_mode  # noqa: F401

OFFLINE = Status.OFFLINE.value
HB_ONLY = Status.ONLINE_HEARTBEAT_ONLY.value
VPN_ONLY = Status.ONLINE_VPN_ONLY.value
ONLINE = Status.ONLINE.value
US = timedelta(microseconds=1)

db = pytest.mark.django_db


def offline_transitions(device) -> list:
    return [row for row in history(device) if row[1] == OFFLINE]


# --- Expiry semantics (both stores) -----------------------------------------------------------


@db
@pytest.mark.usefixtures("store_mode")
def test_expiry_exactly_at_the_deadline(make_device):
    d = make_device(at=T0)
    fetch(d, T0)
    deadline = T0 + DEFAULT_WINDOW
    assert run_sweep(deadline - US)["expired"] == 0
    assert reload(d).overall_status == HB_ONLY
    assert run_sweep(deadline)["expired"] == 1
    assert history(d)[-1] == (HB_ONLY, OFFLINE, deadline)
    assert reload(d).status_changed_at == deadline


@db
@pytest.mark.usefixtures("store_mode")
def test_beat_notices_within_one_interval_and_stamps_the_deadline(make_device):
    """Sweeps every FLEETSTATUS_SWEEP_INTERVAL: the first run at or after the deadline flips it, none before."""
    d = make_device(at=T0)
    fetch(d, T0 + timedelta(seconds=3))  # deadline falls between two beat ticks
    deadline = T0 + timedelta(seconds=3) + DEFAULT_WINDOW
    interval = timedelta(seconds=django_settings.FLEETSTATUS_SWEEP_INTERVAL)
    tick = T0
    while reload(d).overall_status == HB_ONLY:
        assert tick < deadline + interval, "still online one full interval after the deadline"
        tick += interval
        with time_machine.travel(tick, tick=False):
            run_sweep()
    assert deadline <= tick < deadline + interval
    assert history(d)[-1] == (HB_ONLY, OFFLINE, deadline)


@db
@pytest.mark.usefixtures("store_mode")
@pytest.mark.parametrize(
    ("floor", "fleet_interval", "device_interval", "window_seconds"),
    [
        (600, None, None, 900),  # the installation default
        (60, 120, None, 180),  # the fleet's setting
        (60, 120, 90, 135),  # the device's override beats the fleet's
        (60, None, 30, 90),  # an override below the floor is raised to it
    ],
)
def test_intervals_per_device_per_fleet_and_the_floor(
    settings, fleet, make_device, floor, fleet_interval, device_interval, window_seconds
):
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = floor
    if fleet_interval:
        services.update_fleet(fleet, {"poll_interval": fleet_interval}, reason="test")
    d = make_device(at=T0)
    if device_interval:
        services.update_device(d, {"poll_interval": device_interval}, reason="test", at=T0)
    fetch(d, T0)
    deadline = T0 + timedelta(seconds=window_seconds)
    assert reload(d).heartbeat_deadline == deadline
    assert run_sweep(deadline - US)["expired"] == 0
    assert run_sweep(deadline)["expired"] == 1
    assert history(d)[-1][1:] == (OFFLINE, deadline)


@db
@pytest.mark.usefixtures("store_mode")
def test_a_floor_raised_later_applies_to_a_fleet_setting_below_it(settings, fleet, make_device):
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = 10
    services.update_fleet(fleet, {"poll_interval": 20}, reason="test")
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = 120
    d = make_device(at=T0)
    fetch(d, T0)
    assert reload(d).heartbeat_deadline == T0 + timedelta(seconds=180)
    assert run_sweep(T0 + timedelta(seconds=180))["expired"] == 1


@db
@pytest.mark.usefixtures("store_mode")
def test_vpn_connected_device_becomes_vpn_only_and_the_other_offline(make_device, fleet):
    tunnel = make_device(at=T0)
    services.set_tunnel([tunnel.uuid], True, service_id=1, at=T0)
    bare = make_device(at=T0)
    no_cloudlink = make_device(at=T0, cloudlink_enabled=False)
    for d in (tunnel, bare, no_cloudlink):
        fetch(d, T0)
    assert [reload(d).overall_status for d in (tunnel, bare, no_cloudlink)] == [ONLINE, HB_ONLY, ONLINE]
    run_sweep(T0 + DEFAULT_WINDOW)
    assert history(tunnel)[-1] == (ONLINE, VPN_ONLY, T0 + DEFAULT_WINDOW)
    assert history(bare)[-1] == (HB_ONLY, OFFLINE, T0 + DEFAULT_WINDOW)
    assert history(no_cloudlink)[-1] == (ONLINE, OFFLINE, T0 + DEFAULT_WINDOW)
    assert reload(tunnel).api_heartbeat_state == HeartbeatState.OFFLINE


@db
@pytest.mark.usefixtures("store_mode")
def test_heartbeat_of_a_frozen_device_expires_without_a_transition(org, make_device):
    d = make_device(at=T0)
    fetch(d, T0)
    services.update_organization(org, {"device_allowance": 0}, reason="plan", at=T0)
    assert reload(d).overall_status == Status.FROZEN
    assert run_sweep(T0 + DEFAULT_WINDOW)["expired"] == 0  # no transition: it stays Frozen
    assert reload(d).api_heartbeat_state == HeartbeatState.OFFLINE


@db
@pytest.mark.usefixtures("store_mode")
def test_catch_up_after_an_hour_down_gives_every_transition_its_true_deadline(make_device):
    silent = [make_device(at=T0) for _ in range(4)]
    for i, d in enumerate(silent):
        fetch(d, T0 + timedelta(minutes=i))
    kept_polling = make_device(at=T0)
    returned = make_device(at=T0)
    fetch(kept_polling, T0)
    fetch(returned, T0)
    # The worker is down from T0 to T0 + 2 h. One device keeps polling every 10 minutes; one
    # goes quiet for 40 minutes and comes back; the others go silent.
    for minutes in range(10, 120, 10):
        fetch(kept_polling, T0 + timedelta(minutes=minutes))
    back = T0 + timedelta(minutes=40)
    for minutes in range(40, 120, 10):
        fetch(returned, T0 + timedelta(minutes=minutes))
    end = T0 + timedelta(hours=2)
    result = run_sweep(end)
    assert result["expired"] == 4
    for i, d in enumerate(silent):
        assert offline_transitions(d) == [(HB_ONLY, OFFLINE, T0 + timedelta(minutes=i) + DEFAULT_WINDOW)]
    assert offline_transitions(kept_polling) == []
    assert reload(kept_polling).heartbeat_deadline == T0 + timedelta(minutes=110) + DEFAULT_WINDOW
    assert history(returned)[1:] == [
        (Status.CONFIGURING, HB_ONLY, T0),
        (HB_ONLY, OFFLINE, T0 + DEFAULT_WINDOW),
        (OFFLINE, HB_ONLY, back),
    ]
    assert run_sweep(end)["expired"] == 0


@db
@pytest.mark.usefixtures("store_mode")
def test_batches_cover_every_due_row_once(make_device):
    devices = [make_device(at=T0) for _ in range(7)]
    for i, d in enumerate(devices):
        fetch(d, T0 + timedelta(seconds=i))
    assert services.expire_heartbeats(T0 + timedelta(hours=1), batch_size=3) == 7
    assert all(len(offline_transitions(d)) == 1 for d in devices)


@db
@pytest.mark.usefixtures("no_redis")
def test_rows_a_claim_refuses_are_not_read_again(make_device):
    devices = [make_device(at=T0) for _ in range(5)]
    for d in devices:
        fetch(d, T0)
    seen: list[list[int]] = []

    def refuse(ids: list[int]) -> list[int]:
        seen.append(ids)
        assert len(seen) <= 3, "the same rows were read again"
        return []

    assert services.expire_heartbeats(T0 + timedelta(hours=1), batch_size=2, claim=refuse) == 0
    assert sorted(pk for ids in seen for pk in ids) == sorted(d.pk for d in devices)
    assert all(reload(d).api_heartbeat_state == HeartbeatState.ONLINE for d in devices)


@db
@pytest.mark.usefixtures("store_mode")
def test_sweep_records_its_success(make_device):
    with time_machine.travel(T0, tick=False):
        details = run_sweep()
    run = TaskRun.objects.get(name="sweep")
    assert run.last_success_at == T0
    assert run.details["expired"] == details["expired"] == 0


# --- Two sweeps at once (real PostgreSQL connections) -----------------------------------------


def _in_threads(*targets) -> list:
    """Run each target in its own thread (own database connection), started together."""
    barrier = threading.Barrier(len(targets))
    results: list = [None] * len(targets)
    errors: list[BaseException] = []

    def run(i, target):
        try:
            barrier.wait(timeout=10)
            results[i] = target()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return results


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("store_mode")
def test_two_concurrent_sweeps_write_each_transition_once(make_device):
    devices = [make_device(at=T0) for _ in range(60)]
    for i, d in enumerate(devices):
        fetch(d, T0 + timedelta(seconds=i))
    end = T0 + timedelta(hours=1)
    # Small batches, so the two runs interleave batch by batch.
    results = _in_threads(*[lambda: run_sweep(end, batch_size=7)] * 2)
    assert sum(r["expired"] for r in results) == 60
    for i, d in enumerate(devices):
        assert offline_transitions(d) == [(HB_ONLY, OFFLINE, T0 + timedelta(seconds=i) + DEFAULT_WINDOW)]
    assert StatusTransition.objects.filter(to_status=OFFLINE).count() == 60


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_redis")
def test_two_concurrent_expiries_in_small_batches(make_device):
    devices = [make_device(at=T0) for _ in range(50)]
    for d in devices:
        fetch(d, T0)
    end = T0 + timedelta(hours=1)
    counts = _in_threads(*[lambda: services.expire_heartbeats(end, batch_size=3)] * 2)
    assert sum(counts) == 50
    assert StatusTransition.objects.filter(to_status=OFFLINE).count() == 50


# --- Redis: write-back -----------------------------------------------------------------------


@db
@pytest.mark.redis
def test_write_back_moves_times_forward_in_bulk(make_device):
    hb = heartbeats.store()
    devices = [make_device(at=T0) for _ in range(5)]
    for d in devices:
        fetch(d, T0)
    for i, d in enumerate(devices):
        fetch(d, T0 + timedelta(minutes=5, seconds=i))  # Redis only
    assert {reload(d).last_api_heartbeat_at for d in devices} == {T0}
    with CaptureQueriesContext(connection) as queries:
        assert hb.write_back() == 5
    statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    # One locking SELECT and one UPDATE ... FROM (VALUES ...) per shard's batch (plus its savepoint).
    shards = {heartbeats.shard_of(d.uuid) for d in devices}
    assert [s for s in statements if s in {"SELECT", "UPDATE", "INSERT", "DELETE"}] == ["SELECT", "UPDATE"] * len(
        shards
    )
    for i, d in enumerate(devices):
        at = T0 + timedelta(minutes=5, seconds=i)
        stored = reload(d)
        assert (stored.last_api_heartbeat_at, stored.last_seen_at, stored.heartbeat_deadline) == (
            at,
            at,
            at + DEFAULT_WINDOW,
        )
    assert hb.pending_count() == 0
    assert hb.write_back() == 0


@db
@pytest.mark.redis
def test_write_back_keeps_a_fetch_that_arrives_meanwhile(make_device, monkeypatch):
    hb = heartbeats.store()
    d = make_device(at=T0)
    fetch(d, T0)
    fetch(d, T0 + timedelta(minutes=5))
    original = services.write_back_heartbeats

    def with_a_fetch_in_between(fetches):
        result = original(fetches)
        fetch(d, T0 + timedelta(minutes=6))  # after the database update, before the delete
        return result

    monkeypatch.setattr(services, "write_back_heartbeats", with_a_fetch_in_between)
    hb.write_back()
    assert reload(d).last_api_heartbeat_at == T0 + timedelta(minutes=5)
    assert (
        hb.client.hget(heartbeats.seen_key(heartbeats.shard_of(d.uuid)), d.pk)
        == str(heartbeats.to_us(T0 + timedelta(minutes=6))).encode()
    )
    monkeypatch.setattr(services, "write_back_heartbeats", original)
    hb.write_back()
    assert reload(d).last_api_heartbeat_at == T0 + timedelta(minutes=6)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_write_back_skips_a_row_another_transaction_holds(make_device):
    """It never waits for a lock (no deadlock with a request); the held row's entry waits for the next run."""
    from django.db import transaction

    hb = heartbeats.store()
    held, free = make_device(at=T0), make_device(at=T0)
    for d in (held, free):
        heartbeats.record_fetch(reload(d), at=T0)
        heartbeats.record_fetch(reload(d), at=T0 + timedelta(minutes=1))  # Redis only
    locked, release = threading.Event(), threading.Event()

    def hold_the_row():
        try:
            with transaction.atomic():
                Device.objects.select_for_update().get(pk=held.pk)
                locked.set()
                release.wait(timeout=30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert locked.wait(timeout=30)
        assert hb.write_back() == 1
    finally:
        release.set()
        holder.join(timeout=30)
    assert reload(free).last_api_heartbeat_at == T0 + timedelta(minutes=1)
    assert reload(held).last_api_heartbeat_at == T0
    assert hb.client.hexists(heartbeats.seen_key(heartbeats.shard_of(held.uuid)), held.pk) and not hb.client.hexists(
        heartbeats.seen_key(heartbeats.shard_of(free.uuid)), free.pk
    )
    assert hb.client.zscore(heartbeats.online_key(heartbeats.shard_of(held.uuid)), held.pk) is not None
    assert hb.write_back() == 1
    assert reload(held).last_api_heartbeat_at == T0 + timedelta(minutes=1)


@db
@pytest.mark.redis
def test_write_back_drops_set_members_the_database_does_not_have_online(make_device):
    hb = heartbeats.store()
    d = make_device(at=T0)
    fetch(d, T0)
    fetch(d, T0 + timedelta(minutes=1))  # Redis only
    # Changed by hand behind the store's back (think: a database restored under a live Redis).
    services.update_device(
        d, {"api_heartbeat_state": HeartbeatState.OFFLINE}, reason="manual", at=T0 + timedelta(minutes=2)
    )
    hb.write_back()
    assert reload(d).last_api_heartbeat_at == T0  # not folded into an offline heartbeat
    assert hb.client.zscore(heartbeats.online_key(heartbeats.shard_of(d.uuid)), d.pk) is None
    fetch(d, T0 + timedelta(minutes=3))  # so the next fetch takes the database path
    assert history(d)[-1] == (OFFLINE, HB_ONLY, T0 + timedelta(minutes=3))


@db
@pytest.mark.redis
def test_sweep_writes_back_before_expiring(make_device):
    d = make_device(at=T0)
    fetch(d, T0)
    fetch(d, T0 + timedelta(minutes=10))  # Redis only; the database deadline is T0 + 15 min
    details = run_sweep(T0 + timedelta(minutes=20))
    assert (details["written_back"], details["expired"]) == (1, 0)
    assert reload(d).overall_status == HB_ONLY
    assert run_sweep(T0 + timedelta(minutes=25))["expired"] == 1
    assert history(d)[-1] == (HB_ONLY, OFFLINE, T0 + timedelta(minutes=25))


# --- Redis: a fetch racing the expiry --------------------------------------------------------


@db
@pytest.mark.redis
def test_fetch_landing_before_the_claim_keeps_the_device_online(make_device, monkeypatch):
    hb = heartbeats.store()
    d = make_device(at=T0)
    fetch(d, T0)
    now = T0 + DEFAULT_WINDOW - timedelta(seconds=1)
    real_claim = hb.claim

    def fetch_then_claim(shard, ids, token):
        # The rows are locked and due; the device fetches (Redis only) just before the claim.
        heartbeats.record_fetch(reload(d), at=now)
        return real_claim(shard, ids, token)

    monkeypatch.setattr(hb, "claim", fetch_then_claim)
    assert run_sweep(T0 + DEFAULT_WINDOW)["expired"] == 0
    assert reload(d).overall_status == HB_ONLY
    monkeypatch.setattr(hb, "claim", real_claim)
    details = run_sweep(T0 + DEFAULT_WINDOW + timedelta(seconds=10))
    assert (details["written_back"], details["expired"]) == (1, 0)
    assert reload(d).heartbeat_deadline == now + DEFAULT_WINDOW
    assert offline_transitions(d) == []


@db
@pytest.mark.redis
def test_fetch_after_the_claim_cannot_take_the_fast_path(make_device, monkeypatch):
    hb = heartbeats.store()
    d = make_device(at=T0)
    fetch(d, T0)
    deadline = T0 + DEFAULT_WINDOW
    outcomes = []
    real_claim = hb.claim

    def claim_then_fetch(shard, ids, token):
        claimed = real_claim(shard, ids, token)
        outcomes.append(hb.fetch(d.pk, d.uuid, deadline + timedelta(seconds=1), deadline + DEFAULT_WINDOW))
        return claimed

    monkeypatch.setattr(hb, "claim", claim_then_fetch)
    assert run_sweep(deadline + timedelta(seconds=1))["expired"] == 1
    assert outcomes[0].counted is False  # not a member any more: it must go to the database
    assert hb.pending_count() == 0


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_fetch_racing_the_expiry_commit_gives_each_transition_once(make_device, monkeypatch):
    """The claim removed the device; its fetch blocks on the row lock and sees the committed expiry."""
    hb = heartbeats.store()
    d = make_device(at=T0)
    heartbeats.record_fetch(reload(d), at=T0)
    deadline = T0 + DEFAULT_WINDOW
    back = deadline + timedelta(seconds=2)
    real_claim = hb.claim
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def fetch_in_another_connection():
        try:
            heartbeats.record_fetch(reload(d), at=back)
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            connections.close_all()

    def claim_then_fetch(shard, ids, token):
        claimed = real_claim(shard, ids, token)
        t = threading.Thread(target=fetch_in_another_connection)
        t.start()
        threads.append(t)
        # Wait (bounded) until the fetch is blocked on our row lock, then commit.
        for _ in range(200):
            with connection.cursor() as cursor:
                # Activity is snapshotted per transaction, and we are inside the sweep's.
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                if cursor.fetchone()[0]:
                    break
            threading.Event().wait(0.05)
        else:
            pytest.fail(f"the fetch never waited for the expiry's row lock ({errors})")
        return claimed

    monkeypatch.setattr(hb, "claim", claim_then_fetch)
    assert run_sweep(back)["expired"] == 1
    threads[0].join(timeout=30)
    assert not errors
    assert [row[1:] for row in history(d)][-2:] == [(OFFLINE, deadline), (HB_ONLY, back)]
    assert len(offline_transitions(d)) == 1
    assert hb.client.zscore(heartbeats.online_key(heartbeats.shard_of(d.uuid)), d.pk) == heartbeats.to_us(
        back + DEFAULT_WINDOW
    )


# --- Redis: faults ---------------------------------------------------------------------------


@db
@pytest.mark.redis
def test_redis_restarted_empty_marks_nobody_offline_and_converges(make_device):
    hb = heartbeats.store()
    d = make_device(at=T0)
    quiet = make_device(at=T0)
    fetch(d, T0)
    fetch(quiet, T0)
    fetch(d, T0 + timedelta(minutes=10))  # only in Redis: the database deadline stays T0 + 15 min
    hb.client.flushdb()  # Redis restarts with nothing
    detected = T0 + timedelta(minutes=16)
    details = run_sweep(detected)
    assert details["store_recovered"] == 2 and details["expired"] == 0
    assert reload(d).overall_status == HB_ONLY and reload(quiet).overall_status == HB_ONLY
    assert reload(d).heartbeat_deadline == detected + DEFAULT_WINDOW
    # It converges: the live device fetches (database path once, then Redis again), the dead one expires.
    fetch(d, detected + timedelta(minutes=5))
    assert hb.client.zscore(heartbeats.online_key(heartbeats.shard_of(d.uuid)), d.pk) is not None
    assert run_sweep(detected + DEFAULT_WINDOW)["expired"] == 1
    assert history(quiet)[-1] == (HB_ONLY, OFFLINE, detected + DEFAULT_WINDOW)
    assert reload(d).overall_status == HB_ONLY
    assert offline_transitions(d) == []


@db
@pytest.mark.redis
def test_fetch_between_restart_and_recovery_invents_no_outage(make_device):
    hb = heartbeats.store()
    d = make_device(at=T0)
    fetch(d, T0)
    fetch(d, T0 + timedelta(minutes=10))  # lost with the restart
    hb.client.flushdb()
    fetch(d, T0 + timedelta(minutes=20))  # past the database deadline, but not a gap
    assert offline_transitions(d) == []
    assert reload(d).last_api_heartbeat_at == T0 + timedelta(minutes=20)


@db
@pytest.mark.redis
def test_store_reset_during_a_sweep_stops_the_expiry(make_device):
    hb = heartbeats.store()
    d = make_device(at=T0)
    fetch(d, T0)
    shard = heartbeats.shard_of(d.uuid)
    token, _ = hb.ensure_trusted(T0, shard)
    hb.reset()  # new marker: as if Redis restarted and another sweep recovered meanwhile
    with pytest.raises(heartbeats.StoreReset):
        services.expire_heartbeats(T0 + DEFAULT_WINDOW, claim=lambda ids: hb.claim(shard, ids, token))
    assert reload(d).overall_status == HB_ONLY


@db
def test_sweep_with_redis_down_expires_nobody_and_keeps_the_switch_honest(settings, make_device):
    settings.REDIS_URL = ""
    d = make_device(at=T0)
    fetch(d, T0)
    run_sweep(T0)
    settings.REDIS_URL = closed_port_url()
    details = run_sweep(T0 + timedelta(hours=1))
    assert "heartbeat store" in details["error"]
    assert reload(d).overall_status == HB_ONLY
    run = TaskRun.objects.get(name="sweep")
    assert run.details["error"] == details["error"]
    assert run.last_success_at < T0 + timedelta(hours=1)  # the pages will warn


@db
@pytest.mark.redis
def test_after_redis_returns_the_sweep_catches_up_at_true_deadlines(settings, make_device):
    url = settings.REDIS_URL
    d = make_device(at=T0)
    fetch(d, T0)
    settings.REDIS_URL = closed_port_url()
    assert "error" in run_sweep(T0 + timedelta(hours=1))
    settings.REDIS_URL = url
    assert run_sweep(T0 + timedelta(hours=1))["expired"] == 1
    assert history(d)[-1] == (HB_ONLY, OFFLINE, T0 + DEFAULT_WINDOW)


# --- The dead-man's switch -------------------------------------------------------------------


@db
@pytest.mark.usefixtures("no_redis")
def test_sweep_health(settings):
    settings.FLEETSTATUS_SWEEP_INTERVAL = 10
    assert sweep_health(T0) == (None, None, True)
    with time_machine.travel(T0, tick=False):
        run_sweep()
    assert sweep_health(T0 + timedelta(seconds=5)) == (T0, 5.0, False)
    assert sweep_health(T0 + timedelta(seconds=30)).is_stale is False
    assert sweep_health(T0 + timedelta(seconds=31)) == (T0, 31.0, True)
    with time_machine.travel(T0 + timedelta(seconds=40), tick=False):
        assert sweep_health().age_seconds == 40.0


# --- Housekeeping ----------------------------------------------------------------------------


@db
def test_prune_keeps_recent_history_and_the_latest_transition_of_each_device(settings, make_device):
    settings.FLEETSTATUS_TRANSITION_RETENTION_DAYS = 30
    now = T0 + timedelta(days=100)
    old_and_quiet = make_device(at=T0)  # one transition, long ago: kept
    busy = make_device(at=T0)
    for day in (1, 2, 3, 96):
        state = HeartbeatState.ONLINE if day % 2 else HeartbeatState.OFFLINE
        services.update_device(busy, {"api_heartbeat_state": state}, reason="t", at=T0 + timedelta(days=day))
    stale_only = make_device(at=T0)
    for day in (1, 2):
        state = HeartbeatState.ONLINE if day % 2 else HeartbeatState.OFFLINE
        services.update_device(stale_only, {"api_heartbeat_state": state}, reason="t", at=T0 + timedelta(days=day))
    assert prune_transitions(now, batch_size=2) == 4 + 2
    assert [row[2] for row in history(old_and_quiet)] == [T0]
    assert [row[2] for row in history(busy)] == [T0 + timedelta(days=96)]
    assert [row[2] for row in history(stale_only)] == [T0 + timedelta(days=2)]
    assert TaskRun.objects.get(name="prune-transitions").details["deleted"] == 6
    assert prune_transitions(now) == 0


@db
def test_periodic_reconcile_repairs_frozen_drift(org, make_device):
    services.update_organization(org, {"device_allowance": 1, "tier": Tier.PAID}, reason="plan", at=T0)
    first, second = make_device(at=T0), make_device(at=T0 + timedelta(minutes=1))
    assert reload(second).overall_status == Status.FROZEN
    # Inputs changed without going through services (a manual database fix, a lost transaction).
    type(org).objects.filter(pk=org.pk).update(device_allowance=None)
    assert reconcile_all_frozen(T0 + timedelta(hours=1)) == 1
    assert history(second)[-1] == (Status.FROZEN, Status.CONFIGURING, T0 + timedelta(hours=1))
    assert reconcile_all_frozen(T0 + timedelta(hours=2)) == 0  # nothing frozen, no allowance: skipped
    assert reload(first).overall_status == Status.CONFIGURING
    assert TaskRun.objects.filter(name="reconcile-frozen").exists()


def test_beat_schedule_runs_every_task_with_expiring_messages():
    schedule = django_settings.CELERY_BEAT_SCHEDULE
    sweeps = [e for e in schedule.values() if e["task"] == "devices.tasks.sweep_shards"]
    assert {e["schedule"] for e in sweeps} == {django_settings.FLEETSTATUS_SWEEP_INTERVAL}
    # Every shard is swept by exactly one of the tasks beat sends each interval.
    assert sorted(s for e in sweeps for s in e["args"][0]) == list(range(django_settings.FLEETSTATUS_HEARTBEAT_SHARDS))
    for entry in schedule.values():
        # A message older than its interval is useless: the next one is already on its way.
        assert entry["options"]["expires"] <= entry["schedule"]
    from fleetstatus.celery import app

    app.loader.import_default_modules()
    assert {e["task"] for e in schedule.values()} <= set(app.tasks)


@db
@pytest.mark.usefixtures("no_redis")
def test_sweep_task_runs_the_sweep(make_device):
    from devices.tasks import sweep

    d = make_device(at=T0)
    fetch(d, timezone.now() - DEFAULT_WINDOW - timedelta(seconds=1))
    assert sweep.apply().get()["expired"] == 1  # in process: the worker test covers the real thing
    assert reload(d).overall_status == OFFLINE
    assert Device.objects.filter(api_heartbeat_state=HeartbeatState.ONLINE).count() == 0
