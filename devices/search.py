"""The searchable copy of every device (DeviceSearch), kept by database triggers on devices_device.

The Devices page's search (name contains, UUID prefix, IP contains) and the counts of its matches
read devices_devicesearch, not the device table. The trigram indexes live there: on the device
table they cost every device write, because every write changes an indexed column (none is a HOT
update) and so adds its trigrams again. A row here changes only when the device's organization,
fleet, status, name, IP address or UUID does; a status change touches no index of this table (a
HOT update into the free space the fillfactor leaves).

- PostgreSQL: statement-level AFTER INSERT/UPDATE/DELETE triggers with transition tables (one
  INSERT, UPDATE or DELETE per statement, however many devices it wrote; the count triggers of
  fleets/counts.py read the same transition tables), and TRUNCATE empties it. SQLite: row-level
  triggers. Every path is covered: the services, the sweep's and tunnel events' bulk UPDATEs,
  the admin, raw SQL, deletion.
- Tags: the row also holds the device's tags as "key=value" lines in key order, kept by triggers on
  devices_devicetag, so a tag filter (PostgreSQL: a GIN index on the lines as an array) and the
  counts of its matches read these rows too, whatever the number of tags asked for.
- rebuild() copies every device again (locking out device writes meanwhile): post_migrate runs it
  when the triggers were missing (and always on SQLite, whose table rebuilds drop triggers), a
  bulk load with triggers off must call it (benchmarks/seed.py does), and
  `manage.py rebuild_status_counts` runs it with the counts. mismatches() compares with the devices.
"""

from __future__ import annotations

from django.db import connection as default_connection
from django.db import transaction

from fleetstatus.db import triggers

DEVICES = "devices_device"
SEARCH = "devices_devicesearch"
TAGS = "devices_devicetag"
PREFIX = "fs_device_search_"
TAG_PREFIX = "fs_device_search_tags_"
# Each column of the copy and what it is copied from ({d}: the device row): the name upper-cased by
# the database, as the search is, and as it is, for the name sort.
_COPIED = (
    ("device_id", "{d}.id"),
    ("organization_id", "{d}.organization_id"),
    ("fleet_id", "{d}.fleet_id"),
    ("overall_status", "{d}.overall_status"),
    ("name", "upper({d}.name)"),
    ("sort_name", "{d}.name"),
    ("ip_address", "{d}.ip_address"),
    ("uuid", "{d}.uuid"),
)
_COLUMNS = ", ".join(column for column, _ in _COPIED)
_WATCHED = ("organization_id", "fleet_id", "overall_status", "name", "ip_address", "uuid")


def _values(d: str) -> list[str]:
    """The copied values of the device row `d`, in _COPIED order."""
    return [source.format(d=d) for _, source in _COPIED]


def _select(d: str) -> str:
    return ", ".join(_values(d))


def _assignments(d: str) -> str:
    """SET list writing every copied column but the key from the device row `d`."""
    return ", ".join(f"{column} = {source.format(d=d)}" for column, source in _COPIED[1:])


# The tag lines of the device whose id is `device`: "key=value", one line each, in key order.
def _pg_tags_of(device: str) -> str:
    return (
        f"coalesce((SELECT string_agg(t.key || '=' || t.value, chr(10) ORDER BY t.key) FROM {TAGS} t "
        f"WHERE t.device_id = {device}), '')"
    )


def _sqlite_tags_of(device: str) -> str:
    # group_concat keeps the order of its ordered subquery.
    return (
        f"coalesce((SELECT group_concat(kv, char(10)) FROM (SELECT key || '=' || value AS kv FROM {TAGS} "
        f"WHERE device_id = {device} ORDER BY key)), '')"
    )


def _pg_retag(ids: str, rows: str) -> str:
    """Write again the tag lines of the devices `ids` selects from the transition table `rows`."""
    return triggers.planned_for_size(
        f"UPDATE {SEARCH} s SET tags = {_pg_tags_of('s.device_id')} WHERE s.device_id IN ({ids});", rows
    )


def _sqlite_retag(event: str, ids: str) -> str:
    return f"""AFTER {event} ON {TAGS} BEGIN
        UPDATE {SEARCH} SET tags = {_sqlite_tags_of(f"{SEARCH}.device_id")} WHERE device_id IN ({ids});
    END"""


_PG_FUNCTIONS = {
    "insert": f"INSERT INTO {SEARCH} ({_COLUMNS}) SELECT {_select('n')} FROM fs_new n;",
    "delete": triggers.planned_for_size(f"DELETE FROM {SEARCH} s USING fs_old o WHERE s.device_id = o.id;", "fs_old"),
    # Only rows whose copy differs from the new values: the usual device write (a report, a
    # heartbeat) writes nothing here. Compared with the copy itself (one index lookup per row),
    # not by joining the old rows to the new ones.
    "update": triggers.planned_for_size(
        f"""UPDATE {SEARCH} s SET {_assignments("n")}
        FROM fs_new n
        WHERE s.device_id = n.id
          AND ({", ".join(f"s.{column}" for column, _ in _COPIED[1:])}) IS DISTINCT FROM ({", ".join(_values("n")[1:])});""",
        "fs_new",
    ),
    # DELETE, not TRUNCATE: a TRUNCATE of both tables at once (a test flush) has this one in use.
    "truncate": f"DELETE FROM {SEARCH};",
}
# On the tags: the lines of every device whose tags a statement wrote, written again.
_PG_TAG_FUNCTIONS = {
    "insert": _pg_retag("SELECT device_id FROM fs_new", "fs_new"),
    "delete": _pg_retag("SELECT device_id FROM fs_old", "fs_old"),
    "update": _pg_retag("SELECT device_id FROM fs_old UNION SELECT device_id FROM fs_new", "fs_new"),
    "truncate": f"UPDATE {SEARCH} SET tags = '' WHERE tags <> '';",
}
_SQLITE_TRIGGERS = {
    "insert": f"""AFTER INSERT ON {DEVICES} BEGIN
        INSERT INTO {SEARCH} ({_COLUMNS}) VALUES ({_select("NEW")});
    END""",
    "update": f"""AFTER UPDATE OF {", ".join(_WATCHED)} ON {DEVICES} BEGIN
        UPDATE {SEARCH} SET {_assignments("NEW")} WHERE device_id = OLD.id;
    END""",
    "delete": f"""AFTER DELETE ON {DEVICES} BEGIN
        DELETE FROM {SEARCH} WHERE device_id = OLD.id;
    END""",
}


_SQLITE_TAG_TRIGGERS = {
    "insert": _sqlite_retag("INSERT", "NEW.device_id"),
    "update": _sqlite_retag("UPDATE", "OLD.device_id, NEW.device_id"),
    "delete": _sqlite_retag("DELETE", "OLD.device_id"),
}
# (table, prefix, PostgreSQL functions, SQLite triggers) of each set of triggers keeping the copy.
_SETS = (
    (DEVICES, PREFIX, _PG_FUNCTIONS, _SQLITE_TRIGGERS),
    (TAGS, TAG_PREFIX, _PG_TAG_FUNCTIONS, _SQLITE_TAG_TRIGGERS),
)


def _names(prefix: str, pg_functions: dict, sqlite_triggers: dict, connection) -> list[str]:
    kinds = pg_functions if connection.vendor == "postgresql" else sqlite_triggers
    return [f"{prefix}{kind}" for kind in kinds]


def trigger_names(connection=default_connection) -> list[str]:
    return [name for _, prefix, pg, lite in _SETS for name in _names(prefix, pg, lite, connection)]


def installed_triggers(connection=default_connection) -> set[str]:
    found = set().union(*(triggers.installed(table, connection) for table, *_ in _SETS))
    return found & set(trigger_names(connection))


def install_triggers(connection=default_connection) -> bool:
    """Create the triggers that are missing (on PostgreSQL, refresh every function); True when any was."""
    installed = installed_triggers(connection)
    any_missing = False
    for table, prefix, pg_functions, sqlite_triggers in _SETS:
        missing = [name for name in _names(prefix, pg_functions, sqlite_triggers, connection) if name not in installed]
        triggers.install_set(
            connection,
            prefix=prefix,
            table=table,
            missing=missing,
            pg_functions=pg_functions,
            sqlite_triggers=sqlite_triggers,
        )
        any_missing = any_missing or bool(missing)
    return any_missing


def drop_triggers(connection=default_connection, *, table: str | None = None) -> None:
    """Drop the triggers (only those on `table` when given)."""
    for on, prefix, pg_functions, sqlite_triggers in _SETS:
        if table not in (None, on):
            continue
        for name in _names(prefix, pg_functions, sqlite_triggers, connection):
            triggers.drop(name, on, connection)


def rebuild(connection=default_connection) -> int:
    """Copy every device again; returns how many rows were written.

    Device writes wait while it runs (SHARE lock on PostgreSQL, the write lock on SQLite)."""
    with transaction.atomic(using=connection.alias), connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute(f"LOCK TABLE {DEVICES}, {TAGS} IN SHARE MODE")
            cur.execute(f"TRUNCATE {SEARCH}")
        else:
            cur.execute(f"DELETE FROM {SEARCH}")
        # In organization order: a search reads one organization's rows, which then share pages.
        tags = _pg_tags_of("d.id") if connection.vendor == "postgresql" else _sqlite_tags_of("d.id")
        cur.execute(
            f"INSERT INTO {SEARCH} ({_COLUMNS}, tags) SELECT {_select('d')}, {tags} FROM {DEVICES} d "
            "ORDER BY d.organization_id, d.id"
        )
        written = cur.rowcount
    return int(written)


def mismatches(connection=default_connection) -> list[int]:
    """Ids of devices whose copy is missing, stale or left over (at most 100); [] when exact."""
    postgresql = connection.vendor == "postgresql"
    distinct = "IS DISTINCT FROM" if postgresql else "IS NOT"
    values = [*_values("d"), _pg_tags_of("d.id") if postgresql else _sqlite_tags_of("d.id")]
    columns = [*(column for column, _ in _COPIED), "tags"]
    differs = " OR ".join(f"{value} {distinct} s.{column}" for value, column in zip(values, columns, strict=True))
    with connection.cursor() as cur:
        cur.execute(
            f"""SELECT d.id FROM {DEVICES} d LEFT JOIN {SEARCH} s ON s.device_id = d.id
                WHERE s.device_id IS NULL OR {differs}
                UNION SELECT s.device_id FROM {SEARCH} s LEFT JOIN {DEVICES} d ON d.id = s.device_id WHERE d.id IS NULL
                ORDER BY 1 LIMIT 100"""
        )
        return [device_id for (device_id,) in cur.fetchall()]
