"""Celery tasks: the dispatcher (beat, every FLEETSTATUS_NOTIFY_TICK_SECONDS) and one send per delivery."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="notifications.tasks.dispatch", acks_late=False)
def dispatch() -> dict | None:
    """Evaluate the outbox and hand every due delivery (new, retry, or one whose sender died) to a worker.

    Periodic and idempotent: a lost message costs nothing, the next tick does the same work.
    """
    from notifications import engine, sending

    summary = engine.dispatch()
    for delivery_id in sending.to_queue():
        deliver.delay(delivery_id)
    return summary


# acks_late=False: redelivery after a crash comes from the row's lease, not from the broker (a
# held unacknowledged message makes kombu's Redis transport exit when Redis goes away; devices/tasks.py).
@shared_task(name="notifications.tasks.deliver", acks_late=False)
def deliver(delivery_id: int) -> str:
    from notifications import sending

    return sending.deliver(delivery_id)


@shared_task(name="notifications.tasks.prune", acks_late=False)
def prune() -> int:
    from notifications import engine

    return engine.prune()
