"""The target state a device is told: its supervisor configuration and the response body."""

from __future__ import annotations

import json

from devices.models import Device


def config_for(poll_interval: int, cloudlink: bool) -> dict[str, str]:
    """The supervisor configuration from the effective values; balena sends every value as a string."""
    return {
        # The device polls at this rate, which is what its heartbeat window is measured against.
        "BALENA_SUPERVISOR_POLL_INTERVAL": str(poll_interval * 1000),
        "BALENA_SUPERVISOR_VPN_CONTROL": "true" if cloudlink else "false",
        "BALENA_SUPERVISOR_CONNECTIVITY_CHECK": "true",
        "BALENA_SUPERVISOR_INSTANT_UPDATE_TRIGGER": "true",
        "BALENA_SUPERVISOR_LOCAL_MODE": "false",
        "BALENA_SUPERVISOR_PERSISTENT_LOGGING": "false",
    }


def target_config(device: Device) -> dict[str, str]:
    return config_for(device.effective_poll_interval, device.effective_cloudlink)


def target_state_body(uuid: str, name: str, config: dict[str, str]) -> bytes:
    """The JSON body of a 200 fetch, the same bytes whether the cache or the database answered.

    fleetstatus deploys no releases: an empty apps object is balena's "no apps assigned".
    """
    return json.dumps({uuid: {"name": name, "config": config, "apps": {}}}).encode()
