"""The Devices page's columns: the default set, a user's own choice (kept in the database), ?cols= for
one view, the chooser form, saved views that keep columns, the CSV, bad input and query counts."""

from __future__ import annotations

import csv
import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from devices.models import ColumnChoice, SavedView
from devices.queries import COLUMNS, DEFAULT_COLUMNS, OPTIONAL_COLUMNS, parse_columns
from fleets.models import Membership
from tests.conftest import PASSWORD
from tests.dashboard_helpers import device_in, html, notices, row_uuids
from tests.test_views_devices import FRAGMENT_QUERIES, FULL_PAGE_QUERIES

URL = "/devices/"
CHOOSE = "/devices/columns/"

pytestmark = pytest.mark.django_db


def header_keys(response) -> list[str]:
    return re.findall(r'<th scope="col" class="col-([a-z_]+)"', html(response))


def cell_keys(response, uuid: str) -> list[str]:
    row = re.search(rf'<tr data-uuid="{uuid}".*?</tr>', html(response), re.S).group(0)
    return re.findall(r'<t[hd][^>]* class="col-([a-z_]+)"', row)


def ticked(response) -> list[str]:
    """The chooser's ticked checkboxes."""
    block = re.search(r"<details[^>]*data-columns-menu.*?</details>", html(response), re.S).group(0)
    return re.findall(r'name="cols" value="([a-z_]+)" checked', block)


def choose(client, cols: list[str], scope: str = "user", query: str = ""):
    return client.post(CHOOSE, {"cols": cols, "scope": scope, "query": query})


def _member(org, username: str):
    user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    Membership.objects.create(user=user, organization=org, role=Membership.Role.MEMBER)
    client = Client()
    client.force_login(user)
    return user, client


# --- The default columns -------------------------------------------------------------------------------


def test_the_default_columns_in_the_tables_order(owner_client, make_device):
    d = device_in(make_device, "online")
    response = owner_client.get(URL)
    expected = [k for k in COLUMNS if k in ("name", "status", *DEFAULT_COLUMNS)]
    assert header_keys(response) == expected
    assert cell_keys(response, d.uuid) == expected
    # Fewer than all: the default must fit a 1,280 px window (the e2e journey measures it).
    assert len(expected) < len(COLUMNS)
    assert ticked(response) == list(DEFAULT_COLUMNS)


# --- Kept per user ---------------------------------------------------------------------------------


def test_keeping_columns_stores_them_and_every_later_page_shows_them(owner_client, owner, make_device):
    d = device_in(make_device, "online", ip_address="10.0.0.9")
    response = choose(owner_client, ["ip", "uuid"])
    assert response.status_code == 303 and response["Location"] == URL
    # Stored in the table's order, whatever order the form sent.
    assert ColumnChoice.objects.get(user=owner).columns == "uuid,ip"
    for page in (owner_client.get(URL), owner_client.get(URL, HTTP_HX_REQUEST="true")):
        assert header_keys(page) == ["name", "status", "uuid", "ip"]
        assert cell_keys(page, d.uuid) == ["name", "status", "uuid", "ip"]
        assert "10.0.0.9" in html(page)
    assert ticked(owner_client.get(URL)) == ["uuid", "ip"]
    # Choosing again replaces the choice (one row per user).
    choose(owner_client, ["fleet"])
    assert list(ColumnChoice.objects.values_list("columns", flat=True)) == ["fleet"]
    assert header_keys(owner_client.get(URL)) == ["name", "status", "fleet"]


def test_no_optional_column_at_all_is_a_choice_too(owner_client, owner, make_device):
    d = device_in(make_device, "online")
    assert choose(owner_client, []).status_code == 303
    assert ColumnChoice.objects.get(user=owner).columns == ""
    assert cell_keys(owner_client.get(URL), d.uuid) == ["name", "status"]


def test_the_choice_is_each_users_own(owner_client, owner, org, make_device):
    device_in(make_device, "online")
    colleague, colleague_client = _member(org, "cora")
    choose(owner_client, ["uuid"])
    assert header_keys(owner_client.get(URL)) == ["name", "status", "uuid"]
    assert header_keys(colleague_client.get(URL)) == [k for k in COLUMNS if k in ("name", "status", *DEFAULT_COLUMNS)]
    assert not ColumnChoice.objects.filter(user=colleague).exists()


def test_the_chooser_returns_to_the_filters_and_sort_it_came_from(owner_client, owner, fleet):
    query = f"status=offline&fleet={fleet.slug}&sort=-name&page=3&cols=uuid&evil=1"
    response = choose(owner_client, ["os"], query=query)
    # The page's own parser rebuilt it: no page, no unknown parameter, and no ?cols= (it would hide
    # the choice just kept).
    assert response["Location"] == f"{URL}?status=offline&fleet={fleet.slug}&sort=-name"


def test_this_view_only_writes_nothing_and_puts_the_columns_in_the_url(owner_client, owner, make_device):
    d = device_in(make_device, "online")
    choose(owner_client, ["uuid"])
    response = choose(owner_client, ["os", "device_type"], scope="view", query="status=online")
    assert response.status_code == 303
    assert response["Location"] == f"{URL}?status=online&cols=device_type,os"
    assert ColumnChoice.objects.get(user=owner).columns == "uuid"
    assert cell_keys(owner_client.get(response["Location"]), d.uuid) == ["name", "status", "device_type", "os"]
    assert header_keys(owner_client.get(URL)) == ["name", "status", "uuid"]


def test_default_columns_forgets_the_choice(owner_client, owner):
    choose(owner_client, ["uuid"])
    response = choose(owner_client, ["ip"], scope="reset", query="q=gate")
    assert response.status_code == 303 and response["Location"] == f"{URL}?q=gate"
    assert not ColumnChoice.objects.exists()
    assert ticked(owner_client.get(URL)) == list(DEFAULT_COLUMNS)


# --- Bad input: a clear 400, nothing changed ----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cols": ["uuid", "no_such"], "scope": "user"}, "There is no column no_such."),
        ({"cols": ["name"], "scope": "user"}, "There is no column name."),
        ({"cols": ["uuid"]}, "Choose whether to keep the columns or show them for this view only."),
        ({"cols": ["uuid"], "scope": "everyone"}, "Select a valid choice."),
        ({"cols": ["uuid"], "scope": "user", "query": "q=" + "x" * 2000}, "at most 2000 characters"),
    ],
)
def test_bad_input_is_a_400_that_says_why_and_changes_nothing(owner_client, owner, data, message):
    ColumnChoice.objects.create(user=owner, columns="fleet")
    response = owner_client.post(CHOOSE, data)
    assert response.status_code == 400
    assert message in html(response).replace("&#x27;", "'")
    assert "The columns were not changed" in html(response)
    assert ColumnChoice.objects.get(user=owner).columns == "fleet"


def test_get_anonymous_and_csrf_are_refused(owner, anon_client):
    response = anon_client.post(CHOOSE, {"cols": ["uuid"], "scope": "user"})
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(owner)
    assert strict.get(CHOOSE).status_code == 405
    assert strict.post(CHOOSE, {"cols": ["uuid"], "scope": "user"}).status_code == 403
    assert not ColumnChoice.objects.exists()


# --- ?cols= in the URL ---------------------------------------------------------------------------------


def test_cols_in_the_url_wins_over_the_users_choice(owner_client, owner, make_device):
    d = device_in(make_device, "online")
    choose(owner_client, ["uuid"])
    response = owner_client.get(URL + "?cols=last_seen,fleet")
    assert cell_keys(response, d.uuid) == ["name", "status", "fleet", "last_seen"]
    assert ticked(response) == ["fleet", "last_seen"]
    # The htmx refresh polls the same URL: the same columns.
    assert 'hx-get="/devices/?cols=last_seen,fleet"' in html(response)
    assert header_keys(owner_client.get(URL + "?cols=last_seen,fleet", HTTP_HX_REQUEST="true")) == [
        "name",
        "status",
        "fleet",
        "last_seen",
    ]
    # Sort links and the filter form keep them; the CSV link does not need them.
    assert 'href="/devices/?cols=last_seen%2Cfleet&amp;sort=fleet"' in html(response)
    assert '<input type="hidden" name="cols" value="fleet,last_seen">' in html(response)
    assert 'href="/devices/export.csv"' in html(response)


def test_unknown_columns_in_the_url_are_named_in_a_notice(owner_client, owner, make_device):
    d = device_in(make_device, "online")
    choose(owner_client, ["uuid"])
    response = owner_client.get(URL + "?cols=ip,bogus")
    assert response.status_code == 200
    assert cell_keys(response, d.uuid) == ["name", "status", "ip"]
    assert notices(response) == [
        f"Unknown column 'bogus' ignored. Columns: {', '.join(OPTIONAL_COLUMNS)} (Name and Status are always shown)."
    ]
    # Naming no column at all: the whole value is ignored and the user's own columns apply.
    response = owner_client.get(URL + "?cols=bogus,<script>")
    assert cell_keys(response, d.uuid) == ["name", "status", "uuid"]
    assert notices(response)[0].startswith("Unknown column 'bogus', '<script>' ignored; showing your columns.")
    assert "<script>'" not in html(response)


def test_parse_columns():
    assert parse_columns(["ip,uuid"]) == (("uuid", "ip"), None)
    assert parse_columns(["ip", " uuid , name,status"]) == (("uuid", "ip"), None)
    assert parse_columns([""]) == ((), None)
    assert parse_columns(["name"]) == ((), None)
    chosen, notice = parse_columns(["ip,x"])
    assert chosen == ("ip",) and notice.startswith("Unknown column 'x' ignored. Columns: uuid, fleet, tags,")
    chosen, notice = parse_columns([",".join(f"x{i}" for i in range(8))])
    assert chosen is None and "'x4', …" in notice and "x5" not in notice


# --- Saved views keep columns; the CSV keeps its own --------------------------------------------------


def test_save_view_stores_the_columns_shown(owner_client, owner, make_device):
    d = device_in(make_device, "offline")
    choose(owner_client, ["ip", "last_seen"])
    page = html(owner_client.get(URL + "?status=offline"))
    hidden = re.search(r'<input type="hidden" name="query" value="([^"]*)">\s*<label for="save-view-name"', page)
    assert hidden.group(1) == "status=offline&amp;cols=ip,last_seen"
    response = owner_client.post("/devices/views/", {"name": "Offline", "query": "status=offline&cols=ip,last_seen"})
    assert response.status_code == 303
    assert SavedView.objects.get().query == "status=offline&cols=ip,last_seen"
    # Later the user's own columns change; the view still opens with its own.
    choose(owner_client, ["uuid"])
    opened = owner_client.get(response["Location"])
    assert cell_keys(opened, d.uuid) == ["name", "status", "ip", "last_seen"]
    assert row_uuids(opened) == [d.uuid]


def test_a_saved_view_keeps_only_known_columns(owner_client):
    owner_client.post("/devices/views/", {"name": "v", "query": "cols=bogus,uuid&sort=ip"})
    assert SavedView.objects.get().query == "sort=ip&cols=uuid"


def test_the_csv_keeps_its_own_columns(owner_client, make_device):
    d = device_in(make_device, "online")
    plain = owner_client.get("/devices/export.csv")
    narrowed = owner_client.get("/devices/export.csv?cols=uuid")
    rows = [list(csv.reader(io.StringIO(b"".join(r.streaming_content).decode()))) for r in (plain, narrowed)]
    assert rows[0] == rows[1]
    assert rows[0][0][:3] == ["uuid", "name", "status"] and "mac_address" in rows[0][0]
    assert rows[0][1][0] == d.uuid


# --- Query counts ------------------------------------------------------------------------------------


def _queries(client, url: str, **headers) -> list[str]:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url, **headers).status_code == 200
    return [q["sql"] for q in ctx.captured_queries]


def test_the_choice_costs_no_query_of_its_own(owner_client, owner, make_device):
    device_in(make_device, "online")
    before = _queries(owner_client, URL)
    ColumnChoice.objects.create(user=owner, columns=",".join(OPTIONAL_COLUMNS))
    after = _queries(owner_client, URL)
    assert len(before) == len(after) == FULL_PAGE_QUERIES
    assert len(_queries(owner_client, URL, HTTP_HX_REQUEST="true")) == FRAGMENT_QUERIES
    # Read in the query that loads the user's organizations, never on its own.
    reads = [s for s in after if "devices_columnchoice" in s]
    assert len(reads) == 1 and "fleets_organization" in reads[0]


def test_without_the_tags_column_its_query_is_not_run(owner_client, owner, make_device):
    device_in(make_device, "online")
    ColumnChoice.objects.create(user=owner, columns="fleet,last_seen")
    sql = _queries(owner_client, URL)
    assert len(sql) == FULL_PAGE_QUERIES - 1
    assert not [s for s in sql if "devices_devicetag" in s]
    assert len(_queries(owner_client, URL + "?cols=tags")) == FULL_PAGE_QUERIES


def test_a_user_of_no_organization_still_gets_their_choice(owner, org):
    lonely = get_user_model().objects.create_user(username="lonely", password=PASSWORD)
    ColumnChoice.objects.create(user=lonely, columns="uuid")
    client = Client()
    client.force_login(lonely)
    assert header_keys(client.get(URL)) == ["name", "status", "uuid"]
