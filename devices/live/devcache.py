"""What a steady-state target-state fetch needs, cached in Redis next to the heartbeat store.

A device that polls on time costs, with this cache, ONE Redis round trip and no database query:
one Lua script reads the device's cached entry and its fleet's, checks the key hash, and counts
the fetch exactly as the heartbeat store does (devices.live.heartbeats, COUNT_FETCH_LUA: a member
of the online set, before its deadline, has its fetch recorded in `seen` and its deadline moved).
Everything else (no entry, an entry that does not match the key, a device not in the online set
or late) answers "not here", and the caller takes the database path of devices/api/views.py,
which fills the entry afterwards.

Keys (the live-state Redis, devices.live.redis: each in its device's shard, `{hb:N}`, so that the
fetch script touches one shard's keys only, next to the same shard's heartbeat keys):

- `fs:{hb:N}:dc:d:<uuid>` string, with a TTL (FLEETSTATUS_DEVICE_CACHE_TTL, ±10 %): tab-separated
  `id, api_key_hash, fleet_id, poll_interval override or "", cloudlink override "1"/"0"/"", frozen
  "1"/"0", name` (the name last: it may hold a tab). Only active devices get one.
- `fs:{hb:N}:dc:fleets` hash (one copy per shard): fleet id -> `poll_interval or "", cloudlink "1"/"0", filled at (us)`; an
  entry older than the TTL counts as missing (a hash field has no TTL of its own in Redis 7.0).
- `fs:{hb:N}:dc:gen` hash: generation counters, `d:<first 3 hex digits of the uuid>` per bucket of
  devices and `f` for all fleets (of that shard's copy).

Invalidation (devices.services calls forget_devices()/forget_fleets() wherever a cached field
changes, and a post_delete signal does on deletion) bumps the generation and deletes the entry,
both at once, immediately and again after the transaction commits. The fill is the race guard:
its caller reads the generations BEFORE reading the database (the fetch script returns them with
a miss), and the fill script writes only if they are unchanged. So a fill built from a row read
before a change either lands before the after-commit invalidation (which deletes it) or after it
(and is refused): a stale entry cannot survive a committed change. If Redis is unreachable during
an invalidation the entry can outlive the change until its TTL; that is logged as an error.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from string import Template
from typing import NamedTuple

import redis
from django.conf import settings
from django.core.signals import setting_changed
from django.db import connection, transaction
from redis.exceptions import NoScriptError, RedisError

from devices.live.heartbeats import COUNT_FETCH_LUA
from devices.live.redis import (
    DEVICE_PATTERN,
    FLEET_GEN,
    client_for,
    device_key,
    device_key_prefix,
    fleets_key,
    gens_key,
    live_url,
    online_key,
    seen_key,
    shard_count,
    shard_of,
    to_us,
    warn_unavailable,
)
from devices.models import Device, effective_cloudlink

logger = logging.getLogger(__name__)

# The device and fleet fields an entry is made of: a change of any of them must invalidate.
DEVICE_FIELDS = frozenset(
    {
        "name",
        "api_key_hash",
        "fleet",
        "fleet_id",
        "poll_interval",
        "cloudlink_enabled",
        "is_active",
        "is_frozen",
        "uuid",
    }
)
FLEET_FIELDS = frozenset({"poll_interval", "cloudlink_enabled"})

# Outcomes of the fetch script.
MISS = 0  # no usable entry: the database decides (the generations come with it)
COUNTED = 1  # entry matched, heartbeat online and on time: fetch recorded, answer from the entry
NOT_COUNTED = 2  # entry matched, but not in the online set or late: the database decides
KEY_MISMATCH = 3  # the entry's key hash is not the one presented: the database path answers 401
FROZEN = 4  # entry matched and the device is frozen: 304, the fetch does not count

# Where the fast path leaves the generations of a miss for the view's fill (request.META).
GENERATIONS_META = "fleetstatus.devcache_generations"
# Set there when the fast path's Redis call failed: the view does not wait for Redis again.
STORE_FAILED_META = "fleetstatus.store_failed"

INVALIDATE_BATCH = 1000
FILL_BATCH = 1000

# KEYS: device entry, fleets, gens, seen, online. ARGV: key hash, fetch time (us), generation field.
# The settings it depends on (@default_interval, @min_interval, @window: microseconds of deadline per
# second of interval, @max_age: of a fleet entry, in us) are written into the source once per
# configuration (_lookup_source), so a fetch sends only what is its own.
# The interval is devices.models.effective_poll_interval over the two cached halves: they are kept
# apart so that a fleet edit invalidates one hash field, not every entry of its devices.
# Returns one string, tab-separated: outcome COUNTED or FROZEN, the effective interval, the fleet's
# cloudlink, then the entry; MISS, the device's and the fleets' generations; or the outcome alone.
_LOOKUP_AND_FETCH = (
    COUNT_FETCH_LUA
    + """
local entry = redis.call('GET', KEYS[1])
if entry then
  local id, hash, fid, poll, frozen = string.match(entry, '^(%d+)\\t(%x+)\\t(%d+)\\t(%d*)\\t[01]?\\t([01])\\t')
  if id then
    if hash ~= ARGV[1] then return '3' end
    local fleet = redis.call('HGET', KEYS[2], fid)
    if fleet then
      local finterval, fcloud, filled = string.match(fleet, '^(%d*)\\t([01])\\t(%d+)$')
      local at = tonumber(ARGV[2])
      if finterval and at - tonumber(filled) < @max_age then
        local interval = tonumber(poll)
        if (not interval) or interval == 0 then interval = tonumber(finterval) end
        if (not interval) or interval == 0 then interval = @default_interval end
        if interval < @min_interval then interval = @min_interval end
        local found = string.format('%.0f', interval) .. '\\t' .. fcloud .. '\\t' .. entry
        if frozen == '1' then return '4\\t' .. found end
        local deadline = string.format('%.0f', at + interval * @window)
        if count_fetch(KEYS[4], KEYS[5], id, ARGV[2], deadline) ~= 1 then return '2' end
        return '1\\t' .. found
      end
    end
  end
end
local g = redis.call('HMGET', KEYS[3], ARGV[3], 'f')
return '0\\t' .. (g[1] or '0') .. '\\t' .. (g[2] or '0')
"""
)

# KEYS: gens, fleets, then the device keys (all of one shard). ARGV: fleet generation, ttl seconds,
# then per device key a group of 5: generation field, device generation, entry, fleet id, fleet
# value. Writes an entry only if its generations are still those read before the database was;
# returns how many were written.
_FILL = """
local fgen = redis.call('HGET', KEYS[1], 'f') or '0'
local written = 0
for k = 3, #KEYS do
  local i = 3 + (k - 3) * 5
  if (redis.call('HGET', KEYS[1], ARGV[i]) or '0') == ARGV[i + 1] then
    redis.call('SET', KEYS[k], ARGV[i + 2], 'EX', ARGV[2])
    if fgen == ARGV[1] then redis.call('HSET', KEYS[2], ARGV[i + 3], ARGV[i + 4]) end
    written = written + 1
  end
end
return written
"""

# KEYS: gens, fleets, then device keys (all of one shard). ARGV: n, n fleet ids, then the
# generation field of each device key. Generation first, in the same atomic step as the delete:
# a fill is refused from here on.
_INVALIDATE = """
local n = tonumber(ARGV[1])
for k = 3, #KEYS do
  redis.call('HINCRBY', KEYS[1], ARGV[n + k - 1], 1)
  redis.call('DEL', KEYS[k])
end
if n > 0 then
  redis.call('HINCRBY', KEYS[1], 'f', 1)
  redis.call('HDEL', KEYS[2], unpack(ARGV, 2, n + 1))
end
return 1
"""


@dataclass(frozen=True)
class Generations:
    """The generation counters read before the database (a fill is refused if they moved)."""

    device: str
    fleet: str


class Lookup(NamedTuple):
    """What the fetch script found (a tuple: one is built per fetch)."""

    outcome: int
    key_hash: str = ""
    name: str = ""
    # Effective values, as devices.models computes them; the interval is the one the script moved
    # the heartbeat deadline by.
    effective_poll_interval: int = 0
    effective_cloudlink: bool = False
    generations: Generations | None = None


def generation_field(uuid: str) -> str:
    return "d:" + uuid[:3]


class _Config(NamedTuple):
    """The settings the fetch depends on, read once (cleared when a setting changes)."""

    url: str
    ttl: int
    shards: int
    default_interval: int
    min_interval: int
    window: int


@lru_cache(maxsize=1)
def _config() -> _Config | None:
    """The device cache's settings, or None when it is off (no live-state Redis, or TTL 0)."""
    url, ttl_ = live_url(), ttl()
    if not url or ttl_ <= 0:
        return None
    return _Config(
        url=url,
        ttl=ttl_,
        shards=shard_count(),
        default_interval=settings.FLEETSTATUS_DEFAULT_POLL_INTERVAL,
        min_interval=settings.FLEETSTATUS_MIN_POLL_INTERVAL,
        window=_window_factor(),
    )


def ttl() -> int:
    return int(getattr(settings, "FLEETSTATUS_DEVICE_CACHE_TTL", 0) or 0)


def enabled() -> bool:
    return _config() is not None


class _Scripts:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.fill = client.register_script(_FILL)
        self.invalidate = client.register_script(_INVALIDATE)


@lru_cache(maxsize=8)
def _scripts_for(url: str) -> _Scripts:
    return _Scripts(client_for(url))


def _scripts() -> _Scripts:
    return _scripts_for(live_url())


def _window_factor() -> int:
    # heartbeat_window(interval) = interval x tolerance seconds; in integer microseconds per second.
    return round(settings.FLEETSTATUS_HEARTBEAT_TOLERANCE * 1_000_000)


def _flag(value: str) -> bool | None:
    return None if value == "" else value == "1"


class _LuaTemplate(Template):
    delimiter = "@"  # Lua patterns use "$"


def _lookup_source(config: _Config) -> str:
    return _LuaTemplate(_LOOKUP_AND_FETCH).substitute(
        default_interval=int(config.default_interval),
        min_interval=int(config.min_interval),
        window=int(config.window),
        max_age=int(config.ttl) * 1_000_000,
    )


class _Fetcher:
    """The fetch script of one configuration, called by its SHA (EVALSHA; loaded again if Redis lost it)."""

    def __init__(self, config: _Config) -> None:
        self.client = client_for(config.url)
        self.shards = config.shards
        self.source = _lookup_source(config)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self.keys = [
            (device_key_prefix(s), fleets_key(s), gens_key(s), seen_key(s), online_key(s)) for s in range(self.shards)
        ]

    def __call__(self, uuid: str, key_hash: str, at_us: int) -> bytes:
        prefix, fleets, gens, seen, online = self.keys[shard_of(uuid, self.shards)]
        keys = (prefix + uuid, fleets, gens, seen, online)
        command = ("EVALSHA", self.sha, len(keys), *keys, key_hash, at_us, generation_field(uuid))
        try:
            return self.client.execute_command(*command)
        except NoScriptError:
            self.client.script_load(self.source)
            return self.client.execute_command(*command)


@lru_cache(maxsize=1)
def _fetcher() -> _Fetcher:
    config = _config()
    if config is None:
        raise RuntimeError("the device cache is off")
    return _Fetcher(config)


def _settings_changed(**kwargs) -> None:
    _config.cache_clear()
    _fetcher.cache_clear()


setting_changed.connect(_settings_changed)


def lookup_and_fetch(uuid: str, key_hash: str, at: datetime) -> Lookup:
    """The fetch at `at` of a device presenting a key whose SHA-256 is key_hash, from the cache."""
    return fetch_at(uuid, key_hash, to_us(at))


def fetch_at(uuid: str, key_hash: str, at_us: int) -> Lookup:
    """lookup_and_fetch at a time in microseconds since the epoch (to_us). One round trip.

    Raises RedisError when Redis is unreachable (the caller takes the database path).
    """
    fields = _fetcher()(uuid, key_hash, at_us).decode().split("\t", 9)
    outcome = int(fields[0])
    if outcome == MISS:
        return Lookup(MISS, generations=Generations(device=fields[1], fleet=fields[2]))
    if outcome not in (COUNTED, FROZEN):
        return Lookup(outcome)
    _, interval, f_cloud, _pk, hash_, _fleet_id, _poll, cloud, _frozen, name = fields
    return Lookup(outcome, hash_, name, int(interval), effective_cloudlink(_flag(cloud), f_cloud == "1"))


# --- Filling ---------------------------------------------------------------------------------


def _entry(device: Device) -> str:
    return _entry_of(
        device.pk,
        device.api_key_hash,
        device.fleet_id,
        device.poll_interval,
        device.cloudlink_enabled,
        device.is_frozen,
        device.name,
    )


def _entry_of(pk, api_key_hash, fleet_id, poll_interval, cloudlink_enabled, is_frozen, name) -> str:
    poll = "" if poll_interval is None else str(poll_interval)
    cloud = "" if cloudlink_enabled is None else ("1" if cloudlink_enabled else "0")
    return f"{pk}\t{api_key_hash}\t{fleet_id}\t{poll}\t{cloud}\t{'1' if is_frozen else '0'}\t{name}"


def _fleet_value(poll_interval: int | None, cloudlink: bool, filled_us: int) -> str:
    return f"{'' if poll_interval is None else poll_interval}\t{'1' if cloudlink else '0'}\t{filled_us}"


def _fill_args(device: Device, generations: Generations, filled_us: int, tag: str) -> list[str]:
    fleet = device.fleet
    return [
        tag,
        generations.device,
        _entry(device),
        str(device.fleet_id),
        _fleet_value(fleet.poll_interval, fleet.cloudlink_enabled, filled_us),
    ]


def _jittered_ttl() -> int:
    # Entries filled together (a deploy, a warm-up) must not all expire in the same second.
    base = ttl()
    return max(1, int(base * random.uniform(0.9, 1.1)))


def fill(device: Device, generations: Generations | None, now: datetime) -> bool:
    """Cache an active device (loaded with its fleet) read AFTER `generations` were; False if refused.

    Never raises because of Redis (the fetch has been answered from the database anyway).
    """
    if generations is None or not enabled() or not device.is_active:
        return False
    try:
        shard = shard_of(device.uuid)
        written = _scripts().fill(
            keys=[gens_key(shard), fleets_key(shard), device_key(device.uuid)],
            args=[
                generations.fleet,
                _jittered_ttl(),
                *_fill_args(device, generations, to_us(now), generation_field(device.uuid)),
            ],
        )
    except RedisError as exc:
        warn_unavailable(exc)
        return False
    return bool(written)


def prime(queryset, now: datetime, *, batch_size: int = FILL_BATCH) -> int:
    """Fill the cache for every active device of queryset (bulk: after a deploy, a Redis restart, the bench).

    The generations are read once before the rows, so a change committed meanwhile refuses the
    entries it concerns exactly as it refuses a single fill. Works shard by shard (one script call
    per shard and batch). Returns the entries written.
    """
    if not enabled():
        return 0
    scripts = _scripts()
    gens = [
        {k.decode(): v.decode() for k, v in scripts.client.hgetall(gens_key(s)).items()} for s in range(shard_count())
    ]
    filled_us = to_us(now)
    rows = (
        queryset.filter(is_active=True)
        .order_by()
        .values_list(
            "pk",
            "uuid",
            "api_key_hash",
            "fleet_id",
            "poll_interval",
            "cloudlink_enabled",
            "is_frozen",
            "name",
            "fleet__poll_interval",
            "fleet__cloudlink_enabled",
        )
    )
    fleet_values: dict[int, str] = {}
    pending: dict[int, tuple[list[str], list[str]]] = {}
    written = 0

    def send(shard: int) -> int:
        keys, args = pending.pop(shard)
        return scripts.fill(
            keys=[gens_key(shard), fleets_key(shard), *keys],
            args=[gens[shard].get(FLEET_GEN, "0"), _jittered_ttl(), *args],
        )

    for pk, uuid, key_hash, fleet_id, poll, cloud, frozen, name, f_poll, f_cloud in rows.iterator(
        chunk_size=batch_size
    ):
        fleet_value = fleet_values.get(fleet_id)
        if fleet_value is None:
            fleet_value = fleet_values[fleet_id] = _fleet_value(f_poll, f_cloud, filled_us)
        shard = shard_of(uuid)
        tag = generation_field(uuid)
        keys, args = pending.setdefault(shard, ([], []))
        keys.append(device_key(uuid))
        args += [tag, gens[shard].get(tag, "0"), _entry_of(pk, key_hash, fleet_id, poll, cloud, frozen, name)]
        args += [str(fleet_id), fleet_value]
        if len(keys) >= batch_size:
            written += send(shard)
    for shard in list(pending):
        written += send(shard)
    return written


# --- Invalidation ----------------------------------------------------------------------------


def _invalidate(uuids: Sequence[str], fleet_ids: Sequence[int]) -> None:
    scripts = _scripts()
    by_shard: dict[int, list[str]] = {}
    for uuid in uuids:
        by_shard.setdefault(shard_of(uuid), []).append(uuid)
    fleets = [str(pk) for pk in fleet_ids]
    for shard in range(shard_count()):
        # Every shard holds its own copy of a fleet's entry; device entries live in one shard.
        chunks = [
            by_shard.get(shard, [])[start : start + INVALIDATE_BATCH]
            for start in range(0, len(by_shard.get(shard, [])), INVALIDATE_BATCH)
        ]
        if not chunks and not fleets:
            continue
        for i, chunk in enumerate(chunks or [[]]):
            with_fleets = fleets if i == 0 else []
            scripts.invalidate(
                keys=[gens_key(shard), fleets_key(shard), *(device_key(u) for u in chunk)],
                args=[len(with_fleets), *with_fleets, *(generation_field(u) for u in chunk)],
            )


def _invalidate_logged(uuids: Sequence[str], fleet_ids: Sequence[int]) -> None:
    try:
        _invalidate(uuids, fleet_ids)
    except RedisError as exc:
        logger.error(
            "device cache invalidation failed (%s): %d devices, %d fleets may answer fetches with old "
            "values until their entries expire (FLEETSTATUS_DEVICE_CACHE_TTL)",
            exc,
            len(uuids),
            len(fleet_ids),
        )


def _forget(uuids: Sequence[str], fleet_ids: Sequence[int]) -> None:
    if not enabled() or not (uuids or fleet_ids):
        return
    if connection.in_atomic_block:
        # Now (so this transaction's own later reads are not answered from the cache) and again
        # after commit (a fill that read the old row meanwhile is deleted or refused).
        _invalidate_logged(uuids, fleet_ids)
    transaction.on_commit(lambda: _invalidate_logged(uuids, fleet_ids))


def forget_devices(uuids: Iterable[str]) -> None:
    """A cached field of these devices changes (or they are deleted): their next fetch reads the database."""
    _forget(sorted(set(uuids)), ())


def forget_fleets(fleet_ids: Iterable[int]) -> None:
    """A fleet's interval or cloudlink switch changes: its devices' next fetches read it again."""
    _forget((), sorted(set(fleet_ids)))


def touches(changes: Iterable[str], fields: frozenset[str] = DEVICE_FIELDS) -> bool:
    return not fields.isdisjoint(changes)


def reset() -> None:
    """Drop every entry (tests; after restoring a database backup). Generations keep counting."""
    client = _scripts().client
    keys = list(client.scan_iter(match=DEVICE_PATTERN, count=10_000))
    pipe = client.pipeline(transaction=False)
    for shard in range(shard_count()):
        pipe.hincrby(gens_key(shard), FLEET_GEN, 1)
        pipe.unlink(fleets_key(shard))
    for key in keys:
        pipe.unlink(key)
    pipe.execute()
