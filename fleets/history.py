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
- column_points() and periods(): what the fleet page (fleets/fleet_page.py) draws, computed in SQL
  so the page reads a few hundred rows whatever the number of snapshots in its range.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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


_ACTIVE = " + ".join(col for slug, col in COLUMNS.items() if slug != Status.INACTIVE)
_SHARE = f"coalesce(CAST({_ACTIVE} - online AS DOUBLE PRECISION) / NULLIF({_ACTIVE}, 0), 0)"
# PostgreSQL: a row's values as one float array, so that max() over arrays (compared element by
# element) picks a whole row by its first elements in a hash aggregate, without sorting the range.
_FLOATS = ", ".join(f"{col}::float8" for col in COLUMNS.values())


def _source(fleet_id: int, start: datetime, end: datetime, connection) -> tuple[str, list]:
    """The fleet's snapshots in (start, end], preceded by the one in force at `start`, moved to
    `start`; with each row's share not Online. Read by index (fleet_id, at) only."""
    ops = connection.ops
    lo, hi = ops.adapt_datetimefield_value(start), ops.adapt_datetimefield_value(end)
    if connection.vendor == "postgresql":
        at = "%s::timestamptz"
    else:
        at = "%s"
    sql = f"""SELECT at, {_COLUMN_LIST}, {_SHARE} AS share FROM (
                  SELECT * FROM (SELECT {at} AS at, {_COLUMN_LIST} FROM {SNAPSHOTS}
                                 WHERE fleet_id = %s AND at <= %s ORDER BY at DESC LIMIT 1) AS carried
                  UNION ALL
                  SELECT at, {_COLUMN_LIST} FROM {SNAPSHOTS} WHERE fleet_id = %s AND at > %s AND at <= %s
              ) AS snapshots"""
    return sql, [lo, fleet_id, lo, fleet_id, lo, hi]


def column_points(
    fleet_id: int, start: datetime, end: datetime, step: timedelta, connection=default_connection
) -> dict[int, tuple[Point, Point]]:
    """{column: (its worst point, its latest point)} for columns of `step` from `start`; one query
    that returns at most two rows per column, however many snapshots the range holds."""
    source, params = _source(fleet_id, start, end, connection)
    if connection.vendor == "postgresql":
        return _column_points_pg(source, params, start, step, connection)
    # Whole seconds (julianday()'s float put a snapshot at the end into the column before).
    column = "CAST((CAST(strftime('%%s', at) AS INTEGER) - CAST(strftime('%%s', %s) AS INTEGER)) / %s AS INTEGER)"
    sql = f"""SELECT col, worst = 1, latest = 1, at, {_COLUMN_LIST} FROM (
                  SELECT s.*, row_number() OVER (PARTITION BY col ORDER BY share DESC, at DESC) AS worst,
                              row_number() OVER (PARTITION BY col ORDER BY at DESC) AS latest
                  FROM (SELECT {column} AS col, src.* FROM ({source}) AS src) AS s
              ) AS ranked WHERE worst = 1 OR latest = 1"""
    found: dict[int, list[Point]] = {}
    with connection.cursor() as cur:
        cur.execute(sql, [connection.ops.adapt_datetimefield_value(start), step.total_seconds(), *params])
        convert = _datetime_converter(connection)
        for col, is_worst, is_latest, at, *counts in cur.fetchall():
            point = _point([convert(at), *counts])
            pair = found.setdefault(int(col), [point, point])
            if is_worst:
                pair[0] = point
            if is_latest:
                pair[1] = point
    return {col: (worst, latest) for col, (worst, latest) in found.items()}


def _column_points_pg(source: str, params: list, start: datetime, step: timedelta, connection):
    sql = f"""SELECT col, max(ARRAY[share, ep, {_FLOATS}]), max(ARRAY[ep, share, {_FLOATS}]) FROM (
                  SELECT floor((ep - %s) / %s)::int AS col, * FROM (
                      SELECT extract(epoch FROM at)::float8 AS ep, src.* FROM ({source}) AS src) AS e
              ) AS c GROUP BY col"""
    with connection.cursor() as cur:
        cur.execute(sql, [start.timestamp(), step.total_seconds(), *params])
        rows = cur.fetchall()

    def point(epoch: float, counts: Sequence[float]) -> Point:
        return Point(datetime.fromtimestamp(epoch, UTC), dict(zip(STATUS_SLUGS, map(int, counts), strict=True)))

    return {col: (point(worst[1], worst[2:]), point(latest[0], latest[2:])) for col, worst, latest in rows}


@dataclass(frozen=True)
class Period:
    """A stretch of snapshots all above (`above`) or all at or below the threshold, from `start`."""

    start: datetime
    above: bool
    peak: float
    peak_at: datetime


def periods(
    fleet_id: int, start: datetime, end: datetime, threshold: float, connection=default_connection
) -> list[Period]:
    """The range cut where the share not Online crosses `threshold`, oldest first; one query that
    returns one row per period (gaps-and-islands over the snapshots)."""
    source, params = _source(fleet_id, start, end, connection)
    if connection.vendor == "postgresql":
        return _periods_pg(source, params, threshold, connection)
    sql = f"""WITH s AS (SELECT at, share, CASE WHEN share > %s THEN 1 ELSE 0 END AS above FROM ({source}) AS src),
                   e AS (SELECT at, share, above,
                                CASE WHEN above = lag(above, 1, -1) OVER (ORDER BY at) THEN 0 ELSE 1 END AS edge
                         FROM s),
                   g AS (SELECT at, share, above, sum(edge) OVER (ORDER BY at ROWS UNBOUNDED PRECEDING) AS grp FROM e),
                   r AS (SELECT at, share, above, grp,
                                row_number() OVER (PARTITION BY grp ORDER BY share DESC, at) AS rank,
                                min(at) OVER (PARTITION BY grp) AS first_at
                         FROM g)
              SELECT first_at, above, share, at FROM r WHERE rank = 1 ORDER BY first_at"""
    with connection.cursor() as cur:
        cur.execute(sql, [threshold, *params])
        rows = cur.fetchall()
    convert = _datetime_converter(connection)
    return [Period(convert(first), bool(above), float(share), convert(at)) for first, above, share, at in rows]


def _periods_pg(source: str, params: list, threshold: float, connection) -> list[Period]:
    # Both windows share one order (one sort); the peak of each period is its max (share, -time).
    sql = f"""WITH s AS (SELECT extract(epoch FROM at)::float8 AS ep, share, share > %s AS above FROM ({source}) AS src),
                   e AS (SELECT ep, share, above,
                                CASE WHEN above IS NOT DISTINCT FROM lag(above) OVER (ORDER BY ep) THEN 0 ELSE 1 END
                                AS edge FROM s),
                   g AS (SELECT ep, share, above, sum(edge) OVER (ORDER BY ep ROWS UNBOUNDED PRECEDING) AS grp FROM e)
              SELECT min(ep), bool_or(above), max(ARRAY[share, -ep]) FROM g GROUP BY grp ORDER BY 1"""
    with connection.cursor() as cur:
        cur.execute(sql, [threshold, *params])
        rows = cur.fetchall()
    return [
        Period(datetime.fromtimestamp(first, UTC), above, peak, datetime.fromtimestamp(-at, UTC))
        for first, above, (peak, at) in rows
    ]


def _datetime_converter(connection):
    """Raw cursors on SQLite give naive datetimes (or text, for a parameter read back): make them aware."""
    if connection.vendor == "postgresql":
        return lambda value: value
    from django.utils.dateparse import parse_datetime

    def convert(value):
        value = value if isinstance(value, datetime) else parse_datetime(value)
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    return convert
