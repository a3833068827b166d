"""The benchmark installation as data: plans, device archetypes, device rows and histories.

Pure generation (no database access beyond reading the Device model's fields): benchmarks/seed.py
streams what this builds into PostgreSQL, and tests/test_bench_seed.py checks it against the
status rule, the allowance rule and its own history contract.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from devices.models import Device, effective_poll_interval
from devices.services import FROZEN_OVER_ALLOWANCE, FROZEN_PAID_FLEET, default_device_name
from devices.status import POST_PROVISIONING_STATE, HeartbeatState, Status, UpdateStatus, compute_status
from fleets.keys import hash_key
from fleets.models import Tier

BENCH_SECRET = os.environ.get("FLEETSTATUS_BENCH_SECRET", "fleetstatus-bench-not-a-secret")


def device_key(uuid: str) -> str:
    """The plain API key of a seeded device (64 hex characters, like fleets.keys.generate_key)."""
    return hashlib.sha256(f"{BENCH_SECRET}:device:{uuid}".encode()).hexdigest()


def service_key() -> str:
    return hashlib.sha256(f"{BENCH_SECRET}:service".encode()).hexdigest()


def device_uuid(index: int) -> str:
    # Deterministic and evenly spread over the hex alphabet, like real 32-character balena UUIDs.
    return hashlib.md5(f"fleetstatus-bench-{index}".encode()).hexdigest()


# --- The plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrgPlan:
    slug: str
    name: str
    fleets: int
    devices: int
    tier: str = Tier.PAID
    # Share of active devices beyond the allowance (the most recently activated ones are frozen).
    over_allowance: float = 0.0
    # Fleets of paid type; in a free-tier organization their active devices are frozen.
    paid_fleets: int = 0


@dataclass(frozen=True)
class Plan:
    name: str
    orgs: tuple[OrgPlan, ...]
    due_devices: int  # P6: devices of bench-large made due
    transitions_device: int = 10_000  # P3
    members: dict[str, str] = field(default_factory=dict)

    @property
    def total_devices(self) -> int:
        return sum(o.devices for o in self.orgs)

    @property
    def total_fleets(self) -> int:
        return sum(o.fleets for o in self.orgs)


def _plan(
    name: str, large: int, large_fleets: int, other_devices: list[int], other_fleets: list[int], due: int
) -> Plan:
    others = [
        ("northwind", "Northwind Logistics"),
        ("contoso", "Contoso Retail"),
        ("tailspin", "Tailspin Energy"),
        ("fabrikam", "Fabrikam Transit"),
        ("wingtip", "Wingtip Kiosks"),
        ("adatum", "Adatum Agritech"),
        ("litware", "Litware Signage"),
        ("proseware", "Proseware Labs"),
    ]
    orgs = [
        OrgPlan("bench-large", "Large Org (P1: 100k devices)", large_fleets, large, Tier.PAID, over_allowance=0.005),
        OrgPlan("bench-small", "Small Org (P1 baseline: 1k devices)", 10, 1_000, Tier.PAID, over_allowance=0.005),
    ]
    for i, ((slug, title), devices, fleets) in enumerate(zip(others, other_devices, other_fleets, strict=True)):
        # One free-tier organization with two paid fleets: Frozen by fleet type, not only by allowance.
        tier = Tier.FREE if i == 5 else Tier.PAID
        orgs.append(
            OrgPlan(
                f"bench-{slug}",
                title,
                fleets,
                devices,
                tier,
                over_allowance=0.003 if i % 2 else 0.0,
                paid_fleets=2 if i == 5 else 0,
            )
        )
    return Plan(name, tuple(orgs), due)


FULL = _plan(
    "full",
    large=100_000,
    large_fleets=100,
    other_devices=[200_000, 180_000, 150_000, 130_000, 100_000, 70_000, 45_000, 24_000],
    other_fleets=[200, 200, 150, 120, 100, 60, 40, 20],
    due=10_000,
)
QUICK = _plan(
    "quick",
    large=10_000,
    large_fleets=10,
    other_devices=[20_000, 18_000, 15_000, 13_000, 10_000, 7_000, 4_000, 2_000],
    other_fleets=[20, 20, 15, 12, 10, 6, 4, 3],
    due=1_000,
)
assert FULL.total_devices == 1_000_000 and FULL.total_fleets == 1_000
PLANS = {"full": FULL, "quick": QUICK}


# --- Archetypes: status-deciding signal templates --------------------------------------------


@dataclass(frozen=True)
class Archetype:
    key: str
    weight: float
    signals: dict[str, Any]
    heartbeat: str  # "fresh" (within its window), "stale" (past its deadline) or "never"
    vpn: bool
    connected_before: bool  # has a tunnel event (last_connectivity_event) even if down now


ARCHETYPES: tuple[Archetype, ...] = (
    Archetype("online", 0.79, {"status": "Idle"}, "fresh", True, True),
    Archetype("heartbeat-only", 0.04, {"status": "Idle"}, "fresh", False, True),
    Archetype("vpn-only", 0.02, {"status": "Idle"}, "stale", True, True),
    Archetype("offline", 0.09, {"status": "Idle"}, "stale", False, True),
    Archetype(
        "updating",
        0.025,
        {"status": "Downloading", "update_status": UpdateStatus.DOWNLOADING.value, "download_progress": 0},
        "fresh",
        True,
        True,
    ),
    Archetype(
        "os-update",
        0.01,
        {"status": "Idle", "provisioning_state": "Running OS update", "provisioning_progress": 0},
        "fresh",
        True,
        True,
    ),
    Archetype("registered", 0.01, {"status": ""}, "never", False, False),
    Archetype(
        "post-provisioning",
        0.005,
        {"status": "", "provisioning_state": POST_PROVISIONING_STATE, "provisioning_progress": 0},
        "never",
        False,
        False,
    ),
    Archetype("preregistered", 0.01, {"status": "", "is_active": False}, "never", False, False),
    Archetype("deactivated", 0.01, {"status": "Idle", "is_active": False}, "stale", False, True),
)

BASE_SIGNALS: dict[str, Any] = {
    "is_active": True,
    "is_frozen": False,
    "provisioning_state": "",
    "provisioning_progress": None,
    "update_status": None,
    "download_progress": None,
    "status": "",
}


def archetype_signals(a: Archetype, cloudlink: bool, frozen: bool = False) -> dict[str, Any]:
    s = {**BASE_SIGNALS, **a.signals}
    s["api_heartbeat_state"] = {
        "fresh": HeartbeatState.ONLINE.value,
        "stale": HeartbeatState.OFFLINE.value,
        "never": HeartbeatState.UNKNOWN.value,
    }[a.heartbeat]
    s["is_connected_to_vpn"] = a.vpn
    # Only its nullness matters to the rule; the real time is filled per device.
    s["last_connectivity_event"] = timezone.now() if a.connected_before else None
    s["effective_cloudlink"] = cloudlink
    s["is_frozen"] = frozen
    return s


_STATUS_CACHE: dict[tuple[str, bool, bool], str] = {}


def status_of(a: Archetype, cloudlink: bool, frozen: bool = False) -> str:
    key = (a.key, cloudlink, frozen)
    if key not in _STATUS_CACHE:
        _STATUS_CACHE[key] = compute_status(archetype_signals(a, cloudlink, frozen)).value
    return _STATUS_CACHE[key]


# --- Row generation -----------------------------------------------------------------------------
# Lean on purpose: a million rows in well under a minute of Python. Each device starts from a
# prebuilt row of its (archetype, fleet) pair and only the per-device fields are set.

DEVICE_TYPES = ["raspberrypi4-64", "raspberrypi5", "jetson-nano", "generic-amd64", "intel-nuc", "beaglebone-black"]
OS_VERSIONS = ["balenaOS 6.0.13", "balenaOS 6.1.2", "balenaOS 5.3.21", "balenaOS 4.1.5"]
SUPERVISORS = ["16.7.1", "16.4.6", "15.3.0", "14.11.2"]
TRANSIENT = [
    s.value
    for s in (Status.ONLINE, Status.OFFLINE, Status.ONLINE_HEARTBEAT_ONLY, Status.ONLINE_VPN_ONLY, Status.UPDATING)
]
REASONS = {
    Status.ONLINE.value: "target state fetched",
    Status.OFFLINE.value: "heartbeat expired: no target-state fetch within the polling window",
    Status.ONLINE_HEARTBEAT_ONLY.value: "tunnel disconnected",
    Status.ONLINE_VPN_ONLY.value: "heartbeat expired: no target-state fetch within the polling window",
    Status.UPDATING.value: "state report",
    Status.CONFIGURING.value: "state report",
    Status.POST_PROVISIONING.value: "state report",
    Status.INACTIVE.value: "deactivated by a user",
    Status.FROZEN.value: "over the device allowance",
}


@dataclass
class FleetInfo:
    id: int
    org_id: int
    slug: str
    device_type: str
    poll_interval: int | None
    cloudlink: bool
    paid: bool
    releases: list[str]


def _cumulative(weights: Iterable[float]) -> list[float]:
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    return cum


class DeviceRows:
    """Builds device rows (tuples in table column order) and a compact record per device for its history."""

    def __init__(self, columns: list[str], now: datetime) -> None:
        self.columns = columns
        self.pos = {c: i for i, c in enumerate(columns)}
        defaults = _device_defaults()
        self.defaults = [defaults[c] for c in columns]
        self.now = now
        self._bases: dict[tuple[str, int], list[Any]] = {}
        rng = random.Random(99)
        # Reported details drawn from a pool: realistic variety without a dozen random calls per row.
        profile_cols = [
            "os_version",
            "os_variant",
            "supervisor_version",
            "ip_address",
            "mac_address",
            "memory_total",
            "memory_usage",
            "storage_total",
            "storage_usage",
            "cpu_temp",
            "cpu_usage",
        ]
        self.profile_pos = [self.pos[c] for c in profile_cols]
        self.profiles = [
            (
                rng.choice(OS_VERSIONS),
                "prod" if rng.random() < 0.9 else "dev",
                rng.choice(SUPERVISORS),
                f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                f"dc:a6:32:{rng.randrange(256):02x}:{rng.randrange(256):02x}:{rng.randrange(256):02x}",
                4_000_000_000,
                rng.randrange(300_000_000, 3_500_000_000),
                32_000_000_000,
                rng.randrange(2_000_000_000, 30_000_000_000),
                rng.randrange(35, 80),
                rng.randrange(0, 100),
            )
            for _ in range(4096)
        ]

    def base(self, a: Archetype, fl: FleetInfo) -> list[Any]:
        key = (a.key, fl.id)
        row = self._bases.get(key)
        if row is None:
            row = list(self.defaults)
            values = {**BASE_SIGNALS, **a.signals}
            values.update(
                organization_id=fl.org_id,
                fleet_id=fl.id,
                device_type=fl.device_type,
                api_heartbeat_state={"fresh": "online", "stale": "offline", "never": "unknown"}[a.heartbeat],
                is_connected_to_vpn=a.vpn,
                overall_status=status_of(a, fl.cloudlink),
            )
            for c, v in values.items():
                row[self.pos[c]] = v
            self._bases[key] = row
        return row

    def org(
        self, org_index: int, op: OrgPlan, fleets: list[FleetInfo], first_index: int, first_id: int
    ) -> tuple[list[list[Any]], int | None]:
        """Rows of one organization (lists, frozen state applied) and the allowance that freezes them."""
        P = self.pos
        rng = random.Random(1000 + org_index)
        rnd = rng.random
        now = self.now
        fleet_of = rng.choices(
            fleets, cum_weights=_cumulative(1 / (j + 1) ** 0.6 for j in range(len(fleets))), k=op.devices
        )
        arche_of = rng.choices(ARCHETYPES, cum_weights=_cumulative(a.weight for a in ARCHETYPES), k=op.devices)
        windows = {fl.id: effective_poll_interval(None, fl.poll_interval) for fl in fleets}
        i_id, i_uuid, i_name, i_key = P["id"], P["uuid"], P["name"], P["api_key_hash"]
        i_created, i_activated, i_release = P["created_at"], P["activated_at"], P["release"]
        i_last_hb, i_deadline, i_vpn_event, i_conn_event = (
            P["last_api_heartbeat_at"],
            P["heartbeat_deadline"],
            P["last_vpn_event"],
            P["last_connectivity_event"],
        )
        i_service, i_report, i_seen, i_changed = (
            P["vpn_service_id"],
            P["last_state_report_at"],
            P["last_seen_at"],
            P["status_changed_at"],
        )
        i_dl, i_prov = P["download_progress"], P["provisioning_progress"]
        profiles, profile_pos = self.profiles, self.profile_pos
        rows: list[list[Any]] = []
        for n in range(op.devices):
            index = first_index + n
            fl = fleet_of[n]
            a = arche_of[n]
            uuid = device_uuid(index)
            row = self.base(a, fl)[:]
            row[i_id] = first_id + n
            row[i_uuid] = uuid
            row[i_name] = default_device_name(uuid)
            row[i_key] = hash_key(device_key(uuid))
            created = now - timedelta(seconds=259_200 + rnd() * 43_000_000)  # 3 to ~500 days ago
            row[i_created] = created
            if a.key != "preregistered":
                row[i_activated] = created
                for p, v in zip(profile_pos, profiles[index & 4095], strict=True):
                    row[p] = v
                row[i_release] = fl.releases[index % len(fl.releases)]
            if a.key == "updating":
                row[i_dl] = int(rnd() * 100)
            elif a.key in ("os-update", "post-provisioning"):
                row[i_prov] = int(rnd() * 100)
            interval = windows[fl.id]
            window = interval * 1.5
            # Heartbeat: a fresh one was fetched within the last interval; a stale one expired at its deadline.
            if a.heartbeat == "fresh":
                last = now - timedelta(seconds=rnd() * interval)
                row[i_last_hb] = last
                row[i_deadline] = last + timedelta(seconds=window)
                changed = created + (last - created) * rnd()
            elif a.heartbeat == "stale":
                last = max(now - timedelta(seconds=window + 60 + rnd() * 1_728_000), created + timedelta(minutes=10))
                row[i_last_hb] = last
                changed = min(last + timedelta(seconds=window), now)
            else:
                last = created
                changed = created
            if a.connected_before:
                event = max(last - timedelta(seconds=rnd() * 3600), created) if a.vpn else last
                row[i_vpn_event] = event
                row[i_conn_event] = event
                if a.vpn:
                    row[i_service] = 1 + (index & 3)
            if a.heartbeat != "never":
                row[i_report] = last
                row[i_seen] = last
            row[i_changed] = changed
            rows.append(row)
        return rows, self._freeze(rows, op, {fl.id: fl.paid for fl in fleets})

    def _freeze(self, rows: list[list[Any]], op: OrgPlan, paid: dict[int, bool]) -> int | None:
        """Freeze exactly the devices services.reconcile_frozen would (same order, same reasons); returns the allowance."""
        P = self.pos
        i_active, i_activated, i_id, i_fleet = P["is_active"], P["activated_at"], P["id"], P["fleet_id"]
        active = [r for r in rows if r[i_active]]
        allowance = len(active) - int(len(active) * op.over_allowance) if op.over_allowance else None
        active.sort(key=lambda r: (r[i_activated], r[i_id]))
        over_reason = FROZEN_OVER_ALLOWANCE.format(allowance=allowance)
        for rank, r in enumerate(active, start=1):
            if op.tier == Tier.FREE and paid[r[i_fleet]]:
                reason = FROZEN_PAID_FLEET
            elif allowance is not None and rank > allowance:
                reason = over_reason
            else:
                continue
            r[P["is_frozen"]] = True
            r[P["frozen_reason"]] = reason
            r[P["overall_status"]] = Status.FROZEN.value
            # A frozen device gets 304 and its fetches don't count: its heartbeat has lapsed.
            if r[P["api_heartbeat_state"]] == HeartbeatState.ONLINE.value:
                r[P["api_heartbeat_state"]] = HeartbeatState.OFFLINE.value
                r[P["heartbeat_deadline"]] = None
        return allowance


class Histories:
    """A plausible history per device, ending in its stored status at status_changed_at (a few each)."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self._chains: dict[tuple[str, str], list[list[str]]] = {}

    def chains(self, start: str, final: str) -> list[list[str]]:
        key = (start, final)
        if key not in self._chains:
            out = []
            for _ in range(64):
                chain = [start]
                if final != start:
                    for _ in range(self.rng.choice((0, 1, 1, 1, 2, 3, 4))):
                        nxt = self.rng.choice(TRANSIENT)
                        if nxt != chain[-1] and nxt != final:
                            chain.append(nxt)
                    chain.append(final)
                out.append(chain)
            self._chains[key] = out
        return self._chains[key]

    def rows(self, device_id: int, created: datetime, changed: datetime, final: str, never_active: bool) -> list[tuple]:
        start = Status.INACTIVE.value if never_active else Status.CONFIGURING.value
        if final == start and changed == created:
            return [("", start, created, "registered", device_id)]
        chain = self.chains(start, final)[device_id & 63]
        if final == start:
            # Back in its first status (e.g. Configuring again for an OS update) since status_changed_at.
            chain = [start, Status.ONLINE.value, final]
        n = len(chain)
        span = changed - created
        out = [("", start, created, "registered", device_id)]
        prev = start
        for k in range(1, n):
            status = chain[k]
            at = changed if k == n - 1 else created + span * (k / (n - 1))
            out.append((prev, status, at, REASONS[status], device_id))
            prev = status
        return out


def long_history(device_id: int, final: str, now: datetime, count: int) -> list[tuple]:
    """P3: a device that changed status count times over the last 60 days, ending in its stored status."""
    start = now - timedelta(days=60)
    step = (now - timedelta(hours=2) - start) / count
    out = [("", Status.CONFIGURING.value, start - timedelta(days=1), "registered", device_id)]
    prev = Status.CONFIGURING.value
    cycle = [
        Status.ONLINE.value,
        Status.OFFLINE.value,
        Status.ONLINE.value,
        Status.ONLINE_HEARTBEAT_ONLY.value,
        Status.ONLINE.value,
        Status.ONLINE_VPN_ONLY.value,
    ]
    for i in range(count - 2):
        status = cycle[i % len(cycle)]
        out.append((prev, status, start + step * i, REASONS[status], device_id))
        prev = status
    if prev == final:
        out.append((prev, Status.OFFLINE.value, now - timedelta(hours=2), REASONS[Status.OFFLINE.value], device_id))
        prev = Status.OFFLINE.value
    out.append((prev, final, now - timedelta(hours=1), REASONS[final], device_id))
    return out


# --- Database plumbing --------------------------------------------------------------------------


def _device_defaults() -> dict[str, Any]:
    """Every Device column with the model's default, so columns added later by migrations still load."""
    defaults = {}
    for f in Device._meta.concrete_fields:
        value = f.get_default()
        if isinstance(value, dict | list):
            value = json.dumps(value)
        defaults[f.column] = value
    return defaults
