"""The set-based write paths: each gives exactly what the per-row path gives.

- compute_status runs RULES compiled to closures; the interpreted walk of RULES is the reference.
- The sweep's expiry (services._expire_locked: one UPDATE and one INSERT per batch) against the
  per-row path it replaced (services._apply_locked on locked models), for every combination of
  status inputs a device with an online heartbeat can have, with its last change before and after
  its deadline.
- State reports (services.store_state_report: one UPDATE where the status stays, else
  services.apply_state_report: a read, then one guarded UPDATE when the status cannot change)
  against update_device, for device states x report bodies; a snapshot gone stale takes the
  locked path; the query count of a steady report is pinned.
"""

from __future__ import annotations

import itertools
import secrets
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from devices import services
from devices.api import parsing as reports
from devices.models import Device, StatusTransition
from devices.services.changes import apply_locked, lock
from devices.status import HeartbeatState, Status, compute_status, compute_status_interpreted, with_computed_status
from fleets.keys import hash_key
from fleets.models import Fleet
from tests.apiutil import send
from tests.test_status_rule import all_combinations

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
DEADLINE = T0 - timedelta(seconds=30)
db = pytest.mark.django_db

# Everything but identity and creation: what two devices given the same inputs must agree on.
COMPARED = [
    f.attname
    for f in Device._meta.concrete_fields
    if f.attname not in ("id", "uuid", "name", "api_key_hash", "created_at", "fleet_id")
]


def test_compiled_rule_matches_the_interpreted_one_for_every_combination():
    for combo in all_combinations():
        assert compute_status(combo) == compute_status_interpreted(combo), combo


def _fleets(org) -> dict[bool, Fleet]:
    return {
        switch: Fleet.objects.create(
            organization=org, slug=f"bulk-cl-{switch}".lower(), name=f"cl {switch}", cloudlink_enabled=switch
        )
        for switch in (True, False)
    }


def _device(fleets, name: str, signals: dict, **extra) -> Device:
    fleet_switch, override = signals.pop("cloudlink", (True, None))
    d = Device(
        uuid=secrets.token_hex(16),
        organization_id=fleets[True].organization_id,
        fleet=fleets[fleet_switch],
        name=name,
        cloudlink_enabled=override,
        activated_at=T0 - timedelta(days=1),
        **signals,
        **extra,
    )
    d.overall_status = d.compute_status()
    return d


def _transitions(device_id: int) -> list[tuple]:
    return list(
        StatusTransition.objects.filter(device_id=device_id)
        .order_by("at", "id")
        .values_list("from_status", "to_status", "at", "reason")
    )


def _row(device_id: int) -> dict:
    return Device.objects.filter(pk=device_id).values(*COMPARED).get()


def _by_name() -> tuple[dict[str, dict], dict[str, list[tuple]]]:
    """Every device row (COMPARED columns) and its transitions, by device name: two queries."""
    rows = {row.pop("name"): row for row in Device.objects.values("name", *COMPARED)}
    history: dict[str, list[tuple]] = {name: [] for name in rows}
    for name, *transition in StatusTransition.objects.order_by("at", "id").values_list(
        "device__name", "from_status", "to_status", "at", "reason"
    ):
        history[name].append(tuple(transition))
    return rows, history


# --- The sweep's expiry ----------------------------------------------------------------------------

ONLINE_DOMAINS = {
    "is_active": [True, False],
    "is_frozen": [False, True],
    "provisioning_state": ["", "Post-Provisioning"],
    "provisioning_progress": [None, 50],
    "is_connected_to_vpn": [False, True],
    "last_connectivity_event": [None, T0 - timedelta(hours=1)],
    "update_status": [None, "downloading"],
    "status_download": [("Idle", None), ("Downloading", 30)],
    "cloudlink": [(True, None), (False, None), (True, False), (False, True)],
    # The last change before the deadline (stamped at the deadline) or after it (a change committed
    # after the deadline passed: the transition is stamped at that change, never before it).
    "changed_at": [T0 - timedelta(hours=2), DEADLINE + timedelta(seconds=5)],
}


def _online_combinations():
    names = list(ONLINE_DOMAINS)
    for values in itertools.product(*ONLINE_DOMAINS.values()):
        combo = dict(zip(names, values, strict=True))
        combo["status"], combo["download_progress"] = combo.pop("status_download")
        yield combo


@db
def test_set_based_expiry_equals_the_per_row_path_for_every_status_combination(org):
    fleets = _fleets(org)
    pairs = []
    for i, combo in enumerate(_online_combinations()):
        changed_at = combo.pop("changed_at")
        common = {"api_heartbeat_state": HeartbeatState.ONLINE, "status_changed_at": changed_at}
        # a: due now, expired by expire_heartbeats; b: not due, expired below by the per-row path.
        a = _device(fleets, f"a{i}", dict(combo), heartbeat_deadline=DEADLINE, **common)
        b = _device(fleets, f"b{i}", dict(combo), heartbeat_deadline=T0 + timedelta(days=1), **common)
        pairs.append((a, b))
    Device.objects.bulk_create([d for pair in pairs for d in pair], batch_size=2000)
    assert len({a.overall_status for a, _ in pairs}) >= 7

    written = services.expire_heartbeats(T0, batch_size=1000)

    b_ids = [b.pk for _, b in pairs]
    Device.objects.filter(pk__in=b_ids).update(heartbeat_deadline=DEADLINE)
    locked = list(lock(Device.objects.filter(pk__in=b_ids)))
    expected = apply_locked(
        locked,
        {"api_heartbeat_state": HeartbeatState.OFFLINE},
        services.HEARTBEAT_EXPIRED,
        T0,
        transition_at_field="heartbeat_deadline",
    )
    assert written == expected > 0
    rows, history = _by_name()
    for a, b in pairs:
        assert rows[a.name] == rows[b.name], (a.name, rows[a.name], rows[b.name])
        assert history[a.name] == history[b.name], a.name
        assert rows[a.name]["api_heartbeat_state"] == HeartbeatState.OFFLINE
    assert sum(len(history[a.name]) for a, _ in pairs) == written
    # Stamped at the deadline unless the last change came later.
    assert {t[2] for a, _ in pairs for t in history[a.name]} == {DEADLINE, DEADLINE + timedelta(seconds=5)}


@db
def test_expiry_costs_a_fixed_number_of_statements_per_batch(make_device):
    devices = [make_device(at=T0 - timedelta(hours=1), api_heartbeat_state=HeartbeatState.ONLINE) for _ in range(5)]
    Device.objects.filter(pk__in=[d.pk for d in devices]).update(heartbeat_deadline=DEADLINE)
    with CaptureQueriesContext(connection) as queries:
        assert services.expire_heartbeats(T0, batch_size=2) == 5
    statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    # Per batch of 2, 2, 1: the locking SELECT, ONE UPDATE, ONE INSERT of its transitions (in a
    # savepoint here, as the test runs in a transaction). The short last batch ends the walk.
    assert statements.count("SELECT") == 3
    assert statements.count("UPDATE") == 3
    assert statements.count("INSERT") == 3
    assert {s for s in statements if s not in ("SELECT", "UPDATE", "INSERT")} <= {"SAVEPOINT", "RELEASE"}
    assert all(d.overall_status == Status.OFFLINE for d in Device.objects.filter(pk__in=[d.pk for d in devices]))


@db
def test_expiry_of_a_row_with_no_status_change_writes_no_transition(make_device):
    frozen = make_device(at=T0 - timedelta(hours=1), api_heartbeat_state=HeartbeatState.ONLINE, is_frozen=True)
    Device.objects.filter(pk=frozen.pk).update(heartbeat_deadline=DEADLINE)
    before = _transitions(frozen.pk)
    assert services.expire_heartbeats(T0) == 0
    frozen.refresh_from_db()
    assert (frozen.api_heartbeat_state, frozen.overall_status) == (HeartbeatState.OFFLINE, Status.FROZEN)
    assert _transitions(frozen.pk) == before


# --- State reports ---------------------------------------------------------------------------------

DEVICE_STATES = {
    "is_active": [True, False],
    "api_heartbeat_state": ["unknown", "online", "offline"],
    "is_connected_to_vpn": [False, True],
    "provisioning_progress": [None, 40],
    "update_status": [None, "downloading"],
    "cloudlink": [(True, None), (False, None)],
}


def _apps(update_status: str | None, service_status: str = "Running", progress: int | None = None) -> dict:
    release = {"services": {"main": {"image": "img", "status": service_status, "download_progress": progress}}}
    if update_status:
        release["update_status"] = update_status
    return {"0" * 32: {"release_uuid": "1" * 32, "releases": {"1" * 32: release}}}


REPORTS = {
    "metrics": {"status": "Idle", "cpu_usage": 12, "cpu_temp": 51, "memory_usage": 10**9, "is_undervolted": False},
    "full": {"status": "Idle", "os_version": "balenaOS 6", "ip_address": "10.0.0.2", "apps": _apps("done")},
    "minimal": {"status": "Idle", "provisioning_progress": None, "provisioning_state": ""},
    "provisioning": {"provisioning_progress": 60, "provisioning_state": "Running OS update"},
    "post-provisioning": {"provisioning_state": "Post-Provisioning"},
    "downloading": {"status": "Downloading", "apps": _apps(None, "Downloading", 30)},
    "update-downloading": {"apps": _apps("downloading")},
}


def _state_combinations():
    names = list(DEVICE_STATES)
    for values in itertools.product(*DEVICE_STATES.values()):
        yield dict(zip(names, values, strict=True))
    yield {"is_frozen": True, "api_heartbeat_state": "online"}


REPORT_KEY = "k" * 64


@db
def test_state_report_equals_update_device_for_every_state_and_report(org):
    """a: the view's path (one statement, else the snapshot path); b: update_device; c: the snapshot
    path alone (SQLite's, and PostgreSQL's when the one statement declined)."""
    fleets = _fleets(org)
    cases = []
    for i, (state, (body_name, body)) in enumerate(itertools.product(list(_state_combinations()), REPORTS.items())):
        extra = {"status_changed_at": T0 - timedelta(hours=1), "last_seen_at": T0 - timedelta(minutes=5)}
        a = _device(fleets, f"a{i}", dict(state), api_key_hash=hash_key(REPORT_KEY), **extra)
        b = _device(fleets, f"b{i}", dict(state), **extra)
        c = _device(fleets, f"c{i}", dict(state), **extra)
        cases.append((a, b, c, body_name, body))
    Device.objects.bulk_create([d for a, b, c, _, _ in cases for d in (a, b, c)], batch_size=2000)
    one_statement = plain = 0
    for a, b, c, _, body in cases:
        changes = reports.parse_state_report(body)
        changes.update(last_state_report_at=T0, last_seen_at=T0)
        status_stays = compute_status({**a.signals(), **changes}) == a.overall_status
        stored = services.store_state_report(a.uuid, REPORT_KEY, dict(changes), at=T0)
        assert stored == (status_stays and connection.vendor == "postgresql"), (a.name, changes)
        if not stored:
            services.apply_state_report(services.state_report_snapshot(a.uuid), dict(changes), at=T0)
        one_statement += stored
        services.update_device(b.pk, dict(changes), reason=services.STATE_REPORTED, at=T0)
        plain += services.apply_state_report(services.state_report_snapshot(c.uuid), dict(changes), at=T0)
    # Both the plain UPDATE and the locked path were exercised (and the one statement, on PostgreSQL).
    assert 0 < plain < len(cases)
    assert one_statement == (plain if connection.vendor == "postgresql" else 0)
    rows, history = _by_name()
    for a, b, c, body_name, _ in cases:
        assert rows[a.name] == rows[b.name] == rows[c.name], (body_name, a.name)
        assert history[a.name] == history[b.name] == history[c.name], (body_name, a.name)
    stale = with_computed_status(Device.objects.all()).exclude(overall_status=F("computed_status"))
    assert not stale.exists()


@db
def test_the_one_statement_writes_nothing_for_a_wrong_key_or_an_unknown_device(make_device):
    d = make_device(at=T0 - timedelta(hours=1), api_heartbeat_state=HeartbeatState.ONLINE)
    before = _row(d.pk)
    changes = {"cpu_usage": 5, "last_state_report_at": T0, "last_seen_at": T0}
    assert services.store_state_report(d.uuid, "0" * 64, dict(changes), at=T0) is False
    assert services.store_state_report("f" * 32, d.api_key, dict(changes), at=T0) is False
    assert _row(d.pk) == before


@db
def test_a_stale_snapshot_takes_the_locked_path(make_device):
    d = make_device(at=T0 - timedelta(hours=1), api_heartbeat_state=HeartbeatState.ONLINE)
    assert d.overall_status == Status.ONLINE_HEARTBEAT_ONLY
    snapshot = services.state_report_snapshot(d.uuid)
    # The tunnel comes up between the report's read and its write: the status it was decided on is gone.
    services.set_tunnel([d.uuid], True, 1, at=T0 - timedelta(seconds=1))
    changes = {"cpu_usage": 5, "last_state_report_at": T0, "last_seen_at": T0}
    assert services.apply_state_report(snapshot, changes, at=T0) is False
    d.refresh_from_db()
    assert (d.overall_status, d.cpu_usage, d.last_seen_at) == (Status.ONLINE, 5, T0)
    assert [t[:2] for t in _transitions(d.pk)][-1:] == [(Status.ONLINE_HEARTBEAT_ONLY, Status.ONLINE)]


@db
def test_a_stale_snapshot_whose_report_changes_the_status_is_decided_under_the_lock(make_device):
    d = make_device(at=T0 - timedelta(hours=1), api_heartbeat_state=HeartbeatState.ONLINE)
    snapshot = services.state_report_snapshot(d.uuid)
    services.set_tunnel([d.uuid], True, 1, at=T0 - timedelta(seconds=1))
    changes = {"provisioning_progress": 30, "last_state_report_at": T0, "last_seen_at": T0}
    assert services.apply_state_report(snapshot, changes, at=T0) is False
    assert [t[:3] for t in _transitions(d.pk)][-2:] == [
        (Status.ONLINE_HEARTBEAT_ONLY, Status.ONLINE, T0 - timedelta(seconds=1)),
        (Status.ONLINE, Status.CONFIGURING, T0),
    ]


@db
def test_steady_report_is_one_statement(client, make_device):
    d = make_device(at=T0 - timedelta(hours=1), api_heartbeat_state=HeartbeatState.ONLINE, status="Idle", cpu_usage=12)
    body = {d.uuid: {"status": "Idle", "cpu_usage": 12, "cpu_temp": 50, "api_secret": "x"}}
    with time_machine.travel(T0, tick=False), CaptureQueriesContext(connection) as queries:
        r = send(client, "PATCH", "/device/v3/state", body, key=d.api_key)
    assert r.status_code == 200 and r.json() == {}
    sqls = [q["sql"] for q in queries.captured_queries]
    if connection.vendor == "postgresql":
        # One round trip: found by UUID and key hash, written where the status stays.
        assert len(sqls) == 1 and sqls[0].startswith("UPDATE"), sqls
        assert '"overall_status"' not in sqls[0].split(" FROM ")[0]
    else:
        # The snapshot path: one read, one guarded UPDATE of the changed columns.
        assert len(sqls) == 2 and sqls[0].startswith("SELECT") and sqls[1].startswith("UPDATE"), sqls
        update = sqls[1].split(" WHERE ")[0]
        assert '"cpu_temp"' in update and '"status"' not in update and '"cpu_usage"' not in update
    d.refresh_from_db()
    assert (d.cpu_temp, d.last_seen_at, d.last_state_report_at) == (50, T0, T0)


@db
def test_the_snapshot_path_writes_only_changed_columns(make_device):
    d = make_device(at=T0 - timedelta(hours=1), api_heartbeat_state=HeartbeatState.ONLINE, status="Idle", cpu_usage=12)
    changes = {"status": "Idle", "cpu_usage": 12, "cpu_temp": 50, "last_state_report_at": T0, "last_seen_at": T0}
    with CaptureQueriesContext(connection) as queries:
        assert services.apply_state_report(services.state_report_snapshot(d.uuid), changes, at=T0) is True
    update = queries.captured_queries[-1]["sql"].split(" WHERE ")[0]
    assert '"cpu_temp"' in update and '"last_seen_at"' in update and '"last_state_report_at"' in update
    assert '"status"' not in update and '"cpu_usage"' not in update and '"overall_status"' not in update


@db
def test_report_that_changes_the_status_writes_its_transition(client, make_device):
    d = make_device(at=T0 - timedelta(hours=1), api_heartbeat_state=HeartbeatState.ONLINE)
    with time_machine.travel(T0, tick=False):
        r = send(client, "PATCH", "/device/v3/state", {d.uuid: {"provisioning_progress": 20}}, key=d.api_key)
    assert r.status_code == 200
    assert _transitions(d.pk)[-1] == (Status.ONLINE_HEARTBEAT_ONLY, Status.CONFIGURING, T0, services.STATE_REPORTED)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_plain_report_update_commits_without_waiting_for_the_flush_only_on_its_own(make_device):
    d = make_device(at=T0 - timedelta(hours=1), api_heartbeat_state=HeartbeatState.ONLINE)
    snapshot = services.state_report_snapshot(d.uuid)
    changes = {"cpu_usage": 9, "last_state_report_at": T0, "last_seen_at": T0}
    with CaptureQueriesContext(connection) as queries:
        assert services.apply_state_report(snapshot, dict(changes), at=T0) is True
    (sql,) = [q["sql"] for q in queries.captured_queries]
    # Its own transaction (autocommit): synchronous_commit off for that statement's commit only.
    assert "set_config('synchronous_commit', 'off', true)" in sql
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
    d.refresh_from_db()
    assert (d.cpu_usage, d.last_seen_at) == (9, T0)
    # Inside someone else's transaction the setting would outlive the statement: not used there.
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        changes["cpu_usage"] = 10
        assert services.apply_state_report(services.state_report_snapshot(d.uuid), changes, at=T0) is True
    assert not any("synchronous_commit" in q["sql"] for q in queries.captured_queries)


# --- Tunnel events ---------------------------------------------------------------------------------

TUNNEL_STATES = {
    "is_active": [True, False],
    "api_heartbeat_state": ["unknown", "online", "offline"],
    "is_connected_to_vpn": [False, True],
    # Held by the event's service, by another one, by none.
    "vpn_service_id": [7, 8, None],
    "last_connectivity_event": [None, T0 - timedelta(hours=1)],
    "provisioning_progress": [None, 40],
    "cloudlink": [(True, None), (False, None)],
    # The last change before the event, or after it (committed first, stamped later): the
    # transition is never stamped before it.
    "status_changed_at": [T0 - timedelta(hours=1), T0 + timedelta(seconds=5)],
}


@db
@pytest.mark.parametrize("connected", [True, False])
def test_tunnel_event_statement_equals_the_python_path_for_every_state(org, monkeypatch, connected):
    fleets = _fleets(org)
    names = list(TUNNEL_STATES)
    pairs = []
    for i, values in enumerate(itertools.product(*TUNNEL_STATES.values())):
        state = dict(zip(names, values, strict=True))
        pairs.append(tuple(_device(fleets, f"{side}{i}", dict(state)) for side in "ab"))
    for a, b in pairs:
        for d in (a, b):
            d.activated_at = None if not d.is_active else T0 - timedelta(days=1)
    Device.objects.bulk_create([d for pair in pairs for d in pair], batch_size=2000)
    a_result = services.set_tunnel([a.uuid for a, _ in pairs] + ["f" * 32], connected, 7, at=T0)
    monkeypatch.setattr("devices.services.tunnel.tunnel_event", lambda *args: None)
    b_result = services.set_tunnel([b.uuid for _, b in pairs], connected, 7, at=T0)
    assert a_result == b_result
    assert a_result.matched == (len(pairs) if connected else len(pairs) // 3)
    assert 0 < a_result.transitions < a_result.matched
    assert a_result.reactivated == (len(pairs) // 2 if connected else 0)
    rows, history = _by_name()
    for a, b in pairs:
        assert rows[a.name] == rows[b.name], a.name
        assert history[a.name] == history[b.name], a.name
    stale = with_computed_status(Device.objects.all()).exclude(overall_status=F("computed_status"))
    assert not stale.exists()
