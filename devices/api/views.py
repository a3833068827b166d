"""The device-facing HTTP API: balena-compatible paths, auth and bodies (DESIGN.md §3, issue #3).

Plain function views, JSON in and out, no sessions or CSRF (devices authenticate with Bearer keys).
Every error is a 4xx JSON body `{"error": "...", "field": "..."}`; every write happens after the
whole body has been validated, through devices.services, in one transaction.

Auth outcomes, the same on every endpoint:
- missing or malformed `Authorization: Bearer <key>` → 401;
- a key that does not belong to the device named (unknown UUID, wrong key, or another device's
  key) → 401 with one message, so an unauthenticated caller cannot learn whether a UUID exists;
- a state report authenticated with a valid device key that names another device (alone or
  besides itself) → 403, and nothing is written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from devices import services
from devices.api import reports
from devices.live import devcache, heartbeats
from devices.models import Device
from devices.api.reports import BadRequest
from fleets.keys import hash_key, key_matches
from fleets.models import Fleet, ServiceKey
from readapi.metrics import count_heartbeats, count_state_reports

# Body limits per endpoint. A client-connect for 8,000 UUIDs of 62 characters is about 520 kB.
REGISTER_MAX_BYTES = 16 * 1024
REPORT_MAX_BYTES = 256 * 1024
TUNNEL_MAX_BYTES = 1024 * 1024

BEARER_RE = re.compile(r"^Bearer +([\x21-\x7e]{1,512}) *$", re.IGNORECASE)
# Compared against when the device is unknown, so that path costs the same as a wrong key.
_NO_HASH = hash_key("no such device")

WRONG_DEVICE_KEY = "The API key is not valid for this device."


def error(status: int, message: str, **extra: Any) -> JsonResponse:
    response = JsonResponse({"error": message, **extra}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="fleetstatus"'
    return response


def endpoint(*methods: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """An API view: CSRF-exempt, JSON 405 for other methods, BadRequest → its 4xx JSON."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = error(405, f"Method {request.method} is not allowed here; use {', '.join(methods)}.")
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return view(request, *args, **kwargs)
            except BadRequest as exc:
                return error(exc.status, exc.message, **({"field": exc.field} if exc.field else {}))

        return wrapper

    return decorate


def bearer_key(request: HttpRequest) -> str:
    header = request.headers.get("Authorization")
    if not header:
        raise BadRequest("Authorization: Bearer <key> is required.", status=401)
    match = BEARER_RE.match(header)
    if not match:
        raise BadRequest("The Authorization header must be 'Bearer <key>'.", status=401)
    return match.group(1)


def read_json(request: HttpRequest, max_bytes: int) -> Any:
    too_big = BadRequest(f"The body is larger than {max_bytes} bytes.", status=413)
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BadRequest("Content-Length is not a number.") from None
    if declared > max_bytes:
        raise too_big
    try:
        body = request.body
    except RequestDataTooBig:
        raise too_big from None
    if len(body) > max_bytes:
        raise too_big
    return reports.parse_json(body)


# --- POST /device/register ------------------------------------------------------------------


@endpoint("POST")
def register(request: HttpRequest) -> HttpResponse:
    key = bearer_key(request)
    # Indexed lookup by hash, then a constant-time comparison of the hashes.
    fleet = Fleet.objects.filter(provisioning_key_hash=hash_key(key)).order_by("pk").first()
    if fleet is None or not key_matches(key, fleet.provisioning_key_hash):
        return error(401, "The provisioning key is not valid.")
    data = reports.parse_registration(read_json(request, REGISTER_MAX_BYTES))
    try:
        device, api_key, _claimed = services.register_device(
            fleet, data.uuid, device_type=data.device_type, api_key=data.api_key
        )
    except services.UUIDTaken as exc:
        return error(409, str(exc), field="uuid")
    except services.DeviceChangeError as exc:
        return error(400, str(exc))
    return JsonResponse({"id": device.pk, "uuid": device.uuid, "api_key": api_key}, status=201)


# --- GET /device/v3/<uuid>/state: the heartbeat ------------------------------------------------


def target_config(device: Device) -> dict[str, str]:
    """The supervisor configuration a device is told; balena sends every value as a string."""
    return config_for(device.effective_poll_interval, device.effective_cloudlink)


def config_for(poll_interval: int, cloudlink: bool) -> dict[str, str]:
    """target_config from the effective values (the cached fast path has no Device to ask)."""
    return {
        # The device polls at this rate, which is what its heartbeat window is measured against.
        "BALENA_SUPERVISOR_POLL_INTERVAL": str(poll_interval * 1000),
        "BALENA_SUPERVISOR_VPN_CONTROL": "true" if cloudlink else "false",
        "BALENA_SUPERVISOR_CONNECTIVITY_CHECK": "true",
        "BALENA_SUPERVISOR_INSTANT_UPDATE_TRIGGER": "true",
        "BALENA_SUPERVISOR_LOCAL_MODE": "false",
        "BALENA_SUPERVISOR_PERSISTENT_LOGGING": "false",
    }


@endpoint("GET")
def target_state(request: HttpRequest, uuid: str) -> HttpResponse:
    key = bearer_key(request)
    reports.device_uuid(uuid, "uuid")
    # A steady-state fetch never gets here: devices.fastpath answers it from the device cache
    # (devices/devcache.py). This is the database path: a cache miss, a heartbeat that is not
    # online in Redis or late, no Redis. The one query when the heartbeat is on time: the device
    # with its fleet (for interval and cloudlink).
    try:
        device = Device.objects.select_related("fleet").get(uuid=uuid)
    except Device.DoesNotExist:
        key_matches(key, _NO_HASH)
        return error(401, WRONG_DEVICE_KEY)
    if not key_matches(key, device.api_key_hash):
        return error(401, WRONG_DEVICE_KEY)
    # Generations the fast path read before this database read: the fill is refused if a change
    # was committed in between (devcache's race guard).
    devcache.fill(device, request.META.get(devcache.GENERATIONS_META), timezone.now())
    if device.is_frozen:
        # Frozen devices are not managed: no target state, and the fetch does not count.
        return HttpResponse(status=304)
    device = heartbeats.record_fetch(device, at=timezone.now(), store_failed=devcache.STORE_FAILED_META in request.META)
    if device.is_frozen:
        # This fetch reactivated an inactive device beyond the organization's allowance.
        return HttpResponse(status=304)
    # fleetstatus does not deploy releases; an empty apps object is balena's "no apps assigned".
    count_heartbeats()
    return JsonResponse({device.uuid: {"name": device.name, "config": target_config(device), "apps": {}}})


# --- PATCH /device/v3/state: state reports ----------------------------------------------------


@endpoint("PATCH")
def state_report(request: HttpRequest) -> HttpResponse:
    key = bearer_key(request)
    body = reports.split_state_body(read_json(request, REPORT_MAX_BYTES))
    if len(body) == 1:
        # The usual report: one query reads the device's key hash together with everything the
        # write is decided on, and a report that leaves the status alone is one UPDATE
        # (services.apply_state_report). Anything else (unknown UUID, wrong key) is decided below.
        ((uuid, report),) = body.items()
        snapshot = services.state_report_snapshot(uuid)
        if snapshot is not None and key_matches(key, snapshot["api_key_hash"]):
            changes = reports.parse_state_report(report)
            now = timezone.now()
            # A report is contact ("last seen") but not a heartbeat, and does not reactivate (DESIGN.md §2.2).
            changes.update(last_state_report_at=now, last_seen_at=now)
            try:
                services.apply_state_report(snapshot, changes, at=now)
            except Device.DoesNotExist:
                return error(401, WRONG_DEVICE_KEY)
            count_state_reports()
            return JsonResponse({})
    named = Device.objects.filter(uuid__in=list(body)).order_by().only("pk", "uuid", "api_key_hash")
    own = [d for d in named if key_matches(key, d.api_key_hash)]
    if not own:
        # An authenticated device naming only other devices is forbidden (403); a key that belongs
        # to no device at all is unauthenticated (401). Lookup by hash uses the api_key_hash index.
        if Device.objects.filter(api_key_hash=hash_key(key)).exists():
            return error(403, "A device may only report its own state.", uuids=sorted(body))
        return error(401, WRONG_DEVICE_KEY)
    if len(own) > 1 or len(body) > 1:
        others = sorted(set(body) - {own[0].uuid})
        return error(403, "A device may only report its own state.", uuids=others)
    device = own[0]
    changes = reports.parse_state_report(body[device.uuid])
    now = timezone.now()
    # A report is contact ("last seen") but not a heartbeat, and does not reactivate (DESIGN.md §2.2).
    changes.update(last_state_report_at=now, last_seen_at=now)
    try:
        services.update_device(device.pk, changes, reason="state report", at=now)
    except Device.DoesNotExist:
        return error(401, WRONG_DEVICE_KEY)
    count_state_reports()
    return JsonResponse({})


# --- POST /services/vpn/client-connect|client-disconnect -------------------------------------


def _tunnel_event(request: HttpRequest, connected: bool) -> HttpResponse:
    key = bearer_key(request)
    service_key = ServiceKey.objects.filter(key_hash=hash_key(key)).first()
    if service_key is None or not key_matches(key, service_key.key_hash):
        return error(401, "The service key is not valid.")
    uuids, service_id = reports.parse_tunnel_event(read_json(request, TUNNEL_MAX_BYTES))
    result = services.set_tunnel(uuids, connected, service_id, at=timezone.now())
    return JsonResponse({"matched": result.matched, "reactivated": result.reactivated})


@endpoint("POST")
def vpn_client_connect(request: HttpRequest) -> HttpResponse:
    return _tunnel_event(request, connected=True)


@endpoint("POST")
def vpn_client_disconnect(request: HttpRequest) -> HttpResponse:
    return _tunnel_event(request, connected=False)
