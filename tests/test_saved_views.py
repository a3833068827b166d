"""Saved views of the Devices page: save, list, open, rename, delete; scoping, bad input, query counts."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from devices.models import SavedView
from fleets.models import Membership
from tests.conftest import PASSWORD
from tests.dashboard_helpers import device_in, html, row_uuids

URL = "/devices/"
SAVE = "/devices/views/"

pytestmark = pytest.mark.django_db


def _member(org, username: str):
    user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    Membership.objects.create(user=user, organization=org, role=Membership.Role.MEMBER)
    client = Client()
    client.force_login(user)
    return user, client


def _menu(response) -> list[tuple[str, str]]:
    """(name, href) of each view in the Views menu."""
    block = re.search(r"<details class=\"views-menu\".*?</details>", html(response), re.S)
    assert block, "no views menu"
    return [
        (unescape(name), unescape(href))
        for href, name in re.findall(r'<a class="views-menu__link" href="([^"]*)">([^<]*)</a>', block.group(0))
    ]


def _save(client, name: str, query: str, **extra):
    return client.post(SAVE, {"name": name, "query": query, **extra})


# --- Save and open -----------------------------------------------------------------------------------


def test_save_stores_the_validated_query_and_redirects_to_it(owner_client, owner, fleet, make_device):
    query = "status=offline&status=nonsense&fleet=kiosks&q=gate&sort=-last_seen&page=3&evil=1"
    response = _save(owner_client, "Offline gates", query)
    assert response.status_code == 303
    view = SavedView.objects.get()
    # Only the parameters the page knows, as its parser validated them; never the page number.
    assert view.query == "status=offline&fleet=kiosks&q=gate&sort=-last_seen"
    assert (view.owner, view.organization, view.shared) == (owner, fleet.organization, False)
    assert response["Location"] == f"{URL}?{view.query}"


def test_opening_a_view_shows_the_same_devices_as_the_original_url(owner_client, make_device, make_fleet, org):
    other, _ = make_fleet(org, "lobby")
    for i in range(3):
        device_in(make_device, "offline", name=f"gate-{i}")
        device_in(make_device, "online", name=f"gate-on-{i}")
        device_in(make_device, "offline", name=f"gate-lobby-{i}", fleet=other)
    original = f"{URL}?status=offline&fleet=kiosks&q=gate&sort=-name"
    expected = row_uuids(owner_client.get(original))
    assert len(expected) == 3
    _save(owner_client, "Gates", original.split("?", 1)[1])
    [(name, href)] = _menu(owner_client.get(URL))
    assert name == "Gates"
    assert row_uuids(owner_client.get(href)) == expected


def test_a_view_is_validated_again_when_opened(owner_client, owner, fleet, org):
    # Stored before the fleet was renamed: the page says so instead of failing.
    view = SavedView.objects.create(organization=org, owner=owner, name="Old", query="fleet=gone")
    response = owner_client.get(f"{URL}?{view.query}")
    assert response.status_code == 404
    assert "There is no fleet" in html(response)


# --- Listing -----------------------------------------------------------------------------------------


def test_menu_lists_own_views_and_shared_ones_of_the_organization(owner_client, owner, org, other_user, other_org):
    colleague, colleague_client = _member(org, "cora")
    _save(owner_client, "Mine", "status=offline")
    _save(colleague_client, "Cora shared", "status=online", shared="on")
    _save(colleague_client, "Cora private", "status=updating")
    SavedView.objects.create(organization=other_org, owner=other_user, name="Theirs", query="", shared=True)
    names = [name for name, _ in _menu(owner_client.get(URL))]
    assert names == ["Cora shared", "Mine"]
    page = html(owner_client.get(URL))
    assert "shared by cora" in page and "Cora private" not in page and "Theirs" not in page
    # The colleague sees their own two and nothing of the owner's personal view.
    assert [n for n, _ in _menu(colleague_client.get(URL))] == ["Cora private", "Cora shared"]


def test_only_the_owner_gets_rename_and_delete_forms(owner_client, owner, org):
    colleague, colleague_client = _member(org, "cora")
    _save(owner_client, "Shared one", "", shared="on")
    view = SavedView.objects.get()
    assert f"/devices/views/{view.pk}/delete/" in html(owner_client.get(URL))
    assert f"/devices/views/{view.pk}/delete/" not in html(colleague_client.get(URL))


def test_multi_organization_user_chooses_the_organization(client, org, other_org):
    user, multi = _member(org, "max")
    Membership.objects.create(user=user, organization=other_org)
    assert _save(multi, "No org", "").status_code == 400
    assert _save(multi, "Other", "", organization=other_org.slug).status_code == 303
    assert SavedView.objects.get().organization == other_org


# --- Rename and delete -------------------------------------------------------------------------------


def test_owner_renames_and_deletes(owner_client, owner, org):
    _save(owner_client, "Before", "status=offline")
    view = SavedView.objects.get()
    response = owner_client.post(f"/devices/views/{view.pk}/rename/", {"name": "  After  "})
    assert response.status_code == 303
    view.refresh_from_db()
    assert (view.name, view.query) == ("After", "status=offline")
    response = owner_client.post(f"/devices/views/{view.pk}/delete/")
    assert response.status_code == 303 and response["Location"] == URL
    assert not SavedView.objects.exists()


def test_a_colleague_cannot_rename_or_delete_a_shared_view(owner_client, org):
    _, colleague_client = _member(org, "cora")
    _save(owner_client, "Shared", "", shared="on")
    view = SavedView.objects.get()
    assert colleague_client.post(f"/devices/views/{view.pk}/rename/", {"name": "Mine now"}).status_code == 404
    assert colleague_client.post(f"/devices/views/{view.pk}/delete/").status_code == 404
    view.refresh_from_db()
    assert view.name == "Shared"


def test_another_organizations_view_is_a_404(owner_client, other_client, other_org, other_user):
    theirs = SavedView.objects.create(organization=other_org, owner=other_user, name="Theirs", shared=True)
    assert owner_client.post(f"/devices/views/{theirs.pk}/rename/", {"name": "x"}).status_code == 404
    assert owner_client.post(f"/devices/views/{theirs.pk}/delete/").status_code == 404
    assert owner_client.post("/devices/views/999999/delete/").status_code == 404
    assert SavedView.objects.get().name == "Theirs"


def test_a_view_left_behind_in_a_former_organization_is_a_404(owner_client, owner, org):
    view = SavedView.objects.create(organization=org, owner=owner, name="Old")
    Membership.objects.filter(user=owner).delete()
    assert owner_client.post(f"/devices/views/{view.pk}/delete/").status_code == 404
    assert SavedView.objects.exists()


# --- Bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "This field is required."), ("   ", "This field is required."), ("x" * 81, "at most 80 characters")],
)
def test_bad_names_are_refused_and_change_nothing(owner_client, owner, org, name, message):
    response = _save(owner_client, name, "status=offline")
    assert response.status_code == 400 and message in unescape(html(response))
    assert not SavedView.objects.exists()
    view = SavedView.objects.create(organization=org, owner=owner, name="Keep")
    response = owner_client.post(f"/devices/views/{view.pk}/rename/", {"name": name})
    assert response.status_code == 400 and message in unescape(html(response))
    view.refresh_from_db()
    assert view.name == "Keep"


def test_duplicate_names_are_refused(owner_client, owner, org):
    _save(owner_client, "Same", "status=offline")
    response = _save(owner_client, "Same", "status=online")
    assert response.status_code == 400 and "already have a view named" in unescape(html(response))
    _save(owner_client, "Other", "")
    other = SavedView.objects.get(name="Other")
    response = owner_client.post(f"/devices/views/{other.pk}/rename/", {"name": "Same"})
    assert response.status_code == 400
    assert sorted(SavedView.objects.values_list("name", "query")) == [("Other", ""), ("Same", "status=offline")]


def test_the_same_name_is_fine_for_another_user(owner_client, org):
    _, colleague_client = _member(org, "cora")
    assert _save(owner_client, "Same", "").status_code == 303
    assert _save(colleague_client, "Same", "").status_code == 303


def test_a_fleet_outside_the_users_organizations_is_refused(owner_client, other_fleet):
    response = _save(owner_client, "Spy", f"fleet={other_fleet.organization.slug}/{other_fleet.slug}")
    assert response.status_code == 400 and "not in your organizations" in unescape(html(response))
    assert not SavedView.objects.exists()


def test_a_too_long_query_is_refused(owner_client):
    assert _save(owner_client, "Long", "q=" + "x" * 2100).status_code == 400
    assert not SavedView.objects.exists()


def test_get_anonymous_and_csrf_are_refused(owner, anon_client):
    assert anon_client.post(SAVE, {"name": "x"}).status_code == 302
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(owner)
    assert strict.get(SAVE).status_code == 405
    assert strict.post(SAVE, {"name": "x", "query": ""}).status_code == 403
    assert not SavedView.objects.exists()


# --- Query counts ------------------------------------------------------------------------------------


def _queries(client, url: str, **headers) -> list[str]:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url, **headers).status_code == 200
    return [q["sql"] for q in ctx.captured_queries]


def test_the_menu_adds_one_query_whatever_the_number_of_views(owner_client, owner, org, make_device):
    colleague, _ = _member(org, "cora")
    device_in(make_device, "online")
    none = _queries(owner_client, URL)
    assert len([s for s in none if "devices_savedview" in s]) == 1
    for i in range(8):
        SavedView.objects.create(organization=org, owner=owner, name=f"mine {i}", query="status=offline")
        SavedView.objects.create(organization=org, owner=colleague, name=f"theirs {i}", shared=True)
    many = _queries(owner_client, URL)
    assert len(many) == len(none)
    assert len([s for s in many if "devices_savedview" in s]) == 1
    # The polled fragment has no menu and reads no view.
    assert not [s for s in _queries(owner_client, URL, HTTP_HX_REQUEST="true") if "devices_savedview" in s]


def test_tag_and_update_status_filters_are_kept(owner_client):
    query = "tag=location:gate-b&tag=customer:acme&update_status=downloading&tag=bad"
    assert _save(owner_client, "Gate B downloads", query).status_code == 303
    assert SavedView.objects.get().query == ("tag=location%3Agate-b&tag=customer%3Aacme&update_status=downloading")
