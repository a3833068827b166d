"""The fleet page (/fleets/<org>/<fleet>/): counts now, chart, table, incidents, range, scoping, queries."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleets import counts, fleet_page
from fleets.history import STATUS_SLUGS, Period, Point
from fleets.models import FleetCountSnapshot
from tests.dashboard_helpers import device_in, html

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
URL = "/fleets/northwind/kiosks/"


def counts_of(**values: int) -> dict[str, int]:
    return {**dict.fromkeys(STATUS_SLUGS, 0), **{k.replace("_", "-"): v for k, v in values.items()}}


def snapshot(org, fleet, at: datetime, **values: int) -> None:
    FleetCountSnapshot.objects.create(organization_id=org.pk, fleet_id=fleet.pk, at=at, **values)


@pytest.fixture
def history(org, fleet, make_device):
    """Ten devices now (9 online, 1 offline) and a day in which half went offline for two hours."""
    with time_machine.travel(NOW - timedelta(days=2), tick=False):
        for _ in range(9):
            device_in(make_device, "online")
        device_in(make_device, "offline")
        counts.fold()
    FleetCountSnapshot.objects.filter(fleet_id=fleet.pk).delete()
    snapshot(org, fleet, NOW - timedelta(hours=30), online=9, offline=1)
    snapshot(org, fleet, NOW - timedelta(hours=6), online=5, offline=5)
    snapshot(org, fleet, NOW - timedelta(hours=5, minutes=30), online=4, offline=6)
    snapshot(org, fleet, NOW - timedelta(hours=4), online=9, offline=1)


def get(client, url: str = URL, **headers):
    with time_machine.travel(NOW, tick=False):
        return client.get(url, headers=headers)


def test_counts_now_with_the_fleets_page_elements(owner_client, history):
    response = get(owner_client)
    assert response.status_code == 200
    body = html(response)
    now = re.search(r'<section class="card fleet-now".*?</section>', body, re.S).group(0)
    assert dict(re.findall(r'data-status-count="([a-z-]+)">(\d+)<', now)) == {"online": "9", "offline": "1"}
    assert 'data-fleet-total="10"' in now
    assert 'href="/devices/?fleet=northwind/kiosks&amp;status=offline"' in now


def test_chart_areas_hover_titles_and_table(owner_client, history):
    body = html(get(owner_client))
    areas = re.findall(r'<polygon class="chart__area seg--([a-z-]+)" data-area="[a-z-]+" points="([^"]+)"', body)
    assert [slug for slug, _ in areas] == ["online", "offline"]
    # 96 columns of 15 minutes, two points per column edge on the top line and two on the bottom.
    assert all(len(points.split()) == 4 * 96 for _, points in areas)
    titles = re.findall(r'<rect class="chart__hit"[^>]*><title>([^<]+)</title>', body)
    assert len(titles) == 96
    # Each column shows its worst moment: 5/5 from 06:00, 4/6 from 06:30; the day before, 9/1.
    assert "2026-11-20 06:00–06:15 UTC: Online 5, Offline 5 (50.0% not online)" in titles
    assert "2026-11-20 06:30–06:45 UTC: Online 4, Offline 6 (60.0% not online)" in titles
    assert "2026-11-19 12:00–12:15 UTC: Online 9, Offline 1 (10.0% not online)" in titles
    rows = re.findall(r"<tr><th scope=\"row\"><time[^>]*>([^<]+)</time></th>(.*?)</tr>", body)
    assert len(rows) == 96
    assert dict(rows)["2026-11-20 06:30"] == "<td>4</td><td>6</td><td>60.0 %</td>"


def test_incidents_with_start_end_peak_and_devices_link(owner_client, history):
    body = html(get(owner_client))
    incidents = re.findall(r"<tr data-incident>(.*?)</tr>", body, re.S)
    assert len(incidents) == 1
    row = incidents[0]
    assert '<time datetime="2026-11-20T06:00:00+00:00">' in row  # start
    assert '<time datetime="2026-11-20T08:00:00+00:00">' in row  # end
    assert 'data-peak="60.0"' in row
    assert 'href="/devices/?fleet=northwind/kiosks"' in row


def test_an_ongoing_incident(owner_client, org, fleet, history, make_device):
    with time_machine.travel(NOW - timedelta(minutes=1), tick=False):
        for _ in range(3):
            device_in(make_device, "offline")
    body = html(get(owner_client))
    assert "data-ongoing" in re.findall(r"<tr data-incident>(.*?)</tr>", body, re.S)[-1]


def test_range_switch_and_bad_range(owner_client, history):
    body = html(get(owner_client, URL + "?range=7d"))
    assert 'data-range="7d"' in body and len(re.findall(r'class="chart__hit"', body)) == 84
    assert 'aria-current="true">7 days' in body
    month = html(get(owner_client, URL + "?range=30d"))
    assert len(re.findall(r'class="chart__hit"', month)) == 120
    bad = get(owner_client, URL + "?range=1y")
    assert bad.status_code == 200
    assert "Cannot show the range &#x27;1y&#x27;; showing 24 hours." in html(bad)
    assert len(re.findall(r'class="chart__hit"', html(bad))) == 96


def test_columns_before_the_first_snapshot_have_no_data(owner_client, org, make_fleet, make_device):
    fresh, _ = make_fleet(org, "fresh")
    with time_machine.travel(NOW - timedelta(hours=1), tick=False):
        device_in(make_device, "online", fleet=fresh)
        counts.fold()
    body = html(get(owner_client, "/fleets/northwind/fresh/"))
    assert body.count('class="muted">no data</td>') == 92  # 23 h of the day before it existed
    assert "No incident in the last 24 hours." in body


def test_scoping(owner_client, other_client, anon_client, other_fleet, history):
    assert get(other_client).status_code == 404  # another organization's fleet
    assert get(owner_client, "/fleets/contoso/robots/").status_code == 404
    assert get(owner_client, "/fleets/northwind/nope/").status_code == 404
    assert get(owner_client, "/fleets/nope/kiosks/").status_code == 404
    response = get(anon_client)
    assert response.status_code == 302 and response["Location"] == f"/login/?next={URL}"
    poll = get(anon_client, HX_Request="true")
    assert poll.status_code == 403 and "HX-Redirect" in poll


def test_htmx_poll_renders_the_live_part(owner_client, history):
    response = get(owner_client, HX_Request="true")
    assert response.status_code == 200
    body = html(response)
    assert '<div id="live"' in body and "<html" not in body and "data-status-count" in body


def test_query_count_does_not_grow_with_devices_or_range(owner_client, org, fleet, make_device, history):
    with CaptureQueriesContext(connection) as small:
        get(owner_client)
    with time_machine.travel(NOW - timedelta(hours=1), tick=False):
        for _ in range(10):
            device_in(make_device, "offline")
    for minutes in range(0, 600, 7):
        snapshot(org, fleet, NOW - timedelta(days=20, minutes=minutes), online=minutes)
    for range_key in ("24h", "7d", "30d"):
        with CaptureQueriesContext(connection) as big:
            assert get(owner_client, f"{URL}?range={range_key}").status_code == 200
        assert len(big.captured_queries) == len(small.captured_queries)


def test_columns_keep_the_worst_moment_and_carry_state():
    start = NOW - timedelta(hours=1)
    calm, storm = Point(start, counts_of(online=10)), Point(start, counts_of(online=5, offline=5))
    # Column 1 saw the storm and ended calm; column 3 starts in a storm that column 4 carries on.
    pairs = {0: (calm, calm), 1: (storm, calm), 3: (storm, storm)}
    cols = fleet_page.columns(pairs, start, NOW, timedelta(minutes=10), Point(NOW, counts_of(online=9, offline=1)))
    assert [c.counts["offline"] for c in cols] == [0, 5, 0, 5, 5, 5]
    empty = fleet_page.columns({}, start, NOW, timedelta(minutes=30), Point(NOW, counts_of()))
    assert [c.point is None for c in empty] == [True, False]  # the last column has the counts now


def test_incidents_from_periods_and_the_counts_now():
    start = NOW - timedelta(hours=3)
    h = lambda n: NOW + timedelta(hours=n)  # noqa: E731
    periods = [
        Period(start, True, 0.2, start),
        Period(h(-2), False, 0.1, h(-2)),
        Period(h(-1), True, 0.5, h(-1)),
    ]
    calm = Point(NOW, counts_of(online=10))
    found = fleet_page.incidents(periods, start, calm)
    assert [(i.start, i.end, i.peak_percent, i.from_range_start) for i in found] == [
        (start, h(-2), 20.0, True),
        (h(-1), NOW, 50.0, False),  # over now: its end is now
    ]
    worse = Point(NOW, counts_of(online=2, frozen=8))  # frozen is not online
    assert fleet_page.incidents(periods, start, worse)[-1].end is None
    assert fleet_page.incidents(periods, start, worse)[-1].peak_percent == 80.0
    assert [(i.start, i.end) for i in fleet_page.incidents(periods[:2], start, worse)][-1] == (NOW, None)


# --- The incident threshold: the notification channels' when set ---------------------------------------


def channel(org, name: str, threshold: int | None, *, fleets=(), enabled: bool = True):
    from notifications.models import Channel

    made = Channel.objects.create(
        organization=org, name=name, url="https://hooks.example.com/x", fleet_threshold=threshold, enabled=enabled
    )
    made.fleets.set(fleets)
    return made


def incident_rows(response) -> list[str]:
    return re.findall(r"<tr data-incident>(.*?)</tr>", html(response), re.S)


def threshold_note(response) -> tuple[str, str]:
    match = re.search(r'data-incident-threshold="(\d+)">(.*?)</p>', html(response), re.S)
    return match.group(1), match.group(2)


def test_without_a_channel_threshold_incidents_are_above_ten_percent(owner_client, org, history):
    channel(org, "No threshold", None)  # a channel without a fleet threshold changes nothing
    response = get(owner_client)
    percent, note = threshold_note(response)
    assert percent == "10" and "(the default;" in note
    assert len(incident_rows(response)) == 1


def test_the_lowest_enabled_channel_threshold_covering_the_fleet_applies(
    owner_client, org, fleet, make_fleet, other_fleet, history
):
    sibling, _ = make_fleet(org, "robots")
    channel(org, "Pager", 70)  # the whole organization
    channel(org, "Kiosk team", 55, fleets=[fleet, sibling])  # chosen fleets, this one among them
    channel(org, "Robots only", 5, fleets=[sibling])  # does not cover this fleet
    channel(org, "Switched off", 5, enabled=False)
    channel(other_fleet.organization, "Theirs", 5)  # another organization's
    response = get(owner_client)
    percent, note = threshold_note(response)
    assert percent == "55"
    assert "the notification channel “Kiosk team”, the lowest of the enabled channels" in note
    # 50 % six hours ago is no longer an incident; 60 % half an hour later is.
    [row] = incident_rows(response)
    assert '<time datetime="2026-11-20T06:30:00+00:00">' in row
    assert '<time datetime="2026-11-20T08:00:00+00:00">' in row and 'data-peak="60.0"' in row


def test_a_low_channel_threshold_makes_the_counts_now_an_ongoing_incident(owner_client, org, history):
    channel(org, "Strict", 5)
    rows = incident_rows(get(owner_client))
    # 10 % not online all day long: above 5 % from before the range to now.
    assert len(rows) == 1 and "before " in rows[0] and "data-ongoing" in rows[0]


def test_members_see_the_threshold_but_not_the_owners_channel(org, fleet, history):
    from django.contrib.auth import get_user_model
    from django.test import Client

    from fleets.models import Membership
    from tests.conftest import PASSWORD

    channel(org, "Kiosk team", 55, fleets=[fleet])
    member = get_user_model().objects.create_user(username="mia", password=PASSWORD)
    Membership.objects.create(user=member, organization=org, role=Membership.Role.MEMBER)
    client = Client()
    client.force_login(member)
    percent, note = threshold_note(get(client))
    assert percent == "55" and "a notification channel, the lowest" in note and "Kiosk team" not in note


# session, user, memberships, fleet (with its channel threshold), kept counts, chart points and
# incident periods (one query), dead-man's switch
FLEET_PAGE_QUERIES = 7


def test_query_count_is_pinned_and_channels_add_none(owner_client, org, fleet, history):
    with CaptureQueriesContext(connection) as without:
        get(owner_client)
    channel(org, "Pager", 70)
    channel(org, "Kiosk team", 55, fleets=[fleet])
    with CaptureQueriesContext(connection) as with_channels:
        get(owner_client)
    assert len(without.captured_queries) == len(with_channels.captured_queries) == FLEET_PAGE_QUERIES
