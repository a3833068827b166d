"""The status rule: every combination of inputs, Python function ≡ database expression ≡ the rule table of docs/design.md."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from django.db import connection

from devices.models import Device
from devices.services.sql import _status_of_row_as_written
from devices.status import RULES, SIGNALS, Status, compute_status, status_expression, with_computed_status
from fleets.models import Fleet

T = datetime(2026, 1, 1, tzinfo=UTC)

DOMAINS = {
    "is_active": [True, False],
    "is_frozen": [False, True],
    "provisioning_state": ["", "Post-Provisioning", "Running OS update"],
    "provisioning_progress": [None, 0, 50],
    "api_heartbeat_state": ["unknown", "online", "offline"],
    "is_connected_to_vpn": [False, True],
    "last_connectivity_event": [None, T],
    "update_status": [None, "downloading", "done"],
    "status": ["Idle", "Downloading"],
    "download_progress": [None, 30],
    # (fleet switch, device override): effective cloudlink is the override, else the fleet's.
    "cloudlink": [(True, None), (False, None), (True, False), (False, True)],
}


def reference_status(s: dict) -> str:
    """The rule table of docs/design.md transliterated by hand, independent of devices.status."""
    vpn = s["is_connected_to_vpn"]
    hb = s["api_heartbeat_state"]
    if not s["is_active"]:
        return "inactive"
    if s["is_frozen"]:
        return "frozen"
    if s["provisioning_state"] == "Post-Provisioning":
        return "post-provisioning"
    if not vpn and s["last_connectivity_event"] is None and hb == "unknown":
        return "configuring"
    if not vpn and hb in ("offline", "unknown"):
        return "offline"
    if hb == "online" and (
        s["update_status"] == "downloading" or (s["status"] == "Downloading" and s["download_progress"] is not None)
    ):
        return "updating"
    if s["provisioning_progress"] is not None:
        return "configuring"
    if vpn and hb != "online":
        return "online-vpn-only"
    if not vpn and hb == "online" and s["effective_cloudlink"]:
        return "online-heartbeat-only"
    return "online"


def all_combinations():
    names = list(DOMAINS)
    for values in itertools.product(*DOMAINS.values()):
        combo = dict(zip(names, values, strict=True))
        fleet_switch, override = combo.pop("cloudlink")
        combo["fleet_cloudlink"] = fleet_switch
        combo["cloudlink_enabled"] = override
        combo["effective_cloudlink"] = fleet_switch if override is None else override
        yield combo


def test_signals_cover_every_rule_input():
    used = set()

    def collect(cond):
        if hasattr(cond, "signal"):
            used.add(cond.signal)
        for child in getattr(cond, "parts", ()):
            collect(child)
        if hasattr(cond, "inner"):
            collect(cond.inner)

    for _, cond in RULES:
        collect(cond)
    assert used == set(SIGNALS)


def test_function_matches_design_table_for_every_combination():
    combos = list(all_combinations())
    assert len(combos) == 2 * 2 * 3 * 3 * 3 * 2 * 2 * 3 * 2 * 2 * 4
    seen = set()
    for combo in combos:
        got = compute_status(combo)
        assert got == reference_status(combo), combo
        seen.add(got)
    assert seen == set(Status.values), "every status is reachable"


@pytest.mark.django_db
def test_database_expression_matches_function_for_every_combination(org):
    fleets = {
        switch: Fleet.objects.create(
            organization=org, slug=f"cl-{switch}".lower(), name=str(switch), cloudlink_enabled=switch
        )
        for switch in (True, False)
    }
    combos = list(all_combinations())
    devices = []
    for i, combo in enumerate(combos):
        fields = {k: v for k, v in combo.items() if k not in ("fleet_cloudlink", "effective_cloudlink")}
        devices.append(
            Device(uuid=f"{i:032x}", name=f"d{i}", organization=org, fleet=fleets[combo["fleet_cloudlink"]], **fields)
        )
    Device.objects.bulk_create(devices, batch_size=2000)
    expected = {f"{i:032x}": compute_status(c).value for i, c in enumerate(combos)}
    got = dict(with_computed_status(Device.objects.all()).values_list("uuid", "computed_status"))
    mismatches = {u: (expected[u], got[u]) for u in expected if expected[u] != got[u]}
    assert not mismatches, list(mismatches.items())[:5]
    assert len(got) == len(combos)


@pytest.mark.parametrize(
    "signals, expected",
    [
        ({"is_active": False, "is_frozen": True, "is_connected_to_vpn": True}, Status.INACTIVE),  # row 1
        ({"is_frozen": True, "provisioning_state": "Post-Provisioning"}, Status.FROZEN),  # row 2
        ({"provisioning_state": "Post-Provisioning", "api_heartbeat_state": "online"}, Status.POST_PROVISIONING),  # 3
        ({}, Status.CONFIGURING),  # row 4: registered, never connected
        ({"api_heartbeat_state": "offline"}, Status.OFFLINE),  # row 5
        ({"api_heartbeat_state": "unknown", "last_connectivity_event": T}, Status.OFFLINE),  # row 5, had a tunnel once
        ({"api_heartbeat_state": "online", "update_status": "downloading"}, Status.UPDATING),  # row 6
        ({"api_heartbeat_state": "online", "status": "Downloading", "download_progress": 10}, Status.UPDATING),  # 6
        (
            {"api_heartbeat_state": "online", "is_connected_to_vpn": True, "provisioning_progress": 5},
            Status.CONFIGURING,
        ),  # 7
        ({"api_heartbeat_state": "offline", "is_connected_to_vpn": True}, Status.ONLINE_VPN_ONLY),  # row 8
        ({"api_heartbeat_state": "online"}, Status.ONLINE_HEARTBEAT_ONLY),  # row 9
        ({"api_heartbeat_state": "online", "effective_cloudlink": False}, Status.ONLINE),  # row 10, cloudlink off
        ({"api_heartbeat_state": "online", "is_connected_to_vpn": True}, Status.ONLINE),  # row 10
    ],
)
def test_each_row_of_the_table(signals, expected):
    base = {
        "is_active": True,
        "is_frozen": False,
        "provisioning_state": "",
        "provisioning_progress": None,
        "api_heartbeat_state": "unknown",
        "is_connected_to_vpn": False,
        "last_connectivity_event": None,
        "update_status": None,
        "status": "",
        "download_progress": None,
        "effective_cloudlink": True,
    }
    assert compute_status({**base, **signals}) == expected


def test_expression_has_one_branch_per_rule():
    assert len(status_expression().cases) == len(RULES)


def test_labels_are_exactly_the_design_labels():
    assert [s.label for s in Status] == [
        "Online",
        "Online (VPN Only)",
        "Online (Heartbeat Only)",
        "Offline",
        "Configuring",
        "Updating",
        "Post Provisioning",
        "Inactive",
        "Frozen",
    ]


def _devices_for_every_combination(org) -> list[dict]:
    fleets = {
        switch: Fleet.objects.create(
            organization=org, slug=f"cl-{switch}".lower(), name=str(switch), cloudlink_enabled=switch
        )
        for switch in (True, False)
    }
    combos = list(all_combinations())
    devices = []
    for i, combo in enumerate(combos):
        fields = {k: v for k, v in combo.items() if k not in ("fleet_cloudlink", "effective_cloudlink")}
        devices.append(
            Device(uuid=f"{i:032x}", name=f"d{i}", organization=org, fleet=fleets[combo["fleet_cloudlink"]], **fields)
        )
    Device.objects.bulk_create(devices, batch_size=2000)
    return combos


def _sql_status(uuid: str, written: dict) -> str:
    """The SQL text of the rule (as the services' statements use it) for one device row, with the
    signals in `written` bound as parameters instead of read from the row."""
    case, names = _status_of_row_as_written(frozenset(written))
    sql = (
        f"SELECT {case} FROM devices_device d JOIN fleets_fleet f ON f.id = d.fleet_id WHERE d.uuid = %s"
        if written
        else f"SELECT d.uuid, {case} FROM devices_device d JOIN fleets_fleet f ON f.id = d.fleet_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [written[n] for n in names] + ([uuid] if written else []))
        return cursor.fetchone()[0] if written else dict(cursor.fetchall())


@pytest.mark.django_db
def test_sql_text_over_the_row_matches_function_for_every_combination(org):
    combos = _devices_for_every_combination(org)
    got = _sql_status("", {})
    mismatches = [(c, got[f"{i:032x}"]) for i, c in enumerate(combos) if compute_status(c).value != got[f"{i:032x}"]]
    assert not mismatches, mismatches[:5]


@pytest.mark.django_db
def test_sql_text_with_bound_values_matches_function(org):
    """Every signal but the cloudlink switch bound as a parameter (as a report or tunnel event binds
    the ones it writes), for a sample of combinations spread over all of them; NULLs included."""
    combos = _devices_for_every_combination(org)
    row_signals = [s for s in SIGNALS if s != "effective_cloudlink"]
    checked = 0
    for i in range(0, len(combos), 37):
        combo = combos[i]
        # A row whose values all differ from the bound ones where they can: only the parameters decide.
        other = combos[len(combos) - 1 - i]
        row = next(
            j
            for j, c in enumerate(combos)
            if (c["fleet_cloudlink"], c["cloudlink_enabled"]) == (combo["fleet_cloudlink"], combo["cloudlink_enabled"])
            and all(c[s] == other[s] for s in ("is_active", "is_connected_to_vpn", "api_heartbeat_state"))
        )
        got = _sql_status(f"{row:032x}", {s: combo[s] for s in row_signals})
        assert got == compute_status(combo).value, combo
        checked += 1
    assert checked > 250
