"""Context every dashboard page shares: the user's organizations and the dead-man's switch.

Both are lazy, so pages that never show them (the admin, the login page) run no query for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import SimpleLazyObject

from devices.models import TaskRun
from devices.queries import user_organizations


@dataclass(frozen=True)
class SweepHealth:
    last_run_at: datetime | None
    checked_at: datetime
    interval: int

    @property
    def age_seconds(self) -> int | None:
        if self.last_run_at is None:
            return None
        return max(int((self.checked_at - self.last_run_at).total_seconds()), 0)

    @property
    def stale(self) -> bool:
        """Never ran, or missed three runs in a row: statuses may no longer be true."""
        return self.age_seconds is None or self.age_seconds > 3 * self.interval


def last_sweep_at() -> datetime | None:
    # The staleness engine records each successful run in TaskRun; kept this small so it can switch
    # to devices.sweep.sweep_health() once that exists.
    return TaskRun.objects.filter(name="sweep").values_list("last_success_at", flat=True).first()


def sweep_health() -> SweepHealth:
    return SweepHealth(last_sweep_at(), timezone.now(), settings.FLEETSTATUS_SWEEP_INTERVAL)


def dashboard(request: HttpRequest) -> dict:
    return {
        "user_organizations": SimpleLazyObject(lambda: user_organizations(request)),
        "sweep": SimpleLazyObject(sweep_health),
    }
