"""Scenario scripts: a generator per scenario yields actions (`Report`, `Poll`, `Tunnel`, `Sleep`),
where a tick is one polling interval of that device. They do no I/O, so tests can play them against a
model of the status rule in virtual time; `simulator.device.Agent` executes them over HTTP.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from simulator.bodies import (
    OS_UPDATE_STATE,
    POST_PROVISIONING_STATE,
    Profile,
    apps_body,
    full_report,
    metrics_fields,
    next_release,
    progress_steps,
)

# Share of each scenario in a `mixed` run, in the order they are handed out when there are fewer
# devices than scenarios. Roughly what a real fleet looks like: mostly healthy devices, a few
# behind firewalls, some updating, a handful broken.
MIXED_WEIGHTS: dict[str, int] = {
    "healthy": 40,
    "tunnel-blocked": 10,
    "agent-crashed": 8,
    "app-update": 12,
    "power-loss": 8,
    "os-update": 7,
    "post-provisioning": 5,
    "preregistered": 5,
    "flapping": 5,
}
SCENARIOS: tuple[str, ...] = tuple(MIXED_WEIGHTS)
MIXED = "mixed"
SCENARIO_CHOICES: tuple[str, ...] = (MIXED, *SCENARIOS)

# Scenarios whose devices never open a tunnel at boot: after a crash of an earlier simulator run
# the server may still think their tunnel is up, so the tunnel server disconnects them at start.
NO_TUNNEL_AT_BOOT = frozenset({"tunnel-blocked", "post-provisioning", "preregistered"})


@dataclass(frozen=True)
class Report:
    """PATCH /device/v3/state with these fields (agents send only what changed)."""

    fields: dict[str, Any]


@dataclass(frozen=True)
class Poll:
    """Start (fetch now, then every interval) or stop the target-state poll loop."""

    on: bool


@dataclass(frozen=True)
class Tunnel:
    up: bool


@dataclass(frozen=True)
class Sleep:
    ticks: float


Action = Report | Poll | Tunnel | Sleep
Script = Iterator[Action]


# --- Scenario scripts (pure generators; a tick is one polling interval) --------------------------


def _boot(rng: random.Random, profile: Profile, *, tunnel: bool = True) -> Script:
    yield Report(full_report(rng, profile))
    if tunnel:
        yield Tunnel(True)
    yield Poll(True)


def _live(rng: random.Random, profile: Profile, ticks: float) -> Script:
    """Run normally for about `ticks`, reporting metrics now and then as a supervisor does."""
    remaining = ticks
    while remaining > 0:
        step = min(remaining, rng.uniform(3, 6))
        yield Sleep(step)
        remaining -= step
        if remaining > 0:
            yield Report(metrics_fields(rng, profile))


def healthy(rng: random.Random, profile: Profile) -> Script:
    yield from _boot(rng, profile)
    while True:
        yield from _live(rng, profile, 30)


def tunnel_blocked(rng: random.Random, profile: Profile) -> Script:
    # A firewall drops VPN traffic: the API is reachable, the tunnel never comes up.
    yield from _boot(rng, profile, tunnel=False)
    while True:
        yield from _live(rng, profile, 30)


def agent_crashed(rng: random.Random, profile: Profile) -> Script:
    # The VPN client belongs to the host OS, so the tunnel comes up; the supervisor crash-loops at
    # boot and never fetches or reports.
    yield Tunnel(True)
    while True:
        yield Sleep(60)


def power_loss(rng: random.Random, profile: Profile) -> Script:
    while True:
        yield from _boot(rng, profile)
        yield from _live(rng, profile, rng.uniform(2, 8))
        # Power cut: fetches stop and the tunnel server notices the dead tunnel. The heartbeat
        # keeps the device "Heartbeat Only" until its deadline passes, then it is Offline.
        yield Poll(False)
        yield Tunnel(False)
        yield Sleep(rng.uniform(20, 40))  # power comes back eventually, for long demos


def app_update(rng: random.Random, profile: Profile) -> Script:
    yield from _boot(rng, profile)
    while True:
        yield from _live(rng, profile, rng.uniform(2, 6))
        target = next_release(profile.release)
        yield Report(
            {
                "status": "Downloading",
                "download_progress": 0,
                "update_pending": True,
                "apps": apps_body(profile, target=target, progress=0),
            }
        )
        for progress in progress_steps(rng):
            yield Sleep(rng.uniform(0.3, 0.7))
            yield Report({"download_progress": progress, "apps": apps_body(profile, target=target, progress=progress)})
        yield Sleep(0.3)
        yield Report(
            {
                "status": "Installing",
                "download_progress": None,
                "update_downloaded": True,
                "apps": apps_body(profile, target=target, update_status="downloaded"),
            }
        )
        yield Sleep(0.3)
        yield Report({"apps": apps_body(profile, target=target, update_status="applying changes")})
        yield Sleep(0.5)
        profile.release = target
        yield Report(
            {"status": "Idle", "update_pending": False, "update_downloaded": False, "apps": apps_body(profile)}
        )
        yield from _live(rng, profile, rng.uniform(8, 15))


def os_update(rng: random.Random, profile: Profile) -> Script:
    yield from _boot(rng, profile)
    while True:
        yield from _live(rng, profile, rng.uniform(2, 6))
        yield Report({"provisioning_state": OS_UPDATE_STATE, "provisioning_progress": 0})
        for progress in progress_steps(rng, 8, 25):
            yield Sleep(rng.uniform(0.3, 0.7))
            yield Report({"provisioning_progress": progress})
        # Reboot into the new OS: a short gap in both links, then a fresh supervisor reports.
        yield Poll(False)
        yield Tunnel(False)
        yield Sleep(0.5)
        major, minor, patch = profile.os_version.removeprefix("balenaOS ").split(".")
        profile.os_version = f"balenaOS {major}.{minor}.{int(patch) + 1}"
        yield from _boot(rng, profile)
        yield from _live(rng, profile, rng.uniform(20, 40))


def post_provisioning(rng: random.Random, profile: Profile) -> Script:
    # Booted from the flasher image, copying itself to internal storage: it reports its progress
    # but never fetches and has no tunnel; afterwards it waits to be booted from internal storage.
    yield Report(
        full_report(rng, profile, provisioning_state=POST_PROVISIONING_STATE, provisioning_progress=0, with_apps=False)
    )
    for progress in progress_steps(rng, 5, 15):
        yield Sleep(rng.uniform(0.5, 1.5))
        yield Report({"provisioning_progress": progress})
    while True:
        yield Sleep(60)


def preregistered(rng: random.Random, profile: Profile) -> Script:
    # Never switched on: no request at all (and the runtime does not register it).
    return
    yield  # pragma: no cover - makes this a generator


def flapping(rng: random.Random, profile: Profile) -> Script:
    # Unreliable link and agent: heartbeats and tunnel come and go at random (soak tests).
    yield from _boot(rng, profile)
    polling = tunnel = True
    while True:
        yield Sleep(rng.uniform(0.5, 4))
        roll = rng.random()
        if roll < 0.4:
            tunnel = not tunnel
            yield Tunnel(tunnel)
        elif roll < 0.8:
            polling = not polling
            yield Poll(polling)
        else:
            yield Report(metrics_fields(rng, profile))


SCRIPTS: dict[str, Callable[[random.Random, Profile], Script]] = {
    "healthy": healthy,
    "tunnel-blocked": tunnel_blocked,
    "agent-crashed": agent_crashed,
    "app-update": app_update,
    "power-loss": power_loss,
    "os-update": os_update,
    "post-provisioning": post_provisioning,
    "preregistered": preregistered,
    "flapping": flapping,
}


def assign_scenarios(scenario: str, count: int, seed: int) -> list[str]:
    """The scenario of each device index; `mixed` is a deterministic spread for a given seed.

    With at least as many devices as scenarios every scenario gets one device, the rest are
    shared by weight (largest remainder), then the list is shuffled with the seed.
    """
    if scenario != MIXED:
        if scenario not in SCRIPTS:
            raise ValueError(f"unknown scenario {scenario!r}")
        return [scenario] * count
    if count < len(SCENARIOS):
        chosen = list(SCENARIOS[:count])
    else:
        counts = dict.fromkeys(SCENARIOS, 1)
        rest = count - len(SCENARIOS)
        total = sum(MIXED_WEIGHTS.values())
        quotas = {name: rest * weight / total for name, weight in MIXED_WEIGHTS.items()}
        for name, quota in quotas.items():
            counts[name] += int(quota)
        left = count - sum(counts.values())
        for name in sorted(SCENARIOS, key=lambda n: (-(quotas[n] - int(quotas[n])), SCENARIOS.index(n)))[:left]:
            counts[name] += 1
        chosen = [name for name in SCENARIOS for _ in range(counts[name])]
    random.Random(f"mixed:{seed}").shuffle(chosen)
    return chosen
