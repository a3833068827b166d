"""Triggers the app keeps in the database itself (the kept device counts, the notification outbox).

PostgreSQL: a plpgsql function per trigger, fired once per statement with its transition tables, so
a bulk write runs one INSERT ... SELECT. SQLite: a row-level trigger. Both are created again on
post_migrate when missing (a SQLite table rebuild drops them).
"""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper


def installed(table: str, connection: BaseDatabaseWrapper) -> set[str]:
    """The names of the triggers on `table`."""
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal", [table])
        else:
            cur.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s", [table])
        return {name for (name,) in cur.fetchall()}


def create_statement_trigger(
    cur, name: str, *, table: str, event: str, referencing: str, body: str, create_trigger: bool
) -> None:
    """PostgreSQL: (re)define the function `name` running `body`; create the trigger when asked."""
    cur.execute(
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN {body}\n RETURN NULL;\nEND $$"
    )
    if create_trigger:
        cur.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON {table} {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )


def create_row_trigger(cur, name: str, definition: str) -> None:
    """SQLite: `definition` is everything after the trigger's name (AFTER ... ON ... BEGIN ... END)."""
    cur.execute(f"CREATE TRIGGER IF NOT EXISTS {name} {definition}")


# Up to this many rows, a statement joining a transition table to a large table runs as written
# (see planned_for_size).
SMALL_STATEMENT_ROWS = 64


def planned_for_size(statement: str, rows: str) -> str:
    """PL/pgSQL running `statement` (one SQL statement ending in ";") that joins the transition
    table `rows` to a large table, planned for the size at hand.

    PL/pgSQL plans a statement without parameters once per connection, with the row count of the
    transition table at its first call, and keeps that plan: a first bulk call can leave a hash
    join over the whole large table for every later one-row write, and a first one-row call a
    nested loop that is quadratic for a later bulk write. So a small statement (at most
    SMALL_STATEMENT_ROWS rows, always planned as index lookups) runs as written, and a larger one
    through EXECUTE, planned afresh with its real size."""
    body = statement.strip().removesuffix(";")
    return (
        f"IF (SELECT count(*) FROM {rows}) <= {SMALL_STATEMENT_ROWS} THEN\n  {body};\n"
        f"ELSE\n  EXECUTE $fs_sql${body}$fs_sql$;\nEND IF;"
    )


# What a statement trigger's function sees of the rows, by event (transition tables).
REFERENCING = {
    "insert": "REFERENCING NEW TABLE AS fs_new",
    "delete": "REFERENCING OLD TABLE AS fs_old",
    "update": "REFERENCING OLD TABLE AS fs_old NEW TABLE AS fs_new",
    "truncate": "",
}


def install_set(
    connection: BaseDatabaseWrapper,
    *,
    prefix: str,
    table: str,
    missing: list[str],
    pg_functions: dict[str, str],
    sqlite_triggers: dict[str, str],
) -> None:
    """One set of triggers on `table`, named prefix + kind: on PostgreSQL every function is
    (re)defined and the missing triggers created; on SQLite the row triggers are created if absent."""
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            for kind, body in pg_functions.items():
                name = f"{prefix}{kind}"
                create_statement_trigger(
                    cur,
                    name,
                    table=table,
                    event=kind.upper(),
                    referencing=REFERENCING[kind],
                    body=body,
                    create_trigger=name in missing,
                )
        elif connection.vendor == "sqlite":
            for kind, definition in sqlite_triggers.items():
                create_row_trigger(cur, f"{prefix}{kind}", definition)
        else:  # pragma: no cover - the project supports these two
            raise NotImplementedError(connection.vendor)


def drop(name: str, table: str, connection: BaseDatabaseWrapper) -> None:
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            cur.execute(f"DROP FUNCTION IF EXISTS {name}()")
        else:
            cur.execute(f"DROP TRIGGER IF EXISTS {name}")
