"""P6: one run of the staleness task (devices.sweep.run_sweep) with 10,000 devices past their deadline.

Time is passed in, not waited for: `now` is the moment the data was seeded, when every online
heartbeat's database deadline is still ahead (the seed gives each at least half an interval), and
exactly the 10,000 chosen devices of bench-large get deadlines spread over the 10 s before it,
as if they had fallen silent during the last sweep interval. After each run those rows are put
back exactly as they were (state, status, deadline; the transitions the run wrote are deleted) and
the store is warmed again, so every run sees the same work.

"The same 10,000 among 100,000 devices" is measured in a second installation inside the same
database (benchmarks/installations.py): a schema that holds bench-large alone (same UUIDs, ids
and signals), seeded once by the same generator and reused while the main seed is unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

from benchmarks import installations, warm
from benchmarks.context import Context
from benchmarks.pages import profile_call
from benchmarks.report import NotAvailable, Row, median, ms
from devices.models import Device
from devices.status import HeartbeatState

SPREAD = timedelta(seconds=10)


def _run_sweep():
    try:
        from devices.sweep import run_sweep
    except ImportError as exc:
        raise NotAvailable("devices.sweep.run_sweep is missing") from exc
    return run_sweep


def _snapshot(ids: list[int]) -> list[tuple]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT id, api_heartbeat_state, heartbeat_deadline, overall_status, status_changed_at "
            "FROM devices_device WHERE id = ANY(%s) ORDER BY id",
            [ids],
        )
        return list(cur.fetchall())


def _restore(rows: list[tuple], after_transition: int) -> None:
    """Put the due rows back as they were and drop the transitions the runs wrote (bench data only)."""
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE devices_device d SET api_heartbeat_state = v.state, heartbeat_deadline = v.deadline, "
            "overall_status = v.status, status_changed_at = v.changed "
            "FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::text[], %s::timestamptz[]) "
            "AS v(id, state, deadline, status, changed) WHERE d.id = v.id",
            [
                [r[0] for r in rows],
                [r[1] for r in rows],
                [r[2] for r in rows],
                [r[3] for r in rows],
                [r[4] for r in rows],
            ],
        )
        cur.execute(
            "DELETE FROM devices_statustransition WHERE id > %s AND device_id = ANY(%s)",
            [after_transition, [r[0] for r in rows]],
        )


def arm(ids: list[int], now: datetime) -> None:
    """Make `ids` due: heartbeat deadlines spread over the SPREAD before `now`, as if they fell silent in one interval."""
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE devices_device d SET heartbeat_deadline = %s::timestamptz - v.k * %s::interval "
            "FROM unnest(%s::bigint[]) WITH ORDINALITY AS v(id, k) WHERE d.id = v.id",
            [now, SPREAD / len(ids), ids],
        )


def _due(now: datetime) -> int:
    return Device.objects.filter(api_heartbeat_state=HeartbeatState.ONLINE, heartbeat_deadline__lte=now).count()


def measure(
    ctx: Context,
    ids: list[int],
    now: datetime,
    runs: int,
    *,
    pending_fetches: int = 0,
    profile: str = "",
    warm_first: bool = True,
    sweep: Callable[[datetime], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Median time of run_sweep(now) with exactly len(ids) due devices; the rows are restored after.

    sweep: what runs the sweep instead of run_sweep in this process (P13: Celery workers)."""
    run_sweep = sweep or _run_sweep()
    heartbeats, hb = warm.store()
    already = _due(now)
    if already:
        raise AssertionError(
            f"{already} devices are already past their deadline at {now}: re-seed (run without --skip-seed)"
        )
    original = _snapshot(ids)
    if any(r[1] != HeartbeatState.ONLINE.value for r in original):
        raise AssertionError("some of the P6 devices are not online: re-seed (run without --skip-seed)")
    with connection.cursor() as cur:
        cur.execute("SELECT COALESCE(max(id), 0) FROM devices_statustransition")
        (last_transition,) = cur.fetchone()
    times, expired, details = [], [], {}
    if warm_first:
        warm.warm_heartbeats(log=ctx.log)
    try:
        for _ in range(runs):
            warm.rearm(ids)
            if pending_fetches:
                _pending(hb, heartbeats, pending_fetches, set(ids))
            arm(ids, now)
            if _due(now) != len(ids):
                raise AssertionError(f"armed {len(ids)} devices but {_due(now)} are due")
            t0 = time.perf_counter()
            if profile:
                profile_call(ctx, profile, lambda: run_sweep(now), repeat=1)
            else:
                details = run_sweep(now)
            times.append(time.perf_counter() - t0)
            if profile:
                break
            left = Device.objects.filter(pk__in=ids, api_heartbeat_state=HeartbeatState.ONLINE).count()
            if left:
                raise AssertionError(f"the sweep left {left} of {len(ids)} due heartbeats online: {details}")
            expired.append(details.get("expired"))
            _restore(original, last_transition)
    finally:
        _restore(original, last_transition)
        warm.rearm(ids)
    return {
        "median": median(times),
        "runs_s": [round(t, 3) for t in times],
        "expired": expired,
        "last_details": details,
    }


def _pending(hb, heartbeats, count: int, exclude: set[int]) -> None:
    """Fetches waiting for write-back, as the store holds them between two sweeps under load."""
    ids = list(
        Device.objects.filter(api_heartbeat_state=HeartbeatState.ONLINE, is_frozen=False)
        .exclude(pk__in=exclude)
        .order_by("uuid")
        .values_list("pk", "uuid")[:count]
    )
    from django.utils import timezone

    at = heartbeats.to_us(timezone.now())
    by_shard: dict[int, list[int]] = {}
    for pk, uuid in ids:
        by_shard.setdefault(heartbeats.shard_of(uuid), []).append(pk)
    pipe = warm.bulk_client().pipeline(transaction=False)
    for shard, members in by_shard.items():
        for start in range(0, len(members), 5000):
            pipe.hset(heartbeats.seen_key(shard), mapping={str(pk): at for pk in members[start : start + 5000]})
    pipe.execute()


def p6(ctx: Context) -> list[Row]:
    _run_sweep()
    warm.store()
    ids = ctx.meta["p6_due_ids"]
    now = datetime.fromisoformat(ctx.meta["seeded_at"])
    # Each run is a large operation (10,000 transitions, then the rows put back): three are enough.
    runs = 3
    total = ctx.plan.total_devices
    small_n = ctx.meta["orgs"]["bench-large"]["devices"]

    with installations.installation(ctx, small_n) as small_meta:
        if small_meta["p6_due_ids"] != ids:
            raise AssertionError("the 100k installation did not get the same due devices as the 1M one")
        small = measure(ctx, ids, now, runs)
    ctx.log(f"   {len(ids):,} due among {small_n:,}: {ms(small['median'])} (runs {small['runs_s']} s)")

    big = measure(ctx, ids, now, runs)
    ctx.log(
        f"   {len(ids):,} due among {total:,}: {ms(big['median'])} (runs {big['runs_s']} s, expired {big['expired']})"
    )
    ratio = small["median"] / big["median"] if big["median"] else float("nan")
    ok = big["median"] <= 2.0 and ratio >= 1 / 1.5
    if not ok and ctx.args.profile:
        measure(ctx, ids, now, 1, profile="p6-sweep", warm_first=False)
    rows = [
        Row(
            "P6",
            f"Staleness task, {len(ids):,} due among {total:,} devices",
            "<= 2 s; the 100k run >= 1/1.5 of it",
            f"{ms(big['median'])}; among {small_n:,}: {ms(small['median'])} ({ratio:.2f}x)",
            ok,
            {"large": big, "small": small, "ratio_small_to_large": round(ratio, 3)},
        )
    ]
    # Not a target, but the cost the sweep really has under P4's load: at 1,700 fetches/s
    # and one sweep every 10 s, about 17,000 fetches wait in the store for write-back at each run.
    pending = 1_700 * 10 if not ctx.quick else 1_700
    loaded = measure(ctx, ids, now, 1, pending_fetches=pending, warm_first=False)
    ctx.log(f"   with {pending:,} fetches to write back as well: {ms(loaded['median'])} ({loaded['last_details']})")
    rows.append(
        Row(
            "P6",
            f"  same, plus {pending:,} fetches to write back (P4's load, 10 s sweep)",
            "(informational)",
            ms(loaded["median"]),
            None,
            loaded,
        )
    )
    return rows
