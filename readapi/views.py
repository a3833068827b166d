"""/api/v1/: the devices, one device with why it has its status, its history, and the fleets.

Every answer is read through the Devices page's own query code (devices/queries.py,
devices/summary.py, fleets/counts.py), so a script sees exactly what the pages show for the same
query string. Errors are JSON objects {"error": "..."}; another organization's device or fleet is
a 404, exactly as on the pages.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from django.core import signing
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from devices.api.errors import error
from devices.models import UUID_REGEX, Device
from devices.queries import STATUS_SLUGS, device_status_counts, device_tags, fleet_status_counts, scoped_devices
from devices.status import Status
from devices.summary import explain, history
from fleets.models import Fleet
from readapi.auth import api_view
from readapi.queries import (
    BadQuery,
    NotFound,
    check_params,
    device_page,
    parse_limit,
    single,
    strict_device_query,
)

UUID_PATH_RE = re.compile(UUID_REGEX)
HEARTBEAT = {"online": "online", "offline": "offline", "unknown": "never"}
LIST_FIELDS = (
    "uuid",
    "name",
    "organization_id",
    "fleet__slug",
    "device_type",
    "overall_status",
    "status_changed_at",
    "last_seen_at",
    "api_heartbeat_state",
    "is_connected_to_vpn",
    "os_version",
    "release",
    "ip_address",
)
HISTORY_PARAMS = frozenset({"limit", "cursor", "since"})
HISTORY_CURSOR_SALT = "readapi.history"


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def device_json(row: dict[str, Any], org_slugs: dict[int, str], tags: dict[str, str]) -> dict[str, Any]:
    return {
        "uuid": row["uuid"],
        "name": row["name"],
        "organization": org_slugs[row["organization_id"]],
        "fleet": row["fleet__slug"],
        "device_type": row["device_type"],
        "status": row["overall_status"],
        "status_changed_at": _time(row["status_changed_at"]),
        "last_seen": _time(row["last_seen_at"]),
        "heartbeat": HEARTBEAT[row["api_heartbeat_state"]],
        "cloudlink": row["is_connected_to_vpn"],
        "os_version": row["os_version"],
        "release": row["release"],
        "ip_addresses": row["ip_address"].split(),
        "tags": tags,
    }


def next_url(request: HttpRequest, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    params = request.GET.copy()
    params["cursor"] = cursor
    return f"{request.build_absolute_uri(request.path)}?{params.urlencode()}"


def bad_request(exc: BadQuery) -> JsonResponse:
    return error(400, str(exc))


@api_view
def device_list(request: HttpRequest) -> HttpResponse:
    organizations = request.api.organizations
    try:
        query = strict_device_query(request.GET, organizations)
        limit = parse_limit(request.GET)
        page = device_page(organizations, query, LIST_FIELDS, limit, single(request.GET, "cursor"))
    except BadQuery as exc:
        return bad_request(exc)
    except NotFound as exc:
        return error(404, str(exc))
    # As on the page: counts honour every filter but the status one; count is the filtered set's size.
    counts = device_status_counts(organizations, query)
    shown = query.statuses or STATUS_SLUGS
    slugs = {o.pk: o.slug for o in organizations}
    tags = device_tags(row["pk"] for row in page.rows)  # the page's tags in one query
    return JsonResponse(
        {
            "count": sum(counts[s] for s in shown),
            "counts": counts,
            "results": [device_json(row, slugs, tags.get(row["pk"], {})) for row in page.rows],
            "next": next_url(request, page.next_cursor),
        }
    )


def _device(request: HttpRequest, uuid: str) -> Device | None:
    uuid = uuid.lower()
    if not UUID_PATH_RE.match(uuid):
        return None
    return scoped_devices(request.api.organizations).select_related("fleet", "organization").filter(uuid=uuid).first()


def _not_found(uuid: str) -> JsonResponse:
    return error(404, f"No device {uuid[:70]!r} in your organizations.")


@api_view
def device_detail(request: HttpRequest, uuid: str) -> HttpResponse:
    try:
        check_params(request.GET, frozenset())
    except BadQuery as exc:
        return bad_request(exc)
    device = _device(request, uuid)
    if device is None:
        return _not_found(uuid)
    now = timezone.now()
    why = explain(device, now)
    row = {name: getattr(device, name) for name in LIST_FIELDS if name != "fleet__slug"}
    row["fleet__slug"] = device.fleet.slug
    tags = device_tags([device.pk]).get(device.pk, {})
    body = device_json(row, {device.organization_id: device.organization.slug}, tags)
    body.update(
        {
            "is_active": device.is_active,
            "is_frozen": device.is_frozen,
            "frozen_reason": device.frozen_reason,
            "last_heartbeat_at": _time(device.last_api_heartbeat_at),
            "cloudlink_enabled": device.effective_cloudlink,
            "why": {
                "rule": why.rule,
                "reason": why.reason,
                "meaning": why.meaning,
                "computed_status": why.computed.value,
                "heartbeat_interval_seconds": why.heartbeat_interval,
                "heartbeat_deadline": _time(why.heartbeat_deadline),
                "deadline_passed": why.deadline_passed,
                "after_deadline": why.after_expiry.value if why.after_expiry else None,
                "if_nothing_arrives": why.offline_prediction,
                "signals": [
                    {
                        "name": s.name,
                        "value": s.value,
                        "detail": s.detail,
                        "ok": s.ok,
                        "times": {k: _time(v) for k, v in s.times.items()},
                    }
                    for s in why.signals
                ],
            },
        }
    )
    return JsonResponse(body)


@api_view
def device_history(request: HttpRequest, uuid: str) -> HttpResponse:
    params = request.GET
    try:
        check_params(params, HISTORY_PARAMS)
        limit = parse_limit(params)
        since = _since(single(params, "since"))
        cursor = single(params, "cursor")
        before = None
        if cursor:
            try:
                before = signing.loads(cursor, salt=HISTORY_CURSOR_SALT)
            except signing.BadSignature as exc:
                raise BadQuery(f"cursor {cursor[:40]!r} is not a cursor this API issued.") from exc
            if not isinstance(before, int) or isinstance(before, bool):
                raise BadQuery("Malformed cursor.")
    except BadQuery as exc:
        return bad_request(exc)
    device = _device(request, uuid)
    if device is None:
        return _not_found(uuid)
    page = history(device, timezone.now(), limit=limit, before=before)
    if page is None:
        return error(400, "This cursor does not belong to this device's history.")
    rows, more = page
    if since is not None and rows and rows[-1].transition.at < since:
        rows, more = [r for r in rows if r.transition.at >= since], False
    results = [
        {
            "from": r.transition.from_status or None,
            "to": r.transition.to_status,
            "at": _time(r.transition.at),
            "reason": r.transition.reason,
            "lasted_seconds": round(r.duration.total_seconds(), 3),
            "ongoing": r.ongoing,
        }
        for r in rows
    ]
    next_cursor = signing.dumps(rows[-1].transition.pk, salt=HISTORY_CURSOR_SALT) if more else None
    return JsonResponse({"uuid": device.uuid, "results": results, "next": next_url(request, next_cursor)})


def _since(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise BadQuery(f"since {value[:40]!r} is not an ISO 8601 time (e.g. 2026-01-31T12:00:00Z).")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, timezone.UTC)


@api_view
def fleet_list(request: HttpRequest) -> HttpResponse:
    try:
        check_params(request.GET, frozenset())
    except BadQuery as exc:
        return bad_request(exc)
    organizations = request.api.organizations
    counts = fleet_status_counts(organizations)
    zero = dict.fromkeys(STATUS_SLUGS, 0)
    org_counts = {o.pk: dict(zero) for o in organizations}
    fleets = []
    slugs = {o.pk: o.slug for o in organizations}
    rows = (
        Fleet.objects.filter(organization__in=organizations)
        .order_by("organization__name", "name", "pk")
        .values_list("pk", "organization_id", "slug", "name", "device_type", "fleet_type", "cloudlink_enabled")
    )
    for pk, org_id, slug, name, device_type, fleet_type, cloudlink in rows:
        fleet_counts = counts.get(pk) or dict(zero)
        for status, n in fleet_counts.items():
            org_counts[org_id][status] += n
        fleets.append(
            {
                "organization": slugs[org_id],
                "slug": slug,
                "name": name,
                "device_type": device_type,
                "fleet_type": fleet_type,
                "cloudlink_enabled": cloudlink,
                "total": sum(fleet_counts.values()),
                "counts": fleet_counts,
            }
        )
    orgs = []
    for org in organizations:
        c = org_counts[org.pk]
        total = sum(c.values())
        # As on the Fleets page: inactive devices do not count toward the allowance; frozen ones do.
        active = total - c[Status.INACTIVE]
        orgs.append(
            {
                "slug": org.slug,
                "name": org.name,
                "tier": org.tier,
                "device_allowance": org.device_allowance,
                "total": total,
                "active": active,
                "frozen": c[Status.FROZEN],
                "over_allowance": org.device_allowance is not None and active > org.device_allowance,
                "counts": c,
            }
        )
    return JsonResponse({"organizations": orgs, "fleets": fleets})
