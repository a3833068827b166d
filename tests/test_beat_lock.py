"""One beat schedules at a time: the lock in Redis that LockedScheduler holds, renews and hands over."""

import pytest

from fleetstatus.celery import LOCK_KEY, LockedScheduler, app

pytestmark = pytest.mark.redis


@pytest.fixture
def beats(settings, tmp_path):
    # lazy: no schedule is set up and nothing is sent; only the lock is exercised here.
    made = [LockedScheduler(app=app, schedule_filename=str(tmp_path / f"beat{i}"), lazy=True) for i in range(2)]
    made[0].redis.delete(LOCK_KEY)
    yield made
    made[0].redis.delete(LOCK_KEY)


def test_only_one_beat_holds_the_lock_and_renews_it(beats):
    active, standby = beats
    assert active._holds_lock() and active.holding
    assert not standby._holds_lock() and not standby.holding
    assert active._holds_lock()  # a renewal, not a second acquisition
    ttl = active.redis.pttl(LOCK_KEY)
    assert 0 < ttl <= active.ttl_ms
    assert active.redis.get(LOCK_KEY).decode() == active.token


def test_a_standby_takes_over_once_the_lock_expires(beats):
    active, standby = beats
    assert active._holds_lock()
    active.redis.delete(LOCK_KEY)  # what the time to live does when the active beat dies
    assert standby._holds_lock()
    assert not active._holds_lock() and not active.holding  # the old one stands by from now on


def test_a_standby_sends_nothing(beats, monkeypatch):
    active, standby = beats
    assert active._holds_lock()
    monkeypatch.setattr(
        "celery.beat.PersistentScheduler.tick", lambda self, *a, **k: pytest.fail("the standby scheduled")
    )
    assert standby.tick() == standby.max_interval


def test_a_clean_stop_hands_over_at_once(beats):
    active, standby = beats
    assert active._holds_lock()
    standby._release(keys=[LOCK_KEY], args=[standby.token])  # not its lock: nothing happens
    assert active.redis.get(LOCK_KEY).decode() == active.token
    active._release(keys=[LOCK_KEY], args=[active.token])
    assert standby._holds_lock()


def test_redis_unreachable_means_not_scheduling(beats, monkeypatch):
    from redis.exceptions import ConnectionError

    active, _ = beats
    assert active._holds_lock()

    def down(*args, **kwargs):
        raise ConnectionError("down")

    monkeypatch.setattr(active, "_hold", down)
    assert not active._holds_lock() and not active.holding
