"""GET /device/v3/<uuid>/state: the target-state fetch, which is the device's heartbeat."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from devices import services
from devices.live import heartbeats
from devices.models import Device, StatusTransition
from devices.status import HeartbeatState, Status
from fleets.models import Tier
from tests.apiutil import WsgiClient, send, snapshot

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


def url(uuid: str) -> str:
    return f"/device/v3/{uuid}/state"


def fetch(client, device, key=None, at=T0):
    with time_machine.travel(at, tick=False):
        return send(client, "GET", url(device.uuid), key=device.api_key if key is None else key)


def test_fetch_returns_target_state_and_counts_as_heartbeat(client, make_device):
    device = make_device(name="kiosk-1")
    r = fetch(client, device)
    assert r.status_code == 200
    state = r.json()
    assert list(state) == [device.uuid]
    assert state[device.uuid]["name"] == "kiosk-1"
    assert state[device.uuid]["apps"] == {}
    config = state[device.uuid]["config"]
    assert config["BALENA_SUPERVISOR_POLL_INTERVAL"] == "600000"  # the default 600 s, in ms
    assert config["BALENA_SUPERVISOR_VPN_CONTROL"] == "true"
    assert all(isinstance(v, str) for v in config.values())
    device.refresh_from_db()
    assert device.api_heartbeat_state == HeartbeatState.ONLINE
    assert device.last_api_heartbeat_at == T0 and device.last_seen_at == T0
    assert device.overall_status == Status.ONLINE_HEARTBEAT_ONLY
    t = StatusTransition.objects.filter(device=device).first()
    assert (t.from_status, t.to_status, t.at, t.reason) == (
        Status.CONFIGURING,
        Status.ONLINE_HEARTBEAT_ONLY,
        T0,
        "target state fetched",
    )


def test_poll_interval_is_the_effective_one_in_ms(client, settings, fleet, make_device):
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = 30
    services.update_fleet(fleet, {"poll_interval": 120}, reason="t")
    plain, override = make_device(), make_device()
    services.update_device(override, {"poll_interval": 45}, reason="t")
    interval = "BALENA_SUPERVISOR_POLL_INTERVAL"
    assert fetch(client, plain).json()[plain.uuid]["config"][interval] == "120000"
    assert fetch(client, override).json()[override.uuid]["config"][interval] == "45000"
    # Never below the floor, whatever was stored before the floor was raised.
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = 300
    assert fetch(client, override).json()[override.uuid]["config"][interval] == "300000"


def test_vpn_control_reflects_the_effective_cloudlink_switch(client, fleet, make_device):
    services.update_fleet(fleet, {"cloudlink_enabled": False}, reason="t")
    follows_fleet, forced_on = make_device(), make_device()
    services.update_device(forced_on, {"cloudlink_enabled": True}, reason="t")
    assert fetch(client, follows_fleet).json()[follows_fleet.uuid]["config"]["BALENA_SUPERVISOR_VPN_CONTROL"] == "false"
    assert fetch(client, forced_on).json()[forced_on.uuid]["config"]["BALENA_SUPERVISOR_VPN_CONTROL"] == "true"
    # Cloudlink off and no tunnel is plain Online, not Heartbeat Only.
    assert Device.objects.get(pk=follows_fleet.pk).overall_status == Status.ONLINE


def test_frozen_device_gets_304_and_the_fetch_does_not_count(client, org, fleet, make_fleet, make_device):
    paid_fleet, _ = make_fleet(org, "paid", fleet_type=Tier.PAID)
    device = make_device(paid_fleet)
    services.update_organization(org, {"tier": Tier.FREE}, reason="downgrade")
    device.refresh_from_db()
    assert device.overall_status == Status.FROZEN
    before = snapshot()
    r = fetch(client, device)
    assert r.status_code == 304 and r.content == b""
    assert snapshot() == before  # no heartbeat, no last-seen, no transition


def test_fetch_reactivates_an_inactive_device(client, make_device):
    device = make_device(api_heartbeat_state=HeartbeatState.OFFLINE)
    services.set_active(device, False, reason="user deactivated")
    assert fetch(client, device).status_code == 200
    device.refresh_from_db()
    assert device.is_active and device.activated_at == T0
    assert device.overall_status == Status.ONLINE_HEARTBEAT_ONLY
    t = StatusTransition.objects.filter(device=device).first()
    assert (t.from_status, t.to_status, t.reason) == (
        Status.INACTIVE,
        Status.ONLINE_HEARTBEAT_ONLY,
        "target state fetched",
    )


def test_reactivation_beyond_the_allowance_freezes_and_answers_304(client, org, make_device):
    older = make_device(name="older")
    device = make_device(name="newer", api_heartbeat_state=HeartbeatState.OFFLINE)
    services.set_active(device, False, reason="user")
    services.update_organization(org, {"device_allowance": 1}, reason="plan")
    assert not Device.objects.filter(is_frozen=True).exists()
    r = fetch(client, device)
    assert r.status_code == 304
    device.refresh_from_db()
    older.refresh_from_db()
    assert device.is_active and device.overall_status == Status.FROZEN
    assert older.overall_status != Status.FROZEN


def test_steady_state_fetch_is_one_read_plus_what_record_fetch_costs(
    client, make_device, monkeypatch, django_assert_num_queries
):
    device = make_device()
    assert fetch(client, device).status_code == 200
    calls = []

    def fake_record_fetch(d, *, at=None, store_failed=False):
        calls.append((d.pk, at))
        return d

    monkeypatch.setattr(heartbeats, "record_fetch", fake_record_fetch)
    later = T0 + timedelta(seconds=60)
    with django_assert_num_queries(1):  # the device with its fleet, nothing else
        assert fetch(client, device, at=later).status_code == 200
    assert calls == [(device.pk, later)]


def test_steady_state_fetch_through_the_real_heartbeat_path(client, make_device, django_assert_max_num_queries):
    device = make_device()
    fetch(client, device)
    with django_assert_max_num_queries(2):  # the read, and at most one conditional UPDATE (0 with Redis)
        assert fetch(client, device, at=T0 + timedelta(seconds=60)).status_code == 200
    device.refresh_from_db()
    assert StatusTransition.objects.filter(device=device).count() == 2  # registered, first fetch


@pytest.mark.redis
def test_steady_state_fetch_with_redis_writes_nothing_to_the_database(make_device):
    """With Redis, a fetch by a device already online writes nothing, and reads nothing either:
    the first fetch filled the device cache, and the edge of the WSGI entry point answers from it."""
    client = WsgiClient()
    from django.db import connection
    from django.test import TestCase
    from django.test.utils import CaptureQueriesContext

    device = make_device()
    # The first fetch is a transition (written to the database); the device joins Redis's online
    # set after commit, which the test transaction only simulates.
    with TestCase.captureOnCommitCallbacks(execute=True):
        assert fetch(client, device).status_code == 200
    for minute in (1, 2, 3):
        with CaptureQueriesContext(connection) as queries:
            assert fetch(client, device, at=T0 + timedelta(minutes=minute)).status_code == 200
        assert queries.captured_queries == []
    device.refresh_from_db()
    assert device.overall_status == Status.ONLINE_HEARTBEAT_ONLY
    assert device.last_api_heartbeat_at == T0  # later fetches live in Redis until the sweep writes them back
    assert heartbeats.store().client.hget(heartbeats.seen_key(heartbeats.shard_of(device.uuid)), device.pk) is not None


@pytest.mark.parametrize(
    "auth",
    [None, "", "Token abc", "Bearer", "Bearer " + "0" * 64],
    ids=["missing", "empty", "other-scheme", "no-key", "wrong-key"],
)
def test_auth_failures_are_401(client, make_device, auth):
    device = make_device()
    before = snapshot()
    headers = {} if auth is None else {"Authorization": auth}
    with time_machine.travel(T0, tick=False):
        r = send(client, "GET", url(device.uuid), headers=headers)
    assert r.status_code == 401 and r.json()["error"]
    assert snapshot() == before


def test_another_devices_key_and_an_unknown_uuid_look_the_same(client, make_device):
    device, other = make_device(), make_device()
    before = snapshot()
    wrong_device = fetch(client, device, key=other.api_key)
    unknown = fetch(client, Device(uuid=secrets.token_hex(16)), key=other.api_key)
    assert wrong_device.status_code == unknown.status_code == 401
    # Same body: an unauthenticated caller cannot tell whether the UUID exists.
    assert wrong_device.json() == unknown.json()
    assert snapshot() == before


@pytest.mark.parametrize("bad_uuid", ["A" * 32, "a" * 31, "a" * 40, "z" * 32])
def test_malformed_uuid_is_400(client, make_device, bad_uuid):
    device = make_device()
    before = snapshot()
    r = send(client, "GET", url(bad_uuid), key=device.api_key)
    assert r.status_code == 400 and r.json()["field"] == "uuid"
    assert snapshot() == before


def test_wrong_method_is_405(client, make_device):
    device = make_device()
    for method in ("POST", "PATCH", "DELETE"):
        r = send(client, method, url(device.uuid), {}, key=device.api_key)
        assert r.status_code == 405 and r["Allow"] == "GET" and r.json()["error"]
