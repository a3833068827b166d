"""Request hygiene that every view relies on."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

NUL_MESSAGE = "Query parameters cannot contain NUL characters."


class RejectNulInQueryMiddleware:
    """Answer 400 to a query string with a NUL character (e.g. ?q=%00).

    PostgreSQL text cannot hold NUL, so any view that filters by a parameter would fail with a 500
    (the admin change list turns every unknown parameter into a field lookup: ?status=%00 did).
    Forms already refuse NUL (Django's ProhibitNullCharactersValidator); this covers query strings.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if any("\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists()):
            if request.path.startswith(("/device/", "/services/")):
                return JsonResponse({"error": NUL_MESSAGE}, status=400)
            return HttpResponseBadRequest(NUL_MESSAGE, content_type="text/plain")
        return self.get_response(request)
