"""The periodic jobs that keep statuses true as time passes (Celery beat calls them via devices.tasks).

run_sweep() is the staleness engine (every FLEETSTATUS_SWEEP_INTERVAL seconds, shard by shard of the
live state): write back the fetch times the Redis store collected, then expire every heartbeat
whose deadline passed, each transition stamped at its deadline. reconcile_all_frozen() and prune_transitions() are the slower
housekeeping. All are plain functions, safe to run twice at once and after any downtime.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db.models import Count, Exists, Min, OuterRef, Q
from django.utils import timezone
from redis.exceptions import RedisError

from devices.live import heartbeats
from devices.live import redis as live_redis
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


def shard_task(shard: int) -> str:
    """The TaskRun of one shard's sweep; TaskRun("sweep") holds the oldest of them."""
    return f"{SWEEP_TASK}:{shard}"


def run_sweep(
    now: datetime | None = None, *, batch_size: int = BATCH_SIZE, shards: Iterable[int] | None = None
) -> dict[str, Any]:
    """One pass of the staleness engine over `shards` (default: all); returns what it did.

    Each shard (devices.live.redis) is swept on its own: its write-back, then the expiry of its due
    devices, then TaskRun("sweep:<shard>") is stamped. Any number of workers may sweep shards in
    parallel, and the same shard twice at once (as one whole sweep always could). TaskRun("sweep")
    gets the details of this pass and the OLDEST shard's last success, so the pages warn as soon as
    any shard falls behind.

    With Redis, nothing is expired on data the sweep cannot read: if Redis is unreachable or lost
    its data mid-run, that shard stops, the failure is recorded, and its last success is left alone
    (the next run catches up, with transitions at their true deadlines).
    """
    now = now or timezone.now()
    selected = list(range(live_redis.shard_count())) if shards is None else sorted(set(shards))
    details: dict[str, Any] = {"now": now.isoformat(), "expired": 0}
    store = heartbeats.store()
    for shard in selected:
        done = _sweep_shard(store, shard, now, batch_size)
        for key in ("expired", "written_back", "store_recovered"):
            if key in done:
                details[key] = details.get(key, 0) + done[key]
        if "error" in done:
            details["error"], details["failed_at"] = done["error"], done["failed_at"]
            TaskRun.objects.filter(name=shard_task(shard)).update(details=done)
        else:
            _succeeded(shard_task(shard), done)
    details["shards"] = selected
    _record_oldest(details)
    return details


def _sweep_shard(store: heartbeats.HeartbeatStore | None, shard: int, now: datetime, batch_size: int) -> dict[str, Any]:
    uuids = live_redis.uuid_range(shard)
    details: dict[str, Any] = {"now": now.isoformat()}
    if store is None:
        details["expired"] = expire_heartbeats(now, batch_size=batch_size, uuids=uuids)
        return details
    try:
        token, recovered = store.ensure_trusted(now, shard)
        if recovered is not None:
            details["store_recovered"] = recovered
        # Write-back first: a device that fetched since the last run gets its real deadline
        # before the expiry reads the due rows. Fetches landing after this are caught by
        # claim() (it skips devices with an entry in `seen`; the next run writes them back).
        details["written_back"] = store.write_back(shard, batch_size)
        details["expired"] = expire_heartbeats(
            now, batch_size=batch_size, claim=lambda ids: store.claim(shard, ids, token), uuids=uuids
        )
    except (RedisError, heartbeats.StoreReset) as exc:
        logger.warning("sweep of shard %d skipped the heartbeat store part: %s", shard, exc)
        details["error"] = f"heartbeat store: {exc}"
        details["failed_at"] = timezone.now().isoformat()
    return details


def _record_oldest(details: dict[str, Any]) -> None:
    """TaskRun("sweep") = this pass's details and the oldest shard's last success (once every shard has one).

    Two shard sweeps finishing at once may leave an older value than the truth until the next
    run; never a newer one (each reads committed stamps, which only move forward).
    """
    names = [shard_task(s) for s in range(live_redis.shard_count())]
    stamps = TaskRun.objects.filter(name__in=names).aggregate(n=Count("pk"), oldest=Min("last_success_at"))
    if stamps["n"] == len(names):
        TaskRun.objects.update_or_create(
            name=SWEEP_TASK, defaults={"last_success_at": stamps["oldest"], "details": details}
        )
    else:
        TaskRun.objects.filter(name=SWEEP_TASK).update(details=details)


class SweepHealth(NamedTuple):
    last_success_at: datetime | None
    age_seconds: float | None
    is_stale: bool


def sweep_health(now: datetime | None = None) -> SweepHealth:
    """When statuses were last re-evaluated (by the shard that is furthest behind), how long ago,
    and whether that is too long (one query).

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
