"""Per-organization status names: balenaCloud's names on every page, slugs and values unchanged."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from devices import status_names
from devices.status import Status
from fleets.models import Membership, StatusNames
from tests.conftest import PASSWORD
from tests.dashboard_helpers import badge, device_in, html, one_of_each, text

pytestmark = pytest.mark.django_db

BALENA = {
    "online": "Operational",
    "online-vpn-only": "Reduced Functionality",
    "online-heartbeat-only": "Reduced Functionality",
    "offline": "Disconnected",
    "configuring": "Configuring",
    "updating": "Updating",
    "post-provisioning": "Post Provisioning",
    "inactive": "Inactive",
    "frozen": "Frozen",
}
DEFAULT = {s.value: s.label for s in Status}
# Labels of ours that balena does not use; none may show on a page of a balena organization. (Plain
# "Online"/"Offline" still name the heartbeat signal, which is not a status.)
OURS_ONLY = ("Online (VPN Only)", "Online (Heartbeat Only)")


@pytest.fixture
def balena(org):
    org.status_names = StatusNames.BALENA
    org.save(update_fields=["status_names"])
    return org


def _data_statuses(page: str) -> set[str]:
    return set(re.findall(r'data-status="([a-z-]+)"', page))


def _badge_label(response, uuid: str) -> str:
    return text(re.search(r'<span class="badge__label">([^<]*)', badge(response, uuid)).group(1))


def _count_labels(page: str) -> dict[str, str]:
    """The Devices page's status counts: slug -> label."""
    return {
        slug: text(label)
        for slug, label in re.findall(
            r'class="count count--([a-z-]+)[^"]*".*?<span class="count__label">(.*?)(?:<sup|</span>)', page, re.S
        )
    }


def test_the_labels_cover_every_status():
    assert set(status_names.LABELS[StatusNames.BALENA]) == set(DEFAULT) == set(BALENA)
    assert status_names.label("online") == "Online"  # outside a page: the default names
    assert status_names.label("offline", "balena") == "Disconnected"
    assert status_names.label("no-such", "balena") == "no-such"


@pytest.mark.parametrize(("naming", "names"), [(None, DEFAULT), ("balena", BALENA)])
def test_devices_page_badges_and_counts(owner_client, org, make_device, naming, names):
    if naming:
        org.status_names = naming
        org.save()
    devices = one_of_each(make_device)
    response = owner_client.get("/devices/")
    page = html(response)
    for slug, device in devices.items():
        assert _badge_label(response, device.uuid) == names[slug]
        assert f'data-status="{slug}"' in badge(response, device.uuid)
    assert _count_labels(page) == {"all": "All"} | names
    assert _data_statuses(page) == set(DEFAULT)
    # The status filter links keep their slugs.
    assert "?status=online-vpn-only" in page
    if naming:
        assert not [label for label in OURS_ONLY if label in page]
    else:
        assert "Online (VPN Only)" in page and "Operational" not in page and "Disconnected" not in page


def test_summary_page(owner_client, balena, make_device):
    start = timezone.now() - timedelta(hours=3)
    with time_machine.travel(start, tick=False):
        device = device_in(make_device, "online", name="gate")
    with time_machine.travel(start + timedelta(hours=1), tick=False):
        device = device_in(make_device, "offline", name="gate2")
    response = owner_client.get(reverse("devices:detail", args=[device.uuid]))
    page = html(response)
    assert 'data-status="offline"' in page
    assert '<span class="badge__label">Disconnected' in page
    assert "Disconnected" in text(re.search(r'<section[^>]*aria-labelledby="history.*?</section>', page, re.S).group(0))
    assert re.search(r'title="Disconnected from \d{4}-', page), "the strip's segments use the organization's names"
    assert "It is Disconnected now" in page
    assert not [label for label in OURS_ONLY if label in page]


def test_fleets_page(owner_client, balena, make_device):
    one_of_each(make_device)
    page = html(owner_client.get("/fleets/"))
    pairs = re.findall(
        r'<span class="legend__label">([^<]+)(?:<sup[^>]*>.</sup>)?</span> <span class="legend__n" data-status-count="([a-z-]+)"',
        page,
    )
    assert {slug for _, slug in pairs} == set(BALENA)  # every status in a card or an organization's legend
    assert all(label == BALENA[slug] for label, slug in pairs)
    assert "Operational" in page and "Disconnected" in page and "Reduced Functionality" in page
    assert not [label for label in OURS_ONLY if label in page]


def test_fleet_page(owner_client, balena, make_device):
    one_of_each(make_device)
    page = html(owner_client.get("/fleets/northwind/kiosks/?range=7d"))
    assert re.search(r'data-status-count="online">1<', page)
    assert "Operational" in page and "Disconnected" in page
    assert re.search(r'<th scope="col" data-status="offline">Disconnected</th>', page), "the chart's table"
    assert not [label for label in OURS_ONLY if label in page]


def test_a_user_of_several_organizations_sees_each_rows_own_names(balena, other_org, make_device, other_fleet):
    user = get_user_model().objects.create_user(username="max", password=PASSWORD)
    Membership.objects.create(user=user, organization=balena)
    Membership.objects.create(user=user, organization=other_org)
    client = Client()
    client.force_login(user)
    ours = device_in(make_device, "offline", name="ours")
    theirs = device_in(make_device, "offline", name="theirs", fleet=other_fleet)
    response = client.get("/devices/")
    assert _badge_label(response, ours.uuid) == "Disconnected"
    assert _badge_label(response, theirs.uuid) == "Offline"


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def test_the_names_cost_no_query(owner_client, org, make_device):
    for i in range(12):
        device_in(make_device, ["online", "offline", "online-vpn-only"][i % 3], name=f"d{i}")
    default = {url: _queries(owner_client, url) for url in ("/devices/", "/fleets/", "/fleets/northwind/kiosks/")}
    org.status_names = StatusNames.BALENA
    org.save()
    assert {url: _queries(owner_client, url) for url in default} == default


def test_export_and_filters_keep_the_slugs(owner_client, balena, make_device):
    device = device_in(make_device, "offline", name="gate")
    body = b"".join(owner_client.get("/devices/export.csv").streaming_content).decode()
    assert f"{device.uuid},gate,offline," in body
    response = owner_client.get("/devices/?status=offline")
    assert _badge_label(response, device.uuid) == "Disconnected"


def test_staff_choose_the_names_in_the_organization_admin(staff_client, org):
    url = reverse("admin:fleets_organization_change", args=[org.pk])
    assert "balenaCloud (Operational" in html(staff_client.get(url))
    data = {
        "name": org.name,
        "slug": org.slug,
        "tier": org.tier,
        "device_allowance": "",
        "status_names": "balena",
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    assert staff_client.post(url, data).status_code == 302
    org.refresh_from_db()
    assert org.status_names == "balena"
    response = staff_client.post(url, data | {"status_names": "klingon"})
    assert response.status_code == 200 and "Select a valid choice" in html(response)
    org.refresh_from_db()
    assert org.status_names == "balena"
