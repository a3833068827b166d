"""GET /metrics: protection, values equal to the Fleets page's counts, counters kept in Redis and
right across processes, the sweep's figures, and a query count independent of size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from devices import tasks
from devices.models import TaskRun
from devices.status import Status
from devices.sweep import run_sweep
from fleetstatus import metrics
from tests.dashboard_helpers import device_in, one_of_each

pytestmark = [pytest.mark.django_db, pytest.mark.redis]

TOKEN = "metrics-secret-for-tests"


@pytest.fixture(autouse=True)
def _metrics(settings):
    settings.FLEETSTATUS_METRICS_TOKEN = TOKEN
    settings.FLEETSTATUS_METRICS_FLUSH_SECONDS = 0
    metrics.reset()
    yield
    metrics.reset()


def scrape(client: Client | None = None) -> dict[str, list]:
    response = (client or Client()).get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples, name: str, **labels) -> float:
    found = [v for lbl, v in samples.get(name, []) if all(lbl.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_metrics_is_404_without_a_token_setting_and_401_without_the_token(settings, db):
    settings.FLEETSTATUS_METRICS_TOKEN = ""
    assert Client().get("/metrics", headers={"Authorization": "Bearer x"}).status_code == 404
    settings.FLEETSTATUS_METRICS_TOKEN = TOKEN
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ):
        response = Client().get("/metrics", headers=headers)
        assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert Client().post("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405


def test_device_gauges_equal_the_fleets_pages_counts(owner_client, make_device, make_fleet, org, other_org, fleet):
    one_of_each(make_device)
    second, _ = make_fleet(org, "signage")
    for status in ("online", "offline", "offline"):
        device_in(make_device, status, fleet=second)
    elsewhere, _ = make_fleet(other_org, "robots")
    device_in(make_device, "online", fleet=elsewhere)
    samples = scrape()
    page = owner_client.get("/fleets/").context
    compared = 0
    for section in page["sections"]:
        org_slug = section["org"].slug
        for status in Status:
            total = sum(
                v
                for lbl, v in samples["fleetstatus_devices"]
                if lbl["organization"] == org_slug and lbl["status"] == status.value
            )
            assert total == section["counts"][status.value], (org_slug, status)
            compared += 1
        for card in section["fleets"]:
            shown = {seg["slug"]: seg["n"] for seg in card["segments"]}
            for status in Status:
                n = sum(
                    v
                    for lbl, v in samples["fleetstatus_devices"]
                    if (lbl["organization"], lbl["fleet"], lbl["status"])
                    == (org_slug, card["fleet"].slug, status.value)
                )
                assert n == shown.get(status.value, 0), (card["fleet"].slug, status)
                compared += 1
    assert compared >= 3 * len(Status)
    assert all(v > 0 for _, v in samples["fleetstatus_devices"])
    # Every fleet of the installation with its statuses that have devices; never a label per device.
    assert value(samples, "fleetstatus_devices", organization="contoso", fleet="robots", status="online") == 1
    assert len(samples["fleetstatus_devices"]) == len(Status) + 2 + 1
    assert all(set(lbl) == {"organization", "fleet", "status"} for lbl, _ in samples["fleetstatus_devices"])


def test_counters_count_heartbeats_reports_and_transitions(make_device, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        device = make_device(name="counted")
    client = Client(headers={"Authorization": f"Bearer {device.api_key}"})
    with django_capture_on_commit_callbacks(execute=True):
        assert client.get(f"/device/v3/{device.uuid}/state").status_code == 200
        assert client.get(f"/device/v3/{device.uuid}/state").status_code == 200
        response = client.patch("/device/v3/state", {device.uuid: {"status": "Idle"}}, content_type="application/json")
        assert response.status_code == 200
    samples = scrape()
    assert value(samples, "fleetstatus_heartbeats_total") == 2
    assert value(samples, "fleetstatus_state_reports_total") == 1
    # Created as configuring; the first fetch made it online-heartbeat-only (cloudlink on, no tunnel).
    assert value(samples, "fleetstatus_transitions_total", to="configuring") == 1
    assert value(samples, "fleetstatus_transitions_total", to="online-heartbeat-only") == 1
    assert value(samples, "fleetstatus_transitions_total", to="offline") == 0
    assert value(samples, "fleetstatus_metrics_counters_up") == 1


def test_rolled_back_transitions_are_not_counted(make_device, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        make_device(name="never committed")
    assert callbacks and metrics.totals() == {}


def test_deliveries_and_the_sweep(db):
    metrics.count_deliveries("sent", 3)
    metrics.count_deliveries("failed")
    metrics.observe_sweep(0.3)
    metrics.observe_sweep(3.0)
    tasks.sweep()  # the Celery task: timed into the same histogram
    samples = scrape()
    assert value(samples, "fleetstatus_notification_deliveries_total", result="sent") == 3
    assert value(samples, "fleetstatus_notification_deliveries_total", result="failed") == 1
    assert value(samples, "fleetstatus_sweep_duration_seconds_count") == 3
    assert value(samples, "fleetstatus_sweep_duration_seconds_bucket", le="0.5") >= 2
    assert value(samples, "fleetstatus_sweep_duration_seconds_bucket", le="2.5") >= 2
    assert value(samples, "fleetstatus_sweep_duration_seconds_bucket", le="+Inf") == 3
    assert 3.3 <= value(samples, "fleetstatus_sweep_duration_seconds_sum") < 13.3
    last = TaskRun.objects.get(name="sweep").last_success_at
    assert value(samples, "fleetstatus_sweep_last_success_timestamp_seconds") == last.timestamp()


def test_no_sweep_yet_means_no_timestamp(db):
    assert "fleetstatus_sweep_last_success_timestamp_seconds" not in scrape()


def test_counters_from_several_processes_add_up(db):
    """Three separate interpreters buffer increments (flushed at exit, not per call) into one total."""
    code = (
        "import django; django.setup()\n"
        "from fleetstatus import metrics\n"
        "for _ in range(500): metrics.count_heartbeats()\n"
        "metrics.count_transitions(['offline'] * 7)\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "FLEETSTATUS_METRICS_FLUSH_SECONDS": "30",
        "REDIS_URL": django_settings.REDIS_URL,
    }
    root = Path(__file__).resolve().parent.parent
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=root) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    samples = scrape()
    assert value(samples, "fleetstatus_heartbeats_total") == 1500
    assert value(samples, "fleetstatus_transitions_total", to="offline") == 21


def test_redis_down_never_fails_the_caller(db):
    from redis import Redis

    metrics._state["client"] = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        metrics.count_heartbeats(5)  # kept for a later flush, no exception
        assert metrics._pending["heartbeats"] == 5
    finally:
        metrics._pending.clear()
        metrics._state["client"] = None


@pytest.mark.parametrize("fleets", [1, 6])
def test_scrape_runs_the_same_queries_whatever_the_size(
    org, make_fleet, make_device, fleets, django_assert_num_queries
):
    for i in range(fleets):
        target, _ = make_fleet(org, f"f{i}")
        for _ in range(fleets):
            make_device(target)
    run_sweep()
    # Devices per fleet and status; the last sweep.
    with django_assert_num_queries(2):
        samples = scrape()
    assert sum(v for _, v in samples["fleetstatus_devices"]) == fleets * fleets


def test_dashboard_and_documented_alerts_query_only_exported_metrics(make_device, db):
    """docs/grafana-dashboard.json imports as it is (a data source input, unique panel ids) and it and
    docs/api.md's alerts name only metrics /metrics exports."""
    import json
    import re

    metrics.count_deliveries("sent")
    metrics.observe_sweep(0.1)
    make_device(name="one")
    run_sweep()
    exported = {re.sub(r"_(bucket|count|sum)$", "", name) for name in scrape()}
    exported |= {f"{name}_bucket" for name in exported} | {f"{name}_sum" for name in exported}
    exported |= {f"{name}_count" for name in exported}
    root = Path(__file__).resolve().parent.parent
    dashboard = json.loads((root / "docs" / "grafana-dashboard.json").read_text())
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    docs = (root / "docs" / "api.md").read_text()
    # Only the alert rules' YAML block: the prose after it names databases that share the prefix.
    alerts = docs.split("Alerts:")[1].split("```yaml")[1].split("```")[0]
    used = set(re.findall(r"fleetstatus_\w+", "\n".join(exprs) + alerts))
    assert used and used <= exported, used - exported


def test_real_deliveries_are_counted_by_result(org, settings):
    """A message the receiver takes counts "delivered"; one it refuses with a 500 counts "pending" (retried)."""
    from django.utils import timezone

    from notifications import sending
    from notifications.models import Channel, Delivery
    from notifications.receiver import Receiver

    settings.FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE = True
    receiver = Receiver().start()
    try:
        channel = Channel.objects.create(organization=org, name="ops", url=receiver.url)
        now = timezone.now()

        def delivery() -> Delivery:
            return Delivery.objects.create(
                channel=channel,
                event=Delivery.Event.TEST,
                payload={"message": "hi"},
                created_at=now,
                next_attempt_at=now,
            )

        assert sending.deliver(delivery().pk, now) == "delivered"
        receiver.respond([500])
        assert sending.deliver(delivery().pk, now) == "pending"
    finally:
        receiver.stop()
    samples = scrape()
    assert value(samples, "fleetstatus_notification_deliveries_total", result="delivered") == 1
    assert value(samples, "fleetstatus_notification_deliveries_total", result="pending") == 1
