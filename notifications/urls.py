from django.urls import path, re_path

from notifications import views

app_name = "notifications"

urlpatterns = [
    path("", views.channel_list, name="list"),
    path("add/<slug:org_slug>/", views.channel_add, name="add"),
    path("<int:pk>/", views.channel_edit, name="edit"),
    path("<int:pk>/test/", views.channel_test, name="test"),
    re_path(r"^mute/device/(?P<uuid>[0-9a-fA-F]{32}|[0-9a-fA-F]{62})/$", views.mute_device, name="mute-device"),
    path("mute/fleet/<int:pk>/", views.mute_fleet, name="mute-fleet"),
    path("mute/<int:pk>/end/", views.unmute, name="unmute"),
]
