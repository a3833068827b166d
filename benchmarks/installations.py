"""Smaller installations beside the main seed, one PostgreSQL schema each (P6, P12).

An installation of n devices (n below the main seed's size) is the main plan's bench-large
organization alone, cut to n devices and to as many fleets as it has per device in the main seed
(but never fewer than a full Fleets page),
in schema bench_n<n> of the bench database. At the size bench-large has in the main seed it holds
the same UUIDs, ids and signals as there (P6 compares the same due devices). Each is migrated and
seeded at the main seed's time the first time a figure needs it after that seed, and reused (also
with --skip-seed) while the main seed is unchanged; seeding the main installation drops them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.core.management import call_command
from django.db import connection

from benchmarks import seed
from benchmarks.context import Context

PREFIX = "bench_n"
# The name the 100,000-device installation had before there were several: dropped with the others.
LEGACY_SCHEMAS = ("bench_p6_small",)


def schema_name(devices: int) -> str:
    return f"{PREFIX}{devices}"


def sized_plan(plan: seed.Plan, devices: int) -> seed.Plan:
    """bench-large alone with `devices` devices (its fleets scaled alike, at least one)."""
    large = plan.orgs[0]
    assert large.slug == "bench-large", large
    from fleets.views import FLEETS_PER_PAGE  # (the app's modules load once Django is set up)

    # At least a full Fleets page of fleets (as many as the organization has): P12 compares the
    # page's cost as the installation grows, not a page of 10 cards with one of 50.
    fleets = max(min(FLEETS_PER_PAGE, large.fleets), round(large.fleets * devices / large.devices))
    sized = dataclasses.replace(large, devices=devices, fleets=fleets)
    return dataclasses.replace(
        plan,
        name=f"{plan.name}-n{devices}-f{fleets}",
        orgs=(sized, *plan.orgs[1:]),
        due_devices=min(plan.due_devices, devices),
    )


def growth_sizes(plan: seed.Plan) -> list[int]:
    """P12's installation sizes: a hundredth and a tenth of the main seed, and the main seed."""
    total = plan.total_devices
    return [total // 100, total // 10, total]


@contextmanager
def search_path(schema: str) -> Iterator[None]:
    """Point this process's connection at another schema of the bench database (one installation each)."""
    with connection.cursor() as cur:
        cur.execute("SHOW search_path")
        (previous,) = cur.fetchone()
        cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        cur.execute(f'SET search_path TO "{schema}"')
    try:
        yield
    finally:
        with connection.cursor() as cur:
            cur.execute(f"SET search_path TO {previous}")


def current_schema() -> str:
    with connection.cursor() as cur:
        cur.execute("SELECT current_schema()")
        return cur.fetchone()[0]


def _ensure_seeded(ctx: Context, devices: int) -> dict[str, Any]:
    """Migrate and seed the current schema as the installation of `devices` devices, unless it already is."""
    call_command("migrate", verbosity=0, interactive=False)
    plan = sized_plan(ctx.plan, devices)
    made = seed.get_meta("seed", {})
    if made.get("seeded_at") == ctx.meta["seeded_at"] and made.get("plan") == plan.name:
        ctx.log(f"   reusing schema {schema_name(devices)} ({made['devices']:,} devices)")
        return made
    ctx.log(f"   seeding schema {schema_name(devices)}: bench-large alone with {devices:,} devices")
    made = seed.seed(plan, log=ctx.log, org_subset=[0], now=datetime.fromisoformat(ctx.meta["seeded_at"]))
    seed.set_meta("seed", made)
    return made


@contextmanager
def installation(ctx: Context, devices: int) -> Iterator[dict[str, Any]]:
    """Run the block against the installation of `devices` devices; yields what its seed made.

    The main seed's size is the main installation itself (no schema switch)."""
    if devices == ctx.plan.total_devices:
        yield ctx.meta
        return
    schema = schema_name(devices)
    with search_path(schema):
        made = _ensure_seeded(ctx, devices)
        if current_schema() != schema:
            raise AssertionError(f"lost the search_path of installation {schema}")
        yield made
        # A connection closed and reopened meanwhile would have measured the main installation.
        if current_schema() != schema:
            raise AssertionError(f"the connection left installation {schema} during the measurement")


def drop_all(log=print) -> None:
    """Drop every smaller installation (after a new main seed they describe old data)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s OR nspname = ANY(%s)",
            [PREFIX.replace("_", r"\_") + "%", list(LEGACY_SCHEMAS)],
        )
        schemas = [r[0] for r in cur.fetchall()]
        for schema in schemas:
            cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
    if schemas:
        log(f"  dropped the smaller installations of the previous seed ({', '.join(schemas)})")
