"""The device API's edge (devices/api/edge.py): which paths it takes, and the settings it relies on."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import include, path, reverse

from devices.api import paths
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
