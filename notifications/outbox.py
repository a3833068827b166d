"""The outbox trigger: every status transition of an organization that has a notification channel
is copied into notifications_pendingchange by the database, in the transition's own transaction.

A trigger rather than application code because transitions are inserted several ways (the ORM,
bulk_create, the sweep's raw INSERT): in the database no path can forget it, and a rolled-back
transition takes its outbox row with it. PostgreSQL: one statement-level trigger with a
transition table (a sweep that expires 10,000 devices runs one INSERT ... SELECT), which does
nothing at all while no organization has a channel. SQLite: a row-level trigger.
fleets/counts.py keeps the status counts the same way.
"""

from __future__ import annotations

from django.db import connection as default_connection

from fleetstatus.db import triggers

TRANSITIONS = "devices_statustransition"
OUTBOX = "notifications_pendingchange"
CHANNELS = "notifications_channel"
DEVICES = "devices_device"
NAME = "fs_notify_outbox"

_COLUMNS = "transition_id, device_id, organization_id, fleet_id, from_status, to_status, at"

_PG_INSERT = f"""INSERT INTO {OUTBOX} ({_COLUMNS})
        SELECT t.id, t.device_id, d.organization_id, d.fleet_id, t.from_status, t.to_status, t.at
        FROM fs_new_transitions t JOIN {DEVICES} d ON d.id = t.device_id
        WHERE d.organization_id IN (SELECT organization_id FROM {CHANNELS});"""
_PG_BODY = f"""
    IF EXISTS (SELECT 1 FROM {CHANNELS}) THEN
        {triggers.planned_for_size(_PG_INSERT, "fs_new_transitions")}
    END IF;"""

_SQLITE_TRIGGER = f"""AFTER INSERT ON {TRANSITIONS}
    WHEN EXISTS (SELECT 1 FROM {CHANNELS} c JOIN {DEVICES} d ON d.organization_id = c.organization_id
                 WHERE d.id = NEW.device_id)
    BEGIN
        INSERT INTO {OUTBOX} ({_COLUMNS})
        SELECT NEW.id, NEW.device_id, d.organization_id, d.fleet_id, NEW.from_status, NEW.to_status, NEW.at
        FROM {DEVICES} d WHERE d.id = NEW.device_id;
    END"""


def is_installed(connection=default_connection) -> bool:
    return NAME in triggers.installed(TRANSITIONS, connection)


def install_trigger(connection=default_connection) -> bool:
    """Create the trigger (and on PostgreSQL refresh its function); True when it was missing."""
    missing = not is_installed(connection)
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            triggers.create_statement_trigger(
                cur,
                NAME,
                table=TRANSITIONS,
                event="INSERT",
                referencing="REFERENCING NEW TABLE AS fs_new_transitions",
                body=_PG_BODY,
                create_trigger=missing,
            )
        elif connection.vendor == "sqlite":
            triggers.create_row_trigger(cur, NAME, _SQLITE_TRIGGER)
        else:  # pragma: no cover - the project supports these two
            raise NotImplementedError(connection.vendor)
    return missing


def drop_trigger(connection=default_connection) -> None:
    triggers.drop(NAME, TRANSITIONS, connection)
