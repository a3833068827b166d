"""Shared by the dashboard view tests: devices put into each status through devices.services, and
small readers of the rendered HTML."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from html import unescape

from django.utils import timezone

from devices import services
from devices.models import ColumnChoice, Device, heartbeat_window
from devices.queries import OPTIONAL_COLUMNS
from devices.status import HeartbeatState, Status, UpdateStatus
from fleets.models import Fleet, Tier


def show_every_column(user) -> None:
    """The user's own column choice: every column of the Devices table."""
    ColumnChoice.objects.update_or_create(user=user, defaults={"columns": ",".join(OPTIONAL_COLUMNS)})


def signals_for(status: str, now: datetime, interval: int = 600) -> dict:
    """Signals that make the status rule (docs/design.md, The status rule) answer `status`."""
    hb = {
        "api_heartbeat_state": HeartbeatState.ONLINE,
        "last_api_heartbeat_at": now,
        "heartbeat_deadline": now + heartbeat_window(interval),
        "last_seen_at": now,
    }
    vpn = {"is_connected_to_vpn": True, "last_vpn_event": now, "last_connectivity_event": now}
    no_vpn = {
        "is_connected_to_vpn": False,
        "last_vpn_event": now - timedelta(hours=1),
        "last_connectivity_event": now - timedelta(hours=1),
    }
    return {
        Status.ONLINE: {**hb, **vpn},
        Status.ONLINE_VPN_ONLY: {**vpn, "api_heartbeat_state": HeartbeatState.OFFLINE, "last_seen_at": now},
        Status.ONLINE_HEARTBEAT_ONLY: {**hb, **no_vpn},
        Status.OFFLINE: {
            **no_vpn,
            "api_heartbeat_state": HeartbeatState.OFFLINE,
            "last_seen_at": now - timedelta(hours=1),
        },
        Status.CONFIGURING: {},
        Status.UPDATING: {**hb, **vpn, "update_status": UpdateStatus.DOWNLOADING, "download_progress": 42},
        Status.POST_PROVISIONING: {"provisioning_state": "Post-Provisioning", "provisioning_progress": 80},
        Status.INACTIVE: {"is_active": False},
        Status.FROZEN: {**hb, **vpn},
    }[Status(status)]


def device_in(make_device, status: str, *, name: str = "", fleet=None, at: datetime | None = None, **extra) -> Device:
    """A device in `status`. Frozen is made the real way (reconcile_frozen re-decides it on every
    activation): the device sits in a paid fleet of an organization moved to the free tier."""
    at = at or timezone.now()
    if status == Status.FROZEN:
        device = make_device(fleet, name=name, at=at)
        paid, _ = Fleet.objects.get_or_create(
            organization=device.organization,
            slug="paid-signage",
            defaults={"name": "Paid signage", "fleet_type": Tier.PAID, "device_type": "generic-amd64"},
        )
        services.move_device(device, paid, reason="test setup", at=at)
        services.update_organization(device.organization, {"tier": Tier.FREE}, reason="test setup", at=at)
        device = services.update_device(device, {**signals_for(status, at), **extra}, reason="test setup", at=at)
    else:
        device = make_device(fleet, name=name, at=at, **{**signals_for(status, at), **extra})
    assert device.overall_status == status, (status, device.overall_status)
    return device


def one_of_each(make_device, fleet=None) -> dict[str, Device]:
    return {s.value: device_in(make_device, s.value, name=f"dev-{s.value}", fleet=fleet) for s in Status}


def html(response) -> str:
    return response.content.decode()


def row_uuids(response) -> list[str]:
    return re.findall(r'<tr data-uuid="([0-9a-f]+)"', html(response))


def status_counts(response) -> dict[str, int]:
    return {slug: int(n) for slug, n in re.findall(r'data-status-count="([a-z-]+)">(\d+)<', html(response))}


def title(response) -> str:
    match = re.search(r"<title>(.*?)</title>", html(response), re.S)
    return unescape(match.group(1).strip()) if match else ""


def notices(response) -> list[str]:
    return [
        unescape(re.sub(r"<[^>]+>", "", n)).strip()
        for n in re.findall(r'<p class="notice"[^>]*>(.*?)</p>', html(response), re.S)
    ]


def badge(response, uuid: str) -> str:
    """The status cell (the badge) in the row of one device."""
    row = re.search(rf'<tr data-uuid="{uuid}".*?</tr>', html(response), re.S)
    assert row, f"no row for {uuid}"
    cell = re.search(r'<td class="col-status">(.*?)</td>', row.group(0), re.S)
    assert cell, row.group(0)
    return cell.group(1)


BLOCK_TAG = re.compile(
    r"</?(?:div|p|dt|dd|td|th|tr|li|h\d|br|section|header|ul|ol|dl|table|caption|thead|tbody)\b[^>]*>"
)


def text(markup: str) -> str:
    """Visible text: block elements separated by a space, inline ones run together."""
    spaced = BLOCK_TAG.sub(" ", markup)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", "", spaced))).strip()
