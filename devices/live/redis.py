"""What the heartbeat store and the device cache share: the connection, key names, time encoding, warnings.

Every value kept in Redis that is a moment is an integer in microseconds since the epoch (to_us).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

# Seconds a web process waits for Redis before taking the database path: a dead Redis must cost
# a fetch little more than the database write it then makes.
CONNECT_TIMEOUT = 0.5
SOCKET_TIMEOUT = 1.0
# At most one "Redis unavailable" warning per process in this many seconds (fetches are many).
WARN_EVERY = 30.0

# The heartbeat store (devices.live.heartbeats).
SEEN = "fs:hb:seen"
ONLINE = "fs:hb:online"
EPOCH = "fs:hb:epoch"
PENDING = "pending:"

# The device cache (devices.live.devcache).
DEVICE_PREFIX = "fs:dc:d:"
FLEETS = "fs:dc:fleets"
GENS = "fs:dc:gen"
FLEET_GEN = "f"

_EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    # Integer arithmetic: a float timestamp would not round-trip to the microsecond.
    return (moment - _EPOCH_START) // _MICROSECOND


def from_us(value: int | str | bytes) -> datetime:
    return _EPOCH_START + timedelta(microseconds=int(value))


@lru_cache(maxsize=8)
def client_for(url: str) -> redis.Redis:
    """One pool per process and URL; redis-py resets it in a forked child (Celery prefork workers)."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT, health_check_interval=30
    )


def client() -> redis.Redis | None:
    """The client of REDIS_URL, or None when the installation runs without Redis."""
    return client_for(settings.REDIS_URL) if settings.REDIS_URL else None


_last_warning = 0.0


def warn_unavailable(exc: Exception) -> None:
    """Log that Redis could not be reached, at most once per WARN_EVERY seconds per process."""
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= WARN_EVERY:
        _last_warning = now
        logger.warning("heartbeat store unavailable, fetches take the database path: %s", exc)
