"""Bearer-token authentication and per-token throttling for /api/v1/.

The throttle counts in Django's cache, which is Redis whenever REDIS_URL is set, so every gunicorn
process and machine shares one budget per token (an in-process counter would multiply it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from devices.api.errors import error
from fleets.keys import hash_key
from fleets.models import Organization
from readapi.models import TOKEN_RE, ApiToken

logger = logging.getLogger(__name__)
LAST_USED_PRECISION = timedelta(minutes=1)


def unauthorized(message: str) -> JsonResponse:
    return error(401, message)


@dataclass
class ApiUser:
    token: ApiToken
    organizations: list[Organization]


def authenticate(request: HttpRequest) -> ApiUser | JsonResponse:
    """The token's user and organizations, or a 401 saying what is wrong (two queries)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if not header:
        return unauthorized("Authorization: Bearer <token> is required; create a token on the API tokens page.")
    if scheme.lower() != "bearer" or not TOKEN_RE.match(value.strip()):
        return unauthorized("Malformed Authorization header: expected 'Bearer fsr_' followed by 64 hex characters.")
    token = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=hash_key(value.strip()))
        .only("pk", "read_only", "last_used_at", "revoked_at", "user__id", "user__is_active")
        .first()
    )
    if token is None or not token.user.is_active:
        return unauthorized("Unknown token.")
    if token.revoked_at is not None:
        return unauthorized("This token has been revoked.")
    now = timezone.now()
    if token.last_used_at is None or token.last_used_at <= now - LAST_USED_PRECISION:
        # At most one write a minute per token; the condition keeps concurrent requests to one.
        ApiToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - LAST_USED_PRECISION)
        ).update(last_used_at=now)
    organizations = list(Organization.objects.filter(memberships__user_id=token.user_id).order_by("name", "pk"))
    return ApiUser(token, organizations)


def throttle_wait(token_id: int) -> int | None:
    """Seconds to wait when the token used up its budget for the current window, else None.

    A fixed window per token: at most FLEETSTATUS_API_THROTTLE_REQUESTS requests per
    FLEETSTATUS_API_THROTTLE_SECONDS. The window number is part of the key, so a counter never
    outlives its window (and moving the clock in tests opens a new one).
    """
    limit = settings.FLEETSTATUS_API_THROTTLE_REQUESTS
    window = settings.FLEETSTATUS_API_THROTTLE_SECONDS
    if limit <= 0:
        return None
    now = time.time()
    number = int(now // window)
    key = f"readapi:throttle:{token_id}:{number}"
    # add() is SET NX with an expiry, so the first request of a window creates the counter atomically.
    if cache.add(key, 1, timeout=window + 1):
        return None
    try:
        used = cache.incr(key)
    except ValueError:  # expired between add() and incr(): this request opens the window again
        cache.add(key, 1, timeout=window + 1)
        return None
    if used <= limit:
        return None
    return max(1, math.ceil((number + 1) * window - now))


def api_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """GET only; a valid token (401 otherwise), within its budget (429 + Retry-After otherwise).

    The view is called with request.api set to the token's user and organizations.
    """

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            response = error(405, f"Method {request.method} is not allowed here; the read API answers GET.")
            response["Allow"] = "GET, HEAD"
            return response
        api = authenticate(request)
        if isinstance(api, JsonResponse):
            return api
        try:
            wait = throttle_wait(api.token.pk)
        except Exception as exc:  # noqa: BLE001 - the cache (Redis) is down: serve unthrottled, not a 500
            logger.warning("read API throttle skipped, cache unavailable: %s", exc)
            wait = None
        if wait is not None:
            response = error(429, f"Too many requests for this token; retry in {wait} s.")
            response["Retry-After"] = str(wait)
            return response
        request.api = api
        response = view(request, *args, **kwargs)
        response["Cache-Control"] = "private, no-store"
        return response

    return wrapped
