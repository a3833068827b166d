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
PREFIX = "fs_device_search_"
_COLUMNS = "device_id, organization_id, fleet_id, overall_status, name, ip_address, uuid"
# The device columns each is copied from (name upper-cased by the database, as the search is).
_SOURCES = ("id", "organization_id", "fleet_id", "overall_status", "upper(name)", "ip_address", "uuid")
_WATCHED = ("organization_id", "fleet_id", "overall_status", "name", "ip_address", "uuid")


def _select(alias: str) -> str:
    """The copied values of the device row `alias`, in _COLUMNS order."""
    return ", ".join(f"upper({alias}.name)" if source == "upper(name)" else f"{alias}.{source}" for source in _SOURCES)


_PG_FUNCTIONS = {
    "insert": f"INSERT INTO {SEARCH} ({_COLUMNS}) SELECT {_select('n')} FROM fs_new n;",
    "delete": f"DELETE FROM {SEARCH} s USING fs_old o WHERE s.device_id = o.id;",
    # Only rows whose copied columns changed: the usual device write (a report, a heartbeat) writes
    # nothing here.
    "update": f"""
        UPDATE {SEARCH} s SET organization_id = n.organization_id, fleet_id = n.fleet_id,
            overall_status = n.overall_status, name = upper(n.name), ip_address = n.ip_address, uuid = n.uuid
        FROM fs_new n JOIN fs_old o ON o.id = n.id
        WHERE s.device_id = n.id
          AND ({", ".join(f"o.{c}" for c in _WATCHED)}) IS DISTINCT FROM ({", ".join(f"n.{c}" for c in _WATCHED)});""",
    # DELETE, not TRUNCATE: a TRUNCATE of both tables at once (a test flush) has this one in use.
    "truncate": f"DELETE FROM {SEARCH};",
}
_SQLITE_TRIGGERS = {
    "insert": f"""AFTER INSERT ON {DEVICES} BEGIN
        INSERT INTO {SEARCH} ({_COLUMNS}) VALUES ({_select("NEW")});
    END""",
    "update": f"""AFTER UPDATE OF {", ".join(_WATCHED)} ON {DEVICES} BEGIN
        UPDATE {SEARCH} SET organization_id = NEW.organization_id, fleet_id = NEW.fleet_id,
            overall_status = NEW.overall_status, name = upper(NEW.name), ip_address = NEW.ip_address,
            uuid = NEW.uuid
        WHERE device_id = OLD.id;
    END""",
    "delete": f"""AFTER DELETE ON {DEVICES} BEGIN
        DELETE FROM {SEARCH} WHERE device_id = OLD.id;
    END""",
}


def trigger_names(connection=default_connection) -> list[str]:
    kinds = _PG_FUNCTIONS if connection.vendor == "postgresql" else _SQLITE_TRIGGERS
    return [f"{PREFIX}{kind}" for kind in kinds]


def installed_triggers(connection=default_connection) -> set[str]:
    return triggers.installed(DEVICES, connection) & set(trigger_names(connection))


def install_triggers(connection=default_connection) -> bool:
    """Create the triggers that are missing (on PostgreSQL, refresh every function); True when any was."""
    missing = [name for name in trigger_names(connection) if name not in installed_triggers(connection)]
    triggers.install_set(
        connection,
        prefix=PREFIX,
        table=DEVICES,
        missing=missing,
        pg_functions=_PG_FUNCTIONS,
        sqlite_triggers=_SQLITE_TRIGGERS,
    )
    return bool(missing)


def drop_triggers(connection=default_connection) -> None:
    for name in trigger_names(connection):
        triggers.drop(name, DEVICES, connection)


def rebuild(connection=default_connection) -> int:
    """Copy every device again; returns how many rows were written.

    Device writes wait while it runs (SHARE lock on PostgreSQL, the write lock on SQLite)."""
    with transaction.atomic(using=connection.alias), connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute(f"LOCK TABLE {DEVICES} IN SHARE MODE")
            cur.execute(f"TRUNCATE {SEARCH}")
        else:
            cur.execute(f"DELETE FROM {SEARCH}")
        # In organization order: a search reads one organization's rows, which then share pages.
        cur.execute(
            f"INSERT INTO {SEARCH} ({_COLUMNS}) SELECT {_select('d')} FROM {DEVICES} d ORDER BY d.organization_id, d.id"
        )
        written = cur.rowcount
    return int(written)


def mismatches(connection=default_connection) -> list[int]:
    """Ids of devices whose copy is missing, stale or left over (at most 100); [] when exact."""
    distinct = "IS DISTINCT FROM" if connection.vendor == "postgresql" else "IS NOT"
    differs = " OR ".join(
        f"{value} {distinct} s.{column}"
        for value, column in zip(_select("d").split(", "), _COLUMNS.split(", "), strict=True)
    )
    with connection.cursor() as cur:
        cur.execute(
            f"""SELECT d.id FROM {DEVICES} d LEFT JOIN {SEARCH} s ON s.device_id = d.id
                WHERE s.device_id IS NULL OR {differs}
                UNION SELECT s.device_id FROM {SEARCH} s LEFT JOIN {DEVICES} d ON d.id = s.device_id WHERE d.id IS NULL
                ORDER BY 1 LIMIT 100"""
        )
        return [device_id for (device_id,) in cur.fetchall()]
