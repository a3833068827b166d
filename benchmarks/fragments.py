"""Render time of the pages' hot fragments, without a database: `python -m benchmarks.fragments`.

The Devices table's 50 rows, the Device Summary's 25 history rows and the Fleets page's 50 fleet
cards are rendered through the same template tags the pages call, from unsaved model instances.
With --django, the same fragments written in Django's template language (benchmarks/templates/)
are timed beside them: the figures that decide which engine renders the hot fragments.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def setup_django() -> None:
    os.environ.setdefault("SECRET_KEY", "fleetstatus-bench-only-not-secret-" + "x" * 20)
    os.environ["DEBUG"] = "0"
    os.environ["DJANGO_SETTINGS_MODULE"] = "fleetstatus.settings"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def sample_devices(n: int = 50) -> list:
    """Devices in every status, with the variety the cells handle (progress, several IPs, long
    releases, text that needs escaping, tunnel up/down/never/off)."""
    from devices.models import Device
    from devices.status import HeartbeatState, Status
    from fleets.models import Fleet

    fleets = [Fleet(pk=i + 1, name=f"Kiosks <{i}>", slug=f"kiosks-{i}", cloudlink_enabled=i != 2) for i in range(4)]
    statuses = list(Status)
    devices = []
    for i in range(n):
        status = statuses[i % len(statuses)]
        seen = NOW - timedelta(seconds=37 * i) if i % 7 else None
        devices.append(
            Device(
                pk=i + 1,
                uuid=f"{i:032x}",
                name=f'gate-{i} & "lobby"',
                fleet=fleets[i % len(fleets)],
                overall_status=status.value,
                frozen_reason="over the allowance" if status == Status.FROZEN else "",
                download_progress=37 if status == Status.UPDATING else None,
                provisioning_progress=65 if status in (Status.CONFIGURING, Status.POST_PROVISIONING) else None,
                device_type="raspberrypi4-64" if i % 5 else "",
                os_version="balenaOS 5.1.20",
                release=f"{i:040x}" if i % 3 else "",
                ip_address=f"10.0.0.{i} 192.168.1.{i} fe80::1" if i % 4 else f"10.0.1.{i}",
                last_seen_at=seen,
                api_heartbeat_state=[HeartbeatState.ONLINE, HeartbeatState.OFFLINE, HeartbeatState.UNKNOWN][i % 3],
                last_api_heartbeat_at=seen,
                is_connected_to_vpn=i % 2 == 0,
                last_vpn_event=NOW - timedelta(minutes=i) if i % 6 else None,
                last_connectivity_event=NOW - timedelta(minutes=i) if i % 5 else None,
            )
        )
        # The Devices view attaches each row's tags (one query per page) before rendering.
        devices[-1].tag_map = {"location": f"gate-{i % 4}", "customer": "acme"} if i % 3 else {}
    return devices


def sample_history(n: int = 25) -> list:
    from devices.models import StatusTransition
    from devices.status import Status
    from devices.summary import HistoryRow

    statuses = list(Status)
    rows = []
    for i in range(n):
        t = StatusTransition(
            pk=1000 - i,
            at=NOW - timedelta(hours=i),
            from_status=statuses[(i + 1) % len(statuses)].value if i < n - 1 else "",
            to_status=statuses[i % len(statuses)].value,
            reason="heartbeat expired <after 900 s>" if i % 2 else "",
        )
        rows.append(HistoryRow(transition=t, duration=timedelta(hours=1, seconds=i), ongoing=i == 0))
    return rows


def sample_cards(n: int = 50) -> tuple[list[dict], object]:
    from devices.status import Status
    from fleets.models import Organization
    from fleets.views import FleetRow, segments

    org = Organization(pk=1, name="Northwind", slug="northwind", tier="free")
    cards = []
    for i in range(n):
        fleet = FleetRow(
            i + 1, 1, f"Fleet <{i}>", f"fleet-{i}", "raspberrypi4-64", "paid" if i % 10 == 0 else "free", i % 4 != 0
        )
        counts = {s.value: (i * (j + 3)) % 7 if i % 9 else 0 for j, s in enumerate(Status)}
        href = f"/devices/?fleet=fleet-{i}"
        cards.append({"fleet": fleet, "href": href, "total": sum(counts.values()), "segments": segments(counts, href)})
    return cards, org


def timed(render: Callable[[], str], runs: int) -> tuple[float, float, int]:
    """Median CPU and wall time of `runs` renders (after a warm-up), and the output's size.

    CPU time is the figure to compare: it hardly moves when other processes compete for the cores."""
    for _ in range(5):
        out = render()
    cpu, wall = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        render()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(cpu), statistics.median(wall), len(out)


def app_renderers() -> dict[str, Callable[[], str]]:
    """The fragments as the pages render them: through the app's template tags."""
    from django.template import Context, Template

    devices = sample_devices()
    history = sample_history()
    cards, org = sample_cards()
    rows = Template("{% load fleetstatus %}{% device_rows devices devices_url fleet_link %}")
    hist = Template("{% load fleetstatus %}{% history_rows history %}")
    from devices.templatetags.fleetstatus import register

    # (Before fleet_cards, the fleet_card tag drew one card: kept so the figures can be compared.)
    if "fleet_cards" in register.tags:
        grid = Template("{% load fleetstatus %}{% fleet_cards cards org %}")
    else:
        grid = Template("{% load fleetstatus %}{% for f in cards %}{% fleet_card f org %}{% endfor %}")
    base = {"now": NOW, "devices_url": "/devices/", "fleet_link": "/devices/?sort=name&fleet="}
    return {
        "device rows (50)": lambda: rows.render(Context({**base, "devices": devices})),
        "history rows (25)": lambda: hist.render(Context({**base, "history": history})),
        "fleet cards (50)": lambda: grid.render(Context({**base, "cards": cards, "org": org})),
    }


def django_renderers() -> dict[str, Callable[[], str]]:
    """The same fragments in Django's template language (benchmarks/templates/), for comparison."""
    from django.template import Context, Engine

    engine = Engine(
        dirs=[str(Path(__file__).resolve().parent / "templates")],
        libraries={"fleetstatus": "devices.templatetags.fleetstatus"},
    )
    devices = sample_devices()
    history = sample_history()
    cards, org = sample_cards()
    base = {"now": NOW, "devices_url": "/devices/", "fleet_link": "/devices/?sort=name&fleet="}
    rows = engine.get_template("dtl/device_rows.html")
    hist = engine.get_template("dtl/history_rows.html")
    grid = engine.get_template("dtl/fleet_cards.html")
    return {
        "device rows (50)": lambda: rows.render(Context({**base, "devices": devices})),
        "history rows (25)": lambda: hist.render(Context({**base, "history": history})),
        "fleet cards (50)": lambda: grid.render(Context({**base, "cards": cards, "org": org})),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed renders per fragment (median reported)")
    parser.add_argument("--django", action="store_true", help="also time the fragments in Django's template language")
    parser.add_argument("--dump", type=Path, help="write each fragment's HTML into this folder (to compare renderers)")
    args = parser.parse_args(argv)
    setup_django()
    import django

    variants = {"app": app_renderers()}
    if args.django:
        variants["django templates"] = django_renderers()
    print(f"Django {django.get_version()}, Python {sys.version.split()[0]}, median of {args.runs} renders")
    print(f"{'fragment':<20} {'renderer':<18} {'cpu ms':>8} {'wall ms':>8} {'µs/item':>8} {'bytes':>8}")
    for name in variants["app"]:
        items = int(name.split("(")[1].rstrip(")"))
        for variant, renderers in variants.items():
            cpu, wall, size = timed(renderers[name], args.runs)
            if args.dump:
                args.dump.mkdir(parents=True, exist_ok=True)
                (args.dump / f"{name.split(' (')[0].replace(' ', '_')}.{variant.replace(' ', '_')}.html").write_text(
                    renderers[name]()
                )
            print(f"{name:<20} {variant:<18} {cpu * 1000:8.3f} {wall * 1000:8.3f} {cpu * 1e6 / items:8.1f} {size:8d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
