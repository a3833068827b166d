"""Counted target-state fetches (heartbeats) and the live heartbeat store.

The device API calls `record_fetch()` for every counted fetch.

Without Redis (no live-state Redis, devices.live.redis.live_url) a fetch is the database side's
record_heartbeat: one conditional UPDATE for a device whose heartbeat is online, a locked change
with its transition otherwise.

With Redis, a steady-state fetch writes nothing to the database (docs/design.md, Staleness; the way
open-balena-api keeps heartbeats in Redis). Three keys per shard (devices.live.redis: a device's
shard comes from its UUID, `{hb:N}` is the shard's hash tag), all integers in microseconds since the epoch:

- `fs:{hb:N}:online` sorted set: device id -> heartbeat deadline, for devices whose heartbeat is online
  *in the database*. Only the database path adds a member (after its commit), only the sweep
  removes one (before committing the expiry), so membership never claims more than the database
  has: a member is online there (until the write-back heals an exception, see write_back()).
- `fs:{hb:N}:seen` hash: device id -> latest fetch the database does not have yet. The sweep writes
  these back in bulk and deletes an entry only if it still holds the value written.
- `fs:{hb:N}:epoch` marker: a token while the store is trusted, "pending:<token>" while the sweep
  recovers from data loss. A Redis that restarted empty has no marker, and the next sweep knows
  the fetches in `seen` were lost (see ensure_trusted()).

A fetch is one Lua script: member and before the deadline -> record it in `seen` and move the
deadline; done, zero queries beyond the device read the API already made. Otherwise (not a member,
or late: the deadline passed and the sweep has not caught up) the database decides, under the row
lock, and the device joins the set after commit.

This module never imports devices.services: the database side (HeartbeatDatabase) is bound once
by DevicesConfig.ready() with use_database().
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import datetime
from functools import lru_cache
from typing import Protocol

import redis
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError, ResponseError

from devices.live.redis import (
    PENDING,
    client,
    epoch_key,
    from_us,
    online_key,
    seen_key,
    shard_count,
    shard_of,
    to_us,
    uuid_range,
    warn_unavailable,
)
from devices.models import Device, heartbeat_window

logger = logging.getLogger(__name__)

# Device rows per write-back transaction.
WRITE_BACK_BATCH = 1000


class StoreReset(Exception):
    """The store lost its data (Redis restarted empty) while the sweep was relying on it."""


@dataclass
class WriteBack:
    """What the database side did with a batch of fetch times (HeartbeatDatabase.write_back_heartbeats)."""

    updated: int = 0
    # Ids whose heartbeat is online in the database.
    online: set[int] = dc_field(default_factory=set)
    # Ids another transaction holds right now: left alone, for the next run.
    busy: set[int] = dc_field(default_factory=set)


class HeartbeatDatabase(Protocol):
    """The database side of heartbeats (devices.services implements it)."""

    def record_heartbeat(
        self,
        device: Device,
        *,
        at: datetime | None = None,
        detect_gap: bool = True,
        unflushed_fetch: datetime | None = None,
    ) -> Device: ...

    def write_back_heartbeats(self, fetches: Mapping[int, datetime]) -> WriteBack: ...

    def extend_heartbeat_deadlines(self, at: datetime, *, uuids: tuple[str, str | None] | None = None) -> int: ...


_database: HeartbeatDatabase | None = None


def use_database(database: HeartbeatDatabase) -> None:
    """Bind the database side (DevicesConfig.ready() passes devices.services)."""
    global _database
    _database = database


def database() -> HeartbeatDatabase:
    if _database is None:
        raise RuntimeError("the heartbeat store has no database side: is the devices app installed and ready?")
    return _database


# A Lua function that both fetch scripts define (this store's and the device cache's), so a counted
# fetch is decided in one place. Returns the outcome and the previous unflushed fetch (or false):
# 1 = counted (recorded in `seen`, forward only, and the deadline moved), 0 = not a member, 2 = late
# (at or after the known deadline: the database must decide whether it was a gap).
COUNT_FETCH_LUA = """
local function count_fetch(seen, online, id, at_us, new_deadline_us)
  local prev = redis.call('HGET', seen, id)
  local deadline = redis.call('ZSCORE', online, id)
  if not deadline then return 0, prev end
  local at = tonumber(at_us)
  if at >= tonumber(deadline) then return 2, prev end
  if (not prev) or at > tonumber(prev) then
    redis.call('HSET', seen, id, at_us)
    redis.call('ZADD', online, new_deadline_us, id)
  end
  return 1, prev
end
"""

# KEYS: seen, online, epoch. ARGV: device id, fetch time, deadline it gives. Returns
# {outcome of count_fetch, previous unflushed fetch or "", trusted}.
_FETCH = (
    COUNT_FETCH_LUA
    + """
local marker = redis.call('GET', KEYS[3])
local trusted = 0
if marker and string.sub(marker, 1, 8) ~= 'pending:' then trusted = 1 end
local outcome, prev = count_fetch(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
return {outcome, prev or '', trusted}
"""
)

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


def _keys(shard: int) -> list[str]:
    return [seen_key(shard), online_key(shard), epoch_key(shard)]


class HeartbeatStore:
    """The store, shard by shard: every script gets the keys of one shard (one slot of a cluster)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._fetch = client.register_script(_FETCH)
        self._claim = client.register_script(_CLAIM)
        self._written_back = client.register_script(_WRITTEN_BACK)
        self._promote = client.register_script(_PROMOTE)

    # --- web processes ---------------------------------------------------------------------

    def fetch(self, device_id: int, device_uuid: str, at: datetime, deadline: datetime) -> FetchOutcome:
        outcome, prev, trusted = self._fetch(
            keys=_keys(shard_of(device_uuid)), args=[device_id, to_us(at), to_us(deadline)]
        )
        return FetchOutcome(counted=outcome == 1, unflushed=from_us(prev) if prev else None, trusted=trusted == 1)

    def mark_online(self, device_id: int, device_uuid: str, deadline: datetime) -> None:
        self.client.zadd(online_key(shard_of(device_uuid)), {str(device_id): to_us(deadline)})

    def mark_online_many(self, deadlines: Mapping[tuple[int, str], datetime], batch_size: int = 10_000) -> None:
        """mark_online for many (id, uuid) whose heartbeat is online in the database (batches per shard)."""
        by_shard: dict[int, list[tuple[int, datetime]]] = {}
        for (pk, device_uuid), deadline in deadlines.items():
            by_shard.setdefault(shard_of(device_uuid), []).append((pk, deadline))
        for shard, items in by_shard.items():
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                self.client.zadd(online_key(shard), {str(pk): to_us(deadline) for pk, deadline in chunk})

    def online_deadline(self, device_id: int, device_uuid: str) -> datetime | None:
        score = self.client.zscore(online_key(shard_of(device_uuid)), device_id)
        return None if score is None else from_us(int(score))

    def unflushed(self, device_id: int, device_uuid: str) -> datetime | None:
        raw = self.client.hget(seen_key(shard_of(device_uuid)), device_id)
        return None if raw is None else from_us(raw)

    # --- the sweep --------------------------------------------------------------------------

    def ensure_trusted(self, now: datetime, shard: int) -> tuple[str, int | None]:
        """The shard's token; recovers first if Redis lost its data. Returns (token, rows moved or None).

        No marker means Redis restarted empty (or this is its first use): fetches it held for
        write-back are gone, so database deadlines may be too early. Every online deadline is
        extended to at least now + its window before anything expires again. The marker is
        "pending:" during that, so fetches don't trust database deadlines yet, and a crash
        half-way leaves it pending for the next sweep to redo (extending is idempotent). If
        Redis restarts again meanwhile the marker is gone and claim() refuses the old token.
        """
        epoch = epoch_key(shard)
        marker = self.client.get(epoch)
        if marker is not None and not marker.startswith(PENDING.encode()):
            return marker.decode(), None
        if marker is None:
            self.client.set(epoch, PENDING + uuid.uuid4().hex, nx=True)
            marker = self.client.get(epoch)
            if marker is None:
                raise StoreReset("heartbeat store marker vanished during recovery")
            if not marker.startswith(PENDING.encode()):
                return marker.decode(), None  # another sweep finished recovering meanwhile
        pending = marker.decode()
        moved = database().extend_heartbeat_deadlines(now, uuids=uuid_range(shard))
        token = pending.removeprefix(PENDING)
        self._promote(keys=[epoch], args=[pending, token])
        if self.client.get(epoch) != token.encode():
            raise StoreReset("heartbeat store changed during recovery")
        logger.warning(
            "heartbeat store had no trusted marker (first use, or Redis lost its data): "
            "extended %d online heartbeat deadlines to at least %s + their window",
            moved,
            now.isoformat(),
        )
        return token, moved

    def write_back(self, shard: int | None = None, batch_size: int = WRITE_BACK_BATCH) -> int:
        """Fold the shard's `seen` (None: every shard's, one by one) into the database in batches; returns rows updated.

        HSCAN returns every entry present for the whole scan at least once; one that arrives
        during it is either returned or left for the next sweep, and a duplicate is harmless
        (forward-only update, compare-and-delete).
        """
        if shard is None:
            return sum(self.write_back(s, batch_size) for s in range(shard_count()))
        written = 0
        cursor = 0
        while True:
            cursor, entries = self.client.hscan(seen_key(shard), cursor, count=batch_size)
            items = list(entries.items())
            for start in range(0, len(items), batch_size):
                written += self._write_back_batch(shard, items[start : start + batch_size])
            if cursor == 0:
                return written

    def _write_back_batch(self, shard: int, items: list[tuple[bytes, bytes]]) -> int:
        fetches: dict[int, datetime] = {}
        for raw_id, raw_at in items:
            try:
                fetches[int(raw_id)] = from_us(raw_at)
            except (ValueError, OverflowError):
                logger.warning("dropping malformed heartbeat store entry %r=%r", raw_id, raw_at)
        # Commits before returning: an entry is deleted only once the database has it, so a
        # crash in between only means writing it again next time.
        result = database().write_back_heartbeats(fetches)
        settled = [(raw_id, raw_at) for raw_id, raw_at in items if _parse_id(raw_id) not in result.busy]
        # An entry for a device whose heartbeat is not online in the database means the set
        # claimed too much (a database restored under a live Redis, a heartbeat changed by
        # hand): drop it from the set, so its next fetch takes the database path.
        stale_members = [str(pk) for pk in fetches if pk not in result.online and pk not in result.busy]
        args: list[bytes | str | int] = [len(settled)]
        for raw_id, raw_at in settled:
            args += [raw_id, raw_at]
        self._written_back(keys=[seen_key(shard), online_key(shard)], args=[*args, *stale_members])
        return result.updated

    def claim(self, shard: int, ids: list[int], token: str) -> list[int]:
        """Of a locked batch of the shard's due rows, the ids with no pending fetch, removed from the set.

        Raises StoreReset when the marker no longer holds `token` (Redis lost its data since the
        sweep started): expiring on data that is gone would mark live devices Offline.
        """
        try:
            claimed = self._claim(keys=_keys(shard), args=[token, *ids])
        except ResponseError as exc:
            if "FSRESET" in str(exc):
                raise StoreReset(str(exc)) from exc
            raise
        return [int(pk) for pk in claimed]

    def pending_count(self) -> int:
        """Fetches waiting for write-back, over every shard."""
        return sum(self.client.hlen(seen_key(s)) for s in range(shard_count()))

    def reset(self) -> None:
        """Empty and trusted (a fresh installation whose database has no unflushed fetches; tests)."""
        pipe = self.client.pipeline(transaction=False)
        for shard in range(shard_count()):
            # UNLINK frees in the background: a DEL of a million-member set outlasts SOCKET_TIMEOUT.
            # One key per command: a cluster pipeline does not split a multi-key UNLINK by slot.
            pipe.unlink(seen_key(shard))
            pipe.unlink(online_key(shard))
            pipe.set(epoch_key(shard), uuid.uuid4().hex)
        pipe.execute()


def _parse_id(raw: bytes) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


def store() -> HeartbeatStore | None:
    """The live heartbeat store, or None when the database holds heartbeats (no live-state Redis)."""
    redis_client = client()
    return None if redis_client is None else _store_for(redis_client)


@lru_cache(maxsize=8)
def _store_for(redis_client: redis.Redis) -> HeartbeatStore:
    # One store (and one registration of its scripts) per client, that is per process and URL.
    return HeartbeatStore(redis_client)


def record_fetch(device: Device, *, at: datetime | None = None, store_failed: bool = False) -> Device:
    """Count a target-state fetch of `device` (loaded with its fleet). Returns the device, updated.

    Never raises because of Redis: when it is unreachable the fetch takes the database path
    (and a warning is logged). store_failed: the caller's own Redis call for this request just
    failed (devices/api/edge.py), so this does not wait for Redis a second time.
    """
    at = at or timezone.now()
    hb = store()
    if hb is None:
        return database().record_heartbeat(device, at=at)
    window = heartbeat_window(device.effective_poll_interval)
    try:
        if store_failed:
            raise RedisError("the store failed earlier in this request")
        outcome = hb.fetch(device.pk, device.uuid, at, at + window)
    except RedisError as exc:
        warn_unavailable(exc)
        # Fetches Redis held for write-back are out of reach: a deadline that looks passed may
        # not be, so no gap is recorded from what the database alone says.
        return database().record_heartbeat(device, at=at, detect_gap=False)
    if outcome.counted and device.is_active:
        device.last_api_heartbeat_at = at
        device.last_seen_at = at
        device.heartbeat_deadline = at + window
        return device
    device = database().record_heartbeat(device, at=at, detect_gap=outcome.trusted, unflushed_fetch=outcome.unflushed)
    device_id, device_uuid, deadline = device.pk, device.uuid, device.heartbeat_deadline

    def join() -> None:
        # After commit only: a member must be online in the database. If this lands after the
        # sweep expired the device (a very slow process), its deadline is already past, so the
        # next fetch is "late" and goes back to the database, which knows it is offline.
        try:
            hb.mark_online(device_id, device_uuid, deadline)
        except RedisError as exc:
            warn_unavailable(exc)

    transaction.on_commit(join)
    return device
