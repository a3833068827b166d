"""record_fetch(): the database path, the Redis path, and Redis being down."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices import services
from devices.live import heartbeats
from devices.status import HeartbeatState, Status
from tests.hbutil import DEFAULT_WINDOW, T0, closed_port_url, fetch, history, no_redis, reload, store_mode  # noqa: F401

pytestmark = pytest.mark.django_db

OFFLINE = Status.OFFLINE.value
HB_ONLY = Status.ONLINE_HEARTBEAT_ONLY.value
EXPIRED = services.HEARTBEAT_EXPIRED


def writes(queries: CaptureQueriesContext) -> list[str]:
    return [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
    ]


# --- Both stores -------------------------------------------------------------------------------


@pytest.mark.usefixtures("store_mode")
def test_first_fetch_turns_the_heartbeat_online(make_device):
    d = make_device(at=T0 - timedelta(days=1))
    fetch(d, T0)
    d = reload(d)
    assert (d.api_heartbeat_state, d.overall_status) == (HeartbeatState.ONLINE, HB_ONLY)
    assert (d.last_api_heartbeat_at, d.last_seen_at, d.heartbeat_deadline) == (T0, T0, T0 + DEFAULT_WINDOW)
    assert history(d)[-1] == ("configuring", HB_ONLY, T0)
    assert d.transitions.get(at=T0).reason == "target state fetched"


@pytest.mark.usefixtures("store_mode")
def test_late_fetch_records_the_gap_at_the_deadline(make_device):
    """A fetch after the deadline that no sweep has processed yet: offline at the deadline, back now."""
    d = make_device(at=T0 - timedelta(days=1))
    fetch(d, T0)
    back = T0 + DEFAULT_WINDOW + timedelta(seconds=4)  # the sweep would have run a few seconds later
    fetch(d, back)
    assert history(d)[-2:] == [(HB_ONLY, OFFLINE, T0 + DEFAULT_WINDOW), (OFFLINE, HB_ONLY, back)]
    assert reload(d).heartbeat_deadline == back + DEFAULT_WINDOW


@pytest.mark.usefixtures("store_mode")
def test_late_fetch_gives_the_same_history_as_the_sweep_running_first(make_device):
    from devices.sweep import run_sweep

    fetch_first, sweep_first = make_device(at=T0), make_device(at=T0)
    for d in (fetch_first, sweep_first):
        fetch(d, T0)
    back = T0 + DEFAULT_WINDOW + timedelta(seconds=3)
    fetch(fetch_first, back)
    run_sweep(back)  # expires sweep_first at its deadline; fetch_first is online again
    fetch(sweep_first, back)
    assert [row[1:] for row in history(fetch_first)] == [row[1:] for row in history(sweep_first)]
    assert run_sweep(back + timedelta(seconds=1))["expired"] == 0


@pytest.mark.usefixtures("store_mode")
def test_fetch_exactly_at_the_deadline_is_late(make_device):
    # The sweep expires a heartbeat when deadline <= now; a fetch at that instant agrees.
    d = make_device(at=T0)
    fetch(d, T0)
    fetch(d, T0 + DEFAULT_WINDOW)
    assert history(d)[-2][1:] == (OFFLINE, T0 + DEFAULT_WINDOW)


@pytest.mark.usefixtures("store_mode")
def test_fetch_just_before_the_deadline_continues(make_device):
    d = make_device(at=T0)
    fetch(d, T0)
    fetch(d, T0 + DEFAULT_WINDOW - timedelta(microseconds=1))
    assert [row[1] for row in history(d)] == ["configuring", HB_ONLY]


@pytest.mark.usefixtures("store_mode")
def test_fetch_reactivates_an_inactive_device(make_device):
    d = make_device(at=T0, api_heartbeat_state=HeartbeatState.OFFLINE)
    services.set_active(d, False, reason="user", at=T0)  # allowed: it is Offline
    assert reload(d).overall_status == Status.INACTIVE
    fetch(d, T0 + timedelta(minutes=1))
    d = reload(d)
    assert (d.is_active, d.overall_status, d.activated_at) == (True, HB_ONLY, T0 + timedelta(minutes=1))


# --- Database path -----------------------------------------------------------------------------


@pytest.mark.usefixtures("no_redis")
def test_database_steady_fetch_is_one_conditional_update(make_device):
    d = make_device(at=T0)
    fetch(d, T0)
    device = reload(d)
    with CaptureQueriesContext(connection) as queries:
        heartbeats.record_fetch(device, at=T0 + timedelta(minutes=10))
    assert len(queries) == 1 and len(writes(queries)) == 1
    assert reload(d).last_api_heartbeat_at == T0 + timedelta(minutes=10)
    assert len(history(d)) == 2


# --- Redis path --------------------------------------------------------------------------------


@pytest.mark.redis
def test_steady_state_fetch_makes_no_database_write(make_device):
    hb = heartbeats.store()
    d = make_device(at=T0)
    fetch(d, T0)  # first fetch: the database path, then the device joins the online set
    device = reload(d)
    with CaptureQueriesContext(connection) as queries:
        for minutes in (10, 20, 30):
            heartbeats.record_fetch(device, at=T0 + timedelta(minutes=minutes))
    assert queries.captured_queries == []  # not even a read: the API's device read is all it takes
    stored = reload(d)
    assert (stored.last_api_heartbeat_at, stored.heartbeat_deadline) == (T0, T0 + DEFAULT_WINDOW)
    assert (
        hb.client.hget(heartbeats.seen_key(heartbeats.shard_of(d.uuid)), d.pk)
        == str(heartbeats.to_us(T0 + timedelta(minutes=30))).encode()
    )
    deadline = T0 + timedelta(minutes=30) + DEFAULT_WINDOW
    assert hb.client.zscore(heartbeats.online_key(heartbeats.shard_of(d.uuid)), d.pk) == heartbeats.to_us(deadline)
    assert len(history(d)) == 2


@pytest.mark.redis
def test_device_online_in_database_joins_the_set_on_its_next_fetch(make_device):
    hb = heartbeats.store()
    d = make_device(at=T0)
    services.record_heartbeat(reload(d), at=T0)  # online in the database, unknown to Redis
    device = reload(d)
    with CaptureQueriesContext(connection) as queries:
        fetch(device, T0 + timedelta(minutes=5))
    assert len(writes(queries)) == 1  # the conditional UPDATE of the database path
    assert hb.client.zscore(heartbeats.online_key(heartbeats.shard_of(d.uuid)), d.pk) == heartbeats.to_us(
        T0 + timedelta(minutes=5) + DEFAULT_WINDOW
    )
    with CaptureQueriesContext(connection) as queries:
        heartbeats.record_fetch(reload(d), at=T0 + timedelta(minutes=10))
    assert writes(queries) == []


@pytest.mark.redis
def test_late_fetch_counts_an_unflushed_fetch(make_device):
    """The deadline of a late fetch includes the fetch Redis holds and the database lacks."""
    d = make_device(at=T0)
    fetch(d, T0)  # database: deadline T0 + 900 s
    fetch(d, T0 + timedelta(seconds=600))  # Redis only: deadline T0 + 1500 s
    assert reload(d).heartbeat_deadline == T0 + DEFAULT_WINDOW
    late = T0 + timedelta(seconds=1600)
    fetch(d, late)
    assert history(d)[-2:] == [
        (HB_ONLY, OFFLINE, T0 + timedelta(seconds=1500)),
        (OFFLINE, HB_ONLY, late),
    ]


@pytest.mark.redis
def test_write_back_during_a_slow_path_fetch_is_not_regressed(make_device):
    hb = heartbeats.store()
    # The database path wrote a newer fetch; an older entry in the hash must not move it back.
    d = make_device(at=T0)
    fetch(d, T0)
    fetch(d, T0 + timedelta(seconds=60))  # Redis only
    services.record_heartbeat(reload(d), at=T0 + timedelta(seconds=120))  # newer, through the database
    assert hb.write_back() == 0
    assert reload(d).last_api_heartbeat_at == T0 + timedelta(seconds=120)
    assert hb.pending_count() == 0


# --- Redis unavailable -------------------------------------------------------------------------


def test_fetch_falls_back_to_the_database_when_redis_is_down(settings, make_device, caplog):
    settings.REDIS_URL = closed_port_url()
    d = make_device(at=T0)
    fetch(d, T0)
    assert reload(d).overall_status == HB_ONLY
    device = reload(d)
    fetch(device, T0 + timedelta(minutes=10))
    assert reload(d).last_api_heartbeat_at == T0 + timedelta(minutes=10)
    assert "heartbeat store unavailable" in caplog.text


def test_redis_down_never_turns_a_late_fetch_into_an_outage(settings, make_device):
    """Redis may hold a fetch the database lacks; without it a late-looking fetch continues."""
    settings.REDIS_URL = closed_port_url()
    d = make_device(at=T0)
    fetch(d, T0)
    fetch(d, T0 + DEFAULT_WINDOW + timedelta(seconds=30))
    assert OFFLINE not in [row[1] for row in history(d)]
    assert reload(d).heartbeat_deadline == T0 + DEFAULT_WINDOW + timedelta(seconds=30) + DEFAULT_WINDOW


@pytest.mark.usefixtures("no_redis")
def test_store_is_none_without_redis_url():
    assert heartbeats.store() is None


def test_microsecond_round_trip():
    moment = T0 + timedelta(microseconds=987_654)
    assert heartbeats.from_us(heartbeats.to_us(moment)) == moment
    assert heartbeats.from_us(str(heartbeats.to_us(moment)).encode()) == moment
