"""The organization admin: tier and allowance saved through services (Frozen follows), members, usage."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from devices.models import Device, StatusTransition
from devices.status import HeartbeatState, Status
from fleets.models import Membership, Organization, Tier

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:fleets_organization_changelist"


def change_url(org: Organization) -> str:
    return reverse("admin:fleets_organization_change", args=[org.pk])


def form_data(org: Organization, members: list[Membership] = (), **overrides) -> dict:
    data = {
        "name": org.name,
        "slug": org.slug,
        "tier": org.tier,
        "status_names": org.status_names,
        "device_allowance": "" if org.device_allowance is None else str(org.device_allowance),
        "memberships-TOTAL_FORMS": str(len(members)),
        "memberships-INITIAL_FORMS": str(len(members)),
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    for i, m in enumerate(members):
        data |= {
            f"memberships-{i}-id": str(m.pk),
            f"memberships-{i}-organization": str(org.pk),
            f"memberships-{i}-user": str(m.user_id),
            f"memberships-{i}-role": m.role,
        }
    data.update(overrides)
    return data


def assert_saved(response) -> None:
    assert response.status_code == 302, response.content[:3000]
    assert response["Location"] == reverse(CHANGELIST)


def test_changelist_shows_usage_against_allowance_and_frozen_count(
    staff_client, org, other_org, make_device, other_fleet
):
    for _ in range(3):
        make_device(api_heartbeat_state=HeartbeatState.OFFLINE)
    make_device(is_active=False)
    make_device(other_fleet)
    Organization.objects.filter(pk=org.pk).update(device_allowance=2)
    Device.objects.filter(pk=Device.objects.filter(organization=org).order_by("-pk").values("pk")[1:2]).update(
        is_frozen=True
    )
    response = staff_client.get(reverse(CHANGELIST))
    by_pk = {o.pk: o for o in response.context["cl"].result_list}
    assert (by_pk[org.pk].active_device_count, by_pk[org.pk].frozen_device_count) == (3, 1)
    html = response.content.decode()
    assert "3 / 2" in html
    assert "1 / unlimited" in html


def test_changelist_query_count_does_not_grow_with_organizations(
    staff_client, make_fleet, make_device, django_assert_num_queries
):
    def populate(n: int, start: int) -> None:
        for i in range(start, start + n):
            o = Organization.objects.create(slug=f"o{i}", name=f"O{i}")
            make_device(make_fleet(o, "f")[0])

    populate(2, 0)
    with CaptureQueriesContext(connection) as few:
        staff_client.get(reverse(CHANGELIST))
    populate(10, 2)
    with django_assert_num_queries(len(few.captured_queries)):
        response = staff_client.get(reverse(CHANGELIST))
    assert len(response.context["cl"].result_list) == 13  # with the fixtures' Northwind


def test_lowering_the_allowance_freezes_the_newest_devices_with_admin_reason(staff_client, org, make_device):
    oldest, middle, newest = (
        make_device(name=n, api_heartbeat_state=HeartbeatState.OFFLINE) for n in ("old", "mid", "new")
    )
    assert_saved(staff_client.post(change_url(org), form_data(org, device_allowance="1")))
    org.refresh_from_db()
    assert org.device_allowance == 1
    statuses = dict(Device.objects.values_list("name", "overall_status"))
    assert statuses == {"old": Status.OFFLINE, "mid": Status.FROZEN, "new": Status.FROZEN}
    reasons = set(StatusTransition.objects.filter(to_status=Status.FROZEN).values_list("reason", flat=True))
    assert reasons == {"admin: root"}
    # Raising it again unfreezes them, again recorded as the admin's change.
    assert_saved(staff_client.post(change_url(org), form_data(org, device_allowance="")))
    assert set(Device.objects.values_list("overall_status", flat=True)) == {Status.OFFLINE}
    assert StatusTransition.objects.filter(from_status=Status.FROZEN, reason="admin: root").count() == 2


def test_free_tier_freezes_devices_in_paid_fleets(staff_client, org, make_fleet, make_device):
    paid = make_fleet(org, "paid", fleet_type=Tier.PAID)[0]
    in_paid = make_device(paid, api_heartbeat_state=HeartbeatState.OFFLINE)
    in_free = make_device(api_heartbeat_state=HeartbeatState.OFFLINE)
    assert_saved(staff_client.post(change_url(org), form_data(org, tier=Tier.FREE)))
    assert Device.objects.get(pk=in_paid.pk).overall_status == Status.FROZEN
    assert Device.objects.get(pk=in_free.pk).overall_status == Status.OFFLINE


def test_bad_allowance_is_a_form_error_and_changes_nothing(staff_client, org, make_device):
    make_device()
    response = staff_client.post(change_url(org), form_data(org, device_allowance="-1", tier=Tier.FREE))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["device_allowance"]
    org.refresh_from_db()
    assert (org.device_allowance, org.tier) == (None, Tier.PAID)


def test_members_inline_adds_and_removes_members(staff_client, org, owner):
    newcomer = get_user_model().objects.create_user(username="nora")
    membership = Membership.objects.get(user=owner, organization=org)
    data = form_data(org, [membership])
    data |= {
        "memberships-TOTAL_FORMS": "2",
        "memberships-1-organization": str(org.pk),
        "memberships-1-user": str(newcomer.pk),
        "memberships-1-role": Membership.Role.MEMBER,
        "memberships-0-DELETE": "on",
    }
    assert_saved(staff_client.post(change_url(org), data))
    assert list(org.memberships.values_list("user__username", "role")) == [("nora", "member")]


def test_change_page_shows_usage(staff_client, org, make_device):
    make_device()
    html = staff_client.get(change_url(org)).content.decode()
    assert "1 / unlimited" in html


def test_adding_an_organization(staff_client):
    data = form_data(Organization(name="Initech", slug="initech", tier=Tier.FREE), device_allowance="5")
    assert_saved(staff_client.post(reverse("admin:fleets_organization_add"), data))
    assert Organization.objects.filter(slug="initech", device_allowance=5).exists()
