"""PATCH /device/v3/state: state reports from device agents."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from devices import services
from devices.models import Device, StatusTransition
from devices.status import HeartbeatState, Status
from tests.apiutil import send, snapshot

URL = "/device/v3/state"
T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


def report(client, device, body, *, key=None, at=T0):
    with time_machine.travel(at, tick=False):
        return send(client, "PATCH", URL, body, key=device.api_key if key is None else key)


@pytest.fixture
def online(make_device):
    """A device whose heartbeat is online (it has fetched), as when it reports an update."""
    return make_device(name="kiosk-1", api_heartbeat_state=HeartbeatState.ONLINE)


def apps_downloading(progress: int | None = 50, update_status: str | None = None) -> dict:
    # The shape balena's supervisor sends in a v3 report while it pulls a new release.
    return {
        "4f8b1c0e2a9d4e7fb3c6a1d2e5f60718": {
            "release_uuid": "0b5c2e0f9d3a4b1c8e7f6a5d4c3b2a19",
            "releases": {
                "0b5c2e0f9d3a4b1c8e7f6a5d4c3b2a19": {
                    "update_status": "done",
                    "services": {
                        "main": {"image": "registry2/v1-main", "status": "Running", "download_progress": None}
                    },
                },
                "7d9e8f6a5b4c3d2e1f0a9b8c7d6e5f41": {
                    **({"update_status": update_status} if update_status else {}),
                    "services": {
                        "main": {"image": "registry2/v2-main", "status": "Downloading", "download_progress": progress}
                    },
                },
            },
        }
    }


def test_idle_report_as_agents_send_it(client, online):
    r = report(
        client, online, {online.uuid: {"status": "Idle", "provisioning_progress": None, "provisioning_state": ""}}
    )
    assert r.status_code == 200 and r.json() == {}
    online.refresh_from_db()
    assert (online.status, online.provisioning_progress, online.provisioning_state) == ("Idle", None, "")
    assert online.last_state_report_at == T0 and online.last_seen_at == T0
    # A report is not a heartbeat.
    assert online.last_api_heartbeat_at is None


def test_full_report_is_stored_and_extra_keys_ignored(client, online):
    body = {
        online.uuid: {
            "status": "Idle",
            "os_version": "balenaOS 5.3.10",
            "os_variant": "prod",
            "supervisor_version": "16.4.6",
            "ip_address": "192.168.1.20 10.114.102.1",
            "mac_address": "DC:A6:32:00:00:01 02:42:45:00:00:01",
            "memory_usage": 512,
            "memory_total": 3906,
            "storage_usage": 1200,
            "storage_total": 29000,
            "cpu_temp": 48,
            "cpu_usage": 7,
            "is_undervolted": True,
            # Keys real agents send that fleetstatus does not use.
            "api_port": 48484,
            "api_secret": "agent-secret-never-stored",
            "cpu_id": "0x10000000a1b2c3d4",
            "is_online": True,
            "name": "renamed-by-agent",
            "logs_channel": None,
            "storage_block_device": "/dev/mmcblk0",
        }
    }
    assert report(client, online, body).status_code == 200
    row = Device.objects.filter(pk=online.pk).values().get()
    for key in ("os_version", "os_variant", "supervisor_version", "ip_address", "mac_address", "cpu_temp"):
        assert row[key] == body[online.uuid][key]
    assert (row["memory_usage"], row["storage_total"], row["cpu_usage"], row["is_undervolted"]) == (512, 29000, 7, True)
    assert row["name"] == "kiosk-1"
    assert not any("agent-secret-never-stored" in str(value) for value in row.values())
    assert not StatusTransition.objects.filter(reason__contains="agent-secret").exists()


def test_service_downloading_at_50_makes_the_device_updating(client, online):
    assert (
        report(client, online, {online.uuid: {"status": "Downloading", "apps": apps_downloading(50)}}).status_code
        == 200
    )
    online.refresh_from_db()
    assert (online.update_status, online.download_progress) == ("downloading", 50)
    assert online.release == "0b5c2e0f9d3a4b1c8e7f6a5d4c3b2a19"
    assert online.overall_status == Status.UPDATING
    t = StatusTransition.objects.filter(device=online).first()
    assert (t.to_status, t.at, t.reason) == (Status.UPDATING, T0, "state report")
    # Progress moves on; then the release is done and the device is back to its link status.
    report(client, online, {online.uuid: {"apps": apps_downloading(80)}}, at=T0 + timedelta(seconds=5))
    assert Device.objects.get(pk=online.pk).download_progress == 80
    done = {
        "4f8b1c0e2a9d4e7fb3c6a1d2e5f60718": {
            "release_uuid": "7d9e8f6a5b4c3d2e1f0a9b8c7d6e5f41",
            "releases": {
                "7d9e8f6a5b4c3d2e1f0a9b8c7d6e5f41": {
                    "update_status": "done",
                    "services": {
                        "main": {"image": "registry2/v2-main", "status": "Running", "download_progress": None}
                    },
                }
            },
        }
    }
    report(client, online, {online.uuid: {"status": "Idle", "apps": done}}, at=T0 + timedelta(seconds=9))
    online.refresh_from_db()
    assert (online.update_status, online.download_progress, online.overall_status) == (
        "done",
        None,
        Status.ONLINE_HEARTBEAT_ONLY,
    )
    assert online.release == "7d9e8f6a5b4c3d2e1f0a9b8c7d6e5f41"


@pytest.mark.parametrize(
    "statuses, expected",
    [
        (["done", "downloading"], "downloading"),
        (["applying changes", "downloaded"], "downloaded"),
        (["done", "applying changes"], "applying changes"),
        (["downloading", "aborted", "done"], "aborted"),
        (["aborted", "rejected"], "rejected"),
    ],
)
def test_lowest_update_status_across_releases_wins(client, online, statuses, expected):
    apps = {"app": {"releases": {f"commit{i}": {"update_status": s, "services": {}} for i, s in enumerate(statuses)}}}
    assert report(client, online, {online.uuid: {"apps": apps}}).status_code == 200
    online.refresh_from_db()
    assert online.update_status == expected
    assert (online.overall_status == Status.UPDATING) == (expected == "downloading")


def test_provisioning_drives_configuring_and_post_provisioning(client, online):
    report(client, online, {online.uuid: {"provisioning_state": "Running OS update", "provisioning_progress": 40}})
    online.refresh_from_db()
    assert online.overall_status == Status.CONFIGURING
    report(client, online, {online.uuid: {"provisioning_state": "Post-Provisioning", "provisioning_progress": None}})
    online.refresh_from_db()
    assert online.overall_status == Status.POST_PROVISIONING
    history = list(StatusTransition.objects.filter(device=online).order_by("id").values_list("to_status", "reason"))
    assert history[-2:] == [(Status.CONFIGURING, "state report"), (Status.POST_PROVISIONING, "state report")]


def test_report_does_not_reactivate_an_inactive_device(client, make_device):
    device = make_device(api_heartbeat_state=HeartbeatState.OFFLINE)
    services.set_active(device, False, reason="user")
    assert report(client, device, {device.uuid: {"status": "Idle"}}).status_code == 200
    device.refresh_from_db()
    assert not device.is_active and device.status == "Idle"


def test_naming_another_device_is_refused_and_changes_nothing(client, online, make_device):
    other = make_device()
    before = snapshot()
    # Own key, body for the own device and another one: authenticated, but forbidden.
    r = report(client, online, {online.uuid: {"status": "Idle"}, other.uuid: {"status": "Hacked"}})
    assert r.status_code == 403
    assert r.json()["uuids"] == [other.uuid]
    # Own key, body only for another device: a valid device key, so forbidden (403), not 401.
    r = report(client, online, {other.uuid: {"status": "Hacked"}})
    assert r.status_code == 403
    assert r.json()["uuids"] == [other.uuid]
    # A key that belongs to no device at all is unauthenticated.
    r = send(client, "PATCH", URL, {other.uuid: {"status": "Hacked"}}, headers={"Authorization": "Bearer " + "e" * 64})
    assert r.status_code == 401
    assert snapshot() == before


@pytest.mark.parametrize(
    "auth",
    [None, "Bearer", "Basic abc", "Bearer " + "f" * 64],
    ids=["missing", "no-key", "other-scheme", "wrong-key"],
)
def test_auth_failures_are_401(client, online, auth):
    before = snapshot()
    headers = {} if auth is None else {"Authorization": auth}
    r = send(client, "PATCH", URL, {online.uuid: {"status": "Idle"}}, headers=headers)
    assert r.status_code == 401 and r.json()["error"]
    assert snapshot() == before


def test_unknown_uuid_and_wrong_key_look_the_same(client, online):
    wrong_key = report(client, online, {online.uuid: {"status": "Idle"}}, key="f" * 64).json()
    unknown = report(client, online, {"e" * 32: {"status": "Idle"}}, key="f" * 64).json()
    assert wrong_key == unknown


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"status": 1}, "status"),
        ({"status": "x" * 51}, "status"),
        ({"os_version": "v" * 65}, "os_version"),
        ({"ip_address": "1" * 256}, "ip_address"),
        ({"provisioning_state": "x" * 65}, "provisioning_state"),
        ({"provisioning_progress": 101}, "provisioning_progress"),
        ({"provisioning_progress": -5}, "provisioning_progress"),
        ({"memory_usage": -1}, "memory_usage"),
        ({"storage_usage": -1}, "storage_usage"),
        ({"storage_total": 2**63}, "storage_total"),
        ({"cpu_usage": 250}, "cpu_usage"),
        ({"cpu_temp": "hot"}, "cpu_temp"),
        ({"is_undervolted": "yes"}, "is_undervolted"),
        ({"status": "Id\u0000le"}, "status"),
        ({"apps": "none"}, "apps"),
        ({"apps": {"a": {"releases": {"c": {"update_status": "installing"}}}}}, "apps.a.releases.c.update_status"),
        (
            {
                "apps": {
                    "a": {"releases": {"c": {"services": {"s": {"status": "Downloading", "download_progress": 101}}}}}
                }
            },
            "apps.a.releases.c.services.s.download_progress",
        ),
    ],
)
def test_bad_values_are_400_naming_the_key_with_no_partial_write(client, online, fields, field):
    before = snapshot()
    # Valid keys in the same report must not be written either.
    r = report(client, online, {online.uuid: {"status": "Idle", "os_version": "balenaOS 6", **fields}})
    assert r.status_code == 400
    assert r.json()["field"] == field and field.split(".")[-1] in r.json()["error"]
    assert snapshot() == before


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"{not json", 400),
        (b"[]", 400),
        (b"{}", 400),
        (b'{"x": NaN}', 400),
        (b"\xff\xfe", 400),
        (b"", 400),
        (b'{"%s": []}', 400),
        (b'{"NOT-A-UUID": {}}', 400),
        (b'{"%s": {"status": "Idle", "pad": "' + b"x" * (300 * 1024) + b'"}}', 413),
    ],
)
def test_malformed_bodies_are_4xx_json(client, online, raw, status):
    before = snapshot()
    raw = raw.replace(b"%s", online.uuid.encode())
    r = send(client, "PATCH", URL, key=online.api_key, raw=raw)
    assert r.status_code == status
    assert r.json()["error"]
    assert snapshot() == before


def test_deeply_nested_body_is_400_not_500(client, online):
    raw = json.dumps({online.uuid: {"apps": {}}}).encode()
    raw = raw.replace(b"{}", b"[" * 50000 + b"]" * 50000)
    r = send(client, "PATCH", URL, key=online.api_key, raw=raw)
    assert r.status_code == 400 and "nested" in r.json()["error"]


def test_wrong_method_is_405(client, online):
    r = send(client, "GET", URL, key=online.api_key)
    assert r.status_code == 405 and r["Allow"] == "PATCH"
