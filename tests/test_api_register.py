"""POST /device/register: a device registers itself with its fleet's provisioning key."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest
import time_machine

from devices import services
from devices.models import Device, StatusTransition
from devices.status import HeartbeatState, Status
from fleets.keys import hash_key, key_matches
from tests.apiutil import send, snapshot

URL = "/device/register"
T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


def new_uuid() -> str:
    return secrets.token_hex(16)


def test_register_creates_a_configuring_device_with_a_generated_key(client, fleet_and_key):
    fleet, key = fleet_and_key
    uuid = new_uuid()
    with time_machine.travel(T0, tick=False):
        # The extra keys balena's registration sends are accepted and ignored.
        r = send(
            client, "POST", URL, {"uuid": uuid, "device_type": "raspberrypi5", "user": 1, "application": 2}, key=key
        )
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"id", "uuid", "api_key"}
    device = Device.objects.get(pk=body["id"])
    assert (device.uuid, device.fleet, device.organization_id, device.device_type) == (
        uuid,
        fleet,
        fleet.organization_id,
        "raspberrypi5",
    )
    assert device.overall_status == Status.CONFIGURING and device.is_active
    assert key_matches(body["api_key"], device.api_key_hash) and body["api_key"] not in device.api_key_hash
    t = StatusTransition.objects.get(device=device)
    assert (t.from_status, t.to_status, t.at, t.reason) == ("", Status.CONFIGURING, T0, "registered")
    # The key it got works for its heartbeat.
    assert send(client, "GET", f"/device/v3/{uuid}/state", key=body["api_key"]).status_code == 200


def test_register_with_own_api_key_and_62_char_uuid_defaults_device_type(client, fleet_and_key):
    fleet, key = fleet_and_key
    uuid, own_key = secrets.token_hex(31), secrets.token_hex(16)
    r = send(client, "POST", URL, {"uuid": uuid, "api_key": own_key}, key=key)
    assert r.status_code == 201
    assert r.json()["api_key"] == own_key
    device = Device.objects.get(uuid=uuid)
    assert device.api_key_hash == hash_key(own_key)
    assert device.device_type == fleet.device_type


def test_taken_uuid_is_409_and_changes_nothing(client, fleet_and_key, make_device, other_fleet):
    _fleet, key = fleet_and_key
    existing = make_device()
    before = snapshot()
    r = send(client, "POST", URL, {"uuid": existing.uuid, "device_type": "x"}, key=key)
    assert r.status_code == 409
    assert r.json()["field"] == "uuid" and existing.uuid in r.json()["error"]
    assert snapshot() == before


def test_preregistered_device_is_claimed_and_its_first_fetch_activates_it(client, fleet_and_key):
    fleet, key = fleet_and_key
    uuid = new_uuid()
    pre, operator_key = services.create_device(fleet, uuid, is_active=False, reason="preregistered")
    assert pre.overall_status == Status.INACTIVE
    with time_machine.travel(T0, tick=False):
        r = send(client, "POST", URL, {"uuid": uuid, "device_type": "raspberrypi5"}, key=key)
    assert r.status_code == 201
    assert r.json()["id"] == pre.pk
    device_key = r.json()["api_key"]
    pre.refresh_from_db()
    assert pre.device_type == "raspberrypi5"
    assert key_matches(device_key, pre.api_key_hash) and not key_matches(operator_key, pre.api_key_hash)
    # Registration is not contact: it stays Inactive until it fetches or connects its tunnel.
    assert pre.overall_status == Status.INACTIVE and not pre.is_active
    with time_machine.travel(T0, tick=False):
        assert send(client, "GET", f"/device/v3/{uuid}/state", key=device_key).status_code == 200
    pre.refresh_from_db()
    assert pre.is_active and pre.activated_at == T0
    assert pre.overall_status == Status.ONLINE_HEARTBEAT_ONLY
    assert StatusTransition.objects.filter(device=pre).first().reason == "target state fetched"
    # Claimed once: a second registration of the same UUID is a conflict.
    assert send(client, "POST", URL, {"uuid": uuid}, key=key).status_code == 409


def test_preregistered_in_another_fleet_or_already_seen_is_not_claimable(client, fleet_and_key, make_fleet, org):
    fleet, key = fleet_and_key
    elsewhere, _ = make_fleet(org, "elsewhere")
    foreign, _ = services.create_device(elsewhere, new_uuid(), is_active=False)
    seen, _ = services.create_device(fleet, new_uuid())
    services.update_device(seen, {"api_heartbeat_state": HeartbeatState.OFFLINE, "last_seen_at": T0}, reason="t")
    services.set_active(seen, False, reason="user")
    before = snapshot()
    for uuid in (foreign.uuid, seen.uuid):
        assert send(client, "POST", URL, {"uuid": uuid}, key=key).status_code == 409
    assert snapshot() == before


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer two words"},
        {"Authorization": "Bearer " + "0" * 64},
    ],
    ids=["missing", "empty", "basic", "no-key", "two-words", "wrong-key"],
)
def test_auth_failures_are_401_json(client, fleet, headers):
    before = snapshot()
    r = send(client, "POST", URL, {"uuid": new_uuid()}, headers=headers)
    assert r.status_code == 401
    assert r["Content-Type"] == "application/json" and r.json()["error"]
    assert r["WWW-Authenticate"].startswith("Bearer")
    assert snapshot() == before


def test_other_keys_are_not_provisioning_keys(client, fleet, make_device):
    from tests.apiutil import service_key

    device = make_device()
    for key in (device.api_key, service_key()):
        assert send(client, "POST", URL, {"uuid": new_uuid()}, key=key).status_code == 401
    assert Device.objects.count() == 1


@pytest.mark.parametrize(
    "raw, status, field",
    [
        (b"{", 400, None),
        (b"[]", 400, None),
        (b'"uuid"', 400, None),
        (b"{}", 400, "uuid"),
        (b'{"uuid": "ABCDEF0123456789ABCDEF0123456789"}', 400, "uuid"),
        (b'{"uuid": "abc"}', 400, "uuid"),
        (b'{"uuid": "' + b"a" * 32 + b'", "device_type": "' + b"x" * 65 + b'"}', 400, "device_type"),
        (b'{"uuid": "' + b"a" * 32 + b'", "device_type": 4}', 400, "device_type"),
        (b'{"uuid": "' + b"a" * 32 + b'", "api_key": "short"}', 400, "api_key"),
        (b'{"uuid": "' + b"a" * 32 + b'", "pad": "' + b"x" * 20000 + b'"}', 413, None),
    ],
)
def test_bad_input_is_4xx_json_and_creates_nothing(client, fleet_and_key, raw, status, field):
    _fleet, key = fleet_and_key
    before = snapshot()
    r = send(client, "POST", URL, key=key, raw=raw)
    assert r.status_code == status
    assert r.json()["error"]
    assert r.json().get("field") == field
    assert snapshot() == before


def test_wrong_method_is_405_json(client, fleet_and_key):
    r = send(client, "GET", URL, key=fleet_and_key[1])
    assert r.status_code == 405
    assert r["Allow"] == "POST" and "GET" in r.json()["error"]
