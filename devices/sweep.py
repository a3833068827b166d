"""The periodic sweep that keeps statuses true as time passes (Celery beat calls run_sweep)."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from devices.models import TaskRun
from devices.services import expire_heartbeats

SWEEP_TASK = "sweep"


def run_sweep(now: datetime | None = None) -> dict:
    now = now or timezone.now()
    expired = expire_heartbeats(now)
    details = {"expired": expired}
    TaskRun.objects.update_or_create(name=SWEEP_TASK, defaults={"last_success_at": timezone.now(), "details": details})
    return details
