"""Heartbeats on the database side: record a fetch, fold in the fetches Redis collected, expire.

devices.live.heartbeats decides which fetches reach the database at all (HeartbeatDatabase is
what it calls here); the sweep (devices.sweep) runs the write-back and the expiry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from devices.live.heartbeats import WriteBack
from devices.models import Device, effective_poll_interval, heartbeat_window
from devices.services.changes import BATCH_SIZE, Transition, apply_locked, lock, transition_time, write_transitions
from devices.services.lifecycle import update_device
from devices.services.sql import among, expire, update_heartbeat_times
from devices.status import SIGNALS, HeartbeatState, annotate_signals, compute_status

HEARTBEAT_EXPIRED = "heartbeat expired: no target-state fetch within the polling window"


def heartbeat_changes(device: Device, now: datetime) -> dict[str, Any]:
    """The inputs a counted fetch at `now` sets (it also reactivates an inactive device)."""
    changes: dict[str, Any] = {
        "api_heartbeat_state": HeartbeatState.ONLINE,
        "last_api_heartbeat_at": now,
        "heartbeat_deadline": now + heartbeat_window(device.effective_poll_interval),
        "last_seen_at": now,
    }
    if not device.is_active:
        changes["is_active"] = True
    return changes


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
        locked = lock(Device.objects.filter(pk=device.pk)).get()
        if detect_gap and locked.api_heartbeat_state == HeartbeatState.ONLINE and locked.heartbeat_deadline:
            deadline = locked.heartbeat_deadline
            if unflushed_fetch is not None:
                deadline = max(deadline, unflushed_fetch + heartbeat_window(locked.effective_poll_interval))
            if deadline <= at:
                apply_locked([locked], {"api_heartbeat_state": HeartbeatState.OFFLINE}, HEARTBEAT_EXPIRED, deadline)
        return update_device(locked.pk, heartbeat_changes(locked, at), reason="target state fetched", at=at)


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
            Device.objects.filter(pk__in=among(sorted(fetches)))
            .select_for_update(of=("self",), skip_locked=True)
            .order_by("pk")
            .values_list(
                "pk",
                "poll_interval",
                "fleet__poll_interval",
                "api_heartbeat_state",
                "last_api_heartbeat_at",
                "last_seen_at",
            )
        )
        online = HeartbeatState.ONLINE.value
        result.online = {row[0] for row in rows if row[3] == online}
        not_locked = set(fetches) - {row[0] for row in rows}
        if not_locked:
            # Skipped because locked, or gone (a deleted device): only the former waits for next time.
            result.busy = set(Device.objects.filter(pk__in=among(sorted(not_locked))).values_list("pk", flat=True))
        values = []
        for pk, own_interval, fleet_interval, state, last_fetch, last_seen_at in rows:
            seen = fetches[pk]
            if state != online or (last_fetch is not None and last_fetch >= seen):
                continue
            deadline = seen + heartbeat_window(effective_poll_interval(own_interval, fleet_interval))
            last_seen = seen if last_seen_at is None else max(last_seen_at, seen)
            values.append((pk, seen, deadline, last_seen))
        update_heartbeat_times(values)
    result.updated = len(values)
    return result


def in_uuid_range(queryset, uuids: tuple[str, str | None] | None):
    """The devices of one shard of the live state (devices.live.redis.uuid_range), or all for None."""
    if uuids is None:
        return queryset
    lowest, following = uuids
    queryset = queryset.filter(uuid__gte=lowest)
    return queryset if following is None else queryset.filter(uuid__lt=following)


def extend_heartbeat_deadlines(
    at: datetime, *, batch_size: int = BATCH_SIZE, uuids: tuple[str, str | None] | None = None
) -> int:
    """Give every online heartbeat at least its full window from `at`; never shortens a deadline.

    For when the Redis store lost its data: the fetches it had not written back are gone, so a
    device whose database deadline has passed may well have fetched since. Noticing a dead device
    one window late is better than marking a live one Offline. Walks online devices in id batches
    (short transactions, a few UPDATEs each); `uuids`: only one shard's devices. Returns the rows moved.
    """
    moved = 0
    last_pk = 0
    while True:
        rows = list(
            in_uuid_range(Device.objects.filter(api_heartbeat_state=HeartbeatState.ONLINE, pk__gt=last_pk), uuids)
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


_EXPIRY_FIELDS = ("pk", "heartbeat_deadline", "overall_status", "status_changed_at", *SIGNALS)


def expire_heartbeats(
    now: datetime | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    claim: Callable[[list[int]], Collection[int]] | None = None,
    uuids: tuple[str, str | None] | None = None,
) -> int:
    """Turn every heartbeat whose deadline has passed offline, stamping each transition at its deadline.

    Reads only due rows (partial index on heartbeat_deadline) in bounded batches, walking the index
    by (deadline, id) so rows left alone are not read twice. Rows that another sweep or a fetch
    holds are skipped (SKIP LOCKED): the holder settles them. PostgreSQL re-checks the WHERE clause
    of a row that changed while we waited for it, so an expired (or renewed) row is never returned
    twice: two concurrent runs write each transition once.

    `claim` (the Redis heartbeat store) gets the ids of each locked batch and returns those that may
    expire (the others fetched since the database last heard of it); it runs while the rows are
    locked, so nothing can reach the database between its answer and our commit. `uuids`: only the
    devices of one shard of the live state (devices.live.redis.uuid_range). Returns the
    transitions written.
    """
    now = now or timezone.now()
    written = 0
    after: tuple[datetime, int] | None = None
    while True:
        with transaction.atomic():
            due = in_uuid_range(
                Device.objects.filter(api_heartbeat_state=HeartbeatState.ONLINE, heartbeat_deadline__lte=now), uuids
            )
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


def _expire_locked(rows: Sequence[Mapping[str, Any]]) -> int:
    """Turn the heartbeat of locked due rows offline: ONE UPDATE and ONE INSERT for the whole batch.

    The status of each row is the rule (devices.status.compute_status) applied to its locked
    signals with the heartbeat offline; a row whose status changes gets a transition stamped at
    its deadline (transition_time). Rows hold the values of _EXPIRY_FIELDS. Returns transitions.
    """
    if not rows:
        return 0
    # (The heartbeat state is not a field of the device cache: nothing to invalidate.)
    changes = {"api_heartbeat_state": HeartbeatState.OFFLINE.value}
    updates: list[tuple[int, str | None, datetime | None]] = []
    transitions: list[Transition] = []
    for row in rows:
        new_status = compute_status({**row, **changes}).value
        if new_status == row["overall_status"]:
            updates.append((row["pk"], None, None))
            continue
        at = transition_time(row["heartbeat_deadline"], row["status_changed_at"])
        updates.append((row["pk"], new_status, at))
        transitions.append(Transition(row["pk"], row["overall_status"], new_status, at))
    expire(updates)
    write_transitions(transitions, HEARTBEAT_EXPIRED)
    return len(transitions)
