"""The Fleets page: every fleet of the user's organizations with its status counts.

All counts come from one GROUP BY over devices (fleet, status); the organizations' usage is summed
from the same rows, so the page runs the same few queries for 3 fleets or 1,000.
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone

from devices.queries import STATUS_SLUGS, fleet_status_counts, user_organizations
from devices.status import Status
from devices.views import dashboard_view, render_page
from fleets.models import Fleet


def _segments(counts: dict[str, int], href: str = "") -> list[dict]:
    """Non-zero statuses in the badge order; `href` + "&status=<slug>" is each one's Devices link."""
    return [
        {"slug": s, "label": Status(s).label, "n": counts[s], "href": f"{href}&status={s}" if href else ""}
        for s in STATUS_SLUGS
        if counts[s]
    ]


@dashboard_view
def fleet_list(request: HttpRequest) -> HttpResponse:
    organizations = user_organizations(request)
    counts = fleet_status_counts(organizations)
    fleets = list(Fleet.objects.filter(organization__in=organizations).order_by("name", "pk"))
    # A fleet slug is unique within its organization only; when the user sees two fleets with the
    # same slug, links name the organization too so each count leads to its own fleet.
    slug_uses = Counter(f.slug for f in fleets)
    devices_url = reverse("devices:list")

    sections = {org.pk: {"org": org, "fleets": [], "counts": dict.fromkeys(STATUS_SLUGS, 0)} for org in organizations}
    for fleet in fleets:
        fleet_counts = counts.get(fleet.pk) or dict.fromkeys(STATUS_SLUGS, 0)
        section = sections[fleet.organization_id]
        for slug, n in fleet_counts.items():
            section["counts"][slug] += n
        param = f"{section['org'].slug}/{fleet.slug}" if slug_uses[fleet.slug] > 1 else fleet.slug
        # Links are built here, not with {% url %} in the template: a thousand fleets times ten
        # links each is most of this page's rendering time otherwise.
        href = f"{devices_url}?{urlencode({'fleet': param}, safe='/')}"
        section["fleets"].append(
            {
                "fleet": fleet,
                "href": href,
                "total": sum(fleet_counts.values()),
                "segments": _segments(fleet_counts, href),
            }
        )
    total = online = 0
    for section in sections.values():
        c = section["counts"]
        section["total"] = sum(c.values())
        # Inactive devices do not count toward the allowance (DESIGN.md §2.3); frozen ones do.
        section["active"] = section["total"] - c[Status.INACTIVE]
        section["frozen"] = c[Status.FROZEN]
        section["segments"] = _segments(c)
        allowance = section["org"].device_allowance
        section["over"] = allowance is not None and section["active"] > allowance
        if allowance is None:
            section["usage_percent"] = None
        else:
            section["usage_percent"] = min(100, round(100 * section["active"] / allowance)) if allowance else 100
        total += section["total"]
        online += c[Status.ONLINE]
    context = {
        "page_name": "Fleets",
        "now": timezone.now(),
        "sections": list(sections.values()),
        "fleet_count": len(fleets),
        "total": total,
        "not_online": total - online,
        "devices_url": devices_url,
    }
    return render_page(request, "fleets/list.html", "fleets/_live.html", context)
