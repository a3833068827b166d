"""Parsing of the device API's requests: the Bearer key, the JSON body and what it must hold.

Each parser returns plain values (for a state report: a dict of Device field changes) or raises
`BadRequest` naming the offending key. Nothing here touches the database, so every rule is
unit-testable, and the views validate a whole body before they write anything (no partial writes).

Compatibility notes: balena agents send more keys than we use (`api_port`, `api_secret`, `cpu_id`,
`is_online`, `name`, `logs_channel`, ...); unknown keys are ignored, never stored. Only a *known*
key with a bad value is an error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from devices.models import UUID_REGEX, Device
from devices.status import UPDATE_STATUS_PRECEDENCE

UUID_RE = re.compile(UUID_REGEX)
# Keys are generated as 64 hex characters; agents that bring their own (balena's supervisor sends
# 32 hex) must send something usable as a Bearer token.
API_KEY_RE = re.compile(r"^[\x21-\x7e]{16,255}$")
BIGINT_MAX = 2**63 - 1
SMALLINT_MAX = 2**15 - 1
INT_MAX = 2**31 - 1
BEARER_RE = re.compile(r"^Bearer +([\x21-\x7e]{1,512}) *$", re.IGNORECASE)

MAX_TUNNEL_UUIDS = 8000
# One key authenticates one device; a body naming more is refused anyway (403), this only bounds
# the lookup an authenticated-looking request can cause.
MAX_REPORT_UUIDS = 20

REPORT_TEXT_FIELDS = (
    "status",
    "os_version",
    "os_variant",
    "supervisor_version",
    "ip_address",
    "mac_address",
    "provisioning_state",
)
# (minimum, maximum). cpu_temp is the one signed metric: a device outdoors in winter is below 0 °C.
REPORT_INT_FIELDS: dict[str, tuple[int, int]] = {
    "provisioning_progress": (0, 100),
    "memory_usage": (0, BIGINT_MAX),
    "memory_total": (0, BIGINT_MAX),
    "storage_usage": (0, BIGINT_MAX),
    "storage_total": (0, BIGINT_MAX),
    "cpu_usage": (0, 100),
    "cpu_temp": (-273, SMALLINT_MAX),
}
REPORT_BOOL_FIELDS = ("is_undervolted",)

SERVICE_DOWNLOADING = "downloading"  # balena's service status "Downloading", compared case-insensitively


class BadRequest(ValueError):
    """A request the API refuses: status code, message and (when one key is to blame) its path."""

    def __init__(self, message: str, field: str | None = None, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


# --- The request -------------------------------------------------------------------------------


def bearer_token(header: str | None) -> str:
    """The key of an `Authorization: Bearer <key>` header; a missing or malformed header is a 401."""
    if not header:
        raise BadRequest("Authorization: Bearer <key> is required.", status=401)
    match = BEARER_RE.match(header)
    if not match:
        raise BadRequest("The Authorization header must be 'Bearer <key>'.", status=401)
    return match.group(1)


def read_json(request: HttpRequest, max_bytes: int) -> Any:
    """The request's JSON body; a body over `max_bytes` is a 413 whether declared or sent."""
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
    return parse_json(body)


# --- Primitives --------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON and no column can hold.
    raise BadRequest(f"The body is not valid JSON: {name} is not a JSON value.")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest("The body is not valid JSON: nested too deeply.") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integer literals
        raise BadRequest(f"The body is not valid JSON: {exc}") from None


def _path(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{field or 'The body'} must be a JSON object.", field or None)
    return value


def text(value: Any, field: str, max_length: int, *, nullable: bool = True) -> str:
    """A string column: None becomes "" (agents send null for unknown values such as os_variant)."""
    if value is None and nullable:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string.", field)
    if len(value) > max_length:
        raise BadRequest(f"{field} is longer than {max_length} characters.", field)
    # PostgreSQL text cannot hold NUL, and a lone surrogate (legal in JSON escapes) cannot be encoded.
    if "\x00" in value:
        raise BadRequest(f"{field} contains a NUL character.", field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{field} is not valid Unicode text.", field) from None
    return value


def integer(value: Any, field: str, minimum: int, maximum: int, *, nullable: bool = True) -> int | None:
    if value is None and nullable:
        return None
    # bool is an int in Python, but true is not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{field} must be a number.", field)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(f"{field} must be a finite number.", field)
        value = round(value)
    if not minimum <= value <= maximum:
        raise BadRequest(f"{field} must be between {minimum} and {maximum}, got {value}.", field)
    return int(value)


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{field} must be true or false.", field)
    return value


def device_uuid(value: Any, field: str) -> str:
    if not isinstance(value, str) or not UUID_RE.match(value):
        # The field may be the offending key itself (a state report is keyed by UUID): keep it short.
        field = field if len(field) <= 80 else f"{field[:77]}..."
        raise BadRequest(f"{field} is not a device UUID (32 or 62 lowercase hexadecimal characters).", field)
    return value


def _max_length(name: str) -> int:
    return Device._meta.get_field(name).max_length


# --- POST /device/register --------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    uuid: str
    device_type: str
    api_key: str | None


def parse_registration(body: Any) -> Registration:
    data = _object(body, "")
    if "uuid" not in data:
        raise BadRequest("uuid is required.", "uuid")
    uuid = device_uuid(data["uuid"], "uuid")
    device_type = text(data.get("device_type"), "device_type", _max_length("device_type"))
    api_key = data.get("api_key")
    if api_key is not None and (not isinstance(api_key, str) or not API_KEY_RE.match(api_key)):
        raise BadRequest("api_key must be 16 to 255 printable ASCII characters without spaces.", "api_key")
    return Registration(uuid=uuid, device_type=device_type, api_key=api_key)


# --- PATCH /device/v3/state -------------------------------------------------------------------


def split_state_body(body: Any) -> dict[str, Any]:
    """The top level of a state report: {<uuid>: <report>, ...}, checked before authorization."""
    data = _object(body, "")
    if not data:
        raise BadRequest('The body must name the reporting device\'s UUID: {"<uuid>": {...}}.')
    if len(data) > MAX_REPORT_UUIDS:
        raise BadRequest(f"A state report may name at most {MAX_REPORT_UUIDS} devices.")
    for key in data:
        device_uuid(key, key)
    return data


def parse_state_report(report: Any) -> dict[str, Any]:
    """One device's report (the value under its UUID) → the Device field changes it asks for.

    Every key is optional: agents send only what changed since their last report.
    """
    if not isinstance(report, dict):
        raise BadRequest('A device\'s report must be a JSON object: {"<uuid>": {"status": ...}}.')
    data = report
    changes: dict[str, Any] = {}
    for name in REPORT_TEXT_FIELDS:
        if name in data:
            changes[name] = text(data[name], name, _max_length(name))
    for name, (minimum, maximum) in REPORT_INT_FIELDS.items():
        if name in data:
            changes[name] = integer(data[name], name, minimum, maximum)
    for name in REPORT_BOOL_FIELDS:
        if name in data:
            changes[name] = boolean(data[name], name)
    if "apps" in data:
        changes.update(summarize_apps(data["apps"]))
    return changes


def summarize_apps(apps: Any, field: str = "apps") -> dict[str, Any]:
    """Reduce apps → releases → services to the device's update_status, download_progress and release.

    `apps`, when sent, is the agent's whole picture of its applications, so the update status is
    recomputed from it: the lowest precedence across releases wins (rejected < aborted <
    downloading < downloaded < applying changes < done), and a service reporting status
    Downloading with a progress makes the device downloading with the mean of those progresses.
    No release with an update status and nothing downloading means no update in progress (None).
    The release is the first app's `release_uuid` (left unchanged when no app names one yet, e.g.
    during a first install).
    """
    apps = _object(apps, field)
    statuses: list[str] = []
    progresses: list[int] = []
    release: str | None = None
    for app_key, app in apps.items():
        app_field = _path(field, app_key)
        app = _object(app, app_field)
        if app.get("release_uuid") is not None:
            release_uuid = text(app["release_uuid"], _path(app_field, "release_uuid"), _max_length("release"))
            if release is None:
                release = release_uuid
        releases = _object(app.get("releases", {}), _path(app_field, "releases"))
        for commit, rel in releases.items():
            rel_field = _path(_path(app_field, "releases"), commit)
            rel = _object(rel, rel_field)
            update_status = rel.get("update_status")
            if update_status is not None:
                if update_status not in UPDATE_STATUS_PRECEDENCE:
                    choices = ", ".join(UPDATE_STATUS_PRECEDENCE)
                    raise BadRequest(
                        f"{rel_field}.update_status must be one of: {choices}.", f"{rel_field}.update_status"
                    )
                statuses.append(update_status)
            services = _object(rel.get("services", {}), _path(rel_field, "services"))
            for name, service in services.items():
                svc_field = _path(_path(rel_field, "services"), name)
                service = _object(service, svc_field)
                text(service.get("image"), _path(svc_field, "image"), 1024)
                status = text(service.get("status"), _path(svc_field, "status"), 64)
                progress = integer(service.get("download_progress"), _path(svc_field, "download_progress"), 0, 100)
                if status.lower() == SERVICE_DOWNLOADING and progress is not None:
                    progresses.append(progress)
    if progresses:
        statuses.append(SERVICE_DOWNLOADING)
    changes: dict[str, Any] = {
        "update_status": min(statuses, key=UPDATE_STATUS_PRECEDENCE.index) if statuses else None,
        "download_progress": sum(progresses) // len(progresses) if progresses else None,
    }
    if release is not None:
        changes["release"] = release
    return changes


# --- POST /services/vpn/client-connect|client-disconnect ---------------------------------------


def parse_tunnel_event(body: Any) -> tuple[list[str], int]:
    data = _object(body, "")
    if "uuids" not in data:
        raise BadRequest("uuids is required.", "uuids")
    if "serviceId" not in data:
        raise BadRequest("serviceId is required.", "serviceId")
    uuids = data["uuids"]
    if not isinstance(uuids, list):
        raise BadRequest("uuids must be a list of device UUIDs.", "uuids")
    if len(uuids) > MAX_TUNNEL_UUIDS:
        raise BadRequest(f"uuids may hold at most {MAX_TUNNEL_UUIDS} UUIDs per call, got {len(uuids)}.", "uuids")
    for index, value in enumerate(uuids):
        device_uuid(value, f"uuids[{index}]")
    if isinstance(data["serviceId"], float):
        raise BadRequest("serviceId must be an integer.", "serviceId")
    service_id = integer(data["serviceId"], "serviceId", 0, INT_MAX, nullable=False)
    assert service_id is not None
    return uuids, service_id
