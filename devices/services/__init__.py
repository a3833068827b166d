"""The one way to change a device.

Every input change (API, sweep, admin, management commands, tests) goes through these functions.
They lock the rows they change, recompute the stored overall status with the rule of
devices.status, and when it changes write a StatusTransition in the same transaction.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q, QuerySet, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from devices.api import reports
from devices.live import devcache
from devices.models import UUID_REGEX, Device, StatusTransition, effective_poll_interval, heartbeat_window
from devices.status import SIGNALS, HeartbeatState, Status, annotate_signals, compute_status, with_computed_status
from fleets.keys import generate_key, hash_key
from fleets.models import Fleet, Organization, Tier
from readapi.metrics import count_transitions

BATCH_SIZE = 1000

FROZEN_PAID_FLEET = "Paid fleet type while the organization is on the free tier"
FROZEN_OVER_ALLOWANCE = "Beyond the organization's device allowance of {allowance}"


class DeviceChangeError(ValueError):
    """An input change that the rules forbid (the message says why)."""


def _chunks(items: Sequence[Any], size: int = BATCH_SIZE) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _locked(queryset: QuerySet) -> QuerySet:
    # Lock only device rows (not the joined fleet), in id order so concurrent writers never deadlock.
    return queryset.select_related("fleet").select_for_update(of=("self",)).order_by("pk")


def _stage(device: Device, changes: dict[str, Any], reason: str, at: datetime) -> StatusTransition | None:
    """Apply changes to an in-memory (locked) device and return the transition they cause, if any."""
    for field, value in changes.items():
        setattr(device, field, value)
    new_status = device.compute_status()
    if new_status == device.overall_status:
        return None
    if device.status_changed_at is not None and device.status_changed_at > at:
        # `at` was taken before the row lock, or is a heartbeat deadline the sweep noticed late;
        # a change committed meanwhile is newer: stamp no earlier, so a device's history never
        # runs backwards (found by tests/reliability/test_soak.py).
        at = device.status_changed_at
    transition = StatusTransition(
        device=device, from_status=device.overall_status, to_status=new_status, at=at, reason=reason[:200]
    )
    device.overall_status = new_status
    device.status_changed_at = at
    return transition


def update_device(device: Device | int, changes: dict[str, Any], *, reason: str, at: datetime | None = None) -> Device:
    """Change inputs of one device; recompute and record its status. Returns the saved device."""
    at = at or timezone.now()
    pk = device.pk if isinstance(device, Device) else device
    with transaction.atomic():
        locked = _locked(Device.objects.filter(pk=pk)).get()
        activating = changes.get("is_active") is True and not locked.is_active
        if activating:
            changes = {**changes, "activated_at": at}
        transition = _stage(locked, changes, reason, at)
        fields = set(changes)
        if devcache.touches(fields):
            devcache.forget_devices([locked.uuid])
        if transition:
            fields |= {"overall_status", "status_changed_at"}
            locked.save(update_fields=sorted(fields))
            transition.save()
            count_transitions(transition.to_status)
        elif fields:
            locked.save(update_fields=sorted(fields))
        if {"poll_interval", "fleet", "fleet_id"} & set(changes):
            # The effective interval may have changed, and with it when the heartbeat goes stale.
            _refresh_deadlines(Device.objects.filter(pk=pk))
            locked.refresh_from_db()
        if "is_active" in changes or "fleet" in changes or "fleet_id" in changes:
            reconcile_frozen(locked.organization_id, reason=reason, at=at)
            locked.refresh_from_db()
    return locked


def recompute_statuses(queryset: QuerySet, *, reason: str, at: datetime | None = None) -> int:
    """Bring the stored status of every device in queryset in line with the rule.

    Reads only rows whose stored status differs from the computed one, so it is cheap when nothing
    changed. Returns the number of transitions written.
    """
    at = at or timezone.now()
    total = 0
    stale_ids = list(
        with_computed_status(queryset.order_by()).exclude(overall_status=F("computed_status")).values_list("pk", flat=True)
    )
    for ids in _chunks(stale_ids):
        with transaction.atomic():
            rows = list(with_computed_status(_locked(Device.objects.filter(pk__in=ids))))
            by_status: dict[str, list[int]] = defaultdict(list)
            transitions = []
            for d in rows:
                if d.computed_status != d.overall_status:
                    transitions.append(
                        StatusTransition(device=d, from_status=d.overall_status, to_status=d.computed_status, at=at, reason=reason[:200])
                    )
                    by_status[d.computed_status].append(d.pk)
            for status, status_ids in by_status.items():
                Device.objects.filter(pk__in=status_ids).update(overall_status=status, status_changed_at=at)
            StatusTransition.objects.bulk_create(transitions)
            count_transitions([t.to_status for t in transitions])
            total += len(transitions)
    return total


def bulk_update_devices(
    queryset: QuerySet, changes: dict[str, Any], *, reason: str, at: datetime | None = None, transition_at_field: str | None = None
) -> int:
    """Apply the same changes to many devices in batches of BATCH_SIZE; returns transitions written.

    transition_at_field names a datetime field whose (pre-change) value stamps each row's
    transition instead of `at` (the sweep stamps transitions at each device's deadline).
    """
    at = at or timezone.now()
    ids = list(queryset.order_by("pk").values_list("pk", flat=True))
    written = 0
    for chunk in _chunks(ids):
        with transaction.atomic():
            written += _apply_locked(list(_locked(Device.objects.filter(pk__in=chunk))), changes, reason, at, transition_at_field)
    return written


def _apply_locked(
    rows: list[Device], changes: dict[str, Any], reason: str, at: datetime, transition_at_field: str | None = None
) -> int:
    """Write the same changes to locked rows with a handful of UPDATEs (one per resulting status)."""
    if not rows:
        return 0
    groups: dict[str, list[int]] = defaultdict(list)
    transitions = []
    unchanged = []
    for d in rows:
        stamp = getattr(d, transition_at_field) if transition_at_field else at
        transition = _stage(d, changes, reason, stamp)
        if transition:
            transitions.append(transition)
            groups[transition.to_status].append(d.pk)
        else:
            unchanged.append(d.pk)
    if devcache.touches(changes):
        devcache.forget_devices(d.uuid for d in rows)
    if unchanged:
        Device.objects.filter(pk__in=unchanged).update(**changes)
    for status, ids in groups.items():
        # The same "never earlier than the last change" rule as _stage, in SQL.
        base = F(transition_at_field) if transition_at_field else Value(at, output_field=DateTimeField())
        changed_at = Greatest(base, Coalesce(F("status_changed_at"), base))
        Device.objects.filter(pk__in=ids).update(**changes, overall_status=status, status_changed_at=changed_at)
    StatusTransition.objects.bulk_create(transitions)
    count_transitions([t.to_status for t in transitions])
    return len(transitions)


# --- Devices: creation, activation, moves -----------------------------------------------------


def create_device(
    fleet: Fleet,
    uuid: str,
    *,
    device_type: str = "",
    name: str = "",
    api_key: str | None = None,
    is_active: bool = True,
    reason: str = "registered",
    at: datetime | None = None,
) -> tuple[Device, str]:
    """Create a device in fleet; returns (device, api key). Its first transition is from nothing."""
    at = at or timezone.now()
    api_key = api_key or generate_key()
    device = Device(
        uuid=uuid,
        fleet=fleet,
        organization_id=fleet.organization_id,
        name=name or default_device_name(uuid),
        device_type=device_type or fleet.device_type,
        api_key_hash=hash_key(api_key),
        is_active=is_active,
        activated_at=at if is_active else None,
    )
    device.fleet = fleet
    device.overall_status = device.compute_status()
    device.status_changed_at = at
    with transaction.atomic():
        device.full_clean(exclude=["organization", "fleet", "api_key_hash"])
        device.save()
        StatusTransition.objects.create(device=device, from_status="", to_status=device.overall_status, at=at, reason=reason)
        count_transitions(device.overall_status)
        if is_active:
            reconcile_frozen(fleet.organization_id, reason=reason, at=at)
            device.refresh_from_db()
    return device, api_key


def default_device_name(uuid: str) -> str:
    adjectives = ["amber", "brisk", "calm", "dusty", "eager", "fuzzy", "gentle", "hidden", "icy", "jolly", "keen", "lucky", "misty", "noble", "proud", "quiet"]
    nouns = ["river", "forest", "meadow", "canyon", "harbor", "summit", "valley", "island", "desert", "glacier", "prairie", "lagoon", "ridge", "delta", "grove", "tundra"]
    a, b = int(uuid[0], 16), int(uuid[1], 16)
    return f"{adjectives[a]}-{nouns[b]}-{uuid[2:6]}"


def set_active(device: Device | int, active: bool, *, reason: str, at: datetime | None = None) -> Device:
    """Deactivate (only while Offline, as balena allows) or reactivate a device."""
    pk = device.pk if isinstance(device, Device) else device
    current = Device.objects.get(pk=pk)
    if not active and (refusal := deactivation_refusal(current)):
        raise DeviceChangeError(refusal)
    return update_device(pk, {"is_active": active}, reason=reason, at=at)


def deactivation_refusal(device: Device) -> str | None:
    """Why device may not be deactivated now, or None (balena allows it only while Offline)."""
    if device.is_active and device.overall_status != Status.OFFLINE:
        return f"{device.name} is {Status(device.overall_status).label}; only an Offline device can be deactivated."
    return None


def move_device(device: Device | int, fleet: Fleet, *, reason: str, at: datetime | None = None) -> Device:
    at = at or timezone.now()
    current = device if isinstance(device, Device) else Device.objects.get(pk=device)
    if fleet.organization_id != current.organization_id:
        raise DeviceChangeError("A device can only move to another fleet of its own organization.")
    return update_device(current.pk, {"fleet": fleet}, reason=reason, at=at)


# --- Organization and fleet inputs -----------------------------------------------------------


def reconcile_frozen(organization: Organization | int, *, reason: str, at: datetime | None = None) -> int:
    """Recompute is_frozen for every device of an organization (DESIGN.md §2.3).

    Frozen: active and (in a paid fleet type while the organization is free, or activated after the
    first `device_allowance` active devices). Inactive devices never count and are never frozen.
    Returns the number of status transitions written.
    """
    at = at or timezone.now()
    org = organization if isinstance(organization, Organization) else Organization.objects.get(pk=organization)
    desired: dict[int, str] = {}
    rows = (
        Device.objects.filter(organization=org, is_active=True)
        .order_by(F("activated_at").asc(nulls_last=True), "pk")
        .values_list("pk", "fleet__fleet_type")
    )
    over_reason = FROZEN_OVER_ALLOWANCE.format(allowance=org.device_allowance)
    for rank, (pk, fleet_type) in enumerate(rows.iterator(chunk_size=5000), start=1):
        if org.tier == Tier.FREE and fleet_type == Tier.PAID:
            desired[pk] = FROZEN_PAID_FLEET
        elif org.device_allowance is not None and rank > org.device_allowance:
            desired[pk] = over_reason
    current = dict(Device.objects.filter(organization=org, is_frozen=True).values_list("pk", "frozen_reason"))
    to_unfreeze = [pk for pk in current if pk not in desired]
    to_freeze: dict[str, list[int]] = defaultdict(list)
    for pk, why in desired.items():
        if current.get(pk) != why:
            to_freeze[why].append(pk)
    written = 0
    if to_unfreeze:
        written += bulk_update_devices(Device.objects.filter(pk__in=to_unfreeze), {"is_frozen": False, "frozen_reason": ""}, reason=reason, at=at)
    for why, ids in to_freeze.items():
        written += bulk_update_devices(Device.objects.filter(pk__in=ids), {"is_frozen": True, "frozen_reason": why}, reason=reason, at=at)
    return written


def update_organization(org: Organization, changes: dict[str, Any], *, reason: str, at: datetime | None = None) -> Organization:
    with transaction.atomic():
        for field, value in changes.items():
            setattr(org, field, value)
        org.full_clean()
        org.save()
        if {"tier", "device_allowance"} & set(changes):
            reconcile_frozen(org, reason=reason, at=at)
    return org


def update_fleet(fleet: Fleet, changes: dict[str, Any], *, reason: str, at: datetime | None = None) -> Fleet:
    check_poll_interval(changes.get("poll_interval"))
    with transaction.atomic():
        for field, value in changes.items():
            setattr(fleet, field, value)
        fleet.save()
        if devcache.touches(changes, devcache.FLEET_FIELDS):
            devcache.forget_fleets([fleet.pk])
        devices = Device.objects.filter(fleet=fleet)
        if "poll_interval" in changes:
            _refresh_deadlines(devices.filter(poll_interval__isnull=True))
        if "cloudlink_enabled" in changes:
            recompute_statuses(devices, reason=reason, at=at)
        if "fleet_type" in changes:
            reconcile_frozen(fleet.organization_id, reason=reason, at=at)
    return fleet


def check_poll_interval(seconds: int | None) -> None:
    """Refuse a polling interval (fleet setting or device override) below the installation's floor."""
    if seconds is not None and seconds < settings.FLEETSTATUS_MIN_POLL_INTERVAL:
        raise DeviceChangeError(poll_interval_floor_message())


def poll_interval_floor_message() -> str:
    return (
        f"The polling interval cannot be below {settings.FLEETSTATUS_MIN_POLL_INTERVAL} seconds "
        "(FLEETSTATUS_MIN_POLL_INTERVAL); leave it empty to use the default."
    )


def _refresh_deadlines(queryset: QuerySet) -> None:
    """Recompute heartbeat deadlines after an interval change (online devices only)."""
    online = queryset.filter(api_heartbeat_state=HeartbeatState.ONLINE).select_related("fleet")
    by_interval: dict[int, list[int]] = defaultdict(list)
    for d in online.only("pk", "poll_interval", "fleet__poll_interval"):
        by_interval[d.effective_poll_interval].append(d.pk)
    for interval, ids in by_interval.items():
        Device.objects.filter(pk__in=ids).update(
            heartbeat_deadline=ExpressionWrapper(
                F("last_api_heartbeat_at") + heartbeat_window(interval), output_field=DateTimeField()
            )
        )


# --- Signals from devices (database path; see devices.heartbeats for the Redis path) -----------


def heartbeat_changes(device: Device, now: datetime) -> dict[str, Any]:
    interval = effective_poll_interval(device.poll_interval, device.fleet.poll_interval)
    changes: dict[str, Any] = {
        "api_heartbeat_state": HeartbeatState.ONLINE,
        "last_api_heartbeat_at": now,
        "heartbeat_deadline": now + heartbeat_window(interval),
        "last_seen_at": now,
    }
    if not device.is_active:
        changes["is_active"] = True
    return changes


HEARTBEAT_EXPIRED = "heartbeat expired: no target-state fetch within the polling window"


def record_heartbeat(
    device: Device, *, at: datetime | None = None, detect_gap: bool = True, unflushed_fetch: datetime | None = None
) -> Device:
    """A counted target-state fetch. A device already online and on time costs one conditional UPDATE.

    A fetch at or after the deadline of a heartbeat the sweep has not expired yet (it runs every
    few seconds, or was down for an hour) is a gap, not a continuation: the heartbeat went offline
    at its deadline and comes back now. Both transitions are written, exactly as if the sweep had
    run first, so the history does not depend on who got there first. `unflushed_fetch` is a later
    fetch that the Redis store holds and the database does not have yet; it moves the deadline.
    detect_gap=False (the Redis store is unreachable or lost its data, so such a fetch may exist
    unseen) treats a late fetch as a continuation: never invent an outage from missing data.
    """
    at = at or timezone.now()
    changes = heartbeat_changes(device, at)
    if device.api_heartbeat_state == HeartbeatState.ONLINE and device.is_active:
        steady = Device.objects.filter(pk=device.pk, api_heartbeat_state=HeartbeatState.ONLINE, is_active=True)
        if detect_gap:
            steady = steady.filter(heartbeat_deadline__gt=at)
        if steady.update(**changes):
            for field, value in changes.items():
                setattr(device, field, value)
            return device
    with transaction.atomic():
        # Under the row lock the sweep cannot expire this heartbeat behind our back (it skips
        # locked rows), and if it already did, we read the committed offline state.
        locked = _locked(Device.objects.filter(pk=device.pk)).get()
        if detect_gap and locked.api_heartbeat_state == HeartbeatState.ONLINE and locked.heartbeat_deadline:
            deadline = locked.heartbeat_deadline
            if unflushed_fetch is not None:
                deadline = max(deadline, unflushed_fetch + heartbeat_window(locked.effective_poll_interval))
            if deadline <= at:
                _apply_locked([locked], {"api_heartbeat_state": HeartbeatState.OFFLINE}, HEARTBEAT_EXPIRED, deadline)
        return update_device(locked.pk, heartbeat_changes(locked, at), reason="target state fetched", at=at)


# --- State reports (PATCH /device/v3/state) -------------------------------------------------------

STATE_REPORTED = "state report"
# Every column a state report can write (devices/reports.py), the two contact times included.
STATE_REPORT_FIELDS: tuple[str, ...] = (
    *reports.REPORT_TEXT_FIELDS,
    *reports.REPORT_INT_FIELDS,
    *reports.REPORT_BOOL_FIELDS,
    # What the apps part of a report reduces to (reports.summarize_apps).
    "update_status",
    "download_progress",
    "release",
    "last_state_report_at",
    "last_seen_at",
)
# What the overall status of a device is decided on, as stored on its row: the rule's signals
# (effective_cloudlink is the device override, else its fleet's switch) and the status itself.
_ROW_SIGNALS: tuple[str, ...] = tuple(s for s in SIGNALS if s != "effective_cloudlink")
STATUS_GUARD_FIELDS: tuple[str, ...] = (*_ROW_SIGNALS, "cloudlink_enabled", "overall_status")
_MISSING = object()


_SNAPSHOT_FIELDS: tuple[str, ...] = tuple(
    sorted({"pk", "uuid", "api_key_hash", "fleet__cloudlink_enabled", *STATUS_GUARD_FIELDS, *STATE_REPORT_FIELDS})
)


def _column(name: str) -> str:
    return connection.ops.quote_name(Device._meta.get_field(name).column)


@lru_cache(maxsize=1)
def _snapshot_sql() -> str:
    """state_report_snapshot's query as SQL, built once (PostgreSQL)."""
    qn = connection.ops.quote_name
    columns = []
    for name in _SNAPSHOT_FIELDS:
        if name == "pk":
            columns.append(f"d.{_column('id')}")
        elif name == "fleet__cloudlink_enabled":
            columns.append(f"f.{qn(Fleet._meta.get_field('cloudlink_enabled').column)}")
        else:
            columns.append(f"d.{_column(name)}")
    return (
        f"SELECT {', '.join(columns)} FROM {qn(Device._meta.db_table)} d "
        f"JOIN {qn(Fleet._meta.db_table)} f ON f.{qn(Fleet._meta.pk.column)} = d.{_column('fleet')} "
        f"WHERE d.{_column('uuid')} = %s LIMIT 1"
    )


def state_report_snapshot(uuid: str) -> dict[str, Any] | None:
    """The one read of a state report: the device's key hash, status inputs and reportable columns.

    Not locked: apply_state_report() writes only under a guard that these values still hold. On
    PostgreSQL the query is SQL built once (psycopg returns the same Python values as the ORM):
    building the 35-column ORM query cost more than running it, at hundreds of reports a second.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_snapshot_sql(), [uuid])
            row = cursor.fetchone()
        return None if row is None else dict(zip(_SNAPSHOT_FIELDS, row, strict=True))
    rows = list(Device.objects.filter(uuid=uuid).order_by().values(*_SNAPSHOT_FIELDS)[:1])
    return rows[0] if rows else None


def _guarded_update(pk: int, guard: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    """UPDATE one device row if every guard column still holds its value (NULL-safe); True if it did.

    On PostgreSQL the statement is its own transaction, committed without waiting for the WAL
    flush (synchronous_commit off for this transaction only, set by the statement itself when it
    runs outside a transaction block): it writes telemetry and contact times, never a status or a
    transition, so a database crash can lose at most the last fraction of a second of such
    reports (the agent sends them again), never a committed status change. Every commit waiting
    for its own flush made reports queue behind the disk's fsync (4-5 ms on the bench machine).
    """
    if connection.vendor != "postgresql":
        lookups = {f"{name}__isnull" if value is None else name: True if value is None else value for name, value in guard.items()}
        return bool(Device.objects.filter(pk=pk, **lookups).update(**values))
    sets = ", ".join(f"{_column(name)} = %s" for name in values)
    checks = " AND ".join(f"{_column(name)} IS NOT DISTINCT FROM %s" for name in guard)
    asynchronous = "" if connection.in_atomic_block else " AND set_config('synchronous_commit', 'off', true) = 'off'"
    sql = (
        f"UPDATE {connection.ops.quote_name(Device._meta.db_table)} SET {sets} "
        f"WHERE {_column('id')} = %s AND {checks}{asynchronous}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values.values(), pk, *guard.values()])
        return cursor.rowcount == 1


def apply_state_report(snapshot: Mapping[str, Any], changes: dict[str, Any], *, at: datetime) -> bool:
    """Store a state report of the device read by state_report_snapshot(); True if one UPDATE did it.

    A report that cannot change the overall status (the rule of devices.status, evaluated on the
    read signals with the reported ones applied) is ONE plain UPDATE of the columns whose value
    changes, guarded by every status input and the status as read: if anything the status depends
    on changed since the read, the guard matches no row and the report takes the locked path.
    Otherwise update_device() locks the row, recomputes and writes the transition, as for any
    change. Raises Device.DoesNotExist if the device is gone.
    """
    signals = {name: changes.get(name, snapshot[name]) for name in _ROW_SIGNALS}
    own = snapshot["cloudlink_enabled"]
    signals["effective_cloudlink"] = snapshot["fleet__cloudlink_enabled"] if own is None else own
    if compute_status(signals).value == snapshot["overall_status"]:
        # (A report writes no field the device cache of devices/devcache.py holds.)
        diff = {name: value for name, value in changes.items() if snapshot.get(name, _MISSING) != value}
        if not diff:
            return True
        if _guarded_update(snapshot["pk"], {name: snapshot[name] for name in STATUS_GUARD_FIELDS}, diff):
            return True
    update_device(snapshot["pk"], changes, reason=STATE_REPORTED, at=at)
    return False


@dataclass
class WriteBack:
    """What write_back_heartbeats did with a batch of fetch times."""

    updated: int = 0
    # Ids whose heartbeat is online in the database.
    online: set[int] = dc_field(default_factory=set)
    # Ids another transaction holds right now: left alone, for the next run.
    busy: set[int] = dc_field(default_factory=set)


def write_back_heartbeats(fetches: Mapping[int, datetime]) -> WriteBack:
    """Fold fetch times collected outside the database (the Redis store) into the device rows.

    Only forward and only where the heartbeat is online: a fetch that went through the database
    meanwhile is newer, and an expired heartbeat comes back only through record_heartbeat (with
    its transition). Sets last_api_heartbeat_at, last_seen_at and heartbeat_deadline (with the
    device's current interval); none of them is a status input, so no transition can result.
    Rows locked elsewhere are skipped, not waited for (SKIP LOCKED): a background job must never
    be half of a deadlock with a request (update_device locks one row, then its organization's).
    One locking SELECT and one UPDATE ... FROM (VALUES ...) per call.
    """
    result = WriteBack()
    if not fetches:
        return result
    with transaction.atomic():
        # Plain values, not models, and the ids as one array parameter (a batch is 1,000 rows).
        rows = list(
            Device.objects.filter(pk__in=_among(sorted(fetches)))
            .select_for_update(of=("self",), skip_locked=True)
            .order_by("pk")
            .values_list(
                "pk", "poll_interval", "fleet__poll_interval", "api_heartbeat_state", "last_api_heartbeat_at", "last_seen_at"
            )
        )
        online = HeartbeatState.ONLINE.value
        result.online = {row[0] for row in rows if row[3] == online}
        not_locked = set(fetches) - {row[0] for row in rows}
        if not_locked:
            # Skipped because locked, or gone (a deleted device): only the former waits for next time.
            result.busy = set(Device.objects.filter(pk__in=_among(sorted(not_locked))).values_list("pk", flat=True))
        values = []
        for pk, own_interval, fleet_interval, state, last_fetch, last_seen_at in rows:
            seen = fetches[pk]
            if state != online or (last_fetch is not None and last_fetch >= seen):
                continue
            deadline = seen + heartbeat_window(effective_poll_interval(own_interval, fleet_interval))
            last_seen = seen if last_seen_at is None else max(last_seen_at, seen)
            values.append((pk, seen, deadline, last_seen))
        _update_heartbeat_times(values)
    result.updated = len(values)
    return result


def _update_heartbeat_times(values: list[tuple[int, datetime, datetime, datetime]]) -> None:
    """One UPDATE ... FROM unnest(arrays) (PostgreSQL) or (VALUES ...) (SQLite) for (id, last fetch,
    deadline, last seen) rows.

    The columns are called column1..column4 in both (VALUES names them so in PostgreSQL and SQLite
    3.33+ alike). Rows are locked by the caller; the WHERE repeats the forward-only rule anyway.
    """
    if not values:
        return
    qn = connection.ops.quote_name
    table = qn(Device._meta.db_table)
    names = ("id", "api_heartbeat_state", "last_api_heartbeat_at", "heartbeat_deadline", "last_seen_at")
    col = {name: qn(Device._meta.get_field(name).column) for name in names}
    adapt = connection.ops.adapt_datetimefield_value
    params: list[Any] = []
    if connection.vendor == "postgresql":
        # Four array parameters, whatever the batch size (not 4 per row to render and parse).
        source = "unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[]) AS v(column1, column2, column3, column4)"
        params = [list(column) for column in zip(*values, strict=True)]
    else:
        row = "(%s, %s, %s, %s)"
        for pk, seen, deadline, last_seen in values:
            params += [pk, adapt(seen), adapt(deadline), adapt(last_seen)]
        source = f"(VALUES {', '.join([row] * len(values))}) AS v"
    sql = (
        f"UPDATE {table} SET {col['last_api_heartbeat_at']} = v.column2, {col['heartbeat_deadline']} = v.column3, "
        f"{col['last_seen_at']} = v.column4 FROM {source} "
        f"WHERE {table}.{col['id']} = v.column1 AND {table}.{col['api_heartbeat_state']} = %s "
        f"AND ({table}.{col['last_api_heartbeat_at']} IS NULL OR {table}.{col['last_api_heartbeat_at']} < v.column2)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, HeartbeatState.ONLINE.value])


def extend_heartbeat_deadlines(at: datetime, *, batch_size: int = BATCH_SIZE) -> int:
    """Give every online heartbeat at least its full window from `at`; never shortens a deadline.

    For when the Redis store lost its data: the fetches it had not written back are gone, so a
    device whose database deadline has passed may well have fetched since. Noticing a dead device
    one window late is better than marking a live one Offline. Walks online devices in id batches
    (short transactions, a few UPDATEs each). Returns the rows moved.
    """
    moved = 0
    last_pk = 0
    while True:
        rows = list(
            Device.objects.filter(api_heartbeat_state=HeartbeatState.ONLINE, pk__gt=last_pk)
            .order_by("pk")
            .values_list("pk", "poll_interval", "fleet__poll_interval")[:batch_size]
        )
        if not rows:
            return moved
        last_pk = rows[-1][0]
        by_floor: dict[datetime, list[int]] = defaultdict(list)
        for pk, own, fleet_interval in rows:
            by_floor[at + heartbeat_window(effective_poll_interval(own, fleet_interval))].append(pk)
        for floor, ids in by_floor.items():
            moved += (
                Device.objects.filter(pk__in=ids, api_heartbeat_state=HeartbeatState.ONLINE)
                .filter(Q(heartbeat_deadline__lt=floor) | Q(heartbeat_deadline__isnull=True))
                .update(heartbeat_deadline=floor)
            )
        if len(rows) < batch_size:
            return moved


def expire_heartbeats(
    now: datetime | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    claim: Callable[[list[int]], Collection[int]] | None = None,
) -> int:
    """Turn every heartbeat whose deadline has passed offline, stamping each transition at its deadline.

    Reads only due rows (partial index on heartbeat_deadline) in bounded batches, walking the index
    by (deadline, id) so rows left alone are not read twice. Rows that another sweep or a fetch
    holds are skipped (SKIP LOCKED): the holder settles them. PostgreSQL re-checks the WHERE clause
    of a row that changed while we waited for it, so an expired (or renewed) row is never returned
    twice: two concurrent runs write each transition once.

    `claim` (the Redis heartbeat store) gets the ids of each locked batch and returns those that may
    expire (the others fetched since the database last heard of it); it runs while the rows are
    locked, so nothing can reach the database between its answer and our commit. Returns the
    transitions written.
    """
    now = now or timezone.now()
    written = 0
    after: tuple[datetime, int] | None = None
    while True:
        with transaction.atomic():
            due = Device.objects.filter(api_heartbeat_state=HeartbeatState.ONLINE, heartbeat_deadline__lte=now)
            if after is not None:
                due = due.filter(Q(heartbeat_deadline__gt=after[0]) | Q(heartbeat_deadline=after[0], pk__gt=after[1]))
            # Plain values, only what the rule and the stamp need (no models), locked in the
            # order of the partial index dev_heartbeat_due.
            rows = list(
                annotate_signals(due)
                .select_for_update(of=("self",), skip_locked=True)
                .order_by("heartbeat_deadline", "pk")
                .values(*_EXPIRY_FIELDS)[:batch_size]
            )
            if not rows:
                return written
            after = (rows[-1]["heartbeat_deadline"], rows[-1]["pk"])
            expiring = rows
            if claim is not None:
                allowed = set(claim([row["pk"] for row in rows]))
                expiring = [row for row in rows if row["pk"] in allowed]
            written += _expire_locked(expiring)
        if len(rows) < batch_size:
            return written


_EXPIRY_FIELDS = ("pk", "heartbeat_deadline", "overall_status", "status_changed_at", *SIGNALS)


def _expire_locked(rows: Sequence[Mapping[str, Any]]) -> int:
    """Turn the heartbeat of locked due rows offline: ONE UPDATE and ONE INSERT for the whole batch.

    The status of each row is the rule (devices.status.compute_status) applied to its locked
    signals with the heartbeat offline; a row whose status changes gets a transition stamped at
    its deadline, or at its last change if that is later (the rule of _stage: a history never runs
    backwards). Rows come from expire_heartbeats (values of _EXPIRY_FIELDS). Returns transitions.
    """
    if not rows:
        return 0
    offline = HeartbeatState.OFFLINE.value
    # (The heartbeat state is not a field of the device cache of devices/devcache.py.)
    changes = {"api_heartbeat_state": offline}
    updates: list[tuple[int, str | None, datetime | None]] = []
    transitions: list[tuple[int, str, str, datetime]] = []
    for row in rows:
        new_status = compute_status({**row, **changes}).value
        if new_status == row["overall_status"]:
            updates.append((row["pk"], None, None))
            continue
        at = row["heartbeat_deadline"]
        if row["status_changed_at"] is not None and row["status_changed_at"] > at:
            at = row["status_changed_at"]
        updates.append((row["pk"], new_status, at))
        transitions.append((row["pk"], row["overall_status"], new_status, at))
    qn = connection.ops.quote_name
    table = qn(Device._meta.db_table)
    col = {name: qn(Device._meta.get_field(name).column) for name in ("id", "api_heartbeat_state", "overall_status", "status_changed_at")}
    adapt = connection.ops.adapt_datetimefield_value
    if connection.vendor == "postgresql":
        source = "unnest(%s::bigint[], %s::text[], %s::timestamptz[]) AS v(id, status, changed)"
        ids, statuses, stamps = (list(column) for column in zip(*updates, strict=True))
        source_params: list[Any] = [ids, statuses, [adapt(at) if at else None for at in stamps]]
    else:
        source = (
            "(SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS status, "
            "json_extract(value, '$[2]') AS changed FROM json_each(%s)) AS v"
        )
        source_params = [json.dumps([[pk, status, adapt(at) if at else None] for pk, status, at in updates])]
    sql = (
        f"UPDATE {table} SET {col['api_heartbeat_state']} = %s, "
        f"{col['overall_status']} = COALESCE(v.status, {table}.{col['overall_status']}), "
        f"{col['status_changed_at']} = COALESCE(v.changed, {table}.{col['status_changed_at']}) "
        f"FROM {source} WHERE {table}.{col['id']} = v.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [offline, *source_params])
    _insert_transitions_each(transitions, reason=HEARTBEAT_EXPIRED)
    return len(transitions)


# --- Staff changes (the Django admin) ----------------------------------------------------------

# The inputs staff may edit on one device; everything else is a signal or derived from them.
ADMIN_EDITABLE_FIELDS = ("name", "notes", "poll_interval", "cloudlink_enabled", "fleet", "is_active")


def apply_admin_edit(device: Device | int, changes: dict[str, Any], *, reason: str, at: datetime | None = None) -> Device:
    """Apply a staff edit of a device's inputs as ONE change: one recomputation, at most one transition.

    Enforces the rules of move_device (same organization), set_active (deactivate only while
    Offline) and the interval floor, checked under the row lock so a device that came online since
    the form was shown is refused rather than deactivated. Raises DeviceChangeError; nothing is
    written then.
    """
    unknown = set(changes) - set(ADMIN_EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"not editable in the admin: {', '.join(sorted(unknown))}")
    at = at or timezone.now()
    pk = device.pk if isinstance(device, Device) else device
    with transaction.atomic():
        current = _locked(Device.objects.filter(pk=pk)).get()
        changes = dict(changes)
        fleet = changes.get("fleet")
        if fleet is not None:
            if fleet.pk == current.fleet_id:
                del changes["fleet"]
            elif fleet.organization_id != current.organization_id:
                raise DeviceChangeError("A device can only move to another fleet of its own organization.")
        if changes.get("is_active") is False and (refusal := deactivation_refusal(current)):
            raise DeviceChangeError(refusal)
        check_poll_interval(changes.get("poll_interval"))
        return update_device(pk, changes, reason=reason, at=at)


def preregister_device(
    fleet: Fleet, uuid: str, *, name: str = "", reason: str, at: datetime | None = None
) -> tuple[Device, str]:
    """Create a device before it exists: Inactive until its first contact (DESIGN.md §2.3).

    Returns (device, device API key); the key goes into the device's config so that its first
    contact authenticates, and only its hash is stored.
    """
    if not re.fullmatch(UUID_REGEX, uuid):
        raise DeviceChangeError(UUID_SHAPE_MESSAGE)
    if Device.objects.filter(uuid=uuid).exists():
        raise DeviceChangeError(f"A device with UUID {uuid} already exists.")
    try:
        return create_device(fleet, uuid, name=name, is_active=False, reason=reason, at=at)
    except IntegrityError as exc:
        # Registered by the device itself between our check and the insert.
        raise DeviceChangeError(f"A device with UUID {uuid} already exists.") from exc
    except ValidationError as exc:
        raise DeviceChangeError(" ".join(exc.messages)) from exc


UUID_SHAPE_MESSAGE = "A device UUID is 32 or 62 lowercase hexadecimal characters (0-9, a-f)."


@dataclass
class ActivationResult:
    """What set_devices_active did: devices changed, and those skipped with why."""

    changed: int = 0
    # Devices already in the requested state.
    unchanged: list[str] = dc_field(default_factory=list)
    # Deactivation only: (name, status label) of devices that are not Offline.
    refused: list[tuple[str, str]] = dc_field(default_factory=list)


def set_devices_active(queryset: QuerySet, active: bool, *, reason: str, at: datetime | None = None) -> ActivationResult:
    """Deactivate (Offline devices only) or reactivate many devices, in locked batches.

    The Offline check runs under each batch's row lock, so a device that just came online is
    skipped, never deactivated. The allowance is reconciled once per organization at the end.
    """
    at = at or timezone.now()
    result = ActivationResult()
    ids = list(queryset.order_by("pk").values_list("pk", flat=True))
    organizations: set[int] = set()
    changes: dict[str, Any] = {"is_active": True, "activated_at": at} if active else {"is_active": False}
    for chunk in _chunks(ids):
        with transaction.atomic():
            eligible = []
            for d in _locked(Device.objects.filter(pk__in=chunk)):
                if d.is_active == active:
                    result.unchanged.append(d.name)
                elif not active and deactivation_refusal(d):
                    result.refused.append((d.name, Status(d.overall_status).label))
                else:
                    eligible.append(d)
            _apply_locked(eligible, changes, reason, at)
        result.changed += len(eligible)
        organizations.update(d.organization_id for d in eligible)
    for org_id in sorted(organizations):
        reconcile_frozen(org_id, reason=reason, at=at)
    return result


def move_devices(queryset: QuerySet, fleet: Fleet, *, reason: str, at: datetime | None = None) -> int:
    """Move many devices to fleet (all must be in its organization); returns how many moved."""
    at = at or timezone.now()
    foreign = queryset.exclude(organization_id=fleet.organization_id)
    if foreign.exists():
        raise DeviceChangeError("A device can only move to another fleet of its own organization.")
    ids = list(queryset.exclude(fleet=fleet).order_by("pk").values_list("pk", flat=True))
    for chunk in _chunks(ids):
        with transaction.atomic():
            _apply_locked(list(_locked(Device.objects.filter(pk__in=chunk))), {"fleet": fleet}, reason, at)
            _refresh_deadlines(Device.objects.filter(pk__in=chunk))
    if ids:
        # The new fleet's type may be paid while the organization is free.
        reconcile_frozen(fleet.organization_id, reason=reason, at=at)
    return len(ids)


# --- The device-facing API: registration and cloudlink tunnel events ---------------------------


class UUIDTaken(DeviceChangeError):
    """Registration of a UUID that already belongs to a device (and cannot be claimed)."""


def _claimable(device: Device, fleet: Fleet) -> bool:
    # Preregistered and never heard from: registering it is the device taking its reserved place.
    # A device that ever made contact keeps its key, so a provisioning key cannot take it over.
    return (
        device.fleet_id == fleet.pk
        and not device.is_active
        and device.last_seen_at is None
        and device.last_connectivity_event is None
        and device.api_heartbeat_state == HeartbeatState.UNKNOWN
    )


def register_device(
    fleet: Fleet, uuid: str, *, device_type: str = "", api_key: str | None = None, at: datetime | None = None
) -> tuple[Device, str, bool]:
    """A device registers itself with its fleet's provisioning key; returns (device, api key, claimed).

    A UUID preregistered in the same fleet (inactive, never seen) is claimed: it takes the device's
    key and type and stays Inactive until its first contact (a fetch or a tunnel connect), which
    reactivates it as any contact does. Any other taken UUID raises UUIDTaken.
    """
    at = at or timezone.now()
    api_key = api_key or generate_key()
    existing = Device.objects.filter(uuid=uuid).only("pk").first()
    if existing is None:
        try:
            device, _ = create_device(fleet, uuid, device_type=device_type, api_key=api_key, reason="registered", at=at)
        except IntegrityError as exc:
            # Another registration of the same UUID won the race between our check and the insert.
            raise UUIDTaken(f"A device with UUID {uuid} is already registered.") from exc
        except ValidationError as exc:
            if "uuid" in getattr(exc, "message_dict", {}):
                raise UUIDTaken(f"A device with UUID {uuid} is already registered.") from exc
            raise DeviceChangeError(" ".join(exc.messages)) from exc
        return device, api_key, False
    with transaction.atomic():
        # Re-checked under the row lock: two claims of one preregistered UUID cannot both win.
        current = _locked(Device.objects.filter(pk=existing.pk)).get()
        if not _claimable(current, fleet):
            raise UUIDTaken(f"A device with UUID {uuid} is already registered.")
        changes: dict[str, Any] = {"api_key_hash": hash_key(api_key)}
        if device_type:
            changes["device_type"] = device_type
        device = update_device(current, changes, reason="preregistered device claimed by registration", at=at)
    return device, api_key, True


@dataclass
class TunnelResult:
    """What set_tunnel did: devices it applied to, status transitions written, devices reactivated."""

    matched: int = 0
    transitions: int = 0
    reactivated: int = 0


def _among(values: Sequence[int] | Sequence[str]) -> RawSQL:
    """A set of keys as ONE bound parameter, for `field__in=_among(keys)`.

    `pk__in=[...8,000 ids]` binds 8,000 parameters: slow to render and parse (psycopg binds on the
    client), and beyond SQLite's limit for larger calls. An array (PostgreSQL) or a JSON list
    (SQLite) is one parameter whatever its length, so a bulk call is one statement.
    """
    if connection.vendor == "postgresql":
        array_type = "bigint[]" if values and isinstance(values[0], int) else "text[]"
        return RawSQL(f"SELECT unnest(%s::{array_type})", (list(values),))
    return RawSQL("SELECT value FROM json_each(%s)", (json.dumps(list(values)),))


def _insert_transitions(rows: Sequence[tuple[int, str, str]], *, at: datetime, reason: str) -> None:
    """One INSERT for many (device id, from, to) transitions sharing a time and reason.

    (bulk_create builds a model per row and, on SQLite, splits into statements of 999 parameters:
    40 INSERTs for 8,000 transitions.)
    """
    if not rows:
        return
    qn = connection.ops.quote_name
    table = qn(StatusTransition._meta.db_table)
    cols = ", ".join(qn(StatusTransition._meta.get_field(f).column) for f in ("device", "from_status", "to_status", "at", "reason"))
    stamp = connection.ops.adapt_datetimefield_value(at)
    if connection.vendor == "postgresql":
        ids, froms, tos = (list(column) for column in zip(*rows, strict=True))
        sql = (
            f"INSERT INTO {table} ({cols}) SELECT d, f, t, %s::timestamptz, %s "
            "FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS x(d, f, t)"
        )
        params: list[Any] = [stamp, reason[:200], ids, froms, tos]
    else:
        sql = (
            f"INSERT INTO {table} ({cols}) SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
            "json_extract(value, '$[2]'), %s, %s FROM json_each(%s)"
        )
        params = [stamp, reason[:200], json.dumps(list(rows))]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
    count_transitions([t for _, _, t in rows])


def _insert_transitions_each(rows: Sequence[tuple[int, str, str, datetime]], *, reason: str) -> None:
    """One INSERT for many (device id, from, to, at) transitions sharing a reason."""
    if not rows:
        return
    qn = connection.ops.quote_name
    table = qn(StatusTransition._meta.db_table)
    cols = ", ".join(qn(StatusTransition._meta.get_field(f).column) for f in ("device", "from_status", "to_status", "at", "reason"))
    adapt = connection.ops.adapt_datetimefield_value
    if connection.vendor == "postgresql":
        ids, froms, tos, stamps = (list(column) for column in zip(*rows, strict=True))
        sql = (
            f"INSERT INTO {table} ({cols}) SELECT d, f, t, a, %s "
            "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[]) AS x(d, f, t, a)"
        )
        params: list[Any] = [reason[:200], ids, froms, tos, [adapt(at) for at in stamps]]
    else:
        sql = (
            f"INSERT INTO {table} ({cols}) SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
            "json_extract(value, '$[2]'), json_extract(value, '$[3]'), %s FROM json_each(%s)"
        )
        params = [reason[:200], json.dumps([[pk, f, t, adapt(at)] for pk, f, t, at in rows])]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
    count_transitions([t for _, _, t, _ in rows])


def set_tunnel(uuids: Iterable[str], connected: bool, service_id: int, at: datetime | None = None) -> TunnelResult:
    """Cloudlink tunnel up or down for many devices at once (the VPN server's client events).

    Connect marks the tunnel up, remembers which VPN service holds it, stamps the event and
    last-seen times and reactivates inactive devices (any contact does; DESIGN.md §2.3), then
    reconciles the allowance once per affected organization. Disconnect applies only where the
    same service still holds the device: after a device hops to another VPN instance, the old
    instance's late disconnect must not take the new tunnel down. Unknown UUIDs are ignored.

    A VPN server sends thousands of UUIDs in one call when it restarts, so the cost is a constant
    number of statements whatever the count, in one transaction: one SELECT that locks the rows in
    id order (the order every bulk change uses, so concurrent calls cannot deadlock) and reads
    plain values rather than models; one UPDATE per resulting (status, reactivated) group, like
    bulk_update_devices; one INSERT of all transitions; then the allowance per organization.
    """
    at = at or timezone.now()
    wanted = sorted(set(uuids))
    result = TunnelResult()
    if not wanted:
        return result
    changes: dict[str, Any] = {
        "is_connected_to_vpn": connected,
        "vpn_service_id": service_id if connected else None,
        "last_vpn_event": at,
        "last_connectivity_event": at,
    }
    if connected:
        # A disconnect is the VPN server noticing the device is gone, not contact from it.
        changes["last_seen_at"] = at
        reason = f"cloudlink tunnel connected (VPN service {service_id})"
    else:
        reason = f"cloudlink tunnel disconnected (VPN service {service_id})"
    # PostgreSQL re-checks this condition on a row that another transaction changed while we
    # waited for its lock, so a connect through another service that lands first is respected.
    held = {} if connected else {"vpn_service_id": service_id}
    reactivated_orgs: set[int] = set()
    groups: dict[tuple[bool, str], list[int]] = defaultdict(list)
    transitions: list[tuple[int, str, str]] = []
    with transaction.atomic():
        rows = (
            annotate_signals(Device.objects.filter(uuid__in=_among(wanted), **held))
            .select_for_update(of=("self",))
            .order_by("pk")
            .values("pk", "overall_status", "status_changed_at", "organization_id", *SIGNALS)
        )
        late: dict[datetime, list[tuple[int, str, str]]] = defaultdict(list)
        for row in rows:
            reactivating = connected and not row["is_active"]
            signals = {**row, **changes, "is_active": True} if reactivating else {**row, **changes}
            new_status = compute_status(signals).value
            if new_status != row["overall_status"]:
                if row["status_changed_at"] is not None and row["status_changed_at"] > at:
                    # A change committed while we waited for the lock is newer (see _stage).
                    late[row["status_changed_at"]].append((row["pk"], row["overall_status"], new_status))
                else:
                    transitions.append((row["pk"], row["overall_status"], new_status))
            else:
                new_status = ""
            groups[(reactivating, new_status)].append(row["pk"])
            if reactivating:
                reactivated_orgs.add(row["organization_id"])
                result.reactivated += 1
            result.matched += 1
        for (reactivating, new_status), pks in groups.items():
            fields = dict(changes)
            if reactivating:
                fields.update(is_active=True, activated_at=at)
            if new_status:
                stamp = Value(at, output_field=DateTimeField())
                fields.update(overall_status=new_status, status_changed_at=Greatest(stamp, Coalesce(F("status_changed_at"), stamp)))
            Device.objects.filter(pk__in=_among(pks)).update(**fields)
        _insert_transitions(transitions, at=at, reason=reason)
        for stamp_at, late_rows in late.items():
            _insert_transitions(late_rows, at=stamp_at, reason=reason)
        result.transitions = len(transitions) + sum(len(r) for r in late.values())
        for org_id in sorted(reactivated_orgs):
            result.transitions += reconcile_frozen(org_id, reason=f"{reason}: reactivated", at=at)
    return result
