"""Device API keys, provisioning keys and service keys: stored only as hashes, compared in constant
time, and each accepted only where it belongs."""

from __future__ import annotations

import hashlib
import json
import secrets

import pytest
from django.db import connection
from django.test import Client

from devices.models import Device, StatusTransition
from fleets.keys import generate_key, hash_key
from fleets.models import ServiceKey

pytestmark = pytest.mark.django_db


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keys(fleet_and_key, other_fleet, make_device):
    fleet, provisioning = fleet_and_key
    service = generate_key()
    ServiceKey.objects.create(name="vpn", key_hash=hash_key(service))
    me, peer = make_device(name="me"), make_device(name="peer")
    return {
        "fleet": fleet,
        "provisioning": provisioning,
        "service": service,
        "me": me,
        "peer": peer,
        "other_fleet": other_fleet,
    }


def _all_text_in_database() -> str:
    """Every row of every project table as text: a plain secret must appear nowhere."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            if table.startswith(("devices_", "fleets_")):
                cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
                chunks.append(repr(cursor.fetchall()))
    return "\n".join(chunks)


def test_keys_are_stored_only_as_sha256_hashes(client, keys):
    uuid = secrets.token_hex(16)
    chosen = secrets.token_hex(20)
    response = client.post(
        "/device/register",
        json.dumps({"uuid": uuid, "device_type": "x", "api_key": chosen}),
        content_type="application/json",
        headers=bearer(keys["provisioning"]),
    )
    assert response.status_code == 201
    generated = client.post(
        "/device/register",
        json.dumps({"uuid": secrets.token_hex(16)}),
        content_type="application/json",
        headers=bearer(keys["provisioning"]),
    ).json()["api_key"]
    dump = _all_text_in_database()
    for secret in (chosen, generated, keys["provisioning"], keys["service"], keys["me"].api_key):
        assert secret not in dump, "a plain key is stored in the database"
    assert Device.objects.get(uuid=uuid).api_key_hash == hashlib.sha256(chosen.encode()).hexdigest()
    assert keys["fleet"].provisioning_key_hash == hashlib.sha256(keys["provisioning"].encode()).hexdigest()


@pytest.mark.parametrize("kind", ["device", "unknown-device", "provisioning", "service", "report"])
def test_every_key_check_uses_a_constant_time_comparison(client, keys, monkeypatch, kind):
    import hmac

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("fleets.keys.hmac.compare_digest", spy)
    me = keys["me"]
    if kind == "device":
        client.get(f"/device/v3/{me.uuid}/state", headers=bearer("wrong" * 8))
    elif kind == "unknown-device":
        # An unknown UUID costs a comparison too, so timing does not tell which UUIDs exist.
        client.get(f"/device/v3/{secrets.token_hex(16)}/state", headers=bearer("wrong" * 8))
    elif kind == "provisioning":
        client.post(
            "/device/register",
            json.dumps({"uuid": secrets.token_hex(16)}),
            content_type="application/json",
            headers=bearer(keys["provisioning"]),
        )
    elif kind == "service":
        client.post(
            "/services/vpn/client-connect",
            json.dumps({"uuids": [], "serviceId": 1}),
            content_type="application/json",
            headers=bearer(keys["service"]),
        )
    else:
        client.patch(
            "/device/v3/state",
            json.dumps({me.uuid: {"status": "Idle"}}),
            content_type="application/json",
            headers=bearer(me.api_key),
        )
    assert calls, f"{kind}: the key was not compared with hmac.compare_digest"


def _unchanged(test):
    before = (list(Device.objects.order_by("pk").values()), StatusTransition.objects.count())
    test()
    assert (list(Device.objects.order_by("pk").values()), StatusTransition.objects.count()) == before


def test_a_device_key_works_only_for_its_own_device(client: Client, keys):
    me, peer = keys["me"], keys["peer"]
    assert client.get(f"/device/v3/{me.uuid}/state", headers=bearer(me.api_key)).status_code == 200

    def other_devices():
        assert client.get(f"/device/v3/{peer.uuid}/state", headers=bearer(me.api_key)).status_code == 401
        body = json.dumps({peer.uuid: {"status": "Hijacked", "cpu_usage": 99}})
        assert client.patch(
            "/device/v3/state", body, content_type="application/json", headers=bearer(me.api_key)
        ).status_code in (401, 403)
        both = json.dumps({me.uuid: {"status": "Idle"}, peer.uuid: {"status": "Hijacked"}})
        assert (
            client.patch(
                "/device/v3/state", both, content_type="application/json", headers=bearer(me.api_key)
            ).status_code
            == 403
        )

    _unchanged(other_devices)


def test_a_provisioning_key_registers_only_into_its_own_fleet(client, keys):
    uuid = secrets.token_hex(16)
    response = client.post(
        "/device/register",
        json.dumps({"uuid": uuid}),
        content_type="application/json",
        headers=bearer(keys["provisioning"]),
    )
    assert response.status_code == 201
    assert Device.objects.get(uuid=uuid).fleet == keys["fleet"]
    # The provisioning key authenticates nothing else.
    assert client.get(f"/device/v3/{uuid}/state", headers=bearer(keys["provisioning"])).status_code == 401
    tunnel = json.dumps({"uuids": [uuid], "serviceId": 1})
    assert (
        client.post(
            "/services/vpn/client-connect",
            tunnel,
            content_type="application/json",
            headers=bearer(keys["provisioning"]),
        ).status_code
        == 401
    )


def test_a_service_key_works_only_on_the_tunnel_endpoints_and_device_keys_not_there(client, keys):
    me = keys["me"]
    tunnel = json.dumps({"uuids": [me.uuid], "serviceId": 7})

    def misuse():
        service = bearer(keys["service"])
        assert client.get(f"/device/v3/{me.uuid}/state", headers=service).status_code == 401
        assert (
            client.patch(
                "/device/v3/state",
                json.dumps({me.uuid: {"status": "x"}}),
                content_type="application/json",
                headers=service,
            ).status_code
            == 401
        )
        assert (
            client.post(
                "/device/register",
                json.dumps({"uuid": secrets.token_hex(16)}),
                content_type="application/json",
                headers=service,
            ).status_code
            == 401
        )
        for endpoint in ("client-connect", "client-disconnect"):
            assert (
                client.post(
                    f"/services/vpn/{endpoint}", tunnel, content_type="application/json", headers=bearer(me.api_key)
                ).status_code
                == 401
            )

    _unchanged(misuse)
    response = client.post(
        "/services/vpn/client-connect", tunnel, content_type="application/json", headers=bearer(keys["service"])
    )
    assert response.status_code == 200
    assert Device.objects.get(pk=me.pk).is_connected_to_vpn
