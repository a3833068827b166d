"""Context every dashboard page shares: the user's organizations and the dead-man's switch.

Both are lazy, so pages that never show them (the admin, the login page) run no query for them.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from devices.queries import user_organizations
from devices.sweep import sweep_health


def dashboard(request: HttpRequest) -> dict:
    return {
        "user_organizations": SimpleLazyObject(lambda: user_organizations(request)),
        # (last_success_at, age_seconds, is_stale) of the staleness sweep: one small query.
        "sweep": SimpleLazyObject(sweep_health),
        "sweep_interval": settings.FLEETSTATUS_SWEEP_INTERVAL,
    }
