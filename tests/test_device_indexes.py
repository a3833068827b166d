"""The Devices page's queries can use the indexes made for them (PostgreSQL; migrations devices/0005, 0010).

With a handful of rows the planner rightly prefers a scan, so these plans are taken with
sequential scans (and, for the sorts, explicit sorts) priced out: what is checked is that the SQL
the page emits matches an index at all. A change to the search's SQL (say icontains becoming
something else) or to a sort's fields would otherwise leave its index silently unused.
"""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from devices.models import DeviceSearch
from devices.queries import (
    DeviceQuery,
    filter_devices,
    order_devices,
    scoped_devices,
    search_condition,
    search_matches,
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
        ("kiosk", ["devsearch_name_trgm"]),
        ("a1b2c3", ["devsearch_name_trgm", "devsearch_org_uuid"]),
        ("10.0.", ["devsearch_name_trgm", "devsearch_ip_trgm"]),
    ],
)
def test_search_conditions_match_the_search_rows_trigram_and_uuid_indexes(org, make_device, q, indexes):
    # On a few rows the (organization, ...) index wins whatever is priced out; at 100,000 devices a
    # search of three or more characters is the BitmapOr of these (README). Checked here: the SQL
    # matches the indexes of the search rows, and the device table has no trigram index left.
    make_device(name="kiosk-1")
    query = DeviceQuery(q=q, organization_ids=[org.pk])
    text = plan(DeviceSearch.objects.filter(search_condition(q)).values_list("device_id"), "enable_indexscan")
    for index in indexes:
        assert index in text, text
    page_plan = plan(page(org, q=q, organization_ids=[org.pk]), "enable_indexscan")
    assert "devices_devicesearch" in page_plan and "trgm" not in page_plan.replace("devsearch_", ""), page_plan
    assert status_counts(search_matches(query))[Status.CONFIGURING.value] == (1 if q == "kiosk" else 0)


def test_the_device_table_has_no_trigram_index():
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'devices_device'")
        names = {name for (name,) in cursor.fetchall()}
    assert not {"dev_name_trgm", "dev_ip_trgm"} & names
    assert {"dev_org_status_seen", "dev_org_status_seen_desc"} <= names


@pytest.mark.parametrize(("descending", "index"), [(False, "dev_org_status_seen"), (True, "dev_org_status_seen_desc")])
def test_a_status_sorted_by_last_seen_reads_its_index_in_order(org, make_device, descending, index):
    # Both directions put never-seen devices last (NULLS LAST), so each has an index in that order.
    make_device(name="a")
    query = page(org, statuses=[Status.OFFLINE.value], sort="last_seen", descending=descending)
    text = plan(query, "enable_sort", "enable_bitmapscan")
    assert index in text and "Incremental Sort" in text, text


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
