"""The benchmark seed generator (benchmarks/seed.py) obeys the status rule, the allowance rule and
its own history contract. Pure generation: no database, so it runs on every setup; the bench itself
checks the million seeded rows again in SQL (seed.verify)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from benchmarks import seed
from devices.models import Device
from devices.services import FROZEN_OVER_ALLOWANCE, FROZEN_PAID_FLEET
from devices.status import HeartbeatState, Status, compute_status
from fleets.models import Tier

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
COLUMNS = [f.column for f in Device._meta.concrete_fields]


def fleets(n: int, *, paid: int = 0, cloudlink_off: int = 0) -> list[seed.FleetInfo]:
    return [
        seed.FleetInfo(
            id=100 + j,
            org_id=7,
            slug=f"f{j}",
            device_type="raspberrypi4-64",
            poll_interval=900 if j % 3 == 0 else None,
            cloudlink=j >= cloudlink_off,
            paid=j < paid,
            releases=["abc1234", "def5678"],
        )
        for j in range(n)
    ]


def generate(op: seed.OrgPlan, fleet_infos: list[seed.FleetInfo]) -> tuple[list[dict], int | None]:
    rows, allowance = seed.DeviceRows(COLUMNS, NOW).org(0, op, fleet_infos, first_index=0, first_id=1)
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows], allowance


def signals(row: dict, fleet_infos: list[seed.FleetInfo]) -> dict:
    cloudlink = {f.id: f.cloudlink for f in fleet_infos}[row["fleet_id"]]
    if row["cloudlink_enabled"] is not None:
        cloudlink = row["cloudlink_enabled"]
    return {
        "is_active": row["is_active"],
        "is_frozen": row["is_frozen"],
        "provisioning_state": row["provisioning_state"],
        "provisioning_progress": row["provisioning_progress"],
        "api_heartbeat_state": row["api_heartbeat_state"],
        "is_connected_to_vpn": row["is_connected_to_vpn"],
        "last_connectivity_event": row["last_connectivity_event"],
        "update_status": row["update_status"],
        "status": row["status"],
        "download_progress": row["download_progress"],
        "effective_cloudlink": cloudlink,
    }


def test_every_status_appears_and_equals_the_rule():
    infos = fleets(6, cloudlink_off=1)
    rows, _ = generate(seed.OrgPlan("o", "O", 6, 3000, Tier.PAID, over_allowance=0.01), infos)
    assert len(rows) == 3000
    for row in rows:
        assert row["overall_status"] == compute_status(signals(row, infos)).value, row
    assert {r["overall_status"] for r in rows} == {s.value for s in Status}


def test_frozen_devices_are_exactly_those_reconcile_frozen_picks():
    infos = fleets(4, paid=1)
    op = seed.OrgPlan("o", "O", 4, 2000, Tier.FREE, over_allowance=0.02, paid_fleets=1)
    rows, allowance = generate(op, infos)
    active = sorted((r for r in rows if r["is_active"]), key=lambda r: (r["activated_at"], r["id"]))
    assert allowance == len(active) - int(len(active) * 0.02)
    paid_fleet = infos[0].id
    for rank, r in enumerate(active, start=1):
        if r["fleet_id"] == paid_fleet:
            expected = FROZEN_PAID_FLEET
        elif rank > allowance:
            expected = FROZEN_OVER_ALLOWANCE.format(allowance=allowance)
        else:
            expected = ""
        assert (r["is_frozen"], r["frozen_reason"]) == (bool(expected), expected)
    assert not any(r["is_frozen"] for r in rows if not r["is_active"])


def test_online_heartbeats_have_deadlines_ahead_and_stale_ones_behind():
    infos = fleets(3)
    rows, _ = generate(seed.OrgPlan("o", "O", 3, 1500), infos)
    online = [r for r in rows if r["api_heartbeat_state"] == HeartbeatState.ONLINE]
    assert online
    for r in online:
        assert r["last_api_heartbeat_at"] <= NOW < r["heartbeat_deadline"]
    for r in rows:
        if r["api_heartbeat_state"] == HeartbeatState.OFFLINE and not r["is_frozen"]:
            assert r["heartbeat_deadline"] is None and r["last_api_heartbeat_at"] < NOW


@pytest.mark.parametrize("count", [10_000, 7])
def test_histories_chain_and_end_in_the_stored_status(count):
    infos = fleets(2)
    rows, _ = generate(seed.OrgPlan("o", "O", 2, 800), infos)
    histories = seed.Histories()
    for r in rows:
        chain = histories.rows(
            r["id"], r["created_at"], r["status_changed_at"], r["overall_status"], r["activated_at"] is None
        )
        assert chain[0][0] == "" and chain[0][2] == r["created_at"]
        for (_, to_status, at, _, _), (from_status, _, next_at, _, _) in zip(chain, chain[1:], strict=False):
            assert from_status == to_status and at <= next_at
        assert chain[-1][1] == r["overall_status"] and chain[-1][2] == r["status_changed_at"]
    long = seed.long_history(1, Status.ONLINE.value, NOW, count)
    assert len(long) >= count and long[-1][1] == Status.ONLINE.value
    assert all(a[1] == b[0] and a[1] != b[1] for a, b in zip(long, long[1:], strict=False))


def test_device_keys_are_deterministic_and_distinct():
    a, b = seed.device_uuid(1), seed.device_uuid(2)
    assert len(a) == 32 and a != b
    assert seed.device_key(a) == seed.device_key(a) != seed.device_key(b)
    assert len(seed.device_key(a)) == 64


def test_the_full_plan_is_the_installation_the_figures_describe():
    assert (seed.FULL.total_devices, seed.FULL.total_fleets, len(seed.FULL.orgs)) == (1_000_000, 1_000, 10)
    by_slug = {o.slug: o for o in seed.FULL.orgs}
    assert by_slug["bench-large"].devices == 100_000 and by_slug["bench-small"].devices == 1_000


def test_seeding_alone_is_an_option_of_the_bench():
    from benchmarks.cli import parse_args

    assert parse_args(["--seed-only", "--quick"]).seed_only is True
    assert parse_args([]).seed_only is False
    with pytest.raises(SystemExit):
        parse_args(["--seed-only", "--skip-seed"])


def test_the_app_never_imports_the_benchmarks():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for folder in ("devices", "fleets", "fleetstatus", "simulator"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(n == "benchmarks" or n.startswith("benchmarks.") for n in names):
                    offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_the_fragment_benchmark_renders_what_the_pages_render(db):
    """benchmarks/fragments.py builds rows as the views do; a field the rows start to need breaks it here."""
    from benchmarks.fragments import app_renderers

    renders = {name: render() for name, render in app_renderers().items()}
    assert renders["device rows (50)"].count("<tr") == 50
    assert renders["history rows (25)"].count("<tr") == 25
    assert renders["fleet cards (50)"].count('<li class="fleet-card"') == 50
