"""How a device changes: lock its row, apply the inputs, recompute the status, record the transition.

Every writer of devices.services comes through here: a status is stored only together with the
transition that explains it (write_transitions, the one way one is written), and a transition is
never stamped before the device's last change (transition_time).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, QuerySet
from django.utils import timezone

from devices.live import devcache
from devices.models import Device, heartbeat_window
from devices.services.sql import insert_transitions
from devices.status import HeartbeatState, with_computed_status
from fleetstatus.metrics import count_transitions

BATCH_SIZE = 1000


class DeviceChangeError(ValueError):
    """An input change that the rules forbid (the message says why)."""


class Transition(NamedTuple):
    """One change of a device's overall status, about to be written (write_transitions)."""

    device_id: int
    from_status: str
    to_status: str
    at: datetime


def chunks(items: Sequence[Any], size: int = BATCH_SIZE) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def lock(queryset: QuerySet) -> QuerySet:
    """The devices of queryset with their fleet, locked for this transaction."""
    # Lock only device rows (not the joined fleet), in id order so concurrent writers never deadlock.
    return queryset.select_related("fleet").select_for_update(of=("self",)).order_by("pk")


def transition_time(at: datetime, last_change: datetime | None) -> datetime:
    """When a status change decided for `at` is recorded: never before the device's last change.

    `at` may have been taken before the row lock, or be a heartbeat deadline the sweep noticed
    late; a change committed meanwhile is newer, and a device's history must never run backwards.
    """
    return last_change if last_change is not None and last_change > at else at


def write_transitions(transitions: Sequence[Transition], reason: str) -> None:
    """Record transitions (their rows already hold the new status): one INSERT whatever their number."""
    insert_transitions(transitions, reason[:200])
    count_transitions(t.to_status for t in transitions)


def stage(device: Device, changes: dict[str, Any], at: datetime) -> Transition | None:
    """Apply changes to an in-memory (locked) device and return the transition they cause, if any."""
    for field, value in changes.items():
        setattr(device, field, value)
    new_status = device.compute_status()
    if new_status == device.overall_status:
        return None
    at = transition_time(at, device.status_changed_at)
    transition = Transition(device.pk, device.overall_status, new_status, at)
    device.overall_status = new_status
    device.status_changed_at = at
    return transition


def save_locked(device: Device, changes: dict[str, Any], *, reason: str, at: datetime) -> None:
    """Write changes to ONE locked device: its row, then its transition if the status changes."""
    transition = stage(device, changes, at)
    fields = set(changes)
    if devcache.touches(fields):
        devcache.forget_devices([device.uuid])
    if transition:
        fields |= {"overall_status", "status_changed_at"}
    if fields:
        device.save(update_fields=sorted(fields))
    if transition:
        write_transitions([transition], reason)


def apply_locked(
    rows: list[Device], changes: dict[str, Any], reason: str, at: datetime, transition_at_field: str | None = None
) -> int:
    """Write the same changes to locked rows with a handful of UPDATEs; returns transitions written.

    One UPDATE for the rows whose status stays, one per (new status, stamp) for the others.
    transition_at_field names a datetime field whose (pre-change) value stamps each row's
    transition instead of `at`.
    """
    if not rows:
        return 0
    groups: dict[tuple[str, datetime], list[int]] = defaultdict(list)
    transitions = []
    unchanged = []
    for d in rows:
        transition = stage(d, changes, getattr(d, transition_at_field) if transition_at_field else at)
        if transition:
            transitions.append(transition)
            groups[(transition.to_status, transition.at)].append(d.pk)
        else:
            unchanged.append(d.pk)
    if devcache.touches(changes):
        devcache.forget_devices(d.uuid for d in rows)
    if unchanged and changes:
        Device.objects.filter(pk__in=unchanged).update(**changes)
    for (status, changed_at), ids in groups.items():
        Device.objects.filter(pk__in=ids).update(**changes, overall_status=status, status_changed_at=changed_at)
    write_transitions(transitions, reason)
    return len(transitions)


def bulk_update_devices(
    queryset: QuerySet,
    changes: dict[str, Any],
    *,
    reason: str,
    at: datetime | None = None,
    transition_at_field: str | None = None,
) -> int:
    """Apply the same changes to many devices in locked batches of BATCH_SIZE; returns transitions written."""
    at = at or timezone.now()
    ids = list(queryset.order_by("pk").values_list("pk", flat=True))
    written = 0
    for chunk in chunks(ids):
        with transaction.atomic():
            written += apply_locked(
                list(lock(Device.objects.filter(pk__in=chunk))), changes, reason, at, transition_at_field
            )
    return written


def recompute_statuses(queryset: QuerySet, *, reason: str, at: datetime | None = None) -> int:
    """Bring the stored status of every device in queryset in line with the rule.

    Reads only rows whose stored status differs from the computed one, so it is cheap when nothing
    changed. Returns the number of transitions written.
    """
    at = at or timezone.now()
    stale_ids = list(
        with_computed_status(queryset.order_by())
        .exclude(overall_status=F("computed_status"))
        .values_list("pk", flat=True)
    )
    total = 0
    for ids in chunks(stale_ids):
        with transaction.atomic():
            total += apply_locked(list(lock(Device.objects.filter(pk__in=ids))), {}, reason, at)
    return total


def refresh_deadlines(queryset: QuerySet) -> None:
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
