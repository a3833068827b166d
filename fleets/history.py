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
- read(): what the fleet page (fleets/fleet_page.py) draws, the chart's columns and the incidents'
  periods, from one pass over the range's snapshots in SQL, returning a few hundred rows whatever
  the number of snapshots (column_points() and periods() are its two halves).
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
                                 WHERE fleet_id = %s AND at <= %s ORDER BY {SNAPSHOTS}.at DESC LIMIT 1) AS carried
                  UNION ALL
                  SELECT at, {_COLUMN_LIST} FROM {SNAPSHOTS} WHERE fleet_id = %s AND at > %s AND at <= %s
              ) AS snapshots"""
    return sql, [lo, fleet_id, lo, fleet_id, lo, hi]


@dataclass(frozen=True)
class Period:
    """A stretch of snapshots all above (`above`) or all at or below the threshold, from `start`."""

    start: datetime
    above: bool
    peak: float
    peak_at: datetime


@dataclass(frozen=True)
class Cell:
    """The snapshots of one chart column within one period (the range cut both ways)."""

    col: int
    period: int
    above: bool
    first_at: datetime
    worst: Point  # highest share, the latest of equals
    latest: Point
    peak: float  # highest share, and the earliest moment it was reached
    peak_at: datetime


def read(
    fleet_id: int,
    start: datetime,
    end: datetime,
    step: timedelta,
    threshold: float,
    connection=default_connection,
) -> tuple[dict[int, tuple[Point, Point]], list[Period]]:
    """column_points() and periods() from one pass over the range's snapshots: one query that
    returns a row per (column, period) pair, so at most columns + periods rows."""
    if connection.vendor == "postgresql":
        cells = _cells_pg(fleet_id, start, end, step, threshold, connection)
    else:
        cells = _cells_sqlite(fleet_id, start, end, step, threshold, connection)
    columns: dict[int, tuple[Point, Point]] = {}
    found: list[Period] = []
    period = None
    # Cells come in time order (by period, then column): a column's latest cell comes last, a
    # period's first cell first, and on equal shares a later cell is the worse, an earlier the peak.
    for cell in cells:
        worst = columns[cell.col][0] if cell.col in columns else cell.worst
        if (cell.worst.share, cell.worst.at) > (worst.share, worst.at):
            worst = cell.worst
        columns[cell.col] = (worst, cell.latest)
        if cell.period != period:
            period = cell.period
            found.append(Period(cell.first_at, cell.above, cell.peak, cell.peak_at))
        elif cell.peak > found[-1].peak:
            found[-1] = Period(found[-1].start, found[-1].above, cell.peak, cell.peak_at)
    return columns, found


def column_points(
    fleet_id: int, start: datetime, end: datetime, step: timedelta, connection=default_connection
) -> dict[int, tuple[Point, Point]]:
    """{column: (its worst point, its latest point)} for columns of `step` from `start`."""
    return read(fleet_id, start, end, step, 1.0, connection)[0]


def periods(
    fleet_id: int, start: datetime, end: datetime, threshold: float, connection=default_connection
) -> list[Period]:
    """The range cut where the share not Online crosses `threshold`, oldest first (gaps and islands
    over the snapshots)."""
    return read(fleet_id, start, end, max(end - start, timedelta(seconds=1)), threshold, connection)[1]


def _cells_pg(fleet_id: int, start: datetime, end: datetime, step: timedelta, threshold: float, connection):
    # One index range scan from the snapshot in force at `start` (moved to `start`) to `end`, in
    # time order. OFFSET 0 keeps the share computed once per row rather than at every use; the
    # two windows share the scan's order; max() over float arrays picks a whole row by its first
    # elements in a hash aggregate.
    sql = f"""SELECT col, grp, bool_or(above), min(ep), max(ARRAY[share, ep, {_COLUMN_LIST}]),
                     max(ARRAY[ep, share, {_COLUMN_LIST}]), max(ARRAY[share, -ep])
              FROM (SELECT *, count(*) FILTER (WHERE edge) OVER (ORDER BY at) AS grp FROM (
                  SELECT *, floor((ep - %(start_ep)s) / %(step)s)::int AS col,
                         above IS DISTINCT FROM lag(above) OVER (ORDER BY at) AS edge FROM (
                      SELECT *, share > %(threshold)s AS above FROM (
                          SELECT at, extract(epoch FROM greatest(at, %(start)s))::float8 AS ep, {_FLOATS}, {_SHARE} AS share
                          FROM {SNAPSHOTS}
                          WHERE fleet_id = %(fleet)s AND at <= %(end)s AND at >= coalesce(
                              (SELECT at FROM {SNAPSHOTS} WHERE fleet_id = %(fleet)s AND at <= %(start)s
                               ORDER BY at DESC LIMIT 1), %(start)s)
                          OFFSET 0) AS s) AS a) AS e) AS g
              GROUP BY col, grp ORDER BY grp, col"""
    ops = connection.ops
    params = {
        "start": ops.adapt_datetimefield_value(start),
        "end": ops.adapt_datetimefield_value(end),
        "start_ep": start.timestamp(),
        "step": step.total_seconds(),
        "threshold": threshold,
        "fleet": fleet_id,
    }
    with connection.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()

    def point(epoch: float, counts: Sequence[float]) -> Point:
        return Point(_from_epoch(epoch), dict(zip(STATUS_SLUGS, map(int, counts), strict=True)))

    return [
        Cell(
            col,
            grp,
            above,
            _from_epoch(first),
            point(worst[1], worst[2:]),
            point(latest[0], latest[2:]),
            peak,
            _from_epoch(-neg_at),
        )
        for col, grp, above, first, worst, latest, (peak, neg_at) in rows
    ]


def _from_epoch(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _cells_sqlite(fleet_id: int, start: datetime, end: datetime, step: timedelta, threshold: float, connection):
    source, params = _source(fleet_id, start, end, connection)
    # Whole seconds (julianday()'s float put a snapshot at the end into the column before).
    column = "CAST((CAST(strftime('%%s', at) AS INTEGER) - CAST(strftime('%%s', %s) AS INTEGER)) / %s AS INTEGER)"
    sql = f"""WITH s AS (SELECT {column} AS col, src.*, CASE WHEN share > %s THEN 1 ELSE 0 END AS above
                         FROM ({source}) AS src),
                   e AS (SELECT s.*, CASE WHEN above = lag(above, 1, -1) OVER (ORDER BY at) THEN 0 ELSE 1 END AS edge
                         FROM s),
                   g AS (SELECT e.*, sum(edge) OVER (ORDER BY at ROWS UNBOUNDED PRECEDING) AS grp FROM e),
                   r AS (SELECT g.*,
                                row_number() OVER (PARTITION BY col, grp ORDER BY share DESC, at DESC) AS worst,
                                row_number() OVER (PARTITION BY col, grp ORDER BY at DESC) AS latest,
                                row_number() OVER (PARTITION BY col, grp ORDER BY share DESC, at) AS peak,
                                min(at) OVER (PARTITION BY col, grp) AS first_at
                         FROM g)
              SELECT col, grp, above, first_at, worst = 1, latest = 1, peak = 1, share, at, {_COLUMN_LIST}
              FROM r WHERE worst = 1 OR latest = 1 OR peak = 1 ORDER BY grp, col"""
    with connection.cursor() as cur:
        cur.execute(sql, [connection.ops.adapt_datetimefield_value(start), step.total_seconds(), threshold, *params])
        rows = cur.fetchall()
    convert = _datetime_converter(connection)
    cells: dict[tuple[int, int], dict] = {}
    for col, grp, above, first_at, is_worst, is_latest, is_peak, share, at, *counts in rows:
        cell = cells.setdefault((int(col), int(grp)), {"above": bool(above), "first_at": convert(first_at)})
        point = _point([convert(at), *counts])
        if is_worst:
            cell["worst"] = point
        if is_latest:
            cell["latest"] = point
        if is_peak:
            cell["peak"], cell["peak_at"] = float(share), point.at
    return [
        Cell(col, grp, c["above"], c["first_at"], c["worst"], c["latest"], c["peak"], c["peak_at"])
        for (col, grp), c in cells.items()
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
