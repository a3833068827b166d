"""The Fleets page: every fleet of the user's organizations with its status counts.

All counts come from the kept counts per fleet and status (fleets/counts.py): the organizations'
usage in one query, the page's 50 fleets sorted and counted in the database in another, so the page
runs the same few queries, and does the same Python work, for 3 fleets or 1,000.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone

from devices import status_names
from devices.queries import STATUS_SLUGS, page_of, parse_page_number, user_organizations
from devices.status import Status
from devices.views import dashboard_view, render_page
from fleets.counts import fleet_page, organization_status_counts
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
# URL value -> (label, fleets.counts.fleet_page() sort, descending). Name is the tiebreaker of all.
FLEET_SORTS: dict[str, tuple[str, str, bool]] = {
    "name": ("Name", "", False),
    "devices": ("Most devices", "total", True),
    "not_online": ("Most not online", "not_online", True),
}
DEFAULT_FLEET_SORT = "name"


class _FleetPages:
    """The sequence the Paginator pages through: its length from the fleets per organization, each
    slice one fleet_page() query (the page's fleets, sorted and counted in the database)."""

    def __init__(self, organization_ids: list[int], sort_key: str, count: int) -> None:
        self.organization_ids, self.sort_key, self._count = organization_ids, sort_key, count

    def count(self) -> int:
        return self._count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, window: slice) -> list:
        start, stop = window.start or 0, window.stop if window.stop is not None else self._count
        return fleet_page(self.organization_ids, self.sort_key, start, stop - start)


@dashboard_view
def fleet_list(request: HttpRequest) -> HttpResponse:
    """Organizations with their usage, and their fleets 50 per page (sorted by name, size or trouble).

    The organizations' counts come from one query over the kept counts (fleets/counts.py), and the
    page's fleets with their counts from another that sorts and cuts the page in the database, so
    an installation of a thousand fleets and a million devices costs the same queries, and about the
    same Python, as one of three fleets; only the page's fleets are rendered.
    """
    organizations = user_organizations(request)
    org_ids = [org.pk for org in organizations]
    notices = []
    sort = request.GET.get("sort", "").strip() or DEFAULT_FLEET_SORT
    if sort not in FLEET_SORTS:
        notices.append(f"Cannot sort fleets by {sort[:40]!r}; sorted by name. Sortable: {', '.join(FLEET_SORTS)}.")
        sort = DEFAULT_FLEET_SORT
    fleet_totals = dict(
        Fleet.objects.filter(organization__in=org_ids)
        .order_by()
        .values_list("organization_id")
        .annotate(n=Count("pk"))
        .values_list("organization_id", "n")
    )
    org_counts = organization_status_counts(org_ids)
    devices_url = reverse("devices:list")
    fleets_url = reverse("fleets:list")
    sections = {
        org.pk: {"org": org, "fleets": [], "counts": org_counts[org.pk], "fleet_total": fleet_totals.get(org.pk, 0)}
        for org in organizations
    }
    _, key, _ = FLEET_SORTS[sort]
    paginator = Paginator(_FleetPages(org_ids, key, sum(fleet_totals.values())), FLEETS_PER_PAGE)
    number, notice = parse_page_number(request.GET.get("page", ""))
    page, beyond = page_of(paginator, number or 1)
    notices += [n for n in (notice, beyond) if n]

    for columns, slug_uses, fleet_counts in page.object_list:
        fleet = FleetRow(*columns)
        section = sections[fleet.organization_id]
        # A fleet slug is unique within its organization only; when the user sees two fleets with
        # the same slug, links name the organization too so each count leads to its own fleet.
        param = f"{section['org'].slug}/{fleet.slug}" if slug_uses > 1 else fleet.slug
        # Links are built here, not with {% url %} in the template: fifty fleets times ten links.
        href = f"{devices_url}?{urlencode({'fleet': param}, safe='/')}"
        section["fleets"].append(
            {
                "fleet": fleet,
                "href": href,
                "page": f"{fleets_url}{section['org'].slug}/{fleet.slug}/",
                "total": sum(fleet_counts.values()),
                "segments": segments(fleet_counts, href, section["org"].status_names),
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
        "fleet_count": paginator.count,
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
