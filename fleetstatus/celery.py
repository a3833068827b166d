"""The Celery app: `celery -A fleetstatus worker` (as many as needed) and `celery -A fleetstatus beat`.

With Redis, beat runs LockedScheduler (settings, CELERY_BEAT_SCHEDULER): only the beat holding a
lock in Redis schedules, so a second beat on another machine is a standby, not a duplicate.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from celery import Celery
from celery.beat import PersistentScheduler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetstatus.settings")

app = Celery("fleetstatus")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

logger = logging.getLogger("celery.beat")

LOCK_KEY = "fs:beat:lock"

# KEYS: lock. ARGV: our token, time to live (ms). Renews the lock if ours, takes it if free.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lock. ARGV: our token. Releases the lock only if ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LockedScheduler(PersistentScheduler):
    """Celery's default scheduler, scheduling only while this beat holds a lock in the broker's Redis.

    Every tick renews the lock (SET NX PX, then PEXPIRE while ours) before sending anything; a beat
    that does not hold it sends nothing and tries again next tick. A dead beat's lock expires after
    FLEETSTATUS_BEAT_LOCK_TTL, and a standby takes it within one more tick. A lost Redis (down, or
    back empty) only pauses scheduling: whoever sets the lock first afterwards goes on. The
    schedule itself stays in each beat's local file: a standby that takes over sends every entry
    that is due (once), as a restarted beat does. A tick that ran late and let the lock lapse meanwhile
    can overlap with a standby's for one interval: harmless, every task is safe to run twice.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import redis
        from django.conf import settings

        self.token = uuid.uuid4().hex
        self.ttl_ms = int(settings.FLEETSTATUS_BEAT_LOCK_TTL * 1000)
        self.holding = False
        self.redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        self._hold = self.redis.register_script(_HOLD)
        self._release = self.redis.register_script(_RELEASE)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._holds_lock():
            return self.max_interval
        return min(super().tick(*args, **kwargs), self.max_interval)

    def _holds_lock(self) -> bool:
        from redis.exceptions import RedisError

        try:
            holds = self._hold(keys=[LOCK_KEY], args=[self.token, self.ttl_ms]) == 1
        except RedisError as exc:
            holds = False
            if self.holding:
                logger.warning("beat: cannot reach Redis to renew the lock, not scheduling: %s", exc)
        if holds != self.holding:
            logger.warning("beat: %s %s", "Acquired lock" if holds else "Lost lock (another beat holds it)", LOCK_KEY)
            self.holding = holds
        return holds

    def close(self) -> None:
        # A clean stop hands over at once instead of after the lock's time to live.
        try:
            self._release(keys=[LOCK_KEY], args=[self.token])
        except Exception as exc:  # the lock expires by itself anyway
            logger.warning("beat: could not release the lock: %s", exc)
        super().close()
