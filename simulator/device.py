"""One virtual device at run time: executes its scenario script and polls its target state."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from simulator.bodies import Profile, parse_poll_interval, state_body
from simulator.host import Host
from simulator.scenarios import SCRIPTS, Poll, Report, Sleep, Tunnel
from simulator.state import SimDevice

UNKNOWN_INTERVAL = 10.0  # seconds a device waits between steps before any fetch told it the real interval
POLL_JITTER = 0.1


class Agent:
    """One virtual device at run time: its identity, script and poll loop."""

    def __init__(self, sim: Host, device: SimDevice, index: int, scenario: str, profile: Profile) -> None:
        self.sim = sim
        self.device = device
        self.index = index
        self.scenario = scenario
        self.profile = profile
        self.script_rng = random.Random(f"script:{sim.options.seed}:{index}")
        self.jitter_rng = random.Random(f"jitter:{sim.options.seed}:{index}")
        self.poll_interval: float | None = None
        self.poll_task: asyncio.Task | None = None
        self.tunnel_up = False
        self._last_reregister = -1e9

    @property
    def uuid(self) -> str:
        return self.device.uuid

    def tick(self) -> float:
        interval = self.poll_interval or self.sim.learned_interval or UNKNOWN_INTERVAL
        return interval * self.sim.options.poll_scale

    async def run(self) -> None:
        await asyncio.sleep(self.jitter_rng.uniform(0, self.sim.options.ramp_up))
        if self.scenario == "preregistered":
            return  # switched off in its box: not even a registration
        if not await self.sim.ensure_registered(self):
            return
        try:
            for action in SCRIPTS[self.scenario](self.script_rng, self.profile):
                if isinstance(action, Report):
                    await self.report(action.fields)
                elif isinstance(action, Poll):
                    await self.set_polling(action.on)
                elif isinstance(action, Tunnel):
                    self.tunnel_up = action.up
                    self.sim.tunnel.set(self.uuid, action.up)
                elif isinstance(action, Sleep):
                    await asyncio.sleep(action.ticks * self.tick())
        finally:
            self.stop_polling()

    async def set_polling(self, on: bool) -> None:
        if not on:
            self.stop_polling()
        elif self.poll_task is None:
            # Like the supervisor, fetch the target state first and only then go on: the script's
            # next sleeps are measured in the interval that fetch tells.
            await self.fetch()
            self.poll_task = asyncio.create_task(self._poll_loop(), name=f"poll-{self.uuid[:7]}")

    def stop_polling(self) -> None:
        if self.poll_task is not None:
            self.poll_task.cancel()
            self.poll_task = None

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick() * self.jitter_rng.uniform(1 - POLL_JITTER, 1 + POLL_JITTER))
            await self.fetch()

    async def fetch(self) -> None:
        response = await self.sim.request("state", "GET", f"/device/v3/{self.uuid}/state", token=self.device.api_key)
        if response is None:
            return
        if response.status_code == 200:
            try:
                interval = parse_poll_interval(response.json(), self.uuid)
            except ValueError:
                interval = None
            if interval is None:
                self.sim.note_problem("state", response, "no BALENA_SUPERVISOR_POLL_INTERVAL in the target state")
            else:
                self.poll_interval = interval
                self.sim.learned_interval = interval
        elif response.status_code == 401:
            await self.reregister()
        elif response.status_code != 304:  # 304: frozen, keep polling at the last interval
            self.sim.note_problem("state", response)

    async def report(self, fields: dict[str, Any]) -> None:
        for _ in range(2):
            response = await self.sim.request(
                "report", "PATCH", "/device/v3/state", token=self.device.api_key, json=state_body(self.uuid, fields)
            )
            if response is None or response.status_code < 300:
                return
            if response.status_code == 401 and await self.reregister():
                continue
            self.sim.note_problem("report", response)
            return

    async def reregister(self) -> bool:
        """The server does not know our key (its database was reset, or the device deleted): register again."""
        now = time.monotonic()
        if now - self._last_reregister < self.tick():
            return False
        self._last_reregister = now
        self.device.registered = False
        return await self.sim.ensure_registered(self, retry=False)

    def take_new_identity(self) -> None:
        old = self.device.uuid
        fresh = SimDevice.new()
        self.device.uuid, self.device.api_key, self.device.registered = fresh.uuid, fresh.api_key, False
        self.sim.tunnel.forget(old)
        if self.tunnel_up:
            self.sim.tunnel.set(self.uuid, True)
