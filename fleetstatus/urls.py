from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpResponse, JsonResponse
from django.templatetags.static import static
from django.urls import include, path
from django.views import defaults
from django.views.generic import RedirectView

from devices.api.openapi import openapi_json


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


# Device agents and the tunnel server parse JSON: an unknown path or a request Django refuses
# before any view (e.g. a UUID segment containing "/") must not answer them with an HTML page.
API_PREFIXES = ("/device/", "/services/")


def not_found(request, exception=None):
    if request.path.startswith(API_PREFIXES):
        return JsonResponse({"error": f"No such endpoint: {request.method} {request.path[:200]}"}, status=404)
    return defaults.page_not_found(request, exception)


def bad_request(request, exception=None):
    if request.path.startswith(API_PREFIXES):
        return JsonResponse({"error": "Bad request."}, status=400)
    return defaults.bad_request(request, exception)


handler404 = not_found
handler400 = bad_request


urlpatterns = [
    path("", RedirectView.as_view(pattern_name="devices:list", permanent=False)),
    path("healthz", healthz, name="healthz"),
    # Browsers ask for /favicon.ico on pages that declare none (the admin).
    path("favicon.ico", RedirectView.as_view(url=static("fleetstatus/favicon.svg"), permanent=True), name="favicon"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("devices/", include("devices.urls")),
    path("fleets/", include("fleets.urls")),
    path("notifications/", include("notifications.urls")),
    path("device/openapi.json", openapi_json, name="device-openapi"),
    # The device-facing API (balena-compatible paths: /device/..., /services/vpn/...).
    path("", include("devices.api.urls")),
]
