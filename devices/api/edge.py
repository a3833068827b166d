"""The device API's edge: the two hot requests, dispatched before the pages' machinery.

`GET /device/v3/<uuid>/state` is most of an installation's traffic (1 M devices polling every
10 minutes is 1,700 requests a second), and a device on time needs none of what the pages need.
`EdgeWSGI` wraps the WSGI application (fleetstatus/wsgi.py) and answers such a fetch from the
device cache in one Redis script, before Django builds a request:

- the entry matches the presented key (SHA-256, compared in constant time here as in the view)
  and the device's heartbeat is online and on time in the heartbeat store -> 200 with the bytes
  the view sends, and the fetch is recorded in Redis (no database connection is touched);
- the entry says frozen -> 304 (the fetch does not count), as the view answers.

Anything else goes to Django unchanged and the view decides with the database: no entry, a key
that does not match, not in the online set, late, an unreachable Redis; it keeps the whole error
contract (401 with WWW-Authenticate, 400 on a bad UUID, 405, 503 when the database is down). On a
miss the generations the script returned go along in the environ, so the view can fill the cache
after its database read.

`PATCH /device/v3/state` (state reports, every few seconds to minutes per device) needs the
database and a Django request, but none of sessions, authentication, CSRF, messages, htmx, axes or
URL resolution, and its responses get the same headers from the response-header middleware every
time: `EdgeWSGI` runs Django's request cycle (signals, request, error handling) around the report
view alone and adds those headers from the same per-(status, secure) template as the fetch's
(building the Content-Security-Policy alone cost more than the rest of the middleware). Where the
WSGI entry point is not in front (the test client), `StateReportDispatchMiddleware` calls the view
right after the response-header middleware.

Both are matched with the paths the URLconf is built from (devices/api/paths.py).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable

from django.conf import settings
from django.core.exceptions import DisallowedHost, ImproperlyConfigured
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import setting_changed
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve
from django.utils.module_loading import import_string
from redis.exceptions import RedisError

from devices.api import parsing
from devices.api.config import target_state_body_of
from devices.api.paths import STATE_REPORT, TARGET_STATE, UUID_PARAMETER, absolute
from devices.api.views import state_report
from devices.live import devcache
from devices.live.redis import now_us, warn_unavailable
from fleets.keys import hash_key
from fleetstatus.metrics import count_heartbeats
from fleetstatus.middleware import DatabaseUnavailableMiddleware

logger = logging.getLogger(__name__)

TARGET_STATE_PATH = absolute(TARGET_STATE)
STATE_REPORT_PATH = absolute(STATE_REPORT)
# The target-state path around its UUID segment: "/device/v3/" and "/state".
_STATE_HEAD, _STATE_TAIL = TARGET_STATE_PATH.split(UUID_PARAMETER)

REPORT_DISPATCH = f"{__name__}.StateReportDispatchMiddleware"


def target_state_uuid(path: str) -> str | None:
    """The UUID of a target-state path, when it is one the view accepts as a UUID."""
    if not (path.startswith(_STATE_HEAD) and path.endswith(_STATE_TAIL)):
        return None
    uuid = path[len(_STATE_HEAD) : -len(_STATE_TAIL)]
    return uuid if parsing.UUID_RE.fullmatch(uuid) else None


# --- GET /device/v3/<uuid>/state: answered from the device cache ------------------------------


def cached_answer(meta: dict, uuid: str) -> tuple[int, bytes] | None:
    """(status, JSON body) of a target-state fetch answered from the cache, or None for the view.

    On a miss the generations the script read are left in `meta` (the WSGI environ, which becomes
    the request's META) for the view's fill.
    """
    if not devcache.enabled():
        return None
    try:
        key = parsing.bearer_token(meta.get("HTTP_AUTHORIZATION"))
    except parsing.BadRequest:
        return None
    key_hash = hash_key(key)
    try:
        found = devcache.fetch_at(uuid, key_hash, now_us())
    except RedisError as exc:
        warn_unavailable(exc)
        meta[devcache.STORE_FAILED_META] = True
        return None
    if found.outcome == devcache.MISS:
        meta[devcache.GENERATIONS_META] = found.generations
        return None
    if found.outcome not in (devcache.COUNTED, devcache.FROZEN) or not hmac.compare_digest(key_hash, found.key_hash):
        return None
    if found.outcome == devcache.FROZEN:
        return 304, b""
    count_heartbeats()
    return 200, target_state_body_of(uuid, found.name, found.effective_poll_interval, found.effective_cloudlink)


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


def header_middleware() -> list[str]:
    """The middleware listed before the report dispatch in settings.MIDDLEWARE: they only add
    response headers (security headers, X-Frame-Options, CSP), so both edge answers carry them."""
    names = list(settings.MIDDLEWARE)
    if REPORT_DISPATCH not in names:
        raise ImproperlyConfigured(
            f"settings.MIDDLEWARE must list {REPORT_DISPATCH} after the response-header middleware."
        )
    return names[: names.index(REPORT_DISPATCH)]


def _check_mounted_at_root() -> None:
    """The edge matches the paths as devices/api/paths.py writes them: the URLconf must agree."""
    for path, name in (
        (STATE_REPORT_PATH, "device-api-state-report"),
        (TARGET_STATE_PATH.replace(UUID_PARAMETER, "0" * 32), "device-api-target-state"),
    ):
        try:
            resolved = resolve(path).url_name
        except Resolver404:
            resolved = None
        if resolved != name:
            raise ImproperlyConfigured(f"{path} must resolve to {name}: include devices.api.urls at the site root.")


class EdgeWSGI:
    """Answers a steady-state GET /device/v3/<uuid>/state before Django's request handling, and
    sends PATCH /device/v3/state through Django's request cycle around the report view alone.

    The response headers are those the header middleware give a response of the same status and
    type, computed once per (status, secure) by running them on it. Everything else goes to the
    Django application unchanged.
    """

    def __init__(self, app: Callable) -> None:
        self.app = app
        self._headers: dict[tuple[int, bool], list[tuple[str, str]]] = {}
        self._checks: dict[tuple[str | None, ...], tuple[bool, bool]] = {}
        self._security = None
        self._header_middleware = header_middleware()
        _check_mounted_at_root()
        self._reports = _ReportHandler(self._report_headers)
        # The checks are computed with the settings of the time (tests change them).
        setting_changed.connect(self._settings_changed)

    def _settings_changed(self, **kwargs) -> None:
        self._checks = {}

    def _template_headers(self, status: int, request: HttpRequest) -> list[tuple[str, str]]:
        secure = request.is_secure()
        key = (status, secure)
        headers = self._headers.get(key)
        if headers is None:
            template = HttpResponse(status=304) if status == 304 else HttpResponse(b"", content_type="application/json")
            handler: Callable[[HttpRequest], HttpResponse] = lambda _request: template  # noqa: E731
            for path in reversed(self._header_middleware):
                handler = import_string(path)(handler)
            probe = _EnvironRequest({k: v for k, v in request.META.items() if isinstance(v, str)}, request.path_info)
            response = handler(probe)
            headers = [(k, v) for k, v in response.items() if k != "Content-Length"]
            self._headers[key] = headers
        return headers

    def _request_checks(self, environ: dict, path: str) -> tuple[bool, bool]:
        """(Host allowed, request secure), cached by the environ values they are computed from (the
        host and port headers, the URL scheme, the SECURE_PROXY_SSL_HEADER), so that a fetch whose
        values were seen before builds no request object."""
        proxy = settings.SECURE_PROXY_SSL_HEADER
        key = (
            environ.get("HTTP_X_FORWARDED_HOST"),
            environ.get("HTTP_X_FORWARDED_PORT"),
            environ.get("HTTP_HOST"),
            environ.get("SERVER_NAME"),
            environ.get("SERVER_PORT"),
            environ.get("wsgi.url_scheme"),
            environ.get(proxy[0]) if proxy else None,
        )
        checks = self._checks.get(key)
        if checks is None:
            request = _EnvironRequest(environ, path)
            ok = _passes_request_checks(request)
            checks = (ok, ok and request.is_secure())
            if len(self._checks) < 1024:
                self._checks[key] = checks
        return checks

    def _redirects(self, environ: dict, path: str) -> bool:
        if not settings.SECURE_SSL_REDIRECT:
            return False
        if self._security is None:
            from django.middleware.security import SecurityMiddleware

            self._security = SecurityMiddleware(lambda _request: None)
        return self._security.process_request(_EnvironRequest(environ, path)) is not None

    def _report_headers(self, request: HttpRequest) -> list[tuple[str, str]]:
        # The header middleware add the same headers to a report's answer whatever its status.
        return self._template_headers(200, request)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "PATCH" and environ.get("PATH_INFO") == STATE_REPORT_PATH:
            if not self._redirects(environ, STATE_REPORT_PATH):
                return self._reports(environ, start_response)
        elif environ.get("REQUEST_METHOD") == "GET":
            path = environ.get("PATH_INFO", "")
            uuid = target_state_uuid(path)
            if uuid is not None:
                try:
                    answered = self._answer(environ, path, uuid, start_response)
                except Exception:
                    # Never worse than the full stack: log and let Django answer.
                    logger.exception("fast path failed; the request goes to the full stack")
                    answered = None
                if answered is not None:
                    return answered
        return self.app(environ, start_response)

    def _answer(self, environ: dict, path: str, uuid: str, start_response: Callable) -> list[bytes] | None:
        host_ok, secure = self._request_checks(environ, path)
        # SecurityMiddleware redirects only a request that is not secure.
        if not host_ok or (not secure and self._redirects(environ, path)):
            return None
        result = cached_answer(environ, uuid)
        if result is None:
            return None
        status, body = result
        headers = self._headers.get((status, secure))
        if headers is None:
            headers = self._template_headers(status, _EnvironRequest(environ, path))
        headers = [*headers, ("Content-Length", str(len(body)))]
        start_response("304 Not Modified" if status == 304 else "200 OK", headers)
        return [body]


# --- PATCH /device/v3/state: straight to the view ---------------------------------------------


_UNAVAILABLE = DatabaseUnavailableMiddleware(lambda _request: HttpResponse())


def answer_report(request: HttpRequest) -> HttpResponse:
    """The state-report view, doing itself what the skipped middleware would do for it.

    A lost database connection is a 503 with Retry-After (DatabaseUnavailableMiddleware), the Host
    header is checked against ALLOWED_HOSTS and the response carries Content-Length
    (CommonMiddleware).
    """
    request.get_host()  # ALLOWED_HOSTS, as CommonMiddleware checks it (DisallowedHost is a 400)
    try:
        response = state_report(request)
    except (OperationalError, InterfaceError) as exc:
        response = _UNAVAILABLE.process_exception(request, exc)
        assert response is not None
    if not response.streaming and "Content-Length" not in response:
        response.headers["Content-Length"] = str(len(response.content))
    return response


class _ReportHandler(WSGIHandler):
    """Django's WSGI request cycle (request_started/finished, the request, the 400/500 of an
    exception, the log of an error response) around answer_report() alone; the response-header
    middleware's headers come from a template (EdgeWSGI._template_headers), where the response does
    not set them itself, as those middleware leave a header the response already has."""

    def __init__(self, headers: Callable[[HttpRequest], list[tuple[str, str]]]) -> None:
        self._headers = headers
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        answer = convert_exception_to_response(answer_report)

        def with_headers(request: HttpRequest) -> HttpResponse:
            response = answer(request)
            for name, value in self._headers(request):
                if name not in response:
                    response.headers[name] = value
            return response

        self._middleware_chain = with_headers


class StateReportDispatchMiddleware:
    """Calls the state-report view (answer_report) right after the response-header middleware.

    Every other request, other methods on the same path included, passes through.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info != STATE_REPORT_PATH or request.method != "PATCH":
            return self.get_response(request)
        return answer_report(request)
