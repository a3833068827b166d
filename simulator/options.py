"""How a simulator run is configured, what it counts and what it returns."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from simulator.scenarios import MIXED


class SimulatorError(Exception):
    """A problem that stops the simulator (bad key, unreachable server, unreadable state file)."""


@dataclass
class Options:
    base_url: str
    fleet: str
    count: int
    provisioning_key: str
    service_key: str
    scenario: str = MIXED
    duration: float | None = None
    seed: int = 0
    poll_scale: float = 1.0
    device_type: str = "raspberrypi5"
    connections: int = 20
    state_file: Path | None = None
    service_id: int = 1
    summary_interval: float = 10.0
    wait_timeout: float = 120.0
    ramp_up: float = 5.0
    vpn_batch_interval: float = 1.0
    request_timeout: float = 30.0


@dataclass
class Stats:
    requests: Counter = field(default_factory=Counter)  # by kind
    codes: Counter = field(default_factory=Counter)  # by (kind, status code)
    transport_errors: Counter = field(default_factory=Counter)  # by kind

    def record(self, kind: str, code: int) -> None:
        self.requests[kind] += 1
        self.codes[(kind, code)] += 1

    def transport(self, kind: str) -> None:
        self.requests[kind] += 1
        self.transport_errors[kind] += 1

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def server_errors(self) -> int:
        return sum(n for (_, code), n in self.codes.items() if code >= 500)

    def count(self, kind: str, code: int) -> int:
        return self.codes[(kind, code)]

    def errors_by_code(self) -> dict[str, int]:
        errors: Counter = Counter()
        for (_, code), n in self.codes.items():
            if code >= 400:
                errors[str(code)] += n
        if self.transport_errors:
            errors["transport"] = sum(self.transport_errors.values())
        return dict(sorted(errors.items()))


@dataclass
class Result:
    stats: Stats
    registered: int
    not_registered: list[str]
    scenarios: dict[str, int]
    fatal: str | None = None

    @property
    def ok(self) -> bool:
        return self.fatal is None and self.stats.server_errors == 0


def snippet(response: httpx.Response, limit: int = 200) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")
