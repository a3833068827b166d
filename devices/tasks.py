"""Celery tasks: thin wrappers around the plain functions of devices.sweep (scheduled by beat,
see CELERY_BEAT_SCHEDULE in settings). Each is safe to run twice at once, so a retry, a late
message or a second beat started by mistake cannot duplicate a transition."""

from typing import Any

from celery import shared_task


@shared_task(name="devices.tasks.sweep")
def sweep() -> dict[str, Any]:
    from devices.sweep import run_sweep

    return run_sweep()


@shared_task(name="devices.tasks.reconcile_frozen")
def reconcile_frozen() -> int:
    from devices.sweep import reconcile_all_frozen

    return reconcile_all_frozen()


@shared_task(name="devices.tasks.prune_transitions")
def prune_transitions() -> int:
    from devices.sweep import prune_transitions as prune

    return prune()
