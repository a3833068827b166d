"""The Notifications page (owners only), the channel forms, the test message, and mutes from the
Device Summary and the Fleets page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices import services
from fleets.models import Membership
from notifications import engine
from notifications.models import Channel, Delivery, Mute

LIST = "/notifications/"
ONLINE = {"api_heartbeat_state": "online", "is_connected_to_vpn": True}
OFFLINE = {"api_heartbeat_state": "offline", "is_connected_to_vpn": False}


@pytest.fixture
def channel(org):
    return Channel.objects.create(organization=org, name="ops", url="https://hooks.example.com/x", secret="topsecret")


@pytest.fixture
def member_client(org):
    user = get_user_model().objects.create_user(username="mo", password="x")
    Membership.objects.create(user=user, organization=org, role=Membership.Role.MEMBER)
    c = Client()
    c.force_login(user)
    return c


def test_owner_sees_channels_and_the_delivery_log(owner_client, channel):
    delivery = engine.send_test(channel)
    Delivery.objects.filter(pk=delivery.pk).update(state="failed", last_status_code=404, last_error="HTTP 404")
    response = owner_client.get(LIST)
    assert response.status_code == 200
    body = response.content.decode()
    assert "ops" in body and "Webhook" in body and "HTTP 404" in body and str(delivery.uuid) in body
    assert "topsecret" not in body


def test_members_who_are_not_owners_and_anonymous_users_get_nothing(member_client, anon_client, channel):
    assert member_client.get(LIST).status_code == 403
    assert member_client.get(f"/notifications/{channel.pk}/").status_code == 404
    response = anon_client.get(LIST)
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_another_organizations_channel_is_404(other_client, channel, other_org):
    assert other_client.get(f"/notifications/{channel.pk}/").status_code == 404
    assert other_client.post(f"/notifications/{channel.pk}/", {"name": "x"}).status_code == 404
    assert other_client.post(f"/notifications/{channel.pk}/test/").status_code == 404
    assert other_client.get("/notifications/add/northwind/").status_code == 404
    assert Delivery.objects.count() == 0
    assert Channel.objects.get().name == "ops"


def test_add_shows_the_secret_once(owner_client, org, fleet):
    response = owner_client.post(
        "/notifications/add/northwind/",
        {
            "name": "chat",
            "url": "https://hooks.example.com/y",
            "fleets": [fleet.pk],
            "statuses": ["offline"],
            "hold_seconds": "30",
            "enabled": "on",
        },
    )
    assert response.status_code == 201
    channel = Channel.objects.get(name="chat")
    assert channel.secret in response.content.decode()
    assert list(channel.fleets.all()) == [fleet]
    assert channel.secret not in owner_client.get(f"/notifications/{channel.pk}/").content.decode()
    assert channel.secret not in owner_client.get(LIST).content.decode()


@pytest.mark.parametrize(
    "changes",
    [
        {"url": "ftp//nope"},
        {"url": "http://"},
        {"hold_seconds": "-1"},
        {"fleet_threshold": "101"},
        {"statuses": ["sleeping"]},
        {"name": ""},
    ],
)
def test_bad_edit_is_400_and_changes_nothing(owner_client, channel, changes):
    data = {
        "name": "renamed",
        "url": "https://other.example.com/",
        "statuses": ["offline"],
        "hold_seconds": "5",
        "enabled": "on",
        **changes,
    }
    response = owner_client.post(f"/notifications/{channel.pk}/", data)
    assert response.status_code == 400
    channel.refresh_from_db()
    assert (channel.name, channel.url, channel.hold_seconds) == ("ops", "https://hooks.example.com/x", 60)


def test_fleet_of_another_organization_is_refused(owner_client, channel, other_fleet):
    data = {
        "name": "ops",
        "url": channel.url,
        "statuses": ["offline"],
        "hold_seconds": "60",
        "fleets": [other_fleet.pk],
    }
    assert owner_client.post(f"/notifications/{channel.pk}/", data).status_code == 400
    assert channel.fleets.count() == 0


def test_good_edit_saves(owner_client, channel):
    data = {"name": "ops", "url": "mailto:ops@example.com", "statuses": ["offline", "frozen"], "hold_seconds": "0"}
    assert owner_client.post(f"/notifications/{channel.pk}/", data).status_code == 302
    channel.refresh_from_db()
    assert (channel.kind, channel.statuses, channel.hold_seconds, channel.enabled) == (
        "email",
        ["offline", "frozen"],
        0,
        False,
    )


def test_send_a_test_message_creates_a_delivery(owner_client, channel):
    assert owner_client.post(f"/notifications/{channel.pk}/test/").status_code == 302
    assert Delivery.objects.get().event == "test"
    assert owner_client.get(f"/notifications/{channel.pk}/test/").status_code == 405


def _queries(client) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(LIST).status_code == 200
    return len(ctx.captured_queries)


def test_query_count_does_not_grow_with_channels_and_deliveries(owner_client, channel, org, make_fleet):
    one = _queries(owner_client)
    for i in range(5):
        c = Channel.objects.create(organization=org, name=f"c{i}", url="https://x.example.com/")
        c.fleets.set([make_fleet(org, f"f{i}")[0]])
        engine.send_test(c)
    Mute.objects.create(
        organization=org, fleet=c.fleets.get(), starts_at=timezone.now(), until=timezone.now() + timedelta(hours=1)
    )
    # session, user, memberships and dead-man's switch (every page's header), owned organizations,
    # channels, their fleets, deliveries, mutes
    assert one == _queries(owner_client) == 8


def test_mute_a_device_from_its_summary(owner_client, make_device, org):
    device = make_device(**ONLINE)
    page = owner_client.get(f"/devices/{device.uuid}/").content.decode()
    assert "Mute this device" in page
    response = owner_client.post(f"/notifications/mute/device/{device.uuid}/", {"hours": "3", "reason": "maintenance"})
    assert response.status_code == 302
    mute = Mute.objects.get()
    assert (mute.device, mute.reason) == (device, "maintenance")
    assert round((mute.until - mute.starts_at).total_seconds()) == 3 * 3600
    assert "muted until" in owner_client.get(f"/devices/{device.uuid}/").content.decode()
    owner_client.post(f"/notifications/mute/{mute.pk}/end/")
    mute.refresh_from_db()
    assert mute.until <= timezone.now()


@pytest.mark.parametrize("hours", ["0", "abc", "100000", ""])
def test_bad_mute_is_400_and_creates_nothing(owner_client, make_device, hours):
    device = make_device()
    assert owner_client.post(f"/notifications/mute/device/{device.uuid}/", {"hours": hours}).status_code == 400
    assert not Mute.objects.exists()


def test_muting_another_organizations_device_or_fleet_is_404(other_client, member_client, make_device, fleet):
    device = make_device()
    assert other_client.post(f"/notifications/mute/device/{device.uuid}/", {"hours": "1"}).status_code == 404
    assert other_client.post(f"/notifications/mute/fleet/{fleet.pk}/", {"hours": "1"}).status_code == 404
    assert member_client.post(f"/notifications/mute/fleet/{fleet.pk}/", {"hours": "1"}).status_code == 404
    assert "Mute this device" not in member_client.get(f"/devices/{device.uuid}/").content.decode()
    assert not Mute.objects.exists()


def test_mute_a_fleet_from_the_fleets_page(owner_client, fleet):
    assert f"/notifications/mute/fleet/{fleet.pk}/" in owner_client.get("/fleets/").content.decode()
    assert owner_client.post(f"/notifications/mute/fleet/{fleet.pk}/", {"hours": "2"}).status_code == 302
    assert Mute.objects.get().fleet == fleet
    assert "is muted until" in owner_client.get("/fleets/").content.decode()


def test_the_fleets_page_offers_mute_forms_only_for_the_fleets_it_shows(owner_client, org, make_fleet):
    from fleets.views import FLEETS_PER_PAGE

    for i in range(FLEETS_PER_PAGE + 5):
        make_fleet(org, f"site-{i:03d}")
    first = owner_client.get("/fleets/").content.decode()
    second = owner_client.get("/fleets/?page=2").content.decode()
    forms = re.findall(r'action="/notifications/mute/fleet/(\d+)/"', first)
    assert len(forms) == FLEETS_PER_PAGE
    assert len(re.findall(r'action="/notifications/mute/fleet/(\d+)/"', second)) == 5
    assert not set(forms) & set(re.findall(r'action="/notifications/mute/fleet/(\d+)/"', second))


def test_members_see_fleet_mutes_but_only_owners_end_them(owner_client, member_client, fleet):
    assert owner_client.post(f"/notifications/mute/fleet/{fleet.pk}/", {"hours": "2"}).status_code == 302
    mute = Mute.objects.get()
    member_page = member_client.get("/fleets/").content.decode()
    assert "is muted until" in member_page
    assert f"/notifications/mute/{mute.pk}/end/" not in member_page
    assert f"/notifications/mute/{mute.pk}/end/" in owner_client.get("/fleets/").content.decode()


def test_device_summary_shows_what_each_channel_did(owner_client, org, make_device, settings):
    settings.FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE = True
    Channel.objects.create(organization=org, name="pager", url="https://hooks.example.com/x", hold_seconds=60)
    t0 = timezone.now() - timedelta(hours=1)
    flapping, steady = make_device(at=t0, **ONLINE), make_device(at=t0, **ONLINE)
    services.update_device(flapping, OFFLINE, reason="t", at=t0 + timedelta(seconds=10))
    services.update_device(flapping, ONLINE, reason="t", at=t0 + timedelta(seconds=20))
    services.update_device(steady, OFFLINE, reason="t", at=t0 + timedelta(seconds=10))
    engine.dispatch(t0 + timedelta(seconds=200))
    flapping_page = owner_client.get(f"/devices/{flapping.uuid}/").content.decode()
    assert "held (changed again within the hold time)" in flapping_page
    steady_page = owner_client.get(f"/devices/{steady.uuid}/").content.decode()
    assert "notification waiting to send" in steady_page and "pager" in steady_page


def test_staff_manage_channels_and_mutes_in_the_admin(staff_client, channel, org):
    assert staff_client.get("/admin/notifications/channel/").status_code == 200
    page = staff_client.get(f"/admin/notifications/channel/{channel.pk}/change/").content.decode()
    assert "topsecret" not in page
    response = staff_client.post(
        "/admin/notifications/channel/add/",
        {"organization": org.pk, "name": "adm", "url": "not a url", "statuses": '["offline"]', "hold_seconds": "60"},
    )
    assert response.status_code == 200 and not Channel.objects.filter(name="adm").exists()
    assert staff_client.get("/admin/notifications/mute/add/").status_code == 200
    assert staff_client.get("/admin/notifications/delivery/").status_code == 200
