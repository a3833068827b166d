"""Celery tasks: thin wrappers around the plain functions of devices.sweep (scheduled by beat,
see CELERY_BEAT_SCHEDULE in settings). Each is safe to run twice at once, so a retry, a late
message or a second beat started by mistake cannot duplicate a transition."""

from typing import Any

from celery import shared_task

# acks_late=False (the settings default it to True): these tasks are periodic and idempotent, so a
# message lost with a dying worker costs nothing (beat sends the next one). An unacknowledged
# message does cost something: when the Redis broker goes away while one is held, kombu 5.7 fails
# restoring it ("'NoneType' object has no attribute 'hostname'") and the worker exits with an
# "Unrecoverable error" instead of reconnecting (tests/reliability/test_faults.py).
PERIODIC = {"acks_late": False}


@shared_task(name="devices.tasks.sweep", **PERIODIC)
def sweep() -> dict[str, Any]:
    """Every shard in one task (beat sends sweep_shards per group; this stays for manual runs)."""
    from devices.sweep import run_sweep
    from fleetstatus.metrics import timed_sweep

    return timed_sweep(run_sweep)()


@shared_task(name="devices.tasks.sweep_shards", **PERIODIC)
def sweep_shards(shards: list[int]) -> dict[str, Any]:
    from devices.sweep import run_sweep
    from fleetstatus.metrics import timed_sweep

    return timed_sweep(lambda: run_sweep(shards=shards))()


@shared_task(name="devices.tasks.reconcile_frozen", **PERIODIC)
def reconcile_frozen() -> int:
    from devices.sweep import reconcile_all_frozen

    return reconcile_all_frozen()


@shared_task(name="devices.tasks.prune_transitions", **PERIODIC)
def prune_transitions() -> int:
    from devices.sweep import prune_transitions as prune

    return prune()
