"""A device's life as people and the fleet settings shape it: created, registered, (de)activated,
moved, edited by staff, frozen by its organization's allowance."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from devices.live import devcache
from devices.models import UUID_REGEX, Device
from devices.services.changes import (
    DeviceChangeError,
    Transition,
    apply_locked,
    bulk_update_devices,
    chunks,
    lock,
    recompute_statuses,
    refresh_deadlines,
    save_locked,
    write_transitions,
)
from devices.status import HeartbeatState, Status
from fleets.keys import generate_key, hash_key
from fleets.models import Fleet, Organization, Tier

FROZEN_PAID_FLEET = "Paid fleet type while the organization is on the free tier"
FROZEN_OVER_ALLOWANCE = "Beyond the organization's device allowance of {allowance}"
OTHER_ORGANIZATION_MESSAGE = "A device can only move to another fleet of its own organization."
UUID_SHAPE_MESSAGE = "A device UUID is 32 or 62 lowercase hexadecimal characters (0-9, a-f)."
# The inputs staff may edit on one device; everything else is a signal or derived from them.
ADMIN_EDITABLE_FIELDS = ("name", "notes", "poll_interval", "cloudlink_enabled", "fleet", "is_active")


class UUIDTaken(DeviceChangeError):
    """Registration of a UUID that already belongs to a device (and cannot be claimed)."""


# --- The rules of an input change ---------------------------------------------------------------


def move_refusal(organization_id: int, fleet: Fleet) -> str | None:
    """Why a device of organization_id may not move to fleet, or None (only within its organization)."""
    return None if fleet.organization_id == organization_id else OTHER_ORGANIZATION_MESSAGE


def check_move(organization_id: int, fleet: Fleet) -> None:
    if refusal := move_refusal(organization_id, fleet):
        raise DeviceChangeError(refusal)


def deactivation_refusal(device: Device) -> str | None:
    """Why device may not be deactivated now, or None (balena allows it only while Offline)."""
    if device.is_active and device.overall_status != Status.OFFLINE:
        return f"{device.name} is {Status(device.overall_status).label}; only an Offline device can be deactivated."
    return None


def check_poll_interval(seconds: int | None) -> None:
    """Refuse a polling interval (fleet setting or device override) below the installation's floor."""
    if seconds is not None and seconds < settings.FLEETSTATUS_MIN_POLL_INTERVAL:
        raise DeviceChangeError(poll_interval_floor_message())


def poll_interval_floor_message() -> str:
    return (
        f"The polling interval cannot be below {settings.FLEETSTATUS_MIN_POLL_INTERVAL} seconds "
        "(FLEETSTATUS_MIN_POLL_INTERVAL); leave it empty to use the default."
    )


# --- One device ---------------------------------------------------------------------------------


def update_device(device: Device | int, changes: dict[str, Any], *, reason: str, at: datetime | None = None) -> Device:
    """Change inputs of one device; recompute and record its status. Returns the saved device."""
    at = at or timezone.now()
    pk = device.pk if isinstance(device, Device) else device
    with transaction.atomic():
        locked = lock(Device.objects.filter(pk=pk)).get()
        if changes.get("is_active") is True and not locked.is_active:
            changes = {**changes, "activated_at": at}
        if "update_status" in changes and changes["update_status"] != locked.update_status:
            changes = {**changes, "update_status_changed_at": at}
        save_locked(locked, changes, reason=reason, at=at)
        if {"poll_interval", "fleet", "fleet_id"} & set(changes):
            # The effective interval may have changed, and with it when the heartbeat goes stale.
            refresh_deadlines(Device.objects.filter(pk=pk))
            locked.refresh_from_db()
        if "is_active" in changes or "fleet" in changes or "fleet_id" in changes:
            reconcile_frozen(locked.organization_id, reason=reason, at=at)
            locked.refresh_from_db()
    return locked


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
        write_transitions([Transition(device.pk, "", device.overall_status, at)], reason)
        if is_active:
            reconcile_frozen(fleet.organization_id, reason=reason, at=at)
            device.refresh_from_db()
    return device, api_key


def default_device_name(uuid: str) -> str:
    adjectives = ["amber", "brisk", "calm", "dusty", "eager", "fuzzy", "gentle", "hidden"]
    adjectives += ["icy", "jolly", "keen", "lucky", "misty", "noble", "proud", "quiet"]
    nouns = ["river", "forest", "meadow", "canyon", "harbor", "summit", "valley", "island"]
    nouns += ["desert", "glacier", "prairie", "lagoon", "ridge", "delta", "grove", "tundra"]
    a, b = int(uuid[0], 16), int(uuid[1], 16)
    return f"{adjectives[a]}-{nouns[b]}-{uuid[2:6]}"


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
        current = lock(Device.objects.filter(pk=existing.pk)).get()
        if not _claimable(current, fleet):
            raise UUIDTaken(f"A device with UUID {uuid} is already registered.")
        changes: dict[str, Any] = {"api_key_hash": hash_key(api_key)}
        if device_type:
            changes["device_type"] = device_type
        device = update_device(current, changes, reason="preregistered device claimed by registration", at=at)
    return device, api_key, True


def preregister_device(
    fleet: Fleet, uuid: str, *, name: str = "", reason: str, at: datetime | None = None
) -> tuple[Device, str]:
    """Create a device before it exists: Inactive until its first contact (docs/design.md, Statuses).

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


def set_active(device: Device | int, active: bool, *, reason: str, at: datetime | None = None) -> Device:
    """Deactivate (only while Offline, as balena allows) or reactivate a device."""
    pk = device.pk if isinstance(device, Device) else device
    current = Device.objects.get(pk=pk)
    if not active and (refusal := deactivation_refusal(current)):
        raise DeviceChangeError(refusal)
    return update_device(pk, {"is_active": active}, reason=reason, at=at)


def move_device(device: Device | int, fleet: Fleet, *, reason: str, at: datetime | None = None) -> Device:
    at = at or timezone.now()
    current = device if isinstance(device, Device) else Device.objects.get(pk=device)
    check_move(current.organization_id, fleet)
    return update_device(current.pk, {"fleet": fleet}, reason=reason, at=at)


def apply_admin_edit(
    device: Device | int, changes: dict[str, Any], *, reason: str, at: datetime | None = None
) -> Device:
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
        current = lock(Device.objects.filter(pk=pk)).get()
        changes = dict(changes)
        fleet = changes.get("fleet")
        if fleet is not None:
            if fleet.pk == current.fleet_id:
                del changes["fleet"]
            else:
                check_move(current.organization_id, fleet)
        if changes.get("is_active") is False and (refusal := deactivation_refusal(current)):
            raise DeviceChangeError(refusal)
        check_poll_interval(changes.get("poll_interval"))
        return update_device(pk, changes, reason=reason, at=at)


# --- Many devices -------------------------------------------------------------------------------


@dataclass
class ActivationResult:
    """What set_devices_active did: devices changed, and those skipped with why."""

    changed: int = 0
    # Devices already in the requested state.
    unchanged: list[str] = dc_field(default_factory=list)
    # Deactivation only: (name, status label) of devices that are not Offline.
    refused: list[tuple[str, str]] = dc_field(default_factory=list)


def set_devices_active(
    queryset: QuerySet, active: bool, *, reason: str, at: datetime | None = None
) -> ActivationResult:
    """Deactivate (Offline devices only) or reactivate many devices, in locked batches.

    The Offline check runs under each batch's row lock, so a device that just came online is
    skipped, never deactivated. The allowance is reconciled once per organization at the end.
    """
    at = at or timezone.now()
    result = ActivationResult()
    ids = list(queryset.order_by("pk").values_list("pk", flat=True))
    organizations: set[int] = set()
    changes: dict[str, Any] = {"is_active": True, "activated_at": at} if active else {"is_active": False}
    for chunk in chunks(ids):
        with transaction.atomic():
            eligible = []
            for d in lock(Device.objects.filter(pk__in=chunk)):
                if d.is_active == active:
                    result.unchanged.append(d.name)
                elif not active and deactivation_refusal(d):
                    result.refused.append((d.name, Status(d.overall_status).label))
                else:
                    eligible.append(d)
            apply_locked(eligible, changes, reason, at)
        result.changed += len(eligible)
        organizations.update(d.organization_id for d in eligible)
    for org_id in sorted(organizations):
        reconcile_frozen(org_id, reason=reason, at=at)
    return result


def move_devices(queryset: QuerySet, fleet: Fleet, *, reason: str, at: datetime | None = None) -> int:
    """Move many devices to fleet (all must be in its organization); returns how many moved."""
    at = at or timezone.now()
    for organization_id in queryset.order_by().values_list("organization_id", flat=True).distinct():
        check_move(organization_id, fleet)
    ids = list(queryset.exclude(fleet=fleet).order_by("pk").values_list("pk", flat=True))
    for chunk in chunks(ids):
        with transaction.atomic():
            apply_locked(list(lock(Device.objects.filter(pk__in=chunk))), {"fleet": fleet}, reason, at)
            refresh_deadlines(Device.objects.filter(pk__in=chunk))
    if ids:
        # The new fleet's type may be paid while the organization is free.
        reconcile_frozen(fleet.organization_id, reason=reason, at=at)
    return len(ids)


# --- Organization and fleet settings ------------------------------------------------------------


def reconcile_frozen(organization: Organization | int, *, reason: str, at: datetime | None = None) -> int:
    """Recompute is_frozen for every device of an organization (docs/design.md, Frozen and Inactive).

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
        unfreeze = {"is_frozen": False, "frozen_reason": ""}
        written += bulk_update_devices(Device.objects.filter(pk__in=to_unfreeze), unfreeze, reason=reason, at=at)
    for why, ids in to_freeze.items():
        freeze = {"is_frozen": True, "frozen_reason": why}
        written += bulk_update_devices(Device.objects.filter(pk__in=ids), freeze, reason=reason, at=at)
    return written


def update_organization(
    org: Organization, changes: dict[str, Any], *, reason: str, at: datetime | None = None
) -> Organization:
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
            refresh_deadlines(devices.filter(poll_interval__isnull=True))
        if "cloudlink_enabled" in changes:
            recompute_statuses(devices, reason=reason, at=at)
        if "fleet_type" in changes:
            reconcile_frozen(fleet.organization_id, reason=reason, at=at)
    return fleet
