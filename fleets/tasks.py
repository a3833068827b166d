"""Celery tasks of the fleets app (scheduled by beat, see CELERY_BEAT_SCHEDULE in settings)."""

from celery import shared_task


@shared_task(name="fleets.tasks.fold_status_counts", acks_late=False)
def fold_status_counts() -> int:
    """Fold the pending device-count deltas into the counts (fleets/counts.py); idempotent."""
    from fleets.counts import fold

    return fold()
