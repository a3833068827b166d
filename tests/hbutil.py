"""Shared helpers for the heartbeat and sweep tests (tests/test_heartbeats.py, tests/test_sweep.py)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest
from django.test import TestCase

from devices.live import heartbeats
from devices.models import Device, StatusTransition

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
DEFAULT_WINDOW = timedelta(seconds=600 * 1.5)


def reload(device: Device | int) -> Device:
    """The device as the API reads it: one query, with its fleet."""
    pk = device.pk if isinstance(device, Device) else device
    return Device.objects.select_related("fleet").get(pk=pk)


def fetch(device: Device | int, at: datetime) -> Device:
    """A counted fetch as the API makes it: a fresh read, then record_fetch.

    Tests run inside a transaction that never commits, so the store's after-commit step (joining
    the online set) is run explicitly when the block ends, as a real commit would.
    """
    with TestCase.captureOnCommitCallbacks(execute=True):
        return heartbeats.record_fetch(reload(device), at=at)


def history(device: Device | int) -> list[tuple[str, str, datetime]]:
    pk = device.pk if isinstance(device, Device) else device
    return list(
        StatusTransition.objects.filter(device_id=pk).order_by("at", "id").values_list("from_status", "to_status", "at")
    )


def closed_port_url() -> str:
    """A redis:// URL nothing listens on (a port we bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def no_redis(settings):
    """The database heartbeat path, even when the test run has REDIS_URL."""
    settings.REDIS_URL = ""


@pytest.fixture(params=["database", pytest.param("redis", marks=pytest.mark.redis)])
def store_mode(request, settings) -> str:
    """Runs a test once per heartbeat store: the database path, and Redis (needs REDIS_URL)."""
    if request.param == "database":
        settings.REDIS_URL = ""
    return request.param


@pytest.fixture
def hb(settings) -> heartbeats.HeartbeatStore:
    """The Redis store (tests marked `redis`); conftest already emptied it."""
    store = heartbeats.store()
    assert store is not None
    return store
