"""The notification engine: outbox, hold, grouping, recovery, mute, scope, fleet threshold.

Deliveries go to a real HTTP receiver on 127.0.0.1 (notifications/receiver.py); time is passed to
the engine explicitly, never slept."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from devices import services
from devices.models import Device
from devices.status import Status
from fleetstatus.db import triggers
from notifications import engine, sending
from notifications.models import Channel, Delivery, FleetAlert, Mute, NotifiedState, PendingChange

ONLINE = {"api_heartbeat_state": "online", "is_connected_to_vpn": True}
OFFLINE = {"api_heartbeat_state": "offline", "is_connected_to_vpn": False}


@pytest.fixture
def channel(org, receiver, settings):
    settings.FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE = True
    return Channel.objects.create(organization=org, name="ops", url=receiver.url, hold_seconds=60)


@pytest.fixture
def t0():
    return timezone.now().replace(microsecond=0) - timedelta(hours=1)


def go(device: Device, signals: dict, at) -> None:
    services.update_device(device, signals, reason="test", at=at)


def result(channel: Channel, device: Device, to_status: str) -> str | None:
    """What the channel did with the device's change to `to_status` (None: nothing recorded)."""
    change = PendingChange.objects.filter(device_id=device.pk, to_status=to_status).latest("id")
    return (change.results or {}).get(str(channel.pk), [None])[0]


def run(now) -> list[str]:
    """One dispatcher round at `now`, then every due delivery sent; returns the states."""
    engine.dispatch(now)
    return [sending.deliver(pk, now) for pk in sending.due_ids(now)]


def test_outbox_row_is_written_with_the_transition_and_rolled_back_with_it(channel, make_device, t0):
    device = make_device(at=t0, **ONLINE)
    before = PendingChange.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        go(device, OFFLINE, t0 + timedelta(seconds=1))
        assert PendingChange.objects.count() == before + 1
        raise RuntimeError
    assert PendingChange.objects.count() == before
    go(device, OFFLINE, t0 + timedelta(seconds=1))
    row = PendingChange.objects.latest("id")
    assert (row.device_id, row.from_status, row.to_status, row.organization_id) == (
        device.pk,
        Status.ONLINE,
        Status.OFFLINE,
        device.organization_id,
    )


def test_no_outbox_rows_for_an_organization_without_channels(other_fleet, make_device, t0):
    make_device(other_fleet, at=t0, **ONLINE)
    assert PendingChange.objects.count() == 0


@pytest.mark.parametrize("count", [3, triggers.SMALL_STATEMENT_ROWS + 6])
def test_the_sweeps_bulk_insert_fills_the_outbox_too(channel, make_device, t0, count):
    # Beyond SMALL_STATEMENT_ROWS the trigger's INSERT runs through EXECUTE (planned for its size).
    devices = [make_device(at=t0, api_heartbeat_state="online") for _ in range(count)]
    Device.objects.filter(pk__in=[d.pk for d in devices]).update(heartbeat_deadline=t0 + timedelta(seconds=5))
    expired = services.expire_heartbeats(t0 + timedelta(seconds=10))
    assert expired == count
    rows = PendingChange.objects.filter(to_status=Status.OFFLINE)
    assert sorted(r.device_id for r in rows) == sorted(d.pk for d in devices)


def test_changes_within_the_window_go_out_as_one_message(channel, make_device, receiver, t0):
    devices = [make_device(at=t0, name=f"kiosk-{i}", **ONLINE) for i in range(30)]
    for i, d in enumerate(devices):
        go(d, OFFLINE, t0 + timedelta(seconds=100 + i % 5))
    # The hold has passed for all of them, the group window not yet: nothing sent.
    assert run(t0 + timedelta(seconds=165)) == []
    assert receiver.received == []
    states = run(t0 + timedelta(seconds=175))
    assert states == ["delivered"]
    (message,) = receiver.delivered()
    body = message.json()
    assert body["event"] == "devices.status_changed"
    assert (body["organization"], body["channel"]) == ("northwind", "ops")
    assert sorted(c["name"] for c in body["changes"]) == sorted(d.name for d in devices)
    assert {(c["from"], c["to"], c["fleet"]) for c in body["changes"]} == {("online", "offline", "kiosks")}
    assert set(body["changes"][0]) == {"uuid", "name", "fleet", "from", "to", "at"}


def test_more_changes_than_a_message_holds_are_split(channel, make_device, receiver, t0, monkeypatch):
    monkeypatch.setattr(engine, "MAX_CHANGES", 4)
    devices = [make_device(at=t0, **ONLINE) for _ in range(10)]
    for d in devices:
        go(d, OFFLINE, t0 + timedelta(seconds=100))
    run(t0 + timedelta(seconds=200))
    sizes = sorted(len(r.json()["changes"]) for r in receiver.delivered())
    assert sizes == [2, 4, 4]


def test_a_flapping_device_notifies_nothing(channel, make_device, receiver, t0):
    device = make_device(at=t0, **ONLINE)
    go(device, OFFLINE, t0 + timedelta(seconds=100))
    go(device, ONLINE, t0 + timedelta(seconds=130))  # back within the 60 s hold
    run(t0 + timedelta(seconds=300))
    assert receiver.received == []
    assert result(channel, device, Status.OFFLINE) == "held"
    # Its recovery is not sent either: its going Offline never was.
    assert result(channel, device, Status.ONLINE) is None


def test_recovery_is_sent_after_an_announced_offline(channel, make_device, receiver, t0):
    device = make_device(at=t0, **ONLINE)
    go(device, OFFLINE, t0 + timedelta(seconds=100))
    run(t0 + timedelta(seconds=200))
    assert NotifiedState.objects.get(channel_id=channel.pk, device_id=device.pk).status == Status.OFFLINE
    go(device, ONLINE, t0 + timedelta(seconds=300))
    run(t0 + timedelta(seconds=400))
    bodies = [r.json()["changes"] for r in receiver.delivered()]
    assert [[(c["from"], c["to"]) for c in b] for b in bodies] == [[("online", "offline")], [("offline", "online")]]
    assert not NotifiedState.objects.filter(channel_id=channel.pk).exists()


def test_a_change_waits_for_the_hold(channel, make_device, t0):
    device = make_device(at=t0, **ONLINE)
    go(device, OFFLINE, t0 + timedelta(seconds=100))
    engine.dispatch(t0 + timedelta(seconds=159))
    assert result(channel, device, Status.OFFLINE) is None
    engine.dispatch(t0 + timedelta(seconds=160))
    assert result(channel, device, Status.OFFLINE) == "notified"


def test_muted_device_and_fleet_notify_nothing(channel, make_device, make_fleet, org, receiver, t0):
    muted_device, other = make_device(at=t0, **ONLINE), make_device(at=t0, **ONLINE)
    fleet2 = make_fleet(org, "signs")[0]
    in_muted_fleet = make_device(fleet2, at=t0, **ONLINE)
    Mute.objects.create(organization=org, device=muted_device, starts_at=t0, until=t0 + timedelta(hours=2))
    Mute.objects.create(organization=org, fleet=fleet2, starts_at=t0, until=t0 + timedelta(hours=2))
    for d in (muted_device, other, in_muted_fleet):
        go(d, OFFLINE, t0 + timedelta(seconds=100))
    run(t0 + timedelta(seconds=300))
    (message,) = receiver.delivered()
    assert [c["uuid"] for c in message.json()["changes"]] == [other.uuid]
    results = {d.pk: result(channel, d, Status.OFFLINE) for d in (muted_device, other, in_muted_fleet)}
    assert results == {muted_device.pk: "muted", other.pk: "notified", in_muted_fleet.pk: "muted"}
    # The history still has the change.
    assert Device.objects.get(pk=muted_device.pk).overall_status == Status.OFFLINE


def test_a_mute_that_ended_does_not_apply(channel, make_device, org, receiver, t0):
    device = make_device(at=t0, **ONLINE)
    Mute.objects.create(organization=org, device=device, starts_at=t0, until=t0 + timedelta(seconds=50))
    go(device, OFFLINE, t0 + timedelta(seconds=100))
    run(t0 + timedelta(seconds=300))
    assert len(receiver.delivered()) == 1


def test_scope_by_fleet(channel, make_device, make_fleet, org, receiver, t0):
    signs = make_fleet(org, "signs")[0]
    channel.fleets.set([signs])
    kiosk, sign = make_device(at=t0, **ONLINE), make_device(signs, at=t0, **ONLINE)
    for d in (kiosk, sign):
        go(d, OFFLINE, t0 + timedelta(seconds=100))
    run(t0 + timedelta(seconds=300))
    (message,) = receiver.delivered()
    assert [c["uuid"] for c in message.json()["changes"]] == [sign.uuid]


def test_a_disabled_channel_records_channel_off(channel, make_device, receiver, t0):
    Channel.objects.filter(pk=channel.pk).update(enabled=False)
    device = make_device(at=t0, **ONLINE)
    go(device, OFFLINE, t0 + timedelta(seconds=100))
    run(t0 + timedelta(seconds=300))
    assert receiver.received == []
    assert result(channel, device, Status.OFFLINE) == "off"


def test_other_statuses_are_watched_when_chosen(channel, make_device, receiver, t0):
    Channel.objects.filter(pk=channel.pk).update(statuses=["offline", "online-vpn-only"])
    device = make_device(at=t0, **ONLINE)
    go(device, {"api_heartbeat_state": "offline"}, t0 + timedelta(seconds=100))  # VPN only
    run(t0 + timedelta(seconds=300))
    (message,) = receiver.delivered()
    assert [c["to"] for c in message.json()["changes"]] == ["online-vpn-only"]


def test_fleet_threshold_degraded_then_recovered(channel, make_device, fleet, receiver, t0):
    from fleets import counts

    Channel.objects.filter(pk=channel.pk).update(fleet_threshold=50, statuses=["frozen"])
    devices = [make_device(at=t0, **ONLINE) for _ in range(4)]
    counts.fold()
    run(t0 + timedelta(seconds=10))
    assert receiver.received == []
    for d in devices[:2]:
        go(d, OFFLINE, t0 + timedelta(seconds=20))
    run(t0 + timedelta(seconds=30))
    (degraded,) = receiver.delivered()
    assert degraded.json() == {
        "event": "fleet.degraded",
        "organization": "northwind",
        "fleet": "kiosks",
        "not_online": 2,
        "active": 4,
        "at": (t0 + timedelta(seconds=30)).isoformat(),
    }
    assert FleetAlert.objects.filter(channel=channel, fleet=fleet).exists()
    run(t0 + timedelta(seconds=40))  # still degraded: nothing new
    assert len(receiver.delivered()) == 1
    go(devices[0], ONLINE, t0 + timedelta(seconds=50))
    run(t0 + timedelta(seconds=60))
    recovered = receiver.delivered()[1].json()
    assert (recovered["event"], recovered["not_online"], recovered["active"]) == ("fleet.recovered", 1, 4)
    assert not FleetAlert.objects.exists()


def test_two_dispatchers_never_evaluate_a_change_twice(channel, make_device, t0):
    device = make_device(at=t0, **ONLINE)
    go(device, OFFLINE, t0 + timedelta(seconds=100))
    now = t0 + timedelta(seconds=300)
    engine.dispatch(now)
    engine.dispatch(now)
    assert result(channel, device, Status.OFFLINE) == "notified"
    assert Delivery.objects.get().size == 1


def test_prune_drops_old_processed_changes_and_finished_deliveries(channel, make_device, receiver, t0, settings):
    device = make_device(at=t0, **ONLINE)
    go(device, OFFLINE, t0 + timedelta(seconds=100))
    run(t0 + timedelta(seconds=300))
    assert PendingChange.objects.filter(processed_at__isnull=False).exists()
    assert engine.prune(t0 + timedelta(days=1)) == 0
    later = t0 + timedelta(days=settings.FLEETSTATUS_TRANSITION_RETENTION_DAYS + 1)
    assert engine.prune(later) > 0
    assert not PendingChange.objects.filter(processed_at__isnull=False).exists()
    assert not Delivery.objects.exists()
