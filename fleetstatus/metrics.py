"""Prometheus metrics: counters kept in Redis, gauges read from the database at scrape time.

Counters (heartbeats, state reports, transitions by status, notification deliveries by result,
the sweep's duration histogram) are incremented in Redis (HINCRBY on one hash), not in
prometheus_client's in-process objects: gunicorn workers, Celery workers and machines then add to
one total, and any web process answers /metrics with all of it (no multiprocess directory to
wipe, no per-pid files, no worker whose counts are never scraped). To keep Redis off the hot path,
each process adds increments to a local buffer that a timer flushes in one pipeline at most
FLEETSTATUS_METRICS_FLUSH_SECONDS later (and at exit); a killed process loses at most that much.

The call sites are one line each: count_heartbeats(), count_state_reports(), count_transitions(),
count_deliveries(), observe_sweep(). None of them ever raises into the caller.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TypeVar

from django.conf import settings
from django.db import connection, transaction
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

T = TypeVar("T")
KEY = "fleetstatus:metrics"
SWEEP_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
WARN_EVERY = 60.0

_lock = threading.Lock()
_pending: Counter[str] = Counter()
# Without Redis (the laptop demo) the totals live in this process only.
_local: Counter[str] = Counter()
_state: dict = {"timer": None, "client": None, "warned_at": 0.0}


def _reset_after_fork() -> None:
    # A child inherits the parent's buffer (already counted by the parent) but not its timer thread.
    global _lock
    _lock = threading.Lock()
    _pending.clear()
    _state.update(timer=None, client=None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _client() -> Redis | None:
    if not settings.REDIS_URL:
        return None
    if _state["client"] is None:
        _state["client"] = Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    return _state["client"]


def _add(increments: dict[str, float]) -> None:
    try:
        with _lock:
            _pending.update(increments)
            delay = settings.FLEETSTATUS_METRICS_FLUSH_SECONDS
            if delay > 0 and _state["timer"] is None:
                timer = threading.Timer(delay, flush)
                timer.daemon = True
                _state["timer"] = timer
                timer.start()
        if delay <= 0:
            flush()
    except Exception:  # noqa: BLE001 - counting must never fail a heartbeat or a sweep
        logger.exception("metrics: could not count %s", increments)


def flush() -> None:
    """Send the buffered increments to Redis in one pipeline (kept for the next flush on failure)."""
    with _lock:
        items = dict(_pending)
        _pending.clear()
        _state["timer"] = None
    if not items:
        return
    client = _client()
    if client is None:
        _local.update(items)
        return
    try:
        # MULTI/EXEC: applied whole or not at all, so a batch kept after a failure is never counted twice.
        pipe = client.pipeline(transaction=True)
        for field, n in items.items():
            if isinstance(n, float):
                pipe.hincrbyfloat(KEY, field, n)
            else:
                pipe.hincrby(KEY, field, n)
        pipe.execute()
    except (RedisConnectionError, RedisTimeoutError) as exc:
        with _lock:
            _pending.update(items)
        now = time.monotonic()
        if now - _state["warned_at"] > WARN_EVERY:
            _state["warned_at"] = now
            logger.warning("metrics: Redis unavailable, counts kept in this process for now: %s", exc)
    except RedisError:
        logger.exception("metrics: Redis refused the counts %s; dropped", items)


atexit.register(flush)


# --- Call sites -------------------------------------------------------------------------------------


def count_heartbeats(n: int = 1) -> None:
    _add({"heartbeats": n})


def count_state_reports(n: int = 1) -> None:
    _add({"state_reports": n})


def count_transitions(to_statuses: Iterable[str] | str) -> None:
    """One increment per transition written, labelled with the status it entered; counted when the
    transaction that writes them commits (a rolled-back transition never happened)."""
    if isinstance(to_statuses, str):
        to_statuses = (to_statuses,)
    counts = Counter(f"transitions:{s}" for s in to_statuses)
    if not counts:
        return
    if connection.in_atomic_block:
        transaction.on_commit(lambda: _add(counts))
    else:
        _add(counts)


def count_deliveries(result: str, n: int = 1) -> None:
    _add({f"deliveries:{result}": n})


def observe_sweep(seconds: float) -> None:
    bucket = next((b for b in SWEEP_BUCKETS if seconds <= b), "+Inf")
    _add({f"sweep_bucket:{bucket}": 1, "sweep_count": 1, "sweep_sum": float(seconds)})


def timed_sweep(run: Callable[[], T]) -> Callable[[], T]:
    """run, with its duration observed into the sweep histogram (failed runs included)."""

    def timed() -> T:
        start = time.perf_counter()
        try:
            return run()
        finally:
            observe_sweep(time.perf_counter() - start)

    return timed


def totals() -> dict[str, float]:
    """Every counter's current total across all processes (this process's buffer flushed first)."""
    flush()
    client = _client()
    if client is None:
        return dict(_local)
    raw = client.hgetall(KEY)
    return {k.decode(): float(v) for k, v in raw.items()}


def reset() -> None:
    """Forget every count (tests)."""
    with _lock:
        _pending.clear()
    _local.clear()
    client = _client()
    if client is not None:
        client.delete(KEY)
