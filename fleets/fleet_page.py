"""The fleet page (/fleets/<org>/<fleet>/): counts now, a stacked-area chart over time, incidents.

The chart is SVG drawn by the template from points computed here (no chart library). Its data are
the fleet's count snapshots (fleets/history.py): the page reads chart and incidents in one query
whatever the fleet's size, so a 100,000-device fleet costs the same queries as a 3-device one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from django.db.models import OuterRef, Q, Subquery
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone

from devices import status_names
from devices.queries import user_organizations
from devices.views import dashboard_view, render_page
from fleets import history
from fleets.counts import status_counts
from fleets.history import STATUS_SLUGS, Point
from fleets.models import Fleet, Membership
from fleets.views import segments
from notifications.models import Channel

# URL value -> (label, span, width of one chart column). About a hundred columns: 7 px each on the
# page, and a table a screen-reader user can still go through.
RANGES: dict[str, tuple[str, timedelta, timedelta]] = {
    "24h": ("24 hours", timedelta(hours=24), timedelta(minutes=15)),
    "7d": ("7 days", timedelta(days=7), timedelta(hours=2)),
    "30d": ("30 days", timedelta(days=30), timedelta(hours=6)),
}
DEFAULT_RANGE = "24h"
# An incident: the share of active (not Inactive) devices that are not Online is above this, unless
# a notification channel covering the fleet sets a fleet threshold (incident_threshold).
INCIDENT_SHARE = 0.10
CHART_WIDTH = 720
CHART_HEIGHT = 200


@dataclass
class Column:
    """One chart column: the worst moment (highest share not Online) of [start, end)."""

    start: datetime
    end: datetime
    point: Point | None

    @property
    def counts(self) -> dict[str, int]:
        return self.point.counts if self.point else dict.fromkeys(STATUS_SLUGS, 0)

    @property
    def share_percent(self) -> float | None:
        return round(100 * self.point.share, 1) if self.point else None


@dataclass
class Incident:
    start: datetime
    end: datetime | None  # None: still going on
    peak: float
    peak_at: datetime
    from_range_start: bool  # it had started before the range did

    @property
    def peak_percent(self) -> float:
        return round(100 * self.peak, 1)

    # Times formatted here, as the template's date filter would ('c' and "Y-m-d H:i" in UTC), at a
    # fraction of its cost: a month can have dozens of incidents of three times each.
    @property
    def start_iso(self) -> str:
        return _utc_iso(self.start)

    @property
    def start_text(self) -> str:
        return _utc_minute(self.start)

    @property
    def end_iso(self) -> str:
        return _utc_iso(self.end) if self.end else ""

    @property
    def end_text(self) -> str:
        return _utc_minute(self.end) if self.end else ""

    @property
    def peak_at_iso(self) -> str:
        return _utc_iso(self.peak_at)

    @property
    def peak_at_text(self) -> str:
        return _utc_minute(self.peak_at)


def _utc_iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _utc_minute(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M}"


def columns(
    pairs: dict[int, tuple[Point, Point]], start: datetime, end: datetime, step: timedelta, now_point: Point
) -> list[Column]:
    """The columns of [start, end], from history.column_points(): each shows its worst moment, the
    counts in force when it began included, so a short outage is never averaged away. A column
    before the fleet's first snapshot has no data (point None); the last one includes `now_point`."""
    count = max(1, round((end - start) / step))
    result = []
    state: Point | None = None
    for n in range(count):
        col_start = start + n * step
        col_end = end if n == count - 1 else col_start + step
        candidates = [state] if state else []
        # A snapshot exactly at `end` computes to column `count`: it belongs to the last one.
        for key in (n, count) if n == count - 1 else (n,):
            if key in pairs:
                worst, state = pairs[key]
                candidates.append(worst)
        if n == count - 1:
            candidates.append(now_point)
        worst_point = max(candidates, key=lambda p: p.share) if candidates else None
        result.append(Column(col_start, col_end, worst_point))
    return result


def incidents(
    periods: list[history.Period], start: datetime, now_point: Point, threshold: float = INCIDENT_SHARE
) -> list[Incident]:
    """The periods above `threshold` as incidents, oldest first; `now_point` (the kept counts now)
    ends the last one or starts a new one."""
    found = []
    for n, period in enumerate(periods):
        if period.above:
            end = periods[n + 1].start if n + 1 < len(periods) else None
            found.append(Incident(period.start, end, period.peak, period.peak_at, period.start <= start))
    now_above = now_point.share > threshold
    last = found[-1] if found and found[-1].end is None else None
    if last and not now_above:
        last.end = now_point.at
    elif last and now_point.share > last.peak:
        last.peak, last.peak_at = now_point.share, now_point.at
    elif not last and now_above:
        found.append(Incident(now_point.at, None, now_point.share, now_point.at, False))
    return found


def with_incident_threshold(fleets):
    """Annotate fleets with the lowest fleet threshold (percent) of their organization's enabled
    notification channels that cover them (the whole organization, or chosen fleets among them this
    one), and that channel's name: None when no channel sets one. Subqueries of the fleet's own
    query, so the page runs no query for it."""
    covering = (
        Channel.objects.filter(organization_id=OuterRef("organization_id"), enabled=True, fleet_threshold__isnull=False)
        .filter(Q(fleets=OuterRef("pk")) | Q(fleets__isnull=True))
        .order_by("fleet_threshold", "name")
    )
    return fleets.annotate(
        channel_threshold=Subquery(covering.values("fleet_threshold")[:1]),
        channel_threshold_name=Subquery(covering.values("name")[:1]),
    )


def incident_threshold(fleet: Fleet) -> float:
    """The share above which a period is an incident: the covering channel's threshold, else 10 %."""
    percent = getattr(fleet, "channel_threshold", None)
    return INCIDENT_SHARE if percent is None else percent / 100


def chart(cols: list[Column], statuses: list[str]) -> dict:
    """SVG geometry: one polygon per status (stacked in the badge order) and, per column, its hover
    target, its title and its table row. Dates and numbers are formatted here, once per column:
    the template engine's date and number filters, run for every column, were the page's largest cost."""
    top = max((sum(c.counts.values()) for c in cols), default=0) or 1
    width = CHART_WIDTH / len(cols)
    scale = CHART_HEIGHT / top

    def y(value: int) -> str:
        return f"{CHART_HEIGHT - value * scale:.1f}"

    xs = [f"{n * width:.1f}" for n in range(len(cols) + 1)]
    lower = [0] * len(cols)
    areas = []
    for slug in STATUS_SLUGS:
        values = [c.counts[slug] for c in cols]
        if not any(values):
            continue
        upper = [low + v for low, v in zip(lower, values, strict=True)]
        edge = [f"{xs[n + k]},{y(value)}" for n, value in enumerate(upper) for k in (0, 1)]
        back = [f"{xs[n + k]},{y(lower[n])}" for n in range(len(cols) - 1, -1, -1) for k in (1, 0)]
        areas.append({"slug": slug, "label": status_names.label(slug), "points": " ".join(edge + back)})
        lower = upper
    rows = []
    for n, c in enumerate(cols):
        start = c.start.astimezone(UTC)
        rows.append(
            {
                "x": xs[n],
                "width": f"{width:.1f}",
                "iso": start.isoformat(timespec="seconds"),
                "label": _utc_minute(start),
                "title": _column_title(c),
                # Strings, not ints: the template engine localizes every number it prints.
                "cells": [str(c.counts[s]) for s in statuses] if c.point else None,
                "share": str(c.share_percent),
            }
        )
    ticks = [{"y": y(v), "value": str(v)} for v in sorted({0, top // 2, top})]
    return {
        "areas": areas,
        "rows": rows,
        "ticks": ticks,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "first": f"{cols[0].start.astimezone(UTC):%b %-d %H:%M}",
        "last": f"{cols[-1].end.astimezone(UTC):%b %-d %H:%M}",
    }


def _column_title(col: Column) -> str:
    when = f"{_utc_minute(col.start)}–{col.end.astimezone(UTC):%H:%M} UTC"
    if col.point is None:
        return f"{when}: no data"
    parts = [f"{status_names.label(s)} {n}" for s, n in col.counts.items() if n]
    return f"{when}: " + (", ".join(parts) if parts else "no devices") + f" ({col.share_percent}% not online)"


@dashboard_view
def fleet_detail(request: HttpRequest, org_slug: str, fleet_slug: str) -> HttpResponse:
    organization = next((o for o in user_organizations(request) if o.slug == org_slug), None)
    if organization is None:
        raise Http404("No such fleet in your organizations.")
    fleet = with_incident_threshold(Fleet.objects.filter(organization=organization, slug=fleet_slug)).first()
    if fleet is None:
        raise Http404("No such fleet in your organizations.")
    status_names.focus(organization.pk)
    notices = []
    range_key = request.GET.get("range", "").strip() or DEFAULT_RANGE
    if range_key not in RANGES:
        notices.append(
            f"Cannot show the range {range_key[:20]!r}; showing {RANGES[DEFAULT_RANGE][0]}. "
            f"Ranges: {', '.join(RANGES)}."
        )
        range_key = DEFAULT_RANGE
    label, span, step = RANGES[range_key]
    now = timezone.now()
    start = now - span
    counts = status_counts([organization.pk], [fleet.pk])
    # The kept counts (with pending deltas) are the newest point: the chart ends at "now".
    now_point = Point(now, counts)
    threshold = incident_threshold(fleet)
    points, periods = history.read(fleet.pk, start, now, step, threshold)
    cols = columns(points, start, now, step, now_point)
    shown = [s for s in STATUS_SLUGS if counts[s] or any(c.counts[s] for c in cols)]
    devices_url = f"{reverse('devices:list')}?{urlencode({'fleet': f'{organization.slug}/{fleet.slug}'}, safe='/')}"
    total = sum(counts.values())
    context = {
        "page_name": fleet.name,
        "now": now,
        "fleet": fleet,
        "organization": organization,
        "counts": segments(counts, devices_url, organization.status_names),
        "total": total,
        "devices_url": devices_url,
        "range_key": range_key,
        "range_label": label,
        "range_links": [{"key": k, "label": v[0], "selected": k == range_key} for k, v in RANGES.items()],
        "chart": chart(cols, shown),
        "table_statuses": [{"slug": s, "label": status_names.label(s)} for s in shown],
        "incidents": incidents(periods, start, now_point, threshold),
        "incident_percent": round(100 * threshold),
        "incident_from_channel": fleet.channel_threshold is not None,
        # Channels are the owners' (the Notifications page): members learn the threshold, not the name.
        "incident_channel": fleet.channel_threshold_name if organization.member_role == Membership.Role.OWNER else "",
        "notices": notices,
    }
    return render_page(request, "fleets/detail.html", "fleets/_detail_live.html", context)
