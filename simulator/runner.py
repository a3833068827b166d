"""The simulator's runtime: one asyncio task per device over one shared, bounded httpx client."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from simulator.bodies import fleet_app_uuid, fleet_release, make_profile, register_body
from simulator.device import Agent
from simulator.options import Options, Result, SimulatorError, Stats, snippet
from simulator.scenarios import NO_TUNNEL_AT_BOOT, SCENARIO_CHOICES, SCENARIOS, assign_scenarios
from simulator.state import SimDevice, load_state, save_state
from simulator.tunnel import TunnelServer


class Simulator:
    def __init__(
        self,
        options: Options,
        write: Callable[[str], None] = print,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if options.scenario not in SCENARIO_CHOICES:
            raise SimulatorError(f"unknown scenario {options.scenario!r}; choose from {', '.join(SCENARIO_CHOICES)}")
        self.options = options
        self.write = write
        self.transport = transport
        self.stats = Stats()
        self.client: httpx.AsyncClient | None = None
        self.tunnel = TunnelServer(self, options.service_id)
        self.agents: list[Agent] = []
        self.devices: list[SimDevice] = []
        self.learned_interval: float | None = None
        self.stop_event = asyncio.Event()
        self.fatal: str | None = None
        self.started = time.monotonic()
        self._dirty = False
        self._problems: set[tuple[str, int]] = set()
        self._transport_problems: set[str] = set()
        self._signals: list[int] = []
        self._slots: asyncio.Semaphore | None = None

    # --- plumbing ---

    def fail(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = message
            self.write(f"simulator: {message}")
        self.stop_event.set()

    def note_problem(self, kind: str, response: httpx.Response, message: str = "") -> None:
        """Print the first answer of each (kind, status) that is not what a device expects."""
        key = (kind, response.status_code)
        if key in self._problems:
            return
        self._problems.add(key)
        self.write(f"simulator: {kind} answered HTTP {response.status_code}: {message or snippet(response)}")

    def attach(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self._slots = asyncio.Semaphore(self.options.connections)

    async def request(self, kind: str, method: str, url: str, *, token: str, json: Any = None) -> httpx.Response | None:
        assert self.client is not None and self._slots is not None
        try:
            # Our own gate in front of httpx's pool: httpcore re-scans its whole queue of waiting
            # requests on every change, which stalls the event loop with thousands of devices.
            async with self._slots:
                if self.stop_event.is_set() and not kind.startswith("vpn"):
                    return None  # stopping: devices send nothing new, only the tunnel server's goodbye
                response = await self.client.request(
                    method, url, headers={"Authorization": f"Bearer {token}"}, json=json
                )
        except httpx.HTTPError as exc:
            self.stats.transport(kind)
            if kind not in self._transport_problems:
                self._transport_problems.add(kind)
                self.write(f"simulator: {kind} request failed: {exc!r}")
            return None
        self.stats.record(kind, response.status_code)
        if response.status_code >= 500:
            self.note_problem(kind, response)
        return response

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when the simulator is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), timeout=seconds)
        return self.stop_event.is_set()

    # --- startup ---

    async def wait_for_server(self) -> bool:
        """Retry with backoff until the web server answers (honcho starts it together with us)."""
        assert self.client is not None
        deadline = time.monotonic() + self.options.wait_timeout
        delay, said = 0.25, False
        while True:
            try:
                response = await self.client.get("/healthz")
                if response.status_code < 500:
                    if said:
                        self.write(f"simulator: {self.options.base_url} is up")
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() + delay > deadline:
                self.fail(f"{self.options.base_url} did not answer within {self.options.wait_timeout:.0f} s")
                return False
            if not said:
                self.write(f"simulator: waiting for {self.options.base_url} …")
                said = True
            if await self.sleep(delay):
                return False
            delay = min(delay * 2, 5.0)

    def load_devices(self) -> list[SimDevice]:
        stored = load_state(self.options.state_file, self.options.fleet) if self.options.state_file else []
        devices = list(stored)
        while len(devices) < self.options.count:
            devices.append(SimDevice.new())
        self.devices = devices  # all of them are saved, also those beyond --count this time
        if len(devices) > len(stored):
            self._dirty = True
        reused = sum(1 for d in stored[: self.options.count] if d.registered)
        if reused:
            self.write(f"simulator: re-using {reused} registered devices from {self.options.state_file}")
        return devices[: self.options.count]

    def save(self, force: bool = False) -> None:
        if self.options.state_file and (self._dirty or force):
            self._dirty = False
            save_state(self.options.state_file, self.options.fleet, self.devices)

    async def ensure_registered(self, agent: Agent, *, retry: bool = True) -> bool:
        """POST /device/register until it is known; 401/403 (bad provisioning key) stops everything."""
        delay = 0.5
        for _ in range(3):  # at most two identity changes after a 409 on a re-registration
            device = agent.device
            if device.registered:
                return True
            while True:
                response = await self.request(
                    "register",
                    "POST",
                    "/device/register",
                    token=self.options.provisioning_key,
                    json=register_body(device.uuid, self.options.device_type, device.api_key),
                )
                if response is not None and response.status_code < 500:
                    break
                if not retry or await self.sleep(delay):
                    return False
                delay = min(delay * 2, 30.0)
            if response.status_code == 201:
                try:
                    returned_key = response.json().get("api_key")
                except (ValueError, AttributeError):
                    returned_key = None
                if returned_key and returned_key != device.api_key:
                    self.note_problem("register", response, "the server replaced the api_key the device sent")
                    device.api_key = str(returned_key)
                device.registered = True
                self._dirty = True
                return True
            if response.status_code == 409:
                if retry:
                    # Taken by us in a run that died before saving its state: the key still works
                    # (if not, the first fetch gets 401 and re-registers under a new UUID).
                    device.registered = True
                    self._dirty = True
                    return True
                agent.take_new_identity()
                self._dirty = True
                continue
            if response.status_code in (401, 403):
                self.fail(
                    f"the provisioning key for {self.options.fleet} was rejected (HTTP {response.status_code}): {snippet(response)}"
                )
                return False
            self.note_problem("register", response)
            return False
        return False

    # --- reporting ---

    def summary(self, final: bool = False) -> str:
        s = self.stats
        elapsed = time.monotonic() - self.started
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(s.requests.items())) or "none"
        errors = ", ".join(f"{code}: {n}" for code, n in s.errors_by_code().items()) or "none"
        frozen = s.count("state", 304)
        scenarios = ", ".join(f"{name} {n}" for name, n in self.scenario_counts().items())
        registered = sum(1 for a in self.agents if a.device.registered)
        polling = sum(1 for a in self.agents if a.poll_task is not None)
        head = "simulator done" if final else "simulator"
        return (
            f"{head} [{elapsed:.0f}s] requests {s.total} ({kinds}); errors: {errors}"
            + (f"; frozen (304) {frozen}" if frozen else "")
            + f"; registered {registered}/{len(self.agents)}, polling {polling}, tunnels up {len(self.tunnel.connected)}"
            + f"; scenarios: {scenarios}"
        )

    def scenario_counts(self) -> dict[str, int]:
        counts = Counter(a.scenario for a in self.agents)
        return {name: counts[name] for name in SCENARIOS if counts[name]}

    async def _housekeeping(self) -> None:
        last_summary = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            self.save()
            if self.options.summary_interval and time.monotonic() - last_summary >= self.options.summary_interval:
                last_summary = time.monotonic()
                self.write(self.summary())

    def _install_signal_handlers(self) -> list[int]:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal)
                installed.append(sig)
            except (ValueError, RuntimeError, NotImplementedError):
                pass  # not the main thread (tests) or not supported: --duration still stops it
        self._signals = installed
        return installed

    def _on_signal(self) -> None:
        self.write("simulator: stopping (Ctrl-C again to stop at once)")
        self.stop_event.set()
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)

    # --- main ---

    async def run(self) -> Result:
        self.started = time.monotonic()
        installed = self._install_signal_handlers()
        limits = httpx.Limits(
            max_connections=self.options.connections, max_keepalive_connections=self.options.connections
        )
        # Requests wait for a slot in self._slots (not in httpx's pool), so that wait does not count
        # against the request timeout; pool=None because the pool itself never has a queue.
        timeout = httpx.Timeout(self.options.request_timeout, pool=None)
        background: list[asyncio.Task] = []
        try:
            async with httpx.AsyncClient(
                base_url=self.options.base_url, limits=limits, timeout=timeout, transport=self.transport
            ) as client:
                self.attach(client)
                if not await self.wait_for_server():
                    return self._result()
                devices = self.load_devices()
                scenarios = assign_scenarios(self.options.scenario, len(devices), self.options.seed)
                app_uuid = fleet_app_uuid(self.options.fleet)
                release = fleet_release(self.options.fleet, self.options.seed)
                for index, (device, scenario) in enumerate(zip(devices, scenarios, strict=True)):
                    profile = make_profile(
                        random.Random(f"profile:{self.options.seed}:{index}"), app_uuid=app_uuid, release=release
                    )
                    self.agents.append(Agent(self, device, index, scenario, profile))
                self._announce()
                self.tunnel.reset(
                    [a.uuid for a in self.agents if a.device.registered and a.scenario in NO_TUNNEL_AT_BOOT]
                )
                background = [asyncio.create_task(self.tunnel.run()), asyncio.create_task(self._housekeeping())]
                tasks = [asyncio.create_task(a.run(), name=f"device-{a.index}") for a in self.agents]
                for task in tasks:
                    task.add_done_callback(self._device_done)
                self.started = time.monotonic()
                if self.options.duration is None:
                    await self.stop_event.wait()
                else:
                    await self.sleep(self.options.duration)
                self.stop_event.set()
                await self._drain()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                background = []
                self._slots = asyncio.Semaphore(self.options.connections)  # only the tunnel server is left
                await self.tunnel.shutdown()
        finally:
            for task in background:
                task.cancel()
            loop = asyncio.get_running_loop()
            for sig in installed:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            self.save()
        self.write(self.summary(final=True))
        return self._result()

    async def _drain(self) -> None:
        """Wait for the requests in flight, holding every slot so that no new one starts.

        Cancelling a request half-way would leave the server's side of it running on its own (and
        the tunnel server unsure whether a connect it sent counted), so devices are cancelled only
        once nothing is on the wire.
        """
        assert self._slots is not None
        taken = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.request_timeout):
                while taken < self.options.connections:
                    await self._slots.acquire()
                    taken += 1

    def _device_done(self, task: asyncio.Task) -> None:
        # A device script only ends by cancellation (or when it cannot register); an exception is
        # a bug in the simulator: stop loudly rather than run on with a silently dead device.
        if not task.cancelled() and task.exception() is not None:
            self.fail(f"{task.get_name()} crashed: {task.exception()!r}")

    def _announce(self) -> None:
        counts = ", ".join(f"{name} {n}" for name, n in self.scenario_counts().items())
        self.write(
            f"simulator: {len(self.agents)} devices in {self.options.fleet} ({counts}) against {self.options.base_url}"
        )
        never = [a.uuid for a in self.agents if a.scenario == "preregistered" and not a.device.registered]
        if never:
            shown = ", ".join(never[:10]) + (" …" if len(never) > 10 else "")
            self.write(
                f"simulator: {len(never)} 'preregistered' devices are NOT registered and never contact the server: "
                f"the device API has no preregistration call. Preregister these UUIDs in the admin to see them "
                f"as Inactive: {shown}"
            )

    def _result(self) -> Result:
        return Result(
            stats=self.stats,
            registered=sum(1 for a in self.agents if a.device.registered),
            not_registered=[a.uuid for a in self.agents if not a.device.registered],
            scenarios=self.scenario_counts(),
            fatal=self.fatal,
        )


def run_simulator(options: Options, write: Callable[[str], None] = print, **kwargs: Any) -> Result:
    return asyncio.run(Simulator(options, write, **kwargs).run())
