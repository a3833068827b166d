"""The Devices page's queries can use the indexes made for them (PostgreSQL; migration devices/0005).

With a handful of rows the planner rightly prefers a scan, so these plans are taken with
sequential scans (and, for the sorts, explicit sorts) priced out: what is checked is that the SQL
the page emits matches an index at all. A change to the search's SQL (say icontains becoming
something else) or to a sort's fields would otherwise leave its index silently unused.
"""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from devices.models import Device
from devices.queries import (
    DeviceQuery,
    filter_devices,
    order_devices,
    scoped_devices,
    search_condition,
    status_counts,
)
from devices.status import Status

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL-only indexes"),
]


def plan(queryset, *settings: str) -> str:
    sql, params = queryset.query.sql_with_params()
    with transaction.atomic(), connection.cursor() as cursor:
        for setting in ("enable_seqscan", *settings):
            cursor.execute(f"SET LOCAL {setting} = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def page(org, **kwargs):
    query = DeviceQuery(**kwargs)
    return order_devices(filter_devices(scoped_devices([org]), query), query).select_related("fleet")[:50]


@pytest.mark.parametrize(
    ("q", "indexes"),
    [
        ("kiosk", ["dev_name_trgm"]),
        ("a1b2c3", ["dev_name_trgm", "devices_device_uuid_key"]),
        ("10.0.", ["dev_name_trgm", "dev_ip_trgm"]),
    ],
)
def test_search_conditions_match_the_trigram_and_uuid_indexes(org, make_device, q, indexes):
    # On a few rows the (organization, ...) indexes win whatever is priced out; the page's plan at
    # 100,000 devices is the BitmapOr of these (README). Checked here: the SQL matches the indexes.
    make_device(name="kiosk-1")
    devices = Device.objects.filter(search_condition(q))
    for text in (
        plan(devices.order_by("name", "pk")[:50], "enable_indexscan"),
        plan(devices.values_list("pk"), "enable_indexscan"),
    ):
        for index in indexes:
            assert index in text, text
    query = DeviceQuery(q=q)
    assert status_counts(filter_devices(scoped_devices([org]), query, with_status=False))[Status.CONFIGURING.value] == (
        1 if q == "kiosk" else 0
    )


@pytest.mark.parametrize(
    ("sort", "index"),
    [
        ("device_type", "dev_org_device_type_name"),
        ("os", "dev_org_os_name"),
        ("release", "dev_org_release"),
        ("ip", "dev_org_ip"),
        ("heartbeat", "dev_org_heartbeat_name"),
        ("cloudlink", "dev_org_vpn_name"),
    ],
)
@pytest.mark.parametrize("descending", [False, True])
def test_sorts_with_a_second_key_read_their_index_in_order(org, make_device, sort, index, descending):
    make_device(name="a")
    text = plan(page(org, sort=sort, descending=descending), "enable_sort", "enable_bitmapscan")
    assert index in text, text
    # The index gives (x, name); only the id tiebreak is left: an incremental sort, never a full one.
    assert "Incremental Sort" in text, text


@pytest.mark.parametrize("descending", [False, True])
def test_fleet_sort_walks_the_organizations_fleets_in_name_order(org, make_device, descending):
    make_device(name="a")
    text = plan(page(org, sort="fleet", descending=descending), "enable_sort", "enable_bitmapscan", "enable_hashjoin")
    assert "fleet_org_name" in text and "Incremental Sort" in text, text
