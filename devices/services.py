"""The one way to change a device.

Every input change (API, sweep, admin, management commands, tests) goes through these functions.
They lock the rows they change, recompute the stored overall status with the rule of
devices.status, and when it changes write a StatusTransition in the same transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, QuerySet
from django.utils import timezone

from devices.models import Device, StatusTransition, effective_poll_interval, heartbeat_window
from devices.status import HeartbeatState, Status, with_computed_status
from fleets.keys import generate_key, hash_key
from fleets.models import Fleet, Organization, Tier

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
        if transition:
            fields |= {"overall_status", "status_changed_at"}
            locked.save(update_fields=sorted(fields))
            transition.save()
        elif fields:
            locked.save(update_fields=sorted(fields))
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
    if unchanged:
        Device.objects.filter(pk__in=unchanged).update(**changes)
    for status, ids in groups.items():
        changed_at = F(transition_at_field) if transition_at_field else at
        Device.objects.filter(pk__in=ids).update(**changes, overall_status=status, status_changed_at=changed_at)
    StatusTransition.objects.bulk_create(transitions)
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
    if not active and current.is_active and current.overall_status != Status.OFFLINE:
        raise DeviceChangeError(
            f"{current.name} is {Status(current.overall_status).label}; only an Offline device can be deactivated."
        )
    return update_device(pk, {"is_active": active}, reason=reason, at=at)


def move_device(device: Device | int, fleet: Fleet, *, reason: str, at: datetime | None = None) -> Device:
    at = at or timezone.now()
    current = device if isinstance(device, Device) else Device.objects.get(pk=device)
    if fleet.organization_id != current.organization_id:
        raise DeviceChangeError("A device can only move to another fleet of its own organization.")
    with transaction.atomic():
        moved = update_device(current.pk, {"fleet": fleet}, reason=reason, at=at)
        _refresh_deadlines(Device.objects.filter(pk=moved.pk))
    return moved


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
    if changes.get("poll_interval") is not None and changes["poll_interval"] < settings.FLEETSTATUS_MIN_POLL_INTERVAL:
        raise DeviceChangeError(f"The polling interval cannot be below {settings.FLEETSTATUS_MIN_POLL_INTERVAL} seconds.")
    with transaction.atomic():
        for field, value in changes.items():
            setattr(fleet, field, value)
        fleet.save()
        devices = Device.objects.filter(fleet=fleet)
        if "poll_interval" in changes:
            _refresh_deadlines(devices.filter(poll_interval__isnull=True))
        if "cloudlink_enabled" in changes:
            recompute_statuses(devices, reason=reason, at=at)
        if "fleet_type" in changes:
            reconcile_frozen(fleet.organization_id, reason=reason, at=at)
    return fleet


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


def record_heartbeat(device: Device, *, at: datetime | None = None) -> Device:
    """A counted target-state fetch. A device already online costs one conditional UPDATE."""
    at = at or timezone.now()
    changes = heartbeat_changes(device, at)
    if device.api_heartbeat_state == HeartbeatState.ONLINE and device.is_active:
        updated = Device.objects.filter(pk=device.pk, api_heartbeat_state=HeartbeatState.ONLINE, is_active=True).update(**changes)
        if updated:
            for field, value in changes.items():
                setattr(device, field, value)
            return device
    return update_device(device.pk, changes, reason="target state fetched", at=at)


def expire_heartbeats(now: datetime | None = None, *, batch_size: int = BATCH_SIZE) -> int:
    """Turn every heartbeat whose deadline has passed offline, stamping each transition at its deadline.

    Reads only due rows (partial index on heartbeat_deadline) in bounded batches; rows another
    sweeper holds are skipped (SKIP LOCKED), and the WHERE clause re-checks the state under the
    lock, so two concurrent runs write each transition once. Returns the transitions written.
    """
    now = now or timezone.now()
    written = 0
    while True:
        with transaction.atomic():
            due = (
                Device.objects.filter(api_heartbeat_state=HeartbeatState.ONLINE, heartbeat_deadline__lte=now)
                .select_related("fleet")
                .select_for_update(of=("self",), skip_locked=True)
                .order_by("heartbeat_deadline", "pk")[:batch_size]
            )
            rows = list(due)
            written += _apply_locked(
                rows,
                {"api_heartbeat_state": HeartbeatState.OFFLINE},
                "heartbeat expired: no target-state fetch within the polling window",
                now,
                transition_at_field="heartbeat_deadline",
            )
        if len(rows) < batch_size:
            return written
