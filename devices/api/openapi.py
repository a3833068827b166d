"""OpenAPI 3 description of the device-facing API, served at /device/openapi.json.

The document is the contract the fuzz tests (tests/reliability/test_fuzz_device_api.py) generate
requests from, so its constraints mirror what the handlers accept: a request the document calls
valid should be accepted, anything else must be a JSON 4xx that changes nothing.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from devices.api import parsing
from devices.api.paths import REGISTER, STATE_REPORT, TARGET_STATE, VPN_CONNECT, VPN_DISCONNECT, openapi_path
from devices.models import UUID_REGEX, Device
from devices.status import UPDATE_STATUS_PRECEDENCE

API_VERSION = "1.0.0"

# Limits come from the validators the handlers use (devices/api/parsing.py) and the model's columns,
# so the document cannot drift from what the API accepts.
NO_NUL = "^[^\\x00]*$"


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _string(max_length: int, description: str = "") -> dict[str, Any]:
    # Agents send null for values they do not know (stored as empty text); PostgreSQL text cannot hold NUL.
    schema: dict[str, Any] = {"type": "string", "maxLength": max_length, "pattern": NO_NUL, "nullable": True}
    if description:
        schema["description"] = description
    return schema


def _column(name: str, description: str = "") -> dict[str, Any]:
    return _string(Device._meta.get_field(name).max_length, description)


def _integer(name: str, description: str) -> dict[str, Any]:
    minimum, maximum = parsing.REPORT_INT_FIELDS[name]
    return {"type": "integer", "minimum": minimum, "maximum": maximum, "nullable": True, "description": description}


def _percent(description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "maximum": 100, "nullable": True, "description": description}


UUID_SCHEMA = {
    "type": "string",
    "pattern": UUID_REGEX,
    "description": "32 or 62 lowercase hexadecimal characters.",
    "example": "0123456789abcdef0123456789abcdef",
}

ERRORS = {
    "400": _error_response(
        "Malformed JSON or a known key with a bad value; the body names the problem. Nothing was changed."
    ),
    "401": _error_response("Missing or malformed Authorization, or a key that is not valid for this resource."),
    "405": _error_response("Another method than the one documented."),
}
TOO_LARGE = {"413": _error_response("The body is larger than this endpoint accepts.")}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Every error of the device API is a JSON object that says what is wrong.",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
        "additionalProperties": True,
    },
    "RegisterRequest": {
        "type": "object",
        "properties": {
            "uuid": UUID_SCHEMA,
            "device_type": _column("device_type", "Device type slug, e.g. raspberrypi4-64; the fleet's when absent."),
            "api_key": {
                "type": "string",
                "pattern": parsing.API_KEY_RE.pattern,
                "nullable": True,
                "description": "The device's API key (16-255 printable ASCII characters); generated when absent.",
            },
        },
        "required": ["uuid"],
        # balena's agents also send `user`, `application` and more: accepted and ignored.
        "additionalProperties": True,
    },
    "RegisterResponse": {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "uuid": UUID_SCHEMA, "api_key": {"type": "string"}},
        "required": ["id", "uuid", "api_key"],
    },
    "TargetState": {
        "type": "object",
        "description": "Keyed by the device UUID.",
        "additionalProperties": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "config": {
                    "type": "object",
                    "description": "Includes BALENA_SUPERVISOR_POLL_INTERVAL: the effective polling interval in milliseconds.",
                    "additionalProperties": {"type": "string"},
                },
                "apps": {"type": "object"},
            },
            "required": ["name", "config", "apps"],
        },
    },
    "ServiceReport": {
        "type": "object",
        "properties": {
            "image": _string(1024),
            "status": _string(64, "e.g. Downloading, Running."),
            "download_progress": _percent("0-100 while downloading."),
        },
        "additionalProperties": True,
    },
    "ReleaseReport": {
        "type": "object",
        "properties": {
            "update_status": {"type": "string", "enum": UPDATE_STATUS_PRECEDENCE, "nullable": True},
            "services": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/ServiceReport"}},
        },
        "additionalProperties": True,
    },
    "AppReport": {
        "type": "object",
        "properties": {
            "release_uuid": _column("release"),
            "releases": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/ReleaseReport"}},
        },
        "additionalProperties": True,
    },
    "DeviceReport": {
        "type": "object",
        "description": "Every key optional (agents send only what changed); unknown keys are accepted and ignored.",
        "properties": {
            "status": _column("status", "What the agent is doing, e.g. Idle, Downloading."),
            "os_version": _column("os_version"),
            "os_variant": _column("os_variant"),
            "supervisor_version": _column("supervisor_version"),
            "ip_address": _column("ip_address", "Every address, space separated."),
            "mac_address": _column("mac_address", "Every address, space separated."),
            "provisioning_state": _column("provisioning_state", "e.g. Post-Provisioning; empty when done."),
            "provisioning_progress": _integer(
                "provisioning_progress", "OS configuration progress; null when not configuring."
            ),
            "memory_usage": _integer("memory_usage", "bytes"),
            "memory_total": _integer("memory_total", "bytes"),
            "storage_usage": _integer("storage_usage", "bytes"),
            "storage_total": _integer("storage_total", "bytes"),
            "cpu_temp": _integer("cpu_temp", "°C"),
            "cpu_usage": _integer("cpu_usage", "percent"),
            "is_undervolted": {"type": "boolean"},
            "apps": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/AppReport"}},
        },
        "additionalProperties": True,
    },
    "StateReport": {
        "type": "object",
        "description": "Keyed by the reporting device's own UUID (the only key); naming another device as well is 403.",
        "additionalProperties": {"$ref": "#/components/schemas/DeviceReport"},
        "minProperties": 1,
        "maxProperties": parsing.MAX_REPORT_UUIDS,
    },
    "TunnelEvent": {
        "type": "object",
        "properties": {
            "uuids": {"type": "array", "items": UUID_SCHEMA, "maxItems": parsing.MAX_TUNNEL_UUIDS},
            "serviceId": {"type": "integer", "minimum": 0, "maximum": parsing.INT_MAX},
        },
        "required": ["uuids", "serviceId"],
        "additionalProperties": True,
    },
}


def _op(
    summary: str, security: str, *, body: str | None = None, responses: dict[str, Any], params: list | None = None
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{security: []}],
        "responses": {**responses, **ERRORS},
    }
    if body:
        op["responses"].update(TOO_LARGE)
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    if params:
        op["parameters"] = params
    return op


def _tunnel(summary: str) -> dict[str, Any]:
    return {
        "post": _op(
            summary,
            "serviceKey",
            body="TunnelEvent",
            responses={
                "200": {
                    "description": "Applied to the known UUIDs; unknown ones are ignored.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        )
    }


def build_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "fleetstatus device API",
            "version": API_VERSION,
            "description": "The balena-compatible endpoints devices and the tunnel server call.",
        },
        "paths": {
            openapi_path(REGISTER): {
                "post": _op(
                    "Register a device in the fleet the provisioning key belongs to",
                    "provisioningKey",
                    body="RegisterRequest",
                    responses={
                        "201": {
                            "description": "Created.",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/RegisterResponse"}}
                            },
                        },
                        "409": _error_response("The UUID is already taken."),
                    },
                )
            },
            openapi_path(TARGET_STATE): {
                "get": _op(
                    "Target state; a counted fetch is the device's heartbeat",
                    "deviceKey",
                    params=[{"name": "uuid", "in": "path", "required": True, "schema": UUID_SCHEMA}],
                    responses={
                        "200": {
                            "description": "The target state.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TargetState"}}},
                        },
                        "304": {"description": "The device is frozen: not managed, and the fetch does not count."},
                    },
                )
            },
            openapi_path(STATE_REPORT): {
                "patch": _op(
                    "Report the device's current state",
                    "deviceKey",
                    body="StateReport",
                    responses={
                        "200": {
                            "description": "Stored.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "403": _error_response(
                            "The key belongs to one device the body names, but the body names others too; nothing is stored."
                        ),
                    },
                )
            },
            openapi_path(VPN_CONNECT): _tunnel("Tunnel up for these devices (remembers serviceId)"),
            openapi_path(VPN_DISCONNECT): _tunnel("Tunnel down where the same serviceId still holds the device"),
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "provisioningKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A fleet's provisioning key (create_fleet prints it).",
                },
                "deviceKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The API key of the device the request is about.",
                },
                "serviceKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A tunnel-server key (create_service_key); VPN endpoints only.",
                },
            },
        },
    }


@require_GET
def openapi_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(build_document(), json_dumps_params={"indent": 1})
