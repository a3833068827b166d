"""Fixtures for fault and soak tests: private PostgreSQL/Redis and the app's real processes.

One PostgreSQL cluster per test session (initdb costs seconds); a database migrated once serves as
a template, so each test gets a fresh copy in milliseconds. Each test gets its own Redis server and
its own app processes, and may stop, kill or restart any of them.

Tests marked `soak` run only when selected (`-m soak`); see README "Reliability tests".
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.reliability.services import (
    AppStack,
    PostgresServer,
    RedisServer,
    ServiceUnavailable,
    app_env,
    make_base_dir,
)

TEMPLATE_DB = "fs_template"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The full soak is deselected (not skipped) unless asked for with `-m soak`: the default run
    # reports no skipped test, and the heavy variant stays one documented command away.
    if "soak" in (config.option.markexpr or ""):
        return
    keep = [item for item in items if not item.get_closest_marker("soak")]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("soak")])
        items[:] = keep


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    if report.when == "call" and report.failed:
        # The processes' own logs are what explains a fault test's failure.
        for stack in getattr(item, "_stacks", []):
            report.sections.append((f"logs of {stack.dir.name}", stack.logs_tail()))
    return report


def _unavailable(exc: Exception) -> None:
    if os.environ.get("FLEETSTATUS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"fault tests need real services: {exc}")
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def reliability_dir() -> Iterator[Path]:
    base = make_base_dir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster(reliability_dir: Path) -> Iterator[PostgresServer]:
    try:
        server = PostgresServer(reliability_dir)
        server.init()
        server.start()
    except ServiceUnavailable as exc:
        _unavailable(exc)
    try:
        server.create_database(TEMPLATE_DB)
        redis_for_migrate = RedisServer(reliability_dir / "migrate")
        env = app_env(server, redis_for_migrate, TEMPLATE_DB)
        AppStack(dir=reliability_dir, env=env).manage("migrate", "--noinput")
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server(reliability_dir: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer(reliability_dir / f"redis-{uuid.uuid4().hex[:8]}")
    except ServiceUnavailable as exc:
        _unavailable(exc)
    server.start()
    yield server
    server.close()


@pytest.fixture
def make_stack(
    request: pytest.FixtureRequest, pg_cluster: PostgresServer, redis_server: RedisServer, reliability_dir: Path
) -> Iterator[Callable[..., AppStack]]:
    """make_stack(**env) -> AppStack on a fresh database copied from the migrated template."""
    made: list[tuple[AppStack, str]] = []
    request.node._stacks = []

    def make(**extra_env: str) -> AppStack:
        dbname = f"fs_{uuid.uuid4().hex[:10]}"
        pg_cluster.create_database(dbname, template=TEMPLATE_DB)
        stack_dir = reliability_dir / dbname
        stack_dir.mkdir()
        stack = AppStack(
            dir=stack_dir, env=app_env(pg_cluster, redis_server, dbname, **extra_env), pg=pg_cluster, dbname=dbname
        )
        made.append((stack, dbname))
        request.node._stacks.append(stack)
        return stack

    yield make
    keep = os.environ.get("FLEETSTATUS_KEEP_LOGS")
    for stack, dbname in made:
        stack.stop_all()
        if keep:
            # Whole process logs for post-mortems (the failure report shows only their tails).
            target = Path(keep) / f"{request.node.name}-{dbname}"
            target.mkdir(parents=True, exist_ok=True)
            for log in stack.dir.glob("*.log"):
                shutil.copy(log, target / log.name)
        if not pg_cluster.running:
            pg_cluster.start()
        pg_cluster.drop_database(dbname)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    from tests.reliability import figures

    if figures.FIGURES:
        terminalreporter.section("reliability figures")
        for line in figures.lines():
            terminalreporter.write_line(line)
