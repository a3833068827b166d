"""What the heartbeat store and the device cache share: the connection, shards, key names, time, warnings.

Every value kept in Redis that is a moment is an integer in microseconds since the epoch (to_us).

The live state is split into FLEETSTATUS_HEARTBEAT_SHARDS shards. A device's shard is a range of
its UUID's first four hex digits (UUIDs are random, so the prefix is already a uniform hash, and a
range is a plain string comparison in SQL, so the sweep of one shard reads only its due rows).
Every key carries its shard's hash tag (`fs:{hb:7}:online`): a Redis Cluster keeps one shard in one
slot, so each Lua script, which touches the keys of one shard only, runs on one node.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import redis
from django.conf import settings
from redis.cluster import ClusterNode, RedisCluster

logger = logging.getLogger(__name__)

# Seconds a web process waits for Redis before taking the database path: a dead Redis must cost
# a fetch little more than the database write it then makes.
CONNECT_TIMEOUT = 0.5
SOCKET_TIMEOUT = 1.0
# At most one "Redis unavailable" warning per process in this many seconds (fetches are many).
WARN_EVERY = 30.0

# A live-state URL in this scheme names a Redis Cluster by some of its nodes (host:port,host:port...).
CLUSTER_SCHEME = "redis+cluster://"
# Hex digits of the UUID that place a device in a shard (at most 16 ** PREFIX shards).
PREFIX = 4
PENDING = "pending:"
FLEET_GEN = "f"

_EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    # Integer arithmetic: a float timestamp would not round-trip to the microsecond.
    return (moment - _EPOCH_START) // _MICROSECOND


def from_us(value: int | str | bytes) -> datetime:
    return _EPOCH_START + timedelta(microseconds=int(value))


def now_us() -> int:
    """to_us(timezone.now()) without building a datetime: the same clock, floored to the microsecond alike."""
    return time.time_ns() // 1000


# --- Shards and key names ---------------------------------------------------------------------


def shard_count() -> int:
    return int(getattr(settings, "FLEETSTATUS_HEARTBEAT_SHARDS", 16))


def shard_of(uuid: str, shards: int | None = None) -> int:
    """The shard of a device: where its UUID's first hex digits fall among shard_count() equal ranges.

    shards: shard_count(), when the caller already has it."""
    return int(uuid[:PREFIX], 16) * (shard_count() if shards is None else shards) // 16**PREFIX


def uuid_range(shard: int) -> tuple[str, str | None]:
    """(lowest prefix, first prefix of the next shard or None): the shard is lowest <= uuid < next."""

    def start(s: int) -> str:
        return f"{-(-s * 16**PREFIX // shard_count()):0{PREFIX}x}"

    return start(shard), (start(shard + 1) if shard + 1 < shard_count() else None)


def _tag(shard: int) -> str:
    return f"fs:{{hb:{shard}}}:"


# The heartbeat store (devices.live.heartbeats).
def seen_key(shard: int) -> str:
    return _tag(shard) + "seen"


def online_key(shard: int) -> str:
    return _tag(shard) + "online"


def epoch_key(shard: int) -> str:
    return _tag(shard) + "epoch"


# The device cache (devices.live.devcache).
def device_key(uuid: str) -> str:
    return device_key_prefix(shard_of(uuid)) + uuid


def device_key_prefix(shard: int) -> str:
    return _tag(shard) + "dc:d:"


DEVICE_PATTERN = "fs:{hb:*}:dc:d:*"


def fleets_key(shard: int) -> str:
    return _tag(shard) + "dc:fleets"


def gens_key(shard: int) -> str:
    return _tag(shard) + "dc:gen"


# --- The connection --------------------------------------------------------------------------


def live_url() -> str:
    """The Redis of the live state: FLEETSTATUS_LIVE_REDIS_URL, else REDIS_URL ("" = no Redis)."""
    return getattr(settings, "FLEETSTATUS_LIVE_REDIS_URL", "") or settings.REDIS_URL


@lru_cache(maxsize=8)
def client_for(url: str) -> redis.Redis | RedisCluster:
    """One pool per process and URL; redis-py resets it in a forked child (Celery prefork workers)."""
    options = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": SOCKET_TIMEOUT}
    if url.startswith(CLUSTER_SCHEME):
        nodes = []
        for address in url.removeprefix(CLUSTER_SCHEME).split("/")[0].split(","):
            host, _, port = address.strip().rpartition(":")
            nodes.append(ClusterNode(host.strip("[]"), int(port)))
        return RedisCluster(startup_nodes=nodes, **options)
    return redis.Redis.from_url(url, health_check_interval=30, **options)


def client() -> redis.Redis | RedisCluster | None:
    """The client of the live state, or None when the installation runs without Redis."""
    url = live_url()
    return client_for(url) if url else None


_last_warning = 0.0


def warn_unavailable(exc: Exception) -> None:
    """Log that Redis could not be reached, at most once per WARN_EVERY seconds per process."""
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= WARN_EVERY:
        _last_warning = now
        logger.warning("heartbeat store unavailable, fetches take the database path: %s", exc)
