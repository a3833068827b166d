"""Browser journeys: headless Debian Chromium against a live server on PostgreSQL, with a real
Celery worker and beat on Redis sweeping the same test database every second.

Run:  DATABASE_URL=postgres://... REDIS_URL=redis://.../<db> .venv/bin/pytest -m browser
Screenshots land in test-artifacts/screenshots/<journey>.png (printed at the end of the run),
Celery logs in test-artifacts/e2e-logs/.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import expect

from tests.e2e import harness
from tests.e2e.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SCREENSHOTS,
    TRACES,
    CeleryProcesses,
    SimDevice,
    TunnelServer,
    wait_until,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from fleets.models import Fleet, Organization

# Generous for a shared two-core machine (a page load under load can take seconds); a journey
# that passes waits only as long as its condition takes, so this costs nothing when all is well.
ACTION_TIMEOUT_MS = 15_000
expect.set_options(timeout=ACTION_TIMEOUT_MS)

_shots_taken: list[Path] = []
_traces_saved: list[Path] = []


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("browser") and not Path(CHROMIUM).exists():
        message = f"needs Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("FLEETSTATUS_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    # Keep each phase's report on the item so the page fixture knows in teardown whether the
    # journey failed (and must leave its screenshot behind).
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def pytest_terminal_summary(terminalreporter) -> None:
    if _shots_taken:
        terminalreporter.write_sep("-", "browser journeys")
        terminalreporter.write_line(f"screenshots ({len(_shots_taken)}): {SCREENSHOTS}")
        terminalreporter.write_line(f"celery logs: {harness.LOGS}")
        if _traces_saved:
            terminalreporter.write_line(f"traces of failed journeys: {TRACES} (.venv/bin/playwright show-trace <file>)")


def save_screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if path not in _shots_taken:
        _shots_taken.append(path)
    return path


# --- Processes ---------------------------------------------------------------------------------


# Package scope: the browser and the Celery processes live while tests/e2e runs and are gone
# before the rest of a full test session; a worker sweeping the test database every second would
# change statuses under other tests' feet.
@pytest.fixture(scope="package")
def playwright_browser():
    from playwright.sync_api import sync_playwright

    # The folders hold this run only: a screenshot or trace left from an earlier run would show
    # a page (or a failure) that no longer exists.
    shutil.rmtree(TRACES, ignore_errors=True)
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    # Playwright's sync API runs an event loop in this thread; the ORM calls the journeys make for
    # setup are still plain synchronous calls, so Django's async-safety guard must stand aside —
    # only while the browser exists, not for the rest of a full test session.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def _redis():
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL)


@pytest.fixture(scope="session", autouse=True)
def _flush_retries_a_deadlock():
    """The journeys' real worker and beat keep querying while a test's database is flushed: the flush's
    TRUNCATE (exclusive locks, taken table by table) can deadlock with one of their transactions, and
    PostgreSQL then cancels one side. The flush is the one to try again; the app's transaction is not
    the test's concern."""
    from django.core.management.commands import flush
    from django.db import OperationalError

    original = flush.Command.handle

    def handle(self, **options):
        for attempt in range(5):
            try:
                return original(self, **options)
            except Exception as exc:  # flush wraps the database error in a CommandError
                cause = exc.__cause__ or exc.__context__
                if attempt == 4 or not isinstance(cause, OperationalError) or "deadlock" not in str(cause):
                    raise

    flush.Command.handle = handle
    yield
    flush.Command.handle = original


@pytest.fixture(scope="package")
def celery_processes(django_db_setup, django_db_blocker):
    """Worker and beat on the test database. Depends on django_db_setup so that it is torn down
    (and its database connections closed) before pytest-django drops the test database."""
    from django.conf import settings

    if "postgresql" not in settings.DATABASES["default"]["ENGINE"] or not settings.REDIS_URL:
        pytest.skip("browser journeys need PostgreSQL and Redis")
    # Our own Redis database only (REDIS_URL's number): a clean broker and heartbeat store.
    _redis().flushdb()
    workdir = Path(tempfile.mkdtemp(prefix="fleetstatus-e2e-"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": harness.database_url(settings.DATABASES["default"]),
        "REDIS_URL": settings.REDIS_URL,
        "FLEETSTATUS_SWEEP_INTERVAL": str(harness.SWEEP_INTERVAL),
        "FLEETSTATUS_MIN_POLL_INTERVAL": str(harness.MIN_POLL_INTERVAL),
        "FLEETSTATUS_DEFAULT_POLL_INTERVAL": str(settings.FLEETSTATUS_DEFAULT_POLL_INTERVAL),
        "FLEETSTATUS_VAR_DIR": str(workdir),
        "PYTHONPATH": str(harness.ROOT),
    }
    env.pop("FLEETSTATUS_TEST_DB", None)
    processes = CeleryProcesses(env, workdir)
    processes.start()
    try:
        with django_db_blocker.unblock():
            _wait_for_sweep(processes, since=None, timeout=60)
        yield processes
    finally:
        processes.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_sweep(processes: CeleryProcesses, *, since, timeout: float) -> None:
    """Beat -> Redis -> worker -> test database, proven by the sweep's dead-man's-switch row."""
    from devices.models import TaskRun

    def swept():
        processes.check_alive()
        run = TaskRun.objects.filter(name="sweep").first()
        return run is not None and (since is None or run.last_success_at >= since)

    wait_until(swept, timeout=timeout, what="the Celery sweep to run against the test database")


# --- Per journey -------------------------------------------------------------------------------


@dataclass
class World:
    """One journey's organization, login, fleets, keys and simulated devices."""

    base_url: str
    org: Organization
    user: User
    password: str
    fast_fleet: Fleet
    fast_key: str
    steady_fleet: Fleet
    steady_key: str
    tunnel: TunnelServer
    devices: list[SimDevice] = field(default_factory=list)

    def register(self, fleet: str = "steady") -> SimDevice:
        key = self.fast_key if fleet == "fast" else self.steady_key
        device = SimDevice.register(self.base_url, key)
        self.devices.append(device)
        return device

    def register_many(self, n: int, fleet: str = "steady") -> list[SimDevice]:
        """n devices registering at once, as a batch of freshly flashed devices would."""
        with ThreadPoolExecutor(max_workers=REGISTER_CONCURRENCY) as pool:
            return list(pool.map(lambda _: self.register(fleet), range(n)))

    def provision_many(self, n: int, fleet: str = "steady") -> list[SimDevice]:
        """n devices created through devices.services (setup, like staff preparing a batch).

        Registration over HTTP costs a request and a fresh database connection per device on the
        live server; for the page-sized journeys that is most of their time on a busy machine.
        What the devices then *do* (fetch, tunnel) still goes through the HTTP API.
        """
        import secrets

        from devices import services

        target = self.fast_fleet if fleet == "fast" else self.steady_fleet
        made = []
        for _ in range(n):
            device, api_key = services.create_device(target, secrets.token_hex(16), reason="registered")
            made.append(SimDevice(base_url=self.base_url, uuid=device.uuid, api_key=api_key))
        self.devices.extend(made)
        return made

    def stop_all(self) -> None:
        for device in self.devices:
            device._stop.set()
        for device in self.devices:
            if device._poller is not None:
                device._poller.join(timeout=20)


PASSWORD = "e2e correct horse battery"
# The live server answers each request in its own thread; a few at once cut the setup of the
# page-sized journeys from tens of seconds to a few on a busy two-core machine.
REGISTER_CONCURRENCY = 6


def make_user(org: Organization, username: str, *, staff: bool = False, role: str = "owner") -> User:
    """A login with PASSWORD, member of org (staff: a superuser, for the admin)."""
    from django.contrib.auth import get_user_model

    from fleets.models import Membership

    model = get_user_model()
    create = model.objects.create_superuser if staff else model.objects.create_user
    user = create(username=username, password=PASSWORD, email=f"{username}@example.com")
    Membership.objects.create(user=user, organization=org, role=role)
    return user


def make_org_with_user(slug: str, username: str) -> tuple[Organization, User]:
    from fleets.models import Organization, Tier

    org = Organization.objects.create(slug=slug, name=slug.replace("-", " ").title(), tier=Tier.PAID)
    return org, make_user(org, username)


def make_fleet(org: Organization, slug: str, **kwargs) -> tuple[Fleet, str]:
    from fleets.models import Fleet

    fleet = Fleet(
        organization=org, slug=slug, name=slug.replace("-", " ").title(), device_type="raspberrypi4-64", **kwargs
    )
    key = fleet.issue_provisioning_key()
    fleet.save()
    return fleet, key


@pytest.fixture
def e2e_settings(settings):
    """The live server runs in this process: give it the same short clocks as the Celery processes."""
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = harness.MIN_POLL_INTERVAL
    settings.FLEETSTATUS_SWEEP_INTERVAL = harness.SWEEP_INTERVAL
    # Chromium talks plain HTTP to the live server; production's Secure cookies would be dropped.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    return settings


@pytest.fixture
def world(live_server, celery_processes, e2e_settings, transactional_db) -> World:
    from django.utils import timezone

    from fleets.keys import generate_key, hash_key
    from fleets.models import ServiceKey

    started = timezone.now()
    org, user = make_org_with_user("northwind", "olivia")
    fast_fleet, fast_key = make_fleet(org, "fast-kiosks", poll_interval=harness.FAST_POLL_INTERVAL)
    # Default interval (10 min): these devices stay in whatever state a journey left them in.
    steady_fleet, steady_key = make_fleet(org, "signage")
    service_key = generate_key()
    ServiceKey.objects.create(name="e2e tunnel server", key_hash=hash_key(service_key))
    # pytest-django flushed the database after the previous journey: wait for the worker to sweep
    # this one, so a journey never starts against a stopped or lagging Celery.
    _wait_for_sweep(celery_processes, since=started, timeout=30)
    w = World(
        base_url=live_server.url,
        org=org,
        user=user,
        password=PASSWORD,
        fast_fleet=fast_fleet,
        fast_key=fast_key,
        steady_fleet=steady_fleet,
        steady_key=steady_key,
        tunnel=TunnelServer(live_server.url, service_key),
    )
    yield w
    w.stop_all()
    celery_processes.check_alive()


@pytest.fixture
def page(request, playwright_browser):
    """A fresh browser context per journey; screenshot left behind when the journey fails."""
    context = playwright_browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    # A trace (DOM snapshots, network, console per step) is kept only for a failed journey:
    # `playwright show-trace test-artifacts/traces/<journey>.zip` replays what the browser saw.
    context.tracing.start(snapshots=True, screenshots=False)
    pg = context.new_page()
    console_errors: list[str] = []
    # "Failed to load resource: 404" alone does not say which one: keep the location with it.
    pg.on(
        "console", lambda m: console_errors.append(f"{m.text} [{m.location.get('url')}]") if m.type == "error" else None
    )
    pg.on("pageerror", lambda exc: console_errors.append(str(exc)))
    pg.console_errors = console_errors
    yield pg
    failed = any(getattr(getattr(request.node, f"report_{when}", None), "failed", False) for when in ("setup", "call"))
    if failed:
        try:
            save_screenshot(pg, journey_name(request.node))
        except Exception as exc:  # the page may be gone; the test's own error matters more
            print(f"could not take the failure screenshot: {exc}")
        TRACES.mkdir(parents=True, exist_ok=True)
        trace = TRACES / f"{journey_name(request.node)}.zip"
        context.tracing.stop(path=str(trace))
        _traces_saved.append(trace)
    else:
        context.tracing.stop()
    context.close()


def journey_name(item: pytest.Item) -> str:
    return re.sub(r"^test_", "", item.name)


@pytest.fixture
def shot(request, page):
    """shot() saves this journey's screenshot (test-artifacts/screenshots/<journey>.png)."""

    def take(suffix: str = "") -> Path:
        return save_screenshot(page, journey_name(request.node) + (f"-{suffix}" if suffix else ""))

    return take


@pytest.fixture
def login(page, world):
    def do(username: str | None = None, password: str = PASSWORD, next_path: str = "/devices/") -> None:
        page.goto(f"{world.base_url}/login/?next={next_path}")
        page.get_by_label("Username").fill(username or world.user.username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name=re.compile("log in", re.I)).click()
        expect(page).not_to_have_url(re.compile(r"/login/"))

    return do
