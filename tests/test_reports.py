"""The device API's request parsing (devices/api/parsing.py): pure functions, no database."""

from __future__ import annotations

import itertools

import pytest

from devices.api.parsing import (
    MAX_TUNNEL_UUIDS,
    BadRequest,
    parse_json,
    parse_registration,
    parse_state_report,
    parse_tunnel_event,
    split_state_body,
    summarize_apps,
)
from devices.status import UPDATE_STATUS_PRECEDENCE

UUID32 = "a" * 32
UUID62 = "0123456789abcdef" * 3 + "0123456789abcd"


def bad(fn, *args, field=None):
    with pytest.raises(BadRequest) as info:
        fn(*args)
    if field is not None:
        assert info.value.field == field
        assert field.split(".")[-1] in info.value.message
    return info.value


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"{'a': 1}", b"NaN", b'{"a": Infinity}', b"\xff\xfe\x00", b"[" * 100000, b"1" * 5000],
)
def test_parse_json_rejects_what_is_not_json(body):
    err = bad(parse_json, body)
    assert err.status == 400 and err.message.startswith("The body is not valid JSON")


def test_parse_json_accepts_utf8_objects():
    assert parse_json('{"status": "Idle ✓"}'.encode()) == {"status": "Idle ✓"}


def test_real_idle_report_shape():
    # What a balena supervisor sends when only its status changed after provisioning.
    changes = parse_state_report({"status": "Idle", "provisioning_progress": None, "provisioning_state": ""})
    assert changes == {"status": "Idle", "provisioning_progress": None, "provisioning_state": ""}


def test_unknown_keys_are_ignored_and_secrets_never_returned():
    report = {
        "api_port": 48484,
        "api_secret": "s3cr3t-do-not-store",
        "cpu_id": "0x1234",
        "is_online": True,
        "name": "renamed-by-agent",
        "logs_channel": None,
        "storage_block_device": "/dev/mmcblk0",
        "download_progress": 30,
        "cpu_temp": 48,
    }
    assert parse_state_report(report) == {"cpu_temp": 48}


def test_all_known_keys_parse():
    report = {
        "status": "Idle",
        "os_version": "balenaOS 5.3.10",
        "os_variant": None,
        "supervisor_version": "16.4.6",
        "ip_address": "192.168.1.20 10.0.0.4",
        "mac_address": "DC:A6:32:00:00:01",
        "provisioning_state": "",
        "provisioning_progress": 40.4,
        "memory_usage": 512,
        "memory_total": 3906,
        "storage_usage": 1200,
        "storage_total": 29000,
        "cpu_temp": -12,
        "cpu_usage": 7,
        "is_undervolted": False,
    }
    changes = parse_state_report(report)
    assert changes["os_variant"] == ""  # null → empty text column
    assert changes["provisioning_progress"] == 40  # integral columns round
    assert changes["cpu_temp"] == -12  # a temperature may be below zero
    assert {k: v for k, v in changes.items() if k not in {"os_variant", "provisioning_progress"}} == {
        k: v for k, v in report.items() if k not in {"os_variant", "provisioning_progress"}
    }


@pytest.mark.parametrize(
    "report, field",
    [
        ([], ""),
        ({"status": 5}, "status"),
        ({"status": "x" * 51}, "status"),
        ({"os_version": "x" * 65}, "os_version"),
        ({"mac_address": "x" * 256}, "mac_address"),
        ({"status": "Id\x00le"}, "status"),
        ({"status": "\ud800"}, "status"),
        ({"provisioning_progress": 101}, "provisioning_progress"),
        ({"provisioning_progress": -1}, "provisioning_progress"),
        ({"provisioning_progress": "50"}, "provisioning_progress"),
        ({"provisioning_progress": True}, "provisioning_progress"),
        ({"memory_usage": -1}, "memory_usage"),
        ({"storage_total": 2**63}, "storage_total"),
        ({"cpu_usage": 100.6}, "cpu_usage"),
        ({"cpu_temp": -300}, "cpu_temp"),
        ({"is_undervolted": "no"}, "is_undervolted"),
        ({"is_undervolted": None}, "is_undervolted"),
        ({"apps": []}, "apps"),
        ({"apps": {"app1": "x"}}, "apps.app1"),
        ({"apps": {"app1": {"release_uuid": 7}}}, "apps.app1.release_uuid"),
        ({"apps": {"app1": {"release_uuid": "r" * 65}}}, "apps.app1.release_uuid"),
        (
            {"apps": {"app1": {"releases": {"c1": {"update_status": "installing"}}}}},
            "apps.app1.releases.c1.update_status",
        ),
        ({"apps": {"app1": {"releases": {"c1": {"services": []}}}}}, "apps.app1.releases.c1.services"),
        (
            {
                "apps": {
                    "app1": {
                        "releases": {"c1": {"services": {"web": {"status": "Downloading", "download_progress": 150}}}}
                    }
                }
            },
            "apps.app1.releases.c1.services.web.download_progress",
        ),
        (
            {"apps": {"app1": {"releases": {"c1": {"services": {"web": {"image": 3}}}}}}},
            "apps.app1.releases.c1.services.web.image",
        ),
    ],
)
def test_bad_values_of_known_keys_name_the_key(report, field):
    err = bad(parse_state_report, report)
    assert err.status == 400
    assert (err.field or "") == field


def _apps(*releases: tuple[str | None, dict]) -> dict:
    return {
        "app-uuid": {
            "release_uuid": "c0",
            "releases": {
                f"c{i}": {"update_status": status, "services": services}
                for i, (status, services) in enumerate(releases)
            },
        }
    }


@pytest.mark.parametrize("pair", list(itertools.combinations(UPDATE_STATUS_PRECEDENCE, 2)))
def test_lowest_update_status_wins_across_releases(pair):
    low, high = pair  # combinations keep declaration order: low precedes high
    for order in (pair, pair[::-1]):
        summary = summarize_apps(_apps(*[(s, {}) for s in order]))
        assert summary["update_status"] == low, (order, high)


def test_explicit_precedence_order():
    assert UPDATE_STATUS_PRECEDENCE == ["rejected", "aborted", "downloading", "downloaded", "applying changes", "done"]


def test_downloading_service_makes_the_device_downloading_with_its_progress():
    services = {"web": {"image": "registry/web@sha256:1", "status": "Downloading", "download_progress": 50}}
    summary = summarize_apps(_apps((None, services)))
    assert summary == {"update_status": "downloading", "download_progress": 50, "release": "c0"}
    # Two downloading services: their mean; a running one does not count.
    services["db"] = {"image": "registry/db", "status": "Downloading", "download_progress": 20}
    services["proxy"] = {"image": "registry/proxy", "status": "Running", "download_progress": None}
    assert summarize_apps(_apps(("done", services)))["download_progress"] == 35
    # Downloading without a progress says nothing about progress.
    assert summarize_apps(_apps(("done", {"web": {"status": "Downloading"}}))) == {
        "update_status": "done",
        "download_progress": None,
        "release": "c0",
    }


def test_apps_without_update_status_clear_it_and_release_is_kept_when_unnamed():
    assert summarize_apps({}) == {"update_status": None, "download_progress": None}
    assert summarize_apps({"a": {"releases": {}}}) == {"update_status": None, "download_progress": None}
    assert summarize_apps({"a": {"release_uuid": None}, "b": {"release_uuid": "rb"}})["release"] == "rb"


def test_registration():
    reg = parse_registration({"uuid": UUID62, "device_type": "raspberrypi4-64", "user": 3, "application": 9})
    assert (reg.uuid, reg.device_type, reg.api_key) == (UUID62, "raspberrypi4-64", None)
    assert parse_registration({"uuid": UUID32, "api_key": "k" * 32}).api_key == "k" * 32
    assert parse_registration({"uuid": UUID32}).device_type == ""


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "uuid"),
        ({"uuid": UUID32.upper()}, "uuid"),
        ({"uuid": "a" * 31}, "uuid"),
        ({"uuid": "a" * 33}, "uuid"),
        ({"uuid": "g" * 32}, "uuid"),
        ({"uuid": 12}, "uuid"),
        ({"uuid": UUID32, "device_type": "x" * 65}, "device_type"),
        ({"uuid": UUID32, "device_type": ["pi"]}, "device_type"),
        ({"uuid": UUID32, "api_key": "short"}, "api_key"),
        ({"uuid": UUID32, "api_key": "has a space in it!!"}, "api_key"),
        ({"uuid": UUID32, "api_key": 1234567890123456789}, "api_key"),
    ],
)
def test_bad_registrations(body, field):
    assert bad(parse_registration, body).field == field


def test_split_state_body():
    assert split_state_body({UUID32: {}}) == {UUID32: {}}
    bad(split_state_body, {})
    bad(split_state_body, [])
    assert bad(split_state_body, {"not-a-uuid": {}}).field == "not-a-uuid"
    bad(split_state_body, {f"{i:032x}": {} for i in range(21)})


def test_tunnel_events():
    assert parse_tunnel_event({"uuids": [UUID32, UUID62], "serviceId": 3}) == ([UUID32, UUID62], 3)
    assert parse_tunnel_event({"uuids": [], "serviceId": 0}) == ([], 0)
    assert bad(parse_tunnel_event, {"serviceId": 1}).field == "uuids"
    assert bad(parse_tunnel_event, {"uuids": []}).field == "serviceId"
    assert bad(parse_tunnel_event, {"uuids": UUID32, "serviceId": 1}).field == "uuids"
    assert bad(parse_tunnel_event, {"uuids": [UUID32, "nope"], "serviceId": 1}).field == "uuids[1]"
    for service_id in ("1", True, -1, 1.5, 2.0, 2**31, None):
        assert bad(parse_tunnel_event, {"uuids": [], "serviceId": service_id}).field == "serviceId"
    too_many = [f"{i:032x}" for i in range(MAX_TUNNEL_UUIDS + 1)]
    assert "8000" in bad(parse_tunnel_event, {"uuids": too_many, "serviceId": 1}, field="uuids").message
