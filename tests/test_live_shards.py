"""The live state in shards: a stable shard per UUID, one hash slot per shard, a sweep per shard."""

import re
import uuid as uuidlib
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from devices import services
from devices.live import devcache, heartbeats
from devices.live import redis as live_redis
from devices.models import TaskRun
from devices.sweep import SWEEP_TASK, run_sweep, shard_task, sweep_health
from tests.hbutil import fetch, no_redis, store_mode  # noqa: F401 (fixtures)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
db = pytest.mark.django_db


@pytest.mark.parametrize("shards", [1, 3, 16, 100, 4096])
def test_every_uuid_falls_in_exactly_the_range_of_its_shard(settings, shards):
    settings.FLEETSTATUS_HEARTBEAT_SHARDS = shards
    samples = [uuidlib.uuid4().hex for _ in range(300)] + ["0" * 32, "f" * 32, "8000" + "0" * 28, "f" * 62]
    for value in samples:
        shard = live_redis.shard_of(value)
        assert 0 <= shard < shards
        lowest, following = live_redis.uuid_range(shard)
        assert value >= lowest and (following is None or value < following)
    ranges = [live_redis.uuid_range(s) for s in range(shards)]
    # Adjacent, starting at 0000, ending open: no device falls between two shards.
    assert ranges[0][0] == "0000" and ranges[-1][1] is None
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(shards - 1))


def test_a_shard_does_not_depend_on_the_process(settings):
    settings.FLEETSTATUS_HEARTBEAT_SHARDS = 16
    # Fixed values: Python's hash() would differ between web processes.
    assert [live_redis.shard_of(u) for u in ("0fff" + "a" * 28, "1000" + "0" * 28, "ffff" + "0" * 28)] == [0, 1, 15]


def test_every_key_of_a_shard_is_in_the_same_cluster_slot(settings):
    settings.FLEETSTATUS_HEARTBEAT_SHARDS = 16
    device = "3a" + "0" * 30
    shard = live_redis.shard_of(device)
    keys = [
        live_redis.seen_key(shard),
        live_redis.online_key(shard),
        live_redis.epoch_key(shard),
        live_redis.device_key(device),
        live_redis.fleets_key(shard),
        live_redis.gens_key(shard),
    ]
    assert all(re.match(rf"^fs:\{{hb:{shard}\}}:", k) for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    # The shards spread over the slots (hence over a cluster's masters).
    assert len({key_slot(live_redis.online_key(s).encode()) for s in range(16)}) == 16


def test_the_lua_scripts_name_every_key_they_touch_in_keys():
    # A cluster routes a script by its KEYS; a key built from ARGV could be on another node.
    for script in (devcache._LOOKUP_AND_FETCH, devcache._FILL, devcache._INVALIDATE, heartbeats._FETCH):
        for call in re.findall(r"redis\.call\('(\w+)', (\w+)", script):
            assert call[1].startswith("KEYS") or call[1] in {"seen", "online"}, call


def test_a_cluster_url_makes_a_cluster_client_and_the_default_follows_redis_url(settings):
    settings.FLEETSTATUS_LIVE_REDIS_URL = ""
    settings.REDIS_URL = "redis://127.0.0.1:6379/12"
    assert live_redis.live_url() == "redis://127.0.0.1:6379/12"
    settings.REDIS_URL = ""
    assert live_redis.client() is None
    settings.FLEETSTATUS_LIVE_REDIS_URL = "redis+cluster://127.0.0.1:1,127.0.0.1:2"
    # Nothing listens there, and RedisCluster asks its startup nodes for the slots on creation.
    with pytest.raises((RedisError, RedisClusterException)):
        live_redis.client_for.__wrapped__("redis+cluster://127.0.0.1:1,127.0.0.1:2")


@db
@pytest.mark.usefixtures("no_redis")
def test_the_switch_reports_the_oldest_shard(settings):
    settings.FLEETSTATUS_HEARTBEAT_SHARDS = 4
    with time_machine.travel(T0, tick=False):
        run_sweep(shards=[0, 1, 2])
    # One shard never swept: statuses can't be trusted, nothing claims otherwise.
    assert sweep_health(T0).last_success_at is None
    with time_machine.travel(T0 + timedelta(seconds=5), tick=False):
        run_sweep(shards=[3])
    assert TaskRun.objects.get(name=shard_task(3)).last_success_at == T0 + timedelta(seconds=5)
    assert sweep_health(T0 + timedelta(seconds=5)).last_success_at == T0
    with time_machine.travel(T0 + timedelta(seconds=40), tick=False):
        run_sweep(shards=[0, 1, 3])  # shard 2 falls behind
    health = sweep_health(T0 + timedelta(seconds=40))
    assert health.last_success_at == T0 and health.is_stale
    assert TaskRun.objects.get(name=SWEEP_TASK).details["shards"] == [0, 1, 3]


@db
@pytest.mark.usefixtures("store_mode")
def test_a_shard_sweep_expires_only_its_own_devices(settings, fleet):
    settings.FLEETSTATUS_HEARTBEAT_SHARDS = 2
    low, _ = services.create_device(fleet, "1" + uuidlib.uuid4().hex[1:], at=T0)
    high, _ = services.create_device(fleet, "f" + uuidlib.uuid4().hex[1:], at=T0)
    fetch(low, T0)
    fetch(high, T0)
    later = T0 + timedelta(hours=1)
    assert run_sweep(later, shards=[1])["expired"] == 1
    low.refresh_from_db()
    high.refresh_from_db()
    assert (low.api_heartbeat_state, high.api_heartbeat_state) == ("online", "offline")
    assert run_sweep(later, shards=[0, 1])["expired"] == 1
