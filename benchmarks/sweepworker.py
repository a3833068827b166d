"""The Celery app of P13's sweep workers (`celery -A benchmarks.sweepworker worker`): the app's own,
plus one task that is devices.tasks.sweep_shards with the moment of the sweep passed in.

P6's data makes exactly 10,000 devices due at the moment the bench was seeded, not at the time the
figure runs; everything else about the task is the production one (run_sweep over a group of
shards, timed into the sweep histogram). It reports to a Redis list when done, so the bench can
time from the first enqueue to the last task's end without a result backend.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime
from typing import Any

from fleetstatus.celery import app

__all__ = ["app", "sweep_shards_at"]


@app.task(name="benchmarks.sweep_shards_at", acks_late=False)
def sweep_shards_at(shards: list[int], now: str, done_key: str) -> None:
    import redis
    from django.conf import settings

    from devices.sweep import run_sweep
    from fleetstatus.metrics import timed_sweep

    started = time.perf_counter()
    report: dict[str, Any] = {"shards": shards, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        details = timed_sweep(lambda: run_sweep(datetime.fromisoformat(now), shards=shards))()
        report["expired"] = details.get("expired", 0)
        if details.get("error"):
            report["error"] = details["error"]
    except Exception as exc:  # noqa: BLE001 - the bench waits for a report either way
        report["error"] = f"{exc.__class__.__name__}: {exc}"
    report["seconds"] = round(time.perf_counter() - started, 3)
    redis.Redis.from_url(settings.REDIS_URL).rpush(done_key, json.dumps(report))
