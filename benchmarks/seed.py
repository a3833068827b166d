"""Seed the benchmark installation: 1,000,000 devices in 1,000 fleets across 10 organizations.

The data is generated in Python and streamed with PostgreSQL binary COPY (psycopg 3), a few
thousand rows per network write, into the tables the migrations created. The rows are replaced
(TRUNCATE), so this wipes the database it points at: it refuses any database whose name does not
contain "bench". The only DDL: the secondary indexes of the device and transition tables are dropped
for the load and built again from their own definitions after it (defer_indexes), which is much
cheaper than maintaining 18 indexes row by row; the search rows (devices/search.py) are copied from
the devices after the load, before their own indexes are built.

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

The rows are generated in benchmarks/seeddata.py. The status of every device is decided by
`devices.status.compute_status` itself: each device is
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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone

from benchmarks.seeddata import (
    BENCH_SECRET,
    DEVICE_TYPES,
    FULL,
    QUICK,
    DeviceRows,
    FleetInfo,
    Histories,
    OrgPlan,
    Plan,
    device_key,
    device_uuid,
    long_history,
    service_key,
)
from devices import search as device_search
from devices.models import Device, DeviceSearch, StatusTransition
from devices.services import reconcile_frozen
from devices.status import HeartbeatState, Status
from fleets import counts as kept_counts
from fleets.keys import hash_key
from fleets.models import Fleet, Membership, Organization, ServiceKey, Tier

# Generation lives in benchmarks/seeddata.py; these names stay reachable as seed.<name>.
__all__ = [
    "FULL",
    "QUICK",
    "DeviceRows",
    "FleetInfo",
    "Histories",
    "OrgPlan",
    "Plan",
    "device_key",
    "device_uuid",
    "long_history",
    "service_key",
]

META_TABLE = "bench_meta"
OPERATOR = "bench-operator"
SEED_WORKERS = int(os.environ.get("FLEETSTATUS_BENCH_SEED_WORKERS", "2"))


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
    during COPY (the page indexes: 18 on devices; the trigram GIN indexes of the search rows). The definitions are
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
    defer_indexes([Device._meta.db_table, StatusTransition._meta.db_table, DeviceSearch._meta.db_table])
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
    # COPY ran with triggers off: the search rows (devices/search.py) are copied once here, before
    # their indexes are built.
    copied = device_search.rebuild()
    log(f"  search rows copied from the devices in {time.perf_counter() - t_copy:.1f} s ({copied:,})")
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
            DeviceSearch._meta.db_table,
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
    stale = device_search.mismatches()
    if stale:
        raise SystemExit(f"seed check failed: the search rows differ from devices {stale[:10]}")
    log(
        f"  verified {checked:,} devices: stored status = with_computed_status, fleets and histories consistent, "
        f"allowances as reconcile_frozen decides, counts per fleet and status and search rows exact ({time.perf_counter() - t0:.1f} s)"
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
