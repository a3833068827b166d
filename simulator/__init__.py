"""Virtual devices that talk to fleetstatus over HTTP exactly like real agents (DESIGN.md §3).

Two layers:

- Scenario scripts (pure, seeded): a generator per scenario yields actions — `Report(fields)`,
  `Poll(on)`, `Tunnel(up)`, `Sleep(ticks)` — where a tick is one polling interval of that device.
  They do no I/O, so tests can play them against a model of the status rule in virtual time.
- The runtime (`Simulator`): one asyncio task per device executes its script over one shared
  `httpx.AsyncClient` with a bounded connection pool, so thousands of devices run in one process.
  Polling runs in its own per-device task at the interval the server sends in
  `BALENA_SUPERVISOR_POLL_INTERVAL` (±10% jitter), like the supervisor's poll loop that runs
  independently of its state reports. Tunnel events go through one simulated tunnel server that
  batches them the way a VPN server does (client-connect / client-disconnect with a serviceId).

The simulator is a pure HTTP client: it never touches the database, so it can drive any
fleetstatus installation it can reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import secrets
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# --- Scenarios -------------------------------------------------------------------------------

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

POLL_INTERVAL_KEY = "BALENA_SUPERVISOR_POLL_INTERVAL"
# Same strings as devices.status (kept literal: the simulator is a client and must not depend on
# server internals; tests/test_simulator.py checks they agree).
POST_PROVISIONING_STATE = "Post-Provisioning"
OS_UPDATE_STATE = "Running OS update"
MAX_VPN_BATCH = 8000  # the VPN endpoints accept up to this many UUIDs per call
UNKNOWN_INTERVAL = 10.0  # seconds a device waits between steps before any fetch told it the real interval
POLL_JITTER = 0.1

OS_VERSIONS = ("balenaOS 6.0.13", "balenaOS 6.0.24", "balenaOS 5.3.20", "balenaOS 6.1.3")
SUPERVISOR_VERSIONS = ("16.7.1", "16.4.6", "17.0.2")
SERVICE_SETS = (("main",), ("main", "proxy"), ("api", "worker", "redis"))


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
        # Real agents send these too; the API must accept and ignore them (DESIGN.md §3).
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


def _progress_steps(rng: random.Random, low: int = 6, high: int = 22) -> Iterator[int]:
    progress = 0
    while progress < 100:
        progress = min(100, progress + rng.randint(low, high))
        yield progress


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
        for progress in _progress_steps(rng):
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
        for progress in _progress_steps(rng, 8, 25):
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
    for progress in _progress_steps(rng, 5, 15):
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


def parse_poll_interval(target_state: Any, uuid: str) -> float | None:
    """Seconds from `config.BALENA_SUPERVISOR_POLL_INTERVAL` (milliseconds, a string) of a target state."""
    try:
        raw = target_state[uuid]["config"][POLL_INTERVAL_KEY]
        seconds = int(str(raw)) / 1000
    except (KeyError, TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


# --- Persistent identities -------------------------------------------------------------------


@dataclass
class SimDevice:
    uuid: str
    api_key: str
    registered: bool = False

    @classmethod
    def new(cls) -> SimDevice:
        return cls(uuid=secrets.token_hex(16), api_key=secrets.token_hex(16))


def load_state(path: Path, fleet: str) -> list[SimDevice]:
    """Devices of an earlier run for this fleet, so a restarted simulator does not register new ones."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise SimulatorError(f"cannot read the simulator state file {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("fleet") != fleet:
        raise SimulatorError(
            f"{path} belongs to fleet {data.get('fleet') if isinstance(data, dict) else '?'!r}, not {fleet!r}"
        )
    devices = []
    for item in data.get("devices", []):
        try:
            devices.append(
                SimDevice(uuid=str(item["uuid"]), api_key=str(item["api_key"]), registered=bool(item.get("registered")))
            )
        except (KeyError, TypeError) as exc:
            raise SimulatorError(f"{path}: bad device entry {item!r}") from exc
    return devices


def save_state(path: Path, fleet: str, devices: Sequence[SimDevice]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    payload = {
        "fleet": fleet,
        "devices": [{"uuid": d.uuid, "api_key": d.api_key, "registered": d.registered} for d in devices],
    }
    # Device API keys are secrets: owner-only file, replaced atomically so a kill mid-write never
    # leaves a half file behind.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=1)
    os.replace(tmp, path)


# --- Runtime ---------------------------------------------------------------------------------


class SimulatorError(Exception):
    """A problem that stops the simulator (bad key, unreachable server, unreadable state file)."""


@dataclass
class Options:
    base_url: str
    fleet: str
    count: int
    provisioning_key: str
    service_key: str
    scenario: str = MIXED
    duration: float | None = None
    seed: int = 0
    poll_scale: float = 1.0
    device_type: str = "raspberrypi5"
    connections: int = 20
    state_file: Path | None = None
    service_id: int = 1
    summary_interval: float = 10.0
    wait_timeout: float = 120.0
    ramp_up: float = 5.0
    vpn_batch_interval: float = 1.0
    request_timeout: float = 30.0


@dataclass
class Stats:
    requests: Counter = field(default_factory=Counter)  # by kind
    codes: Counter = field(default_factory=Counter)  # by (kind, status code)
    transport_errors: Counter = field(default_factory=Counter)  # by kind

    def record(self, kind: str, code: int) -> None:
        self.requests[kind] += 1
        self.codes[(kind, code)] += 1

    def transport(self, kind: str) -> None:
        self.requests[kind] += 1
        self.transport_errors[kind] += 1

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def server_errors(self) -> int:
        return sum(n for (_, code), n in self.codes.items() if code >= 500)

    def count(self, kind: str, code: int) -> int:
        return self.codes[(kind, code)]

    def errors_by_code(self) -> dict[str, int]:
        errors: Counter = Counter()
        for (_, code), n in self.codes.items():
            if code >= 400:
                errors[str(code)] += n
        if self.transport_errors:
            errors["transport"] = sum(self.transport_errors.values())
        return dict(sorted(errors.items()))


@dataclass
class Result:
    stats: Stats
    registered: int
    not_registered: list[str]
    scenarios: dict[str, int]
    fatal: str | None = None

    @property
    def ok(self) -> bool:
        return self.fatal is None and self.stats.server_errors == 0


class Agent:
    """One virtual device at run time: its identity, script and poll loop."""

    def __init__(self, sim: Simulator, device: SimDevice, index: int, scenario: str, profile: Profile) -> None:
        self.sim = sim
        self.device = device
        self.index = index
        self.scenario = scenario
        self.profile = profile
        self.script_rng = random.Random(f"script:{sim.options.seed}:{index}")
        self.jitter_rng = random.Random(f"jitter:{sim.options.seed}:{index}")
        self.poll_interval: float | None = None
        self.poll_task: asyncio.Task | None = None
        self.tunnel_up = False
        self._last_reregister = -1e9

    @property
    def uuid(self) -> str:
        return self.device.uuid

    def tick(self) -> float:
        interval = self.poll_interval or self.sim.learned_interval or UNKNOWN_INTERVAL
        return interval * self.sim.options.poll_scale

    async def run(self) -> None:
        await asyncio.sleep(self.jitter_rng.uniform(0, self.sim.options.ramp_up))
        if self.scenario == "preregistered":
            return  # switched off in its box: not even a registration
        if not await self.sim.ensure_registered(self):
            return
        try:
            for action in SCRIPTS[self.scenario](self.script_rng, self.profile):
                if isinstance(action, Report):
                    await self.report(action.fields)
                elif isinstance(action, Poll):
                    await self.set_polling(action.on)
                elif isinstance(action, Tunnel):
                    self.tunnel_up = action.up
                    self.sim.tunnel.set(self.uuid, action.up)
                elif isinstance(action, Sleep):
                    await asyncio.sleep(action.ticks * self.tick())
        finally:
            self.stop_polling()

    async def set_polling(self, on: bool) -> None:
        if not on:
            self.stop_polling()
        elif self.poll_task is None:
            # Like the supervisor, fetch the target state first and only then go on: the script's
            # next sleeps are measured in the interval that fetch tells.
            await self.fetch()
            self.poll_task = asyncio.create_task(self._poll_loop(), name=f"poll-{self.uuid[:7]}")

    def stop_polling(self) -> None:
        if self.poll_task is not None:
            self.poll_task.cancel()
            self.poll_task = None

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick() * self.jitter_rng.uniform(1 - POLL_JITTER, 1 + POLL_JITTER))
            await self.fetch()

    async def fetch(self) -> None:
        response = await self.sim.request("state", "GET", f"/device/v3/{self.uuid}/state", token=self.device.api_key)
        if response is None:
            return
        if response.status_code == 200:
            try:
                interval = parse_poll_interval(response.json(), self.uuid)
            except ValueError:
                interval = None
            if interval is None:
                self.sim.note_problem("state", response, "no BALENA_SUPERVISOR_POLL_INTERVAL in the target state")
            else:
                self.poll_interval = interval
                self.sim.learned_interval = interval
        elif response.status_code == 401:
            await self.reregister()
        elif response.status_code != 304:  # 304: frozen, keep polling at the last interval
            self.sim.note_problem("state", response)

    async def report(self, fields: dict[str, Any]) -> None:
        for _ in range(2):
            response = await self.sim.request(
                "report", "PATCH", "/device/v3/state", token=self.device.api_key, json=state_body(self.uuid, fields)
            )
            if response is None or response.status_code < 300:
                return
            if response.status_code == 401 and await self.reregister():
                continue
            self.sim.note_problem("report", response)
            return

    async def reregister(self) -> bool:
        """The server does not know our key (its database was reset, or the device deleted): register again."""
        now = time.monotonic()
        if now - self._last_reregister < self.tick():
            return False
        self._last_reregister = now
        self.device.registered = False
        return await self.sim.ensure_registered(self, retry=False)

    def take_new_identity(self) -> None:
        old = self.device.uuid
        fresh = SimDevice.new()
        self.device.uuid, self.device.api_key, self.device.registered = fresh.uuid, fresh.api_key, False
        self.sim.tunnel.forget(old)
        if self.tunnel_up:
            self.sim.tunnel.set(self.uuid, True)


class TunnelServer:
    """One simulated VPN server: collects connect/disconnect events and sends them in batches."""

    def __init__(self, sim: Simulator, service_id: int) -> None:
        self.sim = sim
        self.service_id = service_id
        self.pending: dict[str, bool] = {}  # last event per device since the previous batch
        self.connected: set[str] = set()  # what the server was told
        self._lock = asyncio.Lock()

    def set(self, uuid: str, up: bool) -> None:
        self.pending[uuid] = up

    def forget(self, uuid: str) -> None:
        self.pending.pop(uuid, None)
        self.connected.discard(uuid)

    def reset(self, uuids: Sequence[str]) -> None:
        """Disconnect devices whose tunnel an earlier (crashed) run may have left up on the server."""
        self.connected.update(uuids)
        for uuid in uuids:
            self.pending[uuid] = False

    def take_batches(self) -> tuple[list[str], list[str]]:
        """(connects, disconnects) to send: only real changes, a device flapping within one batch
        window ends up in its final state without sending both events."""
        connects = [u for u, up in self.pending.items() if up and u not in self.connected]
        disconnects = [u for u, up in self.pending.items() if not up and u in self.connected]
        self.pending.clear()
        return connects, disconnects

    async def flush(self) -> None:
        async with self._lock:
            connects, disconnects = self.take_batches()
            await self._send("client-disconnect", disconnects, up=False)
            await self._send("client-connect", connects, up=True)

    async def _send(self, endpoint: str, uuids: list[str], *, up: bool) -> None:
        kind = f"vpn-{endpoint.removeprefix('client-')}"
        for body in vpn_bodies(uuids, self.service_id):
            response = await self.sim.request(
                kind, "POST", f"/services/vpn/{endpoint}", token=self.sim.options.service_key, json=body
            )
            if response is not None and response.status_code < 300:
                if up:
                    self.connected.update(body["uuids"])
                else:
                    self.connected.difference_update(body["uuids"])
                continue
            if response is not None and response.status_code in (401, 403):
                self.sim.fail(
                    f"the service key was rejected by {endpoint} (HTTP {response.status_code}): {_snippet(response)}"
                )
                return
            if response is not None:
                self.sim.note_problem(kind, response)
            # Retry with the next batch unless the device changed its mind meanwhile.
            for uuid in body["uuids"]:
                self.pending.setdefault(uuid, up)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.sim.options.vpn_batch_interval)
            await self.flush()

    async def shutdown(self) -> None:
        """The tunnel server stops: every tunnel it holds goes down, and none that was about to open does."""
        self.pending = dict.fromkeys(self.connected, False)
        await self.flush()


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")


class Simulator:
    def __init__(
        self,
        options: Options,
        write: Callable[[str], None] = print,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if options.scenario not in SCENARIO_CHOICES:
            raise SimulatorError(f"unknown scenario {options.scenario!r}; choose from {', '.join(SCENARIO_CHOICES)}")
        self.options = options
        self.write = write
        self.transport = transport
        self.stats = Stats()
        self.client: httpx.AsyncClient | None = None
        self.tunnel = TunnelServer(self, options.service_id)
        self.agents: list[Agent] = []
        self.devices: list[SimDevice] = []
        self.learned_interval: float | None = None
        self.stop_event = asyncio.Event()
        self.fatal: str | None = None
        self.started = time.monotonic()
        self._dirty = False
        self._problems: set[tuple[str, int]] = set()
        self._transport_problems: set[str] = set()
        self._signals: list[int] = []
        self._slots: asyncio.Semaphore | None = None

    # --- plumbing ---

    def fail(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = message
            self.write(f"simulator: {message}")
        self.stop_event.set()

    def note_problem(self, kind: str, response: httpx.Response, message: str = "") -> None:
        """Print the first answer of each (kind, status) that is not what a device expects."""
        key = (kind, response.status_code)
        if key in self._problems:
            return
        self._problems.add(key)
        self.write(f"simulator: {kind} answered HTTP {response.status_code}: {message or _snippet(response)}")

    def attach(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self._slots = asyncio.Semaphore(self.options.connections)

    async def request(self, kind: str, method: str, url: str, *, token: str, json: Any = None) -> httpx.Response | None:
        assert self.client is not None and self._slots is not None
        try:
            # Our own gate in front of httpx's pool: httpcore re-scans its whole queue of waiting
            # requests on every change, which stalls the event loop with thousands of devices.
            async with self._slots:
                if self.stop_event.is_set() and not kind.startswith("vpn"):
                    return None  # stopping: devices send nothing new, only the tunnel server's goodbye
                response = await self.client.request(
                    method, url, headers={"Authorization": f"Bearer {token}"}, json=json
                )
        except httpx.HTTPError as exc:
            self.stats.transport(kind)
            if kind not in self._transport_problems:
                self._transport_problems.add(kind)
                self.write(f"simulator: {kind} request failed: {exc!r}")
            return None
        self.stats.record(kind, response.status_code)
        if response.status_code >= 500:
            self.note_problem(kind, response)
        return response

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when the simulator is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), timeout=seconds)
        return self.stop_event.is_set()

    # --- startup ---

    async def wait_for_server(self) -> bool:
        """Retry with backoff until the web server answers (honcho starts it together with us)."""
        assert self.client is not None
        deadline = time.monotonic() + self.options.wait_timeout
        delay, said = 0.25, False
        while True:
            try:
                response = await self.client.get("/healthz")
                if response.status_code < 500:
                    if said:
                        self.write(f"simulator: {self.options.base_url} is up")
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() + delay > deadline:
                self.fail(f"{self.options.base_url} did not answer within {self.options.wait_timeout:.0f} s")
                return False
            if not said:
                self.write(f"simulator: waiting for {self.options.base_url} …")
                said = True
            if await self.sleep(delay):
                return False
            delay = min(delay * 2, 5.0)

    def load_devices(self) -> list[SimDevice]:
        stored = load_state(self.options.state_file, self.options.fleet) if self.options.state_file else []
        devices = list(stored)
        while len(devices) < self.options.count:
            devices.append(SimDevice.new())
        self.devices = devices  # all of them are saved, also those beyond --count this time
        if len(devices) > len(stored):
            self._dirty = True
        reused = sum(1 for d in stored[: self.options.count] if d.registered)
        if reused:
            self.write(f"simulator: re-using {reused} registered devices from {self.options.state_file}")
        return devices[: self.options.count]

    def save(self, force: bool = False) -> None:
        if self.options.state_file and (self._dirty or force):
            self._dirty = False
            save_state(self.options.state_file, self.options.fleet, self.devices)

    async def ensure_registered(self, agent: Agent, *, retry: bool = True) -> bool:
        """POST /device/register until it is known; 401/403 (bad provisioning key) stops everything."""
        delay = 0.5
        for _ in range(3):  # at most two identity changes after a 409 on a re-registration
            device = agent.device
            if device.registered:
                return True
            while True:
                response = await self.request(
                    "register",
                    "POST",
                    "/device/register",
                    token=self.options.provisioning_key,
                    json=register_body(device.uuid, self.options.device_type, device.api_key),
                )
                if response is not None and response.status_code < 500:
                    break
                if not retry or await self.sleep(delay):
                    return False
                delay = min(delay * 2, 30.0)
            if response.status_code == 201:
                try:
                    returned_key = response.json().get("api_key")
                except (ValueError, AttributeError):
                    returned_key = None
                if returned_key and returned_key != device.api_key:
                    self.note_problem("register", response, "the server replaced the api_key the device sent")
                    device.api_key = str(returned_key)
                device.registered = True
                self._dirty = True
                return True
            if response.status_code == 409:
                if retry:
                    # Taken by us in a run that died before saving its state: the key still works
                    # (if not, the first fetch gets 401 and re-registers under a new UUID).
                    device.registered = True
                    self._dirty = True
                    return True
                agent.take_new_identity()
                self._dirty = True
                continue
            if response.status_code in (401, 403):
                self.fail(
                    f"the provisioning key for {self.options.fleet} was rejected (HTTP {response.status_code}): {_snippet(response)}"
                )
                return False
            self.note_problem("register", response)
            return False
        return False

    # --- reporting ---

    def summary(self, final: bool = False) -> str:
        s = self.stats
        elapsed = time.monotonic() - self.started
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(s.requests.items())) or "none"
        errors = ", ".join(f"{code}: {n}" for code, n in s.errors_by_code().items()) or "none"
        frozen = s.count("state", 304)
        scenarios = ", ".join(f"{name} {n}" for name, n in self.scenario_counts().items())
        registered = sum(1 for a in self.agents if a.device.registered)
        polling = sum(1 for a in self.agents if a.poll_task is not None)
        head = "simulator done" if final else "simulator"
        return (
            f"{head} [{elapsed:.0f}s] requests {s.total} ({kinds}); errors: {errors}"
            + (f"; frozen (304) {frozen}" if frozen else "")
            + f"; registered {registered}/{len(self.agents)}, polling {polling}, tunnels up {len(self.tunnel.connected)}"
            + f"; scenarios: {scenarios}"
        )

    def scenario_counts(self) -> dict[str, int]:
        counts = Counter(a.scenario for a in self.agents)
        return {name: counts[name] for name in SCENARIOS if counts[name]}

    async def _housekeeping(self) -> None:
        last_summary = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            self.save()
            if self.options.summary_interval and time.monotonic() - last_summary >= self.options.summary_interval:
                last_summary = time.monotonic()
                self.write(self.summary())

    def _install_signal_handlers(self) -> list[int]:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal)
                installed.append(sig)
            except (ValueError, RuntimeError, NotImplementedError):
                pass  # not the main thread (tests) or not supported: --duration still stops it
        self._signals = installed
        return installed

    def _on_signal(self) -> None:
        self.write("simulator: stopping (Ctrl-C again to stop at once)")
        self.stop_event.set()
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)

    # --- main ---

    async def run(self) -> Result:
        self.started = time.monotonic()
        installed = self._install_signal_handlers()
        limits = httpx.Limits(
            max_connections=self.options.connections, max_keepalive_connections=self.options.connections
        )
        # Requests wait for a slot in self._slots (not in httpx's pool), so that wait does not count
        # against the request timeout; pool=None because the pool itself never has a queue.
        timeout = httpx.Timeout(self.options.request_timeout, pool=None)
        background: list[asyncio.Task] = []
        try:
            async with httpx.AsyncClient(
                base_url=self.options.base_url, limits=limits, timeout=timeout, transport=self.transport
            ) as client:
                self.attach(client)
                if not await self.wait_for_server():
                    return self._result()
                devices = self.load_devices()
                scenarios = assign_scenarios(self.options.scenario, len(devices), self.options.seed)
                app_uuid = fleet_app_uuid(self.options.fleet)
                release = fleet_release(self.options.fleet, self.options.seed)
                for index, (device, scenario) in enumerate(zip(devices, scenarios, strict=True)):
                    profile = make_profile(
                        random.Random(f"profile:{self.options.seed}:{index}"), app_uuid=app_uuid, release=release
                    )
                    self.agents.append(Agent(self, device, index, scenario, profile))
                self._announce()
                self.tunnel.reset(
                    [a.uuid for a in self.agents if a.device.registered and a.scenario in NO_TUNNEL_AT_BOOT]
                )
                background = [asyncio.create_task(self.tunnel.run()), asyncio.create_task(self._housekeeping())]
                tasks = [asyncio.create_task(a.run(), name=f"device-{a.index}") for a in self.agents]
                for task in tasks:
                    task.add_done_callback(self._device_done)
                self.started = time.monotonic()
                if self.options.duration is None:
                    await self.stop_event.wait()
                else:
                    await self.sleep(self.options.duration)
                self.stop_event.set()
                await self._drain()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                background = []
                self._slots = asyncio.Semaphore(self.options.connections)  # only the tunnel server is left
                await self.tunnel.shutdown()
        finally:
            for task in background:
                task.cancel()
            loop = asyncio.get_running_loop()
            for sig in installed:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            self.save()
        self.write(self.summary(final=True))
        return self._result()

    async def _drain(self) -> None:
        """Wait for the requests in flight, holding every slot so that no new one starts.

        Cancelling a request half-way would leave the server's side of it running on its own (and
        the tunnel server unsure whether a connect it sent counted), so devices are cancelled only
        once nothing is on the wire.
        """
        assert self._slots is not None
        taken = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.request_timeout):
                while taken < self.options.connections:
                    await self._slots.acquire()
                    taken += 1

    def _device_done(self, task: asyncio.Task) -> None:
        # A device script only ends by cancellation (or when it cannot register); an exception is
        # a bug in the simulator: stop loudly rather than run on with a silently dead device.
        if not task.cancelled() and task.exception() is not None:
            self.fail(f"{task.get_name()} crashed: {task.exception()!r}")

    def _announce(self) -> None:
        counts = ", ".join(f"{name} {n}" for name, n in self.scenario_counts().items())
        self.write(
            f"simulator: {len(self.agents)} devices in {self.options.fleet} ({counts}) against {self.options.base_url}"
        )
        never = [a.uuid for a in self.agents if a.scenario == "preregistered" and not a.device.registered]
        if never:
            shown = ", ".join(never[:10]) + (" …" if len(never) > 10 else "")
            self.write(
                f"simulator: {len(never)} 'preregistered' devices are NOT registered and never contact the server: "
                f"the device API has no preregistration call. Preregister these UUIDs in the admin to see them "
                f"as Inactive: {shown}"
            )

    def _result(self) -> Result:
        return Result(
            stats=self.stats,
            registered=sum(1 for a in self.agents if a.device.registered),
            not_registered=[a.uuid for a in self.agents if not a.device.registered],
            scenarios=self.scenario_counts(),
            fatal=self.fatal,
        )


def run_simulator(options: Options, write: Callable[[str], None] = print, **kwargs: Any) -> Result:
    return asyncio.run(Simulator(options, write, **kwargs).run())
