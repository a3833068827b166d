"""Device counts per fleet over time: snapshots written by the fold, rolled up, pruned, read back.

- record(): every fold of the kept counts (fleets/counts.py) writes one snapshot per fleet whose
  counts it changed, stamped with the minute: ONE INSERT … SELECT … ON CONFLICT for all of them, so
  a fold that changes a thousand fleets costs one statement, and a fleet changed by several folds in
  the same minute keeps one row (the latest counts).
- compact(): the hourly beat task rolls snapshots older than ROLLUP_AFTER up to one per hour and
  prunes those older than FLEETSTATUS_TRANSITION_RETENTION_DAYS (keeping each fleet's latest, which
  says what its counts have been since).
- A snapshot holds from its `at` until the fleet's next one. The hourly roll-up keeps the hour's
  worst minute (the highest share not Online): a short outage a month ago still shows on the chart.
- series(): a fleet's snapshots over a range, for the fleet page (fleets/fleet_page.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection as default_connection
from django.db.models import Exists, F, FloatField, OuterRef, Q
from django.db.models.expressions import Window
from django.db.models.functions import Cast, NullIf, RowNumber, TruncHour
from django.utils import timezone

from devices.status import Status
from fleets.models import Fleet, FleetCountSnapshot

SNAPSHOTS = "fleets_fleetcountsnapshot"
COUNTS = "fleets_statuscount"
STATUS_SLUGS: tuple[str, ...] = tuple(s.value for s in Status)
# Column of each status in the snapshot table: the slug with underscores.
COLUMNS: dict[str, str] = {slug: slug.replace("-", "_") for slug in STATUS_SLUGS}
ROLLUP_AFTER = timedelta(days=7)
# How far back each roll-up looks for minutes not rolled up yet: a beat that stopped for a day
# catches up, and the hourly run never sorts a month of rows.
ROLLUP_LOOKBACK = timedelta(days=2)
PRUNE_BATCH = 5000


def minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


# --- Writing -----------------------------------------------------------------------------------------

_COLUMN_LIST = ", ".join(COLUMNS.values())
_SUMS = ", ".join(f"coalesce(sum(CASE WHEN c.status = '{slug}' THEN c.n END), 0)" for slug in STATUS_SLUGS)
_UPDATES = ", ".join(f"{col} = excluded.{col}" for col in COLUMNS.values())


def record(cur, fleet_ids: Iterable[int], at: datetime | None = None, connection=default_connection) -> None:
    """Snapshot the folded counts of these fleets at the minute of `at` (now); call inside the fold.

    The fleets table is the source (left-joined to the counts) so a fleet whose last device left
    gets a row of zeros rather than no row.
    """
    ids = sorted({int(i) for i in fleet_ids if i is not None})
    if not ids:
        return
    stamp = connection.ops.adapt_datetimefield_value(minute(at or timezone.now()))
    if connection.vendor == "postgresql":
        where, params = "f.id = ANY(%s)", [ids]
    else:
        where, params = f"f.id IN ({', '.join(['%s'] * len(ids))})", ids
    cur.execute(
        f"""INSERT INTO {SNAPSHOTS} (organization_id, fleet_id, at, {_COLUMN_LIST})
            SELECT f.organization_id, f.id, %s, {_SUMS}
            FROM fleets_fleet f LEFT JOIN {COUNTS} c ON c.fleet_id = f.id
            WHERE {where}
            GROUP BY f.organization_id, f.id
            ON CONFLICT (fleet_id, at) DO UPDATE SET {_UPDATES}""",
        [stamp, *params],
    )


def record_all(at: datetime | None = None) -> None:
    """Snapshot every fleet (after a recount, or to start the history of an existing installation)."""
    with default_connection.cursor() as cur:
        record(cur, Fleet.objects.values_list("pk", flat=True), at)


# --- Roll-up and pruning -----------------------------------------------------------------------------


def _not_online_share():
    active = F("online") + F("online_vpn_only") + F("online_heartbeat_only") + F("offline") + F("configuring")
    active = active + F("updating") + F("post_provisioning") + F("frozen")
    return Cast(active - F("online"), FloatField()) / Cast(NullIf(active, 0), FloatField())


def rollup(now: datetime | None = None) -> int:
    """Fold snapshots older than ROLLUP_AFTER into one per fleet and hour; returns rows removed."""
    now = now or timezone.now()
    cutoff = (now - ROLLUP_AFTER).replace(minute=0, second=0, microsecond=0)
    old = FleetCountSnapshot.objects.filter(at__lt=cutoff, at__gte=cutoff - ROLLUP_LOOKBACK)
    hour = TruncHour("at")
    ranked = old.annotate(
        rank=Window(
            RowNumber(),
            partition_by=[F("fleet_id"), hour],
            order_by=[_not_online_share().desc(nulls_last=True), F("at").desc()],
        )
    )
    losers = list(ranked.filter(rank__gt=1).values_list("pk", flat=True))
    removed = 0
    for i in range(0, len(losers), PRUNE_BATCH):
        removed += FleetCountSnapshot.objects.filter(pk__in=losers[i : i + PRUNE_BATCH]).delete()[0]
    # One row per (fleet, hour) is left: moving it to the hour's start cannot collide.
    old.exclude(at=hour).update(at=hour)
    return removed


def prune(now: datetime | None = None) -> int:
    """Delete snapshots older than the transitions' retention (each fleet keeps its latest) and those
    of deleted fleets; returns rows deleted."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.FLEETSTATUS_TRANSITION_RETENTION_DAYS)
    newer = FleetCountSnapshot.objects.filter(fleet_id=OuterRef("fleet_id"), at__gt=OuterRef("at"))
    stale = FleetCountSnapshot.objects.filter(
        Q(at__lt=cutoff, pk__in=FleetCountSnapshot.objects.filter(at__lt=cutoff).filter(Exists(newer)).values("pk"))
        | ~Q(fleet_id__in=Fleet.objects.values("pk"))
    )
    deleted = 0
    while True:
        ids = list(stale.values_list("pk", flat=True)[:PRUNE_BATCH])
        if ids:
            deleted += FleetCountSnapshot.objects.filter(pk__in=ids).delete()[0]
        if len(ids) < PRUNE_BATCH:
            return deleted


def compact(now: datetime | None = None) -> dict[str, int]:
    now = now or timezone.now()
    return {"rolled_up": rollup(now), "pruned": prune(now)}


# --- Reading -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """A fleet's counts from `at` on."""

    at: datetime
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def active(self) -> int:
        return self.total - self.counts[Status.INACTIVE]

    @property
    def not_online(self) -> int:
        return self.active - self.counts[Status.ONLINE]

    @property
    def share(self) -> float:
        """Share of the active devices not Online (0 when none is active)."""
        return self.not_online / self.active if self.active else 0.0


def _point(row: Sequence) -> Point:
    return Point(row[0], dict(zip(STATUS_SLUGS, row[1:], strict=True)))


def series(fleet_id: int, start: datetime, end: datetime) -> list[Point]:
    """The fleet's snapshots in (start, end], preceded by the one in force at `start` (if any),
    whose time is moved to `start`. One query."""
    fields = ("at", *COLUMNS.values())
    inside = FleetCountSnapshot.objects.filter(fleet_id=fleet_id, at__gt=start, at__lte=end)
    before = FleetCountSnapshot.objects.filter(fleet_id=fleet_id, at__lte=start).order_by("-at")[:1]
    rows = list(before.values_list(*fields).union(inside.values_list(*fields), all=True))
    rows.sort(key=lambda r: r[0])
    points = [_point(r) for r in rows]
    if points and points[0].at <= start:
        points[0] = Point(start, points[0].counts)
    return points
