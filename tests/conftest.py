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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After every test that used the database (and passed): the counts the triggers keep equal a
    GROUP BY over the devices, and the search rows (devices/search.py) copy the devices, whatever
    path the test changed devices through."""
    result = yield
    if item.get_closest_marker("django_db") or _DB_FIXTURES & set(getattr(item, "fixturenames", ())):
        from django.db import connection

        from devices import search
        from fleets import counts

        if connection.connection is not None and connection.is_usable():
            wrong = counts.mismatches()
            assert not wrong, (
                f"kept device counts differ from the devices: {{(org, fleet, status): (kept, real)}} {wrong}"
            )
            stale = search.mismatches()
            assert not stale, f"the search rows of these devices differ from the devices: {stale}"
    return result


@pytest.fixture
def receiver():
    """A real HTTP receiver on 127.0.0.1 that records what notification channels POST to it."""
    from notifications.receiver import Receiver

    r = Receiver().start()
    yield r
    r.stop()
