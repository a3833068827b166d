"""POST /services/vpn/client-connect and /client-disconnect: cloudlink tunnel events, in bulk."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices import services
from devices.api.parsing import MAX_TUNNEL_UUIDS
from devices.models import Device, StatusTransition
from devices.status import HeartbeatState, Status
from tests.apiutil import bulk_devices, send, service_key, snapshot

CONNECT = "/services/vpn/client-connect"
DISCONNECT = "/services/vpn/client-disconnect"
T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


@pytest.fixture
def vpn_key(db) -> str:
    return service_key()


def tunnel(client, url, uuids, service_id, key, at=T0):
    with time_machine.travel(at, tick=False):
        return send(client, "POST", url, {"uuids": uuids, "serviceId": service_id}, key=key)


def test_connect_marks_tunnel_up_and_unknown_uuids_are_ignored(client, make_device, vpn_key):
    device = make_device(api_heartbeat_state=HeartbeatState.ONLINE)
    assert device.overall_status == Status.ONLINE_HEARTBEAT_ONLY
    r = tunnel(client, CONNECT, [device.uuid, secrets.token_hex(16), secrets.token_hex(31)], 7, vpn_key)
    assert r.status_code == 200 and r.json() == {"matched": 1, "reactivated": 0}
    device.refresh_from_db()
    assert device.is_connected_to_vpn and device.vpn_service_id == 7
    assert device.last_vpn_event == device.last_connectivity_event == device.last_seen_at == T0
    assert device.overall_status == Status.ONLINE
    t = StatusTransition.objects.filter(device=device).first()
    assert (t.from_status, t.to_status, t.at) == (Status.ONLINE_HEARTBEAT_ONLY, Status.ONLINE, T0)
    assert t.reason == "cloudlink tunnel connected (VPN service 7)"


def test_connect_without_heartbeat_is_vpn_only(client, make_device, vpn_key):
    device = make_device()
    tunnel(client, CONNECT, [device.uuid], 1, vpn_key)
    assert Device.objects.get(pk=device.pk).overall_status == Status.ONLINE_VPN_ONLY


def test_disconnect_applies_only_where_the_same_service_holds_the_device(client, make_device, vpn_key):
    moved, stayed = make_device(name="moved"), make_device(name="stayed")
    tunnel(client, CONNECT, [moved.uuid, stayed.uuid], 1, vpn_key)
    # `moved` reconnected through VPN instance 2; instance 1's late disconnect must not drop it.
    tunnel(client, CONNECT, [moved.uuid], 2, vpn_key, at=T0 + timedelta(seconds=1))
    later = T0 + timedelta(seconds=2)
    r = tunnel(client, DISCONNECT, [moved.uuid, stayed.uuid], 1, vpn_key, at=later)
    assert r.json()["matched"] == 1
    moved.refresh_from_db()
    stayed.refresh_from_db()
    assert moved.is_connected_to_vpn and moved.vpn_service_id == 2
    assert moved.last_vpn_event == T0 + timedelta(seconds=1)
    assert not stayed.is_connected_to_vpn and stayed.vpn_service_id is None
    assert stayed.last_vpn_event == stayed.last_connectivity_event == later
    assert stayed.last_seen_at == T0  # a disconnect is not contact from the device
    assert stayed.overall_status == Status.OFFLINE
    assert (
        StatusTransition.objects.filter(device=stayed).first().reason == "cloudlink tunnel disconnected (VPN service 1)"
    )
    # A repeated disconnect from the same service finds nothing to do.
    assert tunnel(client, DISCONNECT, [stayed.uuid], 1, vpn_key).json()["matched"] == 0


def test_connect_reactivates_inactive_devices_and_reconciles_the_allowance(client, org, make_device, vpn_key):
    keeper = make_device(name="keeper")
    returning = make_device(name="returning", api_heartbeat_state=HeartbeatState.OFFLINE)
    services.set_active(returning, False, reason="user")
    services.update_organization(org, {"device_allowance": 1}, reason="plan")
    r = tunnel(client, CONNECT, [returning.uuid], 3, vpn_key)
    assert r.json() == {"matched": 1, "reactivated": 1}
    returning.refresh_from_db()
    keeper.refresh_from_db()
    assert returning.is_active and returning.activated_at == T0
    # Beyond the allowance of 1: the newly activated device is frozen, the older one keeps working.
    assert returning.overall_status == Status.FROZEN
    assert keeper.overall_status == Status.CONFIGURING
    reasons = list(StatusTransition.objects.filter(device=returning).order_by("id").values_list("to_status", "reason"))
    assert reasons[-2:] == [
        (Status.ONLINE_VPN_ONLY, "cloudlink tunnel connected (VPN service 3)"),
        (Status.FROZEN, "cloudlink tunnel connected (VPN service 3): reactivated"),
    ]


def test_reactivation_within_the_allowance(client, make_device, vpn_key):
    device = make_device(api_heartbeat_state=HeartbeatState.OFFLINE)
    services.set_active(device, False, reason="user")
    tunnel(client, CONNECT, [device.uuid], 3, vpn_key)
    device.refresh_from_db()
    assert device.is_active and device.overall_status == Status.ONLINE_VPN_ONLY


@pytest.mark.parametrize(
    "auth",
    [None, "Bearer", "Bearer x y", "Bearer " + "0" * 64],
    ids=["missing", "no-key", "two-words", "wrong-key"],
)
def test_auth_failures_are_401(client, make_device, vpn_key, auth):
    device = make_device()
    before = snapshot()
    headers = {} if auth is None else {"Authorization": auth}
    for url in (CONNECT, DISCONNECT):
        r = send(client, "POST", url, {"uuids": [device.uuid], "serviceId": 1}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]
    assert snapshot() == before


def test_device_and_provisioning_keys_are_not_service_keys(client, fleet_and_key, make_device, vpn_key):
    device = make_device()
    before = snapshot()
    for key in (device.api_key, fleet_and_key[1]):
        assert tunnel(client, CONNECT, [device.uuid], 1, key).status_code == 401
    assert snapshot() == before


@pytest.mark.parametrize(
    "body, field",
    [
        ({"serviceId": 1}, "uuids"),
        ({"uuids": "abc"}, "serviceId"),
        ({"uuids": "abc", "serviceId": 1}, "uuids"),
        ({"uuids": ["%s", "NOT-A-UUID"], "serviceId": 1}, "uuids[1]"),
        ({"uuids": ["%s", 5], "serviceId": 1}, "uuids[1]"),
        ({"uuids": ["%s"], "serviceId": "1"}, "serviceId"),
        ({"uuids": ["%s"], "serviceId": True}, "serviceId"),
        ({"uuids": ["%s"], "serviceId": -1}, "serviceId"),
        ({"uuids": ["%s"], "serviceId": 1.5}, "serviceId"),
        ({"uuids": ["%s"], "serviceId": None}, "serviceId"),
        ({"uuids": ["%s"], "serviceId": 2**31}, "serviceId"),
    ],
)
def test_bad_input_is_400_naming_the_key_and_changes_nothing(client, make_device, vpn_key, body, field):
    device = make_device()
    if isinstance(body.get("uuids"), list):
        body["uuids"] = [device.uuid if u == "%s" else u for u in body["uuids"]]
    before = snapshot()
    r = send(client, "POST", CONNECT, body, key=vpn_key)
    assert r.status_code == 400 and r.json()["field"] == field
    assert snapshot() == before


def test_more_than_8000_uuids_and_malformed_bodies_are_refused(client, make_device, vpn_key):
    device = make_device()
    before = snapshot()
    too_many = [device.uuid] + [secrets.token_hex(16) for _ in range(MAX_TUNNEL_UUIDS)]
    r = tunnel(client, CONNECT, too_many, 1, vpn_key)
    assert r.status_code == 400 and r.json()["field"] == "uuids"
    for raw in (b"{", b"[]", b'{"uuids": [], "serviceId": Infinity}'):
        assert send(client, "POST", CONNECT, key=vpn_key, raw=raw).status_code == 400
    assert send(client, "POST", CONNECT, key=vpn_key, raw=b" " * (1024 * 1024 + 1)).status_code == 413
    assert snapshot() == before


def test_wrong_method_is_405(client, vpn_key):
    for url in (CONNECT, DISCONNECT):
        r = send(client, "GET", url, key=vpn_key)
        assert r.status_code == 405 and r["Allow"] == "POST"


def _mixed(fleet, scale: int) -> list[str]:
    # 40 % with an online heartbeat, 39 % offline, 1 % inactive: several resulting statuses.
    online = bulk_devices(fleet, 40 * scale, api_heartbeat_state=HeartbeatState.ONLINE)
    offline = bulk_devices(fleet, 39 * scale, api_heartbeat_state=HeartbeatState.OFFLINE)
    inactive = bulk_devices(fleet, scale, api_heartbeat_state=HeartbeatState.OFFLINE, is_active=False)
    return [d.uuid for d in online + offline + inactive]


def _eight_thousand(fleet) -> list[str]:
    return _mixed(fleet, 100)


def _queries(client, url, uuids, key, at=T0) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert tunnel(client, url, uuids, 1, key, at=at).status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.slow
def test_tunnel_events_cost_the_same_queries_for_80_or_8000_devices(client, fleet, make_fleet, org, vpn_key):
    # Same mix of statuses, a hundred times more devices: not one query more.
    small = _mixed(make_fleet(org, "small")[0], 1)
    small_active = [u for u in small if Device.objects.get(uuid=u).is_active]
    big = _mixed(fleet, 100)
    inactive = set(Device.objects.filter(is_active=False).values_list("uuid", flat=True))  # one query, not one per UUID
    big_active = [u for u in big if u not in inactive]
    assert len(big_active) == 7900 and len(small_active) == 79
    assert _queries(client, CONNECT, small_active, vpn_key) == _queries(client, CONNECT, big_active, vpn_key)
    later = T0 + timedelta(minutes=1)
    assert _queries(client, DISCONNECT, small_active, vpn_key, later) == _queries(
        client, DISCONNECT, big_active, vpn_key, later
    )
    assert not Device.objects.filter(is_connected_to_vpn=True).exists()


@pytest.mark.slow
def test_client_connect_of_8000_uuids_costs_a_bounded_number_of_queries(
    client, fleet, vpn_key, django_assert_max_num_queries
):
    uuids = _eight_thousand(fleet)
    # Auth, one locking read, one UPDATE per resulting (status, reactivated) group, one INSERT of
    # all transitions, the allowance check; one query per device would be over 8,000.
    with django_assert_max_num_queries(15):
        r = tunnel(client, CONNECT, uuids, 1, vpn_key)
    assert r.json() == {"matched": 8000, "reactivated": 100}
    assert Device.objects.filter(is_connected_to_vpn=True, vpn_service_id=1, last_seen_at=T0).count() == 8000
    assert Device.objects.filter(overall_status=Status.ONLINE).count() == 4000
    assert Device.objects.filter(overall_status=Status.ONLINE_VPN_ONLY).count() == 4000
    assert not Device.objects.filter(is_active=False).exists()
    transitions = StatusTransition.objects.filter(reason="cloudlink tunnel connected (VPN service 1)", at=T0)
    assert transitions.count() == 8000
    assert set(transitions.values_list("from_status", "to_status").distinct()) == {
        (Status.ONLINE_HEARTBEAT_ONLY, Status.ONLINE),
        (Status.OFFLINE, Status.ONLINE_VPN_ONLY),
        (Status.INACTIVE, Status.ONLINE_VPN_ONLY),
    }
    with django_assert_max_num_queries(15):
        r = tunnel(client, DISCONNECT, uuids, 1, vpn_key, at=T0 + timedelta(minutes=1))
    assert r.json()["matched"] == 8000
    assert not Device.objects.filter(is_connected_to_vpn=True).exists()


@pytest.mark.postgres
@pytest.mark.slow
def test_client_connect_of_8000_uuids_costs_about_one_row_write_each_on_postgresql(client, fleet, vpn_key):
    """Wall time against the floor: one plain UPDATE that writes each of the same rows once.

    An absolute bound would measure the machine (CI shares its cores); the ratio measures the
    code: per-device queries, a second pass over the rows or models built per row would all blow
    it. The absolute figure (well under 1 s for 8,000 on an idle machine) is benchmark P7's job
    (`python3 dev.py bench`).
    """
    uuids = _eight_thousand(fleet)
    tunnel(client, CONNECT, uuids, 9, vpn_key)  # the inactive ones are active from here on
    floor, calls = [], []
    for i in range(3):
        at = T0 + timedelta(minutes=i + 1)
        started = time.perf_counter()
        Device.objects.filter(fleet=fleet).update(last_seen_at=at, last_vpn_event=at)
        floor.append(time.perf_counter() - started)
        started = time.perf_counter()
        r = tunnel(client, DISCONNECT if i % 2 == 0 else CONNECT, uuids, 9, vpn_key, at=at)
        calls.append(time.perf_counter() - started)
        assert r.json()["matched"] == 8000
    # Every call above changes all 8,000 statuses: 8,000 transitions each.
    assert StatusTransition.objects.filter(reason__endswith="(VPN service 9)").count() == 4 * 8000
    assert min(calls) < 3 * min(floor) + 0.25, (
        f"client-connect/disconnect of 8,000 UUIDs took {min(calls):.2f} s; "
        f"one UPDATE of the same rows took {min(floor):.2f} s"
    )
