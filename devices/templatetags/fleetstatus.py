"""The dashboard's template library: filters for statuses, times and sizes, and tags that draw the
shared pieces and hot fragments.

The HTML of the tags lives in templates/jinja2/ (macros, autoescaped by Jinja2); each tag here calls
its macro, so a Django template and a Jinja2 fragment draw a badge, an icon or a time from the same
markup. Jinja2 macros return markup that Django's engine does not escape a second time.

Times are rendered in UTC on the server (the no-JavaScript fallback); static/fleetstatus/app.js
rewrites every <time> into the viewer's timezone and keeps relative times ("3 min ago") fresh with
the same wording as `ago()` below.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from django import template
from django.template import engines
from django.utils import timezone
from markupsafe import Markup

from devices import status_names
from devices.queries import COLUMNS
from devices.status import Status

register = template.Library()

FOOTNOTE_IDS = {"online-vpn-only": ("1", "¹"), "online-heartbeat-only": ("2", "²")}


# markupsafe writes a quote as &#34; / &#39;, Django's escaping as &quot; / &#x27;: the pieces are
# given Django's spelling so a page reads the same whichever engine escaped a name.
_QUOTES = ((Markup("&#34;"), Markup("&quot;")), (Markup("&#39;"), Markup("&#x27;")))


def render_macro(template_name: str, macro: str, *args: Any) -> Markup:
    """Call a macro of templates/jinja2/ (Jinja2 caches the compiled template); its autoescaped markup."""
    html = getattr(engines["jinja2"].env.get_template(template_name).module, macro)(*args)
    for markupsafe_quote, django_quote in _QUOTES:
        if markupsafe_quote in html:  # rare (a quote in a name), and a scan is cheaper than a copy
            html = html.replace(markupsafe_quote, django_quote)
    return html


def icon_shapes() -> dict[str, str]:
    """The inner SVG of each status's icon (and of "never"), from templates/jinja2/_components.html."""
    return {
        slug: str(render_macro("_components.html", "shape", slug)) for slug in (*(s.value for s in Status), "never")
    }


# --- Filters -----------------------------------------------------------------------------------------


@register.filter
def status_label(slug: str, naming: str | None = None) -> str:
    """The status's label in `naming`, else in the naming of the page's organization (devices/status_names.py)."""
    return status_names.label(slug, naming)


@register.filter
def footnote_marker(slug: str) -> str:
    return FOOTNOTE_IDS.get(slug, ("", ""))[1]


@register.filter
def footnote_id(slug: str) -> str:
    return FOOTNOTE_IDS.get(slug, ("", ""))[0]


@register.filter
def duration(value: timedelta | float | None) -> str:
    """'2 d 3 h', '4 min 10 s': the two largest units."""
    if value is None:
        return "—"
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    if seconds < 1:
        return "0 s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
        if len(parts) == 2 or (parts and seconds == 0):
            break
    return " ".join(parts)


@register.filter
def percent(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "no data"
    number = round(value * 100, digits)
    # 99.96 % must not round up to a reassuring 100 % when the device was down at all.
    if number >= 100 and value < 1:
        number = 100 - 10**-digits
    if number <= 0 and value > 0:
        number = 10**-digits
    return f"{number:.{digits}f} %"


@register.filter
def megabytes(value: int | None) -> str:
    if value is None:
        return "—"
    if value >= 1024:
        return f"{value / 1024:.1f} GB"
    return f"{value} MB"


@register.filter
def uptime_width(window, kind: str) -> float:
    """Width (%) of one part of an uptime bar (devices.summary.Uptime)."""
    return window.percent_of_span(kind)


def badge_progress(device) -> int | None:
    """The progress the badge shows: the download for Updating, provisioning for the other two."""
    status = device.overall_status
    if status == Status.UPDATING:
        return device.download_progress
    if status in (Status.CONFIGURING, Status.POST_PROVISIONING):
        return device.provisioning_progress
    return None


# --- Times -------------------------------------------------------------------------------------------


def utc_iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds")


def utc_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def utc_clock(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%H:%M:%S")


def _span_text(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def ago(value: datetime, now: datetime, mode: str = "ago") -> str:
    """Compact relative time; app.js's relative() must word it the same.

    mode "ago": "3 min ago" / "in 3 min"; mode "for": "for 3 min" (how long a state has held).
    """
    seconds = (now - value).total_seconds()
    if mode == "for":
        return "for a moment" if seconds < 5 else f"for {_span_text(max(seconds, 0))}"
    if abs(seconds) < 5:
        return "just now"
    text = _span_text(abs(seconds))
    return f"in {text}" if seconds < 0 else f"{text} ago"


def _now(context) -> datetime:
    return context.get("now") or timezone.now()


# --- Tags: the pieces of templates/jinja2/_components.html ------------------------------------------------


@register.simple_tag
@lru_cache(maxsize=256)
def status_icon(slug: str, css_class: str = "icon") -> Markup:
    # Cached: the same few icons are drawn many times per page (restart to see an edited icon). Also
    # the Jinja2 filter slug|icon(css).
    return render_macro("_components.html", "svg_icon", slug, css_class)


@register.simple_tag
def badge(device) -> Markup:
    """The status badge of a device; also the Jinja2 filter device|badge."""
    status = device.overall_status
    naming = status_names.naming_of(device)
    return _badge(status, device.frozen_reason if status == Status.FROZEN else "", badge_progress(device), naming)


@lru_cache(maxsize=1024)
def _badge(status: str, frozen_reason: str, progress: int | None, naming: str) -> Markup:
    # A page's fifty rows show a handful of distinct badges; the row's organization's naming is part of the key.
    return render_macro("_components.html", "status_badge", status, frozen_reason, progress, naming)


@register.simple_tag(takes_context=True)
def reltime(context, value: datetime | None, empty: str = "never", mode: str = "ago") -> Markup:
    """'3 min ago' (or 'for 3 min'), with the exact time on hover; `empty` when there is no time."""
    return render_macro("_components.html", "reltime", value, _now(context), empty, mode)


@register.simple_tag
def abstime(value: datetime | None, empty: str = "—") -> Markup:
    """An exact date and time (UTC here; the viewer's timezone once app.js runs)."""
    return render_macro("_components.html", "abstime", value, empty)


@register.simple_tag
def clocktime(value: datetime) -> Markup:
    """HH:MM:SS (UTC here; local once app.js runs)."""
    return render_macro("_components.html", "clocktime", value)


# --- Tags: the hot fragments, whole ------------------------------------------------------------------------


# Every column, for a caller that does not choose.
ALL_DEVICE_COLUMNS = frozenset(COLUMNS)


@register.simple_tag(takes_context=True)
def device_rows(context, devices, devices_url: str, fleet_link: str, columns=ALL_DEVICE_COLUMNS) -> Markup:
    """The Devices table's rows (templates/jinja2/devices/_rows.html), with the cells of `columns`."""
    return render_macro("devices/_rows.html", "device_rows", devices, devices_url, fleet_link, _now(context), columns)


@register.simple_tag
def history_rows(rows) -> Markup:
    """The Device Summary's history rows (templates/jinja2/devices/_history_rows.html)."""
    return render_macro("devices/_history_rows.html", "history_rows", rows)


@register.simple_tag
def status_strips(strips) -> Markup:
    """The Device Summary's status strips (templates/jinja2/devices/_strip.html)."""
    return render_macro("devices/_strip.html", "status_strips", strips)


@register.simple_tag
def chart_hits(chart: dict) -> Markup:
    """The fleet chart's hover targets, one per column (templates/jinja2/fleets/_chart.html)."""
    return render_macro("fleets/_chart.html", "chart_hits", chart)


@register.simple_tag
def chart_rows(chart: dict, colspan: int) -> Markup:
    """The rows of the fleet chart's table, one per column (templates/jinja2/fleets/_chart.html)."""
    return render_macro("fleets/_chart.html", "chart_rows", chart, colspan)


@register.simple_tag
def status_bar(segments: list[dict], name: str) -> Markup:
    """A fleet's stacked bar and legend (the macro the Fleets page's cards use too)."""
    return render_macro("fleets/_cards.html", "status_bar", segments, name)


@register.simple_tag
def fleet_cards(cards: list[dict], org) -> Markup:
    """An organization's fleet cards on the Fleets page (templates/jinja2/fleets/_cards.html)."""
    return render_macro("fleets/_cards.html", "fleet_cards", cards, org)


@register.simple_tag
def fleet_options(fleets, query, multi_org: bool) -> Markup:
    """The Devices page's fleet <option>s (templates/jinja2/devices/_filters.html): one per fleet of
    the organizations, the one the page shows selected."""
    selected = query.fleet.pk if query.fleet else None
    return render_macro("devices/_filters.html", "fleet_options", fleets, selected, multi_org)
