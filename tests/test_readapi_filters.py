"""The API's device list is the Devices page's: the same devices in the same order for the same query
string (generated combinations of every filter and sort), and its cursors stay true while devices
change status between pages."""

from __future__ import annotations

import itertools
import json
import random
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from devices import services
from devices.status import Status
from readapi.models import ApiToken
from tests.dashboard_helpers import device_in, row_uuids, signals_for

pytestmark = pytest.mark.django_db

STATUSES = [s.value for s in Status]
SORT_KEYS = [
    "name",
    "status",
    "uuid",
    "fleet",
    "device_type",
    "os",
    "release",
    "ip",
    "last_seen",
    "heartbeat",
    "cloudlink",
]


@pytest.fixture(autouse=True)
def _no_throttle(settings):
    settings.FLEETSTATUS_API_THROTTLE_REQUESTS = 0


@pytest.fixture
def api(owner) -> Client:
    return Client(headers={"Authorization": f"Bearer {ApiToken.issue(owner, 'tests')[1]}"})


@pytest.fixture
def fleet_of_devices(org, fleet, make_fleet, make_device, other_fleet):
    """~60 devices over two fleets, every status, repeated names (the id tiebreak matters), some never seen."""
    rng = random.Random(15)
    second, _ = make_fleet(org, "signage")
    now = timezone.now()
    devices = []
    for i in range(60):
        status = STATUSES[i % len(STATUSES)]
        seen = now - timedelta(minutes=rng.randrange(0, 5000))
        extra = {
            "ip_address": f"10.0.{i % 4}.{i} 192.168.{i % 3}.1" if i % 5 else "",
            "os_version": rng.choice(["balenaOS 5.1.0", "balenaOS 6.0.2", ""]),
            "release": rng.choice(["", "a1b2c3", "f00d"]),
            "device_type": rng.choice(["raspberrypi4-64", "generic-amd64"]),
        }
        target = second if i % 3 == 0 else fleet
        device = device_in(
            make_device,
            status,
            name=f"{rng.choice(['kiosk', 'Sign', 'gate'])}-{i % 17}",
            fleet=target,
            at=seen,
            **extra,
        )
        devices.append(device)
    make_device(other_fleet, name="kiosk-elsewhere")  # never visible
    return devices


def page_uuids(client: Client, params: list[tuple[str, str]]) -> list[str]:
    found, number = [], 1
    while True:
        response = client.get("/devices/", [*params, ("page", str(number))] if number > 1 else params)
        assert response.status_code == 200, response.status_code
        found += row_uuids(response)
        if not response.context["page"].has_next():
            return found
        number += 1


def api_uuids(client: Client, params: list[tuple[str, str]], limit: int) -> tuple[list[str], dict]:
    response = client.get("/api/v1/devices", [*params, ("limit", str(limit))])
    assert response.status_code == 200, response.content
    first = body = json.loads(response.content)
    found = [r["uuid"] for r in body["results"]]
    while body["next"]:
        body = json.loads(client.get(body["next"]).content)
        found += [r["uuid"] for r in body["results"]]
    return found, first


def combinations(devices) -> list[list[tuple[str, str]]]:
    rng = random.Random(7)
    uuid_prefix = devices[4].uuid[:5]
    status_sets = [[], ["online"], ["offline", "online"], ["frozen", "inactive", "configuring"], STATUSES[:5]]
    fleets = [None, "kiosks", "northwind/signage", "signage"]
    searches = [None, "kiosk", "SIGN", "10.0.", "192.168.2", uuid_prefix, "-1", "zzz"]
    sorts = [*SORT_KEYS, *(f"-{k}" for k in SORT_KEYS)]
    every = list(itertools.product(range(len(status_sets)), fleets, searches, sorts))
    chosen = rng.sample(every, 70) + [(0, None, None, s) for s in sorts]
    cases = []
    for status_index, fleet, q, sort in chosen:
        params = [("status", s) for s in status_sets[status_index]]
        params += [("fleet", fleet)] if fleet else []
        params += [("q", q)] if q else []
        params.append(("sort", sort))
        cases.append(params)
    return cases


def test_same_devices_in_the_same_order_as_the_page(owner_client, api, fleet_of_devices):
    checked = multi_page = 0
    for params in combinations(fleet_of_devices):
        expected = page_uuids(owner_client, params)
        got, first = api_uuids(api, params, limit=7)
        assert got == expected, params
        assert first["count"] == len(expected), params
        # The counts per status are the page's own (every filter but the status one).
        page_counts = {c["slug"]: c["n"] for c in owner_client.get("/devices/", params).context["counts"]}
        assert first["counts"] == page_counts, params
        checked += 1
        multi_page += len(expected) > 7
    assert checked >= 90 and multi_page >= 20, (checked, multi_page)


def _flip(device, rng) -> None:
    status = rng.choice(["online", "offline", "online-vpn-only"])
    services.update_device(device, signals_for(status, timezone.now()), reason="flip")


@pytest.mark.parametrize("status_filter", [None, "online"])
def test_cursor_is_stable_while_devices_change_status(api, make_device, status_filter):
    rng = random.Random(3)
    devices = [device_in(make_device, rng.choice(["online", "offline"]), name=f"dev-{i:02}") for i in range(40)]
    params = {"limit": 6, **({"status": status_filter} if status_filter else {})}
    body = json.loads(api.get("/api/v1/devices", params).content)
    seen = [r["uuid"] for r in body["results"]]
    changed: set[str] = set()
    before = {d.uuid: d.overall_status for d in devices}
    while body["next"]:
        for device in rng.sample(devices, 5):
            _flip(device, rng)
            changed.add(device.uuid)
        body = json.loads(api.get(body["next"]).content)
        seen += [r["uuid"] for r in body["results"]]
    assert len(seen) == len(set(seen)), "a device was listed twice"
    steady = {u for u, s in before.items() if u not in changed and (status_filter is None or s == status_filter)}
    assert steady <= set(seen), "a device that did not change was skipped"
    if status_filter is None:
        assert set(seen) == set(before)


def test_cursor_sorted_by_status_skips_or_repeats_only_devices_that_moved(api, make_device):
    rng = random.Random(5)
    devices = [device_in(make_device, rng.choice(["online", "offline"]), name=f"dev-{i:02}") for i in range(30)]
    body = json.loads(api.get("/api/v1/devices", {"limit": 4, "sort": "status"}).content)
    seen = [r["uuid"] for r in body["results"]]
    changed: set[str] = set()
    while body["next"]:
        for device in rng.sample(devices, 3):
            _flip(device, rng)
            changed.add(device.uuid)
        body = json.loads(api.get(body["next"]).content)
        seen += [r["uuid"] for r in body["results"]]
    unchanged = [u for u in seen if u not in changed]
    assert sorted(unchanged) == sorted({d.uuid for d in devices} - changed)
