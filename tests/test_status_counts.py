"""The kept device counts (fleets/counts.py) equal a GROUP BY over the devices after every path that
changes a device: services, the sweep's bulk UPDATEs, tunnel events, the admin, state reports,
moves, deletion, raw SQL; and they stay exact through folds, rebuilds and lost triggers."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from devices import services
from devices.models import Device
from devices.status import Status
from devices.sweep import reconcile_all_frozen, run_sweep
from fleets import counts
from fleets.models import StatusCount, StatusCountDelta, Tier
from tests.hbutil import DEFAULT_WINDOW, T0, fetch, no_redis, reload  # noqa: F401

pytestmark = pytest.mark.django_db


def exact() -> None:
    assert counts.mismatches() == {}


def real(**filters) -> dict[str, int]:
    result = dict.fromkeys(counts.STATUS_SLUGS, 0)
    for d in Device.objects.filter(**filters):
        result[d.overall_status] += 1
    return result


def check(org, *fleets) -> None:
    """Counts exact, and what the pages read (counts + pending deltas) equals the devices."""
    exact()
    assert counts.status_counts([org.pk]) == real(organization=org)
    for fleet in fleets:
        assert counts.status_counts([org.pk], [fleet.pk]) == real(fleet=fleet)
        assert counts.fleet_status_counts([org.pk]).get(fleet.pk, dict.fromkeys(counts.STATUS_SLUGS, 0)) == real(
            fleet=fleet
        )


def test_every_service_path_keeps_the_counts_exact(org, fleet, make_fleet, make_device, no_redis):
    other, _ = make_fleet(org, "robots")
    a = make_device(at=T0)
    b = make_device(at=T0)
    check(org, fleet, other)
    assert counts.status_counts([org.pk])[Status.CONFIGURING] == 2

    fetch(a, T0 + timedelta(seconds=1))  # heartbeat
    services.set_tunnel([a.uuid, b.uuid], True, service_id=1, at=T0 + timedelta(seconds=2))  # bulk tunnel
    check(org, fleet, other)
    assert counts.status_counts([org.pk])[Status.ONLINE] == 1

    services.update_device(b, {"provisioning_progress": 40}, reason="t", at=T0 + timedelta(seconds=3))
    services.move_device(b, other, reason="t", at=T0 + timedelta(seconds=4))
    check(org, fleet, other)
    assert counts.status_counts([org.pk], [other.pk])[reload(b).overall_status] == 1

    services.set_tunnel([a.uuid, b.uuid], False, service_id=1, at=T0 + timedelta(seconds=5))
    run_sweep(T0 + DEFAULT_WINDOW + timedelta(seconds=10))  # expiries: the sweep's bulk UPDATE
    check(org, fleet, other)
    assert reload(a).overall_status == Status.OFFLINE

    services.set_active(a, False, reason="t", at=T0 + DEFAULT_WINDOW + timedelta(seconds=11))
    services.move_devices(Device.objects.filter(pk=b.pk), fleet, reason="t")
    check(org, fleet, other)
    services.set_devices_active(Device.objects.filter(pk=a.pk), True, reason="t")

    services.update_organization(org, {"tier": Tier.FREE}, reason="t")
    services.update_fleet(fleet, {"fleet_type": Tier.PAID}, reason="t")  # paid fleet on a free tier: frozen
    check(org, fleet, other)
    assert counts.status_counts([org.pk], [fleet.pk])[Status.FROZEN] == 2
    services.update_organization(org, {"tier": Tier.PAID, "device_allowance": 1}, reason="t")
    reconcile_all_frozen()
    check(org, fleet, other)

    pre, _ = services.preregister_device(other, secrets.token_hex(16), reason="t")
    services.register_device(other, pre.uuid, device_type="rpi")
    services.register_device(other, secrets.token_hex(16), device_type="rpi")
    check(org, fleet, other)

    # Paths that bypass the services: raw SQL, QuerySet.update, bulk_create, deletion.
    with connection.cursor() as cur:
        cur.execute("UPDATE devices_device SET overall_status = %s WHERE id = %s", [Status.UPDATING, a.pk])
    Device.objects.filter(pk=b.pk).update(overall_status=Status.POST_PROVISIONING, fleet=other)
    Device.objects.bulk_create(
        [Device(uuid=secrets.token_hex(16), organization=org, fleet=fleet, name=f"bulk{i}") for i in range(3)]
    )
    check(org, fleet, other)
    Device.objects.filter(pk=a.pk).delete()
    Device.objects.filter(name__startswith="bulk").delete()
    check(org, fleet, other)


def test_state_reports_and_fetches_through_the_api(client, org, fleet, make_device, no_redis):
    d = make_device()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {d.api_key}"}
    assert client.get(f"/device/v3/{d.uuid}/state", **auth).status_code == 200
    body = {d.uuid: {"status": "Idle", "provisioning_progress": 50, "os_version": "balenaOS 5"}}
    response = client.patch("/device/v3/state", body, content_type="application/json", **auth)
    assert response.status_code == 200
    check(org, fleet)
    assert counts.status_counts([org.pk])[reload(d).overall_status] == 1


def test_admin_edit_and_move(admin_client, org, fleet, make_fleet, make_device):
    other, _ = make_fleet(org, "robots")
    d = make_device(api_heartbeat_state="offline")
    url = reverse("admin:devices_device_changelist")
    response = admin_client.post(url, {"action": "deactivate", "_selected_action": [d.pk]}, follow=True)
    assert response.status_code == 200
    services.apply_admin_edit(d, {"fleet": other, "is_active": True}, reason="admin: t")
    check(org, fleet, other)


def test_folding_moves_deltas_into_counts_without_changing_any_answer(org, fleet, make_device):
    for _ in range(3):
        make_device()
    before = counts.status_counts([org.pk])
    assert StatusCountDelta.objects.exists()
    assert counts.fold() > 0
    assert not StatusCountDelta.objects.exists()
    assert counts.status_counts([org.pk]) == before
    assert StatusCount.objects.get(fleet_id=fleet.pk, status=Status.CONFIGURING).n == 3
    assert counts.fold() == 0  # nothing pending: nothing to do
    exact()


def test_an_update_that_changes_no_status_writes_no_delta(org, fleet, make_device):
    d = make_device()
    counts.fold()
    Device.objects.filter(pk=d.pk).update(name="renamed", os_version="balenaOS 6")
    services.update_device(d, {"os_version": "balenaOS 7"}, reason="t")
    assert not StatusCountDelta.objects.exists()


def test_statuses_that_empty_leave_no_counter_rows(org, fleet, make_device):
    d = make_device()
    counts.fold()
    services.update_device(d, {"provisioning_state": "Post-Provisioning"}, reason="t")
    counts.fold()
    assert set(StatusCount.objects.values_list("status", flat=True)) == {Status.POST_PROVISIONING}
    Device.objects.all().delete()
    counts.fold()
    assert not StatusCount.objects.exists()
    exact()


def test_rebuild_repairs_counts_and_the_command_checks_them(org, fleet, make_device, capsys):
    make_device()
    make_device()
    StatusCountDelta.objects.all().delete()  # counts lost (say, a bulk load with triggers off)
    assert counts.mismatches()
    with pytest.raises(SystemExit):
        call_command("rebuild_status_counts", "--check")
    call_command("rebuild_status_counts")
    assert "counted 2 devices" in capsys.readouterr().out
    exact()
    call_command("rebuild_status_counts", "--check")
    assert "counts are exact" in capsys.readouterr().out


def test_lost_triggers_are_reinstalled_and_recounted(org, fleet, make_device):
    counts.drop_triggers()
    make_device()  # not counted: no trigger
    assert counts.mismatches()
    assert counts.installed_triggers().isdisjoint(counts.trigger_names())
    call_command("rebuild_status_counts")
    assert set(counts.trigger_names()) <= counts.installed_triggers()
    exact()
    make_device()
    exact()


def test_no_organizations_no_query(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert counts.status_counts([]) == dict.fromkeys(counts.STATUS_SLUGS, 0)
        assert counts.status_counts([1], []) == dict.fromkeys(counts.STATUS_SLUGS, 0)
        assert counts.fleet_status_counts([]) == {}


def test_readers_are_one_query_each(org, fleet, make_device, django_assert_num_queries):
    make_device()
    with django_assert_num_queries(1):
        counts.status_counts([org.pk], [fleet.pk])
    with django_assert_num_queries(1):
        counts.fleet_status_counts([org.pk])


def test_fold_task(org, fleet, make_device):
    from fleets.tasks import fold_status_counts

    make_device()
    assert fold_status_counts.apply().get() >= 1
    exact()


def test_user_and_org_creation_alone_touch_no_counts(org):
    get_user_model().objects.create_user(username="x", password="y")
    assert not StatusCount.objects.exists() and not StatusCountDelta.objects.exists()


def test_migrate_reinstalls_lost_triggers_and_recounts(org, fleet, make_device):
    from django.apps import apps

    from fleets.apps import _status_counts_after_migrate

    make_device()
    counts.drop_triggers()  # what a SQLite table rebuild does to them
    make_device()
    assert counts.mismatches()
    _status_counts_after_migrate(sender=apps.get_app_config("fleets"), using="default")
    assert set(counts.trigger_names()) <= counts.installed_triggers()
    exact()


@pytest.mark.django_db(transaction=True)
def test_a_flush_between_tests_leaves_exact_counts(org, fleet, make_device):
    # transaction=True: the data is committed and the test runner flushes it afterwards; the next
    # test's check (tests/conftest.py) fails if the flush left counts behind.
    for _ in range(3):
        make_device()
    exact()


@pytest.mark.django_db(transaction=True)
def test_after_the_flush(org):
    assert counts.status_counts([org.pk]) == dict.fromkeys(counts.STATUS_SLUGS, 0)
    exact()
