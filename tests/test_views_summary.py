"""The Device Summary page (/devices/<uuid>/): why-panel, history, uptime, details, scoping, htmx."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices import services
from devices.models import StatusTransition
from devices.status import HeartbeatState, Status
from devices.summary import NO_DATA, uptime
from tests.dashboard_helpers import device_in, html, signals_for, text, title

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 10, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)


def url(device) -> str:
    return f"/devices/{device.uuid}/"


def section(response, name: str) -> str:
    match = re.search(rf'<section class="card {name}".*?</section>', html(response), re.S)
    assert match, name
    return match.group(0)


# --- Access ---------------------------------------------------------------------------------------


def test_owner_sees_the_summary(owner_client, make_device):
    d = device_in(make_device, "online", name="gate-a12")
    response = owner_client.get(url(d))
    assert response.status_code == 200
    assert "<h1>gate-a12</h1>" in html(response)
    assert f'data-uuid="{d.uuid}"' in html(response)
    assert title(response) == "gate-a12 · fleetstatus"


def test_member_of_another_organization_gets_404(other_client, make_device):
    d = device_in(make_device, "online")
    assert other_client.get(url(d)).status_code == 404
    assert other_client.get(url(d), HTTP_HX_REQUEST="true").status_code == 404


def test_anonymous_is_sent_to_login_and_polls_get_hx_redirect(anon_client, make_device):
    d = device_in(make_device, "online")
    response = anon_client.get(url(d))
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=/devices/")
    poll = anon_client.get(url(d), HTTP_HX_REQUEST="true")
    assert poll.status_code == 403 and poll["HX-Redirect"].startswith("/login/?next=")
    assert b"<form" not in poll.content


def test_unknown_and_malformed_uuids_are_404(owner_client):
    assert owner_client.get("/devices/" + "a" * 32 + "/").status_code == 404
    assert owner_client.get("/devices/not-a-uuid/").status_code == 404
    assert owner_client.get("/devices/" + "g" * 32 + "/").status_code == 404


def test_uppercase_uuid_finds_the_device(owner_client, make_device):
    d = device_in(make_device, "online")
    assert owner_client.get(f"/devices/{d.uuid.upper()}/").status_code == 200


def test_htmx_poll_renders_the_fragment_only(owner_client, make_device):
    d = device_in(make_device, "offline", name="x")
    response = owner_client.get(url(d), HTTP_HX_REQUEST="true")
    body = html(response)
    assert body.lstrip().startswith("<title>(1) x · fleetstatus</title>")
    assert '<div id="live"' in body and "<html" not in body and "crumbs" not in body
    assert f'hx-get="{url(d)}"' in body
    assert 'data-status="offline"' in body


# --- Badge, meaning and the why-panel ----------------------------------------------------------------


def test_badge_and_meaning(owner_client, make_device):
    d = device_in(make_device, "online-heartbeat-only", name="hb")
    page = html(owner_client.get(url(d)))
    assert 'data-status="online-heartbeat-only"' in page
    assert "It fetches its target state on time, but its cloudlink tunnel is down." in page
    assert "Why it is Online (Heartbeat Only)" in page
    assert "(rule 9 of the status rule)" in page
    assert 'id="fn-2"' in page  # its footnote is on the page


def test_why_panel_deadline_and_when_it_turns_offline(owner_client, make_device):
    d = device_in(make_device, "online-heartbeat-only", at=T0)
    with time_machine.travel(T0 + timedelta(minutes=5), tick=False):
        response = owner_client.get(url(d))
    why = section(response, "why")
    # 600 s default interval x 1.5 = deadline 15 min after the last fetch.
    assert "Polls every 600 s (the default); each fetch sets the deadline to its time + 600 s × 1.5." in text(why)
    assert "Last fetch 2026-01-10 00:00:00 UTC (5 min ago)" in text(why)
    assert "Deadline 2026-01-10 00:15:00 UTC (in 10 min)" in text(why)
    assert "Turns Offline at 2026-01-10 00:15:00 UTC (in 10 min)" in text(why)
    assert "It turns Offline at its heartbeat deadline unless a target-state fetch arrives before then." in text(why)
    # The tunnel is the signal pulling it down.
    assert re.search(
        r'signal-row--bad">\s*<th scope="row">.*?Cloudlink tunnel</th>\s*<td>Not connected</td>', why, re.S
    )


def test_why_panel_with_a_tunnel_predicts_vpn_only(owner_client, make_device):
    d = device_in(make_device, "online", at=T0)
    with time_machine.travel(T0 + timedelta(minutes=1), tick=False):
        why = text(section(owner_client.get(url(d)), "why"))
    assert "Becomes Online (VPN Only) at 2026-01-10 00:15:00 UTC (in 14 min)" in why
    assert "it turns Offline once its tunnel is down too" in why
    assert "Connected since 2026-01-10 00:00:00 UTC" in why


def test_why_panel_uses_the_fleets_interval_and_the_floor(owner_client, make_device, fleet, settings):
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = 60
    services.update_fleet(fleet, {"poll_interval": 120}, reason="test")
    # The deadline a fetch at T0 gets with a 120 s interval (what the heartbeat path stores).
    d = device_in(make_device, "online-heartbeat-only", at=T0, heartbeat_deadline=T0 + timedelta(seconds=180))
    with time_machine.travel(T0 + timedelta(seconds=30), tick=False):
        why = text(section(owner_client.get(url(d)), "why"))
    assert "Polls every 120 s (the fleet's setting)" in why
    assert "Turns Offline at 2026-01-10 00:03:00 UTC (in 2 min)" in why
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = 300
    with time_machine.travel(T0 + timedelta(seconds=30), tick=False):
        why = text(section(owner_client.get(url(d)), "why"))
    assert "Polls every 300 s (the fleet's setting, raised to the 300 s floor)" in why


def test_why_panel_after_the_deadline_before_the_sweep(owner_client, make_device):
    d = device_in(make_device, "online-heartbeat-only", at=T0)
    with time_machine.travel(T0 + timedelta(minutes=20), tick=False):
        why = text(section(owner_client.get(url(d)), "why"))
    assert "Its heartbeat deadline has passed; the next re-evaluation makes it Offline." in why
    assert "Deadline 2026-01-10 00:15:00 UTC (5 min ago)" in why


def test_why_panel_of_offline_frozen_inactive_and_progress(owner_client, make_device):
    offline = device_in(make_device, "offline", name="off")
    why = text(section(owner_client.get(url(offline)), "why"))
    assert "no cloudlink tunnel and its last target-state fetch is older than its polling window" in why
    assert "It is Offline now" in why

    frozen = device_in(make_device, "frozen", name="ice")
    why = text(section(owner_client.get(url(frozen)), "why"))
    assert "outside what its organization may run: Paid fleet type while the organization is on the free tier" in why
    assert "Frozen Yes Paid fleet type while the organization is on the free tier" in why

    inactive = device_in(make_device, "inactive", name="zzz")
    why = text(section(owner_client.get(url(inactive)), "why"))
    assert "It is deactivated" in why and "Active No" in why

    updating = device_in(make_device, "updating", name="up", download_progress=37)
    why = text(section(owner_client.get(url(updating)), "why"))
    assert "Release update Downloading at 37%" in why
    assert "rule 6" in why

    post = device_in(make_device, "post-provisioning", name="pp")
    why = text(section(owner_client.get(url(post)), "why"))
    assert "Provisioning Post-Provisioning at 80%" in why


def test_stored_status_lagging_the_signals_is_said_so(owner_client, make_device):
    d = device_in(make_device, "online")
    # A stale stored status (e.g. written by an older release) is shown as is, with a note.
    type(d).objects.filter(pk=d.pk).update(overall_status=Status.OFFLINE)
    why = text(section(owner_client.get(url(d)), "why"))
    assert "Its signals already say Online; the stored status follows at the next re-evaluation." in why


# --- History ----------------------------------------------------------------------------------------


def _timeline(make_device):
    """Created (Configuring) at T0, Online at +1 h, Heartbeat Only at +13 h, Offline at +15 h, Online at +16 h."""
    d = device_in(make_device, "configuring", name="tl", at=T0)
    services.update_device(d, signals_for("online", T0 + H), reason="came online", at=T0 + H)
    t = T0 + 13 * H
    services.update_device(
        d,
        {"is_connected_to_vpn": False, "last_vpn_event": t, "last_connectivity_event": t},
        reason="tunnel dropped",
        at=t,
    )
    services.update_device(
        d, {"api_heartbeat_state": HeartbeatState.OFFLINE}, reason="heartbeat expired", at=T0 + 15 * H
    )
    services.update_device(d, signals_for("online", T0 + 16 * H), reason="back", at=T0 + 16 * H)
    d.refresh_from_db()
    return d


def test_history_newest_first_with_durations(owner_client, make_device):
    d = _timeline(make_device)
    with time_machine.travel(T0 + 30 * H, tick=False):
        hist = section(owner_client.get(url(d)), "history")
    rows = re.findall(r"<tr data-transition=.*?</tr>", hist, re.S)
    assert [text(r) for r in rows] == [
        "2026-01-10 16:00:00 UTC Online ongoing, 14 h Offline back",
        "2026-01-10 15:00:00 UTC Offline 1 h Online (Heartbeat Only) heartbeat expired",
        "2026-01-10 13:00:00 UTC Online (Heartbeat Only)² 2 h Online tunnel dropped",
        "2026-01-10 01:00:00 UTC Online 12 h Configuring came online",
        "2026-01-10 00:00:00 UTC Configuring 1 h registered registered",
    ]


def _bulk_history(device, n: int, start: datetime, step: timedelta) -> None:
    """n chained transitions alternating Online / Offline after the device's creation."""
    rows = []
    previous = device.overall_status
    for i in range(n):
        to = Status.OFFLINE if i % 2 == 0 else Status.ONLINE
        rows.append(
            StatusTransition(device=device, from_status=previous, to_status=to, at=start + i * step, reason="flap")
        )
        previous = to
    StatusTransition.objects.bulk_create(rows)


def test_history_is_paged_25_changes_at_a_time(owner_client, make_device):
    d = device_in(make_device, "configuring", at=T0)
    _bulk_history(d, 60, T0 + timedelta(minutes=1), timedelta(minutes=1))
    newest = list(StatusTransition.objects.filter(device=d).order_by("-at", "-id"))
    assert len(newest) > 50
    with time_machine.travel(T0 + 4 * H, tick=False):
        response = owner_client.get(url(d))
        hist = section(response, "history")
        rows = [int(r) for r in re.findall(r'<tr data-transition="(\d+)">', hist)]
        assert rows == [t.pk for t in newest[:25]]
        assert "Showing the latest 25 changes." in hist and "ongoing," in hist
        older = re.search(r'href="\?before=(\d+)"[^>]*>Older changes', hist)
        assert older and int(older.group(1)) == newest[24].pk
        second = section(owner_client.get(url(d) + f"?before={older.group(1)}"), "history")
        rows = [int(r) for r in re.findall(r'<tr data-transition="(\d+)">', second)]
        assert rows == [t.pk for t in newest[25:50]]
        # The first row of an older page lasted until the change after it, not until now.
        assert "ongoing," not in second and "1 min" in text(second)
        assert 'href="?">' in second or "Latest changes" in second
        last = int(re.search(r'href="\?before=(\d+)"[^>]*>Older changes', second).group(1))
        third = section(owner_client.get(url(d) + f"?before={last}"), "history")
        rows = [int(r) for r in re.findall(r'<tr data-transition="(\d+)">', third)]
        assert rows == [t.pk for t in newest[50:]] and "Older changes" not in third
        # Another device's transition, or garbage, shows the latest page with a notice.
        other = device_in(make_device, "online", at=T0)
        foreign = StatusTransition.objects.filter(device=other).first().pk
        for bad in (str(foreign), "x1", "99999999999999999999"):
            page = section(owner_client.get(url(d) + f"?before={bad}"), "history")
            assert [int(r) for r in re.findall(r'<tr data-transition="(\d+)">', page)] == [t.pk for t in newest[:25]]
            assert "is not a status change of this device" in text(page)


SUMMARY_QUERIES = 10  # session, user, memberships, device, history, uptime, status strips, dead-man's switch; notifications: outcomes, mutes


def _queries(client, path) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(path).status_code == 200
    return len(ctx.captured_queries)


def test_query_count_does_not_grow_with_history(owner_client, make_device):
    small = device_in(make_device, "configuring", name="small", at=T0)
    big = device_in(make_device, "configuring", name="big", at=T0)
    _bulk_history(big, 2000, T0 + timedelta(seconds=10), timedelta(seconds=30))
    with time_machine.travel(T0 + 20 * H, tick=False):
        assert _queries(owner_client, url(small)) == _queries(owner_client, url(big)) == SUMMARY_QUERIES


# --- Uptime -----------------------------------------------------------------------------------------


def test_uptime_numbers_over_each_window(make_device):
    d = _timeline(make_device)
    now = T0 + 30 * H
    day, week, month = uptime(d, now, d.overall_status)
    # Last 24 h (from +6 h): Online 6-13 h and 16-30 h = 21 h; Heartbeat Only 2 h; Offline 1 h.
    assert day.seconds == {"online": 21 * 3600, "online-heartbeat-only": 2 * 3600, "offline": 3600}
    assert day.online == pytest.approx(21 / 24) and day.partial == pytest.approx(2 / 24)
    assert day.other == pytest.approx(1 / 24) and day.no_data == timedelta(0)
    # Last 7 d: the 138 h before the device existed are no data, not up.
    assert week.no_data == timedelta(hours=168 - 30)
    assert week.seconds["configuring"] == 3600
    assert week.online == pytest.approx(26 / 30) and week.partial == pytest.approx(2 / 30)
    assert month.no_data == timedelta(hours=720 - 30) and month.online == pytest.approx(26 / 30)
    assert sum(month.seconds.values()) == pytest.approx(720 * 3600)


def test_uptime_counts_the_status_held_since_before_the_window(make_device):
    d = _timeline(make_device)
    # 40 days later nothing changed: the whole of every window is the Online that began at +16 h.
    now = T0 + timedelta(days=40)
    for window in uptime(d, now, d.overall_status):
        assert window.online == 1.0 and window.no_data == timedelta(0)
        assert set(window.seconds) == {"online"}


def test_uptime_of_a_device_with_no_time_yet(make_device):
    d = device_in(make_device, "online", at=T0)
    day = uptime(d, T0, d.overall_status)[0]
    assert day.online is None and day.seconds == {NO_DATA: 24 * 3600}


def test_uptime_on_the_page(owner_client, make_device):
    d = _timeline(make_device)
    with time_machine.travel(T0 + 30 * H, tick=False):
        up = section(owner_client.get(url(d)), "uptime")
    windows = re.findall(r'<li class="uptime__window" data-window="([^"]+)">(.*?)</li>', up, re.S)
    assert [w for w, _ in windows] == ["24 h", "7 d", "30 d"]
    day, week, _ = (text(body) for _, body in windows)
    assert day.startswith("Last 24 h 87.5 % Online") and "Partial ¹ ² 8.3 %" in day and "Other 4.2 %" in day
    assert "No data" not in day
    assert week.startswith("Last 7 d 86.7 % Online") and "No data 5 d 18 h" in week


def test_uptime_never_rounds_a_down_device_up_to_100(make_device):
    from devices.templatetags.fleetstatus import percent

    assert percent(0.99999) == "99.9 %"
    assert percent(1.0) == "100.0 %"
    assert percent(0.00001) == "0.1 %"
    assert percent(None) == "no data"


def test_uptime_query_reads_only_the_window(make_device):
    d = device_in(make_device, "configuring", at=T0)
    with CaptureQueriesContext(connection) as ctx:
        uptime(d, T0 + H, d.overall_status)
    assert len(ctx.captured_queries) == 1


# --- Details ----------------------------------------------------------------------------------------


def test_details(owner_client, make_device, fleet, org):
    d = device_in(
        make_device,
        "online",
        name="d",
        os_version="balenaOS 6.0.13",
        os_variant="prod",
        supervisor_version="16.7.1",
        release="8f3e2b1",
        ip_address="10.0.3.17 fe80::1",
        mac_address="dc:a6:32:00:11:22",
        cpu_usage=12,
        cpu_temp=51,
        memory_usage=512,
        memory_total=2048,
        storage_usage=3000,
        storage_total=30000,
        at=T0,
    )
    details = text(section(owner_client.get(url(d)), "details"))
    for expected in (
        f"Fleet {fleet.name}",
        f"Organization {org.name}",
        "Device type raspberrypi4-64",
        "OS balenaOS 6.0.13 (prod)",
        "Supervisor 16.7.1",
        "Release 8f3e2b1",
        "IP addresses 10.0.3.17, fe80::1",
        "MAC addresses dc:a6:32:00:11:22",
        "CPU 12 % · 51 °C",
        "Memory 512 MB of 2.0 GB",
        "Storage 2.9 GB of 29.3 GB",
        "Polling interval 600 s",
        "Activated 2026-01-10 00:00:00 UTC",
    ):
        assert expected in details, expected
    assert "Created 20" in details
