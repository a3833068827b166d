"""P9: many devices go Offline in one sweep; how soon does every channel hold every change, in how
many messages, and what do channels add to the sweep's own time?

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/fleetstatus_bench_p9 python3 -m benchmarks.notify [--devices N] [--due N]

Data: one organization ("p9") of `devices` online devices in 100 fleets, seeded once and reused;
`due` of them get heartbeat deadlines spread over the 10 s before `now`, as if they fell silent
during the last sweep interval. The sweep measured is its database part (expire_heartbeats), the
transaction that writes the transitions and, through the trigger, the outbox rows.

Delivery: three channels (two webhooks, one Apprise json://), each to its own real HTTP receiver
on 127.0.0.1, hold 0 s (a hold adds its own length, by design), the default group window. After
the sweep commits, the dispatcher runs every FLEETSTATUS_NOTIFY_TICK_SECONDS (first tick one full
tick after the commit: the worst phase of beat) on a clock that advances with the wall clock from
`now`, and due deliveries are sent by a pool of threads standing in for Celery workers. Measured:
wall time from the sweep's commit until every receiver holds all the changes.

`p9(ctx)` is the bench runner's entry: the same measurement in its own schema of the bench database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

FLEETS = 100
SCHEMA = "bench_p9"
ORG = "p9"


def _seed(devices: int, log) -> tuple[int, list[int]]:
    """The p9 organization with `devices` online devices (reused when present); returns (org id, device ids)."""
    import secrets

    from django.utils import timezone

    from devices.models import Device
    from devices.status import HeartbeatState, Status
    from fleets import counts
    from fleets.models import Fleet, Organization, Tier

    org, _ = Organization.objects.get_or_create(slug=ORG, defaults={"name": "P9 notifications", "tier": Tier.PAID})
    ids = list(Device.objects.filter(organization=org).order_by("pk").values_list("pk", flat=True))
    # Reused only as seeded: a run that failed half-way leaves some devices Offline.
    as_seeded = not Device.objects.filter(organization=org).exclude(api_heartbeat_state=HeartbeatState.ONLINE).exists()
    if len(ids) == devices and as_seeded:
        log(f"   reusing {devices:,} devices of organization {ORG!r}")
        return org.pk, ids
    Device.objects.filter(organization=org).delete()
    Fleet.objects.filter(organization=org).delete()
    fleets = Fleet.objects.bulk_create(
        Fleet(organization=org, name=f"Site {i:03d}", slug=f"site-{i:03d}") for i in range(FLEETS)
    )
    now = timezone.now()
    t0 = time.perf_counter()
    for start in range(0, devices, 5000):
        Device.objects.bulk_create(
            Device(
                uuid=secrets.token_hex(16),
                organization=org,
                fleet=fleets[i % FLEETS],
                name=f"p9-{i:06d}",
                api_heartbeat_state=HeartbeatState.ONLINE,
                last_api_heartbeat_at=now,
                heartbeat_deadline=now + timedelta(days=3650),
                overall_status=Status.ONLINE_HEARTBEAT_ONLY,
                status_changed_at=now,
                activated_at=now,
            )
            for i in range(start, min(start + 5000, devices))
        )
    counts.fold()
    log(f"   seeded {devices:,} devices in {time.perf_counter() - t0:.0f} s")
    return org.pk, list(Device.objects.filter(organization=org).order_by("pk").values_list("pk", flat=True))


def _restore(org_id: int, ids: list[int], after_transition: int) -> None:
    """Put the due devices back online and drop what the run wrote (bench data only)."""
    from django.db import connection

    from notifications.models import Channel, Delivery, NotifiedState, PendingChange

    with connection.cursor() as cur:
        cur.execute(
            "UPDATE devices_device SET api_heartbeat_state = 'online', overall_status = 'online-heartbeat-only', "
            "heartbeat_deadline = now() + interval '3650 days' WHERE id = ANY(%s)",
            [ids],
        )
        cur.execute(
            "DELETE FROM devices_statustransition WHERE id > %s AND device_id = ANY(%s)", [after_transition, ids]
        )
    PendingChange.objects.filter(organization_id=org_id).delete()
    channel_ids = list(Channel.objects.filter(organization_id=org_id).values_list("pk", flat=True))
    Delivery.objects.filter(channel_id__in=channel_ids).delete()
    NotifiedState.objects.filter(channel_id__in=channel_ids).delete()


def _last_transition() -> int:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT COALESCE(max(id), 0) FROM devices_statustransition")
        return cur.fetchone()[0]


def _sweep(now: datetime) -> tuple[float, int]:
    from devices.services import expire_heartbeats

    t0 = time.perf_counter()
    expired = expire_heartbeats(now)
    return time.perf_counter() - t0, expired


def _trigger_cost(org_id: int, ids: list[int], rounds: int = 5) -> tuple[float, float]:
    """Median seconds of one INSERT of len(ids) transitions (rolled back) without and with a channel:
    the sweep's extra work, isolated from the rest of a sweep (whose time varies far more on a
    shared machine)."""
    from django.db import connection, transaction

    from notifications.models import Channel

    def insert() -> float:
        with transaction.atomic(), connection.cursor() as cur:
            t0 = time.perf_counter()
            cur.execute(
                "INSERT INTO devices_statustransition (device_id, from_status, to_status, at, reason) "
                "SELECT id, 'online-heartbeat-only', 'offline', now(), 'bench' FROM unnest(%s::bigint[]) AS id",
                [ids],
            )
            seconds = time.perf_counter() - t0
            transaction.set_rollback(True)
        return seconds

    without, with_channel = [], []
    for _ in range(rounds):
        Channel.objects.filter(organization_id=org_id).delete()
        without.append(insert())
        Channel.objects.create(organization_id=org_id, name="p9-trigger", url="https://hooks.example.com/")
        with_channel.append(insert())
    Channel.objects.filter(organization_id=org_id).delete()
    return statistics.median(without), statistics.median(with_channel)


def _deliver_all(org_id: int, receivers: dict[int, Any], due: int, now: datetime, committed: float, timeout: float):
    """Run dispatcher ticks and senders until every channel's receiver holds `due` changes; returns
    (seconds after the commit, {channel id: messages})."""
    from django.conf import settings
    from django.db import connection

    from notifications import engine, sending
    from notifications.models import Delivery

    tick = settings.FLEETSTATUS_NOTIFY_TICK_SECONDS

    with connection.cursor() as cur:
        cur.execute("SHOW search_path")
        (search_path,) = cur.fetchone()
    prepared = threading.local()

    def send(pk: int, at: datetime) -> str:
        # Each thread keeps its connection, as a worker process does; it reads the installation
        # this one does (the bench runner measures in a schema of its own).
        if not getattr(prepared, "done", False):
            with connection.cursor() as cur:
                cur.execute(f"SET search_path TO {search_path}")
            prepared.done = True
        return sending.deliver(pk, at)

    done_at: dict[int, float] = {}
    ticks: list[tuple] = []  # (started after the commit, dispatch s, deliveries sent, sending s)
    with ThreadPoolExecutor(max_workers=4) as pool:
        k = 1
        while len(done_at) < len(receivers):
            wake = committed + k * tick
            time.sleep(max(0.0, wake - time.perf_counter()))  # the beat's period, on the wall clock
            k += 1
            virtual_now = now + timedelta(seconds=time.perf_counter() - committed)
            t0 = time.perf_counter()
            engine.dispatch(virtual_now)
            t1 = time.perf_counter()
            due_ids = sending.due_ids(virtual_now)
            list(pool.map(send, due_ids, [virtual_now] * len(due_ids)))
            ticks.append(
                (round(t0 - committed, 2), round(t1 - t0, 2), len(due_ids), round(time.perf_counter() - t1, 2))
            )
            for channel_id, receiver in receivers.items():
                if channel_id in done_at:
                    continue
                sizes = Delivery.objects.filter(channel_id=channel_id, state="delivered").values_list("size", flat=True)
                if sum(sizes) >= due and len(receiver.delivered()) >= len(sizes):
                    done_at[channel_id] = time.perf_counter() - committed
            if time.perf_counter() - committed > timeout:
                raise AssertionError(f"not delivered within {timeout} s: {done_at}")
    messages = {c: Delivery.objects.filter(channel_id=c, event=Delivery.Event.CHANGES).count() for c in receivers}
    return max(done_at.values()), messages, ticks


def measure(devices: int = 100_000, due: int = 10_000, runs: int = 3, log=print) -> dict[str, Any]:
    from django.conf import settings
    from django.utils import timezone

    from benchmarks import staleness
    from notifications.models import Channel
    from notifications.receiver import Receiver

    settings.FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE = True
    import apprise  # noqa: F401 - loaded once per worker process, not per message: not part of the figure

    org_id, all_ids = _seed(devices, log)
    step = max(len(all_ids) // due, 1)
    ids = all_ids[::step][:due]
    Channel.objects.filter(organization_id=org_id).delete()
    without, with_channels, latencies, messages_per_run = [], [], [], []
    targets = [Receiver().start() for _ in range(3)]
    urls = [targets[0].url, targets[1].url, f"json://127.0.0.1:{targets[2].port}/hook"]

    def sweep() -> tuple[float, float, datetime, int]:
        now = timezone.now()
        last = _last_transition()
        staleness.arm(ids, now)
        seconds, expired = _sweep(now)
        assert expired == due, f"expired {expired}, expected {due}"
        return seconds, time.perf_counter(), now, last

    try:
        for run in range(runs + 1):  # run 0 warms up (imports, templates, HTTP machinery, caches)
            # Without any channel: the trigger finds none and inserts nothing.
            Channel.objects.filter(organization_id=org_id).delete()
            seconds, _, _, last = sweep()
            _restore(org_id, ids, last)
            if run:
                without.append(seconds)
            receivers = {}
            for i, (url, receiver) in enumerate(zip(urls, targets, strict=True)):
                channel = Channel.objects.create(organization_id=org_id, name=f"p9-{i}", url=url, hold_seconds=0)
                receivers[channel.pk] = receiver
                receiver.received.clear()
            seconds, committed, now, last = sweep()
            latency, messages, ticks = _deliver_all(org_id, receivers, due, now, committed, timeout=120)
            log(
                f"   {'warm-up: ' if not run else ''}sweep {seconds * 1000:.0f} ms; delivered after {latency:.1f} s; "
                f"ticks (start, dispatch s, sent, sending s): {ticks}"
            )
            for channel_id, receiver in receivers.items():
                if Channel.objects.get(pk=channel_id).kind == "webhook":
                    uuids = {c["uuid"] for r in receiver.delivered() for c in r.json()["changes"]}
                    assert len(uuids) == due, f"channel {channel_id} received {len(uuids)} distinct devices"
            _restore(org_id, ids, last)
            if run:
                with_channels.append(seconds)
                latencies.append(latency)
                messages_per_run.append(messages)
    finally:
        for r in targets:
            r.stop()
        Channel.objects.filter(organization_id=org_id).delete()
    insert_without, insert_with = _trigger_cost(org_id, ids)
    result = {
        "insert_without_channels_s": insert_without,
        "insert_with_channels_s": insert_with,
        "devices": devices,
        "due": due,
        "sweeps_without_s": [round(x, 3) for x in without],
        "sweeps_with_s": [round(x, 3) for x in with_channels],
        "sweep_without_channels_s": statistics.median(without),
        "sweep_with_channels_s": statistics.median(with_channels),
        "delivered_after_commit_s": statistics.median(latencies),
        "latencies_s": [round(x, 2) for x in latencies],
        "messages_per_channel": max(max(m.values()) for m in messages_per_run),
        "runs": runs,
    }
    result["sweep_growth"] = result["sweep_with_channels_s"] / result["sweep_without_channels_s"] - 1
    return result


def report(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"P9: {r['due']:,} of {r['devices']:,} devices go Offline in one sweep, 3 channels, hold 0 s, median of {r['runs']}",
            f"  every channel's receiver holds all changes {r['delivered_after_commit_s']:.1f} s after the sweep's commit "
            f"(runs {r['latencies_s']} s; target <= 10 s)",
            f"  messages per channel: {r['messages_per_channel']} (target <= 10)",
            f"  sweep (expire_heartbeats): {r['sweep_without_channels_s'] * 1000:.0f} ms without channels, "
            f"{r['sweep_with_channels_s'] * 1000:.0f} ms with ({r['sweep_growth']:+.1%}; target <= +10%); "
            f"runs {r['sweeps_without_s']} / {r['sweeps_with_s']} s",
            f"  the trigger's share: INSERT of {r['due']:,} transitions {r['insert_without_channels_s'] * 1000:.0f} ms "
            f"without channels, {r['insert_with_channels_s'] * 1000:.0f} ms with (median of 5, rolled back)",
        ]
    )


def p9(ctx) -> list:
    """The bench runner's entry: measured in schema bench_p9 of the bench database."""
    from django.core.management import call_command

    from benchmarks.installations import search_path
    from benchmarks.report import Row

    quick = ctx.quick
    with search_path(SCHEMA):
        call_command("migrate", verbosity=0, interactive=False)
        r = measure(
            devices=10_000 if quick else 100_000, due=1_000 if quick else 10_000, runs=1 if quick else 3, log=ctx.log
        )
    ctx.log(report(r))
    ok = r["delivered_after_commit_s"] <= 10 and r["messages_per_channel"] <= 10 and r["sweep_growth"] <= 0.10
    return [
        Row(
            "P9",
            f"Notifications: {r['due']:,} of {r['devices']:,} Offline in one sweep",
            "all delivered <= 10 s after the sweep, <= 10 messages per channel, sweep +<= 10 %",
            f"{r['delivered_after_commit_s']:.1f} s, {r['messages_per_channel']} messages, sweep {r['sweep_growth']:+.1%}",
            ok,
            r,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/fleetstatus_bench_p9")
    # The sweep's database part is measured; no Redis heartbeat store is needed.
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("SECRET_KEY", "fleetstatus-bench-only-not-secret-" + "x" * 20)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "fleetstatus.settings"
    from benchmarks.environment import ensure_database

    ensure_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    print(report(measure(args.devices, args.due, args.runs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
