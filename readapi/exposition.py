"""GET /metrics: the Prometheus text format, built by prometheus_client from one custom collector.

Per scrape: one query for the devices per (organization, fleet, status) from the counts the
database keeps (fleets/counts.py; never a label per device), one for the last successful sweep,
one Redis HGETALL for the counters (fleetstatus/metrics.py). The same three whatever the size.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from django.conf import settings
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from devices.status import Status
from devices.sweep import sweep_health
from fleets import counts as kept_counts
from fleets.models import Fleet, Organization
from fleetstatus import metrics

STATUS_SLUGS: tuple[str, ...] = tuple(s.value for s in Status)


def device_counts() -> list[tuple[str, str, str, int]]:
    """(organization slug, fleet slug, status, n) for every fleet and status with devices: one query.

    No series for a status without devices (the kept counts drop such rows too): at a thousand
    fleets the zeros would double the scrape, and every query below reads a missing series as none.
    """
    fleet, org = Fleet._meta.db_table, Organization._meta.db_table
    sql = f"""
        SELECT o.slug, f.slug, k.status, k.n
        FROM (
            SELECT fleet_id, status, sum(n) AS n FROM (
                SELECT fleet_id, status, n FROM {kept_counts.COUNTS}
                UNION ALL SELECT fleet_id, status, n FROM {kept_counts.DELTAS}
            ) AS kept GROUP BY fleet_id, status HAVING sum(n) <> 0
        ) AS k
        JOIN {fleet} f ON f.id = k.fleet_id JOIN {org} o ON o.id = f.organization_id
        ORDER BY o.slug, f.slug, k.status"""
    with connection.cursor() as cur:
        cur.execute(sql)
        return [(o, f, s, int(n)) for o, f, s, n in cur.fetchall()]


class FleetstatusCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        devices = GaugeMetricFamily(
            "fleetstatus_devices",
            "Devices per organization, fleet and stored status.",
            labels=["organization", "fleet", "status"],
        )
        for org_slug, fleet_slug, status, n in device_counts():
            devices.add_metric([org_slug, fleet_slug, status], n)
        yield devices

        health = sweep_health()
        if health.last_success_at is not None:
            yield GaugeMetricFamily(
                "fleetstatus_sweep_last_success_timestamp_seconds",
                "Unix time of the last successful staleness sweep.",
                value=health.last_success_at.timestamp(),
            )

        try:
            totals = metrics.totals()
            up = 1.0
        except RedisError:
            totals, up = {}, 0.0
        yield GaugeMetricFamily(
            "fleetstatus_metrics_counters_up", "1 when the counters below could be read from Redis.", value=up
        )
        yield CounterMetricFamily(
            "fleetstatus_heartbeats", "Target-state fetches (heartbeats) answered.", value=totals.get("heartbeats", 0)
        )
        yield CounterMetricFamily(
            "fleetstatus_state_reports", "Device state reports accepted.", value=totals.get("state_reports", 0)
        )
        transitions = CounterMetricFamily(
            "fleetstatus_transitions", "Status transitions written, by the status entered.", labels=["to"]
        )
        for status in STATUS_SLUGS:
            transitions.add_metric([status], totals.get(f"transitions:{status}", 0))
        yield transitions
        deliveries = CounterMetricFamily(
            "fleetstatus_notification_deliveries", "Notification deliveries, by result.", labels=["result"]
        )
        for field, n in sorted(totals.items()):
            if field.startswith("deliveries:"):
                deliveries.add_metric([field.removeprefix("deliveries:")], n)
        yield deliveries

        cumulative, buckets = 0.0, []
        for bound in (*metrics.SWEEP_BUCKETS, "+Inf"):
            cumulative += totals.get(f"sweep_bucket:{bound}", 0)
            buckets.append(("+Inf" if bound == "+Inf" else repr(float(bound)), cumulative))
        yield HistogramMetricFamily(
            "fleetstatus_sweep_duration_seconds",
            "Duration of staleness sweeps.",
            buckets=buckets,
            sum_value=totals.get("sweep_sum", 0.0),
        )


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(FleetstatusCollector())


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """404 unless FLEETSTATUS_METRICS_TOKEN is set (nothing to find), 401 without that Bearer token."""
    expected = settings.FLEETSTATUS_METRICS_TOKEN
    if not expected:
        raise Http404("Metrics are not enabled.")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        response = HttpResponse(
            "Unauthorized: Authorization: Bearer <FLEETSTATUS_METRICS_TOKEN> required.\n",
            status=401,
            content_type="text/plain",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
