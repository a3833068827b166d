"""PATCH /device/v3/state is dispatched before the pages' middleware (devices/api/edge.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine
from django.contrib.sessions.middleware import SessionMiddleware
from django.db import OperationalError
from django.middleware.csrf import CsrfViewMiddleware

from devices import services
from devices.status import HeartbeatState
from tests.apiutil import WsgiClient, send

URL = "/device/v3/state"
T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


@pytest.fixture
def device(make_device):
    return make_device(api_heartbeat_state=HeartbeatState.ONLINE)


def _forbid(monkeypatch, cls, method):
    def ran(*args, **kwargs):
        raise AssertionError(f"{cls.__name__}.{method} ran for a state report")

    monkeypatch.setattr(cls, method, ran)


def test_a_report_skips_sessions_and_csrf_but_keeps_the_response_headers(client, device, monkeypatch):
    _forbid(monkeypatch, SessionMiddleware, "process_request")
    _forbid(monkeypatch, CsrfViewMiddleware, "process_view")
    with time_machine.travel(T0, tick=False):
        r = send(client, "PATCH", URL, {device.uuid: {"status": "Idle", "cpu_usage": 3}}, key=device.api_key)
    assert r.status_code == 200 and r.json() == {}
    assert r["Content-Length"] == str(len(r.content))
    # The response-header middleware runs before the dispatch.
    assert r["X-Content-Type-Options"] == "nosniff"
    assert r["X-Frame-Options"] == "DENY"
    device.refresh_from_db()
    assert (device.cpu_usage, device.last_state_report_at) == (3, T0)


def test_errors_keep_their_json_shape(client, device):
    r = send(client, "PATCH", URL, {device.uuid: {"cpu_usage": "hot"}}, key=device.api_key)
    assert r.status_code == 400 and r.json()["field"] == "cpu_usage"
    r = send(client, "PATCH", URL, {device.uuid: {}}, key="0" * 64)
    assert r.status_code == 401 and r["WWW-Authenticate"].startswith("Bearer")


def test_other_methods_on_the_path_take_the_normal_stack(client, device, monkeypatch):
    r = send(client, "GET", URL, key=device.api_key)
    assert r.status_code == 405 and r["Allow"] == "PATCH"


def test_a_lost_database_is_a_503_with_retry_after(client, device, monkeypatch):
    def down(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "store_state_report", down)
    monkeypatch.setattr(services, "state_report_snapshot", down)
    r = send(client, "PATCH", URL, {device.uuid: {"status": "Idle"}}, key=device.api_key)
    assert r.status_code == 503 and r["Retry-After"] == "5" and "error" in r.json()


def test_a_host_outside_allowed_hosts_is_refused(client, device):
    r = send(
        client, "PATCH", URL, {device.uuid: {"status": "Idle"}}, key=device.api_key, headers={"Host": "evil.example"}
    )
    assert r.status_code == 400


def test_a_lost_database_is_a_503_through_the_edge_too(device, monkeypatch):
    def down(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "store_state_report", down)
    r = send(WsgiClient(), "PATCH", URL, {device.uuid: {"status": "Idle"}}, key=device.api_key)
    assert r.status_code == 503 and r["Retry-After"] == "5" and "error" in r.json()
    assert r["X-Content-Type-Options"] == "nosniff"


def test_a_host_outside_allowed_hosts_is_refused_by_the_edge_too(device):
    wsgi = WsgiClient(HTTP_HOST="evil.example")
    r = send(wsgi, "PATCH", URL, {device.uuid: {"status": "Idle"}}, key=device.api_key)
    assert r.status_code == 400
