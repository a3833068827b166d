"""The device cache and the fetch fast path (devices/live/devcache.py, devices/api/edge.py).

A steady-state fetch is answered from Redis with no database query; every other case goes to the
view's database path. The fast path must answer exactly what the database path answers, and every
change of a cached field must make the next fetch answer with the new value.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import TestCase
from django.utils import timezone

from devices import services
from devices.api import edge
from devices.live import devcache, heartbeats
from devices.live import redis as live_redis
from devices.live.redis import to_us
from devices.models import Device, StatusTransition
from devices.status import HeartbeatState, Status
from fleets.keys import generate_key, hash_key
from fleets.models import Tier
from tests.apiutil import WsgiClient, send
from tests.hbutil import closed_port_url

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
pytestmark = [pytest.mark.django_db, pytest.mark.redis]

# Headers that differ between two responses for reasons other than the path that answered.
VOLATILE = {"Date"}


@pytest.fixture(autouse=True)
def _own_redis_warning_clock(monkeypatch):
    """The "Redis unavailable" warning is rate-limited per process: these tests must not use up
    another module's warning (tests/test_heartbeats.py looks for it)."""
    monkeypatch.setattr(live_redis, "_last_warning", 0.0)


@pytest.fixture
def client():
    """Every test runs through the WSGI entry point, where the edge answers from the cache."""
    return WsgiClient()


def url(uuid: str) -> str:
    return f"/device/v3/{uuid}/state"


def get(client, device, key=None, at=T0, *, path=None, method="GET", headers=None):
    """One fetch at `at`; commits (as a real request would) run their after-commit steps."""
    with time_machine.travel(at, tick=False), TestCase.captureOnCommitCallbacks(execute=True):
        return send(
            client, method, path or url(device.uuid), key=device.api_key if key is None else key, headers=headers
        )


def steady(client, device, at=T0):
    """First fetch (database path: transition, fills the cache, joins the online set), then one cached."""
    assert get(client, device, at=at).status_code in (200, 304)
    return at + timedelta(seconds=60)


def answer(r) -> tuple[int, bytes, dict[str, str]]:
    return r.status_code, r.content, {k: v for k, v in r.headers.items() if k not in VOLATILE}


def database_answer(client, device, settings, at, **kwargs):
    """What the view's database path answers for the same request (cache switched off)."""
    ttl = settings.FLEETSTATUS_DEVICE_CACHE_TTL
    settings.FLEETSTATUS_DEVICE_CACHE_TTL = 0
    try:
        return get(client, device, at=at, **kwargs)
    finally:
        settings.FLEETSTATUS_DEVICE_CACHE_TTL = ttl


def cached(client, device, at, django_assert_num_queries):
    """A fetch that must be answered from the cache: zero queries."""
    with django_assert_num_queries(0):
        return get(client, device, at=at)


def state(r, device) -> dict:
    body = r.json()[device.uuid]
    return {
        "name": body["name"],
        "interval": body["config"]["BALENA_SUPERVISOR_POLL_INTERVAL"],
        "vpn": body["config"]["BALENA_SUPERVISOR_VPN_CONTROL"],
    }


# --- The fast path answers what the database path answers -------------------------------------


@pytest.mark.parametrize("name", ["kiosk-1", 'Kiosk\t"Nord" \u2603 \\ 1'], ids=["plain", "tab-quote-unicode"])
def test_steady_state_fetch_makes_no_query_and_answers_as_the_database_path(
    client, make_device, settings, django_assert_num_queries, name
):
    device = make_device(name=name)
    at = steady(client, device)
    fast = cached(client, device, at, django_assert_num_queries)
    slow = database_answer(client, device, settings, at + timedelta(seconds=1))
    assert fast.status_code == 200
    assert answer(fast) == answer(slow)
    assert fast.json() == {
        device.uuid: {
            "name": name,
            "config": {
                "BALENA_SUPERVISOR_POLL_INTERVAL": "600000",
                "BALENA_SUPERVISOR_VPN_CONTROL": "true",
                "BALENA_SUPERVISOR_CONNECTIVITY_CHECK": "true",
                "BALENA_SUPERVISOR_INSTANT_UPDATE_TRIGGER": "true",
                "BALENA_SUPERVISOR_LOCAL_MODE": "false",
                "BALENA_SUPERVISOR_PERSISTENT_LOGGING": "false",
            },
            "apps": {},
        }
    }


def test_cached_fetch_counts_in_the_heartbeat_store_exactly_as_record_fetch_does(
    client, make_device, settings, django_assert_num_queries
):
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = 30
    fast_dev, slow_dev = make_device(), make_device()
    for d in (fast_dev, slow_dev):
        services.update_device(d, {"poll_interval": 45}, reason="t")
        steady(client, d)
    at = T0 + timedelta(seconds=30, microseconds=123457)
    cached(client, fast_dev, at, django_assert_num_queries)
    heartbeats.record_fetch(Device.objects.select_related("fleet").get(pk=slow_dev.pk), at=at)
    client_ = heartbeats.store().client
    fast_score = client_.zscore(heartbeats.online_key(heartbeats.shard_of(fast_dev.uuid)), fast_dev.pk)
    assert (
        fast_score
        == client_.zscore(heartbeats.online_key(heartbeats.shard_of(slow_dev.uuid)), slow_dev.pk)
        == heartbeats.to_us(at + timedelta(seconds=67.5))
    )
    assert (
        client_.hget(heartbeats.seen_key(heartbeats.shard_of(fast_dev.uuid)), fast_dev.pk)
        == client_.hget(heartbeats.seen_key(heartbeats.shard_of(slow_dev.uuid)), slow_dev.pk)
        == str(heartbeats.to_us(at)).encode()
    )
    # An older fetch arriving late does not move anything back (the same rule as _FETCH).
    cached(client, fast_dev, at - timedelta(seconds=10), django_assert_num_queries)
    assert client_.zscore(heartbeats.online_key(heartbeats.shard_of(fast_dev.uuid)), fast_dev.pk) == fast_score


def test_the_cached_fetch_writes_nothing_to_the_database(client, make_device, django_assert_num_queries):
    device = make_device()
    at = steady(client, device)
    before = Device.objects.values().get(pk=device.pk), StatusTransition.objects.count()
    for minute in range(1, 4):
        assert cached(client, device, at + timedelta(minutes=minute), django_assert_num_queries).status_code == 200
    assert (Device.objects.values().get(pk=device.pk), StatusTransition.objects.count()) == before


@pytest.mark.parametrize(
    "auth",
    [None, "", "Token abc", "Bearer", "Bearer " + "0" * 64, "Bearer " + "x" * 600],
    ids=["missing", "empty", "other-scheme", "no-key", "wrong-key", "too-long"],
)
def test_auth_failures_of_a_cached_device_are_the_database_paths_401(client, make_device, settings, auth):
    device = make_device()
    at = steady(client, device)
    headers = {} if auth is None else {"Authorization": auth}
    with time_machine.travel(at, tick=False):
        r = client.get(url(device.uuid), headers=headers)
    ttl = settings.FLEETSTATUS_DEVICE_CACHE_TTL
    settings.FLEETSTATUS_DEVICE_CACHE_TTL = 0
    with time_machine.travel(at, tick=False):
        expected = client.get(url(device.uuid), headers=headers)
    settings.FLEETSTATUS_DEVICE_CACHE_TTL = ttl
    assert r.status_code == 401 and r["WWW-Authenticate"] == 'Bearer realm="fleetstatus"'
    assert answer(r) == answer(expected)


def test_another_cached_devices_key_is_401_and_counts_nothing(client, make_device):
    device, other = make_device(), make_device()
    at = steady(client, device)
    steady(client, other)
    seen_before = heartbeats.store().client.hget(heartbeats.seen_key(heartbeats.shard_of(device.uuid)), device.pk)
    r = get(client, device, key=other.api_key, at=at)
    assert r.status_code == 401 and r.json() == {"error": "The API key is not valid for this device."}
    assert (
        heartbeats.store().client.hget(heartbeats.seen_key(heartbeats.shard_of(device.uuid)), device.pk) == seen_before
    )


def test_bad_uuid_and_wrong_method_keep_their_answers(client, make_device):
    device = make_device()
    at = steady(client, device)
    assert get(client, device, at=at, path=url(device.uuid.upper())).status_code == 400
    r = get(client, device, at=at, method="POST")
    assert r.status_code == 405 and r["Allow"] == "GET"


def test_frozen_cached_device_gets_304_without_a_query_and_the_fetch_does_not_count(
    client, org, make_fleet, make_device, settings, django_assert_num_queries
):
    org.tier = Tier.FREE
    org.save()
    paid, _ = make_fleet(org, "paid", fleet_type=Tier.PAID)
    device = make_device(paid)
    assert device.is_frozen
    at = steady(client, device)
    r = cached(client, device, at, django_assert_num_queries)
    expected = database_answer(client, device, settings, at)
    assert r.status_code == 304 and r.content == b""
    assert answer(r) == answer(expected)
    assert heartbeats.store().client.hget(heartbeats.seen_key(heartbeats.shard_of(device.uuid)), device.pk) is None
    assert Device.objects.get(pk=device.pk).api_heartbeat_state == HeartbeatState.UNKNOWN


def test_an_inactive_device_is_not_cached_and_its_fetch_reactivates_it(client, make_device, django_assert_num_queries):
    device = make_device()
    at = steady(client, device)
    with TestCase.captureOnCommitCallbacks(execute=True):
        services.update_device(device.pk, {"is_active": False}, reason="t", at=at)
    r = get(client, device, at=at + timedelta(seconds=1))  # the database path
    assert r.status_code == 200
    device.refresh_from_db()
    assert device.is_active and device.last_api_heartbeat_at == at + timedelta(seconds=1)
    # Reactivation changed a cached field, so that fill was refused; the next fetch fills, then cached.
    get(client, device, at=at + timedelta(seconds=2))
    cached(client, device, at + timedelta(seconds=3), django_assert_num_queries)


def test_a_late_fetch_goes_to_the_database_and_records_the_gap(client, make_device):
    device = make_device()
    steady(client, device)
    late = T0 + timedelta(seconds=2000)  # the window is 900 s
    assert get(client, device, at=late).status_code == 200
    device.refresh_from_db()
    assert device.last_api_heartbeat_at == late
    tos = list(StatusTransition.objects.filter(device=device).order_by("at", "id").values_list("to_status", flat=True))
    assert tos[-2:] == [Status.OFFLINE, Status.ONLINE_HEARTBEAT_ONLY]


def test_not_in_the_online_set_goes_to_the_database(client, make_device, django_assert_max_num_queries):
    device = make_device()
    at = steady(client, device)
    heartbeats.store().client.zrem(
        heartbeats.online_key(heartbeats.shard_of(device.uuid)), device.pk
    )  # as the sweep's claim does
    with django_assert_max_num_queries(10) as captured:
        assert get(client, device, at=at).status_code == 200
    assert len(captured) >= 1


# --- Invalidation: every cached field ---------------------------------------------------------


def committed(change):
    with TestCase.captureOnCommitCallbacks(execute=True):
        return change()


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"name": "renamed"}, {"name": "renamed"}),
        ({"poll_interval": 1200}, {"interval": "1200000"}),
        ({"cloudlink_enabled": False}, {"vpn": "false"}),
    ],
    ids=["rename", "poll-interval-override", "cloudlink-override"],
)
@pytest.mark.parametrize("via", ["update_device", "admin"])
def test_device_edits_reach_the_next_fetch(client, make_device, django_assert_num_queries, changes, expected, via):
    device = make_device(name="before")
    at = steady(client, device)
    assert cached(client, device, at, django_assert_num_queries).status_code == 200
    if via == "admin":
        committed(lambda: services.apply_admin_edit(device.pk, changes, reason="admin: t"))
    else:
        committed(lambda: services.update_device(device.pk, changes, reason="t"))
    r = get(client, device, at=at + timedelta(seconds=1))
    assert {k: state(r, device)[k] for k in expected} == expected
    # And once cached again, still the new values.
    r = cached(client, device, at + timedelta(seconds=2), django_assert_num_queries)
    assert {k: state(r, device)[k] for k in expected} == expected


def test_removing_an_override_falls_back_to_the_fleet(client, fleet, make_device, django_assert_num_queries):
    device = make_device()
    committed(
        lambda: services.update_device(device.pk, {"poll_interval": 1200, "cloudlink_enabled": False}, reason="t")
    )
    at = steady(client, device)
    assert state(cached(client, device, at, django_assert_num_queries), device)["interval"] == "1200000"
    committed(lambda: services.update_device(device.pk, {"poll_interval": None, "cloudlink_enabled": None}, reason="t"))
    r = get(client, device, at=at + timedelta(seconds=1))
    assert state(r, device) == {"name": device.name, "interval": "600000", "vpn": "true"}


@pytest.mark.parametrize("field", ["poll_interval", "cloudlink_enabled"])
@pytest.mark.parametrize("via", ["update_fleet", "admin"])
def test_fleet_edits_reach_the_next_fetch_of_its_devices(
    client, fleet, make_device, staff_client, django_assert_num_queries, field, via
):
    devices = [make_device(), make_device()]
    at = T0
    for d in devices:
        at = steady(client, d)
        cached(client, d, at, django_assert_num_queries)
    value = 1200 if field == "poll_interval" else False
    if via == "admin":
        data = {
            "name": fleet.name,
            "slug": fleet.slug,
            "fleet_type": fleet.fleet_type,
            "device_type": fleet.device_type,
            "poll_interval": 1200 if field == "poll_interval" else "",
        }
        if field != "cloudlink_enabled":
            data["cloudlink_enabled"] = "on"
        with TestCase.captureOnCommitCallbacks(execute=True):
            r = staff_client.post(f"/admin/fleets/fleet/{fleet.pk}/change/", data)
        assert r.status_code == 302, r.content[:2000]
    else:
        committed(lambda: services.update_fleet(fleet, {field: value}, reason="t"))
    fleet.refresh_from_db()
    assert getattr(fleet, field) == value
    for d in devices:
        got = state(get(client, d, at=at + timedelta(seconds=1)), d)
        assert got["interval" if field == "poll_interval" else "vpn"] == (
            "1200000" if field == "poll_interval" else "false"
        )


def test_freeze_and_unfreeze_by_allowance_reach_the_next_fetch(client, org, make_device, django_assert_num_queries):
    old, new = make_device(), make_device()
    at = steady(client, new)
    assert cached(client, new, at, django_assert_num_queries).status_code == 200
    committed(lambda: services.update_organization(org, {"device_allowance": 1}, reason="t"))
    assert Device.objects.get(pk=new.pk).is_frozen and not Device.objects.get(pk=old.pk).is_frozen
    assert get(client, new, at=at + timedelta(seconds=1)).status_code == 304
    assert cached(client, new, at + timedelta(seconds=2), django_assert_num_queries).status_code == 304
    committed(lambda: services.update_organization(org, {"device_allowance": None}, reason="t"))
    assert get(client, new, at=at + timedelta(seconds=3)).status_code == 200


def test_freeze_by_reconcile_frozen_reaches_the_next_fetch(client, org, make_device, django_assert_num_queries):
    make_device()
    device = make_device()
    at = steady(client, device)
    cached(client, device, at, django_assert_num_queries)
    # The allowance changed behind the services (a data fix); the periodic reconcile applies it.
    type(org).objects.filter(pk=org.pk).update(device_allowance=1)
    committed(lambda: services.reconcile_frozen(org.pk, reason="reconcile"))
    assert get(client, device, at=at + timedelta(seconds=1)).status_code == 304


def test_deactivation_reaches_the_next_fetch(client, make_device, django_assert_num_queries):
    device = make_device()
    at = steady(client, device)
    cached(client, device, at, django_assert_num_queries)
    committed(lambda: services.set_devices_active(Device.objects.filter(pk=device.pk), False, reason="t"))
    # set_devices_active refuses a device that is not Offline; force it as the admin's data fix would.
    if Device.objects.get(pk=device.pk).is_active:
        committed(lambda: services.update_device(device.pk, {"is_active": False}, reason="t"))
    assert not Device.objects.get(pk=device.pk).is_active
    assert devcache._scripts().client.get(devcache.device_key(device.uuid)) is None


def test_key_change_reaches_the_next_fetch(client, make_device):
    device = make_device()
    at = steady(client, device)
    new_key = generate_key()
    committed(lambda: services.update_device(device.pk, {"api_key_hash": hash_key(new_key)}, reason="t"))
    assert get(client, device, at=at).status_code == 401  # the old key
    assert get(client, device, key=new_key, at=at + timedelta(seconds=1)).status_code == 200


@pytest.mark.parametrize("bulk", [False, True], ids=["move_device", "move_devices"])
def test_move_to_another_fleet_reaches_the_next_fetch(
    client, org, make_fleet, make_device, bulk, django_assert_num_queries
):
    slow, _ = make_fleet(org, "slow", poll_interval=1800, cloudlink_enabled=False)
    device = make_device()
    at = steady(client, device)
    cached(client, device, at, django_assert_num_queries)
    if bulk:
        committed(lambda: services.move_devices(Device.objects.filter(pk=device.pk), slow, reason="t"))
    else:
        committed(lambda: services.move_device(device.pk, slow, reason="t"))
    got = state(get(client, device, at=at + timedelta(seconds=1)), device)
    assert (got["interval"], got["vpn"]) == ("1800000", "false")


def test_deleted_device_is_not_answered_from_the_cache(client, make_device):
    device = make_device()
    at = steady(client, device)
    committed(lambda: Device.objects.filter(pk=device.pk).delete())
    r = get(client, device, at=at)
    assert r.status_code == 401


# --- The race guard: a fill built from a row read before a change ------------------------------


def _miss_generations(device):
    found = devcache.lookup_and_fetch(device.uuid, device.api_key_hash, T0)
    assert found.outcome == devcache.MISS
    return found.generations


def test_a_fill_from_a_row_read_before_a_committed_change_is_refused(make_device):
    device = make_device(name="old")
    gens = _miss_generations(device)
    stale = Device.objects.select_related("fleet").get(pk=device.pk)
    committed(lambda: services.update_device(device.pk, {"name": "new"}, reason="t"))
    assert devcache.fill(stale, gens, T0) is False
    assert devcache._scripts().client.get(devcache.device_key(device.uuid)) is None


def test_a_fill_that_lands_before_the_commit_is_deleted_by_the_after_commit_invalidation(make_device):
    device = make_device(name="old")
    with TestCase.captureOnCommitCallbacks(execute=True):
        services.update_device(device.pk, {"name": "new"}, reason="t")
        # Another process read the old committed row after the immediate invalidation, and fills
        # before our commit: accepted for now...
        gens = _miss_generations(device)
        stale = Device.objects.select_related("fleet").get(pk=device.pk)
        stale.name = "old"
        assert devcache.fill(stale, gens, T0) is True
    # ...and gone once the change committed.
    assert devcache._scripts().client.get(devcache.device_key(device.uuid)) is None


def test_a_fleet_fill_from_before_a_fleet_change_is_refused(fleet, make_device):
    device = make_device()
    gens = _miss_generations(device)
    stale = Device.objects.select_related("fleet").get(pk=device.pk)
    committed(lambda: services.update_fleet(fleet, {"poll_interval": 1200}, reason="t"))
    devcache.fill(stale, gens, T0)
    assert devcache._scripts().client.hget(devcache.fleets_key(devcache.shard_of(device.uuid)), fleet.pk) is None


def test_state_reports_do_not_invalidate(client, make_device, django_assert_num_queries):
    device = make_device()
    at = steady(client, device)
    committed(lambda: services.update_device(device.pk, {"status": "Idle", "cpu_usage": 5}, reason="state report"))
    cached(client, device, at, django_assert_num_queries)


def test_prime_fills_active_devices_for_the_fast_path(client, make_device, django_assert_num_queries):
    device, inactive = make_device(), make_device()
    steady(client, device)
    committed(lambda: services.update_device(inactive.pk, {"is_active": False}, reason="t"))
    devcache.reset()
    assert devcache.prime(Device.objects.all(), T0) == 1
    cached(client, device, T0 + timedelta(seconds=60), django_assert_num_queries)


def test_an_old_fleet_entry_counts_as_missing(client, make_device, settings, django_assert_max_num_queries):
    device = make_device()
    at = steady(client, device)
    later = at + timedelta(seconds=settings.FLEETSTATUS_DEVICE_CACHE_TTL + 1)
    heartbeats.store().mark_online(device.pk, device.uuid, later + timedelta(seconds=60))
    with django_assert_max_num_queries(5) as captured:
        assert get(client, device, at=later).status_code == 200
    assert len(captured) >= 1


# --- Redis down ---------------------------------------------------------------------------------


def test_fetch_with_redis_down_takes_the_database_path(client, make_device, settings, caplog, monkeypatch):
    device = make_device(name="kiosk")
    at = steady(client, device)
    settings.REDIS_URL = closed_port_url()
    store_calls = []
    real_fetch = heartbeats.HeartbeatStore.fetch
    monkeypatch.setattr(
        heartbeats.HeartbeatStore, "fetch", lambda self, *a, **k: store_calls.append(a) or real_fetch(self, *a, **k)
    )
    with caplog.at_level(logging.WARNING):
        r = get(client, device, at=at)
    assert r.status_code == 200 and state(r, device)["name"] == "kiosk"
    assert Device.objects.get(pk=device.pk).last_api_heartbeat_at == at
    # The fast path's failed call is the request's only wait for Redis.
    assert store_calls == []


def test_a_change_with_redis_down_still_commits_and_logs(make_device, settings, caplog):
    device = make_device()
    settings.REDIS_URL = closed_port_url()
    with caplog.at_level(logging.ERROR):
        committed(lambda: services.update_device(device.pk, {"name": "renamed"}, reason="t"))
    assert Device.objects.get(pk=device.pk).name == "renamed"
    assert "device cache invalidation failed" in caplog.text


# --- The WSGI entry point's own checks ----------------------------------------------------------


def test_wsgi_fast_path_refuses_a_disallowed_host_as_django_does(make_device, settings, django_assert_num_queries):
    device = make_device()
    wsgi = WsgiClient()
    at = steady(wsgi, device)
    assert cached(wsgi, device, at, django_assert_num_queries).status_code == 200
    bad = WsgiClient(HTTP_HOST="evil.example")
    r = get(bad, device, at=at + timedelta(seconds=1))
    expected = database_answer(bad, device, settings, at + timedelta(seconds=2))
    assert r.status_code == 400 and answer(r) == answer(expected)


def test_wsgi_fast_path_over_https_sends_hsts_as_django_does(make_device, settings, django_assert_num_queries):
    device = make_device()
    wsgi = WsgiClient(secure=True)
    at = steady(wsgi, device)
    r = cached(wsgi, device, at, django_assert_num_queries)
    assert r["Strict-Transport-Security"].startswith(f"max-age={settings.SECURE_HSTS_SECONDS}")
    assert "Strict-Transport-Security" not in cached(WsgiClient(), device, at, django_assert_num_queries).headers
    assert answer(r) == answer(database_answer(wsgi, device, settings, at + timedelta(seconds=1)))


# --- The database down ------------------------------------------------------------------------------


class _DatabaseDown:
    """Stands in for devices.api.Device: every query fails as with PostgreSQL restarting."""

    DoesNotExist = Device.DoesNotExist

    class objects:  # noqa: N801
        @staticmethod
        def select_related(*args, **kwargs):
            from django.db import OperationalError

            raise OperationalError("the database system is shutting down")


def test_a_cached_steady_state_fetch_needs_no_database(client, make_device, monkeypatch):
    device = make_device()
    at = steady(client, device)
    monkeypatch.setattr("devices.api.views.Device", _DatabaseDown)
    assert get(client, device, at=at).status_code == 200


def test_the_fallback_path_answers_503_when_the_database_is_down(client, make_device, monkeypatch):
    device = make_device()
    at = steady(client, device)
    heartbeats.store().client.zrem(
        heartbeats.online_key(heartbeats.shard_of(device.uuid)), device.pk
    )  # not online in Redis: the database decides
    monkeypatch.setattr("devices.api.views.Device", _DatabaseDown)
    r = get(client, device, at=at)
    assert r.status_code == 503 and r["Retry-After"] and "database" in r.json()["error"]


# --- The fetch script of each configuration ------------------------------------------------------


@pytest.mark.parametrize(
    "default, floor, tolerance, ttl",
    [(600, 600, 1.5, 6 * 3600), (45, 30, 2.0, 3600), (120, 10, 1.25, 90)],
    ids=["defaults", "fast", "short-ttl"],
)
def test_the_fetch_script_with_the_settings_written_in_counts_as_the_heartbeat_store_does(
    client, make_device, settings, django_assert_num_queries, default, floor, tolerance, ttl
):
    settings.FLEETSTATUS_DEFAULT_POLL_INTERVAL = default
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = floor
    settings.FLEETSTATUS_HEARTBEAT_TOLERANCE = tolerance
    settings.FLEETSTATUS_DEVICE_CACHE_TTL = ttl
    source = devcache._fetcher().source
    assert f"interval = {default} end" in source and f"interval < {floor} then interval = {floor}" in source
    assert f"< {ttl * 1_000_000} then" in source and f"* {round(tolerance * 1_000_000)})" in source
    fast_dev, slow_dev, own_dev = make_device(), make_device(), make_device()
    services.update_device(own_dev, {"poll_interval": 20}, reason="t")  # below every floor but one
    for d in (fast_dev, slow_dev, own_dev):
        steady(client, d)
    at = T0 + timedelta(seconds=7, microseconds=654321)
    fast = cached(client, fast_dev, at, django_assert_num_queries)
    own = cached(client, own_dev, at, django_assert_num_queries)
    heartbeats.record_fetch(Device.objects.select_related("fleet").get(pk=slow_dev.pk), at=at)
    redis_ = heartbeats.store().client

    def stored(d):
        shard = heartbeats.shard_of(d.uuid)
        return redis_.zscore(heartbeats.online_key(shard), d.pk), redis_.hget(heartbeats.seen_key(shard), d.pk)

    interval = max(default, floor)
    assert stored(fast_dev) == stored(slow_dev)
    assert stored(fast_dev) == (heartbeats.to_us(at + timedelta(seconds=interval * tolerance)), b"%d" % to_us(at))
    assert stored(own_dev)[0] == heartbeats.to_us(at + timedelta(seconds=max(20, floor) * tolerance))
    assert state(fast, fast_dev)["interval"] == str(interval * 1000)
    assert state(own, own_dev)["interval"] == str(max(20, floor) * 1000)
    # A fleet entry as old as the TTL counts as missing (just before, the entry is used: the fetch
    # is counted or late).
    key_hash = fast_dev.api_key_hash
    just_before = devcache.lookup_and_fetch(fast_dev.uuid, key_hash, T0 + timedelta(seconds=ttl, microseconds=-1))
    assert just_before.outcome != devcache.MISS
    assert devcache.lookup_and_fetch(fast_dev.uuid, key_hash, T0 + timedelta(seconds=ttl)).outcome == devcache.MISS


def test_each_configuration_is_a_script_of_its_own(settings):
    first = devcache._fetcher()
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = settings.FLEETSTATUS_MIN_POLL_INTERVAL + 1
    second = devcache._fetcher()
    assert second.sha != first.sha and second.source != first.source
    settings.FLEETSTATUS_DEVICE_CACHE_TTL = 0
    assert not devcache.enabled()


def test_a_script_redis_forgot_is_loaded_again(client, make_device, django_assert_num_queries):
    device = make_device()
    at = steady(client, device)
    devcache._fetcher().client.script_flush()
    r = cached(client, device, at, django_assert_num_queries)
    assert r.status_code == 200
    shard = heartbeats.shard_of(device.uuid)
    assert heartbeats.store().client.hget(heartbeats.seen_key(shard), device.pk) == b"%d" % to_us(at)


def test_now_us_is_to_us_of_timezone_now():
    for moment in (T0, T0 + timedelta(microseconds=123457), T0 + timedelta(seconds=59, microseconds=999999)):
        with time_machine.travel(moment, tick=False):
            assert live_redis.now_us() == to_us(timezone.now()) == to_us(moment)
    before = to_us(timezone.now())
    now = live_redis.now_us()
    assert before <= now <= to_us(timezone.now())


# --- The WSGI entry point's cached checks ---------------------------------------------------------


def test_a_fetch_from_a_host_seen_before_builds_no_request(make_device, monkeypatch, django_assert_num_queries):
    device = make_device()
    wsgi = WsgiClient()
    at = steady(wsgi, device)
    assert cached(wsgi, device, at, django_assert_num_queries).status_code == 200

    def built(*args, **kwargs):
        raise AssertionError("the fast path built a request")

    monkeypatch.setattr(edge._EnvironRequest, "__init__", built)
    assert cached(wsgi, device, at + timedelta(seconds=1), django_assert_num_queries).status_code == 200


def test_the_edge_checks_follow_a_settings_change(make_device, settings, django_assert_num_queries):
    device = make_device()
    wsgi = WsgiClient()
    at = steady(wsgi, device)
    assert cached(wsgi, device, at, django_assert_num_queries).status_code == 200
    settings.ALLOWED_HOSTS = ["elsewhere.example"]
    assert get(wsgi, device, at=at + timedelta(seconds=1)).status_code == 400


def test_a_proxy_reported_scheme_is_checked_per_value(make_device, settings, django_assert_num_queries):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    device = make_device()
    wsgi = WsgiClient()
    at = steady(wsgi, device)
    https, http = {"X-Forwarded-Proto": "https"}, {"X-Forwarded-Proto": "http"}
    for n in range(2):  # the second time from the cached checks
        with django_assert_num_queries(0):
            secure = get(wsgi, device, at=at + timedelta(seconds=2 * n), headers=https)
            plain = get(wsgi, device, at=at + timedelta(seconds=2 * n + 1), headers=http)
        assert (secure.status_code, plain.status_code) == (200, 200)
        assert secure["Strict-Transport-Security"].startswith(f"max-age={settings.SECURE_HSTS_SECONDS}")
        assert "Strict-Transport-Security" not in plain.headers
    settings.SECURE_SSL_REDIRECT = True  # the device API is exempt (SECURE_REDIRECT_EXEMPT)
    for headers in (http, https):
        with django_assert_num_queries(0):
            fast = get(wsgi, device, at=at + timedelta(seconds=5), headers=headers)
        expected = database_answer(wsgi, device, settings, at + timedelta(seconds=6), headers=headers)
        assert fast.status_code == 200 and answer(fast) == answer(expected)
