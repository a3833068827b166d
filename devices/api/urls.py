"""The device-facing API's URLs, included at the site root (the paths are in devices/api/paths.py)."""

from django.urls import path

from devices.api import paths, views
from devices.api.openapi import openapi_json

urlpatterns = [
    path(paths.OPENAPI, openapi_json, name="device-openapi"),
    path(paths.REGISTER, views.register, name="device-api-register"),
    path(paths.TARGET_STATE, views.target_state, name="device-api-target-state"),
    path(paths.STATE_REPORT, views.state_report, name="device-api-state-report"),
    path(paths.VPN_CONNECT, views.vpn_client_connect, name="device-api-vpn-connect"),
    path(paths.VPN_DISCONNECT, views.vpn_client_disconnect, name="device-api-vpn-disconnect"),
]
