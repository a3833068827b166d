"""The device-facing HTTP API's views: balena-compatible auth and bodies (docs/design.md, Device API).

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

from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from devices import services
from devices.api import parsing
from devices.api.config import target_state_body_of
from devices.api.errors import error
from devices.api.parsing import BadRequest
from devices.live import devcache, heartbeats
from devices.models import Device
from fleets.keys import hash_key, key_matches
from fleets.models import Fleet, ServiceKey
from fleetstatus.metrics import count_heartbeats, count_state_reports

# Body limits per endpoint. A client-connect for 8,000 UUIDs of 62 characters is about 520 kB.
REGISTER_MAX_BYTES = 16 * 1024
REPORT_MAX_BYTES = 256 * 1024
TUNNEL_MAX_BYTES = 1024 * 1024

# Compared against when the device is unknown, so that path costs the same as a wrong key.
_NO_HASH = hash_key("no such device")

WRONG_DEVICE_KEY = "The API key is not valid for this device."


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
    return parsing.bearer_token(request.headers.get("Authorization"))


# --- POST /device/register ------------------------------------------------------------------


@endpoint("POST")
def register(request: HttpRequest) -> HttpResponse:
    key = bearer_key(request)
    # Indexed lookup by hash, then a constant-time comparison of the hashes.
    fleet = Fleet.objects.filter(provisioning_key_hash=hash_key(key)).order_by("pk").first()
    if fleet is None or not key_matches(key, fleet.provisioning_key_hash):
        return error(401, "The provisioning key is not valid.")
    data = parsing.parse_registration(parsing.read_json(request, REGISTER_MAX_BYTES))
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


@endpoint("GET")
def target_state(request: HttpRequest, uuid: str) -> HttpResponse:
    key = bearer_key(request)
    parsing.device_uuid(uuid, "uuid")
    # A steady-state fetch through the WSGI entry point never gets here: the edge
    # (devices/api/edge.py) answers it from the device cache. This is the database path: a cache
    # miss, a heartbeat that is not online in Redis or late, no Redis. The one query when the
    # heartbeat is on time: the device with its fleet (for interval and cloudlink).
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
    body = target_state_body_of(device.uuid, device.name, device.effective_poll_interval, device.effective_cloudlink)
    count_heartbeats()
    return HttpResponse(body, content_type="application/json")


# --- PATCH /device/v3/state: state reports ----------------------------------------------------


def _report_changes(report: Any) -> tuple[dict[str, Any], datetime]:
    """The Device changes a device's report asks for, and the moment they take effect."""
    changes = parsing.parse_state_report(report)
    now = timezone.now()
    # A report is contact ("last seen") but not a heartbeat, and does not reactivate (docs/design.md, Statuses).
    changes.update(last_state_report_at=now, last_seen_at=now)
    return changes, now


@endpoint("PATCH")
def state_report(request: HttpRequest) -> HttpResponse:
    key = bearer_key(request)
    body = parsing.split_state_body(parsing.read_json(request, REPORT_MAX_BYTES))
    if len(body) == 1:
        ((uuid, report),) = body.items()
        try:
            changes, now = _report_changes(report)
        except BadRequest:
            changes = None  # refused below, once the key is known to be this device's
        # The usual report leaves the status alone: ONE statement finds the device by UUID and key
        # and writes it (services.store_state_report). Otherwise one query reads the device's key
        # hash with everything the write is decided on (services.apply_state_report), and anything
        # else (unknown UUID, wrong key) is decided below.
        if changes is not None and services.store_state_report(uuid, key, changes, at=now):
            count_state_reports()
            return JsonResponse({})
        snapshot = services.state_report_snapshot(uuid)
        if snapshot is not None and key_matches(key, snapshot["api_key_hash"]):
            if changes is None:
                changes, now = _report_changes(report)
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
    changes, now = _report_changes(body[device.uuid])
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
    uuids, service_id = parsing.parse_tunnel_event(parsing.read_json(request, TUNNEL_MAX_BYTES))
    result = services.set_tunnel(uuids, connected, service_id, at=timezone.now())
    return JsonResponse({"matched": result.matched, "reactivated": result.reactivated})


@endpoint("POST")
def vpn_client_connect(request: HttpRequest) -> HttpResponse:
    return _tunnel_event(request, connected=True)


@endpoint("POST")
def vpn_client_disconnect(request: HttpRequest) -> HttpResponse:
    return _tunnel_event(request, connected=False)
