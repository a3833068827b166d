"""What a virtual device is (its profile) and the JSON bodies it sends: pure functions, no I/O."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

POLL_INTERVAL_KEY = "BALENA_SUPERVISOR_POLL_INTERVAL"
# Same strings as devices.status (kept literal: the simulator is a client and must not depend on
# server internals; tests/test_simulator.py checks they agree).
POST_PROVISIONING_STATE = "Post-Provisioning"
OS_UPDATE_STATE = "Running OS update"
MAX_VPN_BATCH = 8000  # the VPN endpoints accept up to this many UUIDs per call

OS_VERSIONS = ("balenaOS 6.0.13", "balenaOS 6.0.24", "balenaOS 5.3.20", "balenaOS 6.1.3")
SUPERVISOR_VERSIONS = ("16.7.1", "16.4.6", "17.0.2")
SERVICE_SETS = (("main",), ("main", "proxy"), ("api", "worker", "redis"))


@dataclass
class Profile:
    """What one virtual device is: hardware, OS and the application it runs."""

    os_version: str
    os_variant: str
    supervisor_version: str
    ip_address: str
    mac_address: str
    api_secret: str
    cpu_id: str
    memory_total: int  # MiB, as balena agents report
    storage_total: int  # MiB
    app_uuid: str
    release: str  # commit of the running release
    services: tuple[str, ...]


def _hex(*parts: object, length: int = 32) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:length]


def fleet_app_uuid(fleet: str) -> str:
    return _hex("app", fleet)


def fleet_release(fleet: str, seed: int) -> str:
    return _hex("release", fleet, seed)


def next_release(commit: str) -> str:
    # Every device of a fleet that updates from the same release moves to the same next one, as
    # when a fleet gets a new release.
    return _hex("next", commit)


def make_profile(rng: random.Random, *, app_uuid: str, release: str) -> Profile:
    return Profile(
        os_version=rng.choice(OS_VERSIONS),
        os_variant=rng.choice(("prod", "prod", "prod", "dev")),
        supervisor_version=rng.choice(SUPERVISOR_VERSIONS),
        # balena agents report every address, space separated.
        ip_address=f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        + (f" 192.168.{rng.randint(0, 9)}.{rng.randint(2, 254)}" if rng.random() < 0.3 else ""),
        mac_address=":".join(f"{rng.randint(0, 255):02x}" for _ in range(6)),
        api_secret=f"{rng.getrandbits(128):032x}",
        cpu_id=f"{rng.getrandbits(64):016x}",
        memory_total=rng.choice((1024, 2048, 4096, 8192)),
        storage_total=rng.choice((14_800, 29_700, 59_600)),
        app_uuid=app_uuid,
        release=release,
        services=rng.choice(SERVICE_SETS),
    )


# --- Request bodies (pure) -------------------------------------------------------------------


def register_body(uuid: str, device_type: str, api_key: str) -> dict[str, str]:
    return {"uuid": uuid, "device_type": device_type, "api_key": api_key}


def state_body(uuid: str, fields: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {uuid: fields}


def vpn_bodies(uuids: Sequence[str], service_id: int, batch: int = MAX_VPN_BATCH) -> list[dict[str, Any]]:
    return [{"uuids": list(uuids[i : i + batch]), "serviceId": service_id} for i in range(0, len(uuids), batch)]


def image_name(commit: str, service: str) -> str:
    return f"registry2.balena-cloud.com/v2/{_hex('image', commit, service)}@sha256:{_hex('digest', commit, service, length=64)}"


def _release_entry(
    commit: str, services: Sequence[str], update_status: str, service_status: str, progress: int | None
) -> dict:
    return {
        "update_status": update_status,
        "services": {
            name: {"image": image_name(commit, name), "status": service_status, "download_progress": progress}
            for name in services
        },
    }


SERVICE_STATUS = {
    "downloading": "Downloading",
    "downloaded": "Downloaded",
    "applying changes": "Installing",
    "done": "Running",
}


def apps_body(
    profile: Profile, *, target: str | None = None, update_status: str = "downloading", progress: int | None = None
) -> dict[str, Any]:
    """`apps` of a state report: the running release, plus the one being installed if any."""
    releases = {profile.release: _release_entry(profile.release, profile.services, "done", "Running", None)}
    if target is not None:
        releases[target] = _release_entry(
            target,
            profile.services,
            update_status,
            SERVICE_STATUS[update_status],
            progress if update_status == "downloading" else None,
        )
    return {profile.app_uuid: {"release_uuid": profile.release, "releases": releases}}


def metrics_fields(rng: random.Random, profile: Profile) -> dict[str, Any]:
    return {
        "memory_usage": rng.randint(profile.memory_total // 8, profile.memory_total * 3 // 4),
        "memory_total": profile.memory_total,
        "storage_usage": rng.randint(profile.storage_total // 10, profile.storage_total * 2 // 3),
        "storage_total": profile.storage_total,
        "cpu_temp": rng.randint(38, 72),
        "cpu_usage": rng.randint(1, 95),
        "is_undervolted": rng.random() < 0.02,
    }


def full_report(
    rng: random.Random,
    profile: Profile,
    *,
    status: str = "Idle",
    provisioning_state: str = "",
    provisioning_progress: int | None = None,
    with_apps: bool = True,
) -> dict[str, Any]:
    """What a supervisor reports after it starts: everything, including keys fleetstatus ignores."""
    fields: dict[str, Any] = {
        "status": status,
        "is_online": True,
        "os_version": profile.os_version,
        "os_variant": profile.os_variant,
        "supervisor_version": profile.supervisor_version,
        "ip_address": profile.ip_address,
        "mac_address": profile.mac_address,
        "provisioning_state": provisioning_state,
        "provisioning_progress": provisioning_progress,
        # Real agents send these too; the API must accept and ignore them (docs/design.md, The device API).
        "api_port": 48484,
        "api_secret": profile.api_secret,
        "cpu_id": profile.cpu_id,
        "update_pending": False,
        "update_downloaded": False,
        "update_failed": False,
        **metrics_fields(rng, profile),
    }
    if with_apps:
        fields["apps"] = apps_body(profile)
    return fields


def progress_steps(rng: random.Random, low: int = 6, high: int = 22) -> Iterator[int]:
    progress = 0
    while progress < 100:
        progress = min(100, progress + rng.randint(low, high))
        yield progress


def parse_poll_interval(target_state: Any, uuid: str) -> float | None:
    """Seconds from `config.BALENA_SUPERVISOR_POLL_INTERVAL` (milliseconds, a string) of a target state."""
    try:
        raw = target_state[uuid]["config"][POLL_INTERVAL_KEY]
        seconds = int(str(raw)) / 1000
    except (KeyError, TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None
