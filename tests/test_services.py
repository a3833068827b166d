"""The change functions: every input change recomputes the stored status and records transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from devices import services
from devices.models import Device, StatusTransition
from devices.status import HeartbeatState, Status
from fleets.models import Tier

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)  # after the devices are created
pytestmark = pytest.mark.django_db


def history(device):
    return list(
        StatusTransition.objects.filter(device=device).order_by("at", "id").values_list("from_status", "to_status")
    )


def test_new_device_is_configuring_with_a_first_transition(make_device):
    d = make_device()
    assert d.overall_status == Status.CONFIGURING
    assert history(d) == [("", Status.CONFIGURING)]


def test_update_device_records_transition_only_on_change(make_device):
    d = make_device()
    d = services.update_device(d, {"api_heartbeat_state": HeartbeatState.ONLINE}, reason="r1", at=T0)
    assert d.overall_status == Status.ONLINE_HEARTBEAT_ONLY
    assert d.status_changed_at == T0
    services.update_device(d, {"os_version": "6.0"}, reason="r2", at=T0)
    assert history(d) == [("", "configuring"), ("configuring", "online-heartbeat-only")]
    assert StatusTransition.objects.filter(device=d).first().reason == "r1"


def test_heartbeat_then_expiry_at_deadline(make_device, fleet):
    d = make_device()
    with time_machine.travel(T0, tick=False):
        d = services.record_heartbeat(d)
    assert d.overall_status == Status.ONLINE_HEARTBEAT_ONLY
    deadline = T0 + timedelta(seconds=600 * 1.5)
    assert Device.objects.get(pk=d.pk).heartbeat_deadline == deadline
    assert services.expire_heartbeats(deadline - timedelta(microseconds=1)) == 0
    assert services.expire_heartbeats(deadline + timedelta(hours=5)) == 1
    d.refresh_from_db()
    assert d.overall_status == Status.OFFLINE
    last = StatusTransition.objects.filter(device=d).first()
    assert (last.to_status, last.at) == (Status.OFFLINE, deadline)
    assert services.expire_heartbeats(deadline + timedelta(hours=6)) == 0


def test_steady_heartbeat_is_one_update_and_no_transition(make_device, django_assert_num_queries):
    d = services.record_heartbeat(make_device(), at=T0)
    with django_assert_num_queries(1):
        services.record_heartbeat(d, at=T0 + timedelta(seconds=60))
    assert len(history(d)) == 2


def test_allowance_freezes_newest_activated(org, make_device):
    for i in range(4):
        make_device(name=f"d{i}", at=T0 + timedelta(minutes=i))
    services.update_organization(
        org, {"device_allowance": 2, "tier": Tier.FREE}, reason="plan change", at=T0 + timedelta(hours=1)
    )
    states = {d.name: d.overall_status for d in Device.objects.all()}
    assert states == {"d0": "configuring", "d1": "configuring", "d2": "frozen", "d3": "frozen"}
    assert Device.objects.get(name="d3").frozen_reason.startswith("Beyond the organization's device allowance")
    # Deactivating an old device frees a slot for the oldest frozen one.
    old = Device.objects.get(name="d0")
    services.update_device(old, {"api_heartbeat_state": HeartbeatState.OFFLINE}, reason="t")
    services.set_active(old, False, reason="user")
    states = {d.name: d.overall_status for d in Device.objects.all()}
    assert states == {"d0": "inactive", "d1": "configuring", "d2": "configuring", "d3": "frozen"}
    services.update_organization(org, {"device_allowance": None}, reason="unlimited")
    assert not Device.objects.filter(is_frozen=True).exists()


def test_paid_fleet_on_free_tier_is_frozen(org, fleet, make_device):
    d = make_device()
    services.update_fleet(fleet, {"fleet_type": Tier.PAID}, reason="fleet type")
    assert Device.objects.get(pk=d.pk).overall_status == Status.CONFIGURING  # org is paid
    services.update_organization(org, {"tier": Tier.FREE}, reason="downgrade")
    d.refresh_from_db()
    assert (d.overall_status, d.is_frozen) == (Status.FROZEN, True)
    assert history(d)[-1] == ("configuring", "frozen")


def test_deactivate_only_offline(make_device):
    d = services.record_heartbeat(make_device(), at=T0)
    with pytest.raises(services.DeviceChangeError, match="only an Offline device"):
        services.set_active(d, False, reason="user")
    services.expire_heartbeats(T0 + timedelta(days=1))
    d = services.set_active(d, False, reason="user")
    assert d.overall_status == Status.INACTIVE
    # Any contact reactivates it.
    d = services.record_heartbeat(Device.objects.select_related("fleet").get(pk=d.pk), at=T0 + timedelta(days=2))
    assert (d.is_active, d.overall_status) == (True, Status.ONLINE_HEARTBEAT_ONLY)


def test_cloudlink_switch_recomputes_fleet(fleet, make_device):
    d = services.record_heartbeat(make_device(), at=T0)
    services.update_fleet(fleet, {"cloudlink_enabled": False}, reason="cloudlink off", at=T0 + timedelta(hours=1))
    d.refresh_from_db()
    assert d.overall_status == Status.ONLINE
    assert StatusTransition.objects.filter(device=d).first().reason == "cloudlink off"


def test_fleet_interval_change_moves_deadlines(fleet, make_device, settings):
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = 10
    d = services.record_heartbeat(make_device(), at=T0)
    services.update_fleet(fleet, {"poll_interval": 60}, reason="faster")
    assert Device.objects.get(pk=d.pk).heartbeat_deadline == T0 + timedelta(seconds=90)
    with pytest.raises(services.DeviceChangeError):
        services.update_fleet(fleet, {"poll_interval": 5}, reason="too fast")


def test_move_device_only_within_organization(make_device, make_fleet, org, other_fleet):
    d = make_device()
    with pytest.raises(services.DeviceChangeError):
        services.move_device(d, other_fleet, reason="x")
    target, _ = make_fleet(org, "second")
    assert services.move_device(d, target, reason="x").fleet_id == target.pk


def test_device_interval_override_moves_its_deadline(make_device, settings):
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = 10
    d = services.record_heartbeat(make_device(), at=T0)
    services.update_device(d, {"poll_interval": 40}, reason="faster")
    assert Device.objects.get(pk=d.pk).heartbeat_deadline == T0 + timedelta(seconds=60)
    services.update_device(d, {"poll_interval": None}, reason="back to the fleet's")
    assert Device.objects.get(pk=d.pk).heartbeat_deadline == T0 + timedelta(seconds=900)
