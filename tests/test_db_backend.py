"""The PostgreSQL backend's health check (fleetstatus/db/postgresql): a socket poll, no SELECT 1."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import close_old_connections, connection, connections

from fleetstatus.db.postgresql.base import DatabaseWrapper, socket_idle_and_open

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _new_request() -> None:
    """What Django does between requests (request_started/finished → close_old_connections)."""
    close_old_connections()


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _other_connection() -> psycopg.Connection:
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return psycopg.connect(**params, autocommit=True)


def test_settings_use_the_socket_checking_backend() -> None:
    assert isinstance(connections["default"], DatabaseWrapper)
    assert connection.settings_dict["CONN_HEALTH_CHECKS"] is True
    assert connection.settings_dict["CONN_MAX_AGE"] > 0


def test_a_healthy_connection_is_reused_without_a_select_1(monkeypatch) -> None:
    pid = _backend_pid()

    checks: list[int] = []
    real_is_usable = DatabaseWrapper.is_usable

    def counting_is_usable(self) -> bool:
        checks.append(1)
        return real_is_usable(self)

    monkeypatch.setattr(DatabaseWrapper, "is_usable", counting_is_usable)
    for _ in range(3):
        _new_request()
        assert connection.health_check_done is False  # the next query checks first
        assert _backend_pid() == pid
        assert connection.health_check_done is True
    monkeypatch.undo()
    assert checks == [], "the health check queried the server (SELECT 1)"


def test_a_connection_the_server_ended_is_replaced_before_the_next_query() -> None:
    pid = _backend_pid()
    with _other_connection() as other:
        assert other.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0] is True
    # The server's goodbye (an error message, then EOF) makes the idle socket readable.
    deadline = time.monotonic() + 5
    while socket_idle_and_open(connection.connection) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not socket_idle_and_open(connection.connection)
    _new_request()
    new_pid = _backend_pid()  # no error: the dead connection was closed and a new one opened
    assert new_pid != pid


def test_a_closed_or_missing_connection_is_not_usable() -> None:
    _backend_pid()
    raw = connection.connection
    assert socket_idle_and_open(raw) is True
    assert socket_idle_and_open(None) is False
    other = _other_connection()
    other.close()
    assert socket_idle_and_open(other) is False


def test_unread_data_on_the_socket_counts_as_unusable() -> None:
    """Anything waiting on an idle connection (here a NOTIFY we listen for) means it is not idle."""
    _backend_pid()
    with connection.cursor() as cursor:
        cursor.execute("LISTEN fs_backend_test")
    with _other_connection() as other:
        other.execute("NOTIFY fs_backend_test")
    deadline = time.monotonic() + 5
    while socket_idle_and_open(connection.connection) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert socket_idle_and_open(connection.connection) is False
    _new_request()
    _backend_pid()  # replaced, and the next query works
