"""P1-P3: server time of the dashboard pages, in process through Django's test Client.

The Client runs the whole middleware stack, the view and the template, against the seeded
PostgreSQL, as a logged-in member (force_login: a real session row). Each page is warmed up, its
queries are counted once (CaptureQueriesContext), then timed N times; the median is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.http import QueryDict
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import Resolver404, resolve

from benchmarks.context import RESULTS_DIR, Context
from benchmarks.report import NotAvailable, Row, median, ms
from devices.models import Device
from devices.status import Status

WARMUP = 3


@dataclass
class PageTiming:
    url: str
    median: float
    times: list[float]
    queries: int
    slowest: list[tuple[float, str]]
    bytes: int
    # CPU time of this process (Python: middleware, view, ORM, template), median: unlike the wall
    # time, it hardly moves when other processes compete for the cores.
    cpu: float = 0.0

    def details(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "median_ms": round(self.median * 1000, 2),
            "cpu_ms": round(self.cpu * 1000, 2),
            "runs_ms": [round(t * 1000, 2) for t in self.times],
            "queries": self.queries,
            "slowest_queries": [{"ms": round(t * 1000, 2), "sql": sql[:400]} for t, sql in self.slowest],
            "bytes": self.bytes,
        }


def require_route(path: str, what: str) -> None:
    try:
        resolve(path)
    except Resolver404 as exc:
        raise NotAvailable(f"{what} ({path}) is not routed") from exc


def client_for(username: str) -> Client:
    user = get_user_model().objects.get(username=username)
    client = Client()
    client.force_login(user)
    return client


def time_page(client: Client, url: str, runs: int) -> PageTiming:
    for _ in range(WARMUP):
        response = client.get(url)
        if response.status_code != 200:
            raise AssertionError(f"GET {url} answered {response.status_code}")
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    # Read now: captured_queries slices connection.queries, which the next request resets.
    queries = list(captured.captured_queries)
    slowest = sorted(((float(q["time"]), q["sql"]) for q in queries), reverse=True)[:2]
    size = len(response.content)
    times, cpu = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        client.get(url)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return PageTiming(url, median(times), times, len(queries), slowest, size, median(cpu))


def profile_call(ctx: Context, name: str, call: Callable[[], object], repeat: int = 5) -> str:
    """pyinstrument over a few calls of something that missed its target; prints and saves the tree."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        ctx.log("   (pyinstrument is not installed: no profile)")
        return ""
    profiler = Profiler(interval=0.0005)
    profiler.start()
    for _ in range(repeat):
        call()
    profiler.stop()
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    path = RESULTS_DIR / f"profile-{name}.txt"
    path.write_text(text)
    ctx.log(f"   pyinstrument profile ({path}):")
    ctx.log("\n".join("   | " + line for line in text.splitlines()[:45]))
    return str(path)


def profile_page(ctx: Context, client: Client, url: str, name: str) -> str:
    return profile_call(ctx, name, lambda: client.get(url))


def explain_miss(ctx: Context, t: PageTiming, client: Client, url: str, name: str, where: str = "") -> None:
    """What a page that missed its target logs: its slowest queries, and a profile with --profile."""
    ctx.log(f"     slowest queries{where}: {_slowest_text(t)}")
    if ctx.args.profile:
        profile_page(ctx, client, url, name)


def _slowest_text(t: PageTiming) -> str:
    return "; ".join(f"{s * 1000:.0f} ms: {sql[:160]}" for s, sql in t.slowest)


def fold_counts(ctx: Context) -> None:
    """Fold the device count deltas earlier figures left (P6 and P7 write thousands of devices, and
    no beat runs here to fold them): a deployment's beat folds every sweep interval, so a page reads
    a handful of pending deltas, not the backlog of every earlier bench run."""
    from fleets import counts

    ctx.log(f"   folded {counts.fold():,} pending count deltas")


def p1(ctx: Context) -> list[Row]:
    require_route("/devices/", "the Devices page")
    fold_counts(ctx)
    large, small = client_for("bench-large-member"), client_for("bench-small-member")

    def uuid_prefix(slug: str) -> str:
        uuid = Device.objects.filter(organization__slug=slug).order_by("id").values_list("uuid", flat=True)[500]
        return uuid[:6]

    variants = [
        ("first page", "/devices/", "/devices/"),
        (
            "filtered by a status",
            f"/devices/?status={Status.OFFLINE.value}",
            f"/devices/?status={Status.OFFLINE.value}",
        ),
        ("sorted by last seen", "/devices/?sort=-last_seen", "/devices/?sort=-last_seen"),
        (
            "searched by UUID prefix",
            f"/devices/?q={uuid_prefix('bench-large')}",
            f"/devices/?q={uuid_prefix('bench-small')}",
        ),
    ]
    big_n = ctx.meta["orgs"]["bench-large"]["devices"]
    rows = []
    for label, big_url, small_url in variants:
        big = time_page(large, big_url, ctx.page_runs)
        base = time_page(small, small_url, ctx.page_runs)
        ratio = big.median / base.median if base.median else float("inf")
        ok = big.median <= 0.050 and ratio <= 1.5 and big.queries == base.queries
        measured = f"{ms(big.median)}; 1k: {ms(base.median)} ({ratio:.2f}x); queries {big.queries} vs {base.queries}"
        ctx.log(f"   {label:<24} {measured}; Python CPU {ms(big.cpu)} vs {ms(base.cpu)}   [{big_url}]")
        if not ok:
            explain_miss(ctx, big, large, big_url, f"p1-{label.split()[0]}", f" at {big_n:,}")
        rows.append(
            Row(
                "P1",
                f"Devices page, {label} ({big_n:,} devices)",
                "<= 50 ms, <= 1.5x the 1k page, same queries",
                measured,
                ok,
                {"large": big.details(), "small": base.details(), "ratio": round(ratio, 2)},
            )
        )
    return rows


# P8: the Devices page's filters that no (organization, column) index serves on its own. The seeded
# names are "<adjective>-<noun>-<4 hex digits of the UUID>" (devices.services.default_device_name)
# and nearly every reported IP address starts with 10. (benchmarks/seeddata.py).
P8_TARGET = "<= 50 ms each"
P8_VARIANTS = [
    ("offline, last seen newest first", f"/devices/?status={Status.OFFLINE.value}&sort=-last_seen"),
    ("offline, last seen oldest first", f"/devices/?status={Status.OFFLINE.value}&sort=last_seen"),
    # The mirror case: most devices are online, and they are the most recently seen.
    ("online, last seen oldest first", f"/devices/?status={Status.ONLINE.value}&sort=last_seen"),
    # One letter: in most names (amber, calm, meadow, canyon, ...) and a UUID prefix.
    ("search 'a' (1 character)", "/devices/?q=a"),
    # Two letters of a word: river, prairie, ridge, brisk, misty, ...
    ("search 'ri' (2 characters)", "/devices/?q=ri"),
    # Two hex digits: the name's UUID part, or a UUID prefix.
    ("search '7c' (2 hex digits)", "/devices/?q=7c"),
    ("search '10.' (common IP prefix)", "/devices/?q=10."),
    # Tags (tag_bench_large below): a tenth, a hundredth, and both at once (AND).
    ("tag customer:acme-3 (10 %)", "/devices/?tag=customer:acme-3"),
    ("tag location:site-43 (1 %)", "/devices/?tag=location:site-43"),
    ("tags customer and location (AND)", "/devices/?tag=customer:acme-3&tag=location:site-43"),
]


def tag_bench_large(org_id: int) -> None:
    """Give every bench-large device a customer (10 values) and a location (100 values) tag, once.

    Tags change no device row, so adding them after the seed leaves every other figure's data alone
    (their lines in the search rows change, through the tags' triggers). Vacuumed as autovacuum
    would after such a load, so the figures are those of settled tables.
    """
    from django.db import connection

    from devices.models import DeviceSearch, DeviceTag

    table = DeviceTag._meta.db_table
    written = 0
    with connection.cursor() as cur:
        for key, values in (("customer", "'acme-' || (id %% 10)"), ("location", "'site-' || (id %% 100)")):
            cur.execute(
                f"""INSERT INTO {table} (device_id, organization_id, key, value)
                    SELECT id, organization_id, %s, {values} FROM devices_device WHERE organization_id = %s
                    ON CONFLICT DO NOTHING""",
                [key, org_id],
            )
            written += cur.rowcount
        if written:
            cur.execute(f"VACUUM ANALYZE {table}")
            cur.execute(f"VACUUM ANALYZE {DeviceSearch._meta.db_table}")


def p8(ctx: Context) -> list[Row]:
    require_route("/devices/", "the Devices page")
    from devices.queries import STATUS_SLUGS, device_status_counts, parse_device_query
    from fleets.models import Organization

    fold_counts(ctx)
    client = client_for("bench-large-member")
    org = Organization.objects.get(slug="bench-large")
    tag_bench_large(org.pk)
    big_n = ctx.meta["orgs"]["bench-large"]["devices"]
    rows = []
    for label, url in P8_VARIANTS:
        query = parse_device_query(QueryDict(url.partition("?")[2]), [org])
        counts = device_status_counts([org], query)
        matches = sum(counts[s] for s in (query.statuses or STATUS_SLUGS))
        t = time_page(client, url, ctx.page_runs)
        ok = t.median <= 0.050
        measured = f"{ms(t.median)}; {t.queries} queries; {matches:,} matching devices"
        ctx.log(f"   {label:<34} {measured}; Python CPU {ms(t.cpu)}   [{url}]")
        if not ok:
            explain_miss(ctx, t, client, url, f"p8-{len(rows)}")
        rows.append(
            Row(
                "P8",
                f"Devices page, {label} ({big_n:,} devices)",
                P8_TARGET,
                measured,
                ok,
                {**t.details(), "matches": matches},
            )
        )
    return rows


def p2(ctx: Context) -> list[Row]:
    require_route("/fleets/", "the Fleets page")
    from benchmarks.seed import OPERATOR

    fold_counts(ctx)

    sizes = [(OPERATOR, ctx.plan.total_fleets, ctx.plan.total_devices)]
    sizes += [
        (f"{slug}-member", ctx.meta["orgs"][slug]["fleets"], ctx.meta["orgs"][slug]["devices"])
        for slug in ("bench-large", "bench-small")
    ]
    timings = []
    for username, fleets, devices in sizes:
        t = time_page(client_for(username), "/fleets/", ctx.page_runs)
        timings.append((fleets, devices, t))
        ctx.log(
            f"   {fleets:>5,} fleets, {devices:>9,} devices: {ms(t.median)} (Python CPU {ms(t.cpu)}), "
            f"{t.queries} queries, {t.bytes / 1024:.0f} KiB"
        )
    big = timings[0][2]
    same_queries = len({t.queries for _, _, t in timings}) == 1
    ok = big.median <= 0.150 and same_queries
    if not ok:
        explain_miss(ctx, big, client_for(OPERATOR), "/fleets/", "p2-fleets")
    counts = " / ".join(f"{t.queries}" for _, _, t in timings)
    others = ", ".join(f"{f:,} fleets: {ms(t.median)}" for f, _, t in timings[1:])
    return [
        Row(
            "P2",
            f"Fleets page, {sizes[0][1]:,} fleets and {sizes[0][2]:,} devices",
            "<= 150 ms; queries independent of size",
            f"{ms(big.median)} ({others}); queries {counts}",
            ok,
            {f"{f}_fleets_{d}_devices": t.details() for f, d, t in timings},
        )
    ]


def p3(ctx: Context) -> list[Row]:
    device = ctx.meta["p3_device"]
    url = f"/devices/{device['uuid']}/"
    require_route(url, "the Device Summary page")
    transitions = Device.objects.get(pk=device["id"]).transitions.count()
    client = client_for("bench-large-member")
    t = time_page(client, url, ctx.page_runs)
    ok = t.median <= 0.030
    ctx.log(
        f"   {transitions:,} transitions: {ms(t.median)} (Python CPU {ms(t.cpu)}), {t.queries} queries, {t.bytes / 1024:.0f} KiB"
    )
    if not ok:
        explain_miss(ctx, t, client, url, "p3-summary")
    return [
        Row(
            "P3",
            f"Device Summary, {transitions:,} transitions",
            "<= 30 ms",
            f"{ms(t.median)}; {t.queries} queries",
            ok,
            t.details(),
        )
    ]
