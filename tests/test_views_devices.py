"""The Devices page (/devices/): content, filters, sorts, pagination, scoping, htmx and query counts."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices import services
from devices.models import Device, TaskRun
from devices.queries import PAGE_SIZE, SORTS
from devices.status import Status
from fleets.models import Membership
from tests.dashboard_helpers import (
    badge,
    device_in,
    html,
    notices,
    one_of_each,
    row_uuids,
    show_every_column,
    signals_for,
    status_counts,
    text,
    title,
)

URL = "/devices/"
LABELS = {s.value: s.label for s in Status}

pytestmark = pytest.mark.django_db


# --- Access and scoping ---------------------------------------------------------------------------------


def test_anonymous_is_sent_to_login(anon_client):
    response = anon_client.get(URL + "?status=offline")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/devices/%3Fstatus%3Doffline"


def test_anonymous_htmx_poll_gets_a_redirect_header_not_a_login_form(anon_client):
    response = anon_client.get(URL, HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL="http://testserver/devices/?q=gate")
    assert response.status_code == 403
    assert response["HX-Redirect"] == "/login/?next=%2Fdevices%2F%3Fq%3Dgate"
    assert b"<form" not in response.content and b"password" not in response.content.lower()


def test_owner_sees_own_devices_and_never_another_organizations(owner_client, make_device, other_fleet):
    mine = device_in(make_device, "online", name="mine")
    theirs = device_in(make_device, "online", name="theirs", fleet=other_fleet)
    response = owner_client.get(URL)
    assert response.status_code == 200
    assert row_uuids(response) == [mine.uuid]
    assert theirs.uuid[:7] not in html(response) and "theirs" not in html(response)
    assert status_counts(response)["all"] == 1


def test_member_of_two_organizations_sees_both(owner, owner_client, make_device, other_org, other_fleet):
    Membership.objects.create(user=owner, organization=other_org)
    a = device_in(make_device, "online", name="a")
    b = device_in(make_device, "offline", name="b", fleet=other_fleet)
    response = owner_client.get(URL)
    assert set(row_uuids(response)) == {a.uuid, b.uuid}


def test_search_cannot_reach_another_organizations_device(owner_client, make_device, other_fleet):
    theirs = device_in(make_device, "online", name="theirs", fleet=other_fleet)
    for q in (theirs.uuid[:10], "theirs", theirs.uuid):
        assert row_uuids(owner_client.get(URL, {"q": q})) == []


def test_another_organizations_fleet_slug_is_a_404(owner_client, make_device, other_fleet):
    device_in(make_device, "online", name="mine")
    device_in(make_device, "online", name="theirs", fleet=other_fleet)
    response = owner_client.get(URL, {"fleet": other_fleet.slug})
    assert response.status_code == 404
    assert "theirs" not in html(response)
    # The same answer as for a fleet that exists nowhere: the 404 reveals nothing.
    nowhere = owner_client.get(URL, {"fleet": "no-such-fleet"})
    assert nowhere.status_code == 404
    assert notices(nowhere) == ["There is no fleet 'no-such-fleet' in your organizations; showing all fleets."]


def test_another_organizations_fleet_in_a_polled_fragment_is_a_404(owner_client, other_fleet):
    response = owner_client.get(URL, {"fleet": other_fleet.slug}, HTTP_HX_REQUEST="true")
    assert response.status_code == 404


# --- Content ---------------------------------------------------------------------------------------------


def test_every_status_has_its_badge_label_marker_and_count(owner_client, make_device):
    devices = one_of_each(make_device)
    response = owner_client.get(URL)
    counts = status_counts(response)
    assert counts == {"all": 9, **{slug: 1 for slug in LABELS}}
    for slug, device in devices.items():
        cell = badge(response, device.uuid)
        assert f'data-status="{slug}"' in cell
        assert f"badge--{slug}" in cell
        assert '<svg class="badge__icon badge__icon--' + slug in cell and 'aria-hidden="true"' in cell
        label = text(cell)
        assert label.startswith(LABELS[slug])
    assert (
        "<sup" in badge(response, devices["online-vpn-only"].uuid)
        and text(badge(response, devices["online-vpn-only"].uuid)) == "Online (VPN Only)¹"
    )
    assert text(badge(response, devices["online-heartbeat-only"].uuid)) == "Online (Heartbeat Only)²"
    assert "<sup" not in badge(response, devices["online"].uuid)


def test_each_status_icon_has_a_distinct_shape():
    from devices.templatetags.fleetstatus import icon_shapes

    shapes = [icon_shapes()[s.value] for s in Status]
    assert len(set(shapes)) == len(shapes)


def test_progress_bars_for_updating_configuring_and_post_provisioning(owner_client, make_device):
    updating = device_in(make_device, "updating", name="u", download_progress=37)
    configuring = device_in(
        make_device,
        "configuring",
        name="c",
        **signals_for("online", timezone.now()),
        provisioning_state="Running OS update",
        provisioning_progress=65,
    )
    post = device_in(make_device, "post-provisioning", name="p")
    no_progress = device_in(make_device, "configuring", name="never-connected")
    online = device_in(make_device, "online", name="o")
    response = owner_client.get(URL)
    assert '<progress max="100" value="37" aria-label="Download progress">' in badge(response, updating.uuid)
    assert '<progress max="100" value="65" aria-label="Provisioning progress">' in badge(response, configuring.uuid)
    assert '<progress max="100" value="80" aria-label="Provisioning progress">' in badge(response, post.uuid)
    assert "<progress" not in badge(response, no_progress.uuid)
    assert "<progress" not in badge(response, online.uuid)


def test_frozen_badge_carries_its_reason_and_rows_are_tinted_or_faded(owner_client, make_device):
    frozen = device_in(make_device, "frozen", name="f")
    inactive = device_in(make_device, "inactive", name="i")
    response = owner_client.get(URL)
    assert 'title="Frozen: Paid fleet type while the organization is on the free tier"' in badge(response, frozen.uuid)
    assert f'<tr data-uuid="{frozen.uuid}" class="row--frozen">' in html(response)
    assert f'<tr data-uuid="{inactive.uuid}" class="row--inactive">' in html(response)


def test_row_columns(owner_client, owner, make_device, fleet):
    show_every_column(owner)
    now = timezone.now()
    d = device_in(
        make_device,
        "online-heartbeat-only",
        name="gate-a12",
        os_version="balenaOS 6.0.13",
        release="8f3e2b1deadbeef",
        ip_address="10.0.3.17 192.168.1.4",
    )
    response = owner_client.get(URL)
    row = re.search(rf'<tr data-uuid="{d.uuid}".*?</tr>', html(response), re.S).group(0)
    assert f'<a href="/devices/{d.uuid}/">gate-a12</a>' in row
    assert f'<code title="{d.uuid}">{d.uuid[:7]}</code>' in row
    assert fleet.name in row and "raspberrypi4-64" in row and "balenaOS 6.0.13" in row
    assert '<code title="8f3e2b1deadbeef">8f3e2b1de…</code>' in row
    assert "10.0.3.17" in row and "+1" in row
    # Heartbeat online; tunnel down with "last up" relative time and the exact time on hover.
    assert "signal--yes" in re.search(r'<td class="col-heartbeat">(.*?)</td>', row, re.S).group(1)
    cloudlink = re.search(r'<td class="col-cloudlink">(.*?)</td>', row, re.S).group(1)
    assert "Not connected" in cloudlink and "last up" in cloudlink and "1 h ago" in cloudlink
    last_seen = re.search(r'<td class="col-last_seen">(.*?)</td>', row, re.S).group(1)
    assert re.search(
        r'<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC" data-rel="ago">(just now|\d+ s ago)</time>',
        last_seen,
    )
    assert now.tzinfo is not None


def test_title_counts_devices_not_online_and_shows_as_of(owner_client, make_device):
    device_in(make_device, "online", name="a")
    device_in(make_device, "offline", name="b")
    device_in(make_device, "online-heartbeat-only", name="c")
    response = owner_client.get(URL)
    assert title(response) == "(2) Devices · fleetstatus"
    assert re.search(r"as of <time datetime=\"[^\"]+\" data-clock>\d\d:\d\d:\d\d UTC</time>", html(response))
    # All Online: no count in the title.
    assert title(owner_client.get(URL, {"status": "online"})) == "Devices · fleetstatus"


def test_footnotes_explain_both_markers_and_power_loss(owner_client, make_device):
    device_in(make_device, "online-heartbeat-only")
    page = text(html(owner_client.get(URL)))
    assert "¹ Online (VPN Only): the tunnel is up" in page and "Remote SSH still works" in page
    assert (
        "² Online (Heartbeat Only): the device fetches its target state on time but its cloudlink tunnel is down"
        in page
    )
    assert "loses power or all network keeps showing Online (Heartbeat Only)" in page


def test_page_works_without_cdn_and_sends_csrf_via_hx_headers(owner_client):
    page = html(owner_client.get(URL))
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', page)
    assert scripts == ["/static/vendor/htmx.min.js", "/static/fleetstatus/app.js"]
    assert not re.search(r"<script(?![^>]*src=)", page), "no inline script under the CSP"
    assert re.search(r"<body hx-headers='\{\"X-CSRFToken\": \"[A-Za-z0-9]+\"\}'>", page)
    assert 'class="skip-link" href="#main"' in page and '<main id="main"' in page


# --- Dead-man's switch -------------------------------------------------------------------------------


def test_dead_mans_switch_warns_when_never_run(owner_client):
    page = html(owner_client.get(URL))
    assert 'class="health health--stale"' in page
    assert "Statuses have never been re-evaluated." in page


def test_dead_mans_switch_fresh_and_then_stale(owner_client, settings):
    settings.FLEETSTATUS_SWEEP_INTERVAL = 10
    start = timezone.now()
    TaskRun.objects.create(name="sweep", last_success_at=start)
    with time_machine.travel(start + timedelta(seconds=12), tick=False):
        page = html(owner_client.get(URL))
        assert 'class="health"' in page
        assert re.search(r"Statuses re-evaluated <time [^>]+>12 s ago</time>", page)
    with time_machine.travel(start + timedelta(seconds=30), tick=False):
        assert 'class="health"' in html(owner_client.get(URL))  # exactly 3 intervals: still fine
    with time_machine.travel(start + timedelta(seconds=31), tick=False):
        page = html(owner_client.get(URL))
        assert 'class="health health--stale"' in page
        assert "31 s ago" in page and "they should be every 10 s" in page


# --- Filters ------------------------------------------------------------------------------------------


def test_status_filter_and_counts_that_keep_other_filters(owner_client, make_device, make_fleet, org):
    devices = one_of_each(make_device)
    response = owner_client.get(URL, {"status": "offline", "sort": "-name"})
    assert row_uuids(response) == [devices["offline"].uuid]
    # Counts stay for every status (the filter does not hide them) ...
    assert status_counts(response)["online"] == 1 and status_counts(response)["all"] == 9
    # ... and each count link swaps the status while keeping sort, dropping the page.
    assert 'href="/devices/?status=online&amp;sort=-name"' in html(response)
    assert 'aria-current="true"' in re.search(r'<a class="count count--offline[^>]*>', html(response)).group(0)


def test_repeated_status_filter(owner_client, make_device):
    devices = one_of_each(make_device)
    response = owner_client.get(URL + "?status=offline&status=frozen&status=offline")
    assert set(row_uuids(response)) == {devices["offline"].uuid, devices["frozen"].uuid}
    assert title(response) == "(2) Devices · fleetstatus"


def test_unknown_status_gives_a_notice_and_is_ignored(owner_client, make_device):
    devices = one_of_each(make_device)
    response = owner_client.get(URL + "?status=bogus")
    assert response.status_code == 200
    assert len(row_uuids(response)) == 9
    assert notices(response)[0].startswith("Unknown status 'bogus' ignored.")
    mixed = owner_client.get(URL + "?status=bogus&status=online")
    assert row_uuids(mixed) == [devices["online"].uuid]


def test_fleet_filter_with_counts_for_that_fleet(owner_client, make_device, make_fleet, org):
    kiosks = device_in(make_device, "online", name="k")
    sensors, _ = make_fleet(org, "sensors")
    s1 = device_in(make_device, "offline", name="s1", fleet=sensors)
    s2 = device_in(make_device, "online", name="s2", fleet=sensors)
    response = owner_client.get(URL, {"fleet": "sensors"})
    assert response.status_code == 200
    assert row_uuids(response) == [s1.uuid, s2.uuid]
    assert status_counts(response)["all"] == 2 and status_counts(response)["online"] == 1
    assert kiosks.uuid not in html(response)
    # The organization-qualified form works too.
    assert row_uuids(owner_client.get(URL, {"fleet": f"{org.slug}/sensors"})) == [s1.uuid, s2.uuid]
    assert 'value="sensors" selected' in html(response)


def test_fleet_choices_name_the_organization_when_the_user_has_several(
    owner, owner_client, other_org, make_fleet, fleet
):
    Membership.objects.create(user=owner, organization=other_org)
    make_fleet(other_org, "kiosks")
    page = html(owner_client.get(URL))
    assert '<option value="northwind/kiosks">Northwind / Kiosks</option>' in page
    assert '<option value="contoso/kiosks">Contoso / Kiosks</option>' in page
    assert 'value="contoso/kiosks" selected' in html(owner_client.get(URL, {"fleet": "contoso/kiosks"}))
    # A bare slug both organizations use shows both fleets' devices, and selects neither.
    assert (
        " selected"
        not in html(owner_client.get(URL, {"fleet": "kiosks"}))
        .split('id="filter-fleet"', 1)[1]
        .split("</select>", 1)[0]
    )


def test_malformed_fleet_gives_a_notice_and_all_fleets(owner_client, make_device):
    d = device_in(make_device, "online")
    for bad in ("<script>", "a/b/c", "x" * 80):
        response = owner_client.get(URL, {"fleet": bad})
        assert response.status_code == 200, bad
        assert row_uuids(response) == [d.uuid]
        assert "is not a fleet name; showing all fleets." in notices(response)[0]
        assert "<script>" not in html(response).split("<main", 1)[1].split("</form>", 1)[1]


def test_search_by_name_uuid_prefix_and_ip(owner_client, make_device):
    a = device_in(make_device, "online", name="Gate-A12-kiosk", ip_address="10.0.3.17")
    b = device_in(make_device, "online", name="lobby", ip_address="192.168.7.20 10.9.9.9")
    assert row_uuids(owner_client.get(URL, {"q": "a12"})) == [a.uuid]
    assert row_uuids(owner_client.get(URL, {"q": b.uuid[:6].upper()})) == [b.uuid]
    assert row_uuids(owner_client.get(URL, {"q": "192.168.7"})) == [b.uuid]
    assert row_uuids(owner_client.get(URL, {"q": "10.0.3.17"})) == [a.uuid]
    assert row_uuids(owner_client.get(URL, {"q": "nothing-like-it"})) == []
    assert "No device matches this view." in html(owner_client.get(URL, {"q": "nothing-like-it"}))


def test_overlong_or_nul_search_is_ignored_with_a_notice(owner_client, make_device):
    d = device_in(make_device, "online")
    for q in ("x" * 101, "ab\x00c"):
        response = owner_client.get(URL, {"q": q})
        assert response.status_code == 200
        assert row_uuids(response) == [d.uuid]
        assert "showing all devices" in notices(response)[0]


# --- Sort ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(SORTS))
def test_every_sort_key_both_directions(owner_client, owner, make_device, make_fleet, org, key):
    show_every_column(owner)
    base = timezone.now()
    other_fleet_of_org, _ = make_fleet(org, "aaa-first")
    made = [
        device_in(
            make_device,
            "online",
            name="bravo",
            os_version="2.0",
            release="r2",
            ip_address="10.0.0.2",
            device_type="b",
            at=base - timedelta(minutes=3),
        ),
        device_in(
            make_device,
            "offline",
            name="alpha",
            os_version="3.0",
            release="r3",
            ip_address="10.0.0.3",
            device_type="c",
            at=base - timedelta(minutes=1),
            fleet=other_fleet_of_org,
        ),
        device_in(
            make_device,
            "online-heartbeat-only",
            name="charlie",
            os_version="1.0",
            release="r1",
            ip_address="10.0.0.1",
            device_type="a",
            at=base - timedelta(minutes=2),
        ),
    ]
    from devices.models import Device

    fields = SORTS[key][1]
    expected = list(
        Device.objects.filter(pk__in=[d.pk for d in made]).order_by(*fields, "pk").values_list("uuid", flat=True)
    )
    asc = owner_client.get(URL, {"sort": key})
    desc = owner_client.get(URL, {"sort": f"-{key}"})
    assert asc.status_code == desc.status_code == 200
    assert row_uuids(asc) == expected
    assert row_uuids(desc) == expected[::-1]
    th = re.search(rf'<th scope="col" class="col-{key}"[^>]*>', html(asc)).group(0)
    assert 'aria-sort="ascending"' in th
    # The header link of the active column flips the direction.
    assert f'href="/devices/?sort=-{key}"' in html(asc)


def test_sort_by_last_seen_puts_never_seen_last_both_ways(owner_client, make_device):
    now = timezone.now()
    old = device_in(make_device, "offline", name="old", last_seen_at=now - timedelta(days=2))
    new = device_in(make_device, "online", name="new", last_seen_at=now)
    never = device_in(make_device, "configuring", name="never")
    assert row_uuids(owner_client.get(URL, {"sort": "last_seen"})) == [old.uuid, new.uuid, never.uuid]
    assert row_uuids(owner_client.get(URL, {"sort": "-last_seen"})) == [new.uuid, old.uuid, never.uuid]


def test_equal_sort_values_break_ties_by_id(owner_client, make_device):
    twins = [device_in(make_device, "online", name="same") for _ in range(3)]
    assert row_uuids(owner_client.get(URL, {"sort": "name"})) == [d.uuid for d in twins]
    assert row_uuids(owner_client.get(URL, {"sort": "-name"})) == [d.uuid for d in reversed(twins)]


def test_unknown_sort_gives_a_notice_and_the_default_order(owner_client, make_device):
    b = device_in(make_device, "online", name="b")
    a = device_in(make_device, "online", name="a")
    for bad in ("password", "-", "--name", "name;drop"):
        response = owner_client.get(URL, {"sort": bad})
        assert response.status_code == 200
        assert row_uuids(response) == [a.uuid, b.uuid]
        assert notices(response)[0].startswith("Cannot sort by")


# --- Pagination ---------------------------------------------------------------------------------------


@pytest.fixture
def many(make_device):
    now = timezone.now()
    return [
        device_in(make_device, "online", name=f"dev-{i:03d}", at=now - timedelta(seconds=i))
        for i in range(PAGE_SIZE + 7)
    ]


def test_pages_partition_the_filtered_sorted_view(owner_client, many):
    first = owner_client.get(URL, {"sort": "-name"})
    second = owner_client.get(URL, {"sort": "-name", "page": "2"})
    expected = [d.uuid for d in sorted(many, key=lambda d: d.name, reverse=True)]
    assert row_uuids(first) == expected[:PAGE_SIZE]
    assert row_uuids(second) == expected[PAGE_SIZE:]
    assert f"Showing 1–{PAGE_SIZE} of {len(many)} devices" in html(first)
    assert f"Showing {PAGE_SIZE + 1}–{len(many)} of {len(many)} devices" in html(
        first.client.get(URL, {"sort": "-name", "page": 2})
    )
    # Next keeps sort; the page links are real hrefs.
    assert 'rel="next" href="?sort=-name&amp;page=2"' in html(first)
    assert 'rel="prev" href="?sort=-name&amp;page=1"' in html(second)


def test_bad_and_out_of_range_pages(owner_client, many):
    for bad in ("x", "0", "-1", "1.5", "9" * 30):
        response = owner_client.get(URL, {"page": bad})
        assert response.status_code == 200
        assert len(row_uuids(response)) == PAGE_SIZE
        assert "is not a page number; showing the first page." in notices(response)[0]
    response = owner_client.get(URL, {"page": "99"})
    assert response.status_code == 200
    assert len(row_uuids(response)) == 7
    assert notices(response) == ["There is no page 99; showing the last page (2)."]


# --- htmx fragment --------------------------------------------------------------------------------------


def test_htmx_poll_renders_the_fragment_only(owner_client, make_device):
    d = device_in(make_device, "offline", name="x")
    full = owner_client.get(URL, {"status": "offline"})
    fragment = owner_client.get(URL, {"status": "offline"}, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200
    body = html(fragment)
    assert "<html" not in body and "<header" not in body and 'name="q"' not in body
    assert body.lstrip().startswith("<title>(1) Devices · fleetstatus</title>")
    assert row_uuids(fragment) == [d.uuid]
    assert 'id="sweep-health"' in body and 'hx-swap-oob="true"' in body

    # The same fragment as in the full page: the live region is identical but for the clock.
    def live(response) -> str:
        region = re.search(r'<div id="live".*?\n</div>', html(response), re.S).group(0)
        return re.sub(r"<time[^>]*>[^<]*</time>|data-server-now=\"[^\"]+\"", "", region)

    assert live(fragment) == live(full)
    # It polls its own URL (filters kept) and swaps itself.
    assert 'hx-get="/devices/?status=offline"' in body and 'hx-select="#live"' in body
    assert 'hx-trigger="every 10s, visibilitychange from:document"' in body
    assert "HX-Request" in fragment["Vary"] and "HX-Request" in full["Vary"]


def test_boosted_request_gets_the_full_page(owner_client):
    response = owner_client.get(URL, HTTP_HX_REQUEST="true", HTTP_HX_BOOSTED="true")
    assert "<html" in html(response)


# --- Query counts -------------------------------------------------------------------------------------

# session, user, memberships (with the user's column choice), status counts, rows, the rows' tags (one query;
# the Tags column is a default one), fleet choices, saved views menu, dead-man's switch
FULL_PAGE_QUERIES = 9
# Sorted by name with a search or tags: the page's ids from the search rows, then those devices.
SEARCH_PAGE_QUERIES = FULL_PAGE_QUERIES + 1
# the same without the fleet choices of the filter form
FRAGMENT_QUERIES = 7


def _queries(client, url, **headers) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, **headers)
    assert response.status_code == 200
    return len(ctx.captured_queries)


def test_query_count_does_not_grow_with_rows_or_pages(owner_client, make_device, make_fleet, org):
    for i in range(5):
        device_in(make_device, "online", name=f"a{i}")
    small = _queries(owner_client, URL)
    small_fragment = _queries(owner_client, URL, HTTP_HX_REQUEST="true")
    for i in range(55):
        device_in(make_device, ["offline", "online-heartbeat-only", "updating"][i % 3], name=f"b{i:02d}")
    for i in range(4):
        make_fleet(org, f"extra-{i}")
    assert _queries(owner_client, URL) == small == FULL_PAGE_QUERIES
    assert _queries(owner_client, URL + "?page=2") == FULL_PAGE_QUERIES
    assert _queries(owner_client, URL + "?status=offline&status=updating&sort=-last_seen&q=b") == FULL_PAGE_QUERIES
    assert _queries(owner_client, URL, HTTP_HX_REQUEST="true") == small_fragment == FRAGMENT_QUERIES
    # A fleet filter costs one lookup, whatever the size.
    assert _queries(owner_client, URL + "?fleet=kiosks&page=2") == FULL_PAGE_QUERIES + 1


def _sql(client, url) -> list[str]:
    with CaptureQueriesContext(connection) as ctx:
        client.get(url)
    return [q["sql"] for q in ctx.captured_queries]


@pytest.mark.parametrize("params", ["", "?status=offline", "?fleet=kiosks", "?sort=-last_seen&page=2"])
def test_counts_come_from_the_kept_counts_not_the_devices(owner_client, make_device, params):
    device_in(make_device, "online")
    sql = _sql(owner_client, URL + params)
    assert not [s for s in sql if "COUNT(" in s.upper() and "devices_device" in s]
    grouped = [s for s in sql if "GROUP BY" in s.upper()]
    assert len(grouped) == 1 and "fleets_statuscount" in grouped[0] and "devices_device" not in grouped[0]


def test_a_search_counts_its_matches_in_one_group_by(owner_client, make_device):
    device_in(make_device, "online", name="kiosk-1")
    device_in(make_device, "offline", name="robot-1")
    sql = _sql(owner_client, URL + "?q=kiosk")
    # Paginating never counts again: the page's total is the sum of the grouped counts.
    assert not [s for s in sql if "COUNT(" in s.upper() and "GROUP BY" not in s.upper()]
    grouped = [s for s in sql if "GROUP BY" in s.upper()]
    # From the search rows alone (devices/search.py), which carry the status: no device is read.
    assert len(grouped) == 1 and "devices_devicesearch" in grouped[0] and '"devices_device"' not in grouped[0]
    counts = status_counts(owner_client.get(URL + "?q=kiosk"))
    assert counts["all"] == 1 and counts["online"] == 1 and counts["offline"] == 0


def test_a_status_sorted_by_last_seen_both_ways_never_seen_last(owner_client, make_device):
    now = timezone.now()
    old = device_in(make_device, "offline", name="old", last_seen_at=now - timedelta(days=2))
    new = device_in(make_device, "offline", name="new", last_seen_at=now - timedelta(hours=1))
    never = device_in(make_device, "offline", name="never", last_seen_at=None)
    device_in(make_device, "online", name="other", last_seen_at=now)
    assert never.last_seen_at is None
    for sort, expected in (("last_seen", [old, new, never]), ("-last_seen", [new, old, never])):
        url = f"{URL}?status=offline&sort={sort}"
        assert row_uuids(owner_client.get(url)) == [d.uuid for d in expected]
        assert _queries(owner_client, url) == FULL_PAGE_QUERIES


def test_short_and_broad_searches_count_and_list_from_the_search_rows(owner_client, make_device, make_fleet, org):
    robots, _ = make_fleet(org, "robots")
    kiosk = device_in(make_device, "online", name="Kiosk-A", ip_address="10.0.3.17")
    lobby = device_in(make_device, "offline", name="lobby-gate", ip_address="10.1.1.1 192.168.7.20")
    robot = device_in(make_device, "offline", name="robot", ip_address="172.16.0.10", fleet=robots)
    by_uuid = {d.uuid: d for d in (kiosk, lobby, robot)}
    for q, found in (
        ("a", {kiosk, lobby} | ({robot} if robot.uuid.startswith("a") else set())),  # any case, or a UUID prefix
        ("k", {kiosk}),
        ("0.", {kiosk, lobby, robot}),  # IP contains
        ("10.", {kiosk, lobby}),  # "172.16.0.10" holds no "10."
        ("ob", {lobby, robot}),
    ):
        response = owner_client.get(URL, {"q": q})
        assert {by_uuid[u] for u in row_uuids(response)} == found, q
        counts = status_counts(response)
        assert counts["all"] == len(found), q
        assert counts["offline"] == len([d for d in found if d.overall_status == "offline"]), q
        assert _queries(owner_client, f"{URL}?q={q}") == SEARCH_PAGE_QUERIES
        assert _queries(owner_client, f"{URL}?q={q}&sort=status") == FULL_PAGE_QUERIES
    # With a fleet, from the same rows; with a status, the page lists that status alone.
    assert row_uuids(owner_client.get(URL, {"q": "ob", "fleet": "robots"})) == [robot.uuid]
    assert status_counts(owner_client.get(URL, {"q": "ob", "fleet": "robots"}))["all"] == 1
    assert row_uuids(owner_client.get(URL, {"q": "o", "status": "online"})) == [kiosk.uuid]


def test_search_wildcards_are_literal(owner_client, make_device):
    percent = device_in(make_device, "online", name="sale-50%-off")
    under = device_in(make_device, "online", name="gate_b")
    device_in(make_device, "online", name="sale-500-off")
    device_in(make_device, "online", name="gate-b")
    assert row_uuids(owner_client.get(URL, {"q": "50%"})) == [percent.uuid]
    assert row_uuids(owner_client.get(URL, {"q": "E_B"})) == [under.uuid]


def test_a_search_with_a_tag_filter_counts_and_lists_from_the_search_rows(owner_client, make_device):
    tagged = device_in(make_device, "online", name="kiosk-1")
    device_in(make_device, "online", name="kiosk-2")
    services.set_tag(Device.objects.filter(pk=tagged.pk), "site", "gate-b")
    response = owner_client.get(URL, {"q": "kiosk", "tag": "site:gate-b"})
    assert row_uuids(response) == [tagged.uuid] and status_counts(response)["all"] == 1
    assert _queries(owner_client, f"{URL}?q=kiosk&tag=site:gate-b") == SEARCH_PAGE_QUERIES
    # A filter the search rows do not hold (update status) takes the devices' path.
    assert row_uuids(owner_client.get(URL, {"q": "kiosk", "tag": "site:gate-b", "update_status": "done"})) == []


def test_a_page_from_the_search_rows_is_in_the_devices_name_order(owner_client, make_device, other_fleet):
    """The search rows' name order (ties by id) is the devices' own: the same pages, both ways."""
    names = ["beta", "Beta", "alpha", "ALPHA", "gamma", "beta", "_x", "Zeta", "zeta", "10", "9"]
    devices = [device_in(make_device, "offline" if n % 5 else "online", name=names[n % len(names)]) for n in range(57)]
    device_in(make_device, "online", name="elsewhere", fleet=other_fleet)  # another organization's
    services.set_tag(Device.objects.filter(pk__in=[d.pk for d in devices]), "site", "all")
    for sort in ("name", "-name"):
        for page in ("1", "2"):
            everything = row_uuids(owner_client.get(URL, {"sort": sort, "page": page}))
            tagged = row_uuids(owner_client.get(URL, {"sort": sort, "page": page, "tag": "site:all"}))
            assert tagged == everything and len(tagged) == (50 if page == "1" else 7), (sort, page)
    online = row_uuids(owner_client.get(URL, {"tag": "site:all", "status": "online"}))
    assert online == row_uuids(owner_client.get(URL, {"status": "online"})) and len(online) == 12


def test_status_changes_show_on_the_next_poll(owner_client, make_device):
    d = device_in(make_device, "online-heartbeat-only")
    assert status_counts(owner_client.get(URL, HTTP_HX_REQUEST="true"))["online-heartbeat-only"] == 1
    services.update_device(d, {"api_heartbeat_state": "offline"}, reason="test")
    fragment = owner_client.get(URL, HTTP_HX_REQUEST="true")
    assert status_counts(fragment)["offline"] == 1 and status_counts(fragment)["online-heartbeat-only"] == 0
    assert 'data-status="offline"' in badge(fragment, d.uuid)


def test_device_and_fleet_names_are_escaped(owner_client, make_device, fleet):
    fleet.name = "<b>fleet</b>"
    fleet.save()
    d = device_in(make_device, "online", name='<script>alert("x")</script>', release='"><img src=x>')
    page = html(owner_client.get(URL))
    assert "<script>alert" not in page and "<img src=x>" not in page and "<b>fleet</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    summary = html(owner_client.get(f"/devices/{d.uuid}/"))
    assert "<script>alert" not in summary and "<b>fleet</b>" not in summary


def test_only_safe_methods(owner_client):
    assert owner_client.head(URL).status_code == 200
    assert owner_client.post(URL).status_code == 405


@pytest.mark.parametrize(
    "params",
    [
        "",
        "status=offline",
        "status=offline&status=updating&page=3",
        "q=a+b%26c&sort=-name",
        "page=2",
        "fleet=org/ki+osks&q=é",
    ],
)
@pytest.mark.parametrize(
    "changes", [{"status": None, "page": None}, {"status": "online", "page": None}, {"sort": "-name", "page": None}]
)
def test_links_render_what_the_querystring_tag_renders(owner_client, params, changes):
    from django.template import RequestContext, Template
    from django.test import RequestFactory

    if changes.get("sort") and "sort=-name" in params:
        changes = {**changes, "sort": "name"}  # the Name header's link toggles the direction
    request = RequestFactory().get(f"/devices/?{params}")
    args = " ".join(f"{k}=None" if v is None else f'{k}="{v}"' for k, v in changes.items())
    expected = Template("{% querystring " + args + " %}").render(RequestContext(request))
    assert f'href="{URL}{expected}"' in html(owner_client.get(f"{URL}?{params}"))
