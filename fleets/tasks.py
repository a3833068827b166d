"""Celery tasks of the fleets app (scheduled by beat, see CELERY_BEAT_SCHEDULE in settings)."""

from celery import shared_task


@shared_task(name="fleets.tasks.fold_status_counts", acks_late=False)
def fold_status_counts() -> int:
    """Fold the pending device-count deltas into the counts (fleets/counts.py); idempotent."""
    from fleets.counts import fold

    return fold()


@shared_task(name="fleets.tasks.compact_fleet_history", acks_late=False)
def compact_fleet_history() -> dict[str, int]:
    """Roll the fleets' count history up to hours after a week and prune it (fleets/history.py)."""
    from fleets.history import compact

    return compact()
