"""P10 and P11: the read API's device list deep in its cursor, and the Prometheus endpoint.

P10: GET /api/v1/devices?limit=100 as a member of the 100,000-device organization, server time in
process through Django's test Client (whole middleware stack, token check and throttle included):
the first page, and the 900th reached by following `next` from the first.
P11: GET /metrics over every fleet of the installation; its queries must not depend on the size.

`python -m benchmarks.readapi` seeds (unless seeded) a plan that fits a shared machine, 1,000
fleets and 125,000 devices with the 100,000-device organization, in the PostgreSQL database named
by DATABASE_URL (default fleetstatus_bench_readapi on the local server) and prints both figures. Device counts
for /metrics are kept per fleet and status, so its cost follows the number of fleets, not devices.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by the functions: `python -m benchmarks.readapi` sets Django up first
    from benchmarks.context import Context
    from benchmarks.report import Row

DEEP_PAGE = 900
METRICS_TOKEN = "bench-metrics-token-" + "x" * 20


def _token_client(username: str):
    from django.contrib.auth import get_user_model
    from django.test import Client

    from readapi.models import ApiToken

    user = get_user_model().objects.get(username=username)
    return Client(headers={"Authorization": f"Bearer {ApiToken.issue(user, 'benchmark')[1]}"})


def _deep_url(client, url: str, page: int) -> str:
    for _ in range(page - 1):
        response = client.get(url)
        assert response.status_code == 200, response.content[:300]
        url = json.loads(response.content)["next"]
        assert url, f"fewer than {page} pages"
    return url.removeprefix("http://testserver")


def p10(ctx: Context) -> list[Row]:
    from django.test import override_settings

    from benchmarks.pages import require_route, time_page
    from benchmarks.report import Row, ms

    require_route("/api/v1/devices", "the read API")
    rows = []
    big_n = ctx.meta["orgs"]["bench-large"]["devices"]
    # A budget no run reaches: the throttle's cache round trips are measured, never its 429.
    with override_settings(FLEETSTATUS_API_THROTTLE_REQUESTS=10**9):
        client = _token_client("bench-large-member")
        for sort in ("name", "-last_seen"):
            first_url = f"/api/v1/devices?limit=100&sort={sort}"
            deep_url = _deep_url(client, first_url, DEEP_PAGE)
            first = time_page(client, first_url, ctx.page_runs)
            deep = time_page(client, deep_url, ctx.page_runs)
            ok = first.median <= 0.030 and deep.median <= 0.030 and first.queries == deep.queries
            measured = (
                f"first {ms(first.median)}, page {DEEP_PAGE} {ms(deep.median)}; "
                f"queries {first.queries} vs {deep.queries}; Python CPU {ms(first.cpu)} / {ms(deep.cpu)}"
            )
            ctx.log(f"   sort={sort}: {measured}")
            rows.append(
                Row(
                    "P10",
                    f"GET /api/v1/devices?limit=100&sort={sort} ({big_n:,} devices)",
                    "<= 30 ms first page and page 900",
                    measured,
                    ok,
                    {"first": first.details(), "deep": deep.details()},
                )
            )
    return rows


def p11(ctx: Context) -> list[Row]:
    from django.test import Client, override_settings

    from benchmarks.pages import require_route, time_page
    from benchmarks.report import Row, ms
    from fleets.models import Fleet

    require_route("/metrics", "the Prometheus endpoint")
    fleets, devices = Fleet.objects.count(), ctx.plan.total_devices
    with override_settings(FLEETSTATUS_METRICS_TOKEN=METRICS_TOKEN):
        t = time_page(Client(headers={"Authorization": f"Bearer {METRICS_TOKEN}"}), "/metrics", ctx.page_runs)
    ok = t.median <= 0.100 and t.queries == 2
    measured = f"{ms(t.median)}; {t.queries} queries; Python CPU {ms(t.cpu)}; {t.bytes / 1024:.0f} KiB"
    ctx.log(f"   {fleets:,} fleets, {devices:,} devices: {measured}")
    return [
        Row(
            "P11",
            f"/metrics, {fleets:,} fleets, {devices:,} devices",
            "<= 100 ms; queries independent of size",
            measured,
            ok,
            t.details(),
        )
    ]
