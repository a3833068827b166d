"""The steady-state heartbeat fetch, answered before the rest of the middleware stack.

`GET /device/v3/<uuid>/state` is most of an installation's traffic (1 M devices polling every
10 minutes is 1,700 requests a second), and a device on time needs none of what the pages need:
sessions, authentication, CSRF, messages, axes, URL resolution, a database connection. This
middleware sits right after the response-header middleware (security headers, X-Frame-Options,
CSP) and answers such a fetch from the device cache (devices/devcache.py) in one Redis script:

- the entry matches the presented key (SHA-256, compared in constant time here as in the view)
  and the device's heartbeat is online and on time in the heartbeat store -> 200 with the same
  body the view builds, and the fetch is recorded in Redis (no database query, not even the
  connection health check: no connection is touched);
- the entry says frozen -> 304 (the fetch does not count), as the view answers.

Anything else passes through to the view unchanged (devices/api.py), which keeps the whole error
contract (401 with WWW-Authenticate, 400 on a bad UUID, 405, 503 when the database is down) and
decides with the database: no entry, a key that does not match, not in the online set, late, an
unreachable Redis. On a miss the generations the script returned go along on the request, so the
view can fill the cache after its database read.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.module_loading import import_string
from redis.exceptions import RedisError

from devices.live import devcache, heartbeats
from devices.api.views import BEARER_RE, config_for
from devices.models import effective_poll_interval
from fleets.keys import hash_key
from readapi.metrics import count_heartbeats

logger = logging.getLogger(__name__)

# The view's URL (devices/api_urls.py) restricted to what the view accepts as a UUID.
STATE_PATH_RE = re.compile(r"^/device/v3/([0-9a-f]{32}|[0-9a-f]{62})/state$")


def _with_length(response: HttpResponse) -> HttpResponse:
    # What CommonMiddleware adds on the view's path.
    response.headers["Content-Length"] = str(len(response.content))
    return response


def cached_answer(request: HttpRequest, uuid: str) -> tuple[int, bytes] | None:
    """(status, JSON body) of a target-state fetch answered from the cache, or None for the view.

    `request` needs only META (the WSGI environ); on a miss the generations the script read are
    left in META for the view's fill.
    """
    header = request.META.get("HTTP_AUTHORIZATION")
    if not header or not devcache.enabled():
        return None
    match = BEARER_RE.match(header)
    if not match:
        return None
    key_hash = hash_key(match.group(1))
    try:
        found = devcache.lookup_and_fetch(uuid, key_hash, timezone.now())
    except RedisError as exc:
        heartbeats._warn_unavailable(exc)
        request.META[devcache.STORE_FAILED_META] = True
        return None
    if found.outcome == devcache.MISS:
        request.META[devcache.GENERATIONS_META] = found.generations
        return None
    if found.outcome not in (devcache.COUNTED, devcache.FROZEN) or not hmac.compare_digest(key_hash, found.key_hash):
        return None
    if found.outcome == devcache.FROZEN:
        return 304, b""
    interval = effective_poll_interval(found.poll_interval, found.fleet_poll_interval)
    cloudlink = found.fleet_cloudlink if found.cloudlink is None else found.cloudlink
    # JsonResponse's encoding (DjangoJSONEncoder adds nothing for plain strings).
    body = json.dumps({uuid: {"name": found.name, "config": config_for(interval, cloudlink), "apps": {}}})
    count_heartbeats()
    return 200, body.encode()


# Set in the environ once FastPathWSGI tried a request, so the middleware does not try it again.
TRIED = "fleetstatus.fastpath_tried"


class _EnvironRequest(HttpRequest):
    """Just enough of a request over a WSGI environ for the host, HTTPS and header checks."""

    def __init__(self, environ: dict, path: str) -> None:
        super().__init__()
        self.META = environ
        self.method = "GET"
        self.path_info = path
        self.path = environ.get("SCRIPT_NAME", "") + path

    def _get_scheme(self) -> str:
        return self.META.get("wsgi.url_scheme", "http")


def _passes_request_checks(request: HttpRequest) -> bool:
    """What the middleware before the view would refuse: a disallowed Host (CommonMiddleware, 400)."""
    if settings.DISALLOWED_USER_AGENTS:
        return False  # rare; the full stack decides
    try:
        request.get_host()
    except DisallowedHost:
        return False
    return True


class TargetStateFastPathMiddleware:
    """The fast path inside Django (test client, runserver, ASGI); fleetstatus.wsgi also wraps
    the WSGI application with FastPathWSGI, which answers before Django's handler."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "GET" and request.path_info.startswith("/device/v3/") and TRIED not in request.META:
            match = STATE_PATH_RE.match(request.path_info)
            if match and _passes_request_checks(request):
                result = cached_answer(request, match.group(1))
                if result is not None:
                    status, body = result
                    if status == 304:
                        return _with_length(HttpResponse(status=304))
                    return _with_length(HttpResponse(body, content_type="application/json"))
        return self.get_response(request)


# --- WSGI ----------------------------------------------------------------------------------------


def _header_middleware() -> list[str]:
    """The middleware listed before this fast path: they only add response headers."""
    names = list(settings.MIDDLEWARE)
    mine = f"{__name__}.TargetStateFastPathMiddleware"
    return names[: names.index(mine)] if mine in names else []


class FastPathWSGI:
    """Answers a steady-state GET /device/v3/<uuid>/state before Django's request handling.

    Same answer as TargetStateFastPathMiddleware: the response headers are those the middleware
    listed before it in settings.MIDDLEWARE (security headers, X-Frame-Options, CSP) give a
    response of the same status and type, computed once per (status, secure) by running them on
    it. Everything else goes to the Django application unchanged.
    """

    def __init__(self, app: Callable) -> None:
        self.app = app
        self._headers: dict[tuple[int, bool], list[tuple[str, str]]] = {}
        self._hosts: dict[tuple[str | None, ...], bool] = {}
        self._security = None

    def _template_headers(self, status: int, request: HttpRequest) -> list[tuple[str, str]]:
        secure = request.is_secure()
        key = (status, secure)
        headers = self._headers.get(key)
        if headers is None:
            template = HttpResponse(status=304) if status == 304 else HttpResponse(b"", content_type="application/json")
            handler: Callable[[HttpRequest], HttpResponse] = lambda _request: template  # noqa: E731
            for path in reversed(_header_middleware()):
                handler = import_string(path)(handler)
            probe = _EnvironRequest({k: v for k, v in request.META.items() if isinstance(v, str)}, request.path_info)
            response = handler(probe)
            headers = [(k, v) for k, v in response.items() if k != "Content-Length"]
            self._headers[key] = headers
        return headers

    def _host_ok(self, request: HttpRequest) -> bool:
        meta = request.META
        key = (
            meta.get("HTTP_X_FORWARDED_HOST"),
            meta.get("HTTP_X_FORWARDED_PORT"),
            meta.get("HTTP_HOST"),
            meta.get("SERVER_NAME"),
            meta.get("SERVER_PORT"),
        )
        ok = self._hosts.get(key)
        if ok is None:
            ok = _passes_request_checks(request)
            if len(self._hosts) < 1024:
                self._hosts[key] = ok
        return ok

    def _redirects(self, request: HttpRequest) -> bool:
        if not settings.SECURE_SSL_REDIRECT:
            return False
        if self._security is None:
            from django.middleware.security import SecurityMiddleware

            self._security = SecurityMiddleware(lambda _request: None)
        return self._security.process_request(request) is not None

    def __call__(self, environ: dict, start_response: Callable):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "GET" and path.startswith("/device/v3/"):
            match = STATE_PATH_RE.match(path)
            if match:
                try:
                    answered = self._answer(environ, path, match.group(1), start_response)
                except Exception:
                    # Never worse than the full stack: log and let Django answer.
                    logger.exception("fast path failed; the request goes to the full stack")
                    answered = None
                if answered is not None:
                    return answered
        return self.app(environ, start_response)

    def _answer(self, environ: dict, path: str, uuid: str, start_response: Callable):
        environ[TRIED] = True
        request = _EnvironRequest(environ, path)
        if not self._host_ok(request) or self._redirects(request):
            return None
        result = cached_answer(request, uuid)
        if result is None:
            return None
        status, body = result
        headers = [*self._template_headers(status, request), ("Content-Length", str(len(body)))]
        start_response("304 Not Modified" if status == 304 else "200 OK", headers)
        return [body]
