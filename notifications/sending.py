"""Sending deliveries: claim with a conditional UPDATE and a lease, send, record, retry with backoff.

A Delivery is owned by one sender at a time: claim() moves it to `sending` only if it is still due
(or its previous sender's lease ran out), so any number of workers can be handed the same id and
one sends. A worker killed mid-send leaves the row `sending`; once the lease passes, the
dispatcher hands it out again and it is sent with the same uuid (receivers drop the duplicate).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from fleetstatus.metrics import count_deliveries
from notifications.models import Delivery
from notifications.transports import SendResult, send

logger = logging.getLogger(__name__)

BACKOFF_FIRST = 10  # seconds before the first retry; doubles each time
BACKOFF_MAX = 3600
RETRY_AFTER_MAX = 6 * 3600


def due(now: datetime) -> Q:
    return Q(state=Delivery.State.PENDING, next_attempt_at__lte=now) | Q(
        state=Delivery.State.SENDING, lease_until__lt=now
    )


def due_ids(now: datetime | None = None, limit: int = 200) -> list[int]:
    now = now or timezone.now()
    return list(
        Delivery.objects.filter(due(now)).order_by("next_attempt_at", "id").values_list("pk", flat=True)[:limit]
    )


def to_queue(now: datetime | None = None, limit: int = 200) -> list[int]:
    """Due deliveries not queued within the last lease; marks them queued (a message lost with the
    queue is queued again once that passes)."""
    now = now or timezone.now()
    ids = list(
        Delivery.objects.filter(due(now))
        .exclude(queued_until__gt=now)
        .order_by("next_attempt_at", "id")
        .values_list("pk", flat=True)[:limit]
    )
    if ids:
        until = now + timedelta(seconds=settings.FLEETSTATUS_NOTIFY_LEASE_SECONDS)
        Delivery.objects.filter(pk__in=ids).update(queued_until=until)
    return ids


def claim(delivery_id: int, now: datetime) -> Delivery | None:
    lease = now + timedelta(seconds=settings.FLEETSTATUS_NOTIFY_LEASE_SECONDS)
    claimed = (
        Delivery.objects.filter(pk=delivery_id)
        .filter(due(now))
        .update(state=Delivery.State.SENDING, lease_until=lease, attempts=F("attempts") + 1)
    )
    if not claimed:
        return None
    return Delivery.objects.select_related("channel__organization").get(pk=delivery_id)


def backoff(attempts: int) -> int:
    return min(BACKOFF_FIRST * 2 ** max(attempts - 1, 0), BACKOFF_MAX)


def deliver(delivery_id: int, now: datetime | None = None) -> str:
    """Send one delivery if it is due and nobody else holds it; returns its state afterwards."""
    now = now or timezone.now()
    delivery = claim(delivery_id, now)
    if delivery is None:
        return "skipped"
    result = send(delivery, now)
    return record(delivery, result, timezone.now() if now is None else now)


def record(delivery: Delivery, result: SendResult, now: datetime) -> str:
    fields = {
        "last_status_code": result.status_code,
        "last_error": result.error[:500],
        "lease_until": None,
        "queued_until": None,
    }
    if result.ok:
        fields.update(state=Delivery.State.DELIVERED, delivered_at=now, next_attempt_at=None)
    elif result.retry and now < delivery.created_at + timedelta(hours=settings.FLEETSTATUS_NOTIFY_RETRY_HOURS):
        wait = backoff(delivery.attempts)
        if result.retry_after is not None:
            wait = max(wait, min(result.retry_after, RETRY_AFTER_MAX))
        fields.update(state=Delivery.State.PENDING, next_attempt_at=now + timedelta(seconds=wait))
    else:
        fields.update(state=Delivery.State.FAILED, next_attempt_at=None)
    # Only the claim that made this attempt may record it (a sender whose lease ran out and whose
    # delivery was re-claimed meanwhile must not overwrite the newer attempt's result).
    recorded = Delivery.objects.filter(pk=delivery.pk, state=Delivery.State.SENDING, attempts=delivery.attempts).update(
        **fields
    )
    if recorded:
        # Per attempt: delivered, pending (will be retried) or failed.
        count_deliveries(str(fields["state"]))
    if not result.ok:
        logger.warning(
            "notification delivery %s to channel %s: %s", delivery.uuid, delivery.channel_id, result.error[:200]
        )
    return fields["state"]
