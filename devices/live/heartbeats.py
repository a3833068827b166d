"""Counted target-state fetches (heartbeats) and the live heartbeat store.

The device API calls `record_fetch()` for every counted fetch.

Without Redis (no REDIS_URL) a fetch is services.record_heartbeat: one conditional UPDATE for a
device whose heartbeat is online, a locked change with its transition otherwise.

With Redis, a steady-state fetch writes nothing to the database (DESIGN.md §5, the way
open-balena-api keeps heartbeats in Redis). Three keys, all integers in microseconds since the epoch:

- `fs:hb:online` sorted set: device id -> heartbeat deadline, for devices whose heartbeat is online
  *in the database*. Only the database path adds a member (after its commit), only the sweep
  removes one (before committing the expiry), so membership never claims more than the database
  has: a member is online there (until the write-back heals an exception, see write_back()).
- `fs:hb:seen` hash: device id -> latest fetch the database does not have yet. The sweep writes
  these back in bulk and deletes an entry only if it still holds the value written.
- `fs:hb:epoch` marker: a token while the store is trusted, "pending:<token>" while the sweep
  recovers from data loss. A Redis that restarted empty has no marker, and the next sweep knows
  the fetches in `seen` were lost (see ensure_trusted()).

A fetch is one Lua script: member and before the deadline -> record it in `seen` and move the
deadline; done, zero queries beyond the device read the API already made. Otherwise (not a member,
or late: the deadline passed and the sweep has not caught up) the database decides, under the row
lock, and the device joins the set after commit.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError, ResponseError

from devices import services
from devices.models import Device, heartbeat_window

logger = logging.getLogger(__name__)

SEEN = "fs:hb:seen"
ONLINE = "fs:hb:online"
EPOCH = "fs:hb:epoch"
PENDING = "pending:"

_EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Seconds a web process waits for Redis before taking the database path: a dead Redis must cost
# a fetch little more than the database write it then makes.
CONNECT_TIMEOUT = 0.5
SOCKET_TIMEOUT = 1.0
# At most one "Redis unavailable" warning per process in this many seconds (fetches are many).
WARN_EVERY = 30.0


class StoreReset(Exception):
    """The store lost its data (Redis restarted empty) while the sweep was relying on it."""


def to_us(moment: datetime) -> int:
    # Integer arithmetic: a float timestamp would not round-trip to the microsecond.
    return (moment - _EPOCH_START) // _MICROSECOND


def from_us(value: int | str | bytes) -> datetime:
    return _EPOCH_START + timedelta(microseconds=int(value))


# KEYS: seen, online, epoch. ARGV: device id, fetch time, deadline it gives. Returns
# {outcome, previous unflushed fetch or "", trusted}: outcome 1 = counted here, 0 = not a member,
# 2 = late (at or after the known deadline: the database must decide whether it was a gap).
_FETCH = """
local prev = redis.call('HGET', KEYS[1], ARGV[1])
local marker = redis.call('GET', KEYS[3])
local trusted = 0
if marker and string.sub(marker, 1, 8) ~= 'pending:' then trusted = 1 end
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not deadline then return {0, prev or '', trusted} end
local at = tonumber(ARGV[2])
if at >= tonumber(deadline) then return {2, prev or '', trusted} end
if (not prev) or at > tonumber(prev) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return {1, prev or '', trusted}
"""

# KEYS: seen, online, epoch. ARGV: token, then the ids of a locked batch of due rows. Returns the
# ids that may expire (no fetch pending in `seen`) and removes them from `online` in the same
# atomic step, so a fetch either lands before (and this skips the device) or after (and finds no
# member, so it goes to the database and waits for our row lock).
_CLAIM = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('FSRESET heartbeat store lost its data')
end
local claimed = {}
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
    redis.call('ZREM', KEYS[2], ARGV[i])
    claimed[#claimed + 1] = ARGV[i]
  end
end
return claimed
"""

# KEYS: seen, online. ARGV: n, then n (id, value) pairs to delete where unchanged, then ids to drop
# from `online`. A fetch that arrived during the write-back changed its entry and keeps it.
_WRITTEN_BACK = """
local n = tonumber(ARGV[1])
local deleted = 0
for i = 2, 2 * n, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    deleted = deleted + 1
  end
end
for i = 2 * n + 2, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
end
return deleted
"""

# KEYS: epoch. ARGV: expected value, new value.
_PROMOTE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class FetchOutcome:
    counted: bool
    unflushed: datetime | None
    trusted: bool


class HeartbeatStore:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._fetch = client.register_script(_FETCH)
        self._claim = client.register_script(_CLAIM)
        self._written_back = client.register_script(_WRITTEN_BACK)
        self._promote = client.register_script(_PROMOTE)

    # --- web processes ---------------------------------------------------------------------

    def fetch(self, device_id: int, at: datetime, deadline: datetime) -> FetchOutcome:
        outcome, prev, trusted = self._fetch(keys=[SEEN, ONLINE, EPOCH], args=[device_id, to_us(at), to_us(deadline)])
        return FetchOutcome(counted=outcome == 1, unflushed=from_us(prev) if prev else None, trusted=trusted == 1)

    def mark_online(self, device_id: int, deadline: datetime) -> None:
        self.client.zadd(ONLINE, {str(device_id): to_us(deadline)})

    def mark_online_many(self, deadlines: dict[int, datetime], batch_size: int = 10_000) -> None:
        """mark_online for many devices whose heartbeat is online in the database (pipelined batches)."""
        items = list(deadlines.items())
        for start in range(0, len(items), batch_size):
            self.client.zadd(ONLINE, {str(pk): to_us(deadline) for pk, deadline in items[start : start + batch_size]})

    # --- the sweep --------------------------------------------------------------------------

    def ensure_trusted(self, now: datetime) -> tuple[str, int | None]:
        """The store's token; recovers first if Redis lost its data. Returns (token, rows moved or None).

        No marker means Redis restarted empty (or this is its first use): fetches it held for
        write-back are gone, so database deadlines may be too early. Every online deadline is
        extended to at least now + its window before anything expires again. The marker is
        "pending:" during that, so fetches don't trust database deadlines yet, and a crash
        half-way leaves it pending for the next sweep to redo (extending is idempotent). If
        Redis restarts again meanwhile the marker is gone and claim() refuses the old token.
        """
        marker = self.client.get(EPOCH)
        if marker is not None and not marker.startswith(PENDING.encode()):
            return marker.decode(), None
        if marker is None:
            self.client.set(EPOCH, PENDING + uuid.uuid4().hex, nx=True)
            marker = self.client.get(EPOCH)
            if marker is None:
                raise StoreReset("heartbeat store marker vanished during recovery")
            if not marker.startswith(PENDING.encode()):
                return marker.decode(), None  # another sweep finished recovering meanwhile
        pending = marker.decode()
        moved = services.extend_heartbeat_deadlines(now)
        token = pending.removeprefix(PENDING)
        self._promote(keys=[EPOCH], args=[pending, token])
        if self.client.get(EPOCH) != token.encode():
            raise StoreReset("heartbeat store changed during recovery")
        logger.warning(
            "heartbeat store had no trusted marker (first use, or Redis lost its data): "
            "extended %d online heartbeat deadlines to at least %s + their window",
            moved,
            now.isoformat(),
        )
        return token, moved

    def write_back(self, batch_size: int = services.BATCH_SIZE) -> int:
        """Fold `seen` into the database in batches; returns rows updated.

        HSCAN returns every entry present for the whole scan at least once; one that arrives
        during it is either returned or left for the next sweep, and a duplicate is harmless
        (forward-only update, compare-and-delete).
        """
        written = 0
        cursor = 0
        while True:
            cursor, entries = self.client.hscan(SEEN, cursor, count=batch_size)
            items = list(entries.items())
            for start in range(0, len(items), batch_size):
                written += self._write_back_batch(items[start : start + batch_size])
            if cursor == 0:
                return written

    def _write_back_batch(self, items: list[tuple[bytes, bytes]]) -> int:
        fetches: dict[int, datetime] = {}
        for raw_id, raw_at in items:
            try:
                fetches[int(raw_id)] = from_us(raw_at)
            except (ValueError, OverflowError):
                logger.warning("dropping malformed heartbeat store entry %r=%r", raw_id, raw_at)
        # Commits before returning: an entry is deleted only once the database has it, so a
        # crash in between only means writing it again next time.
        result = services.write_back_heartbeats(fetches)
        settled = [(raw_id, raw_at) for raw_id, raw_at in items if _parse_id(raw_id) not in result.busy]
        # An entry for a device whose heartbeat is not online in the database means the set
        # claimed too much (a database restored under a live Redis, a heartbeat changed by
        # hand): drop it from the set, so its next fetch takes the database path.
        stale_members = [str(pk) for pk in fetches if pk not in result.online and pk not in result.busy]
        args: list[bytes | str | int] = [len(settled)]
        for raw_id, raw_at in settled:
            args += [raw_id, raw_at]
        self._written_back(keys=[SEEN, ONLINE], args=[*args, *stale_members])
        return result.updated

    def claim(self, ids: list[int], token: str) -> list[int]:
        """Of a locked batch of due rows, the ids with no pending fetch, removed from the set.

        Raises StoreReset when the marker no longer holds `token` (Redis lost its data since the
        sweep started): expiring on data that is gone would mark live devices Offline.
        """
        try:
            claimed = self._claim(keys=[SEEN, ONLINE, EPOCH], args=[token, *ids])
        except ResponseError as exc:
            if "FSRESET" in str(exc):
                raise StoreReset(str(exc)) from exc
            raise
        return [int(pk) for pk in claimed]

    def reset(self) -> None:
        """Empty and trusted (a fresh installation whose database has no unflushed fetches; tests)."""
        pipe = self.client.pipeline()
        # UNLINK frees in the background: a DEL of a million-member set outlasts SOCKET_TIMEOUT.
        pipe.unlink(SEEN, ONLINE)
        pipe.set(EPOCH, uuid.uuid4().hex)
        pipe.execute()


def _parse_id(raw: bytes) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


@lru_cache(maxsize=8)
def _store_for(url: str) -> HeartbeatStore:
    # One pool per process and URL; redis-py resets it in a forked child (Celery prefork workers).
    client = redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT, health_check_interval=30
    )
    return HeartbeatStore(client)


def store() -> HeartbeatStore | None:
    """The live heartbeat store, or None when the database holds heartbeats (no REDIS_URL)."""
    return _store_for(settings.REDIS_URL) if settings.REDIS_URL else None


_last_warning = 0.0


def _warn_unavailable(exc: Exception) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= WARN_EVERY:
        _last_warning = now
        logger.warning("heartbeat store unavailable, fetches take the database path: %s", exc)


def record_fetch(device: Device, *, at: datetime | None = None, store_failed: bool = False) -> Device:
    """Count a target-state fetch of `device` (loaded with its fleet). Returns the device, updated.

    Never raises because of Redis: when it is unreachable the fetch takes the database path
    (and a warning is logged). store_failed: the caller's own Redis call for this request just
    failed (devices/fastpath.py), so this does not wait for Redis a second time.
    """
    at = at or timezone.now()
    hb = store()
    if hb is None:
        return services.record_heartbeat(device, at=at)
    window = heartbeat_window(device.effective_poll_interval)
    try:
        if store_failed:
            raise RedisError("the store failed earlier in this request")
        outcome = hb.fetch(device.pk, at, at + window)
    except RedisError as exc:
        _warn_unavailable(exc)
        # Fetches Redis held for write-back are out of reach: a deadline that looks passed may
        # not be, so no gap is recorded from what the database alone says.
        return services.record_heartbeat(device, at=at, detect_gap=False)
    if outcome.counted and device.is_active:
        device.last_api_heartbeat_at = at
        device.last_seen_at = at
        device.heartbeat_deadline = at + window
        return device
    device = services.record_heartbeat(device, at=at, detect_gap=outcome.trusted, unflushed_fetch=outcome.unflushed)
    device_id, deadline = device.pk, device.heartbeat_deadline

    def join() -> None:
        # After commit only: a member must be online in the database. If this lands after the
        # sweep expired the device (a very slow process), its deadline is already past, so the
        # next fetch is "late" and goes back to the database, which knows it is offline.
        try:
            hb.mark_online(device_id, deadline)
        except RedisError as exc:
            _warn_unavailable(exc)

    transaction.on_commit(join)
    return device
