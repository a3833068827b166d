"""Template helpers for the dashboard: status icons, the badge's progress, and times.

Times are rendered in UTC on the server (the no-JavaScript fallback); static/fleetstatus/app.js
rewrites every <time> into the viewer's timezone and keeps relative times ("3 min ago") fresh with
the same wording as `ago()` below.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from html import escape as html_escape

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from devices.status import Status

register = template.Library()

# One distinct shape per status, drawn in currentColor on a 16×16 grid. Shape, not colour alone,
# tells the statuses apart (colour-blind users, greyscale printouts).
_STROKE = 'fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"'
ICONS: dict[str, str] = {
    # a filled circle with a check: both links work
    "online": '<circle cx="8" cy="8" r="7" fill="currentColor"/>'
    '<path d="M4.6 8.3l2.2 2.2 4.6-4.8" fill="none" stroke="#fff" stroke-width="1.9" stroke-linecap="round" stroke-linejoin="round"/>',
    # an arch: only the tunnel is up
    "online-vpn-only": '<path d="M1.5 14.5V8a6.5 6.5 0 0 1 13 0v6.5h-3.6V8a2.9 2.9 0 0 0-5.8 0v6.5z" fill="currentColor"/>',
    # a pulse line: only the heartbeat arrives
    "online-heartbeat-only": f'<path d="M1 8.5h3.2l1.9-5 3.4 9.2 1.9-4.2H15" {_STROKE} stroke-width="2"/>',
    # a circle with a cross: neither link
    "offline": '<circle cx="8" cy="8" r="7" fill="currentColor"/>'
    '<path d="M5.4 5.4l5.2 5.2M10.6 5.4l-5.2 5.2" stroke="#fff" stroke-width="1.9" stroke-linecap="round"/>',
    # a cog: applying configuration
    "configuring": '<circle cx="8" cy="8" r="5.3" fill="none" stroke="currentColor" stroke-width="3" stroke-dasharray="2.08 2.08"/>'
    '<circle cx="8" cy="8" r="4.1" fill="none" stroke="currentColor" stroke-width="2.2"/>',
    # an arrow into a tray: downloading a release
    "updating": f'<path d="M8 1.8v8.4M4.4 6.8 8 10.4l3.6-3.6M2 11.2v3h12v-3" {_STROKE}/>',
    # an hourglass: waiting to come up from internal storage
    "post-provisioning": '<path d="M3.5 1.5h9M3.5 14.5h9" stroke="currentColor" stroke-width="1.6" stroke-linecap="round"/>'
    '<path d="M4.6 2.2h6.8L8 8l3.4 5.8H4.6L8 8z" fill="currentColor"/>',
    # a power symbol: switched off by a user
    "inactive": f'<path d="M8 1.6v6" {_STROKE}/><path d="M4.4 4.1a5.4 5.4 0 1 0 7.2 0" {_STROKE}/>',
    # a snowflake: frozen
    "frozen": f'<path d="M8 1.2v13.6M2.1 4.6l11.8 6.8M2.1 11.4l11.8-6.8M6.2 2.4 8 3.8l1.8-1.4M6.2 13.6 8 12.2l1.8 1.4" {_STROKE} stroke-width="1.5"/>',
    # not a status: a hollow circle for "never" / "switched off" in the signal columns
    "never": '<circle cx="8" cy="8" r="6.1" fill="none" stroke="currentColor" stroke-width="1.8"/><path d="M5.5 8h5" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/>',
}
FOOTNOTE_IDS = {"online-vpn-only": ("1", "¹"), "online-heartbeat-only": ("2", "²")}


@register.simple_tag
@lru_cache(maxsize=256)
def status_icon(slug: str, css_class: str = "icon") -> SafeString:
    # Cached: a Fleets page with a thousand fleets draws the same few icons thousands of times.
    inner = ICONS.get(slug, '<circle cx="8" cy="8" r="6" fill="currentColor"/>')
    return mark_safe(
        f'<svg class="{css_class} {css_class}--{slug}" viewBox="0 0 16 16" width="16" height="16" '
        f'aria-hidden="true" focusable="false">{inner}</svg>'
    )


@register.filter
def status_label(slug: str) -> str:
    try:
        return Status(slug).label
    except ValueError:
        return slug


@register.filter
def footnote_marker(slug: str) -> str:
    return FOOTNOTE_IDS.get(slug, ("", ""))[1]


@register.filter
def footnote_id(slug: str) -> str:
    return FOOTNOTE_IDS.get(slug, ("", ""))[0]


@register.simple_tag
def badge_progress(device) -> int | None:
    """The progress the badge shows: the download for Updating, provisioning for the other two."""
    status = device.overall_status
    if status == Status.UPDATING:
        return device.download_progress
    if status in (Status.CONFIGURING, Status.POST_PROVISIONING):
        return device.provisioning_progress
    return None


# --- The Devices table's heartbeat and cloudlink cells -------------------------------------------------
# Python rather than included templates: they render 50 times per page and every 10 s per viewer.


def _signal(kind: str, icon: str, label: str, title: str = "") -> SafeString:
    title_attr = format_html(' title="{}"', title) if title else ""
    return format_html(
        '<span class="signal signal--{}"{}>{}{}</span>', kind, title_attr, status_icon(icon, "signal__icon"), label
    )


@register.simple_tag(takes_context=True)
def heartbeat_cell(context, device) -> SafeString:
    last = device.last_api_heartbeat_at
    title = f"Last target-state fetch {_utc(last):%Y-%m-%d %H:%M:%S} UTC" if last else "No target-state fetch yet"
    state = device.api_heartbeat_state
    if state == "online":
        return _signal("yes", "online", "Online", title)
    if state == "offline":
        return _signal("no", "offline", "Offline", title)
    return _signal("never", "never", "Never", title)


@register.simple_tag(takes_context=True)
def cloudlink_cell(context, device) -> SafeString:
    """Connected (for how long) / not connected (last up when) / never / switched off."""
    if device.is_connected_to_vpn:
        since = format_html(
            ' <span class="signal__since">{}</span>', reltime(context, device.last_vpn_event, "", "for")
        )
        return format_html("{}{}", _signal("yes", "online", "Connected"), since if device.last_vpn_event else "")
    if not device.effective_cloudlink:
        return _signal("off", "never", "Off", "Cloudlink is switched off for this device")
    if device.last_connectivity_event:
        since = format_html(' <span class="signal__since">last up {}</span>', reltime(context, device.last_vpn_event))
        return format_html("{}{}", _signal("no", "offline", "Not connected"), since if device.last_vpn_event else "")
    return _signal("never", "never", "Never", "The tunnel has never connected")


# --- The Fleets page's card ---------------------------------------------------------------------------


@register.simple_tag
def fleet_card(card: dict, org) -> SafeString:
    """One fleet's card (fleets/views.py builds `card`).

    Plain string building, not a template or format_html: an organization with a thousand fleets
    renders a thousand of these per page view and per poll, nine statuses each. Only text that
    comes from users (names, slugs, device types, links) needs escaping; slugs of statuses, their
    labels and counts are ours.
    """
    fleet = card["fleet"]
    total = card["total"]
    meta = f"{fleet.device_type or 'any device type'} · {fleet.get_fleet_type_display().lower()} fleet"
    if not fleet.cloudlink_enabled:
        meta += " · cloudlink off"
    warn = ""
    if fleet.fleet_type == "paid" and org.tier == "free":
        warn = (
            f'<p class="fleet-card__warn">{status_icon("frozen", "icon")}'
            "A paid fleet type on a free tier: its active devices are frozen.</p>"
        )
    name = _esc(fleet.name)
    if total:
        bar = "".join(
            f'<span class="stackbar__seg seg--{s["slug"]}" style="flex-grow: {int(s["n"])}" title="{s["label"]}: {int(s["n"])}"></span>'
            for s in card["segments"]
        )
        legend = "".join(
            f'<li><a href="{_esc(s["href"])}" class="legend__item">{status_icon(s["slug"], "legend__icon")}'
            f'<span class="legend__label">{s["label"]}{_marker(s["slug"])}</span> '
            f'<span class="legend__n" data-status-count="{s["slug"]}">{int(s["n"])}</span></a></li>'
            for s in card["segments"]
        )
        body = f'<div class="stackbar" aria-hidden="true">{bar}</div><ul class="legend" aria-label="{name} by status">{legend}</ul>'
    else:
        body = (
            '<div class="stackbar stackbar--empty" aria-hidden="true"></div><p class="muted small">No devices yet.</p>'
        )
    return mark_safe(
        f'<li class="fleet-card" data-fleet="{_esc(fleet.slug)}"><article>'
        f'<div class="fleet-card__head"><h3><a href="{_esc(card["href"])}">{name}</a></h3>'
        f'<p class="fleet-card__meta">{_esc(meta)}</p></div>{warn}'
        f'<p class="fleet-card__total"><span class="fleet-card__n" data-fleet-total="{int(total)}">{int(total)}</span> '
        f"device{'' if total == 1 else 's'}</p>{body}</article></li>\n"
    )


def _esc(value: str) -> str:
    return html_escape(str(value), quote=True)


@lru_cache(maxsize=16)
def _marker(slug: str) -> str:
    marker = footnote_marker(slug)
    return f'<sup aria-hidden="true">{marker}</sup>' if marker else ""


# --- Times -------------------------------------------------------------------------------------------


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


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _now(context) -> datetime:
    return context.get("now") or timezone.now()


@register.simple_tag(takes_context=True)
def reltime(context, value: datetime | None, empty: str = "never", mode: str = "ago") -> SafeString:
    """'3 min ago' (or 'for 3 min'), with the exact time on hover; `empty` when there is no time."""
    if value is None:
        return format_html('<span class="muted">{}</span>', empty)
    utc = _utc(value)
    return format_html(
        '<time datetime="{}" title="{} UTC" data-rel="{}">{}</time>',
        utc.isoformat(timespec="seconds"),
        utc.strftime("%Y-%m-%d %H:%M:%S"),
        mode,
        ago(value, _now(context), mode),
    )


@register.simple_tag
def abstime(value: datetime | None, empty: str = "—") -> SafeString:
    """An exact date and time (UTC here; the viewer's timezone once app.js runs)."""
    if value is None:
        return format_html('<span class="muted">{}</span>', empty)
    utc = _utc(value)
    return format_html(
        '<time datetime="{}" data-abs>{} UTC</time>',
        utc.isoformat(timespec="seconds"),
        utc.strftime("%Y-%m-%d %H:%M:%S"),
    )


@register.simple_tag
def clocktime(value: datetime) -> SafeString:
    """HH:MM:SS (UTC here; local once app.js runs)."""
    utc = _utc(value)
    return format_html(
        '<time datetime="{}" data-clock>{} UTC</time>', utc.isoformat(timespec="seconds"), utc.strftime("%H:%M:%S")
    )


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
