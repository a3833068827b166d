"""The fleet admin: settings saved through services.update_fleet, status counts, provisioning keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from devices import services
from devices.models import Device, StatusTransition
from devices.status import HeartbeatState, Status
from fleets.keys import key_matches
from fleets.models import Fleet, Tier

pytestmark = pytest.mark.django_db

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
CHANGELIST = "admin:fleets_fleet_changelist"
FLOOR = settings.FLEETSTATUS_MIN_POLL_INTERVAL


def change_url(fleet: Fleet) -> str:
    return reverse("admin:fleets_fleet_change", args=[fleet.pk])


def form_data(fleet: Fleet, **overrides) -> dict:
    data = {
        "name": fleet.name,
        "slug": fleet.slug,
        "device_type": fleet.device_type,
        "fleet_type": fleet.fleet_type,
        "poll_interval": "" if fleet.poll_interval is None else str(fleet.poll_interval),
        "cloudlink_enabled": "on" if fleet.cloudlink_enabled else None,
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def assert_saved(response) -> None:
    assert response.status_code == 302, response.content[:2000]
    assert response["Location"] == reverse(CHANGELIST)


def admin_transitions(device: Device) -> list[tuple[str, str, str]]:
    return list(
        StatusTransition.objects.filter(device=device, reason__startswith="admin:")
        .order_by("at", "id")
        .values_list("from_status", "to_status", "reason")
    )


# --- Changelist ------------------------------------------------------------------------------------


def test_changelist_counts_devices_per_status(staff_client, fleet, make_device, make_fleet, org):
    empty = make_fleet(org, "empty")[0]
    make_device(api_heartbeat_state=HeartbeatState.ONLINE)
    make_device(api_heartbeat_state=HeartbeatState.ONLINE)
    make_device(api_heartbeat_state=HeartbeatState.OFFLINE)
    make_device()  # Configuring
    response = staff_client.get(reverse(CHANGELIST))
    by_pk = {f.pk: f for f in response.context["cl"].result_list}
    kiosks = by_pk[fleet.pk]
    assert kiosks.device_total == 4
    assert kiosks.count_online_heartbeat_only == 2
    assert kiosks.count_offline == 1
    assert kiosks.count_configuring == 1
    assert kiosks.count_online == 0
    assert by_pk[empty.pk].device_total == 0
    html = response.content.decode()
    link = (
        reverse("admin:devices_device_changelist") + f"?fleet__id__exact={fleet.pk}&amp;overall_status__exact=offline"
    )
    assert f'href="{link}">Offline&nbsp;1</a>' in html
    assert "Online (Heartbeat Only)&nbsp;2" in html


def test_status_count_links_open_the_filtered_device_list(staff_client, fleet, make_device, make_fleet, org):
    other = make_fleet(org, "other")[0]
    make_device(api_heartbeat_state=HeartbeatState.OFFLINE, name="match")
    make_device(other, api_heartbeat_state=HeartbeatState.OFFLINE, name="other-fleet")
    make_device(name="other-status")
    response = staff_client.get(
        reverse("admin:devices_device_changelist"), {"fleet__id__exact": fleet.pk, "overall_status__exact": "offline"}
    )
    assert [d.name for d in response.context["cl"].result_list] == ["match"]


def test_changelist_is_one_query_for_counts_whatever_the_number_of_fleets(
    staff_client, make_fleet, make_device, org, other_org, django_assert_num_queries
):
    def populate(n: int) -> None:
        for i in range(n):
            f = make_fleet(org if i % 2 else other_org, f"f{n}-{i}")[0]
            make_device(f)
            make_device(f, api_heartbeat_state=HeartbeatState.ONLINE)

    populate(2)
    with CaptureQueriesContext(connection) as few:
        staff_client.get(reverse(CHANGELIST))
    populate(8)
    with django_assert_num_queries(len(few.captured_queries)):
        response = staff_client.get(reverse(CHANGELIST))
    assert len(response.context["cl"].result_list) == 11  # with the fixtures' "kiosks" fleet


# --- Editing ---------------------------------------------------------------------------------------


def test_interval_below_the_floor_is_a_form_error(staff_client, fleet):
    response = staff_client.post(change_url(fleet), form_data(fleet, poll_interval=str(FLOOR - 1)))
    assert response.status_code == 200
    errors = str(response.context["adminform"].form.errors["poll_interval"])
    assert f"cannot be below {FLOOR} seconds" in errors
    fleet.refresh_from_db()
    assert fleet.poll_interval is None


def test_interval_change_recomputes_deadlines_of_devices_without_override(staff_client, fleet, make_device):
    plain = services.record_heartbeat(make_device(), at=T0)
    overridden = services.record_heartbeat(make_device(poll_interval=FLOOR * 2), at=T0)
    assert_saved(staff_client.post(change_url(fleet), form_data(fleet, poll_interval=str(FLOOR * 3))))
    fleet.refresh_from_db()
    assert fleet.poll_interval == FLOOR * 3
    assert Device.objects.get(pk=plain.pk).heartbeat_deadline == T0 + timedelta(seconds=FLOOR * 3 * 1.5)
    assert Device.objects.get(pk=overridden.pk).heartbeat_deadline == T0 + timedelta(seconds=FLOOR * 2 * 1.5)


def test_cloudlink_switch_recomputes_status_with_admin_reason(staff_client, fleet, make_device):
    d = make_device(api_heartbeat_state=HeartbeatState.ONLINE)
    assert d.overall_status == Status.ONLINE_HEARTBEAT_ONLY
    assert_saved(staff_client.post(change_url(fleet), form_data(fleet, cloudlink_enabled=None)))
    d.refresh_from_db()
    assert d.overall_status == Status.ONLINE
    assert admin_transitions(d) == [(Status.ONLINE_HEARTBEAT_ONLY, Status.ONLINE, "admin: root")]


def test_paid_fleet_type_on_a_free_organization_freezes_its_devices(staff_client, fleet, make_device, org):
    services.update_organization(org, {"tier": Tier.FREE}, reason="test setup")
    d = make_device(api_heartbeat_state=HeartbeatState.OFFLINE)
    assert_saved(staff_client.post(change_url(fleet), form_data(fleet, fleet_type=Tier.PAID)))
    d.refresh_from_db()
    assert (d.is_frozen, d.overall_status) == (True, Status.FROZEN)
    assert admin_transitions(d) == [(Status.OFFLINE, Status.FROZEN, "admin: root")]


def test_organization_is_read_only_on_an_existing_fleet(staff_client, fleet, org, other_org):
    response = staff_client.post(change_url(fleet), form_data(fleet, organization=str(other_org.pk), name="Renamed"))
    assert_saved(response)
    fleet.refresh_from_db()
    assert (fleet.organization_id, fleet.name) == (org.pk, "Renamed")


def test_adding_a_fleet(staff_client, org):
    data = {
        "organization": org.pk,
        "name": "Robots",
        "slug": "robots",
        "device_type": "",
        "fleet_type": Tier.FREE,
        "cloudlink_enabled": "on",
    }
    response = staff_client.post(reverse("admin:fleets_fleet_add"), data, follow=True)
    assert response.status_code == 200
    fleet = Fleet.objects.get(slug="robots")
    assert (fleet.organization_id, fleet.provisioning_key_hash) == (org.pk, "")
    assert any("provisioning key" in str(m) for m in get_messages(response.wsgi_request))


def test_adding_a_fleet_with_an_interval_below_the_floor_is_refused(staff_client, org):
    data = {"organization": org.pk, "name": "Robots", "slug": "robots", "fleet_type": Tier.FREE, "poll_interval": "1"}
    response = staff_client.post(reverse("admin:fleets_fleet_add"), data)
    assert response.status_code == 200
    assert "cannot be below" in str(response.context["adminform"].form.errors["poll_interval"])
    assert not Fleet.objects.filter(slug="robots").exists()


# --- Provisioning key ------------------------------------------------------------------------------


def test_issue_key_action_asks_for_confirmation_first(staff_client, fleet_and_key):
    fleet, old_key = fleet_and_key
    data = {"action": "issue_provisioning_key", "index": "0", "_selected_action": [fleet.pk]}
    response = staff_client.post(reverse(CHANGELIST), data)
    assert response.status_code == 200
    assert "stops working" in response.content.decode()
    fleet.refresh_from_db()
    assert key_matches(old_key, fleet.provisioning_key_hash)


def test_issue_key_action_shows_the_new_key_once_and_stores_only_its_hash(staff_client, fleet_and_key):
    fleet, old_key = fleet_and_key
    data = {"action": "issue_provisioning_key", "_selected_action": [fleet.pk], "confirm": "yes"}
    response = staff_client.post(reverse(CHANGELIST), data)
    assert response.status_code == 200
    [(issued_fleet, new_key)] = response.context["issued"]
    assert issued_fleet.pk == fleet.pk
    assert new_key in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    fleet.refresh_from_db()
    assert key_matches(new_key, fleet.provisioning_key_hash)
    assert not key_matches(old_key, fleet.provisioning_key_hash)
    assert new_key not in fleet.provisioning_key_hash
    # Not kept anywhere else: not in the session, not as a message for the next page.
    assert new_key not in str(dict(staff_client.session))
    assert all(new_key not in str(m) for m in get_messages(response.wsgi_request))
    # And never shown again: the change page only says a key is set.
    page = staff_client.get(change_url(fleet)).content.decode()
    assert new_key not in page and fleet.provisioning_key_hash not in page
    assert "Set (only its hash is stored)" in page
