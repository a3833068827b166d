"""The periodic jobs that keep statuses true as time passes (Celery beat calls them via devices.tasks).

run_sweep() is the staleness engine (every FLEETSTATUS_SWEEP_INTERVAL seconds): write back the
fetch times the Redis store collected, then expire every heartbeat whose deadline passed, each
transition stamped at its deadline. reconcile_all_frozen() and prune_transitions() are the slower
housekeeping. All are plain functions, safe to run twice at once and after any downtime.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from redis.exceptions import RedisError

from devices.live import heartbeats
from devices.models import Device, StatusTransition, TaskRun
from devices.services import BATCH_SIZE, expire_heartbeats, reconcile_frozen
from devices.status import Status
from fleets.models import Organization, Tier

logger = logging.getLogger(__name__)

SWEEP_TASK = "sweep"
RECONCILE_TASK = "reconcile-frozen"
PRUNE_TASK = "prune-transitions"
# The dead-man's switch: statuses are stale when the last successful sweep is this many intervals old.
STALE_AFTER_INTERVALS = 3


def run_sweep(now: datetime | None = None, *, batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """One pass of the staleness engine; returns what it did (also kept in TaskRun("sweep").details).

    With Redis, nothing is expired on data the sweep cannot read: if Redis is unreachable or lost
    its data mid-run, the Redis-dependent part stops, the failure is recorded, and
    last_success_at is left alone so the pages warn once it is old (the next run catches up, with
    transitions at their true deadlines).
    """
    now = now or timezone.now()
    details: dict[str, Any] = {"now": now.isoformat()}
    store = heartbeats.store()
    if store is None:
        details["expired"] = expire_heartbeats(now, batch_size=batch_size)
    else:
        try:
            token, recovered = store.ensure_trusted(now)
            if recovered is not None:
                details["store_recovered"] = recovered
            # Write-back first: a device that fetched since the last run gets its real deadline
            # before the expiry reads the due rows. Fetches landing after this are caught by
            # claim() (it skips devices with an entry in `seen`; the next run writes them back).
            details["written_back"] = store.write_back(batch_size)
            details["expired"] = expire_heartbeats(
                now, batch_size=batch_size, claim=lambda ids: store.claim(ids, token)
            )
        except (RedisError, heartbeats.StoreReset) as exc:
            logger.warning("sweep skipped the heartbeat store part: %s", exc)
            details["error"] = f"heartbeat store: {exc}"
            details["failed_at"] = timezone.now().isoformat()
            TaskRun.objects.filter(name=SWEEP_TASK).update(details=details)
            return details
    _succeeded(SWEEP_TASK, details)
    return details


class SweepHealth(NamedTuple):
    last_success_at: datetime | None
    age_seconds: float | None
    is_stale: bool


def sweep_health(now: datetime | None = None) -> SweepHealth:
    """When statuses were last re-evaluated, how long ago, and whether that is too long (one query).

    Stale past three sweep intervals, or when no sweep ever succeeded: then no status on any page
    can be trusted to reflect the passing of time.
    """
    now = now or timezone.now()
    last = TaskRun.objects.filter(name=SWEEP_TASK).values_list("last_success_at", flat=True).first()
    if last is None:
        return SweepHealth(None, None, True)
    age = max((now - last).total_seconds(), 0.0)
    return SweepHealth(last, age, age > STALE_AFTER_INTERVALS * settings.FLEETSTATUS_SWEEP_INTERVAL)


def reconcile_all_frozen(now: datetime | None = None) -> int:
    """Re-apply the allowance rules in every organization where they can freeze or unfreeze anything.

    Every input change already reconciles its organization; this catches what changed some other
    way (a failed transaction, a manual database fix). Organizations with no allowance, no paid
    fleet on the free tier and no frozen device are skipped without reading their devices.
    Returns transitions written.
    """
    now = now or timezone.now()
    has_frozen = Device.objects.filter(
        organization=OuterRef("pk"), is_frozen=True, overall_status__in=[Status.FROZEN, Status.INACTIVE]
    )
    candidates = (
        Organization.objects.annotate(has_frozen=Exists(has_frozen))
        .filter(
            Q(device_allowance__isnull=False) | Q(tier=Tier.FREE, fleets__fleet_type=Tier.PAID) | Q(has_frozen=True)
        )
        .distinct()
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    written = 0
    for org_id in list(candidates):
        written += reconcile_frozen(org_id, reason="periodic allowance check", at=now)
    _succeeded(RECONCILE_TASK, {"transitions": written})
    return written


def prune_transitions(now: datetime | None = None, *, batch_size: int = BATCH_SIZE) -> int:
    """Delete transitions older than FLEETSTATUS_TRANSITION_RETENTION_DAYS, in batches.

    The latest transition of every device is kept however old: it says since when the device has
    its current status. Returns rows deleted.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.FLEETSTATUS_TRANSITION_RETENTION_DAYS)
    newer = StatusTransition.objects.filter(device_id=OuterRef("device_id")).filter(
        Q(at__gt=OuterRef("at")) | Q(at=OuterRef("at"), pk__gt=OuterRef("pk"))
    )
    deleted = 0
    while True:
        ids = list(
            StatusTransition.objects.filter(at__lt=cutoff)
            .filter(Exists(newer))
            .order_by("at", "pk")
            .values_list("pk", flat=True)[:batch_size]
        )
        if ids:
            deleted += StatusTransition.objects.filter(pk__in=ids).delete()[0]
        if len(ids) < batch_size:
            break
    _succeeded(PRUNE_TASK, {"deleted": deleted, "cutoff": cutoff.isoformat()})
    return deleted


def _succeeded(name: str, details: dict[str, Any]) -> None:
    TaskRun.objects.update_or_create(name=name, defaults={"last_success_at": timezone.now(), "details": details})
