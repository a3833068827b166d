"""OpenAPI 3 description of the read API, served at /api/v1/openapi.json.

Hand-maintained beside the views, as the device API's document is (devices/api/openapi.py): the
constraints come from the same constants the views check, and tests/test_readapi_fuzz.py drives
schemathesis from this document, so a request it calls valid must be answered 2xx (or 404 for
a device or fleet the token cannot see).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from devices.models import TAG_KEY_REGEX, TAG_VALUE_MAX_LENGTH, UUID_REGEX
from devices.queries import FLEET_PARAM_RE, MAX_SEARCH_LENGTH, MAX_TAG_FILTERS, STATUS_SLUGS, UPDATE_STATUS_VALUES
from readapi.queries import API_SORTS, DEFAULT_LIMIT, MAX_LIMIT

API_VERSION = "1.0.0"
NO_NUL = "^[^\\x00]*$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


ERRORS = {
    "400": _error("A parameter the API does not accept; the body names it."),
    "401": _error("Missing, malformed, unknown or revoked token."),
    "429": {
        **_error("The token's request budget is used up; retry after Retry-After seconds."),
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    },
}
NOT_FOUND = {"404": _error("No such device or fleet in your organizations.")}

TIME = {"type": "string", "format": "date-time", "nullable": True}
COUNTS = {
    "type": "object",
    "description": "Devices per status, every status present.",
    "properties": {s: {"type": "integer", "minimum": 0} for s in STATUS_SLUGS},
    "required": list(STATUS_SLUGS),
}
STATUS = {"type": "string", "enum": list(STATUS_SLUGS)}
UUID_PARAM = {
    "name": "uuid",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": UUID_REGEX, "example": "0123456789abcdef0123456789abcdef"},
}
LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
}
CURSOR = {
    "name": "cursor",
    "in": "query",
    "description": "Opaque: copy it from the previous page's `next` URL.",
    "schema": {"type": "string", "pattern": NO_NUL},
}

DEVICE_PROPERTIES: dict[str, Any] = {
    "uuid": {"type": "string"},
    "name": {"type": "string"},
    "organization": {"type": "string", "description": "Organization slug."},
    "fleet": {"type": "string", "description": "Fleet slug (unique within its organization)."},
    "device_type": {"type": "string"},
    "status": STATUS,
    "status_changed_at": TIME,
    "last_seen": TIME,
    "heartbeat": {"type": "string", "enum": ["online", "offline", "never"]},
    "cloudlink": {"type": "boolean", "description": "Whether the cloudlink tunnel is connected."},
    "os_version": {"type": "string"},
    "release": {"type": "string"},
    "ip_addresses": {"type": "array", "items": {"type": "string"}},
    "tags": {
        "type": "object",
        "description": 'The device\'s tags, key to value (e.g. {"location": "gate-b"}); {} when it has none.',
        "additionalProperties": {"type": "string", "maxLength": TAG_VALUE_MAX_LENGTH},
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
    "Counts": COUNTS,
    "Device": {"type": "object", "properties": DEVICE_PROPERTIES, "required": list(DEVICE_PROPERTIES)},
    "DeviceList": {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "description": "Devices matching every filter (all pages)."},
            "counts": {**_ref("Counts"), "description": "Per status, with every filter but `status` applied."},
            "results": {"type": "array", "items": _ref("Device")},
            "next": {"type": "string", "nullable": True, "description": "URL of the next page; null on the last."},
        },
        "required": ["count", "counts", "results", "next"],
    },
    "Signal": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "value": {"type": "string"},
            "detail": {"type": "string"},
            "ok": {"type": "boolean", "nullable": True, "description": "false: this signal pulls the status down."},
            "times": {"type": "object", "additionalProperties": TIME},
        },
        "required": ["name", "value", "detail", "ok", "times"],
    },
    "DeviceDetail": {
        "allOf": [
            _ref("Device"),
            {
                "type": "object",
                "properties": {
                    "is_active": {"type": "boolean"},
                    "is_frozen": {"type": "boolean"},
                    "frozen_reason": {"type": "string"},
                    "last_heartbeat_at": TIME,
                    "cloudlink_enabled": {"type": "boolean"},
                    "why": {
                        "type": "object",
                        "description": "The Device Summary's explanation: the first rule of the status rule that matched.",
                        "properties": {
                            "rule": {"type": "integer", "minimum": 1},
                            "reason": {"type": "string"},
                            "meaning": {"type": "string"},
                            "computed_status": STATUS,
                            "heartbeat_interval_seconds": {"type": "integer"},
                            "heartbeat_deadline": TIME,
                            "deadline_passed": {"type": "boolean"},
                            "after_deadline": {**STATUS, "nullable": True},
                            "if_nothing_arrives": {"type": "string"},
                            "signals": {"type": "array", "items": _ref("Signal")},
                        },
                        "required": [
                            "rule",
                            "reason",
                            "computed_status",
                            "heartbeat_deadline",
                            "after_deadline",
                            "signals",
                        ],
                    },
                },
                "required": ["is_active", "is_frozen", "why"],
            },
        ]
    },
    "History": {
        "type": "object",
        "properties": {
            "uuid": {"type": "string"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "from": {**STATUS, "nullable": True, "description": "null for the device's first status."},
                        "to": STATUS,
                        "at": {"type": "string", "format": "date-time"},
                        "reason": {"type": "string"},
                        "lasted_seconds": {"type": "number", "minimum": 0},
                        "ongoing": {"type": "boolean"},
                    },
                    "required": ["from", "to", "at", "reason", "lasted_seconds", "ongoing"],
                },
            },
            "next": {"type": "string", "nullable": True},
        },
        "required": ["uuid", "results", "next"],
    },
    "Fleets": {
        "type": "object",
        "properties": {
            "organizations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "slug": {"type": "string"},
                        "name": {"type": "string"},
                        "tier": {"type": "string"},
                        "device_allowance": {"type": "integer", "nullable": True},
                        "total": {"type": "integer"},
                        "active": {"type": "integer", "description": "Devices counted toward the allowance."},
                        "frozen": {"type": "integer"},
                        "over_allowance": {"type": "boolean"},
                        "counts": _ref("Counts"),
                    },
                    "required": ["slug", "device_allowance", "total", "active", "frozen", "over_allowance", "counts"],
                },
            },
            "fleets": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "organization": {"type": "string"},
                        "slug": {"type": "string"},
                        "name": {"type": "string"},
                        "device_type": {"type": "string"},
                        "fleet_type": {"type": "string"},
                        "cloudlink_enabled": {"type": "boolean"},
                        "total": {"type": "integer"},
                        "counts": _ref("Counts"),
                    },
                    "required": ["organization", "slug", "total", "counts"],
                },
            },
        },
        "required": ["organizations", "fleets"],
    },
}

# The pattern shows the printable ASCII subset of a value; any printable Unicode is accepted.
TAG_FILTER = {
    "type": "string",
    # The filter is stripped before it is read: a value is 1 to 200 characters ending in a non-space.
    "pattern": f"{TAG_KEY_REGEX.removesuffix('$')}:[ -~]{{0,{TAG_VALUE_MAX_LENGTH - 1}}}[!-~]$",
}
SORT_VALUES = [*API_SORTS, *(f"-{key}" for key in API_SORTS)]


def build_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "fleetstatus read API",
            "version": API_VERSION,
            "description": "Statuses for scripts and dashboards. Authenticate with `Authorization: Bearer <token>` "
            "(tokens are created on the API tokens page or with `manage.py create_api_token`).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/api/v1/devices": {
                "get": {
                    "operationId": "listDevices",
                    "summary": "Devices, with the Devices page's filters, a cursor and counts per status",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "style": "form",
                            "explode": True,
                            "schema": {"type": "array", "items": STATUS},
                        },
                        {
                            "name": "fleet",
                            "in": "query",
                            "schema": {"type": "string", "pattern": FLEET_PARAM_RE.pattern},
                        },
                        {
                            "name": "q",
                            "in": "query",
                            "description": "Name contains, UUID starts with, or IP address contains.",
                            "schema": {"type": "string", "maxLength": MAX_SEARCH_LENGTH, "pattern": NO_NUL},
                        },
                        {
                            "name": "tag",
                            "in": "query",
                            "description": (
                                "key:value; repeatable, a device must have every tag given. The key matches "
                                f"{TAG_KEY_REGEX}, the value is 1 to {TAG_VALUE_MAX_LENGTH} printable characters. "
                                "A malformed tag is a 400 naming it."
                            ),
                            "style": "form",
                            "explode": True,
                            "schema": {"type": "array", "maxItems": MAX_TAG_FILTERS, "items": TAG_FILTER},
                        },
                        {
                            "name": "update_status",
                            "in": "query",
                            "description": "Repeatable (any of them); _ or - may stand for the space.",
                            "style": "form",
                            "explode": True,
                            "schema": {
                                "type": "array",
                                "items": {"type": "string", "enum": list(UPDATE_STATUS_VALUES)},
                            },
                        },
                        {"name": "sort", "in": "query", "schema": {"type": "string", "enum": SORT_VALUES}},
                        LIMIT,
                        CURSOR,
                    ],
                    "responses": {"200": _ok("DeviceList", "A page of devices."), **ERRORS, **NOT_FOUND},
                }
            },
            "/api/v1/devices/{uuid}": {
                "get": {
                    "operationId": "getDevice",
                    "summary": "One device, with why it has its status",
                    "parameters": [UUID_PARAM],
                    "responses": {"200": _ok("DeviceDetail", "The device."), **ERRORS, **NOT_FOUND},
                }
            },
            "/api/v1/devices/{uuid}/history": {
                "get": {
                    "operationId": "getDeviceHistory",
                    "summary": "Status changes, newest first",
                    "parameters": [
                        UUID_PARAM,
                        LIMIT,
                        CURSOR,
                        {
                            "name": "since",
                            "in": "query",
                            "description": "Only changes at or after this time.",
                            "schema": {"type": "string", "format": "date-time"},
                        },
                    ],
                    "responses": {"200": _ok("History", "A page of status changes."), **ERRORS, **NOT_FOUND},
                }
            },
            "/api/v1/fleets": {
                "get": {
                    "operationId": "listFleets",
                    "summary": "Counts per status of every fleet, and each organization's allowance figures",
                    "responses": {"200": _ok("Fleets", "Every fleet of your organizations."), **ERRORS},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {**SCHEMAS, **WEBHOOK_SCHEMAS},
        },
    }


# What notification channels POST to webhook targets (OpenAPI 3.0 has no "webhooks" object, so
# the bodies are described as schemas; docs/notifications.md has the headers and the signature).
_TIME = {"type": "string", "format": "date-time"}
WEBHOOK_SCHEMAS: dict[str, Any] = {
    "WebhookDevicesStatusChanged": {
        "type": "object",
        "description": "Webhook body of a group of device status changes. Signed: X-Fleetstatus-Signature-256 "
        "is sha256=<hex HMAC-SHA256 of the raw body with the channel's secret>; X-Fleetstatus-Delivery is the "
        "same on every attempt of one message.",
        "properties": {
            "event": {"type": "string", "enum": ["devices.status_changed"]},
            "organization": {"type": "string"},
            "channel": {"type": "string"},
            "sent_at": _TIME,
            "changes": {
                "type": "array",
                "maxItems": 1000,
                "items": {
                    "type": "object",
                    "properties": {
                        "uuid": {"type": "string"},
                        "name": {"type": "string"},
                        "fleet": {"type": "string"},
                        "from": {"type": "string"},
                        "to": STATUS,
                        "at": _TIME,
                    },
                    "required": ["uuid", "name", "fleet", "from", "to", "at"],
                },
            },
        },
        "required": ["event", "organization", "channel", "sent_at", "changes"],
    },
    "WebhookFleetEvent": {
        "type": "object",
        "description": "Webhook body when a fleet crosses a channel's threshold of devices not online, either way.",
        "properties": {
            "event": {"type": "string", "enum": ["fleet.degraded", "fleet.recovered"]},
            "organization": {"type": "string"},
            "fleet": {"type": "string"},
            "not_online": {"type": "integer", "minimum": 0},
            "active": {"type": "integer", "minimum": 0},
            "at": _TIME,
        },
        "required": ["event", "organization", "fleet", "not_online", "active", "at"],
    },
}


@require_safe
def openapi_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(build_document())
