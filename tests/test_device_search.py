"""The search rows (devices/search.py) copy every device after every path that changes a searched
column or the status: services, state reports, staff edits in the admin, the sweep's bulk UPDATE,
QuerySet.update, bulk_create, raw SQL, deletion; and migrate and rebuild repair them. (Every other
test that touches the database checks the same after it: tests/conftest.py.)"""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection

from devices import search, services
from devices.models import Device, DeviceSearch, DeviceTag
from devices.status import Status
from devices.sweep import run_sweep
from fleets.models import Tier
from fleetstatus.db import triggers
from tests.hbutil import DEFAULT_WINDOW, T0, fetch, no_redis, reload  # noqa: F401
from tests.test_admin_devices import change_url, form_data

pytestmark = pytest.mark.django_db


def copy_of(device: Device) -> dict:
    return DeviceSearch.objects.filter(device_id=device.pk).values(
        "organization_id", "fleet_id", "overall_status", "name", "ip_address", "uuid"
    )[0]


def expected(device: Device) -> dict:
    d = reload(device)
    return {
        "organization_id": d.organization_id,
        "fleet_id": d.fleet_id,
        "overall_status": d.overall_status,
        "name": d.name.upper(),
        "ip_address": d.ip_address,
        "uuid": d.uuid,
    }


def in_sync(*devices: Device) -> None:
    assert search.mismatches() == []
    for device in devices:
        assert copy_of(device) == expected(device)


def test_services_and_reports_keep_the_copy(client, org, fleet, make_fleet, make_device, no_redis):
    other, _ = make_fleet(org, "robots")
    a = make_device(name="Kiosk-Gate-1", at=T0)
    b = make_device(at=T0)
    in_sync(a, b)
    assert copy_of(a)["name"] == "KIOSK-GATE-1"

    fetch(a, T0 + timedelta(seconds=1))
    services.set_tunnel([a.uuid], True, service_id=1, at=T0 + timedelta(seconds=2))
    assert copy_of(a)["overall_status"] == Status.ONLINE
    auth = {"HTTP_AUTHORIZATION": f"Bearer {b.api_key}"}
    body = {b.uuid: {"ip_address": "10.1.2.3 192.168.0.9", "status": "Idle"}}
    assert client.patch("/device/v3/state", body, content_type="application/json", **auth).status_code == 200
    assert copy_of(b)["ip_address"] == "10.1.2.3 192.168.0.9"
    services.move_device(b, other, reason="t", at=T0 + timedelta(seconds=3))
    services.apply_admin_edit(b, {"name": "renamed"}, reason="admin: t")
    in_sync(a, b)
    assert copy_of(b)["fleet_id"] == other.pk and copy_of(b)["name"] == "RENAMED"

    services.set_tunnel([a.uuid], False, service_id=1, at=T0 + timedelta(seconds=4))
    run_sweep(T0 + DEFAULT_WINDOW + timedelta(seconds=10))  # the sweep's bulk UPDATE
    assert copy_of(a)["overall_status"] == Status.OFFLINE
    services.set_active(a, False, reason="t", at=T0 + DEFAULT_WINDOW + timedelta(seconds=11))
    services.update_organization(org, {"tier": Tier.FREE}, reason="t")
    services.update_fleet(fleet, {"fleet_type": Tier.PAID}, reason="t")
    pre, _ = services.preregister_device(other, secrets.token_hex(16), reason="t")
    services.register_device(other, pre.uuid, device_type="rpi")
    registered, *_ = services.register_device(other, secrets.token_hex(16), device_type="rpi")
    in_sync(a, b, pre)
    assert DeviceSearch.objects.filter(uuid=registered.uuid).exists()


def test_the_admin_change_form_keeps_the_copy(admin_client, org, fleet, make_device):
    d = make_device(name="before")
    response = admin_client.post(change_url(d), form_data(d, name="after-admin"))
    assert response.status_code == 302, response.content[:2000]
    assert copy_of(d)["name"] == "AFTER-ADMIN"
    in_sync(d)


def test_paths_that_bypass_the_services(org, other_org, fleet, make_device):
    a = make_device(name="raw")
    b = make_device(name="bulk-update")
    with connection.cursor() as cur:
        cur.execute("UPDATE devices_device SET name = %s, ip_address = %s WHERE id = %s", ["sql", "10.9.9.9", a.pk])
    Device.objects.filter(pk=b.pk).update(name="queryset", overall_status=Status.UPDATING)
    created = Device.objects.bulk_create(
        [Device(uuid=secrets.token_hex(16), organization=org, fleet=fleet, name=f"bulk{i}") for i in range(3)]
    )
    in_sync(a, b, *created)
    assert copy_of(a)["ip_address"] == "10.9.9.9" and copy_of(b)["overall_status"] == Status.UPDATING
    # Devices never change organization through the app; a raw UPDATE still moves the copy.
    other_fleet = other_org.fleets.create(slug="x", name="x")
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE devices_device SET organization_id = %s, fleet_id = %s WHERE id = %s",
            [other_org.pk, other_fleet.pk, a.pk],
        )
    assert copy_of(a)["organization_id"] == other_org.pk
    Device.objects.filter(pk__in=[a.pk, *(d.pk for d in created)]).delete()
    b.delete()
    assert not DeviceSearch.objects.exists()
    in_sync()


def test_an_update_of_other_columns_writes_no_search_row(org, fleet, make_device):
    d = make_device()
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute("SELECT xmin::text FROM devices_devicesearch WHERE device_id = %s", [d.pk])
            (before,) = cur.fetchone()
            cur.execute(
                "UPDATE devices_device SET os_version = 'balenaOS 6', last_seen_at = now() WHERE id = %s", [d.pk]
            )
            cur.execute("SELECT xmin::text FROM devices_devicesearch WHERE device_id = %s", [d.pk])
            assert cur.fetchone()[0] == before  # the row was not rewritten
    in_sync(d)


def test_rebuild_repairs_a_load_with_triggers_off_and_the_command_checks(org, fleet, make_device, capsys):
    a = make_device(name="one")
    make_device(name="two")
    search.drop_triggers()  # a bulk load with triggers off (the bench seed's COPY) writes no copy
    c = make_device(name="three")
    Device.objects.filter(pk=a.pk).update(name="one-renamed")
    assert set(search.mismatches()) == {a.pk, c.pk}
    with pytest.raises(SystemExit):
        call_command("rebuild_status_counts", "--check")
    call_command("rebuild_status_counts")
    assert "copied 3 for search" in capsys.readouterr().out
    assert set(search.trigger_names()) <= search.installed_triggers()
    in_sync(a, c)
    call_command("rebuild_status_counts", "--check")
    assert "so are the search rows" in capsys.readouterr().out


def test_migrate_reinstalls_lost_triggers_and_copies_again(org, fleet, make_device):
    from django.apps import apps

    from devices.apps import _search_after_migrate

    make_device()
    search.drop_triggers()  # what a SQLite table rebuild does to them
    d = make_device()
    assert search.mismatches() == [d.pk]
    _search_after_migrate(sender=apps.get_app_config("devices"), using="default")
    assert set(search.trigger_names()) <= search.installed_triggers()
    in_sync(d)
    make_device()
    in_sync()


@pytest.mark.django_db(transaction=True)
def test_a_flush_between_tests_leaves_no_search_rows(org, fleet, make_device):
    # transaction=True: the next test starts after a flush (a TRUNCATE of every table on PostgreSQL).
    make_device()
    in_sync()


@pytest.mark.django_db(transaction=True)
def test_after_the_flush():
    assert not DeviceSearch.objects.exists()


def test_tag_lines_follow_every_tag_write(org, fleet, make_device):
    a, b = make_device(name="a"), make_device(name="b")

    def lines(device: Device) -> str:
        return DeviceSearch.objects.get(device_id=device.pk).tags

    assert lines(a) == ""
    services.set_tag(Device.objects.filter(pk__in=[a.pk, b.pk]), "zone", "north")
    services.set_tag(Device.objects.filter(pk=a.pk), "customer", "acme = one")
    # Key order, one line each; a value may hold "=" (only the first one splits).
    assert lines(a) == "customer=acme = one\nzone=north" and lines(b) == "zone=north"
    services.set_tag(Device.objects.filter(pk=a.pk), "zone", "south")  # a new value for a key
    assert lines(a) == "customer=acme = one\nzone=south"
    services.set_tag(Device.objects.filter(pk__in=[a.pk, b.pk]), "zone", None)  # removed
    assert lines(a) == "customer=acme = one" and lines(b) == ""
    with connection.cursor() as cur:  # raw SQL and a key renamed in place (an UPDATE)
        cur.execute("UPDATE devices_devicetag SET key = 'client' WHERE device_id = %s", [a.pk])
    assert lines(a) == "client=acme = one"
    a.delete()  # its tags go first, then its row
    assert not DeviceSearch.objects.filter(device_id=a.pk).exists()
    assert search.mismatches() == []


def test_rebuild_copies_the_tags(org, fleet, make_device):
    a = make_device(name="a")
    services.set_tag(Device.objects.filter(pk=a.pk), "zone", "north")
    DeviceSearch.objects.filter(device_id=a.pk).update(tags="")
    assert search.mismatches() == [a.pk]
    search.rebuild()
    assert DeviceSearch.objects.get(device_id=a.pk).tags == "zone=north"
    assert search.mismatches() == []


@pytest.mark.parametrize("count", [3, triggers.SMALL_STATEMENT_ROWS + 37])
def test_small_and_bulk_statements_keep_the_copy_on_one_connection(org, fleet, make_fleet, make_device, count):
    """One statement trigger runs a small write as written and a larger one planned afresh
    (fleetstatus.db.triggers.planned_for_size): both paths, one after the other on the same
    connection, in both orders, keep the copy and the tag lines exact."""
    other, _ = make_fleet(org, "robots")
    devices = [make_device(name=f"d-{n}") for n in range(count)]
    ids = [d.pk for d in devices]
    one = Device.objects.filter(pk=ids[0])
    every = Device.objects.filter(pk__in=ids)
    for batch in (one, every, one):
        batch.update(fleet=other)
        batch.update(fleet=fleet, name="renamed")
        services.set_tag(batch, "zone", "north")
        services.set_tag(batch, "zone", None)
        assert search.mismatches() == []
    services.set_tag(every, "zone", "south")
    DeviceTag.objects.filter(device_id__in=ids).update(value="east")  # one UPDATE of every tag
    assert set(DeviceSearch.objects.filter(device_id__in=ids).values_list("tags", flat=True)) == {"zone=east"}
    Device.objects.filter(pk__in=ids[1:]).delete()
    assert list(DeviceSearch.objects.filter(device_id__in=ids).values_list("device_id", flat=True)) == ids[:1]
    assert search.mismatches() == []


def test_planned_for_size_runs_a_large_statement_through_execute():
    body = triggers.planned_for_size("DELETE FROM t USING fs_old o WHERE t.id = o.id;", "fs_old")
    small, large = body.split("ELSE")
    assert f"(SELECT count(*) FROM fs_old) <= {triggers.SMALL_STATEMENT_ROWS}" in small
    assert "DELETE FROM t USING fs_old o WHERE t.id = o.id;" in small
    assert "EXECUTE $fs_sql$DELETE FROM t USING fs_old o WHERE t.id = o.id$fs_sql$;" in large
