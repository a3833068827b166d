"""A heartbeat load for fault tests: virtual devices fetching their target state over real HTTP.

Runs its own asyncio loop in a background thread, so the test thread can stop and start services
meanwhile. Every response is recorded: status codes, 5xx bodies, 503s without Retry-After, and the
wall time of each device's last successful (counted) fetch. Loopback only; every loop is bounded
by `stop()` and by the per-request timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx


@dataclass
class Registered:
    uuid: str
    api_key: str


def register_devices(base_url: str, provisioning_key: str, count: int, *, timeout: float = 30) -> list[Registered]:
    """Register `count` new devices through the API, like agents on first boot."""
    import secrets

    devices = []
    with httpx.Client(base_url=base_url, timeout=timeout) as client:
        for _ in range(count):
            response = client.post(
                "/device/register",
                json={"uuid": secrets.token_hex(16), "device_type": "raspberrypi4-64"},
                headers={"Authorization": f"Bearer {provisioning_key}"},
            )
            assert response.status_code == 201, response.text
            body = response.json()
            devices.append(Registered(body["uuid"], body["api_key"]))
    return devices


def tunnel(base_url: str, service_key: str, uuids: list[str], up: bool, service_id: int = 1) -> httpx.Response:
    endpoint = "client-connect" if up else "client-disconnect"
    response = httpx.post(
        f"{base_url}/services/vpn/{endpoint}",
        json={"uuids": uuids, "serviceId": service_id},
        headers={"Authorization": f"Bearer {service_key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


@dataclass
class HeartbeatLoad:
    base_url: str
    devices: list[Registered]
    period: float = 1.0
    timeout: float = 10.0
    silenced: set[str] = field(default_factory=set)
    codes: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    missing_retry_after: int = 0
    last_ok: dict[str, float] = field(default_factory=dict)
    # uuid -> [(sent, answered)] of every successful fetch, in wall-clock seconds.
    ok_times: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> HeartbeatLoad:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="heartbeat-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 10)
            assert not self._thread.is_alive(), "heartbeat load did not stop"

    def silence(self, uuids: list[str]) -> None:
        with self._lock:
            self.silenced.update(uuids)

    @property
    def total(self) -> int:
        return sum(self.codes.values())

    def snapshot(self) -> Counter:
        with self._lock:
            return Counter(self.codes)

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, limits=limits) as client:
            await asyncio.gather(*(self._device(client, d, i) for i, d in enumerate(self.devices)))

    async def _device(self, client: httpx.AsyncClient, device: Registered, index: int) -> None:
        # Spread the devices over one period, as real agents' clocks are.
        await asyncio.sleep(self.period * index / max(len(self.devices), 1))
        headers = {"Authorization": f"Bearer {device.api_key}"}
        while not self._stop.is_set():
            if device.uuid not in self.silenced:
                started = time.time()
                try:
                    response = await client.get(f"/device/v3/{device.uuid}/state", headers=headers)
                except httpx.TransportError as exc:
                    with self._lock:
                        self.codes[f"transport:{type(exc).__name__}"] += 1
                else:
                    with self._lock:
                        self.codes[response.status_code] += 1
                        if response.status_code == 200:
                            self.last_ok[device.uuid] = started
                            self.ok_times.setdefault(device.uuid, []).append((started, time.time()))
                        elif response.status_code >= 500:
                            if response.status_code == 503 and response.headers.get("Retry-After"):
                                pass
                            else:
                                if response.status_code == 503:
                                    self.missing_retry_after += 1
                                if len(self.server_errors) < 20:
                                    self.server_errors.append(
                                        f"{response.status_code} at {started:.1f}: {response.text[:300]}"
                                    )
            await asyncio.sleep(self.period)


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()


def is_expiry(transition: tuple) -> bool:
    return transition[3].startswith("heartbeat expired")


def false_offlines(load: HeartbeatLoad, transitions: dict[str, list[tuple]], window: float) -> list[str]:
    """Offline transitions the device did not earn: a fetch succeeded within the window before it.

    A transition is stamped at the heartbeat deadline D = last counted fetch + window. A fetch sent
    after D - window and answered 200 before D was counted by the server inside that window (its
    server time lies between the two), so the device was not silent for a whole window: marking
    it Offline at D is wrong. (The fetch that set D was sent before D - window.)
    """
    slack = 0.05
    wrong = []
    for uuid, rows in transitions.items():
        fetches = load.ok_times.get(uuid, [])
        for row in rows:
            if not is_expiry(row):
                continue
            at = row[2]
            deadline = at.timestamp()
            earned = [f for f in fetches if f[0] > deadline - window + slack and f[1] < deadline - slack]
            if earned:
                sent, answered = earned[-1]
                wrong.append(
                    f"{uuid} offline at {at.isoformat()} but a fetch sent at {_iso(sent)} was answered 200 at {_iso(answered)}"
                )
    return wrong
