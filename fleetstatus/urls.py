from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpResponse
from django.templatetags.static import static
from django.urls import include, path
from django.views import defaults
from django.views.generic import RedirectView

from devices.api.errors import error
from fleetstatus.middleware import wants_json


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


# Device agents and the tunnel server parse JSON: an unknown path or a request Django refuses
# before any view (e.g. a UUID segment containing "/") must not answer them with an HTML page.
def not_found(request, exception=None):
    if wants_json(request.path):
        return error(404, f"No such endpoint: {request.method} {request.path[:200]}")
    return defaults.page_not_found(request, exception)


def bad_request(request, exception=None):
    if wants_json(request.path):
        return error(400, "Bad request.")
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
    # The read API (/api/v1/), its tokens page and the Prometheus endpoint.
    path("", include("readapi.urls")),
    # The device-facing API (balena-compatible paths: /device/..., /services/vpn/...) and its OpenAPI
    # document. At the root: the edge dispatch (devices/api/edge.py) matches these paths as they are.
    path("", include("devices.api.urls")),
]
