"""The device admin: read-only status, inputs through devices.services, actions, filters, search, scale."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.conf import settings
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from devices import services
from devices.admin import DeviceAdmin
from devices.admin_forms import DeviceAdminForm
from devices.models import Device, StatusTransition
from devices.status import HeartbeatState, Status
from fleets.keys import key_matches

pytestmark = pytest.mark.django_db

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
CHANGELIST = "admin:devices_device_changelist"
FLOOR = settings.FLEETSTATUS_MIN_POLL_INTERVAL


def change_url(device: Device) -> str:
    return reverse("admin:devices_device_change", args=[device.pk])


def form_data(device: Device, **overrides) -> dict:
    """What the change form posts for device as it is now, with overrides."""
    data = {
        "name": device.name,
        "fleet": str(device.fleet_id),
        "poll_interval": "" if device.poll_interval is None else str(device.poll_interval),
        "cloudlink_enabled": {None: "unknown", True: "true", False: "false"}[device.cloudlink_enabled],
        "notes": device.notes,
        # The tags inline's management form (no tags on these devices).
        "tags-TOTAL_FORMS": "0",
        "tags-INITIAL_FORMS": "0",
    }
    if device.is_active:
        data["is_active"] = "on"
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def admin_transitions(device: Device) -> list[tuple[str, str, str]]:
    return list(
        StatusTransition.objects.filter(device=device, reason__startswith="admin:")
        .order_by("at", "id")
        .values_list("from_status", "to_status", "reason")
    )


def assert_saved(response) -> None:
    # The admin's redirect back to the list after a save (not a login redirect or the form again).
    assert response.status_code == 302, response.content[:2000]
    assert response["Location"] == reverse(CHANGELIST)


def message_texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def rows(response) -> set[str]:
    return {d.name for d in response.context["cl"].result_list}


def action(staff_client, name: str, devices, query: str = "", follow: bool = True, **extra):
    data = {"action": name, "index": "0", "_selected_action": [str(d.pk) for d in devices], **extra}
    return staff_client.post(reverse(CHANGELIST) + query, data, follow=follow)


def offline(make_device, fleet=None, **kwargs) -> Device:
    return make_device(fleet, api_heartbeat_state=HeartbeatState.OFFLINE, **kwargs)


def online(make_device, fleet=None, **kwargs) -> Device:
    # Heartbeat online, no tunnel, cloudlink on: Online (Heartbeat Only).
    return make_device(fleet, api_heartbeat_state=HeartbeatState.ONLINE, last_api_heartbeat_at=T0, **kwargs)


# --- Changelist: columns, scale ----------------------------------------------------------------


def test_changelist_shows_badge_from_the_shared_partial_and_columns(staff_client, make_device):
    d = online(make_device, name="kiosk-7", ip_address="10.1.2.3")
    response = staff_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    html = response.content.decode()
    assert f'data-status="{Status.ONLINE_HEARTBEAT_ONLY}"' in html
    assert "Online (Heartbeat Only)" in html
    assert "kiosk-7" in html and d.uuid[:7] in html
    assert "Northwind" in html and "Kiosks" in html
    assert "Preregister a device" in html
    # The badge's look and the notes its ¹/² markers point to.
    assert "fleetstatus/badge.css" in html
    assert 'id="fn-2"' in html


def _populate(make_device, make_fleet, org, other_org, count: int) -> None:
    fleets = [make_fleet(org, f"a{count}-{i}")[0] for i in range(3)] + [make_fleet(other_org, f"b{count}")[0]]
    for i in range(count):
        make_device(fleets[i % len(fleets)], name=f"dev-{count}-{i}")


def test_changelist_query_count_does_not_grow_with_devices(
    staff_client, make_device, make_fleet, org, other_org, django_assert_num_queries
):
    _populate(make_device, make_fleet, org, other_org, 5)
    with CaptureQueriesContext(connection) as five:
        response = staff_client.get(reverse(CHANGELIST))
    assert len(response.context["cl"].result_list) == 5
    _populate(make_device, make_fleet, org, other_org, 45)
    with django_assert_num_queries(len(five.captured_queries)):
        response = staff_client.get(reverse(CHANGELIST))
    assert len(response.context["cl"].result_list) == 50


def test_changelist_does_not_count_the_whole_table(staff_client, make_device):
    make_device(name="one")
    with CaptureQueriesContext(connection) as queries:
        staff_client.get(reverse(CHANGELIST), {"q": "one"})
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    # Only the filtered count the paginator needs, never an unfiltered COUNT(*) of all devices.
    assert len(counts) == 1
    assert "LIKE" in counts[0].upper()


# --- Filters and search --------------------------------------------------------------------------


@pytest.fixture
def zoo(make_device, make_fleet, org, other_org, other_fleet):
    """One device per interesting state, in two organizations and three fleets."""
    second = make_fleet(org, "robots")[0]
    with time_machine.travel(T0, tick=False):
        devices = {
            "hb-only": online(make_device, name="hb-only", ip_address="192.168.1.20 10.0.0.5"),
            "vpn-only": make_device(second, name="vpn-only", is_connected_to_vpn=True, last_connectivity_event=T0),
            "offline": offline(make_device, name="offline"),
            "inactive": make_device(name="inactive", api_heartbeat_state=HeartbeatState.OFFLINE, is_active=False),
            "frozen": make_device(second, name="frozen", is_frozen=True, frozen_reason="test"),
            "foreign": make_device(other_fleet, name="foreign", ip_address="10.0.0.50"),
        }
    return devices


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"overall_status__exact": Status.OFFLINE}, {"offline"}),
        ({"overall_status__exact": Status.ONLINE_VPN_ONLY}, {"vpn-only"}),
        ({"api_heartbeat_state__exact": HeartbeatState.ONLINE}, {"hb-only"}),
        ({"api_heartbeat_state__exact": HeartbeatState.UNKNOWN}, {"vpn-only", "frozen", "foreign"}),
        ({"is_connected_to_vpn__exact": "1"}, {"vpn-only"}),
        ({"is_frozen__exact": "1"}, {"frozen"}),
        ({"is_active__exact": "0"}, {"inactive"}),
        (
            {"is_active__exact": "1", "is_frozen__exact": "0", "is_connected_to_vpn__exact": "0"},
            {"hb-only", "offline", "foreign"},
        ),
    ],
)
def test_changelist_field_filters(staff_client, zoo, query, expected):
    response = staff_client.get(reverse(CHANGELIST), query)
    assert response.status_code == 200
    assert rows(response) == expected


def test_changelist_organization_and_fleet_filters(staff_client, zoo, org, other_org):
    by_org = staff_client.get(reverse(CHANGELIST), {"organization__id__exact": other_org.pk})
    assert rows(by_org) == {"foreign"}
    robots = zoo["vpn-only"].fleet
    by_fleet = staff_client.get(reverse(CHANGELIST), {"fleet__id__exact": robots.pk})
    assert rows(by_fleet) == {"vpn-only", "frozen"}
    both = staff_client.get(
        reverse(CHANGELIST), {"organization__id__exact": org.pk, "overall_status__exact": Status.FROZEN}
    )
    assert rows(both) == {"frozen"}


def test_fleet_filter_lists_only_the_chosen_organizations_fleets(staff_client, zoo, org, other_org):
    response = staff_client.get(reverse(CHANGELIST), {"organization__id__exact": other_org.pk})
    fleet_filter = next(f for f in response.context["cl"].filter_specs if f.title == "fleet")
    assert [label for _, label in fleet_filter.lookup_choices] == ["Contoso / Robots"]
    unfiltered = staff_client.get(reverse(CHANGELIST))
    fleet_filter = next(f for f in unfiltered.context["cl"].filter_specs if f.title == "fleet")
    assert len(fleet_filter.lookup_choices) == 3


def test_bad_fleet_filter_value_is_not_a_server_error(staff_client, zoo):
    response = staff_client.get(reverse(CHANGELIST), {"fleet__id__exact": "robots"})
    # The admin's answer to bad lookup parameters: back to the unfiltered list with ?e=1.
    assert response.status_code == 302
    assert "e=1" in response["Location"]


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("HB-ON", {"hb-only"}),  # name, case-insensitive contains
        ("only", {"hb-only", "vpn-only"}),
        ("10.0.0.5", {"hb-only", "foreign"}),  # IP, contains (foreign has 10.0.0.50)
        ("192.168.1.20", {"hb-only"}),
        ("nothing-like-this", set()),
    ],
)
def test_search_by_name_and_ip(staff_client, zoo, term, expected):
    response = staff_client.get(reverse(CHANGELIST), {"q": term})
    assert rows(response) == expected


def test_search_by_uuid_prefix(staff_client, zoo):
    target = zoo["offline"]
    for term in (target.uuid[:6], target.uuid[:6].upper(), target.uuid):
        response = staff_client.get(reverse(CHANGELIST), {"q": term})
        assert rows(response) == {"offline"}, term
    # A prefix only: the middle of a UUID does not match.
    response = staff_client.get(reverse(CHANGELIST), {"q": target.uuid[5:16]})
    assert "offline" not in rows(response)


def test_a_pasted_short_uuid_finds_just_that_device(staff_client, make_device):
    target = make_device(name="target")
    # A name that happens to contain the same characters does not drown the UUID match.
    make_device(name=f"label-{target.uuid[:7]}")
    response = staff_client.get(reverse(CHANGELIST), {"q": target.uuid[:7]})
    assert rows(response) == {"target"}
    # Seven hex characters that start no UUID are searched in names and addresses as usual.
    make_device(name="beef-cafe1234")
    response = staff_client.get(reverse(CHANGELIST), {"q": "cafe1234"})
    assert "beef-cafe1234" in rows(response)


@pytest.mark.postgres
def test_uuid_search_is_a_plain_prefix_like_the_index_can_serve(rf, make_device):
    device = make_device()
    admin = DeviceAdmin(Device, None)
    qs, _ = admin.get_search_results(rf.get("/"), Device.objects.all(), device.uuid[:10].upper())
    sql = str(qs.query)
    assert f'"devices_device"."uuid"::text LIKE {device.uuid[:10]}%' in sql
    assert "UPPER(" not in sql  # neither the uuid wrapped in UPPER() nor an OR-ed "contains"
    assert list(qs) == [device]
    # A shorter term may also be in a name or an IP address: the search rows answer it (their
    # trigram indexes), with the UUID still a plain prefix.
    qs, _ = admin.get_search_results(rf.get("/"), Device.objects.all(), "abc")
    sql = str(qs.query)
    assert '"devices_devicesearch"' in sql and '"uuid"::text LIKE abc%' in sql
    assert 'UPPER("devices_devicesearch"."uuid"' not in sql and 'UPPER(U0."uuid"' not in sql
    assert '"devices_device"."name"' not in sql.split("WHERE", 1)[1].split("ORDER BY")[0]


def test_search_finds_names_and_addresses_in_any_case(rf, make_device):
    kiosk = make_device(name="Kiosk-Gate-7")
    lobby = make_device(name="lobby")
    Device.objects.filter(pk=lobby.pk).update(ip_address="10.4.0.7 192.168.1.9")
    admin = DeviceAdmin(Device, None)
    assert list(admin.get_search_results(rf.get("/"), Device.objects.all(), "gate-7")[0]) == [kiosk]
    assert list(admin.get_search_results(rf.get("/"), Device.objects.all(), "168.1")[0]) == [lobby]
    assert list(admin.get_search_results(rf.get("/"), Device.objects.all(), "nothing-like-it")[0]) == []


# --- Change form: read-only fields, inputs through the services -------------------------------


def test_change_page_shows_signals_read_only_and_never_the_api_key_hash(staff_client, make_device):
    d = online(make_device, name="kiosk")
    html = staff_client.get(change_url(d)).content.decode()
    form = staff_client.get(change_url(d)).context["adminform"].form
    assert set(form.fields) == {"name", "fleet", "is_active", "poll_interval", "cloudlink_enabled", "notes"}
    assert d.api_key_hash not in html
    assert "api_key_hash" not in html
    assert 'data-status="online-heartbeat-only"' in html
    assert "Recent status changes" in html and "test setup" in html
    assert "_addanother" not in html  # would lead to the preregistration form


def test_posting_read_only_fields_changes_nothing(staff_client, make_device, other_org, other_fleet):
    d = offline(make_device, name="kiosk")
    before = Device.objects.filter(pk=d.pk).values().get()
    tampered = form_data(
        d,
        overall_status=Status.ONLINE,
        status_changed_at="2020-01-01 00:00:00",
        api_heartbeat_state=HeartbeatState.ONLINE,
        last_api_heartbeat_at="2020-01-01 00:00:00",
        heartbeat_deadline="2099-01-01 00:00:00",
        is_connected_to_vpn="on",
        vpn_service_id="7",
        is_frozen="on",
        frozen_reason="hacked",
        provisioning_state="Post-Provisioning",
        provisioning_progress="50",
        update_status="downloading",
        download_progress="10",
        status="Downloading",
        uuid="f" * 32,
        organization=str(other_org.pk),
        api_key_hash="0" * 64,
        memory_usage="1",
        last_seen_at="2020-01-01 00:00:00",
        created_at="2020-01-01 00:00:00",
    )
    assert_saved(staff_client.post(change_url(d), tampered))
    assert Device.objects.filter(pk=d.pk).values().get() == before
    assert admin_transitions(d) == []


def test_editing_name_and_notes_goes_through_services_without_a_transition(staff_client, make_device):
    d = offline(make_device, name="old")
    assert_saved(staff_client.post(change_url(d), form_data(d, name="new", notes="in the lobby")))
    d.refresh_from_db()
    assert (d.name, d.notes, d.overall_status) == ("new", "in the lobby", Status.OFFLINE)
    assert admin_transitions(d) == []


def test_editing_an_input_recomputes_status_and_records_admin_transition(staff_client, make_device):
    d = online(make_device)
    assert d.overall_status == Status.ONLINE_HEARTBEAT_ONLY
    assert_saved(staff_client.post(change_url(d), form_data(d, cloudlink_enabled="false")))
    d.refresh_from_db()
    assert d.cloudlink_enabled is False
    assert d.overall_status == Status.ONLINE
    assert admin_transitions(d) == [(Status.ONLINE_HEARTBEAT_ONLY, Status.ONLINE, "admin: root")]


def test_deactivating_an_offline_device_in_the_form(staff_client, make_device):
    d = offline(make_device)
    assert_saved(staff_client.post(change_url(d), form_data(d, is_active=None)))
    d.refresh_from_db()
    assert (d.is_active, d.overall_status) == (False, Status.INACTIVE)
    assert admin_transitions(d) == [(Status.OFFLINE, Status.INACTIVE, "admin: root")]


def _without(data: dict, key: str) -> dict:
    return {k: v for k, v in data.items() if k != key}


def test_deactivating_a_device_that_is_not_offline_is_a_form_error(staff_client, make_device):
    d = online(make_device, name="busy")
    response = staff_client.post(change_url(d), _without(form_data(d, name="renamed"), "is_active"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "only an Offline device can be deactivated" in str(errors["is_active"])
    d.refresh_from_db()
    assert (d.is_active, d.name, d.overall_status) == (True, "busy", Status.ONLINE_HEARTBEAT_ONLY)


def test_a_race_past_the_form_is_refused_by_the_service_and_rolled_back(staff_client, make_device, monkeypatch):
    d = online(make_device, name="busy")
    # The form saw an Offline device; by the time of saving it is online: the service refuses.
    monkeypatch.setattr(DeviceAdminForm, "clean_is_active", lambda self: self.cleaned_data["is_active"])
    response = staff_client.post(change_url(d), _without(form_data(d, name="renamed"), "is_active"), follow=True)
    assert any("Nothing was changed" in m and "only an Offline device" in m for m in message_texts(response))
    d.refresh_from_db()
    assert (d.is_active, d.name) == (True, "busy")


def test_interval_below_the_floor_is_a_form_error(staff_client, make_device):
    d = offline(make_device)
    response = staff_client.post(change_url(d), form_data(d, poll_interval=str(FLOOR - 1)))
    assert response.status_code == 200
    assert f"cannot be below {FLOOR} seconds" in str(response.context["adminform"].form.errors["poll_interval"])
    d.refresh_from_db()
    assert d.poll_interval is None


def test_interval_override_recomputes_the_heartbeat_deadline(staff_client, make_device):
    d = services.record_heartbeat(make_device(), at=T0)
    assert d.heartbeat_deadline == T0 + timedelta(seconds=FLOOR * 1.5)
    assert_saved(staff_client.post(change_url(d), form_data(d, poll_interval=str(FLOOR * 4))))
    d.refresh_from_db()
    assert d.poll_interval == FLOOR * 4
    assert d.heartbeat_deadline == T0 + timedelta(seconds=FLOOR * 4 * 1.5)


def test_moving_to_another_organizations_fleet_is_a_form_error(staff_client, make_device, other_fleet):
    d = offline(make_device)
    response = staff_client.post(change_url(d), form_data(d, fleet=str(other_fleet.pk)))
    assert response.status_code == 200
    assert "only move to another fleet of its own organization" in str(
        response.context["adminform"].form.errors["fleet"]
    )
    d.refresh_from_db()
    assert d.fleet_id != other_fleet.pk


def test_fleet_choices_are_the_devices_organization_only(staff_client, make_device, make_fleet, org, other_fleet):
    make_fleet(org, "robots")
    d = offline(make_device)
    form = staff_client.get(change_url(d)).context["adminform"].form
    assert sorted(f.slug for f in form.fields["fleet"].queryset) == ["kiosks", "robots"]


def test_moving_to_a_fleet_of_the_same_organization_recomputes_status(staff_client, make_device, make_fleet, org):
    quiet = make_fleet(org, "quiet", cloudlink_enabled=False)[0]
    d = online(make_device)
    assert_saved(staff_client.post(change_url(d), form_data(d, fleet=str(quiet.pk))))
    d.refresh_from_db()
    assert (d.fleet_id, d.overall_status) == (quiet.pk, Status.ONLINE)
    assert admin_transitions(d) == [(Status.ONLINE_HEARTBEAT_ONLY, Status.ONLINE, "admin: root")]


def test_devices_cannot_be_deleted_in_the_admin(staff_client, make_device):
    d = offline(make_device)
    response = staff_client.post(reverse("admin:devices_device_delete", args=[d.pk]), {"post": "yes"})
    assert response.status_code == 403
    assert Device.objects.filter(pk=d.pk).exists()
    assert "delete_selected" not in staff_client.get(reverse(CHANGELIST)).content.decode()


# --- Actions -------------------------------------------------------------------------------------


def test_deactivate_action_deactivates_offline_devices_and_says_which_were_skipped(staff_client, make_device):
    off = offline(make_device, name="off")
    busy = online(make_device, name="busy")
    already = make_device(name="sleeping", api_heartbeat_state=HeartbeatState.OFFLINE, is_active=False)
    response = action(staff_client, "deactivate", [off, busy, already])
    texts = message_texts(response)
    assert "Deactivated 1 device." in texts
    assert any("busy: Online (Heartbeat Only)" in t and "only an Offline device can be deactivated" in t for t in texts)
    assert any("Already inactive" in t and "sleeping" in t for t in texts)
    assert Device.objects.get(pk=off.pk).overall_status == Status.INACTIVE
    assert Device.objects.get(pk=busy.pk).is_active is True
    assert admin_transitions(off) == [(Status.OFFLINE, Status.INACTIVE, "admin: root")]
    assert admin_transitions(busy) == []


def test_reactivate_action_and_frozen_warning(staff_client, make_device, org):
    keeper = offline(make_device, name="keeper")
    a = make_device(name="a", api_heartbeat_state=HeartbeatState.OFFLINE, is_active=False)
    b = make_device(name="b", api_heartbeat_state=HeartbeatState.OFFLINE, is_active=False)
    services.update_organization(org, {"device_allowance": 2}, reason="test setup")
    response = action(staff_client, "reactivate", [a, b, keeper])
    texts = message_texts(response)
    assert "Reactivated 2 devices." in texts
    assert any("Already active" in t and "keeper" in t for t in texts)
    # Allowance 2: keeper (oldest) and one of the reactivated work, the other is Frozen.
    assert any("1 selected device is Frozen" in t for t in texts)
    statuses = sorted(Device.objects.filter(pk__in=[a.pk, b.pk]).values_list("overall_status", flat=True))
    assert statuses == [Status.FROZEN, Status.OFFLINE]
    assert {t[2] for t in admin_transitions(a) + admin_transitions(b)} == {"admin: root"}


def test_move_action_shows_a_confirmation_page_restricted_to_the_organizations_fleets(
    staff_client, make_device, make_fleet, org, other_org
):
    make_fleet(other_org, "elsewhere")
    target = make_fleet(org, "robots")[0]
    d1, d2 = offline(make_device, name="d1"), offline(make_device, name="d2")
    response = action(staff_client, "move_to_fleet", [d1, d2], follow=False)
    assert response.status_code == 200
    assert [t.name for t in response.templates][0] == "admin/devices/device/move_to_fleet.html"
    html = response.content.decode()
    assert "d1" in html and "d2" in html and "Northwind" in html
    assert sorted(f.slug for f in response.context["form"].fields["fleet"].queryset) == ["kiosks", "robots"]
    assert Device.objects.filter(fleet=target).count() == 0  # nothing moved yet


def test_move_action_applies_after_confirmation(staff_client, make_device, make_fleet, org):
    quiet = make_fleet(org, "quiet", cloudlink_enabled=False)[0]
    d1, d2 = online(make_device, name="d1"), offline(make_device, name="d2")
    data = {"action": "move_to_fleet", "_selected_action": [d1.pk, d2.pk], "apply": "1", "fleet": quiet.pk}
    response = staff_client.post(reverse(CHANGELIST), data, follow=True)
    assert "Moved 2 devices to fleet Quiet." in message_texts(response)
    assert set(Device.objects.filter(fleet=quiet).values_list("name", flat=True)) == {"d1", "d2"}
    assert Device.objects.get(pk=d1.pk).overall_status == Status.ONLINE
    assert admin_transitions(d1) == [(Status.ONLINE_HEARTBEAT_ONLY, Status.ONLINE, "admin: root")]


def test_move_action_select_across_moves_exactly_the_filtered_devices(staff_client, make_device, make_fleet, org):
    target = make_fleet(org, "robots")[0]
    off1, off2, busy = offline(make_device, name="o1"), offline(make_device, name="o2"), online(make_device, name="b")
    data = {
        "action": "move_to_fleet",
        "_selected_action": [off1.pk],
        "select_across": "1",
        "apply": "1",
        "fleet": target.pk,
    }
    query = f"?overall_status__exact={Status.OFFLINE}"
    response = staff_client.post(reverse(CHANGELIST) + query, data, follow=True)
    assert "Moved 2 devices to fleet Robots." in message_texts(response)
    assert set(Device.objects.filter(fleet=target).values_list("pk", flat=True)) == {off1.pk, off2.pk}
    assert Device.objects.get(pk=busy.pk).fleet_id != target.pk


def test_move_action_refuses_a_mixed_organization_selection(staff_client, make_device, other_fleet):
    mine, theirs = offline(make_device, name="mine"), offline(make_device, other_fleet, name="theirs")
    response = action(staff_client, "move_to_fleet", [mine, theirs])
    assert any("more than one organization" in t for t in message_texts(response))
    assert Device.objects.get(pk=mine.pk).fleet_id != other_fleet.pk


def test_move_action_refuses_another_organizations_fleet(staff_client, make_device, other_fleet):
    d = offline(make_device)
    data = {"action": "move_to_fleet", "_selected_action": [d.pk], "apply": "1", "fleet": other_fleet.pk}
    response = staff_client.post(reverse(CHANGELIST), data)
    assert response.status_code == 200  # the confirmation page again, with the error
    assert "only move to another fleet of its own organization" in str(response.context["form"].errors["fleet"])
    assert Device.objects.get(pk=d.pk).fleet_id != other_fleet.pk


# --- Preregistration -----------------------------------------------------------------------------


def test_preregister_creates_an_inactive_device_and_shows_its_key_once(staff_client, fleet):
    uuid = secrets.token_hex(16)
    response = staff_client.post(
        reverse("admin:devices_device_add"), {"fleet": fleet.pk, "uuid": uuid, "name": "lobby"}
    )
    assert response.status_code == 200
    device = Device.objects.get(uuid=uuid)
    assert (device.name, device.fleet_id, device.is_active, device.overall_status) == (
        "lobby",
        fleet.pk,
        False,
        Status.INACTIVE,
    )
    api_key = response.context["api_key"]
    assert key_matches(api_key, device.api_key_hash)
    assert api_key in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    # Not kept anywhere: not in the session, not in a message.
    assert api_key not in str(dict(staff_client.session))
    assert all(api_key not in m for m in message_texts(response))
    assert list(StatusTransition.objects.filter(device=device).values_list("to_status", "reason")) == [
        (Status.INACTIVE, "admin: root")
    ]


def test_preregistered_device_becomes_active_on_first_contact(staff_client, fleet):
    uuid = secrets.token_hex(31)  # the 62-character form
    staff_client.post(reverse("admin:devices_device_add"), {"fleet": fleet.pk, "uuid": uuid})
    device = Device.objects.get(uuid=uuid)
    assert device.overall_status == Status.INACTIVE
    device = services.record_heartbeat(device, at=T0)
    assert device.is_active and device.overall_status == Status.ONLINE_HEARTBEAT_ONLY


@pytest.mark.parametrize("uuid", ["abc", "A" * 32, "g" * 32, "a" * 33, "a" * 61, "a" * 63, ""])
def test_preregister_rejects_a_uuid_of_the_wrong_shape(staff_client, fleet, uuid):
    response = staff_client.post(reverse("admin:devices_device_add"), {"fleet": fleet.pk, "uuid": uuid})
    assert response.status_code == 200
    errors = str(response.context["form"].errors["uuid"])
    assert "32 or 62 lowercase hexadecimal" in errors or "required" in errors
    assert Device.objects.count() == 0


def test_preregister_rejects_a_taken_uuid(staff_client, make_device, fleet):
    existing = make_device(name="first")
    response = staff_client.post(reverse("admin:devices_device_add"), {"fleet": fleet.pk, "uuid": existing.uuid})
    assert response.status_code == 200
    assert "already exists: first in Northwind / Kiosks" in str(response.context["form"].errors["uuid"])
    assert Device.objects.count() == 1


def test_preregister_form_page(staff_client, fleet):
    response = staff_client.get(reverse("admin:devices_device_add"))
    assert response.status_code == 200
    assert "Inactive" in response.content.decode()
    assert Device.objects.count() == 0


def test_deactivate_message_lists_at_most_ten_skipped_devices(staff_client, make_device):
    busy = [online(make_device, name=f"busy-{i:02d}") for i in range(12)]
    response = action(staff_client, "deactivate", busy)
    [warning] = [t for t in message_texts(response) if "Skipped" in t]
    assert warning.startswith("Skipped 12 devices that are not Offline")
    assert warning.endswith("and 2 more.")
    assert Device.objects.filter(is_active=False).count() == 0


# --- The services behind the admin --------------------------------------------------------------


def test_an_edit_of_several_inputs_is_one_change_with_one_transition(make_device, make_fleet, org):
    quiet = make_fleet(org, "quiet", cloudlink_enabled=False)[0]
    d = online(make_device)
    # Moving to a fleet without cloudlink would make it Online; switching cloudlink back on for
    # the device keeps it Heartbeat Only: the net change is none, and no transition is written.
    d = services.apply_admin_edit(d, {"fleet": quiet, "cloudlink_enabled": True, "name": "x"}, reason="admin: a")
    assert (d.fleet_id, d.name, d.overall_status) == (quiet.pk, "x", Status.ONLINE_HEARTBEAT_ONLY)
    assert admin_transitions(d) == []
    d = services.apply_admin_edit(d, {"cloudlink_enabled": None, "notes": "n"}, reason="admin: a")
    assert admin_transitions(d) == [(Status.ONLINE_HEARTBEAT_ONLY, Status.ONLINE, "admin: a")]


def test_apply_admin_edit_refuses_signals_and_broken_rules(make_device, other_fleet):
    d = online(make_device)
    with pytest.raises(ValueError, match="not editable"):
        services.apply_admin_edit(d, {"overall_status": Status.OFFLINE}, reason="admin: a")
    with pytest.raises(services.DeviceChangeError, match="only an Offline device"):
        services.apply_admin_edit(d, {"is_active": False, "name": "gone"}, reason="admin: a")
    with pytest.raises(services.DeviceChangeError, match="own organization"):
        services.apply_admin_edit(d, {"fleet": other_fleet}, reason="admin: a")
    with pytest.raises(services.DeviceChangeError, match="cannot be below"):
        services.apply_admin_edit(d, {"poll_interval": FLOOR - 1}, reason="admin: a")
    d.refresh_from_db()
    assert (d.is_active, d.overall_status, d.poll_interval) == (True, Status.ONLINE_HEARTBEAT_ONLY, None)
    assert d.name != "gone"


def test_move_devices_refuses_a_fleet_of_another_organization_for_any_device(make_device, make_fleet, org, other_fleet):
    mine = offline(make_device)
    theirs = offline(make_device, other_fleet)
    with pytest.raises(services.DeviceChangeError):
        services.move_devices(Device.objects.filter(pk__in=[mine.pk, theirs.pk]), other_fleet, reason="admin: a")
    assert Device.objects.get(pk=mine.pk).fleet_id != other_fleet.pk


def test_bulk_deactivation_rechecks_the_status_it_locked(make_device):
    d = offline(make_device)
    # The selection was Offline when chosen; it came online before the action ran.
    services.record_heartbeat(d, at=T0)
    result = services.set_devices_active(Device.objects.filter(pk=d.pk), False, reason="admin: a")
    assert (result.changed, result.refused) == (0, [(d.name, "Online (Heartbeat Only)")])
    assert Device.objects.get(pk=d.pk).is_active


def test_preregister_device_service_refuses_bad_and_taken_uuids(fleet, make_device):
    with pytest.raises(services.DeviceChangeError, match="lowercase hexadecimal"):
        services.preregister_device(fleet, "A" * 32, reason="admin: a")
    taken = make_device()
    with pytest.raises(services.DeviceChangeError, match="already exists"):
        services.preregister_device(fleet, taken.uuid, reason="admin: a")
    assert Device.objects.count() == 1
