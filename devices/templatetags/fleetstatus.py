"""Template helpers for the dashboard: status icons, the badge's progress, and times.

Times are rendered in UTC on the server (the no-JavaScript fallback); static/fleetstatus/app.js
rewrites every <time> into the viewer's timezone and keeps relative times ("3 min ago") fresh with
the same wording as `ago()` below.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from html import escape as html_escape
from urllib.parse import quote

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


# Plain f-strings, not format_html (whose lazy-aware escaping of every argument cost most of a row):
# kinds, icons and labels are ours; only titles are escaped.
def _signal(kind: str, icon: str, label: str, title: str = "") -> SafeString:
    title_attr = f' title="{_esc(title)}"' if title else ""
    return mark_safe(f'<span class="signal signal--{kind}"{title_attr}>{status_icon(icon, "signal__icon")}{label}</span>')


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
        since = ""
        if device.last_vpn_event:
            since = f' <span class="signal__since">{reltime(context, device.last_vpn_event, "", "for")}</span>'
        return mark_safe(_signal("yes", "online", "Connected") + since)
    if not device.effective_cloudlink:
        return _signal("off", "never", "Off", "Cloudlink is switched off for this device")
    if device.last_connectivity_event:
        since = ""
        if device.last_vpn_event:
            since = f' <span class="signal__since">last up {reltime(context, device.last_vpn_event)}</span>'
        return mark_safe(_signal("no", "offline", "Not connected") + since)
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
        return mark_safe(f'<span class="muted">{_esc(empty)}</span>')
    utc = _utc(value)
    # Only `empty` and `mode` come from templates; the rest is formatted here from a datetime.
    return mark_safe(
        f'<time datetime="{utc.isoformat(timespec="seconds")}" title="{utc:%Y-%m-%d %H:%M:%S} UTC" '
        f'data-rel="{_esc(mode)}">{ago(value, _now(context), mode)}</time>'
    )


@register.simple_tag
def abstime(value: datetime | None, empty: str = "—") -> SafeString:
    """An exact date and time (UTC here; the viewer's timezone once app.js runs)."""
    if value is None:
        return mark_safe(f'<span class="muted">{_esc(empty)}</span>')
    utc = _utc(value)
    return mark_safe(f'<time datetime="{utc.isoformat(timespec="seconds")}" data-abs>{utc:%Y-%m-%d %H:%M:%S} UTC</time>')


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


# --- The status badge and the Devices table's rows ------------------------------------------------------
# Plain string building: the Devices page renders 50 rows per request and per 10 s poll, and a row
# of template nodes (an include for the badge, a dozen filters and tags) cost ~1 ms each. Only text
# from users or devices is escaped (_esc); status slugs, labels, numbers and our markup are not.

_PROGRESS_LABEL = {"updating": "Download"}


def badge_html(device) -> str:
    """The one status badge (icon, label, footnote marker, progress bar), as devices/_badge.html had it."""
    s = device.overall_status
    try:
        label = Status(s).label
    except ValueError:
        label = s
    title = f' title="Frozen: {_esc(device.frozen_reason)}"' if s == "frozen" and device.frozen_reason else ""
    fid, marker = FOOTNOTE_IDS.get(s, ("", ""))
    mark = (
        f'<sup class="badge__mark"><a href="#fn-{fid}" title="See note {marker} below">{marker}</a></sup>' if fid else ""
    )
    progress = badge_progress(device)
    bar = ""
    if progress is not None:
        what = _PROGRESS_LABEL.get(s, "Provisioning")
        bar = (
            f'<span class="badge__progress"><progress max="100" value="{progress}" aria-label="{what} progress">'
            f'{progress}%</progress><span class="badge__pct" aria-hidden="true">{progress}%</span></span>'
        )
    return (
        f'<span class="badge badge--{_esc(s)}" data-status="{_esc(s)}"{title}>{status_icon(s, "badge__icon")}'
        f'<span class="badge__label">{_esc(label)}{mark}</span>{bar}</span>'
    )


@register.simple_tag
def badge(device) -> SafeString:
    return mark_safe(badge_html(device))


def _dash(value: str) -> str:
    return _esc(value) if value else "—"


def _release(release: str) -> str:
    if not release:
        return "—"
    short = release if len(release) <= 10 else release[:9] + "…"
    return f'<code title="{_esc(release)}">{_esc(short)}</code>'


def _ips(value: str) -> str:
    ips = value.split()
    if not ips:
        return "—"
    more = f' <span class="muted">+{len(ips) - 1}</span>' if len(ips) > 1 else ""
    return f'<span title="{_esc(value)}">{_esc(ips[0])}</span>{more}'


_ROW_CLASS = {"inactive": ' class="row--inactive"', "frozen": ' class="row--frozen"'}


@register.simple_tag(takes_context=True)
def device_rows(context, devices, devices_url: str, fleet_link: str) -> SafeString:
    """The Devices table's <tr> for each device (the Device rows of devices/queries.py ROW_FIELDS)."""
    out = []
    devices_url, fleet_link = _esc(devices_url), _esc(fleet_link)
    fleet_cells: dict[tuple[str, str], str] = {}  # a page shows a few fleets, many times each
    for d in devices:
        fleet = d.fleet
        fleet_cell = fleet_cells.get((fleet.slug, fleet.name))
        if fleet_cell is None:
            fleet_name = _esc(fleet.name)
            fleet_cell = fleet_cells[fleet.slug, fleet.name] = (
                f'<a class="quiet-link" href="{fleet_link}{_esc(quote(fleet.slug, safe="/"))}" '
                f'title="Show only {fleet_name}">{fleet_name}</a>'
            )
        uuid = _esc(d.uuid)
        out.append(
            f'<tr data-uuid="{uuid}"{_ROW_CLASS.get(d.overall_status, "")}>\n'
            f'          <th scope="row" class="col-name"><a href="{devices_url}{uuid}/">{_esc(d.name)}</a></th>\n'
            f'          <td class="col-status">{badge_html(d)}\n</td>\n'
            f'          <td class="col-uuid"><code title="{uuid}">{_esc(d.uuid[:7])}</code></td>\n'
            f'          <td class="col-fleet">{fleet_cell}</td>\n'
            f'          <td class="col-device_type">{_dash(d.device_type)}</td>\n'
            f'          <td class="col-os">{_dash(d.os_version)}</td>\n'
            f'          <td class="col-release">{_release(d.release)}</td>\n'
            f'          <td class="col-ip">{_ips(d.ip_address)}</td>\n'
            f'          <td class="col-last_seen">{reltime(context, d.last_seen_at)}</td>\n'
            f'          <td class="col-heartbeat">{heartbeat_cell(context, d)}</td>\n'
            f'          <td class="col-cloudlink">{cloudlink_cell(context, d)}</td>\n'
            "        </tr>\n"
        )
    return mark_safe("".join(out))


@register.simple_tag
def history_rows(rows) -> SafeString:
    """The Device Summary's history table rows (devices/summary.py HistoryRow), built as strings:
    a hundred rows of template nodes were most of that page's time."""
    out = []
    for h in rows:
        t = h.transition
        to = t.to_status
        marker = footnote_marker(to)
        sup = f"<sup>{marker}</sup>" if marker else ""
        ongoing = '<span class="muted">ongoing,</span> ' if h.ongoing else ""
        came_from = _esc(status_label(t.from_status)) if t.from_status else '<span class="muted">registered</span>'
        out.append(
            f'<tr data-transition="{int(t.pk)}">\n'
            f"                <td>{abstime(t.at)}</td>\n"
            f'                <th scope="row"><span class="chip chip--{_esc(to)}" data-to-status="{_esc(to)}">'
            f'{status_icon(to, "chip__icon")}{_esc(status_label(to))}{sup}</span></th>\n'
            f"                <td>{ongoing}{duration(h.duration)}</td>\n"
            f"                <td>{came_from}</td>\n"
            f'                <td class="history__reason">{_esc(t.reason) if t.reason else "—"}</td>\n'
            "              </tr>\n"
        )
    return mark_safe("".join(out))
