"""The statements the ORM cannot write well enough, each written once (PostgreSQL, and SQLite for the demo).

They exist for the bulk paths: a batch of thousands of rows must be a constant number of
statements with a constant number of parameters (arrays on PostgreSQL, one JSON text on SQLite),
and the steady state report must not pay for building an ORM query.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import connection
from django.db.models.expressions import RawSQL

from devices.models import Device, StatusTransition
from devices.status import HeartbeatState, status_sql
from fleets.models import Fleet


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


def _column(name: str) -> str:
    return _qn(Device._meta.get_field(name).column)


def _postgresql() -> bool:
    return connection.vendor == "postgresql"


def _table(model: type) -> str:
    return _qn(model._meta.db_table)


def _status_of_row_as_written(written: frozenset[str]) -> tuple[str, tuple[str, ...]]:
    """The status rule over device row `d` joined with its fleet `f`, the signals in `written` taken
    from the statement's parameters (cast to their column types) instead of the row."""

    def source(signal: str) -> str:
        if signal == "effective_cloudlink":
            # devices.models.effective_cloudlink: the device's override, else its fleet's switch.
            return f"COALESCE(d.{_column('cloudlink_enabled')}, f.{_qn(Fleet._meta.get_field('cloudlink_enabled').column)})"
        if signal in written:
            return f"CAST(%s AS {Device._meta.get_field(signal).db_type(connection)})"
        return f"d.{_column(signal)}"

    return status_sql(source)


def among(values: Sequence[int] | Sequence[str]) -> RawSQL:
    """A set of keys as ONE bound parameter, for `field__in=among(keys)`.

    `pk__in=[...8,000 ids]` binds 8,000 parameters: slow to render and parse (psycopg binds on the
    client), and beyond SQLite's limit for larger calls. An array (PostgreSQL) or a JSON list
    (SQLite) is one parameter whatever its length, so a bulk call is one statement.
    """
    if _postgresql():
        array_type = "bigint[]" if values and isinstance(values[0], int) else "text[]"
        return RawSQL(f"SELECT unnest(%s::{array_type})", (list(values),))
    return RawSQL("SELECT value FROM json_each(%s)", (json.dumps(list(values)),))


def insert_transitions(rows: Iterable[tuple[int, str, str, datetime]], reason: str) -> None:
    """ONE INSERT of (device id, from status, to status, at) rows sharing a reason.

    (bulk_create builds a model per row and, on SQLite, splits into statements of 999 parameters:
    40 INSERTs for 8,000 transitions.)
    """
    rows = list(rows)
    if not rows:
        return
    table = _qn(StatusTransition._meta.db_table)
    fields = ("device", "from_status", "to_status", "at", "reason")
    cols = ", ".join(_qn(StatusTransition._meta.get_field(f).column) for f in fields)
    adapt = connection.ops.adapt_datetimefield_value
    if _postgresql():
        ids, froms, tos, stamps = (list(column) for column in zip(*rows, strict=True))
        sql = (
            f"INSERT INTO {table} ({cols}) SELECT d, f, t, a, %s "
            "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[]) AS x(d, f, t, a)"
        )
        params: list[Any] = [reason, ids, froms, tos, [adapt(at) for at in stamps]]
    else:
        sql = (
            f"INSERT INTO {table} ({cols}) SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
            "json_extract(value, '$[2]'), json_extract(value, '$[3]'), %s FROM json_each(%s)"
        )
        params = [reason, json.dumps([[pk, f, t, adapt(at)] for pk, f, t, at in rows])]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def expire(rows: Sequence[tuple[int, str | None, datetime | None]]) -> None:
    """ONE UPDATE turning the heartbeat of (id, new status or None, changed at or None) rows offline.

    A row with a new status gets it and its change time; the others keep theirs.
    """
    if not rows:
        return
    table = _qn(Device._meta.db_table)
    col = {name: _column(name) for name in ("id", "api_heartbeat_state", "overall_status", "status_changed_at")}
    adapt = connection.ops.adapt_datetimefield_value
    if _postgresql():
        source = "unnest(%s::bigint[], %s::text[], %s::timestamptz[]) AS v(id, status, changed)"
        ids, statuses, stamps = (list(column) for column in zip(*rows, strict=True))
        source_params: list[Any] = [ids, statuses, [adapt(at) if at else None for at in stamps]]
    else:
        source = (
            "(SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS status, "
            "json_extract(value, '$[2]') AS changed FROM json_each(%s)) AS v"
        )
        source_params = [json.dumps([[pk, status, adapt(at) if at else None] for pk, status, at in rows])]
    sql = (
        f"UPDATE {table} SET {col['api_heartbeat_state']} = %s, "
        f"{col['overall_status']} = COALESCE(v.status, {table}.{col['overall_status']}), "
        f"{col['status_changed_at']} = COALESCE(v.changed, {table}.{col['status_changed_at']}) "
        f"FROM {source} WHERE {table}.{col['id']} = v.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [HeartbeatState.OFFLINE.value, *source_params])


def update_heartbeat_times(rows: Sequence[tuple[int, datetime, datetime, datetime]]) -> None:
    """ONE UPDATE for (id, last fetch, deadline, last seen) rows whose heartbeat is online.

    The source columns are called column1..column4 on both databases (VALUES names them so in
    PostgreSQL and SQLite 3.33+ alike). Rows are locked by the caller; the WHERE repeats the
    forward-only rule anyway.
    """
    if not rows:
        return
    table = _qn(Device._meta.db_table)
    names = ("id", "api_heartbeat_state", "last_api_heartbeat_at", "heartbeat_deadline", "last_seen_at")
    col = {name: _column(name) for name in names}
    adapt = connection.ops.adapt_datetimefield_value
    params: list[Any] = []
    if _postgresql():
        # Four array parameters, whatever the batch size (not 4 per row to render and parse).
        source = (
            "unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[]) "
            "AS v(column1, column2, column3, column4)"
        )
        params = [list(column) for column in zip(*rows, strict=True)]
    else:
        for pk, seen, deadline, last_seen in rows:
            params += [pk, adapt(seen), adapt(deadline), adapt(last_seen)]
        source = f"(VALUES {', '.join(['(%s, %s, %s, %s)'] * len(rows))}) AS v"
    sql = (
        f"UPDATE {table} SET {col['last_api_heartbeat_at']} = v.column2, {col['heartbeat_deadline']} = v.column3, "
        f"{col['last_seen_at']} = v.column4 FROM {source} "
        f"WHERE {table}.{col['id']} = v.column1 AND {table}.{col['api_heartbeat_state']} = %s "
        f"AND ({table}.{col['last_api_heartbeat_at']} IS NULL OR {table}.{col['last_api_heartbeat_at']} < v.column2)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, HeartbeatState.ONLINE.value])


@lru_cache(maxsize=8)
def _device_with_fleet_sql(fields: tuple[str, ...]) -> str:
    """SELECT of one device (by uuid) joined with its fleet; `fleet__x` names a fleet column."""
    columns = []
    for name in fields:
        if name == "pk":
            columns.append(f"d.{_column('id')}")
        elif name.startswith("fleet__"):
            columns.append(f"f.{_qn(Fleet._meta.get_field(name.removeprefix('fleet__')).column)}")
        else:
            columns.append(f"d.{_column(name)}")
    return (
        f"SELECT {', '.join(columns)} FROM {_qn(Device._meta.db_table)} d "
        f"JOIN {_qn(Fleet._meta.db_table)} f ON f.{_qn(Fleet._meta.pk.column)} = d.{_column('fleet')} "
        f"WHERE d.{_column('uuid')} = %s LIMIT 1"
    )


def device_with_fleet(uuid: str, fields: tuple[str, ...]) -> dict[str, Any] | None:
    """{field: value} of one device, as `Device.objects.filter(uuid=uuid).values(*fields)` gives it.

    On PostgreSQL the query is SQL built once per field list (psycopg returns the same Python
    values as the ORM): building a 35-column ORM query cost more than running it, at hundreds of
    reads a second.
    """
    if _postgresql():
        with connection.cursor() as cursor:
            cursor.execute(_device_with_fleet_sql(fields), [uuid])
            row = cursor.fetchone()
        return None if row is None else dict(zip(fields, row, strict=True))
    rows = list(Device.objects.filter(uuid=uuid).order_by().values(*fields)[:1])
    return rows[0] if rows else None


def guarded_update(pk: int, guard: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    """UPDATE one device row if every guard column still holds its value (NULL-safe); True if it did.

    On PostgreSQL the statement is its own transaction, committed without waiting for the WAL
    flush (synchronous_commit off for this transaction only, set by the statement itself when it
    runs outside a transaction block): it writes telemetry and contact times, never a status or a
    transition, so a database crash can lose at most the last fraction of a second of such
    reports (the agent sends them again), never a committed status change. Waiting for the flush
    on every commit made reports queue behind the disk's fsync.
    """
    if not _postgresql():
        lookups = {
            f"{name}__isnull" if value is None else name: True if value is None else value
            for name, value in guard.items()
        }
        return bool(Device.objects.filter(pk=pk, **lookups).update(**values))
    sets = ", ".join(f"{_column(name)} = %s" for name in values)
    checks = " AND ".join(f"{_column(name)} IS NOT DISTINCT FROM %s" for name in guard)
    asynchronous = "" if connection.in_atomic_block else " AND set_config('synchronous_commit', 'off', true) = 'off'"
    sql = f"UPDATE {_qn(Device._meta.db_table)} SET {sets} WHERE {_column('id')} = %s AND {checks}{asynchronous}"
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values.values(), pk, *guard.values()])
        return cursor.rowcount == 1


@lru_cache(maxsize=256)
def _report_sql(columns: tuple[str, ...], asynchronous: bool) -> tuple[str, tuple[str, ...]]:
    """The one statement of a state report that leaves the status as it is (see store_report)."""
    names: list[str] = []
    sets = []
    for name in columns:
        sets.append(f"{_column(name)} = %s")
        names.append(name)
    if "update_status" in columns:
        # "Update status since" moves only when the value changes, compared on the row being written.
        sets.append(
            f"{_column('update_status_changed_at')} = CASE WHEN d.{_column('update_status')} IS DISTINCT FROM "
            f"CAST(%s AS {Device._meta.get_field('update_status').db_type(connection)}) "
            f"THEN %s ELSE d.{_column('update_status_changed_at')} END"
        )
        names += ["update_status", " at"]
    status, status_names = _status_of_row_as_written(frozenset(columns))
    sql = (
        f"UPDATE {_table(Device)} AS d SET {', '.join(sets)} FROM {_table(Fleet)} AS f "
        f"WHERE d.{_column('uuid')} = %s AND d.{_column('api_key_hash')} = %s "
        f"AND f.{_qn(Fleet._meta.pk.column)} = d.{_column('fleet')} AND d.{_column('overall_status')} = {status}"
        + (" AND set_config('synchronous_commit', 'off', true) = 'off'" if asynchronous else "")
        + f" RETURNING d.{_column('api_key_hash')}"
    )
    return sql, (*names, " uuid", " key_hash", *status_names)


def store_report(uuid: str, key_hash: str, changes: Mapping[str, Any], at: datetime) -> str | None:
    """ONE UPDATE storing a state report if it leaves the device's status as it is; its key hash if it did.

    The row is found by UUID and key hash (the key is compared again in constant time by the
    caller), and written only where the status rule, applied to the row with the reported values,
    gives the status the row holds: decided on the row as it is when written (a concurrent change
    is re-checked by PostgreSQL under the row lock), so no transition can be due. Anything else (an
    unknown device, a wrong key, a report that changes the status) writes nothing and returns None.
    PostgreSQL only (None elsewhere, without a query). Outside a transaction block it commits
    without waiting for the WAL flush, as guarded_update() does and for the same reason.
    """
    if not _postgresql():
        return None
    sql, names = _report_sql(tuple(changes), not connection.in_atomic_block)
    values = {**changes, " at": at, " uuid": uuid, " key_hash": key_hash}
    with connection.cursor() as cursor:
        cursor.execute(sql, [values[name] for name in names])
        row = cursor.fetchone()
    return None if row is None else row[0]


@lru_cache(maxsize=4)
def _tunnel_sql(connected: bool) -> tuple[str, tuple[str, ...]]:
    """The one statement of a tunnel event (see tunnel_event)."""
    written = {"is_connected_to_vpn", "last_connectivity_event"} | ({"is_active"} if connected else set())
    status, status_names = _status_of_row_as_written(frozenset(written))
    col = {
        name: _column(name)
        for name in (
            "id",
            "uuid",
            "overall_status",
            "status_changed_at",
            "is_active",
            "activated_at",
            "organization",
            "fleet",
            "is_connected_to_vpn",
            "vpn_service_id",
            "last_vpn_event",
            "last_connectivity_event",
            "last_seen_at",
        )
    }
    transition_cols = ", ".join(
        _qn(StatusTransition._meta.get_field(f).column) for f in ("device", "from_status", "to_status", "at", "reason")
    )
    names: list[str] = [*status_names, " uuids"]
    held = ""
    if not connected:
        # PostgreSQL re-checks this on a row another transaction changed while we waited for its lock.
        held = f" AND d.{col['vpn_service_id']} = %s"
        names.append(" service")
    sets = [
        f"{col['is_connected_to_vpn']} = %s",
        f"{col['vpn_service_id']} = %s",
        f"{col['last_vpn_event']} = %s",
        f"{col['last_connectivity_event']} = %s",
    ]
    names += ["is_connected_to_vpn", " held_by", " at", " at"]
    if connected:
        sets += [
            f"{col['last_seen_at']} = %s",
            f"{col['is_active']} = TRUE",
            f"{col['activated_at']} = CASE WHEN l.was_active THEN d.{col['activated_at']} ELSE %s END",
        ]
        names += [" at", " at"]
    # transition_time(): a change is never stamped before the device's last one (GREATEST skips NULL).
    sets += [
        f"{col['overall_status']} = l.to_status",
        f"{col['status_changed_at']} = CASE WHEN l.to_status = l.from_status THEN d.{col['status_changed_at']} "
        f"ELSE GREATEST(CAST(%s AS timestamp with time zone), l.last_change) END",
    ]
    names += [" at", " reason"]
    sql = (
        f"WITH locked AS MATERIALIZED ("
        f"SELECT d.{col['id']} AS id, d.{col['overall_status']} AS from_status, {status} AS to_status, "
        f"d.{col['status_changed_at']} AS last_change, d.{col['is_active']} AS was_active, "
        f"d.{col['organization']} AS organization_id "
        f"FROM {_table(Device)} AS d JOIN {_table(Fleet)} AS f ON f.{_qn(Fleet._meta.pk.column)} = d.{col['fleet']} "
        f"WHERE d.{col['uuid']} = ANY(CAST(%s AS text[])){held} ORDER BY d.{col['id']} FOR UPDATE OF d), "
        f"changed AS (UPDATE {_table(Device)} AS d SET {', '.join(sets)} FROM locked AS l WHERE d.{col['id']} = l.id "
        f"RETURNING d.{col['id']} AS id, l.from_status, l.to_status, d.{col['status_changed_at']} AS at, "
        f"l.was_active, l.organization_id), "
        f"written AS (INSERT INTO {_table(StatusTransition)} ({transition_cols}) "
        f"SELECT id, from_status, to_status, at, %s FROM changed WHERE from_status <> to_status ORDER BY id) "
        f"SELECT organization_id, was_active, to_status, from_status <> to_status, COUNT(*) FROM changed "
        f"GROUP BY organization_id, was_active, to_status, from_status <> to_status"
    )
    return sql, tuple(names)


def tunnel_event(
    uuids: Sequence[str], connected: bool, service_id: int, at: datetime, reason: str
) -> list[tuple[int, bool, str, bool, int]] | None:
    """ONE statement for a tunnel event of many devices: lock, write, record the transitions.

    The rows are locked in id order (as every bulk change locks them), each one's status decided by
    the rule on the row as it is about to be written (its tunnel up or down, reactivated by a
    connect), the row written once, and the transitions inserted from what the UPDATE returned.
    Nothing goes to Python and back per device: a VPN server restarting sends thousands of UUIDs.
    Returns (organization id, was active, status, changed, devices) groups; None on SQLite, which
    has neither row locks nor data-modifying WITH (services.tunnel does it there).
    """
    if not _postgresql():
        return None
    sql, names = _tunnel_sql(connected)
    values = {
        "is_connected_to_vpn": connected,
        "last_connectivity_event": at,
        "is_active": True,
        " uuids": list(uuids),
        " service": service_id,
        " held_by": service_id if connected else None,
        " at": connection.ops.adapt_datetimefield_value(at),
        " reason": reason[:200],
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, [values[name] for name in names])
        return cursor.fetchall()
