"""The Fleets page: every fleet of the user's organizations with its status counts.

All counts come from one query over the kept counts per fleet and status (fleets/counts.py); the
organizations' usage is summed from the same rows, so the page runs the same few queries for 3
fleets or 1,000. Fleets are listed 50 per page.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple
from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone

from devices import status_names
from devices.queries import STATUS_SLUGS, fleet_status_counts, page_of, parse_page_number, user_organizations
from devices.status import Status
from devices.views import dashboard_view, render_page
from fleets.models import Fleet, Tier


def segments(counts: dict[str, int], href: str = "", naming: str | None = None) -> list[dict]:
    """Non-zero statuses in the badge order; `href` + "&status=<slug>" is each one's Devices link."""
    return [
        {
            "slug": s,
            "label": status_names.label(s, naming),
            "n": counts[s],
            "href": f"{href}&status={s}" if href else "",
        }
        for s in STATUS_SLUGS
        if counts[s]
    ]


class FleetRow(NamedTuple):
    """What a fleet card shows of a fleet (templates/jinja2/fleets/_cards.html)."""

    pk: int
    organization_id: int
    name: str
    slug: str
    device_type: str
    fleet_type: str
    cloudlink_enabled: bool

    def get_fleet_type_display(self) -> str:
        return Tier(self.fleet_type).label if self.fleet_type in Tier.values else self.fleet_type


FLEETS_PER_PAGE = 50
# URL value -> (label, key of a fleet entry to sort by, descending). Name is the tiebreaker of all.
FLEET_SORTS: dict[str, tuple[str, str, bool]] = {
    "name": ("Name", "", False),
    "devices": ("Most devices", "total", True),
    "not_online": ("Most not online", "not_online", True),
}
DEFAULT_FLEET_SORT = "name"


@dashboard_view
def fleet_list(request: HttpRequest) -> HttpResponse:
    """Organizations with their usage, and their fleets 50 per page (sorted by name, size or trouble).

    Every count comes from one query over the kept counts (fleets/counts.py), so an installation of
    a thousand fleets and a million devices costs the same six queries as one of three fleets; only
    the page's fleets are rendered (a thousand cards would be megabytes of HTML on every poll).
    """
    organizations = user_organizations(request)
    counts = fleet_status_counts(organizations)
    # Plain rows, not model instances: the page reads every fleet of the organizations, and building
    # a model instance per fleet would be most of its work.
    fleets = [
        FleetRow(*row)
        for row in Fleet.objects.filter(organization__in=organizations)
        .order_by("name", "pk")
        .values_list(*FleetRow._fields)
    ]
    notices = []
    sort = request.GET.get("sort", "").strip() or DEFAULT_FLEET_SORT
    if sort not in FLEET_SORTS:
        notices.append(f"Cannot sort fleets by {sort[:40]!r}; sorted by name. Sortable: {', '.join(FLEET_SORTS)}.")
        sort = DEFAULT_FLEET_SORT
    # A fleet slug is unique within its organization only; when the user sees two fleets with the
    # same slug, links name the organization too so each count leads to its own fleet.
    slug_uses = Counter(f.slug for f in fleets)
    devices_url = reverse("devices:list")
    fleets_url = reverse("fleets:list")
    zero = dict.fromkeys(STATUS_SLUGS, 0)

    sections = {org.pk: {"org": org, "fleets": [], "counts": dict(zero), "fleet_total": 0} for org in organizations}
    entries = []
    for fleet in fleets:
        fleet_counts = counts.get(fleet.pk) or zero
        section = sections[fleet.organization_id]
        section["fleet_total"] += 1
        for slug, n in fleet_counts.items():
            section["counts"][slug] += n
        total = sum(fleet_counts.values())
        entries.append(
            {"fleet": fleet, "counts": fleet_counts, "total": total, "not_online": total - fleet_counts[Status.ONLINE]}
        )
    # Grouped by organization (in the order of the user's organizations), sorted within each.
    org_order = {org.pk: i for i, org in enumerate(organizations)}
    _, key, descending = FLEET_SORTS[sort]
    if key:
        entries.sort(key=lambda e: -e[key] if descending else e[key])  # stable: name order within ties
    entries.sort(key=lambda e: org_order[e["fleet"].organization_id])

    paginator = Paginator(entries, FLEETS_PER_PAGE)
    number, notice = parse_page_number(request.GET.get("page", ""))
    page, beyond = page_of(paginator, number or 1)
    notices += [n for n in (notice, beyond) if n]

    for entry in page.object_list:
        fleet = entry["fleet"]
        section = sections[fleet.organization_id]
        param = f"{section['org'].slug}/{fleet.slug}" if slug_uses[fleet.slug] > 1 else fleet.slug
        # Links are built here, not with {% url %} in the template: fifty fleets times ten links.
        href = f"{devices_url}?{urlencode({'fleet': param}, safe='/')}"
        section["fleets"].append(
            {
                "fleet": fleet,
                "href": href,
                "page": f"{fleets_url}{section['org'].slug}/{fleet.slug}/",
                "total": entry["total"],
                "segments": segments(entry["counts"], href, section["org"].status_names),
            }
        )
    total = online = 0
    shown = []
    for section in sections.values():
        c = section["counts"]
        section["total"] = sum(c.values())
        # Inactive devices do not count toward the allowance (docs/design.md, Frozen and Inactive); frozen ones do.
        section["active"] = section["total"] - c[Status.INACTIVE]
        section["frozen"] = c[Status.FROZEN]
        section["segments"] = segments(c, naming=section["org"].status_names)
        allowance = section["org"].device_allowance
        section["over"] = allowance is not None and section["active"] > allowance
        if allowance is None:
            section["usage_percent"] = None
        else:
            section["usage_percent"] = min(100, round(100 * section["active"] / allowance)) if allowance else 100
        total += section["total"]
        online += c[Status.ONLINE]
        # A page shows the organizations whose fleets it lists; one without fleets shows on the first.
        if section["fleets"] or (not section["fleet_total"] and page.number == 1):
            section["fleets_elsewhere"] = section["fleet_total"] - len(section["fleets"])
            shown.append(section)
    sort_links = [{"key": k, "label": label, "selected": k == sort} for k, (label, _, _) in FLEET_SORTS.items()]
    context = {
        "page_name": "Fleets",
        "now": timezone.now(),
        "sections": shown,
        "has_organizations": bool(organizations),
        "fleet_count": len(fleets),
        "total": total,
        "not_online": total - online,
        "devices_url": devices_url,
        "page": page,
        "page_range": list(paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1)),
        "sort": sort,
        "sort_links": sort_links,
        "notices": notices,
    }
    return render_page(request, "fleets/list.html", "fleets/_live.html", context)
