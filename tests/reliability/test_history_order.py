"""A device's transition history stays in time order when the sweep expires a heartbeat late.

The sweep stamps an expiry at the heartbeat deadline. If another change of the same device was
recorded after that deadline but before the sweep ran (here a tunnel disconnect), stamping at the
deadline would put the expiry before it: the history must never run backwards (the soak test found
this under flapping devices).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devices import services
from devices.models import Device, StatusTransition
from devices.status import Status

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def short_interval(settings, fleet):
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = 10
    services.update_fleet(fleet, {"poll_interval": 10}, reason="test")  # window 15 s


def _history(device: Device) -> list[tuple[str, str, datetime]]:
    return list(
        StatusTransition.objects.filter(device=device).order_by("id").values_list("from_status", "to_status", "at")
    )


@pytest.mark.django_db
def test_late_expiry_is_not_stamped_before_a_later_change(make_device, short_interval):
    device = make_device(at=T0)
    services.set_tunnel([device.uuid], True, 1, at=T0)
    services.record_heartbeat(Device.objects.select_related("fleet").get(pk=device.pk), at=T0)
    deadline = T0 + timedelta(seconds=15)
    disconnected = deadline + timedelta(seconds=0.4)  # after the deadline, before the sweep ran
    services.set_tunnel([device.uuid], False, 1, at=disconnected)
    assert Device.objects.get(pk=device.pk).overall_status == Status.ONLINE_HEARTBEAT_ONLY

    assert services.expire_heartbeats(deadline + timedelta(seconds=1)) == 1

    device.refresh_from_db()
    history = _history(device)
    assert history[-1][:2] == (Status.ONLINE_HEARTBEAT_ONLY, Status.OFFLINE)
    assert history[-1][2] == disconnected == device.status_changed_at
    assert [at for *_, at in history] == sorted(at for *_, at in history)


@pytest.mark.django_db
def test_expiry_without_a_later_change_is_stamped_at_the_deadline(make_device, short_interval):
    device = make_device(at=T0)
    services.record_heartbeat(Device.objects.select_related("fleet").get(pk=device.pk), at=T0)
    assert services.expire_heartbeats(T0 + timedelta(seconds=40)) == 1
    device.refresh_from_db()
    assert _history(device)[-1] == (Status.ONLINE_HEARTBEAT_ONLY, Status.OFFLINE, T0 + timedelta(seconds=15))
    assert device.status_changed_at == T0 + timedelta(seconds=15)


@pytest.mark.django_db
def test_a_change_timed_before_a_newer_committed_one_is_stamped_after_it(make_device, short_interval):
    """Requests take their time before waiting for the row lock; the one that commits first wins."""
    device = make_device(at=T0)
    later = T0 + timedelta(seconds=5)
    services.set_tunnel([device.uuid], True, 1, at=later)  # committed first, stamped later
    services.record_heartbeat(Device.objects.select_related("fleet").get(pk=device.pk), at=T0 + timedelta(seconds=4))
    services.set_tunnel([device.uuid], False, 1, at=T0 + timedelta(seconds=3))
    device.refresh_from_db()
    history = _history(device)
    assert [to for _, to, _ in history][-3:] == [Status.ONLINE_VPN_ONLY, Status.ONLINE, Status.ONLINE_HEARTBEAT_ONLY]
    assert [at for *_, at in history][-3:] == [later, later, later]
    assert device.status_changed_at == later
    assert all(history[i][0] == history[i - 1][1] for i in range(1, len(history)))
