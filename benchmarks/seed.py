"""Seed the benchmark installation: 1,000,000 devices in 1,000 fleets across 10 organizations.

The data is generated in Python and streamed with PostgreSQL binary COPY (psycopg 3), a few
thousand rows per network write, into the tables the migrations created. The rows are replaced
(TRUNCATE), so this wipes the database it points at: it refuses any database whose name does not
contain "bench". The only DDL: the secondary indexes of the device and transition tables are dropped
for the load and built again from their own definitions after it (defer_indexes), which is much
cheaper than maintaining 18 indexes row by row.

How the ten organizations cover every scenario of the figures (they need a 1,000,000-device
installation of 10 organizations *and* "an organization with 1,000 fleets and 1,000,000 devices",
which cannot both be one organization):

- `bench-large` holds 100,000 devices in 100 fleets: the Devices page of P1, the Device Summary of P3
  (one of its devices has 10,000 transitions), and the 10,000 devices P6 makes due.
- `bench-small` holds 1,000 devices in 10 fleets with the same mix: the 1,000-device baseline of P1
  and the small Fleets page of P2 (query counts must not depend on size).
- eight more organizations hold the remaining 899,000 devices in 890 fleets (uneven sizes).
- the P2 user `bench-operator` is a member of all ten: his Fleets page shows 1,000 fleets and
  1,000,000 devices, every device of the installation, which is the largest Fleets page this data can
  have (scoping by ten organization ids instead of one costs the same aggregate, not less).

The status of every device is decided by `devices.status.compute_status` itself: each device is
built from one of a few signal templates (an archetype), the rule is evaluated once per (template,
cloudlink) pair, and only status-neutral fields (times, names, metrics) vary per device. Frozen
devices follow the allowance rule exactly as `services.reconcile_frozen` orders them.
`verify()` checks the result in SQL with `with_computed_status` and by running `reconcile_frozen`
in a rolled-back transaction.

Device API keys are derived from the UUID and a bench secret (`device_key()`), so the load generator
can authenticate as any device while the database keeps only the hash, as the model requires.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone

from devices.models import Device, StatusTransition, effective_poll_interval
from devices.services import FROZEN_OVER_ALLOWANCE, FROZEN_PAID_FLEET, default_device_name, reconcile_frozen
from devices.status import POST_PROVISIONING_STATE, HeartbeatState, Status, UpdateStatus, compute_status
from fleets import counts as kept_counts
from fleets.keys import hash_key
from fleets.models import Fleet, Membership, Organization, ServiceKey, Tier

BENCH_SECRET = os.environ.get("FLEETSTATUS_BENCH_SECRET", "fleetstatus-bench-not-a-secret")
META_TABLE = "bench_meta"
OPERATOR = "bench-operator"
SMALL_SCHEMA = "bench_p6_small"
SEED_WORKERS = int(os.environ.get("FLEETSTATUS_BENCH_SEED_WORKERS", "2"))


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


def _columns(table: str) -> list[tuple[str, str]]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [table],
        )
        return list(cur.fetchall())


def _copy(table: str, columns: list[tuple[str, str]], rows: Iterable[tuple]) -> int:
    names = ", ".join(f'"{c}"' for c, _ in columns)
    n = 0
    raw = connection.connection
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types([t for _, t in columns])
        for row in rows:
            cp.write_row(row)
            n += 1
    return n


def _device_defaults() -> dict[str, Any]:
    """Every Device column with the model's default, so columns added later by migrations still load."""
    defaults = {}
    for f in Device._meta.concrete_fields:
        value = f.get_default()
        if isinstance(value, dict | list):
            value = json.dumps(value)
        defaults[f.column] = value
    return defaults


def _check_bench_database() -> None:
    name = connection.settings_dict["NAME"]
    if connection.vendor != "postgresql":
        raise SystemExit("The benchmarks need PostgreSQL (DATABASE_URL=postgres://...).")
    if "bench" not in name:
        raise SystemExit(
            f"Refusing to seed database {name!r}: seeding wipes it; use a database whose name contains 'bench'."
        )


def wipe() -> None:
    """Empty every table of the installation but the migration bookkeeping (TRUNCATE, no DDL)."""
    keep = {"django_migrations", "django_content_type", "auth_permission"}
    tables = [t for t in connection.introspection.django_table_names(only_existing=True) if t not in keep]
    with connection.cursor() as cur:
        cur.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key text PRIMARY KEY, value jsonb NOT NULL)")
        cur.execute(f"TRUNCATE {META_TABLE}")


DEFERRED_TABLE = "bench_deferred_indexes"


def defer_indexes(tables: list[str]) -> int:
    """Drop the secondary indexes of `tables` for a bulk load; restore_deferred_indexes() builds them again.

    Building an index once over a million sorted rows costs a fraction of maintaining it row by row
    during COPY (two trigram GIN indexes and the page indexes: 18 on devices). The definitions are
    kept in a table first, so a seed that dies half-way leaves nothing lost: the next seed or
    --skip-seed run rebuilds them. Indexes behind constraints (primary keys, unique) stay.
    """
    with connection.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {DEFERRED_TABLE} (name text PRIMARY KEY, definition text NOT NULL)")
        cur.execute(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "WHERE i.indrelid = ANY(%s::regclass[]) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
            [tables],
        )
        found = cur.fetchall()
        for name, definition in found:
            cur.execute(
                f"INSERT INTO {DEFERRED_TABLE} (name, definition) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                [name, definition],
            )
            cur.execute(f"DROP INDEX {name}")
    return len(found)


def restore_deferred_indexes(log: Callable[[str], None] | None = None) -> int:
    """Build the indexes defer_indexes() dropped (if any are pending); returns how many."""
    t0 = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", [DEFERRED_TABLE])
        if cur.fetchone()[0] is None:
            return 0
        cur.execute(f"SELECT name, definition FROM {DEFERRED_TABLE} ORDER BY name")
        pending = cur.fetchall()
        cur.execute("SET maintenance_work_mem = '1GB'")
        for name, definition in pending:
            cur.execute(definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1))
            cur.execute(f"DELETE FROM {DEFERRED_TABLE} WHERE name = %s", [name])
        cur.execute("RESET maintenance_work_mem")
    if pending and log:
        log(f"  {len(pending)} indexes built after the load in {time.perf_counter() - t0:.1f} s")
    return len(pending)


def set_meta(key: str, value: Any) -> None:
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {META_TABLE} (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            [key, json.dumps(value)],
        )


def get_meta(key: str, default: Any = None) -> Any:
    with connection.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", [META_TABLE])
        if cur.fetchone()[0] is None:
            return default
        cur.execute(f"SELECT value FROM {META_TABLE} WHERE key = %s", [key])
        row = cur.fetchone()
    if row is None:
        return default
    return json.loads(row[0]) if isinstance(row[0], str) else row[0]


def _reset_sequences(tables: list[str]) -> None:
    with connection.cursor() as cur:
        for t in tables:
            cur.execute(f"SELECT setval(pg_get_serial_sequence(%s, 'id'), COALESCE((SELECT max(id) FROM {t}), 1))", [t])


# --- Seeding --------------------------------------------------------------------------------------


def _create_orgs_and_fleets(
    plan: Plan, org_subset: list[int] | None = None
) -> tuple[list[Organization], list[list[FleetInfo]]]:
    rng = random.Random(42)
    orgs, all_fleets = [], []
    for i, op in enumerate(plan.orgs):
        if org_subset is not None and i not in org_subset:
            continue
        org = Organization.objects.create(slug=op.slug, name=op.name, tier=op.tier)
        fleets = []
        for j in range(op.fleets):
            r = rng.random()
            fleets.append(
                Fleet(
                    organization=org,
                    slug=f"fleet-{j + 1:04d}",
                    name=f"{op.name.split(' (')[0]} fleet {j + 1}",
                    device_type=DEVICE_TYPES[(i + j) % len(DEVICE_TYPES)],
                    fleet_type=Tier.PAID if j < op.paid_fleets or (op.tier == Tier.PAID and r < 0.3) else Tier.FREE,
                    poll_interval=900 if r < 0.1 else (1800 if r < 0.15 else None),
                    cloudlink_enabled=not (0.15 <= r < 0.2),
                    provisioning_key_hash=hash_key(f"{BENCH_SECRET}:fleet:{op.slug}/{j}"),
                )
            )
        Fleet.objects.bulk_create(fleets, batch_size=1000)
        fleets = list(Fleet.objects.filter(organization=org).order_by("slug"))
        infos = [
            FleetInfo(
                id=f.id,
                org_id=org.id,
                slug=f.slug,
                device_type=f.device_type,
                poll_interval=f.poll_interval,
                cloudlink=f.cloudlink_enabled,
                paid=f.fleet_type == Tier.PAID,
                releases=[hashlib.sha1(f"{f.id}-{k}".encode()).hexdigest()[:7] for k in range(3)],
            )
            for f in fleets
        ]
        orgs.append(org)
        all_fleets.append(infos)
    return orgs, all_fleets


def _create_users(plan: Plan, orgs: list[Organization]) -> None:
    User = get_user_model()
    by_slug = {o.slug: o for o in orgs}
    operator = User.objects.create(username=OPERATOR)
    operator.set_unusable_password()
    operator.save()
    Membership.objects.bulk_create(
        [Membership(user=operator, organization=o, role=Membership.Role.OWNER) for o in orgs]
    )
    for slug in ("bench-large", "bench-small"):
        if slug in by_slug:
            user = User.objects.create(username=f"{slug}-member")
            Membership.objects.create(user=user, organization=by_slug[slug], role=Membership.Role.MEMBER)
    ServiceKey.objects.create(name="bench tunnel server", key_hash=hash_key(service_key()))


@dataclass
class OrgTask:
    index: int  # in plan.orgs
    org_pk: int
    fleets: list[FleetInfo]
    first_index: int  # device number in the whole plan (UUIDs derive from it)
    first_id: int


def _bulk_session() -> None:
    with connection.cursor() as cur:
        # Bulk-load settings for this session only: no fsync wait per commit, and FK triggers off
        # while COPY runs (the rows are generated consistent; verify() checks the references).
        cur.execute("SET synchronous_commit = off")
        cur.execute("SET session_replication_role = replica")


def _seed_orgs(plan: Plan, tasks: list[OrgTask], now: datetime, search_path: str) -> dict[str, Any]:
    """Generate and COPY the devices, then the histories, of some organizations (in a worker process)."""
    with connection.cursor() as cur:
        cur.execute(f"SET search_path TO {search_path}")
    _bulk_session()
    columns = _columns(Device._meta.db_table)
    builder = DeviceRows([c for c, _ in columns], now)
    P = builder.pos
    t_cols = [c for c in _columns(StatusTransition._meta.db_table) if c[0] != "id"]
    assert [c for c, _ in t_cols] == ["from_status", "to_status", "at", "reason", "device_id"], t_cols
    out: dict[str, Any] = {"orgs": {}, "allowances": {}, "due_candidates": [], "p3": {}, "devices": 0, "transitions": 0}
    # (id, created, status_changed_at, status, never active, org index) per device: histories follow the devices.
    records: list[tuple] = []
    p3 = out["p3"]

    def device_rows() -> Iterator[list[Any]]:
        for task in tasks:
            op = plan.orgs[task.index]
            t0 = time.perf_counter()
            rows, out["allowances"][task.org_pk] = builder.org(
                task.index, op, task.fleets, task.first_index, task.first_id
            )
            counts: dict[str, int] = {}
            for row in rows:
                status = row[P["overall_status"]]
                counts[status] = counts.get(status, 0) + 1
                if op.slug == "bench-large":
                    if not p3 and status == Status.ONLINE.value:
                        p3.update(id=row[P["id"]], uuid=row[P["uuid"]], status=status)
                        row[P["status_changed_at"]] = now - timedelta(hours=1)
                    elif row[P["api_heartbeat_state"]] == HeartbeatState.ONLINE.value and not row[P["is_frozen"]]:
                        out["due_candidates"].append(row[P["id"]])
                records.append(
                    (
                        row[P["id"]],
                        row[P["created_at"]],
                        row[P["status_changed_at"]],
                        status,
                        row[P["activated_at"]] is None,
                        task.index,
                    )
                )
                yield row
            out["orgs"][op.slug] = {
                "devices": op.devices,
                "fleets": op.fleets,
                "statuses": counts,
                "seconds": round(time.perf_counter() - t0, 1),
            }

    def transition_rows() -> Iterator[tuple]:
        histories: dict[int, Histories] = {}
        for device_id, created, changed, status, never_active, org_index in records:
            if device_id == p3.get("id"):
                yield from long_history(device_id, status, now, plan.transitions_device)
                continue
            h = histories.get(org_index)
            if h is None:
                h = histories[org_index] = Histories(seed=7 + org_index)
            yield from h.rows(device_id, created, changed, status, never_active)

    t0 = time.perf_counter()
    with transaction.atomic():
        out["devices"] = _copy(Device._meta.db_table, columns, device_rows())
    out["devices_seconds"] = round(time.perf_counter() - t0, 1)
    t1 = time.perf_counter()
    with transaction.atomic():
        out["transitions"] = _copy(StatusTransition._meta.db_table, t_cols, transition_rows())
    out["transitions_seconds"] = round(time.perf_counter() - t1, 1)
    connection.close()
    return out


def _partition(tasks: list[OrgTask], plan: Plan, workers: int) -> list[list[OrgTask]]:
    """Organizations spread over workers so that each gets about the same number of devices."""
    parts: list[list[OrgTask]] = [[] for _ in range(workers)]
    load = [0] * workers
    for task in sorted(tasks, key=lambda t: -plan.orgs[t.index].devices):
        i = load.index(min(load))
        parts[i].append(task)
        load[i] += plan.orgs[task.index].devices
    return [p for p in parts if p]


def seed(
    plan: Plan, *, log: Callable[[str], None] = print, org_subset: list[int] | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Wipe and seed the current database (and search_path) with plan; returns what it made.

    Devices and histories are generated and streamed by SEED_WORKERS processes at once, each with
    its own connection and its own organizations: on two cores, one process generating rows while
    PostgreSQL writes them leaves a core idle half the time. The secondary indexes are dropped for
    the load and built once after it (defer_indexes).
    org_subset seeds only those organizations of the plan, with the same UUIDs, ids and signals as
    the full seed (P6 compares the same due devices in a smaller installation).
    """
    import multiprocessing

    from django.db import connections

    _check_bench_database()
    now = now or timezone.now()
    t0 = time.perf_counter()
    restore_deferred_indexes(log)  # a seed that died half-way
    wipe()
    defer_indexes([Device._meta.db_table, StatusTransition._meta.db_table])
    with connection.cursor() as cur:
        cur.execute("SHOW search_path")
        (search_path,) = cur.fetchone()
    with transaction.atomic():
        orgs, fleets_by_org = _create_orgs_and_fleets(plan, org_subset)
        _create_users(plan, orgs)
    t_orgs = time.perf_counter()

    tasks, index, next_id = [], 0, 1
    org_iter, fleet_iter = iter(orgs), iter(fleets_by_org)
    for i, op in enumerate(plan.orgs):
        if org_subset is None or i in org_subset:
            tasks.append(OrgTask(i, next(org_iter).pk, next(fleet_iter), index, next_id))
        # Organizations left out still take their UUIDs and ids: those kept match the full seed.
        index += op.devices
        next_id += op.devices
    parts = _partition(tasks, plan, SEED_WORKERS)
    log(
        f"  {len(tasks)} organizations in {len(parts)} worker processes: "
        + "; ".join(", ".join(plan.orgs[t.index].slug for t in p) for p in parts)
    )
    # Forked workers must not share this process's connection: each opens its own.
    connections.close_all()
    with multiprocessing.get_context("fork").Pool(len(parts)) as pool:
        results = pool.starmap(_seed_orgs, [(plan, part, now, search_path) for part in parts])
    # This process's new connection must look at the same installation (a schema, for P6).
    with connection.cursor() as cur:
        cur.execute(f"SET search_path TO {search_path}")
    t_copy = time.perf_counter()
    restore_deferred_indexes(log)
    t_indexes = time.perf_counter()

    made: dict[str, Any] = {"orgs": {}, "devices": 0, "transitions": 0}
    due_candidates: list[int] = []
    p3: dict[str, Any] = {}
    with transaction.atomic():
        for r in results:
            made["devices"] += r["devices"]
            made["transitions"] += r["transitions"]
            due_candidates += r["due_candidates"]
            p3 = p3 or r["p3"]
            for org_pk, allowance in r["allowances"].items():
                Organization.objects.filter(pk=org_pk).update(device_allowance=allowance)
            made["orgs"].update(r["orgs"])
        _reset_sequences([Device._meta.db_table, StatusTransition._meta.db_table])
    # COPY ran with triggers off (session_replication_role = replica): the device counts the pages
    # read (fleets/counts.py) are counted once here instead.
    t_counts = time.perf_counter()
    kept_counts.rebuild()
    log(f"  device counts per fleet and status rebuilt in {time.perf_counter() - t_counts:.1f} s")
    for slug, info in made["orgs"].items():
        info["allowance"] = Organization.objects.get(slug=slug).device_allowance
    made["orgs"] = {op.slug: made["orgs"][op.slug] for op in plan.orgs if op.slug in made["orgs"]}
    for r in results:
        log(
            f"  worker: {r['devices']:,} devices in {r['devices_seconds']} s, then {r['transitions']:,} transitions in {r['transitions_seconds']} s"
        )

    due = random.Random(11).sample(sorted(due_candidates), min(plan.due_devices, len(due_candidates)))
    made.update(
        plan=plan.name,
        seeded_at=now.isoformat(),
        p3_device=p3,
        p6_due_ids=sorted(due),
        seconds={
            "orgs_fleets_users": round(t_orgs - t0, 1),
            "copy": round(t_copy - t_orgs, 1),
            "indexes": round(t_indexes - t_copy, 1),
        },
    )
    log(f"  COPY: {made['devices']:,} devices and {made['transitions']:,} transitions in {t_copy - t_orgs:.1f} s")
    made["seconds"]["vacuum_analyze"] = vacuum()
    made["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    log(
        f"  VACUUM ANALYZE in {made['seconds']['vacuum_analyze']:.1f} s; seeding took {made['seconds']['total']:.1f} s in all "
        f"(of which COPY {made['seconds']['copy']:.1f} s)"
    )
    return made


def vacuum(log: Callable[[str], None] | None = None) -> float:
    """Fresh planner statistics and a visibility map (index-only scans); returns the seconds it took."""
    t0 = time.perf_counter()
    with connection.cursor() as cur:
        for table in (
            Device._meta.db_table,
            StatusTransition._meta.db_table,
            Fleet._meta.db_table,
            Organization._meta.db_table,
        ):
            cur.execute(f"VACUUM (ANALYZE) {table}")
    seconds = round(time.perf_counter() - t0, 1)
    if log:
        log(f"  VACUUM ANALYZE in {seconds} s")
    return seconds


# --- Verification -----------------------------------------------------------------------------


def verify(*, log: Callable[[str], None] = print, sample: int | None = None) -> None:
    """Fail loudly unless the seeded data obeys the status rule, the allowance rule and its references."""
    from django.db.models import F

    from devices.status import with_computed_status

    t0 = time.perf_counter()
    qs = Device.objects.all()
    if sample:
        qs = qs.filter(pk__in=Device.objects.order_by("?").values("pk")[:sample])
    checked = qs.count()
    wrong = with_computed_status(qs.order_by()).exclude(overall_status=F("computed_status")).count()
    if wrong:
        raise SystemExit(
            f"seed check failed: {wrong} of {checked} devices have a stored status != with_computed_status"
        )
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM devices_device d LEFT JOIN fleets_fleet f ON f.id = d.fleet_id "
            "WHERE f.id IS NULL OR f.organization_id <> d.organization_id"
        )
        (orphans,) = cur.fetchone()
        # The newest transition of every device must lead to its stored status at its change time.
        cur.execute(
            "SELECT count(*) FROM devices_device d JOIN LATERAL (SELECT to_status, at FROM devices_statustransition t "
            "WHERE t.device_id = d.id ORDER BY at DESC, id DESC LIMIT 1) last ON true "
            "WHERE last.to_status <> d.overall_status OR last.at <> d.status_changed_at"
            + (" AND d.id % 97 = 0" if sample else "")
        )
        (bad_history,) = cur.fetchone()
    if orphans or bad_history:
        raise SystemExit(
            f"seed check failed: {orphans} devices with a bad fleet, {bad_history} with a history not ending in their status"
        )
    frozen_changes = 0
    with transaction.atomic():
        for org in Organization.objects.all():
            frozen_changes += reconcile_frozen(org, reason="bench verify")
        transaction.set_rollback(True)
    if frozen_changes:
        raise SystemExit(f"seed check failed: reconcile_frozen would change {frozen_changes} statuses")
    miscounted = kept_counts.mismatches()
    if miscounted:
        raise SystemExit(f"seed check failed: kept device counts differ from the devices in {len(miscounted)} places")
    log(
        f"  verified {checked:,} devices: stored status = with_computed_status, fleets and histories consistent, "
        f"allowances as reconcile_frozen decides, counts per fleet and status exact ({time.perf_counter() - t0:.1f} s)"
    )


def is_seeded(plan: Plan) -> bool:
    return get_meta("seed", {}).get("plan") == plan.name and Device.objects.count() >= plan.total_devices * 0.99


def seed_and_record(plan: Plan, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    log(
        f"seeding plan {plan.name!r}: {plan.total_devices:,} devices, {plan.total_fleets:,} fleets, {len(plan.orgs)} organizations"
    )
    made = seed(plan, log=log)
    verify(log=log)
    set_meta("seed", made)
    from benchmarks.warm import flush_store

    flush_store(log=log)
    return made


def heartbeat_settings_summary() -> str:
    return f"default poll interval {settings.FLEETSTATUS_DEFAULT_POLL_INTERVAL} s, floor {settings.FLEETSTATUS_MIN_POLL_INTERVAL} s"
