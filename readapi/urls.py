from django.urls import path

from readapi import exposition, openapi, pages, views

app_name = "readapi"

urlpatterns = [
    path("api/v1/openapi.json", openapi.openapi_json, name="openapi"),
    path("api/v1/devices", views.device_list, name="devices"),
    path("api/v1/devices/<str:uuid>", views.device_detail, name="device"),
    path("api/v1/devices/<str:uuid>/history", views.device_history, name="history"),
    path("api/v1/fleets", views.fleet_list, name="fleets"),
    path("metrics", exposition.metrics_view, name="metrics"),
    path("api-tokens/", pages.token_list, name="tokens"),
    path("api-tokens/<int:pk>/revoke", pages.token_revoke, name="revoke"),
]
