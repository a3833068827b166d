"""The Fleets page (/fleets/): per-fleet counts and bars, organization usage, scoping, query counts."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices import services
from fleets.models import Fleet, Membership, Tier
from tests.dashboard_helpers import device_in, html, text, title

URL = "/fleets/"

pytestmark = pytest.mark.django_db


def card(response, slug: str) -> str:
    match = re.search(rf'<li class="fleet-card" data-fleet="{slug}"><article>.*?</article></li>', html(response), re.S)
    assert match, slug
    return match.group(0)


def org_head(response, slug: str) -> str:
    match = re.search(rf'<section class="org" data-org="{slug}".*?</header>', html(response), re.S)
    assert match, slug
    return match.group(0)


def counts_in(markup: str) -> dict[str, int]:
    return {s: int(n) for s, n in re.findall(r'data-status-count="([a-z-]+)">(\d+)<', markup)}


def test_anonymous_is_sent_to_login(anon_client):
    response = anon_client.get(URL)
    assert response.status_code == 302 and response["Location"] == "/login/?next=/fleets/"
    poll = anon_client.get(URL, HTTP_HX_REQUEST="true")
    assert poll.status_code == 403 and poll["HX-Redirect"] == "/login/?next=%2Ffleets%2F"


def test_fleet_cards_with_counts_links_and_bar(owner_client, make_device, make_fleet, org, fleet):
    for status in ("online", "online", "offline", "online-heartbeat-only"):
        device_in(make_device, status)
    sensors, _ = make_fleet(org, "sensors")
    device_in(make_device, "updating", fleet=sensors)
    make_fleet(org, "empty")
    response = owner_client.get(URL)
    assert response.status_code == 200
    kiosks = card(response, "kiosks")
    assert counts_in(kiosks) == {"online": 2, "online-heartbeat-only": 1, "offline": 1}
    assert 'data-fleet-total="4"' in kiosks and "raspberrypi4-64" in kiosks
    assert 'href="/devices/?fleet=kiosks&amp;status=offline"' in kiosks
    assert 'href="/devices/?fleet=kiosks&amp;status=online-heartbeat-only"' in kiosks
    assert '<a href="/devices/?fleet=kiosks">Kiosks</a>' in kiosks
    assert '<a class="fleet-card__page" href="/fleets/northwind/kiosks/">Status over time</a>' in kiosks
    # The stacked bar: one segment per non-zero status, proportional (flex-grow = count).
    segments = re.findall(r'class="stackbar__seg seg--([a-z-]+)" style="flex-grow: (\d+)"', kiosks)
    assert segments == [("online", "2"), ("online-heartbeat-only", "1"), ("offline", "1")]
    # Legend labels carry the footnote marker of the partial states.
    assert 'Online (Heartbeat Only)<sup aria-hidden="true">²</sup>' in kiosks
    assert counts_in(card(response, "sensors")) == {"updating": 1}
    assert "No devices yet." in card(response, "empty")
    assert title(response) == "(3) Fleets · fleetstatus"


def test_count_links_lead_to_exactly_those_devices(owner_client, make_device, make_fleet, org):
    device_in(make_device, "offline", name="k-off")
    sensors, _ = make_fleet(org, "sensors")
    s_off = device_in(make_device, "offline", name="s-off", fleet=sensors)
    link = re.search(r'href="(/devices/\?fleet=sensors&amp;status=offline)"', html(owner_client.get(URL))).group(1)
    devices_page = html(owner_client.get(link.replace("&amp;", "&")))
    assert re.findall(r'<tr data-uuid="([0-9a-f]+)"', devices_page) == [s_off.uuid]


def test_organization_usage_allowance_frozen_and_tier(owner_client, make_device, org):
    for _ in range(3):
        device_in(make_device, "online")
    device_in(make_device, "inactive")
    services.update_organization(org, {"device_allowance": 2}, reason="test")
    response = owner_client.get(URL)
    head = org_head(response, org.slug)
    # 3 active (the inactive one does not count), 2 allowed, so the newest active one is frozen.
    assert 'data-org-active="3"' in head and 'data-org-allowance="2"' in head and 'data-org-frozen="1"' in head
    assert "org__stat--over" in head
    assert 'data-org-tier="paid"' in head and "Paid tier" in head
    assert counts_in(card(response, "kiosks")) == {"online": 2, "inactive": 1, "frozen": 1}


def test_unlimited_allowance_and_paid_fleet_on_free_tier(owner_client, make_device, org):
    device_in(make_device, "frozen")  # moves the org to the free tier, device into a paid fleet
    response = owner_client.get(URL)
    head = org_head(response, org.slug)
    assert "no allowance limit" in head and "Free tier" in head
    assert "A paid fleet type on a free tier: its active devices are frozen." in text(card(response, "paid-signage"))


def test_only_the_users_organizations(owner_client, make_device, other_fleet, other_org):
    device_in(make_device, "online")
    device_in(make_device, "online", fleet=other_fleet)
    page = html(owner_client.get(URL))
    assert 'data-fleet="kiosks"' in page
    assert 'data-fleet="robots"' not in page and other_org.name not in page


def test_same_fleet_slug_in_two_organizations_links_each_to_its_own(
    owner, owner_client, make_device, make_fleet, other_org
):
    Membership.objects.create(user=owner, organization=other_org)
    twin, _ = make_fleet(other_org, "kiosks")
    mine = device_in(make_device, "online", name="mine")
    theirs = device_in(make_device, "offline", name="theirs", fleet=twin)
    page = html(owner_client.get(URL))
    assert 'href="/devices/?fleet=northwind/kiosks&amp;status=online"' in page
    assert 'href="/devices/?fleet=contoso/kiosks&amp;status=offline"' in page
    rows = re.findall(r'<tr data-uuid="([0-9a-f]+)"', html(owner_client.get("/devices/?fleet=contoso/kiosks")))
    assert rows == [theirs.uuid] and mine.uuid not in rows


def test_no_organization_yet(client, django_user_model):
    user = django_user_model.objects.create_user(username="loner", password="x")
    client.force_login(user)
    response = client.get(URL)
    assert response.status_code == 200
    assert "You are not a member of any organization yet." in html(response)


def test_htmx_poll_renders_the_fragment_only(owner_client, make_device):
    device_in(make_device, "offline")
    response = owner_client.get(URL, HTTP_HX_REQUEST="true")
    body = html(response)
    assert body.lstrip().startswith("<title>(1) Fleets · fleetstatus</title>")
    assert '<div id="live"' in body and 'data-fleet="kiosks"' in body
    assert "<html" not in body and '<header class="topbar"' not in body


# session, user, memberships, fleets per organization, the organizations' kept counts, the page's
# fleets with theirs, dead-man's switch; notifications: fleet mutes
FLEETS_QUERIES = 8


def _queries(client) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(URL).status_code == 200
    return len(ctx.captured_queries)


def test_query_count_does_not_grow_with_fleets_or_devices(owner_client, make_device, make_fleet, org):
    device_in(make_device, "online")
    small = _queries(owner_client)
    for i in range(8):
        f, _ = make_fleet(org, f"f{i}", fleet_type=Tier.FREE)
        for j in range(4):
            device_in(make_device, ["online", "offline", "updating", "configuring"][j], fleet=f)
    assert _queries(owner_client) == small == FLEETS_QUERIES
    with CaptureQueriesContext(connection) as ctx:
        owner_client.get(URL)
    # The counts come from the kept counts (fleets/counts.py), never from a scan of the devices.
    assert not [q["sql"] for q in ctx.captured_queries if "devices_device" in q["sql"]]
    counted = [q["sql"] for q in ctx.captured_queries if "fleets_statuscount" in q["sql"]]
    assert len(counted) == 2  # the organizations' counts, and the page's fleets sorted with theirs
    assert "LIMIT" in counted[1] and "ORDER BY" in counted[1]


def test_names_from_users_are_escaped(owner_client, make_device, make_fleet, org):
    evil, _ = make_fleet(org, "evil")
    evil.name = '<script>alert("x")</script>'
    evil.device_type = '"><img src=x onerror=alert(1)>'
    evil.save()
    device_in(make_device, "offline", fleet=evil)
    page = html(owner_client.get(URL))
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in card(owner_client.get(URL), "evil")


# --- Pages and sorting --------------------------------------------------------------------------------


def fleet_order(response) -> list[str]:
    return re.findall(r'<li class="fleet-card" data-fleet="([^"]+)">', html(response))


@pytest.fixture
def three_per_page(monkeypatch):
    from fleets import views

    monkeypatch.setattr(views, "FLEETS_PER_PAGE", 3)


@pytest.mark.usefixtures("three_per_page")
def test_fleets_are_paginated_with_the_organization_on_every_page(owner_client, make_device, make_fleet, org):
    for i in range(6):
        make_fleet(org, f"f{i}")  # kiosks + f0..f5: 7 fleets, 3 per page
    device_in(make_device, "online")
    first = owner_client.get(URL)
    assert fleet_order(first) == ["f0", "f1", "f2"]
    assert 'aria-label="Pages"' in html(first) and 'href="?page=2"' in html(first)
    assert "Fleets 1–3 of 7" in text(html(first)) and "4 more fleets of Northwind on other pages." in text(html(first))
    last = owner_client.get(URL + "?page=3")
    assert fleet_order(last) == ["kiosks"]
    # The organization's usage counts every fleet, whichever page is shown.
    assert 'data-org-active="1"' in org_head(last, org.slug)
    assert _queries(owner_client) == FLEETS_QUERIES
    with CaptureQueriesContext(connection) as ctx:
        owner_client.get(URL + "?page=3&sort=devices")
    assert len(ctx.captured_queries) == FLEETS_QUERIES


@pytest.mark.usefixtures("three_per_page")
def test_sorted_by_size_or_by_devices_not_online(owner_client, make_device, make_fleet, org):
    big, _ = make_fleet(org, "big")
    sick, _ = make_fleet(org, "sick")
    make_fleet(org, "empty")
    for _ in range(3):
        device_in(make_device, "online", fleet=big)
    for _ in range(2):
        device_in(make_device, "offline", fleet=sick)
    device_in(make_device, "online")  # kiosks
    assert fleet_order(owner_client.get(URL)) == ["big", "empty", "kiosks"]
    by_size = owner_client.get(URL + "?sort=devices")
    assert fleet_order(by_size) == ["big", "sick", "kiosks"]
    assert 'aria-current="true">Most devices</a>' in html(by_size)
    assert fleet_order(owner_client.get(URL + "?sort=not_online")) == ["sick", "big", "empty"]
    # The pager keeps the sort.
    assert 'href="?sort=devices&amp;page=2"' in html(by_size)
    assert fleet_order(owner_client.get(URL + "?sort=devices&page=2")) == ["empty"]


@pytest.mark.usefixtures("three_per_page")
def test_bad_sort_or_page_is_named_and_ignored(owner_client, make_fleet, org):
    for i in range(4):
        make_fleet(org, f"f{i}")
    response = owner_client.get(URL + "?sort=bogus&page=x")
    assert response.status_code == 200 and fleet_order(response) == ["f0", "f1", "f2"]
    assert "Cannot sort fleets by 'bogus'" in text(html(response)) and "Page 'x' is not a page number" in text(
        html(response)
    )
    beyond = owner_client.get(URL + "?page=99")
    assert fleet_order(beyond) == ["f3"] and "There is no page 99; showing the last page (2)." in text(html(beyond))


def test_fleet_page_query_matches_sorting_every_fleet_in_python(make_device, make_fleet, org, other_org):
    """fleets.counts.fleet_page() (sorted and cut in the database, by name from the page's fleets
    alone) gives what sorting every fleet with its counts would, on every page, with counts still
    pending in the deltas and a slug shared across organizations."""
    from fleets import counts

    statuses = ["online", "offline", "updating", "configuring", "inactive"]
    made = []
    for n in range(7):
        for owner in (org, other_org):
            f, _ = make_fleet(owner, f"f{n % 5}-{owner.slug}" if n >= 5 else f"f{n}")
            f.name = f"Fleet {6 - n % 4}"  # equal names: the id breaks the tie
            f.save()
            made.append(f)
            for j in range((n * 3 + owner.pk) % 5):
                device_in(make_device, statuses[(n + j) % len(statuses)], fleet=f)
    order = [other_org.pk, org.pk]
    real = counts.fleet_status_counts(order)
    zero = dict.fromkeys(counts.STATUS_SLUGS, 0)
    fleets = sorted(Fleet.objects.filter(organization__in=order), key=lambda f: (f.name, f.pk))
    slugs = Counter(f.slug for f in fleets)

    def key(f, sort):
        c = real.get(f.pk, zero)
        total = sum(c.values())
        by = {"": 0, "total": -total, "not_online": -(total - c["online"])}[sort]
        return (order.index(f.organization_id), by)

    for sort in counts.FLEET_PAGE_SORTS:
        expected = sorted(fleets, key=lambda f, sort=sort: key(f, sort))  # stable: name, id within ties
        for offset, limit in ((0, 4), (4, 4), (8, 100), (30, 5)):
            got = counts.fleet_page(order, sort, offset, limit)
            assert [row[0][0] for row in got] == [f.pk for f in expected[offset : offset + limit]], (sort, offset)
            for (columns, slug_uses, fleet_counts), f in zip(got, expected[offset:], strict=False):
                assert (columns[3], slug_uses, fleet_counts) == (f.slug, slugs[f.slug], real.get(f.pk, zero))
