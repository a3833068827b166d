"""P12: how the per-request figures grow with the installation (a hundredth, a tenth, all of the main seed).

At each size (benchmarks/installations.py; the largest is the main installation) the same
measurements as the figures they are named after:

- P1: the first page of the Devices page of bench-large's member (the installation's largest
  organization below the main size; in the main installation the 100,000-device organization P1 uses).
- P2: the Fleets page of bench-operator, a member of every organization of the installation.
- P6: one sweep with the same number of devices due at every size (a tenth of the smallest
  installation: 10,000 due would be all of it), made due and put back as P6 does.
- report: the in-process time of one PATCH /device/v3/state with a full supervisor report (metrics,
  versions, addresses, apps) for an Online device of bench-large, through the test Client, which
  runs the middleware stack, the view and the commit; the median of many, each for another device.

Target: the largest installation's P1, P2 and P6 at most 1.5 times the smallest's.
"""

from __future__ import annotations

import json
import random
import time
from datetime import datetime
from typing import Any

from django.test import Client

from benchmarks import installations, staleness
from benchmarks.context import Context
from benchmarks.pages import client_for, fold_counts, require_route, time_page
from benchmarks.report import Row, median, ms
from benchmarks.seed import OPERATOR, device_key
from devices.models import Device
from devices.status import HeartbeatState, Status

RATIO_TARGET = 1.5
REPORT_PATH = "/device/v3/state"
REPORT_WARMUP = 5


def report_body(uuid: str, i: int) -> dict[str, Any]:
    """What a balena supervisor reports when something besides its metrics changed (benchmarks/wrk/state_patch.lua)."""
    commit = uuid[:7] + "0" * 25
    return {
        uuid: {
            "status": "Idle",
            "cpu_usage": i % 100,
            "cpu_temp": 35 + i % 40,
            "memory_usage": 300_000_000 + i * 1_000,
            "memory_total": 4_000_000_000,
            "storage_usage": 2_000_000_000 + i * 10_000,
            "storage_total": 32_000_000_000,
            "is_undervolted": False,
            "api_port": 48484,
            "api_secret": "0123456789abcdef0123456789abcdef",
            "name": "device",
            "is_online": True,
            "os_version": "balenaOS 6.0.13",
            "os_variant": "prod",
            "supervisor_version": "16.7.1",
            "ip_address": f"10.0.{i % 256}.{1 + i % 254} 172.17.0.1",
            "mac_address": "dc:a6:32:00:11:22",
            "provisioning_progress": None,
            "provisioning_state": "",
            "download_progress": None,
            "apps": {
                "a1b2c3d4e5f60718293a4b5c6d7e8f90": {
                    "release_uuid": commit,
                    "releases": {
                        commit: {
                            "update_status": "done",
                            "services": {
                                "main": {
                                    "image": "registry2.balena-cloud.com/v2/abc@sha256:1",
                                    "status": "Running",
                                    "download_progress": None,
                                }
                            },
                        }
                    },
                }
            },
        }
    }


def time_reports(runs: int) -> dict[str, Any]:
    """Median in-process time of one state report, each for another Online device of bench-large."""
    uuids = list(
        Device.objects.filter(
            organization__slug="bench-large", overall_status=Status.ONLINE, is_active=True, is_frozen=False
        )
        .order_by("id")
        .values_list("uuid", flat=True)[: runs + REPORT_WARMUP]
    )
    if len(uuids) < runs + REPORT_WARMUP:
        raise AssertionError(f"only {len(uuids)} Online devices in bench-large for {runs} state reports")
    client = Client()
    times, cpu = [], []
    for i, uuid in enumerate(uuids):
        body = json.dumps(report_body(uuid, i))
        headers = {"Authorization": f"Bearer {device_key(uuid)}"}
        c0, t0 = time.process_time(), time.perf_counter()
        response = client.patch(REPORT_PATH, data=body, content_type="application/json", headers=headers)
        elapsed, used = time.perf_counter() - t0, time.process_time() - c0
        if response.status_code != 200:
            raise AssertionError(f"PATCH {REPORT_PATH} answered {response.status_code}: {response.content[:300]!r}")
        if i >= REPORT_WARMUP:
            times.append(elapsed)
            cpu.append(used)
    return {"median": median(times), "cpu": median(cpu), "runs": len(times)}


def due_devices(count: int) -> list[int]:
    """`count` devices of bench-large whose heartbeat is online (not frozen), the same pick for the same data."""
    candidates = sorted(
        Device.objects.filter(
            organization__slug="bench-large", api_heartbeat_state=HeartbeatState.ONLINE, is_frozen=False
        ).values_list("id", flat=True)
    )
    if len(candidates) < count:
        raise AssertionError(f"only {len(candidates)} online devices in bench-large, {count} wanted due")
    return sorted(random.Random(12).sample(candidates, count))


def measure_size(ctx: Context, due: int, now: datetime) -> dict[str, Any]:
    # Pending count deltas that earlier figures left (a deployment's beat folds them every sweep)
    # would otherwise be read by the pages of whichever installation holds them.
    fold_counts(ctx)
    p1 = time_page(client_for("bench-large-member"), "/devices/", ctx.page_runs)
    p2 = time_page(client_for(OPERATOR), "/fleets/", ctx.page_runs)
    sweep = staleness.measure(ctx, due_devices(due), now, 3)
    reports = time_reports(50 if ctx.quick else 200)
    return {
        "P1": {"seconds": p1.median, "cpu": p1.cpu, "queries": p1.queries},
        "P2": {"seconds": p2.median, "cpu": p2.cpu, "queries": p2.queries},
        "P6": {"seconds": sweep["median"], "runs_s": sweep["runs_s"]},
        "report": {"seconds": reports["median"], "cpu": reports["cpu"], "runs": reports["runs"]},
    }


LABELS = {
    "P1": "P1 Devices page, first page",
    "P2": "P2 Fleets page",
    "P6": "P6 sweep, {due:,} due",
    "report": "state report (in process)",
}


def grid(sizes: list[int], by_size: dict[int, dict[str, Any]], due: int) -> tuple[str, dict[str, float]]:
    """The P12 table: a row per figure, a column per size, the largest/smallest ratio and its verdict."""
    names = [f"{n:,}" for n in sizes]
    header = ["figure", *names, f"{names[-1]}/{names[0]}", "target", "result"]
    lines, ratios = [], {}
    for key, label in LABELS.items():
        values = [by_size[n][key]["seconds"] for n in sizes]
        ratio = values[-1] / values[0] if values[0] else float("inf")
        ratios[key] = ratio
        if key == "report":
            target, verdict = "(informational)", "info"
        else:
            target, verdict = f"<= {RATIO_TARGET}x", "pass" if ratio <= RATIO_TARGET else "FAIL"
        lines.append([label.format(due=due), *(ms(v) for v in values), f"{ratio:.2f}x", target, verdict])
        if "cpu" in by_size[sizes[0]][key]:
            # The Python CPU time of the same requests hardly moves when other processes compete for the cores.
            cpu = [by_size[n][key]["cpu"] for n in sizes]
            cpu_ratio = cpu[-1] / cpu[0] if cpu[0] else float("inf")
            ratios[f"{key}_cpu"] = cpu_ratio
            lines.append(["  its Python CPU", *(ms(v) for v in cpu), f"{cpu_ratio:.2f}x", "(informational)", "info"])
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
    return "\n".join(out), ratios


def p12(ctx: Context) -> list[Row]:
    require_route("/devices/", "the Devices page")
    require_route("/fleets/", "the Fleets page")
    sizes = installations.growth_sizes(ctx.plan)
    due = sizes[0] // 10
    now = datetime.fromisoformat(ctx.meta["seeded_at"])
    by_size: dict[int, dict[str, Any]] = {}
    for n in sizes:
        ctx.log(f"   installation of {n:,} devices")
        with installations.installation(ctx, n):
            by_size[n] = measure_size(ctx, due, now)
        r = by_size[n]
        ctx.log(
            f"     P1 {ms(r['P1']['seconds'])} (CPU {ms(r['P1']['cpu'])}, {r['P1']['queries']} queries); "
            f"P2 {ms(r['P2']['seconds'])} (CPU {ms(r['P2']['cpu'])}, {r['P2']['queries']} queries); "
            f"P6 {ms(r['P6']['seconds'])} (runs {r['P6']['runs_s']} s); "
            f"report {ms(r['report']['seconds'])} (CPU {ms(r['report']['cpu'])}, {r['report']['runs']} reports)"
        )
    text, ratios = grid(sizes, by_size, due)
    ctx.log("\n   P12, growth with the installation:\n" + "\n".join("   " + line for line in text.splitlines()))
    rows = []
    for key, label in LABELS.items():
        values = " / ".join(ms(by_size[n][key]["seconds"]) for n in sizes)
        measured = f"{values} ({ratios[key]:.2f}x)"
        informational = key == "report"
        rows.append(
            Row(
                "P12",
                f"{label.format(due=due)} at {' / '.join(f'{n:,}' for n in sizes)} devices",
                "(informational)" if informational else f"{sizes[-1]:,} <= {RATIO_TARGET}x the {sizes[0]:,} figure",
                measured,
                None if informational else ratios[key] <= RATIO_TARGET,
                {
                    "sizes": sizes,
                    "by_size": {str(n): by_size[n][key] for n in sizes},
                    "ratio": round(ratios[key], 3),
                },
            )
        )
    return rows
