"""CSV export (/devices/export.csv): exactly the filtered rows, in the page's order, streamed."""

from __future__ import annotations

import csv
import io
import re

import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext

from devices.views import EXPORT_COLUMNS
from tests.dashboard_helpers import device_in, one_of_each, row_uuids

URL = "/devices/export.csv"

pytestmark = pytest.mark.django_db


def rows_of(response) -> list[dict[str, str]]:
    assert isinstance(response, StreamingHttpResponse)
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_anonymous_is_sent_to_login(anon_client):
    response = anon_client.get(URL + "?status=offline")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/devices/export.csv%3Fstatus%3Doffline"


def test_headers_and_columns(owner_client, make_device, fleet, org):
    d = device_in(
        make_device, "online-heartbeat-only", name="gate", os_version="balenaOS 6.0.13", ip_address="10.0.3.17"
    )
    response = owner_client.get(URL)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(r'attachment; filename="devices-\d{8}-\d{6}\.csv"', response["Content-Disposition"])
    [row] = rows_of(response)
    assert list(row) == [*(name for name, _ in EXPORT_COLUMNS), "tags"]
    assert row["uuid"] == d.uuid and row["name"] == "gate" and row["status"] == "online-heartbeat-only"
    assert row["fleet"] == fleet.slug and row["organization"] == org.slug
    assert row["heartbeat"] == "online" and row["cloudlink_connected"] == "false"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", row["last_seen_at"])
    assert row["ip_address"] == "10.0.3.17" and row["download_progress"] == ""


def test_rows_are_exactly_the_filtered_view_in_its_order(owner_client, make_device, make_fleet, org):
    one_of_each(make_device)
    sensors, _ = make_fleet(org, "sensors")
    for i in range(3):
        device_in(make_device, "offline", name=f"s-off-{i}", fleet=sensors)
    device_in(make_device, "online", name="s-on", fleet=sensors)
    for params in (
        "",
        "?status=offline",
        "?status=offline&status=online&sort=-name",
        "?fleet=sensors",
        "?fleet=sensors&status=offline&sort=-last_seen",
        "?q=s-off",
        "?q=s-off&page=2",  # the page is not a filter: the export has every matching row
    ):
        page_uuids = row_uuids(owner_client.get("/devices/" + params.replace("&page=2", "")))
        exported = [r["uuid"] for r in rows_of(owner_client.get(URL + params))]
        assert exported == page_uuids, params


def test_export_is_not_paginated(owner_client, make_device):
    from devices.queries import PAGE_SIZE

    for i in range(PAGE_SIZE + 5):
        device_in(make_device, "online", name=f"d{i:03d}")
    assert len(rows_of(owner_client.get(URL))) == PAGE_SIZE + 5


def test_scoping(owner_client, other_client, make_device, other_fleet):
    mine = device_in(make_device, "online", name="mine")
    theirs = device_in(make_device, "online", name="theirs", fleet=other_fleet)
    assert [r["uuid"] for r in rows_of(owner_client.get(URL))] == [mine.uuid]
    assert [r["uuid"] for r in rows_of(other_client.get(URL))] == [theirs.uuid]
    assert owner_client.get(URL, {"fleet": other_fleet.slug}).status_code == 404
    assert owner_client.get(URL, {"fleet": "no-such-fleet"}).status_code == 404


def test_malformed_params_export_the_unfiltered_view(owner_client, make_device):
    devices = one_of_each(make_device)
    response = owner_client.get(URL + "?status=bogus&sort=nope&fleet=%3Cx%3E&q=" + "x" * 200)
    assert response.status_code == 200
    assert {r["uuid"] for r in rows_of(response)} == {d.uuid for d in devices.values()}


def test_spreadsheet_formulas_are_neutralised(owner_client, make_device):
    device_in(make_device, "online", name='=HYPERLINK("http://evil")', os_version="+1", release="@SUM(A1)")
    [row] = rows_of(owner_client.get(URL))
    assert row["name"] == '\'=HYPERLINK("http://evil")'
    assert row["os_version"] == "'+1" and row["release"] == "'@SUM(A1)"


def test_query_count_does_not_grow_with_rows(owner_client, make_device):
    device_in(make_device, "online", name="a")

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            rows_of(owner_client.get(URL))
        return len(ctx.captured_queries)

    small = count()
    for i in range(40):
        device_in(make_device, "offline", name=f"b{i}")
    # session, user, memberships, the rows (fleet and organization slugs joined in the same query), and
    # the tags of each chunk of EXPORT_CHUNK rows in one query
    assert count() == small == 5
