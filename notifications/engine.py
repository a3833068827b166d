"""The dispatcher: turn the outbox's status changes into grouped deliveries (beat runs it every few seconds).

- evaluate(): reads changes whose hold has passed, decides per channel (scope, on/off, mute, hold,
  watched statuses, recovery only after an announced entry), records the outcome and appends the
  announced changes to the channel's collecting Delivery (at most MAX_CHANGES per message).
- check_thresholds(): fleet.degraded / fleet.recovered per channel with a fleet threshold.
- seal(): a collecting Delivery whose group window has passed becomes pending: the sender's work.

All three run in one transaction under an advisory lock that a second dispatcher does not wait
for (it skips the round), so two workers never evaluate the same change twice.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from devices.models import Device, StatusTransition
from devices.status import Status
from fleets import counts
from fleets.models import Fleet, Organization
from notifications.models import Channel, Delivery, FleetAlert, Mute, NotifiedState, PendingChange, Result

MAX_CHANGES = 1000
BATCH = 5000
# pg_try_advisory_xact_lock key: one dispatcher at a time (any 64-bit number unique to this use).
LOCK_KEY = 0x5F5C_0C0E
ONLINE = {Status.ONLINE.value, Status.ONLINE_VPN_ONLY.value, Status.ONLINE_HEARTBEAT_ONLY.value}


def dispatch(now: datetime | None = None) -> dict[str, int] | None:
    """One round; None when another dispatcher holds the lock."""
    now = now or timezone.now()
    with transaction.atomic():
        if not _try_lock():
            return None
        evaluated = 0
        while True:
            n = evaluate(now)
            evaluated += n
            if n < BATCH:
                break
        events = check_thresholds(now)
        sealed = seal(now)
    return {"evaluated": evaluated, "fleet_events": events, "sealed": sealed}


def _try_lock() -> bool:
    if connection.vendor != "postgresql":
        return True  # SQLite: one writer at a time already
    with connection.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])
        return bool(cur.fetchone()[0])


def _max_hold() -> int:
    # A change waits for the longest hold of any enabled channel before it is evaluated for all of
    # them at once (simpler than tracking each channel's progress per change).
    return Channel.objects.filter(enabled=True).aggregate(m=Max("hold_seconds"))["m"] or 0


def evaluate(now: datetime, batch: int = BATCH) -> int:
    cutoff = now - timedelta(seconds=_max_hold())
    changes = list(PendingChange.objects.filter(processed_at__isnull=True, at__lte=cutoff).order_by("at", "id")[:batch])
    if not changes:
        return 0
    org_ids = {c.organization_id for c in changes}
    device_ids = {c.device_id for c in changes}
    channels: dict[int, list[Channel]] = defaultdict(list)
    for channel in Channel.objects.filter(organization_id__in=org_ids).prefetch_related("fleets"):
        channel.fleet_ids = {f.pk for f in channel.fleets.all()}
        channel.watched_set = channel.watched
        channels[channel.organization_id].append(channel)
    later = _later_transitions(device_ids, min(c.at for c in changes))
    mutes = list(Mute.objects.filter(organization_id__in=org_ids, until__gt=min(c.at for c in changes)))
    channel_ids = [c.pk for cs in channels.values() for c in cs]
    states = {
        (s.channel_id, s.device_id): s.status
        for s in NotifiedState.objects.filter(device_id__in=device_ids, channel_id__in=channel_ids)
    }
    touched_states: set[tuple[int, int]] = set()
    devices = {d["id"]: d for d in Device.objects.filter(id__in=device_ids).values("id", "uuid", "name")}
    fleet_slugs = dict(Fleet.objects.filter(organization_id__in=org_ids).values_list("id", "slug"))
    collector = _Collector(now)
    results: dict[int, dict[str, list]] = defaultdict(dict)

    for change in changes:
        item = None  # the change as messages list it, built once for all its channels
        for channel in channels.get(change.organization_id, ()):
            if channel.fleet_ids and change.fleet_id not in channel.fleet_ids:
                continue
            key = (channel.pk, change.device_id)
            entering = change.to_status in channel.watched_set
            if not entering and key not in states:
                continue  # neither a watched status nor the recovery from an announced one
            if entering and states.get(key) == change.to_status:
                continue  # already announced (e.g. a change between two watched statuses and back)
            outcome = results[change.pk]
            if not channel.enabled:
                outcome[str(channel.pk)] = [Result.OFF.value, None, channel.name]
            elif _muted(mutes, change):
                outcome[str(channel.pk)] = [Result.MUTED.value, None, channel.name]
            elif not _stayed(later, change, channel.hold_seconds):
                outcome[str(channel.pk)] = [Result.HELD.value, None, channel.name]
            else:
                if item is None:
                    device = devices.get(change.device_id, {"uuid": "", "name": ""})
                    item = {
                        "uuid": device["uuid"],
                        "name": device["name"],
                        "fleet": fleet_slugs.get(change.fleet_id, ""),
                        "from": change.from_status,
                        "to": change.to_status,
                        "at": change.at.isoformat(),
                    }
                delivery = collector.add(channel, item, change.at + timedelta(seconds=channel.hold_seconds))
                outcome[str(channel.pk)] = [Result.NOTIFIED.value, delivery.pk, channel.name]
                if entering:
                    states[key] = change.to_status
                else:
                    states.pop(key, None)
                touched_states.add(key)

    collector.save()
    _save_states(states, touched_states)
    _mark_processed(changes, results, now)
    return len(changes)


def _later_transitions(device_ids: set[int], since: datetime) -> dict[int, list[tuple[datetime, int]]]:
    """{device: [(at, transition id), ...] sorted} of every transition at or after `since`."""
    later: dict[int, list[tuple[datetime, int]]] = defaultdict(list)
    rows = StatusTransition.objects.filter(device_id__in=device_ids, at__gte=since).values_list("device_id", "at", "id")
    for device_id, at, tid in rows:
        later[device_id].append((at, tid))
    for items in later.values():
        items.sort()
    return later


def _stayed(later: dict[int, list[tuple[datetime, int]]], change: PendingChange, hold: int) -> bool:
    """Whether the device kept the change's status for `hold` seconds (no next transition sooner)."""
    items = later.get(change.device_id, [])
    i = bisect.bisect_right(items, (change.at, change.transition_id))
    return i == len(items) or items[i][0] >= change.at + timedelta(seconds=hold)


def _muted(mutes: list[Mute], change: PendingChange) -> bool:
    return any(
        m.starts_at <= change.at < m.until and (m.device_id == change.device_id or m.fleet_id == change.fleet_id)
        for m in mutes
    )


def _bound_cursor():
    """A cursor of the same connection (and transaction) whose parameters the server binds: Django's
    client-side binding quotes each of 10,000 array elements in Python, which costs more than the
    statement."""
    import psycopg

    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def _save_states(states: dict[tuple[int, int], str], touched: set[tuple[int, int]]) -> None:
    gone = [key for key in touched if key not in states]
    present = [(c, d, states[(c, d)]) for c, d in touched if (c, d) in states]
    if connection.vendor == "postgresql":
        # One statement each, whatever the number of devices (an ORM object per row costs more
        # than the whole round for a sweep that expired 10,000 devices).
        with _bound_cursor() as cur:
            if gone:
                cur.execute(
                    "DELETE FROM notifications_notifiedstate s USING unnest(%s::bigint[], %s::bigint[]) AS g(c, d) "
                    "WHERE s.channel_id = g.c AND s.device_id = g.d",
                    [[c for c, _ in gone], [d for _, d in gone]],
                )
            if present:
                cur.execute(
                    "INSERT INTO notifications_notifiedstate (channel_id, device_id, status) "
                    "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) "
                    "ON CONFLICT (channel_id, device_id) DO UPDATE SET status = EXCLUDED.status",
                    [[p[0] for p in present], [p[1] for p in present], [p[2] for p in present]],
                )
        return
    for channel_id, device_id in gone:
        NotifiedState.objects.filter(channel_id=channel_id, device_id=device_id).delete()
    NotifiedState.objects.bulk_create(
        [NotifiedState(channel_id=c, device_id=d, status=st) for c, d, st in present],
        update_conflicts=True,
        unique_fields=["channel_id", "device_id"],
        update_fields=["status"],
    )


def _mark_processed(changes: list[PendingChange], results: dict[int, dict[str, list]], now: datetime) -> None:
    if connection.vendor == "postgresql":
        with _bound_cursor() as cur:
            cur.execute(
                "UPDATE notifications_pendingchange p SET processed_at = %s, results = v.r "
                "FROM unnest(%s::bigint[], %s::jsonb[]) AS v(id, r) WHERE p.id = v.id",
                [
                    now,
                    [c.pk for c in changes],
                    [json.dumps(results[c.pk]) if c.pk in results else None for c in changes],
                ],
            )
        return
    for change_id, result in results.items():
        PendingChange.objects.filter(pk=change_id).update(results=result)
    PendingChange.objects.filter(pk__in=[c.pk for c in changes]).update(processed_at=now)


class _Collector:
    """The collecting Delivery of each channel, filled in memory and written once."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.open: dict[int, Delivery] = {}
        self.dirty: dict[int, Delivery] = {}

    def add(self, channel: Channel, item: dict[str, Any], due: datetime) -> Delivery:
        delivery = self.open.get(channel.pk)
        if delivery is None:
            delivery = (
                Delivery.objects.select_for_update()
                .filter(channel=channel, state=Delivery.State.COLLECTING, event=Delivery.Event.CHANGES)
                .order_by("id")
                .first()
            )
        if delivery is None or delivery.size >= MAX_CHANGES:
            if delivery is not None:
                self._seal(delivery)
            # The group window starts when the first change became due (the sweep stamps changes
            # at their deadlines, so this can be before now).
            delivery = Delivery.objects.create(
                channel=channel,
                event=Delivery.Event.CHANGES,
                state=Delivery.State.COLLECTING,
                payload={"changes": []},
                created_at=min(due, self.now),
            )
        self.open[channel.pk] = delivery
        delivery.payload.setdefault("changes", []).append(item)
        delivery.size += 1
        self.dirty[delivery.pk] = delivery
        return delivery

    def _seal(self, delivery: Delivery) -> None:
        delivery.state = Delivery.State.PENDING
        delivery.next_attempt_at = self.now
        self.dirty[delivery.pk] = delivery

    def save(self) -> None:
        for delivery in self.dirty.values():
            if delivery.size >= MAX_CHANGES and delivery.state == Delivery.State.COLLECTING:
                self._seal(delivery)
            delivery.save(update_fields=["payload", "size", "state", "next_attempt_at"])


def seal(now: datetime) -> int:
    window = timedelta(seconds=settings.FLEETSTATUS_NOTIFY_GROUP_SECONDS)
    return Delivery.objects.filter(state=Delivery.State.COLLECTING, created_at__lte=now - window).update(
        state=Delivery.State.PENDING, next_attempt_at=now
    )


def check_thresholds(now: datetime) -> int:
    """Emit fleet.degraded / fleet.recovered when a fleet crosses a channel's threshold; returns events."""
    channels = list(
        Channel.objects.filter(enabled=True, fleet_threshold__isnull=False)
        .select_related("organization")
        .prefetch_related("fleets")
    )
    if not channels:
        return 0
    org_ids = {c.organization_id for c in channels}
    per_fleet: dict[int, dict[str, int]] = counts.fleet_status_counts(org_ids)
    fleets = {f.pk: f for f in Fleet.objects.filter(organization_id__in=org_ids)}
    alerts = {(a.channel_id, a.fleet_id) for a in FleetAlert.objects.filter(channel__in=channels)}
    muted = set(
        Mute.objects.filter(
            fleet__isnull=False, organization_id__in=org_ids, starts_at__lte=now, until__gt=now
        ).values_list("fleet_id", flat=True)
    )
    events = 0
    for channel in channels:
        scope = {f.pk for f in channel.fleets.all()} or {
            pk for pk, f in fleets.items() if f.organization_id == channel.organization_id
        }
        for fleet_id in scope:
            if fleet_id in muted:
                continue
            by_status = per_fleet.get(fleet_id) or {}
            active = sum(by_status.values()) - by_status.get(Status.INACTIVE.value, 0)
            not_online = active - sum(by_status.get(s, 0) for s in ONLINE)
            degraded = active > 0 and not_online * 100 >= channel.fleet_threshold * active
            was = (channel.pk, fleet_id) in alerts
            if degraded == was:
                continue
            if degraded:
                FleetAlert.objects.create(channel=channel, fleet_id=fleet_id, since=now)
            else:
                FleetAlert.objects.filter(channel=channel, fleet_id=fleet_id).delete()
            Delivery.objects.create(
                channel=channel,
                event=Delivery.Event.DEGRADED if degraded else Delivery.Event.RECOVERED,
                payload={
                    "fleet": fleets[fleet_id].slug,
                    "fleet_name": fleets[fleet_id].name,
                    "not_online": not_online,
                    "active": active,
                    "at": now.isoformat(),
                },
                size=1,
                created_at=now,
                next_attempt_at=now,
            )
            events += 1
    return events


def send_test(channel: Channel, now: datetime | None = None) -> Delivery:
    now = now or timezone.now()
    return Delivery.objects.create(
        channel=channel,
        event=Delivery.Event.TEST,
        payload={"message": f"Test message from fleetstatus for channel {channel.name}."},
        size=0,
        created_at=now,
        next_attempt_at=now,
    )


def organization_slug(organization_id: int) -> str:
    return Organization.objects.filter(pk=organization_id).values_list("slug", flat=True).first() or ""


def prune(now: datetime | None = None, batch: int = 10_000) -> int:
    """Delete processed changes and finished deliveries older than the transition retention; returns rows deleted."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.FLEETSTATUS_TRANSITION_RETENTION_DAYS)
    deleted = 0
    while True:
        ids = list(
            PendingChange.objects.filter(processed_at__lt=cutoff).order_by("id").values_list("pk", flat=True)[:batch]
        )
        if ids:
            deleted += PendingChange.objects.filter(pk__in=ids).delete()[0]
        if len(ids) < batch:
            break
    finished = [Delivery.State.DELIVERED, Delivery.State.FAILED]
    deleted += Delivery.objects.filter(state__in=finished, created_at__lt=cutoff).delete()[0]
    return deleted
