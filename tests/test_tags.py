"""Device tags: the model, the service, the command, the admin, the Devices page filter and column,
the CSV, the read API, organization scoping; and the update status columns."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from devices import services
from devices.models import Device, DeviceSearch, DeviceTag
from devices.queries import DeviceQuery, HasTags, filter_devices, order_devices, parse_device_query, scoped_devices
from readapi.models import ApiToken
from tests.dashboard_helpers import html, notices, row_uuids, show_every_column

pytestmark = pytest.mark.django_db

URL = "/devices/"
EXPORT_URL = reverse("devices:export")
T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def tag(devices, key: str, value: str | None) -> int:
    pks = [d.pk for d in devices]
    return services.set_tag(Device.objects.filter(pk__in=pks), key, value)


def tags_of(device: Device) -> dict[str, str]:
    return dict(DeviceTag.objects.filter(device=device).values_list("key", "value"))


# --- Model and service ----------------------------------------------------------------------------


def test_set_tag_inserts_overwrites_and_removes_in_one_statement(make_device):
    a, b = make_device(name="a"), make_device(name="b")
    with CaptureQueriesContext(connection) as ctx:
        assert tag([a, b], "location", "gate-b") == 2
    assert len(ctx.captured_queries) == 1
    tag([a], "location", "gate-c")
    assert tags_of(a) == {"location": "gate-c"} and tags_of(b) == {"location": "gate-b"}
    assert DeviceTag.objects.get(device=a).organization_id == a.organization_id
    assert tag([a, b], "location", None) == 2
    assert DeviceTag.objects.count() == 0


@pytest.mark.parametrize(
    ("key", "value"),
    [("Location", "x"), ("", "x"), ("a" * 65, "x"), ("loc ation", "x"), ("loc", "line\nbreak"), ("loc", "v" * 201)],
)
def test_bad_tags_are_refused_and_nothing_is_written(make_device, key, value):
    device = make_device(name="a")
    with pytest.raises(services.TagError):
        tag([device], key, value)
    assert DeviceTag.objects.count() == 0


def test_one_value_per_key_and_model_validation(make_device):
    device = make_device(name="a")
    DeviceTag.objects.create(device=device, key="customer", value="acme")
    with pytest.raises(ValidationError):
        DeviceTag(device=device, key="Bad Key", value="x").full_clean()
    with pytest.raises(ValidationError):
        DeviceTag(device=device, key="site", value="tab\there").full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        DeviceTag.objects.create(device=device, key="customer", value="other")


def test_parse_assignment():
    assert services.parse_assignment("location=gate-b") == ("location", "gate-b")
    assert services.parse_assignment("note=a=b") == ("note", "a=b")
    assert services.parse_assignment("location=") == ("location", None)
    for bad in ("location", "=x", "LOC=x"):
        with pytest.raises(services.TagError):
            services.parse_assignment(bad)


# --- Command --------------------------------------------------------------------------------------


def test_command_tags_and_removes(make_device, org):
    a, b = make_device(name="a"), make_device(name="b")
    out = io.StringIO()
    call_command("tag_devices", org.slug, "location=gate-b", "customer=acme", a.uuid, b.uuid.upper(), stdout=out)
    assert "tagged location=gate-b 2 devices" in out.getvalue()
    assert tags_of(a) == tags_of(b) == {"location": "gate-b", "customer": "acme"}
    call_command("tag_devices", org.slug, "location=", a.uuid, stdout=io.StringIO())
    assert tags_of(a) == {"customer": "acme"}


def test_command_help_explains_removal():
    from devices.management.commands.tag_devices import Command

    assert "key= with an empty value removes" in Command.help


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchorg", "location=x", "{a}"], "no organization 'nosuchorg'"),
        (["{org}", "location=x", "{a}", "f" * 32], "no device ffff"),
        (["{org}", "location=x", "{other}"], "no device"),
        (["{org}", "Location=x", "{a}"], "tag key"),
        (["{org}", "location=x", "not-a-uuid"], "neither key=value nor a device UUID"),
        (["{org}", "{a}"], "at least one key=value"),
        (["{org}", "location=x"], "at least one device UUID"),
    ],
)
def test_command_refuses_bad_input_and_writes_nothing(make_device, make_fleet, org, other_org, args, message):
    a = make_device(name="a")
    other = make_device(make_fleet(other_org, "robots")[0], name="theirs")
    args = [x.format(org=org.slug, a=a.uuid, other=other.uuid) for x in args]
    with pytest.raises(CommandError, match=message):
        call_command("tag_devices", *args, stdout=io.StringIO())
    assert DeviceTag.objects.count() == 0


# --- Admin ----------------------------------------------------------------------------------------


def test_admin_bulk_action_tags_the_selection(staff_client, make_device):
    a, b, c = make_device(name="a"), make_device(name="b"), make_device(name="c")
    url = reverse("admin:devices_device_changelist")
    data = {"action": "tag_devices", "_selected_action": [a.pk, b.pk]}
    form = staff_client.post(url, data)
    assert form.status_code == 200 and b"key=value" in form.content
    response = staff_client.post(url, {**data, "apply": "1", "tag": "customer=acme"})
    assert response.status_code == 302
    assert tags_of(a) == tags_of(b) == {"customer": "acme"} and tags_of(c) == {}
    staff_client.post(url, {**data, "apply": "1", "tag": "customer="})
    assert DeviceTag.objects.count() == 0


def test_admin_bulk_action_refuses_a_bad_tag(staff_client, make_device):
    a = make_device(name="a")
    url = reverse("admin:devices_device_changelist")
    response = staff_client.post(
        url, {"action": "tag_devices", "_selected_action": [a.pk], "apply": "1", "tag": "Bad Key=x"}
    )
    assert response.status_code == 400
    assert b"tag key is 1 to 64 characters" in response.content
    assert DeviceTag.objects.count() == 0


def _change_data(device: Device, tags: list[tuple[str, str]]) -> dict:
    data = {
        "name": device.name,
        "fleet": str(device.fleet_id),
        "poll_interval": "",
        "cloudlink_enabled": "unknown",
        "notes": "",
        "is_active": "on",
        "tags-TOTAL_FORMS": str(len(tags)),
        "tags-INITIAL_FORMS": "0",
    }
    for i, (key, value) in enumerate(tags):
        data |= {f"tags-{i}-key": key, f"tags-{i}-value": value}
    return data


def test_admin_inline_edits_a_devices_tags(staff_client, make_device):
    device = make_device(name="a")
    url = reverse("admin:devices_device_change", args=[device.pk])
    page = staff_client.get(url)
    assert page.status_code == 200 and b"tags-TOTAL_FORMS" in page.content
    response = staff_client.post(url, _change_data(device, [("location", "gate-b")]))
    assert response.status_code == 302
    assert tags_of(device) == {"location": "gate-b"}
    assert DeviceTag.objects.get().organization_id == device.organization_id
    refused = staff_client.post(url, _change_data(device, [("Bad Key", "x")]))
    assert refused.status_code == 200 and b"tag key is 1 to 64" in refused.content
    assert tags_of(device) == {"location": "gate-b"}


# --- Devices page ---------------------------------------------------------------------------------


@pytest.fixture
def tagged(make_device, make_fleet, other_org):
    gate_acme = make_device(name="gate-acme")
    gate_other = make_device(name="gate-other")
    lobby_acme = make_device(name="lobby-acme")
    plain = make_device(name="plain")
    tag([gate_acme, gate_other], "location", "gate-b")
    tag([gate_acme, lobby_acme], "customer", "acme")
    # Another organization's device with the same tags: never matched, never shown.
    theirs = make_device(make_fleet(other_org, "robots")[0], name="theirs")
    tag([theirs], "location", "gate-b")
    tag([theirs], "customer", "acme")
    return {"gate_acme": gate_acme, "gate_other": gate_other, "lobby_acme": lobby_acme, "plain": plain}


def test_tag_filters_are_anded_and_scoped(owner_client, tagged):
    one = owner_client.get(URL + "?tag=location:gate-b")
    assert set(row_uuids(one)) == {tagged["gate_acme"].uuid, tagged["gate_other"].uuid}
    both = owner_client.get(URL + "?tag=location:gate-b&tag=customer:acme")
    assert row_uuids(both) == [tagged["gate_acme"].uuid]
    assert "tagged location=gate-b and customer=acme" in html(both)
    # Counts honour the tag filter too.
    assert 'data-status-count="all">1<' in html(both)
    assert row_uuids(owner_client.get(URL + "?tag=location:nowhere")) == []


def test_bad_tag_filter_is_a_notice(owner_client, tagged):
    response = owner_client.get(URL + "?tag=Location:gate-b")
    assert response.status_code == 200
    assert any("Tag filter 'Location:gate-b'" in n for n in notices(response))
    assert len(row_uuids(response)) == 4


def test_tags_column_shows_each_rows_tags_with_links(owner_client, tagged):
    body = html(owner_client.get(URL))
    assert '<th scope="col" class="col-tags">Tags</th>' in body
    assert 'href="/devices/?tag=location%3Agate-b"' in body and ">customer=acme</a>" in body


def test_another_organizations_tags_never_leak(other_client, tagged):
    body = html(other_client.get(URL + "?tag=customer:acme"))
    assert row_uuids(other_client.get(URL + "?tag=customer:acme")) != []  # their own device
    assert tagged["gate_acme"].uuid not in body


def test_tag_column_costs_one_query_per_page(owner_client, make_device):
    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert owner_client.get(URL).status_code == 200
        return len(ctx.captured_queries)

    devices = [make_device(name=f"d{i}") for i in range(3)]
    small = count()
    devices += [make_device(name=f"e{i}") for i in range(20)]
    tag(devices, "customer", "acme")
    tag(devices, "site", "north")
    assert count() == small


def test_csv_has_the_tags_of_each_row(owner_client, tagged):
    response = owner_client.get(EXPORT_URL + "?tag=customer:acme")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"gate-acme", "lobby-acme"}
    assert json.loads(by_name["gate-acme"]["tags"]) == {"customer": "acme", "location": "gate-b"}
    assert json.loads(by_name["lobby-acme"]["tags"]) == {"customer": "acme"}


# --- Read API -------------------------------------------------------------------------------------


@pytest.fixture
def api(owner, settings) -> Client:
    settings.FLEETSTATUS_API_THROTTLE_REQUESTS = 0
    return Client(headers={"Authorization": f"Bearer {ApiToken.issue(owner, 'tests')[1]}"})


def test_api_filters_by_tags_and_returns_them(api, tagged):
    body = api.get("/api/v1/devices", {"tag": ["location:gate-b", "customer:acme"]}).json()
    assert [d["name"] for d in body["results"]] == ["gate-acme"] and body["count"] == 1
    assert body["results"][0]["tags"] == {"customer": "acme", "location": "gate-b"}
    one = api.get(f"/api/v1/devices/{tagged['plain'].uuid}").json()
    assert one["tags"] == {}


@pytest.mark.parametrize("value", ["location", "Location:x", "location:", "location:a\tb"])
def test_api_refuses_a_bad_tag_with_400_naming_it(api, tagged, value):
    response = api.get("/api/v1/devices", {"tag": value})
    assert response.status_code == 400
    assert repr(value[:70]) in response.json()["error"]


def test_openapi_documents_tags():
    body = Client().get("/api/v1/openapi.json").json()
    assert "tags" in body["components"]["schemas"]["Device"]["properties"]
    params = {p["name"] for p in body["paths"]["/api/v1/devices"]["get"]["parameters"]}
    assert {"tag", "update_status"} <= params


# --- Update status columns ------------------------------------------------------------------------


def report(device: Device, at: datetime, **changes) -> None:
    snapshot = services.state_report_snapshot(device.uuid)
    services.apply_state_report(snapshot, changes, at=at)


def test_update_status_since_moves_only_when_the_value_changes(make_device):
    device = make_device(name="a")
    report(device, T0, update_status="done")
    report(device, T0 + timedelta(minutes=5), update_status="done", cpu_temp=50)
    device.refresh_from_db()
    assert device.update_status == "done" and device.update_status_changed_at == T0
    # Downloading changes the overall status: the locked path sets it too.
    later = T0 + timedelta(minutes=9)
    report(device, later, update_status="downloading", download_progress=10)
    device.refresh_from_db()
    assert device.update_status == "downloading" and device.update_status_changed_at == later
    with CaptureQueriesContext(connection) as ctx:
        report(device, later + timedelta(minutes=1), update_status="downloading", download_progress=20)
    # The snapshot read and the one guarded UPDATE.
    assert len(ctx.captured_queries) == 2
    device.refresh_from_db()
    assert device.update_status_changed_at == later


def test_update_status_columns_filter_and_sorts(owner_client, owner, make_device):
    show_every_column(owner)
    a, b, c = make_device(name="a"), make_device(name="b"), make_device(name="c")
    report(a, T0, update_status="done")
    report(b, T0 + timedelta(hours=1), update_status="aborted")
    body = html(owner_client.get(URL))
    assert '<td class="col-update_status">Aborted</td>' in body
    assert '<td class="col-update_status">Done</td>' in body
    assert "Update status since" in body and f'datetime="{(T0 + timedelta(hours=1)).isoformat()}' in body.replace(
        "Z", "+00:00"
    )
    assert row_uuids(owner_client.get(URL + "?update_status=aborted")) == [b.uuid]
    assert row_uuids(owner_client.get(URL + "?update_status=done&update_status=aborted&sort=name")) == [a.uuid, b.uuid]
    assert row_uuids(owner_client.get(URL + "?sort=-update_status_since")) == [b.uuid, a.uuid, c.uuid]
    assert row_uuids(owner_client.get(URL + "?sort=update_status_since")) == [a.uuid, b.uuid, c.uuid]
    # aborted < done; c has none, which each database sorts to its own end (NULL, see queries.SORTS).
    assert [u for u in row_uuids(owner_client.get(URL + "?sort=update_status")) if u != c.uuid] == [b.uuid, a.uuid]
    assert any("Unknown update status 'bogus'" in n for n in notices(owner_client.get(URL + "?update_status=bogus")))
    assert parse_device_query({"update_status": "applying_changes"}, []).update_statuses == ["applying changes"]


def test_api_refuses_update_status_sorts_and_bad_values(api):
    assert api.get("/api/v1/devices", {"sort": "update_status"}).status_code == 400
    assert "update_status 'bogus'" in api.get("/api/v1/devices", {"update_status": "bogus"}).json()["error"]
    assert api.get("/api/v1/devices", {"update_status": "done"}).status_code == 200


# --- Indexes (PostgreSQL) -------------------------------------------------------------------------


def plan(queryset, *settings: str) -> str:
    sql, params = queryset.query.sql_with_params()
    with transaction.atomic(), connection.cursor() as cursor:
        for setting in ("enable_seqscan", *settings):
            cursor.execute(f"SET LOCAL {setting} = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL plans")
def test_tag_filter_reads_the_tag_index_of_the_search_rows(org, make_device):
    device, other = make_device(name="a"), make_device(name="b")
    tag([device, other], "customer", "acme")
    tag([device], "location", "gate-b")
    query = DeviceQuery(tags=[("customer", "acme"), ("location", "gate-b")], organization_ids=[org.pk])
    # The filter's expression is the index's (migration 0011): without it only a scan could answer.
    text = plan(DeviceSearch.objects.filter(HasTags(query.tags)))
    assert "devsearch_tags" in text, text
    rows = order_devices(filter_devices(scoped_devices([org]), query), query)[:50]
    assert list(rows) == [device]
    assert "devices_devicesearch" in plan(rows)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL plans")
@pytest.mark.parametrize(
    ("sort", "descending", "index"),
    [
        ("update_status", False, "dev_org_update_status_name"),
        ("update_status", True, "dev_org_update_status_name"),
        ("update_status_since", False, "dev_org_update_since"),
        ("update_status_since", True, "dev_org_update_since_desc"),
    ],
)
def test_update_status_sorts_read_their_index(org, make_device, sort, descending, index):
    make_device(name="a")
    query = DeviceQuery(sort=sort, descending=descending, organization_ids=[org.pk])
    text = plan(order_devices(scoped_devices([org]), query)[:50], "enable_sort", "enable_bitmapscan")
    assert index in text, text
