"""The live heartbeat store (devices.heartbeats, Redis) brought to its steady state.

Steady state is what the store holds once every polling device has fetched at least once: each
device whose heartbeat is online in the database is a member of the online set with a deadline in
the future (its last fetch within its polling interval, plus the 1.5x tolerance), no fetch is
waiting for write-back, the store is trusted, and every polling device's fetch configuration is in
the device cache (devices/live/devcache.py). Fetching 880,000 devices once over HTTP would take longer
than the benchmark itself, so this calls the application's own bulk functions (nothing here
writes a Redis key itself): HeartbeatStore.reset() and mark_online_many() (what a database-path
fetch does after its commit, for many devices) and devcache.prime() (what a database-path fetch
fills, for many devices, under the same generation guard).
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.utils import timezone

from benchmarks.report import NotAvailable
from devices.models import Device, effective_poll_interval, heartbeat_window
from devices.status import HeartbeatState

BATCH = 10_000


def store():
    try:
        from devices.live import heartbeats
    except ImportError as exc:
        raise NotAvailable("devices.heartbeats (the live heartbeat store) is missing") from exc
    if not hasattr(heartbeats, "store"):
        raise NotAvailable("devices.heartbeats has no Redis store yet")
    hb = heartbeats.store()
    if hb is None:
        raise NotAvailable("REDIS_URL is not set")
    return heartbeats, hb


def bulk_client() -> redis.Redis:
    """A client without the store's short timeouts (those suit a web request, not a bulk load)."""
    return redis.Redis.from_url(settings.REDIS_URL)


def warm_heartbeats(now: datetime | None = None, *, log=print) -> int:
    """Reset the store to empty-and-trusted, then add every online device with a fresh deadline."""
    _, hb = store()
    now = now or timezone.now()
    t0 = time.perf_counter()
    hb.reset()
    rng = random.Random(5)
    rows = (
        Device.objects.filter(api_heartbeat_state=HeartbeatState.ONLINE, is_active=True, is_frozen=False)
        .order_by()
        .values_list("pk", "uuid", "poll_interval", "fleet__poll_interval")
    )
    windows: dict[int, tuple[float, timedelta]] = {}
    deadlines: dict[tuple[int, str], datetime] = {}
    for pk, uuid, own, fleet_interval in rows.iterator(chunk_size=20_000):
        interval = effective_poll_interval(own, fleet_interval)
        if interval not in windows:
            windows[interval] = (float(interval), heartbeat_window(interval))
        seconds, window = windows[interval]
        # As if the device's latest fetch happened at a random moment of its last interval.
        deadlines[pk, uuid] = now - timedelta(seconds=rng.random() * seconds) + window
    hb.mark_online_many(deadlines)
    n = len(deadlines)
    log(f"   heartbeat store warmed: {n:,} online devices, deadlines in the future ({time.perf_counter() - t0:.1f} s)")
    return n


def warm_device_cache(now: datetime | None = None, *, log=print) -> int:
    """Every active device's fetch configuration in the device cache, as its first database-path fetch leaves it."""
    try:
        from devices.live import devcache
    except ImportError:
        return 0
    t0 = time.perf_counter()
    n = devcache.prime(Device.objects.all(), now or timezone.now())
    log(f"   device cache primed: {n:,} active devices ({time.perf_counter() - t0:.1f} s)")
    return n


def rearm(ids: list[int], now: datetime | None = None) -> None:
    """Between two sweeps of P6: the expired devices back in the online set, no fetch pending."""
    heartbeats, _ = store()
    deadline = heartbeats.to_us((now or timezone.now()) + timedelta(hours=1))
    by_shard: dict[int, list[int]] = {}
    for pk, uuid in Device.objects.filter(pk__in=ids).values_list("pk", "uuid").iterator(chunk_size=BATCH):
        by_shard.setdefault(heartbeats.shard_of(uuid), []).append(pk)
    pipe = bulk_client().pipeline(transaction=False)
    for shard in range(heartbeats.shard_count()):
        pipe.delete(heartbeats.seen_key(shard))
    for shard, members in by_shard.items():
        for start in range(0, len(members), BATCH):
            pipe.zadd(heartbeats.online_key(shard), {str(pk): deadline for pk in members[start : start + BATCH]})
    pipe.execute()


def flush_store(log=print) -> None:
    """Forget every live heartbeat (after a seed: the store must not claim devices of older data)."""
    try:
        store()
    except NotAvailable:
        return
    client = bulk_client()
    client.flushdb()
    log(f"   flushed Redis DB {client.connection_pool.connection_kwargs.get('db', 0)} (the bench's own)")
