"""What a simulated device and the simulated tunnel server need from the simulator that runs them.

A Protocol rather than the Simulator class itself, so that device.py and tunnel.py do not import
runner.py (which imports them): the simulator's modules form no import cycle.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from simulator.options import Options


class Tunnels(Protocol):
    def set(self, uuid: str, up: bool) -> None: ...


class Host(Protocol):
    options: Options
    learned_interval: float | None
    tunnel: Tunnels

    async def request(
        self, kind: str, method: str, url: str, *, token: str, json: Any = None
    ) -> httpx.Response | None: ...

    async def ensure_registered(self, agent: Any, *, retry: bool = True) -> bool: ...

    def fail(self, message: str) -> None: ...

    def note_problem(self, kind: str, response: httpx.Response, message: str = "") -> None: ...
