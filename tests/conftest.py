from __future__ import annotations

import secrets

import pytest
from django.contrib.auth import get_user_model

from devices import services
from fleets.models import Fleet, Membership, Organization, Tier

PASSWORD = "correct horse battery staple"


@pytest.fixture
def org(db) -> Organization:
    return Organization.objects.create(slug="northwind", name="Northwind", tier=Tier.PAID)


@pytest.fixture
def other_org(db) -> Organization:
    return Organization.objects.create(slug="contoso", name="Contoso", tier=Tier.PAID)


def _fleet(org: Organization, slug: str, **kwargs) -> tuple[Fleet, str]:
    fleet = Fleet(organization=org, slug=slug, name=slug.title(), device_type="raspberrypi4-64", **kwargs)
    key = fleet.issue_provisioning_key()
    fleet.save()
    return fleet, key


@pytest.fixture
def fleet_and_key(org) -> tuple[Fleet, str]:
    return _fleet(org, "kiosks")


@pytest.fixture
def fleet(fleet_and_key) -> Fleet:
    return fleet_and_key[0]


@pytest.fixture
def other_fleet(other_org) -> Fleet:
    return _fleet(other_org, "robots")[0]


@pytest.fixture
def make_fleet():
    return _fleet


@pytest.fixture
def make_device(fleet):
    """make_device(fleet=None, **signals) -> Device, created and changed through devices.services."""

    def make(target_fleet: Fleet | None = None, *, name: str = "", at=None, **signals):
        device, api_key = services.create_device(target_fleet or fleet, secrets.token_hex(16), name=name, at=at)
        device.api_key = api_key  # plain key, for API tests
        if signals:
            device = services.update_device(device, signals, reason="test setup", at=at)
            device.api_key = api_key
        return device

    return make


def _user(org: Organization, username: str, role: str = Membership.Role.OWNER):
    user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    Membership.objects.create(user=user, organization=org, role=role)
    return user


@pytest.fixture
def owner(org):
    return _user(org, "olivia")


@pytest.fixture
def other_user(other_org):
    return _user(other_org, "mallory")


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def other_client(other_user):
    from django.test import Client

    c = Client()
    c.force_login(other_user)
    return c


@pytest.fixture
def anon_client():
    from django.test import Client

    return Client()


@pytest.fixture
def staff_client(db):
    from django.test import Client

    user = get_user_model().objects.create_superuser(username="root", password=PASSWORD, email="root@example.com")
    c = Client()
    c.force_login(user)
    c.user = user
    return c


@pytest.fixture(autouse=True)
def _fresh_heartbeat_store():
    """With REDIS_URL, every test starts with an empty, trusted heartbeat store (devices/live/heartbeats.py)
    and an empty device cache (devices/live/devcache.py).

    Device ids repeat across tests (SQLite reuses rolled-back ids, each run recreates the database),
    and a leftover member of the store's online set would let a fetch skip the database.
    """
    from django.conf import settings

    if settings.REDIS_URL:
        from redis.exceptions import RedisError

        from devices.live import devcache, heartbeats

        try:
            heartbeats.store().reset()
            devcache.reset()
        except RedisError:
            pass  # tests that need Redis are marked `redis` and fail or skip on their own
    yield


# --- Service markers ---------------------------------------------------------------------------
# Tests marked `postgres` need row locks and real concurrency; tests marked `redis` need a Redis
# server. Locally without DATABASE_URL/REDIS_URL they are skipped with a reason; in CI
# (FLEETSTATUS_REQUIRE_SERVICES=1) a missing service is a failure, never a silent skip.


def pytest_runtest_setup(item):
    import os

    from django.conf import settings

    required = os.environ.get("FLEETSTATUS_REQUIRE_SERVICES") == "1"
    missing = []
    if item.get_closest_marker("postgres") and "postgresql" not in settings.DATABASES["default"]["ENGINE"]:
        missing.append("PostgreSQL (set DATABASE_URL)")
    if item.get_closest_marker("redis") and not settings.REDIS_URL:
        missing.append("Redis (set REDIS_URL)")
    if missing:
        if required:
            pytest.fail(f"needs {', '.join(missing)} but FLEETSTATUS_REQUIRE_SERVICES=1")
        pytest.skip(f"needs {', '.join(missing)}")


# --- Kept device counts (fleets/counts.py) --------------------------------------------------------------

_DB_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback"}


def _used_db(item) -> bool:
    return bool(item.get_closest_marker("django_db") or _DB_FIXTURES & set(getattr(item, "fixturenames", ())))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After every test that used the database (and passed): the counts the triggers keep equal a
    GROUP BY over the devices, and the search rows (devices/search.py) copy the devices, whatever
    path the test changed devices through."""
    result = yield
    if _used_db(item):
        from django.db import connection

        from devices import search
        from fleets import counts

        if connection.connection is not None and connection.is_usable():
            if connection.vendor == "postgresql" and connection.in_atomic_block:
                # Planner switches a test turned off with SET LOCAL (the index tests) would still hold for
                # the check's scans and make them crawl; back to the defaults for the rest of this transaction.
                with connection.cursor() as cur:
                    cur.execute(
                        "SELECT set_config(name, reset_val, true) FROM pg_settings"
                        " WHERE name LIKE 'enable\\_%' AND setting <> reset_val"
                    )
            wrong = counts.mismatches()
            assert not wrong, (
                f"kept device counts differ from the devices: {{(org, fleet, status): (kept, real)}} {wrong}"
            )
            stale = search.mismatches()
            assert not stale, f"the search rows of these devices differ from the devices: {stale}"
    return result


# --- Dead rows (PostgreSQL) ------------------------------------------------------------------------
# The CI server runs without autovacuum: every row a test writes and rolls back stays behind as a
# dead row, so the tables grow through the run and every later scan of them (the check above scans
# all devices after each test) reads them all again. After a test leaves many, the tables it left
# empty are truncated, as the flush after a transactional test does. Not VACUUM: that would record
# statistics no fresh table has and change the plans the index tests check.

_DEAD_ROWS_TO_RECLAIM = 2000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    # Everything is torn down here (the test's transaction rolled back), except for the last test:
    # then the test database itself is gone.
    if nextitem is not None and _used_db(item):
        _reclaim_dead_rows(item.config)
    return result


def _reclaim_dead_rows(config) -> None:
    from django.db import connection
    from pytest_django.plugin import blocking_manager_key

    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return
    with config.stash[blocking_manager_key].unblock():
        if connection.connection is None or not connection.is_usable():
            return  # a test that broke or closed the connection; a later test reclaims
        _truncate_if_empty(connection)


def _truncate_if_empty(connection) -> None:
    from django.db import OperationalError, transaction

    with connection.cursor() as cur:
        # The statistics lag the writes by a second or so: a table missed now is caught after a later test.
        cur.execute(
            """WITH RECURSIVE tables(oid) AS (
                   SELECT relid FROM pg_stat_user_tables WHERE schemaname = 'public' AND n_dead_tup > %s
                   UNION SELECT c.conrelid FROM pg_constraint c JOIN tables t ON c.confrelid = t.oid WHERE c.contype = 'f'
               ) SELECT oid::regclass::text FROM tables""",
            [_DEAD_ROWS_TO_RECLAIM],
        )
        # With every table that references them: TRUNCATE takes those along or refuses.
        tables = [name for (name,) in cur.fetchall()]
        if not tables:
            return
        try:
            with transaction.atomic(using=connection.alias):
                # A process a test left stopping must not hold up the run; nor can it write in between.
                cur.execute("SET LOCAL lock_timeout = '2s'")
                cur.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
                cur.execute(" UNION ALL ".join(f"(SELECT 1 FROM {table} LIMIT 1)" for table in tables))
                if not cur.fetchall():
                    cur.execute(f"TRUNCATE {', '.join(tables)}")
        except OperationalError:
            pass  # the lock timed out: a later test tries again


@pytest.fixture
def receiver():
    """A real HTTP receiver on 127.0.0.1 that records what notification channels POST to it."""
    from notifications.receiver import Receiver

    r = Receiver().start()
    yield r
    r.stop()
