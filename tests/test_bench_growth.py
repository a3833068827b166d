"""The bench's growth figure (P12), its smaller installations and P4's ceiling, cheaply: no seed, no load run."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest

from benchmarks import ceiling, growth, installations, seed
from benchmarks.load import connections_per_pid, spread_text
from devices.status import HeartbeatState

ROOT = Path(__file__).resolve().parent.parent


def test_growth_sizes_follow_the_main_seed():
    assert installations.growth_sizes(seed.FULL) == [10_000, 100_000, 1_000_000]
    assert installations.growth_sizes(seed.QUICK) == [1_000, 10_000, 100_000]


def test_a_sized_installation_is_bench_large_alone_with_its_fleets_scaled():
    plan = installations.sized_plan(seed.FULL, 10_000)
    large = plan.orgs[0]
    # Never fewer fleets than a full Fleets page (the organization's 100 scaled alike would be 10).
    assert (large.slug, large.devices, large.fleets) == ("bench-large", 10_000, 50)
    assert plan.name == "full-n10000-f50" and plan.orgs[1:] == seed.FULL.orgs[1:]
    # At bench-large's own size it is the organization of the main seed (P6 compares the same due devices).
    same = installations.sized_plan(seed.FULL, 100_000)
    assert same.orgs[0] == seed.FULL.orgs[0] and same.due_devices == seed.FULL.due_devices
    quick_large = seed.QUICK.orgs[0]
    assert installations.sized_plan(seed.QUICK, 1_000).orgs[0].fleets == min(50, quick_large.fleets)
    assert installations.schema_name(10_000) == "bench_n10000"


def test_the_growth_table_has_a_verdict_per_figure_and_the_report_is_informational():
    sizes = [1_000, 10_000, 100_000]

    def at(p1, p2, p6, report):
        return {"P1": {"seconds": p1}, "P2": {"seconds": p2}, "P6": {"seconds": p6}, "report": {"seconds": report}}

    by_size = {
        1_000: at(0.02, 0.02, 1.0, 0.004),
        10_000: at(0.02, 0.03, 1.0, 0.004),
        100_000: at(0.03, 0.04, 1.2, 0.02),
    }
    for n, cpu in ((1_000, 0.010), (10_000, 0.011), (100_000, 0.012)):
        by_size[n]["P1"]["cpu"] = cpu
    text, ratios = growth.grid(sizes, by_size, due=100)
    assert ratios == pytest.approx({"P1": 1.5, "P1_cpu": 1.2, "P2": 2.0, "P6": 1.2, "report": 5.0})
    assert "  its Python CPU" in text and "12.0 ms" in text
    lines = {line.split("  ")[0]: line for line in text.splitlines()[2:]}
    assert lines["P1 Devices page, first page"].rstrip().endswith("pass")
    assert lines["P2 Fleets page"].rstrip().endswith("FAIL")
    assert "P6 sweep, 100 due" in lines
    assert lines["state report (in process)"].rstrip().endswith("info")
    assert "100,000/1,000" in text.splitlines()[0]


@pytest.mark.django_db
def test_the_growth_report_body_is_accepted_and_stored(client, make_device):
    """P12 times this body: a change to the report's validation that rejects it fails here, not in a bench run."""
    from tests.apiutil import send

    device = make_device(api_heartbeat_state=HeartbeatState.ONLINE)
    body = growth.report_body(device.uuid, 7)
    r = send(client, "PATCH", growth.REPORT_PATH, body, key=device.api_key)
    assert r.status_code == 200, r.content
    device.refresh_from_db()
    assert (device.cpu_usage, device.os_version, device.supervisor_version) == (7, "balenaOS 6.0.13", "16.7.1")


def test_connections_are_counted_per_worker_pid():
    ss = (
        '0 0 127.0.0.1:8000 127.0.0.1:50001 users:(("gunicorn",pid=11,fd=9))\n'
        '0 0 127.0.0.1:8000 127.0.0.1:50002 users:(("gunicorn",pid=11,fd=10))\n'
        '0 0 127.0.0.1:8000 127.0.0.1:50003 users:(("gunicorn",pid=12,fd=9))\n'
        '0 0 127.0.0.1:8000 127.0.0.1:50004 users:(("gunicorn",pid=99,fd=9))\n'
    )
    spread = connections_per_pid(ss, [11, 12, 13])
    assert spread == {11: 2, 12: 1, 13: 0}
    assert spread_text({"spread": {str(k): v for k, v in spread.items()}}) == "2/1/0"
    assert spread_text({}) == "?"


def test_the_ceiling_app_makes_one_redis_call_and_names_its_worker(monkeypatch):
    calls = []

    class FakeRedis:
        def get(self, key):
            calls.append(key)
            return b"1"

    monkeypatch.setattr(ceiling, "_client", FakeRedis())
    seen = {}

    def start_response(status, headers):
        seen.update(status=status, headers=dict(headers))

    body = b"".join(ceiling.application({"PATH_INFO": "/device/v3/x/state"}, start_response))
    assert calls == [ceiling.KEY]
    assert seen["status"] == "200 OK" and seen["headers"]["X-Worker-Pid"] == str(os.getpid())
    assert seen["headers"]["Content-Length"] == str(len(body))


def test_gunicorn_gives_each_worker_its_own_socket_unless_told_not_to(monkeypatch):
    monkeypatch.delenv("FLEETSTATUS_WEB_REUSE_PORT", raising=False)
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["reuse_port"] is True
    monkeypatch.setenv("FLEETSTATUS_WEB_REUSE_PORT", "0")
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["reuse_port"] is False


def test_p12_is_a_figure_of_the_bench():
    from benchmarks.cli import parse_args
    from benchmarks.runners import ALL, TARGETS, TITLES

    assert parse_args(["--only", "P4,P12"]).figures == ["P4", "P12"]
    assert ALL["P12"] is growth.p12 and "P12" in TITLES and "P12" in TARGETS
