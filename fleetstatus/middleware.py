"""Request hygiene that every view relies on."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from devices.api.errors import error
from devices.api.paths import is_api_path

# The read API answers JSON like the device API: errors on its paths must not be HTML pages.
READ_API_PREFIX = "/api/"


def wants_json(path: str) -> bool:
    return is_api_path(path) or path.startswith(READ_API_PREFIX)


NUL_MESSAGE = "Query parameters cannot contain NUL characters."
ADMIN_PREFIX = "/admin/"


class RejectNulInQueryMiddleware:
    """Answer 400 to an admin query string with a NUL character (e.g. ?status=%00).

    PostgreSQL text cannot hold NUL, and the admin change list turns every unknown parameter into
    a field lookup, so ?status=%00 was a 500. The dashboard validates its own parameters (a NUL
    search is ignored with a notice) and the device API reads no query parameters, so only the
    admin needs this; forms already refuse NUL (Django's ProhibitNullCharactersValidator).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(ADMIN_PREFIX) and any(
            "\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists()
        ):
            return HttpResponseBadRequest(NUL_MESSAGE, content_type="text/plain")
        return self.get_response(request)


RETRY_AFTER_SECONDS = 5
DB_UNAVAILABLE = "The database is unavailable; try again shortly."


class DatabaseUnavailableMiddleware:
    """A lost database connection is a 503 with Retry-After, not a 500 (JSON on the device API).

    While PostgreSQL restarts, every request fails with OperationalError; agents and browsers
    should back off and retry, which is what 503 + Retry-After tells them. The persistent
    connection is replaced by itself on a later request (CONN_MAX_AGE with conn_health_checks).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logging.getLogger("django.request").error("database unavailable: %s", exception)
        if wants_json(request.path):
            response: HttpResponse = error(503, DB_UNAVAILABLE)
        else:
            response = HttpResponse(DB_UNAVAILABLE, status=503, content_type="text/plain")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
