"""Device counts per (organization, fleet, status) without a GROUP BY over the devices.

The Devices and Fleets pages show how many devices are in each status. Counting them on every
request is a GROUP BY over every device of the organization (a million rows on the Fleets page),
so the counts are kept instead:

- Triggers on devices_device record every change of a device's (organization, fleet, stored
  status) as a row in the append-only table StatusCountDelta. PostgreSQL: statement-level AFTER
  INSERT/UPDATE/DELETE triggers with transition tables, one aggregated INSERT per statement (a
  sweep that expires 10,000 devices adds a handful of rows); an UPDATE that changes no status
  adds none. SQLite: row-level triggers. Because they live in the database, every path counts:
  devices.services, the sweep's and tunnel events' bulk UPDATEs, the admin, raw SQL, COPY,
  deletion. Writers only insert, so concurrent writers never wait on a shared counter row.
- fold() moves the deltas into StatusCount (one row per fleet and status). The beat runs it with
  every sweep (devices/tasks.py); it is safe to run twice at once.
- Readers sum StatusCount and the pending deltas in ONE statement, so the answer is the same
  exact snapshot whether or not a fold committed in between.
- rebuild() recounts from the devices (locking out device writes meanwhile); `migrate` runs it
  after every migration (post_migrate, which also re-installs triggers a SQLite table rebuild
  dropped), bulk loads that bypass triggers must call it (benchmarks/seed.py does), and
  `manage.py rebuild_status_counts` runs it by hand. mismatches() compares with a real GROUP BY.

Exact, not approximate: tests/test_status_counts.py drives every device-changing path and checks
counts == GROUP BY, and tests/conftest.py checks it after every test that used the database.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from django.db import connection as default_connection
from django.db import transaction

from devices.status import Status
from fleets import history
from fleetstatus.db import triggers

COUNTS = "fleets_statuscount"
DELTAS = "fleets_statuscountdelta"
DEVICES = "devices_device"
STATUS_SLUGS: tuple[str, ...] = tuple(s.value for s in Status)
# pg_advisory_xact_lock key: one fold or rebuild at a time (any 64-bit number unique to this use).
LOCK_KEY = 0x5F5C_0C01

# --- Triggers ----------------------------------------------------------------------------------------

_PG_FUNCTIONS = {
    "insert": f"""
        INSERT INTO {DELTAS} (organization_id, fleet_id, status, n)
        SELECT organization_id, fleet_id, overall_status, count(*) FROM fs_new GROUP BY 1, 2, 3;""",
    "delete": f"""
        INSERT INTO {DELTAS} (organization_id, fleet_id, status, n)
        SELECT organization_id, fleet_id, overall_status, -count(*) FROM fs_old GROUP BY 1, 2, 3;""",
    # Old rows count -1, new rows +1; groups that net to zero (the usual update: no status change)
    # write nothing.
    "update": f"""
        INSERT INTO {DELTAS} (organization_id, fleet_id, status, n)
        SELECT organization_id, fleet_id, overall_status, sum(n) FROM (
            SELECT organization_id, fleet_id, overall_status, -1 AS n FROM fs_old
            UNION ALL
            SELECT organization_id, fleet_id, overall_status, 1 AS n FROM fs_new
        ) AS changes GROUP BY 1, 2, 3 HAVING sum(n) <> 0;""",
    "truncate": f"DELETE FROM {DELTAS}; DELETE FROM {COUNTS};",
}
_SQLITE_TRIGGERS = {
    "insert": f"""AFTER INSERT ON {DEVICES} BEGIN
        INSERT INTO {DELTAS} (organization_id, fleet_id, status, n)
        VALUES (NEW.organization_id, NEW.fleet_id, NEW.overall_status, 1);
    END""",
    "update": f"""AFTER UPDATE OF organization_id, fleet_id, overall_status ON {DEVICES}
    WHEN OLD.organization_id IS NOT NEW.organization_id OR OLD.fleet_id IS NOT NEW.fleet_id
      OR OLD.overall_status IS NOT NEW.overall_status
    BEGIN
        INSERT INTO {DELTAS} (organization_id, fleet_id, status, n)
        VALUES (OLD.organization_id, OLD.fleet_id, OLD.overall_status, -1),
               (NEW.organization_id, NEW.fleet_id, NEW.overall_status, 1);
    END""",
    "delete": f"""AFTER DELETE ON {DEVICES} BEGIN
        INSERT INTO {DELTAS} (organization_id, fleet_id, status, n)
        VALUES (OLD.organization_id, OLD.fleet_id, OLD.overall_status, -1);
    END""",
}


def trigger_names(connection=default_connection) -> list[str]:
    kinds = _PG_FUNCTIONS if connection.vendor == "postgresql" else _SQLITE_TRIGGERS
    return [f"fs_status_count_{kind}" for kind in kinds]


def installed_triggers(connection=default_connection) -> set[str]:
    return triggers.installed(DEVICES, connection)


def install_triggers(connection=default_connection) -> bool:
    """Create the triggers that are missing; True when any was."""
    missing = [name for name in trigger_names(connection) if name not in installed_triggers(connection)]
    if not missing:
        return False
    triggers.install_set(
        connection,
        prefix="fs_status_count_",
        table=DEVICES,
        missing=missing,
        pg_functions=_PG_FUNCTIONS,
        sqlite_triggers=_SQLITE_TRIGGERS,
    )
    return True


def drop_triggers(connection=default_connection) -> None:
    for name in trigger_names(connection):
        triggers.drop(name, DEVICES, connection)


# --- Maintenance -------------------------------------------------------------------------------------


def _lock(cur, connection) -> None:
    if connection.vendor == "postgresql":
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])


def fold(connection=default_connection) -> int:
    """Move the pending deltas into the counts; returns how many delta rows were folded."""
    with transaction.atomic(using=connection.alias), connection.cursor() as cur:
        _lock(cur, connection)
        if connection.vendor == "postgresql":
            # DELETE … RETURNING takes exactly the rows it folds: a delta committed meanwhile stays
            # for the next fold, none is counted twice or lost.
            cur.execute(
                f"""WITH moved AS (DELETE FROM {DELTAS} RETURNING organization_id, fleet_id, status, n),
                         total AS (SELECT organization_id, fleet_id, status, sum(n) AS n, count(*) AS rows
                                   FROM moved GROUP BY 1, 2, 3),
                         upsert AS (INSERT INTO {COUNTS} (organization_id, fleet_id, status, n)
                                    SELECT organization_id, fleet_id, status, n FROM total WHERE n <> 0
                                    ON CONFLICT (organization_id, fleet_id, status)
                                    DO UPDATE SET n = {COUNTS}.n + EXCLUDED.n)
                    SELECT coalesce(sum(rows), 0), array_agg(DISTINCT fleet_id) FILTER (WHERE n <> 0) FROM total"""
            )
        else:
            # SQLite has one writer at a time and increasing ids: everything up to the largest id
            # seen is folded and deleted in this one write transaction.
            cur.execute(f"SELECT max(id), count(*) FROM {DELTAS}")
            top, folded = cur.fetchone()
            changed = []
            if top is not None:
                cur.execute(
                    f"SELECT fleet_id FROM {DELTAS} WHERE id <= %s GROUP BY fleet_id, status HAVING sum(n) <> 0", [top]
                )
                changed = [fleet_id for (fleet_id,) in cur.fetchall()]
                cur.execute(
                    f"""INSERT INTO {COUNTS} (organization_id, fleet_id, status, n)
                        SELECT organization_id, fleet_id, status, sum(n) FROM {DELTAS} WHERE id <= %s
                        GROUP BY organization_id, fleet_id, status HAVING sum(n) <> 0
                        ON CONFLICT (organization_id, fleet_id, status) DO UPDATE SET n = n + excluded.n""",
                    [top],
                )
                cur.execute(f"DELETE FROM {DELTAS} WHERE id <= %s", [top])
        if connection.vendor == "postgresql":
            folded, changed = cur.fetchone()
        cur.execute(f"DELETE FROM {COUNTS} WHERE n = 0")
        history.record(cur, changed or (), connection=connection)
    return int(folded or 0)


def rebuild(connection=default_connection) -> int:
    """Recount from the devices; returns the number of devices counted.

    Device writes wait while it runs (SHARE lock on PostgreSQL, the write lock on SQLite): one
    GROUP BY over every device.
    """
    with transaction.atomic(using=connection.alias), connection.cursor() as cur:
        _lock(cur, connection)
        if connection.vendor == "postgresql":
            cur.execute(f"LOCK TABLE {DEVICES} IN SHARE MODE")
        cur.execute(f"DELETE FROM {DELTAS}")
        cur.execute(f"DELETE FROM {COUNTS}")
        cur.execute(
            f"""INSERT INTO {COUNTS} (organization_id, fleet_id, status, n)
                SELECT organization_id, fleet_id, overall_status, count(*) FROM {DEVICES}
                GROUP BY organization_id, fleet_id, overall_status"""
        )
        cur.execute(f"SELECT coalesce(sum(n), 0) FROM {COUNTS}")
        (total,) = cur.fetchone()
    return int(total)


def mismatches(connection=default_connection) -> dict[tuple[int, int, str], tuple[int, int]]:
    """{(organization, fleet, status): (kept count, real count)} wherever they differ; {} when exact.

    One statement, so one snapshot: a device write committing meanwhile (with its delta) cannot
    make it report a difference that never existed."""
    with connection.cursor() as cur:
        cur.execute(
            f"""SELECT organization_id, fleet_id, status, sum(kept), sum(actual) FROM (
                    SELECT organization_id, fleet_id, status, n AS kept, 0 AS actual FROM {COUNTS}
                    UNION ALL SELECT organization_id, fleet_id, status, n, 0 FROM {DELTAS}
                    UNION ALL SELECT organization_id, fleet_id, overall_status, 0, count(*) FROM {DEVICES}
                              GROUP BY organization_id, fleet_id, overall_status
                ) AS both_counts GROUP BY organization_id, fleet_id, status HAVING sum(kept) <> sum(actual)"""
        )
        return {(o, f, s): (int(k), int(a)) for o, f, s, k, a in cur.fetchall()}


# --- Reading -----------------------------------------------------------------------------------------


def _where(organization_ids: Iterable[int], fleet_ids: Iterable[int] | None) -> tuple[str, list[int]] | None:
    """The WHERE clause and its parameters; None when it can match nothing (no query needed)."""
    orgs = list(organization_ids)
    fleets = None if fleet_ids is None else list(fleet_ids)
    if not orgs or fleets == []:
        return None
    clause = f"organization_id IN ({', '.join(['%s'] * len(orgs))})"
    if fleets is not None:
        clause += f" AND fleet_id IN ({', '.join(['%s'] * len(fleets))})"
        orgs += fleets
    return clause, orgs


def _kept(columns: str, where: str) -> str:
    """The kept counts and the pending deltas matching `where`, as one relation of `columns` (its
    parameters: the where's, twice). Summed, they are the exact counts of one snapshot."""
    return f"SELECT {columns} FROM {COUNTS} WHERE {where} UNION ALL SELECT {columns} FROM {DELTAS} WHERE {where}"


def _per_status(names: Iterable[str] | None = None) -> str:
    """One sum per status over the kept rows, in STATUS_SLUGS order (its parameters: STATUS_SLUGS),
    named by `names` when given: the counts of a group pivoted into one row."""
    sums = ["sum(CASE WHEN status = %s THEN n ELSE 0 END)"] * len(STATUS_SLUGS)
    if names is not None:
        sums = [f"{sql} AS {name}" for sql, name in zip(sums, names, strict=True)]
    return ", ".join(sums)


def status_counts(organization_ids: Iterable[int], fleet_ids: Iterable[int] | None = None) -> dict[str, int]:
    """Devices per status in these organizations (and fleets), every status present: one query."""
    counts = dict.fromkeys(STATUS_SLUGS, 0)
    scope = _where(organization_ids, fleet_ids)
    if scope is None:
        return counts
    where, params = scope
    with default_connection.cursor() as cur:
        cur.execute(
            f"SELECT status, sum(n) FROM ({_kept('status, n', where)}) AS kept GROUP BY status",
            params + params,
        )
        for status, n in cur.fetchall():
            if n:
                counts[status] = int(n)
    return counts


def fleet_status_counts(organization_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """{fleet id: {status: count}} for every fleet of the organizations that has devices: one query,
    one row per fleet (pivoted in SQL: a thousand fleets are a thousand rows, not nine thousand)."""
    counts: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATUS_SLUGS, 0))
    scope = _where(organization_ids, None)
    if scope is None:
        return counts
    where, params = scope
    with default_connection.cursor() as cur:
        cur.execute(
            f"SELECT fleet_id, {_per_status()} FROM ({_kept('fleet_id, status, n', where)}) AS kept GROUP BY fleet_id",
            [*STATUS_SLUGS, *params, *params],
        )
        for fleet_id, *values in cur.fetchall():
            counts[fleet_id] = dict(zip(STATUS_SLUGS, map(int, values), strict=True))
    return counts


def organization_status_counts(organization_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """{organization id: {status: count}} for these organizations, every status present: one query."""
    orgs = list(organization_ids)
    counts = {org: dict.fromkeys(STATUS_SLUGS, 0) for org in orgs}
    scope = _where(orgs, None)
    if scope is None:
        return counts
    where, params = scope
    with default_connection.cursor() as cur:
        cur.execute(
            f"""SELECT organization_id, status, sum(n) FROM ({_kept("organization_id, status, n", where)}) AS kept
                GROUP BY organization_id, status""",
            params + params,
        )
        for org, status, n in cur.fetchall():
            if n:
                counts[org][status] = int(n)
    return counts


# What fleet_page() returns of each fleet, before its counts (one column per status, STATUS_SLUGS order).
FLEET_PAGE_COLUMNS = ("id", "organization_id", "name", "slug", "device_type", "fleet_type", "cloudlink_enabled")
# fleet_page()'s sort keys: SQL over the page query's count columns ("": by name alone).
FLEET_PAGE_SORTS = {
    "": "",
    "total": "total DESC, ",
    "not_online": "total - c_online DESC, ",
}


def fleet_page(
    organization_ids: list[int], sort: str, offset: int, limit: int
) -> list[tuple[tuple, int, dict[str, int]]]:
    """One page of the organizations' fleets with their kept counts, sorted in SQL: by
    organization (in the given order), then `sort` (a FLEET_PAGE_SORTS key), then name and id.

    Returns (fleet columns, fleets sharing its slug among these organizations, {status: count}) per
    fleet of the page; only the page's fleets come back, so the page's Python work does not grow
    with the number of fleets. By name, the page's fleets are chosen first (fleets by organization
    and name) and only their counts are summed; by size or trouble every fleet's counts are summed
    to sort them, in the database."""
    scope = _where(organization_ids, None)
    if scope is None or limit <= 0:
        return []
    where, where_params = scope
    names = [f"c_{slug.replace('-', '_')}" for slug in STATUS_SLUGS]
    rank = " ".join(f"WHEN %s THEN {i}" for i in range(len(organization_ids)))
    fleets = (
        f"""SELECT {", ".join(f"f.{c}" for c in FLEET_PAGE_COLUMNS)},
                   count(*) OVER (PARTITION BY f.slug) AS slug_uses,
                   CASE f.organization_id {rank} END AS org_rank
            FROM fleets_fleet f WHERE f.{where}""",
        [*organization_ids, *where_params],
    )

    def kept(restrict: str) -> tuple[str, list]:
        relation = _kept("fleet_id, status, n", where + restrict)
        sql = f"SELECT fleet_id, {_per_status(names)} FROM ({relation}) AS kept GROUP BY fleet_id"
        return sql, [*STATUS_SLUGS, *where_params, *where_params]

    counted = ", ".join(f"coalesce(k.{name}, 0) AS {name}" for name in names)
    total = " + ".join(f"coalesce(k.{name}, 0)" for name in names)
    columns = ", ".join(f"p.{c}" for c in FLEET_PAGE_COLUMNS)
    if not FLEET_PAGE_SORTS[sort]:
        counts_sql, counts_params = kept(" AND fleet_id IN (SELECT id FROM picked)")
        sql = f"""WITH picked AS (SELECT * FROM ({fleets[0]}) AS f ORDER BY org_rank, name, id LIMIT %s OFFSET %s)
                  SELECT {columns}, p.slug_uses, {counted}
                  FROM picked p LEFT JOIN ({counts_sql}) AS k ON k.fleet_id = p.id
                  ORDER BY p.org_rank, p.name, p.id"""
        params = [*fleets[1], limit, offset, *counts_params]
    else:
        counts_sql, counts_params = kept("")
        sql = f"""SELECT * FROM (
                      SELECT {columns}, p.slug_uses, {counted}, p.org_rank, {total} AS total
                      FROM ({fleets[0]}) AS p LEFT JOIN ({counts_sql}) AS k ON k.fleet_id = p.id
                  ) AS fleets
                  ORDER BY org_rank, {FLEET_PAGE_SORTS[sort]}name, id LIMIT %s OFFSET %s"""
        params = [*fleets[1], *counts_params, limit, offset]
    with default_connection.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    width = len(FLEET_PAGE_COLUMNS)
    return [
        (
            row[:width],
            int(row[width]),
            dict(zip(STATUS_SLUGS, map(int, row[width + 1 : width + 1 + len(names)]), strict=True)),
        )
        for row in rows
    ]
