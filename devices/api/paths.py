"""The device API's paths, written once: the URLconf, the edge dispatch and the OpenAPI document use them.

balena's paths exactly (no trailing slashes). They are relative to the site root, where
fleetstatus/urls.py includes devices/api/urls.py.
"""

from __future__ import annotations

UUID_PARAMETER = "<str:uuid>"

REGISTER = "device/register"
TARGET_STATE = f"device/v3/{UUID_PARAMETER}/state"
STATE_REPORT = "device/v3/state"
VPN_CONNECT = "services/vpn/client-connect"
VPN_DISCONNECT = "services/vpn/client-disconnect"
OPENAPI = "device/openapi.json"

# Requests under these prefixes come from device agents and the tunnel server, which parse JSON:
# errors there are JSON, never an HTML page.
API_PREFIXES = ("/device/", "/services/")


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def absolute(route: str) -> str:
    """The request path (PATH_INFO) of a route above."""
    return f"/{route}"


def openapi_path(route: str) -> str:
    """The route as an OpenAPI path template: /device/v3/{uuid}/state."""
    return absolute(route).replace(UUID_PARAMETER, "{uuid}")
