"""The device API's edge (devices/api/edge.py): which paths it takes, and the settings it relies on."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import include, path, reverse

from devices.api import paths
from devices.api.config import config_for, target_state_body, target_state_body_of
from devices.api.edge import REPORT_DISPATCH, EdgeWSGI, header_middleware, target_state_uuid

# A URLconf that mounts the device API below /api/ (used by one test through ROOT_URLCONF).
urlpatterns = [path("api/", include("devices.api.urls"))]

UUID32 = "0123456789abcdef" * 2
UUID62 = ("0123456789abcdef" * 4)[:62]


@pytest.mark.parametrize("uuid", [UUID32, UUID62])
def test_a_target_state_path_gives_its_uuid(uuid):
    assert target_state_uuid(f"/device/v3/{uuid}/state") == uuid


@pytest.mark.parametrize(
    "path",
    [
        "/device/v3/state",
        f"/device/v3/{UUID32.upper()}/state",
        f"/device/v3/{UUID32[:-1]}/state",
        f"/device/v3/{UUID32}\n/state",
        f"/device/v3/{UUID32}/state\n",
        f"/device/v3/{UUID32}/state/",
        f"/device/v3/x/{UUID32}/state",
        f"/device/v2/{UUID32}/state",
    ],
)
def test_anything_else_is_left_to_django(path):
    assert target_state_uuid(path) is None


def test_the_urlconf_serves_the_paths_the_edge_matches():
    assert reverse("device-api-state-report") == paths.absolute(paths.STATE_REPORT)
    assert reverse("device-api-target-state", args=[UUID32]) == f"/device/v3/{UUID32}/state"
    assert target_state_uuid(reverse("device-api-target-state", args=[UUID32])) == UUID32


def test_the_fast_path_sends_the_headers_of_the_middleware_before_the_report_dispatch(settings):
    assert header_middleware() == settings.MIDDLEWARE[: settings.MIDDLEWARE.index(REPORT_DISPATCH)]
    assert "django.middleware.security.SecurityMiddleware" in header_middleware()


def test_a_middleware_list_without_the_report_dispatch_is_refused(settings):
    settings.MIDDLEWARE = [name for name in settings.MIDDLEWARE if name != REPORT_DISPATCH]
    with pytest.raises(ImproperlyConfigured, match="StateReportDispatchMiddleware"):
        EdgeWSGI(lambda environ, start_response: [])


def test_the_device_api_below_the_site_root_is_refused(settings):
    settings.ROOT_URLCONF = __name__
    with pytest.raises(ImproperlyConfigured, match="site root"):
        EdgeWSGI(lambda environ, start_response: [])


@pytest.mark.django_db
def test_a_report_through_the_edge_answers_as_the_full_stack_without_running_the_header_middleware(
    client, make_device, monkeypatch
):
    from csp.middleware import CSPMiddleware
    from django.middleware.security import SecurityMiddleware

    from tests.apiutil import WsgiClient, send

    device = make_device()
    wsgi = WsgiClient()
    body = {device.uuid: {"status": "Idle", "cpu_usage": 3}}
    full = send(client, "PATCH", "/device/v3/state", body, key=device.api_key)
    bad = send(client, "PATCH", "/device/v3/state", {device.uuid: {"cpu_usage": "hot"}}, key=device.api_key)
    send(wsgi, "PATCH", "/device/v3/state", body, key=device.api_key)  # the headers' template, once

    def ran(*args, **kwargs):
        raise AssertionError("a header middleware ran for a report through the edge")

    monkeypatch.setattr(CSPMiddleware, "process_response", ran)
    monkeypatch.setattr(SecurityMiddleware, "process_response", ran)
    edge = send(wsgi, "PATCH", "/device/v3/state", body, key=device.api_key)
    edge_bad = send(wsgi, "PATCH", "/device/v3/state", {device.uuid: {"cpu_usage": "hot"}}, key=device.api_key)
    unauthenticated = send(wsgi, "PATCH", "/device/v3/state", body, key="0" * 64)
    assert (edge.status_code, edge.json()) == (full.status_code, full.json()) == (200, {})
    assert (edge_bad.status_code, edge_bad.json()) == (bad.status_code, bad.json())
    assert edge_bad.json()["field"] == "cpu_usage"
    assert unauthenticated.status_code == 401 and unauthenticated["WWW-Authenticate"].startswith("Bearer")
    for response in (edge, edge_bad, unauthenticated):
        for name in ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy"):
            assert response[name] == full[name], name
        assert response["Content-Length"] == str(len(response.content))
    device.refresh_from_db()
    assert device.cpu_usage == 3


@pytest.mark.parametrize(
    "name",
    ["", "kiosk-1", 'q"uote\\slash', "tab\tnew\nline", "\u2603 snow", "\U0001f600", "\x00\x1f\x7f", "\ud800 lone"],
)
@pytest.mark.parametrize("interval, cloudlink", [(600, True), (30, False), (86400, True)])
def test_the_fast_path_body_is_the_views_body_byte_for_byte(name, interval, cloudlink):
    for uuid in (UUID32, UUID62):
        assert target_state_body_of(uuid, name, interval, cloudlink) == target_state_body(
            uuid, name, config_for(interval, cloudlink)
        )
