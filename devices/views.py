"""The Devices page, the Device Summary page and the CSV export.

Each page is one view and one fragment template: the full page includes the fragment, and the htmx
poll gets the same fragment alone (plus the <title> and the dead-man's switch line, swapped out of
band). Nothing here decides a status: the stored `overall_status` is what every page shows.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import wraps
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render, resolve_url
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.views.decorators.http import require_safe

from devices import saved_views, status_names
from devices.queries import (
    COLUMNS,
    FIXED_COLUMNS,
    OPTIONAL_COLUMNS,
    ROW_FIELDS,
    SORTS,
    STATUS_SLUGS,
    device_status_counts,
    device_tags,
    filter_devices,
    order_devices,
    page_from_search,
    paginate,
    parse_device_query,
    scoped_devices,
    search_page_ids,
    user_columns,
    user_organizations,
)
from devices.status import Status
from devices.strip import strips
from devices.summary import UPTIME_WINDOWS, explain, history, uptime
from fleets.models import Fleet

EXPORT_CHUNK = 2000


# --- Shared by every dashboard page ---------------------------------------------------------------------


def dashboard_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Login required; an htmx poll from a logged-out browser gets a redirect header, not a login form."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            if request.htmx:
                # The page, not the polled fragment, is what the user should return to.
                back = request.htmx.current_url_abs_path or request.get_full_path()
                response = HttpResponse("Your session has ended; log in again.", status=403, content_type="text/plain")
                response["HX-Redirect"] = f"{resolve_url(settings.LOGIN_URL)}?{urlencode({'next': back})}"
                return response
            return redirect_to_login(request.get_full_path())
        with status_names.activate(user_organizations(request)):
            response = view(request, *args, **kwargs)
        # The full page and its fragment share a URL: caches must keep them apart, and a back
        # button must never show a bare fragment.
        patch_vary_headers(response, ("HX-Request",))
        patch_cache_control(response, private=True, no_cache=True)
        return response

    return require_safe(wrapped)


def is_fragment_request(request: HttpRequest) -> bool:
    return bool(request.htmx) and not request.htmx.boosted


def render_page(
    request: HttpRequest, page_template: str, fragment_template: str, context: dict, status: int = 200
) -> HttpResponse:
    context.setdefault("now", timezone.now())
    context["fragment_template"] = fragment_template
    if is_fragment_request(request):
        return render(request, "_live_response.html", context, status=status)
    return render(request, page_template, context, status=status)


# --- Devices page -----------------------------------------------------------------------------------


@dashboard_view
def device_list(request: HttpRequest) -> HttpResponse:
    organizations = user_organizations(request)
    query = parse_device_query(request.GET, organizations)
    now = timezone.now()

    # Counts honour every filter but the status one, so each count is what its link will show.
    counts = device_status_counts(organizations, query)
    shown = query.statuses or list(STATUS_SLUGS)
    total = sum(counts[s] for s in shown)
    not_online = sum(counts[s] for s in shown if s != Status.ONLINE)

    rows = scoped_devices(organizations).select_related("fleet").only(*ROW_FIELDS)
    if page_from_search(query):
        # The page's ids from the narrow search rows, then those fifty devices: one query more, but
        # never the devices of every match looked up to sort them.
        page, page_notice = paginate(search_page_ids(query), total, query)
        ids = list(page.object_list)
        found = rows.in_bulk(ids)
        page.object_list = [found[i] for i in ids if i in found]
    else:
        page, page_notice = paginate(order_devices(filter_devices(rows, query), query), total, query)
        page.object_list = list(page.object_list)
    # ?cols= in the URL (a shared link, a saved view) wins over the user's own choice.
    chosen = query.columns if query.columns is not None else user_columns(request)
    shown = frozenset((*FIXED_COLUMNS, *chosen))
    if "tags" in shown:
        # The page's tags in one query for all its rows, never one per row; none when not shown.
        tags = device_tags(d.pk for d in page.object_list)
        for device in page.object_list:
            device.tag_map = tags.get(device.pk, {})
    notices = list(query.notices) + ([page_notice] if page_notice else [])

    columns = []
    for key, label in COLUMNS.items():
        if key not in shown:
            continue
        active = key == query.sort
        columns.append(
            {
                "key": key,
                "label": label,
                "next": "" if key not in SORTS else f"-{key}" if active and not query.descending else key,
                "aria_sort": ("descending" if query.descending else "ascending") if active else "",
            }
        )
    context = {
        "page_name": "Devices",
        "now": now,
        "query": query,
        "counts": [
            {
                "slug": s,
                "label": status_names.label(s),
                "n": counts[s],
                "selected": s in query.statuses,
            }
            for s in STATUS_SLUGS
        ],
        "count_all": sum(counts.values()),
        "total": total,
        "not_online": not_online,
        "page": page,
        "page_range": list(page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1)),
        "columns": columns,
        "shown_columns": shown,
        # The chooser (full page only): the optional columns, ticked as shown.
        "column_choices": [{"key": k, "label": COLUMNS[k], "checked": k in shown} for k in OPTIONAL_COLUMNS],
        "columns_from_url": query.columns is not None,
        # The view without ?cols=, which the chooser returns to; and with the columns shown, which
        # "Save view" stores, so a saved view opens with the columns it was saved with.
        "view_query_without_columns": saved_views.query_string(dataclasses.replace(query, columns=None)),
        "view_query": saved_views.query_string(dataclasses.replace(query, columns=tuple(chosen))),
        "sort_label": SORTS[query.sort][0],
        "notices": notices,
        "filtered": bool(query.statuses or query.fleets or query.narrowed),
        # Only the full page shows the filter form; the polled fragment never touches this.
        "fleet_choices": Fleet.objects.filter(organization__in=organizations)
        .order_by("organization__name", "name", "pk")
        .values("pk", "slug", "name", "organization__slug", "organization__name"),
        "multi_org": len(organizations) > 1,
        "export_query": _export_query(request),
        "devices_url": reverse("devices:list"),
        "fleet_link": _fleet_link(request),
        # Lazy: only the full page's menu reads it, in one query.
        "saved_views": saved_views.menu(request.user, organizations),
    }
    status = 404 if query.fleet_not_found else 200
    return render_page(request, "devices/list.html", "devices/_live.html", context, status=status)


def _fleet_link(request: HttpRequest) -> str:
    """The URL prefix of a row's fleet link: this view narrowed to a fleet (the slug is appended)."""
    params = request.GET.copy()
    params.pop("fleet", None)
    params.pop("page", None)
    rest = params.urlencode()
    return f"{reverse('devices:list')}?{rest + '&' if rest else ''}fleet="


def _export_query(request: HttpRequest) -> str:
    params = request.GET.copy()
    params.pop("page", None)
    # The CSV has its own fixed columns (device_export): the table's choice does not apply to it.
    params.pop("cols", None)
    return params.urlencode()


# --- CSV export ---------------------------------------------------------------------------------------

EXPORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("uuid", "uuid"),
    ("name", "name"),
    ("status", "overall_status"),
    ("status_changed_at", "status_changed_at"),
    ("organization", "organization__slug"),
    ("fleet", "fleet__slug"),
    ("device_type", "device_type"),
    ("os_version", "os_version"),
    ("os_variant", "os_variant"),
    ("supervisor_version", "supervisor_version"),
    ("release", "release"),
    ("ip_address", "ip_address"),
    ("mac_address", "mac_address"),
    ("last_seen_at", "last_seen_at"),
    ("heartbeat", "api_heartbeat_state"),
    ("last_heartbeat_at", "last_api_heartbeat_at"),
    ("cloudlink_connected", "is_connected_to_vpn"),
    ("last_vpn_event", "last_vpn_event"),
    ("is_active", "is_active"),
    ("is_frozen", "is_frozen"),
    ("frozen_reason", "frozen_reason"),
    ("provisioning_state", "provisioning_state"),
    ("provisioning_progress", "provisioning_progress"),
    ("update_status", "update_status"),
    ("update_status_changed_at", "update_status_changed_at"),
    ("download_progress", "download_progress"),
    ("created_at", "created_at"),
    ("activated_at", "activated_at"),
)


class _Echo:
    """csv.writer wants a file; this one hands each formatted line straight back."""

    def write(self, value: str) -> str:
        return value


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        # Device-reported text opened in a spreadsheet must not run as a formula.
        return "'" + value
    return value


def _chunks(rows: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dashboard_view
def device_export(request: HttpRequest) -> StreamingHttpResponse:
    organizations = user_organizations(request)
    query = parse_device_query(request.GET, organizations)
    if query.fleet_not_found:
        raise Http404("No such fleet in your organizations.")
    rows = order_devices(filter_devices(scoped_devices(organizations), query), query)
    # values_list joins fleet and organization for their slugs in the same query; iterator() streams
    # with a server-side cursor, so 100,000 rows never sit in memory at once.
    values = rows.values_list(*(field for _, field in EXPORT_COLUMNS), "pk").iterator(chunk_size=EXPORT_CHUNK)

    def lines() -> Iterator[str]:
        writer = csv.writer(_Echo())
        yield writer.writerow([*(name for name, _ in EXPORT_COLUMNS), "tags"])
        for chunk in _chunks(values, EXPORT_CHUNK):
            # The chunk's tags in one query, as a JSON object per device: unambiguous whatever a value holds.
            tags = device_tags(row[-1] for row in chunk)
            for row in chunk:
                tag_map = tags.get(row[-1])
                yield writer.writerow([*(_cell(v) for v in row[:-1]), json.dumps(tag_map) if tag_map else ""])

    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="devices-{stamp}.csv"'
    return response


# --- Device Summary ---------------------------------------------------------------------------------


@dashboard_view
def device_detail(request: HttpRequest, uuid: str) -> HttpResponse:
    organizations = user_organizations(request)
    device = scoped_devices(organizations).select_related("fleet", "organization").filter(uuid=uuid.lower()).first()
    if device is None:
        raise Http404("No such device in your organizations.")
    status_names.focus(device.organization_id)
    now = timezone.now()
    # ?before=<transition id>: an older page of the history (the link under the table).
    before_param = request.GET.get("before", "").strip()
    history_notice = ""
    page = None
    if before_param:
        if before_param.isdigit() and int(before_param) < 2**63:
            page = history(device, now, before=int(before_param))
        if page is None:
            history_notice = f"{before_param[:20]!r} is not a status change of this device; showing the latest."
    older = page is not None
    rows, more = page if older else history(device, now)
    # The newest transition's status is the one the uptime counts up to now (the stored status on
    # older pages, which do not read the newest transition).
    current = rows[0].transition.to_status if rows and not older else device.overall_status
    context = {
        "page_name": device.name,
        "now": now,
        "device": device,
        "explanation": explain(device, now),
        "history": rows,
        "history_more": more,
        "history_older": older,
        "history_next": rows[-1].transition.pk if more else None,
        "history_notice": history_notice,
        "uptime": uptime(device, now, current),
        "strips": strips(device, now, current),
        "uptime_windows": [label for label, _ in UPTIME_WINDOWS],
        "not_online": 0 if device.overall_status == Status.ONLINE else 1,
        "devices_url": reverse("devices:list"),
    }
    return render_page(request, "devices/detail.html", "devices/_summary.html", context)
