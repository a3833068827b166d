"""Fleet page and fleet history benchmark: `.venv/bin/python -m benchmarks.fleetpage [--devices N]`.

Seeds one organization with a fleet of --devices devices (100,000 by default) and --other-fleets
small fleets, plus 30 days of count history in the shape the roll-up leaves (one snapshot a minute
for the last 7 days, one an hour before), into the database of FLEETPAGE_BENCH_DATABASE_URL
(default postgres://postgres@127.0.0.1:5432/fleetstatus_bench_fleetpage, created if missing; its name must contain
"bench": the fleet tables are emptied). Then it prints:

- the fleet page's server time for each range (median of --runs, through Django's test Client as a
  logged-in member, whole middleware stack and template), with its query count;
- the cost of the snapshot in the fold: a sweep-like UPDATE flips --flips devices spread over the
  fleets, then fold() runs with and without history.record (alternating, median of --runs each).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/fleetstatus_bench_fleetpage"


def _setup(url: str) -> None:
    name = urlparse(url).path.lstrip("/")
    if "bench" not in name:
        sys.exit(f"refusing to use database {name!r}: its name must contain 'bench' (its fleet tables are emptied)")
    import psycopg

    admin = urlparse(url)._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/10")
    sys.path.insert(0, str(ROOT))
    from benchmarks.environment import configure_environment

    configure_environment()  # production settings (DEBUG off), plain HTTP for the test Client
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _seed(devices: int, other_fleets: int, days: int) -> tuple[str, object]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from devices import services
    from fleets import counts
    from fleets.models import Fleet, Membership, Organization

    with connection.cursor() as cur:
        cur.execute(
            "TRUNCATE devices_statustransition, devices_device, fleets_fleetcountsnapshot, "
            "fleets_statuscountdelta, fleets_statuscount CASCADE"
        )
    Fleet.objects.all().delete()
    Organization.objects.all().delete()
    org = Organization.objects.create(slug="bench-fleetpage", name="Bench fleet page")
    fleets = [Fleet.objects.create(organization=org, slug="big", name="Big fleet", device_type="generic-amd64")]
    fleets += [
        Fleet.objects.create(organization=org, slug=f"small-{i}", name=f"Small {i}", device_type="generic-amd64")
        for i in range(other_fleets)
    ]
    user, _ = get_user_model().objects.get_or_create(username="bench-fleetpage")
    Membership.objects.get_or_create(user=user, organization=org)
    template = services.create_device(fleets[0], "f" * 32, name="template")[0]
    columns = [f.column for f in template._meta.concrete_fields if f.column != "id"]
    # Copies of one device, with a realistic mix of stored statuses (the page reads counts, not rules).
    values = {
        "uuid": "md5(%(prefix)s || '-' || g)",
        "name": "'device-' || g",
        "fleet_id": "%(fleet)s",
        "overall_status": "CASE WHEN g %% 100 < 90 THEN 'online' WHEN g %% 100 < 95 THEN 'offline' "
        "WHEN g %% 100 < 97 THEN 'inactive' ELSE 'updating' END",
    }
    insert = f"""INSERT INTO devices_device ({", ".join(columns)})
                 SELECT {", ".join(values.get(c, c) for c in columns)}
                 FROM devices_device, generate_series(%(first)s, %(last)s) AS g WHERE id = %(template)s"""
    t = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute(
            insert, {"prefix": "big", "fleet": fleets[0].pk, "first": 2, "last": devices, "template": template.pk}
        )
        for f in fleets[1:]:
            cur.execute(insert, {"prefix": f.slug, "fleet": f.pk, "first": 1, "last": 50, "template": template.pk})
    counts.fold()
    print(
        f"seeded {devices:,} devices in the big fleet and {other_fleets} fleets of 50 in {time.perf_counter() - t:.1f} s"
    )
    # History: minutes for the last week, hours before (what the roll-up leaves), with a daily
    # dip in online devices and an outage of two hours three days ago.
    now = timezone.now().replace(second=0, microsecond=0)
    t = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute("DELETE FROM fleets_fleetcountsnapshot WHERE fleet_id = %s", [fleets[0].pk])
        cur.execute(
            """INSERT INTO fleets_fleetcountsnapshot (organization_id, fleet_id, at, online, online_vpn_only,
                   online_heartbeat_only, offline, configuring, updating, post_provisioning, inactive, frozen)
               SELECT %(org)s, %(fleet)s, at, on_, 0, 0, %(n)s - on_ - %(n)s / 20, 0, 0, 0, %(n)s / 20, 0
               FROM (SELECT at, CASE WHEN at BETWEEN %(now)s - interval '3 days' AND %(now)s - interval '70 hours'
                                     THEN %(n)s / 2
                                     ELSE (%(n)s * (0.88 + 0.05 * sin(extract(epoch FROM at) / 13751)))::int END AS on_
                     FROM (SELECT generate_series(%(now)s - interval '7 days', %(now)s, interval '1 minute') AS at
                           UNION ALL
                           SELECT generate_series(date_trunc('hour', %(now)s - make_interval(days => %(days)s)),
                                                  %(now)s - interval '7 days 1 minute', interval '1 hour')) AS times) AS s""",
            {"org": org.pk, "fleet": fleets[0].pk, "n": devices, "now": now, "days": days},
        )
        cur.execute("ANALYZE fleets_fleetcountsnapshot; ANALYZE devices_device")
        cur.execute("SELECT count(*) FROM fleets_fleetcountsnapshot")
        (rows,) = cur.fetchone()
    print(f"seeded {rows:,} snapshots ({days} days) in {time.perf_counter() - t:.1f} s")
    return f"/fleets/{org.slug}/big/", user


def _median_ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:.1f} ms (p90 {sorted(times)[int(len(times) * 0.9) - 1] * 1000:.1f})"


def _pages(url: str, user, runs: int) -> None:
    from django.db import connection
    from django.test import Client

    client = Client()
    client.force_login(user)
    for range_key in ("24h", "7d", "30d"):
        page = f"{url}?range={range_key}"
        for _ in range(3):
            response = client.get(page)
        assert response.status_code == 200, response.status_code
        queries = []
        with connection.execute_wrapper(
            lambda execute, sql, *args, seen=queries: seen.append(sql) or execute(sql, *args)
        ):
            client.get(page)
        times, cpu = [], []
        for _ in range(runs):
            t, c = time.perf_counter(), time.process_time()
            client.get(page)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        print(
            f"fleet page {range_key:>3}: {_median_ms(times)}, this process's CPU {statistics.median(cpu) * 1000:.1f} ms, "
            f"{len(queries)} queries, {len(response.content) // 1024} KiB"
        )


@contextmanager
def _without_snapshots():
    from fleets import history

    record = history.record
    history.record = lambda *args, **kwargs: None
    try:
        yield
    finally:
        history.record = record


def _fold_cost(flips: int, runs: int) -> None:
    from django.db import connection, transaction

    from fleets import counts

    def flip() -> float:
        # What a sweep does: one UPDATE expiring devices spread over every fleet (the triggers add
        # one delta per fleet and status).
        t = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(
                """UPDATE devices_device SET overall_status =
                       CASE overall_status WHEN 'online' THEN 'offline' ELSE 'online' END
                   WHERE id IN (SELECT id FROM devices_device WHERE overall_status IN ('online', 'offline')
                                ORDER BY random() LIMIT %s)""",
                [flips],
            )
        return time.perf_counter() - t

    def fold() -> float:
        t = time.perf_counter()
        counts.fold()
        return time.perf_counter() - t

    with_, without, updates = [], [], []
    for n in range(2 * runs + 2):
        updates.append(flip())
        if n % 2:
            with_.append(fold())
        else:
            with _without_snapshots():
                without.append(fold())
    with_, without = with_[1:], without[1:]  # first of each: warm-up
    a, b, u = statistics.median(with_), statistics.median(without), statistics.median(updates)
    print(f"sweep-like UPDATE of {flips} devices: {u * 1000:.1f} ms")
    print(f"fold with snapshot: {a * 1000:.2f} ms, without: {b * 1000:.2f} ms")
    print(
        f"snapshot cost: {(a - b) * 1000:.2f} ms = {100 * (a - b) / b:.1f} % of the fold, "
        f"{100 * (a - b) / (b + u):.1f} % of UPDATE + fold"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--other-fleets", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--flips", type=int, default=1000)
    parser.add_argument("--reuse", action="store_true", help="measure the data seeded by the previous run")
    args = parser.parse_args(argv)
    _setup(os.environ.get("FLEETPAGE_BENCH_DATABASE_URL", DEFAULT_URL))
    if args.reuse:
        from django.contrib.auth import get_user_model

        url, user = "/fleets/bench-fleetpage/big/", get_user_model().objects.get(username="bench-fleetpage")
    else:
        url, user = _seed(args.devices, args.other_fleets, args.days)
    _pages(url, user, args.runs)
    _fold_cost(args.flips, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
