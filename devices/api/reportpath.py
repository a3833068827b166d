"""State reports (`PATCH /device/v3/state`) dispatched before the pages' middleware.

A device agent reports every few seconds to minutes (issue 8, P5: 500 reports a second), with its
own Bearer key: it needs none of sessions, authentication, CSRF, messages, htmx, axes or URL
resolution. This middleware sits after the response-header middleware (security headers,
X-Frame-Options, CSP) and the heartbeat fast path (devices/fastpath.py), and calls the view
directly, doing itself what the skipped middleware does for it: a lost database connection is a
503 with Retry-After (fleetstatus.middleware.DatabaseUnavailableMiddleware), the Host header is
checked against ALLOWED_HOSTS and the response carries Content-Length (CommonMiddleware). Every
other request, other methods on the same path included, passes through.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse

from devices.api.views import state_report
from fleetstatus.middleware import DatabaseUnavailableMiddleware

STATE_REPORT_PATH = "/device/v3/state"


class StateReportDispatchMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.unavailable = DatabaseUnavailableMiddleware(get_response)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info != STATE_REPORT_PATH or request.method != "PATCH":
            return self.get_response(request)
        request.get_host()  # ALLOWED_HOSTS, as CommonMiddleware checks it (DisallowedHost is a 400)
        try:
            response = state_report(request)
        except (OperationalError, InterfaceError) as exc:
            response = self.unavailable.process_exception(request, exc)
            assert response is not None
        if not response.streaming and "Content-Length" not in response:
            response.headers["Content-Length"] = str(len(response.content))
        return response
