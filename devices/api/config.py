"""The target state a device is told: its supervisor configuration and the response body."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii

# (poll interval, cloudlink) -> the configuration's JSON: a handful of values per installation.
_CONFIG_JSON: dict[tuple[int, bool], str] = {}


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


def target_state_body(uuid: str, name: str, config: dict[str, str]) -> bytes:
    """The JSON body of a 200 fetch, as plainly defined; both answering paths build it with
    target_state_body_of, which gives these bytes (tests/test_api_edge.py holds them equal).

    fleetstatus deploys no releases: an empty apps object is balena's "no apps assigned".
    """
    return json.dumps({uuid: {"name": name, "config": config, "apps": {}}}).encode()


def target_state_body_of(uuid: str, name: str, poll_interval: int, cloudlink: bool) -> bytes:
    """target_state_body(uuid, name, config_for(poll_interval, cloudlink)), byte for byte (the same
    encoder, ASCII-escaped), around the configuration's JSON encoded once: the body of every 200
    fetch, whether the cache or the database answered it."""
    config = _CONFIG_JSON.get((poll_interval, cloudlink))
    if config is None:
        config = json.dumps(config_for(poll_interval, cloudlink))
        if len(_CONFIG_JSON) < 1024:
            _CONFIG_JSON[poll_interval, cloudlink] = config
    return (
        "{"
        + encode_basestring_ascii(uuid)
        + ': {"name": '
        + encode_basestring_ascii(name)
        + ', "config": '
        + config
        + ', "apps": {}}}'
    ).encode()
