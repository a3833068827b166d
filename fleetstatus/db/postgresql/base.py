"""Django's PostgreSQL backend with a health check that costs no round trip.

Persistent connections (CONN_MAX_AGE) need a check before reuse, or the first request after a
PostgreSQL restart fails on a connection the server has closed. Django's CONN_HEALTH_CHECKS does it
with a `SELECT 1` at the start of every request that uses the database: one more round trip on each
state report and page (a report is otherwise two).

A connection that sits idle between requests has nothing to read: the server sends nothing unless
asked. When the server ends the connection (restart, `pg_terminate_backend`, idle timeout, a crash
of the backend), it sends an error message and closes the socket, which makes the socket readable.
So before reusing a connection this backend polls its socket without waiting; readable (or an
error) means "closed or closing" and the connection is replaced, exactly where Django's check would
have replaced it. What the poll cannot see is a peer that vanished without a word (a network cut);
the request then fails as the database being unavailable (503 + Retry-After) and the connection is
replaced by Django's error handling before the next one. After an error inside a request Django
still runs its full `SELECT 1` check (is_usable), unchanged.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql.base import DatabaseWrapper as PostgresDatabaseWrapper


def socket_idle_and_open(connection) -> bool:
    """True if the psycopg connection's socket is open and has nothing waiting to be read."""
    if connection is None or connection.closed or connection.broken:
        return False
    try:
        fd = connection.pgconn.socket
        readable, _, errored = select.select([fd], [], [fd], 0)
    except (OSError, ValueError, Exception):  # noqa: BLE001 - any failure to look means "not usable"
        return False
    return not readable and not errored


class DatabaseWrapper(PostgresDatabaseWrapper):
    def close_if_health_check_failed(self) -> None:
        if self.pool or self.connection is None or not self.health_check_enabled or self.health_check_done:
            return
        if not socket_idle_and_open(self.connection):
            self.close()
        self.health_check_done = True
