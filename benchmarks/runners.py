"""The performance figures (README "Performance") and the function that measures each (P1-P13)."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks import growth, load, notify, pages, readapi, scaleout, staleness, tunnel
from benchmarks.context import Context
from benchmarks.report import Row

TITLES = {
    "P1": "Devices page (100,000 devices)",
    "P2": "Fleets page (1,000 fleets, 1,000,000 devices)",
    "P3": "Device Summary (10,000 transitions)",
    "P4": "Heartbeats GET /device/v3/<uuid>/state",
    "P5": "State reports PATCH /device/v3/state",
    "P6": "Staleness task (10,000 due)",
    "P7": "client-connect, 8,000 UUIDs",
    "P8": "Devices page: status by last seen, short and common searches (100,000 devices)",
    "P9": "Notifications: 10,000 of 100,000 Offline in one sweep",
    "P10": "Read API GET /api/v1/devices?limit=100 (100,000 devices)",
    "P11": "/metrics (1,000 fleets, 1,000,000 devices)",
    "P12": "Growth: P1, P2, P6 and a state report at 10,000 / 100,000 / 1,000,000 devices",
    "P13": "Scale-out: fetches over 1-2 servers and a Redis Cluster; the sweep by 1 vs 2 workers",
}
TARGETS = {
    "P1": "<= 50 ms, <= 1.5x the 1k page, same queries",
    "P2": "<= 150 ms; queries independent of size",
    "P3": "<= 30 ms",
    "P4": ">= 1,700 req/s for 60 s, p99 <= 50 ms, 0 errors, 0 DB writes, >= 70 % of the ceiling",
    "P5": ">= 500 req/s, p99 <= 100 ms, 0 errors",
    "P6": "<= 2 s; 100k run >= 1/1.5 of it",
    "P7": "<= 1 s",
    "P8": pages.P8_TARGET,
    "P9": "all delivered <= 10 s after the sweep, <= 10 messages per channel, sweep +<= 10 %",
    "P10": "<= 30 ms first page and page 900",
    "P11": "<= 100 ms; queries independent of size",
    "P12": "1,000,000 figure <= 1.5x the 10,000 figure (P1, P2, P6)",
    "P13": "(scale-out: informational)",
}
ALL: dict[str, Callable[[Context], list[Row]]] = {
    "P1": pages.p1,
    "P2": pages.p2,
    "P3": pages.p3,
    "P4": load.p4,
    "P5": load.p5,
    "P6": staleness.p6,
    "P7": tunnel.p7,
    "P8": pages.p8,
    "P9": notify.p9,
    "P10": readapi.p10,
    "P11": readapi.p11,
    "P12": growth.p12,
    "P13": scaleout.p13,
}
