"""Results, the table they print as, and the machine they were measured on."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any


class NotAvailable(Exception):
    """The code a benchmark measures has not landed yet (missing URL, function or module)."""


@dataclass
class Row:
    id: str
    figure: str
    target: str
    measured: str
    ok: bool | None  # None: not measured (not available yet, or informational)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.ok is None and self.target.startswith("("):
            return "info"
        return {True: "pass", False: "FAIL", None: "n/a"}[self.ok]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def table(rows: list[Row]) -> str:
    headers = ("#", "figure", "target", "measured (median)", "result")
    cells = [(r.id, r.figure, r.target, r.measured, r.verdict) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    # Long cells wrap only in the measured column; keep the table readable in an 160-column terminal.
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    out = ["| # | figure | target | measured (median) | result |", "|---|---|---|---|---|"]
    out += [f"| {r.id} | {r.figure} | {r.target} | {r.measured} | {r.verdict} |" for r in rows]
    return "\n".join(out)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        return "?"


def _version(cmd: list[str]) -> str:
    if not shutil.which(cmd[0]):
        return "not installed"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def machine() -> dict[str, Any]:
    import django
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SHOW server_version")
        pg = cur.fetchone()[0]
        cur.execute("SHOW shared_buffers")
        shared_buffers = cur.fetchone()[0]
    from benchmarks.pgserver import server_settings

    pg_settings = server_settings(connection)
    redis_version = "?"
    try:
        import redis

        redis_version = redis.Redis.from_url(settings.REDIS_URL).info("server")["redis_version"]
    except Exception as exc:  # noqa: BLE001 - informational only
        redis_version = f"unreachable ({exc.__class__.__name__})"
    try:
        import gunicorn

        gunicorn_version = gunicorn.__version__
    except ImportError:
        gunicorn_version = "not installed"
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(_ram_gib(), 1),
        "os": platform.platform(),
        "postgresql": f"{pg} (shared_buffers {shared_buffers})",
        "redis": redis_version,
        "python": sys.version.split()[0],
        "django": django.get_version(),
        "gunicorn": gunicorn_version,
        "wrk": _version(["wrk", "-v"]).split(" [")[0],
        "load_average": load_average(),
        "pg_settings": pg_settings,
    }


def machine_text(m: dict[str, Any]) -> str:
    return (
        f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; {m['os']}\n"
        f"         PostgreSQL {m['postgresql']}, Redis {m['redis']}, Python {m['python']}, Django {m['django']}, "
        f"gunicorn {m['gunicorn']}, {m['wrk']}\n"
        f"         PostgreSQL settings: {', '.join(f'{k}={v}' for k, v in m.get('pg_settings', {}).items())}\n"
        f"         load average at start {m['load_average']}, at end {m.get('load_average_end', '?')} "
        "(other processes on these 2 cores make the figures noisy)"
    )


def as_json(rows: list[Row], m: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {"machine": m, "rows": [asdict(r) | {"result": r.verdict} for r in rows], **extra}
