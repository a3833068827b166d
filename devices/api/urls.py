"""The device-facing API's URLs: balena's paths exactly (no trailing slashes), included at the root."""

from django.urls import path

from devices.api import views as api

urlpatterns = [
    path("device/register", api.register, name="device-api-register"),
    path("device/v3/<str:uuid>/state", api.target_state, name="device-api-target-state"),
    path("device/v3/state", api.state_report, name="device-api-state-report"),
    path("services/vpn/client-connect", api.vpn_client_connect, name="device-api-vpn-connect"),
    path("services/vpn/client-disconnect", api.vpn_client_disconnect, name="device-api-vpn-disconnect"),
]
