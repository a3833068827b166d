"""The moving parts of the browser tests: Celery processes, simulated devices and a tunnel server.

Everything a device does goes through the real HTTP API of the live server (registration,
target-state fetches, the tunnel server's connect/disconnect calls), so the journeys see exactly
what a real fleet would cause. Only organizations, fleets, users and keys are created directly.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
LOGS = ARTIFACTS / "e2e-logs"
TRACES = ARTIFACTS / "traces"

CHROMIUM = os.environ.get("FLEETSTATUS_CHROMIUM", "/usr/bin/chromium")
# The machine has no internet: without these, Chromium keeps trying to reach Google's services
# and fills the logs with refused connections (and burns CPU the live server needs).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Containers often give /dev/shm only 64 MB, where Chromium's renderer crashes on big pages.
    "--disable-dev-shm-usage",
]

# Short clocks so a deadline passes within seconds: a fleet polls every FAST_POLL_INTERVAL seconds,
# so its heartbeat deadline is 1.5 x that after the last fetch; the sweep runs every second.
SWEEP_INTERVAL = 1
MIN_POLL_INTERVAL = 1
FAST_POLL_INTERVAL = 3


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll predicate until it returns something truthy (returned) or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def database_url(db: dict) -> str:
    """A DATABASE_URL for the subprocesses that points at the (already created) test database."""
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{quote(str(db['NAME']), safe='')}"


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when pytest dies, even by SIGKILL (finalizers never run then)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class CeleryProcesses:
    """A real `celery worker` and `celery beat`, each in its own process group, logging to files."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        celery = [sys.executable, "-m", "celery", "-A", "fleetstatus"]
        commands = {
            # solo pool: one process that runs the sweep itself; the machine has two cores shared
            # with the live server and Chromium. No gossip/mingle/heartbeat: a single worker needs
            # none of them, and mingle alone adds seconds to the start.
            "worker": [
                *celery,
                "worker",
                "--pool",
                "solo",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            "beat": [*celery, "beat", "--loglevel", "INFO", "--schedule", str(self.workdir / "celerybeat-schedule")],
        }
        for name, command in commands.items():
            log = LOGS / f"celery-{name}.log"
            self.logs[name] = log
            with log.open("wb") as out:
                self.procs[name] = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"celery {name} exited with {proc.returncode}; see {self.logs[name]}:\n{self.tail(name)}"
                )

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        # The whole process group: celery may have children, and none may outlive the test run
        # (they hold connections to the test database, which pytest-django drops next).
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)


class ApiError(AssertionError):
    pass


def _check(response: httpx.Response, *expected: int) -> httpx.Response:
    if response.status_code not in expected:
        raise ApiError(
            f"{response.request.method} {response.request.url.path} -> {response.status_code}: {response.text[:300]}"
        )
    return response


@dataclass
class SimDevice:
    """A device agent talking to the device API: register, fetch target state, report state."""

    base_url: str
    uuid: str
    api_key: str
    name: str = ""
    _poller: threading.Thread | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    fetch_errors: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def register(cls, base_url: str, provisioning_key: str, *, device_type: str = "raspberrypi4-64") -> SimDevice:
        uuid = secrets.token_hex(16)
        api_key = secrets.token_hex(32)
        response = httpx.post(
            f"{base_url}/device/register",
            json={"uuid": uuid, "device_type": device_type, "api_key": api_key},
            headers={"Authorization": f"Bearer {provisioning_key}"},
            timeout=15,
        )
        body = _check(response, 201).json()
        return cls(base_url=base_url, uuid=uuid, api_key=body.get("api_key") or api_key)

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def fetch(self) -> dict:
        """One target-state fetch: the heartbeat."""
        response = httpx.get(f"{self.base_url}/device/v3/{self.uuid}/state", headers=self._headers, timeout=15)
        return _check(response, 200).json()

    def report(self, **fields) -> None:
        response = httpx.patch(
            f"{self.base_url}/device/v3/state", json={self.uuid: fields}, headers=self._headers, timeout=15
        )
        _check(response, 200, 204)

    def start_polling(self, every: float = 1.0) -> None:
        """Keep fetching in the background, like a healthy agent (well inside the deadline)."""
        self.fetch()
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(every):
                try:
                    self.fetch()
                except (httpx.HTTPError, ApiError) as exc:  # reported by stop_polling, not lost in a thread
                    self.fetch_errors.append(repr(exc))

        self._poller = threading.Thread(target=loop, name=f"agent-{self.uuid[:7]}", daemon=True)
        self._poller.start()

    def stop_polling(self) -> None:
        """The agent goes silent (power cut, crashed supervisor): no more fetches after this returns."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=20)
            self._poller = None
        if self.fetch_errors:
            raise ApiError(f"background fetches of {self.uuid[:7]} failed: {self.fetch_errors[:3]}")


@dataclass
class TunnelServer:
    """The cloudlink/VPN server's calls to the API."""

    base_url: str
    service_key: str
    service_id: int = 1

    def _post(self, action: str, uuids: Iterable[str]) -> None:
        response = httpx.post(
            f"{self.base_url}/services/vpn/{action}",
            json={"uuids": list(uuids), "serviceId": self.service_id},
            headers={"Authorization": f"Bearer {self.service_key}"},
            timeout=15,
        )
        _check(response, 200, 204)

    def connect(self, *devices: SimDevice) -> None:
        self._post("client-connect", [d.uuid for d in devices])

    def disconnect(self, *devices: SimDevice) -> None:
        self._post("client-disconnect", [d.uuid for d in devices])
