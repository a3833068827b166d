"""Tenant isolation as a matrix generated from the URL configuration.

Every URL pattern of the project (walked from get_resolver(), admin included) is classified here;
an unclassified pattern fails the test, so a new page cannot be forgotten. Each class expands into
concrete requests (full page and htmx fragment) for four visitors: a member of the organization
that owns the data, a member of another organization, an anonymous visitor and a staff superuser
(who is a member of nothing). Expected: 200 with the data / 200 without it / 404 / redirect to
the login page (admin: to the admin login).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver

from devices.models import Device
from tests.reliability import figures

pytestmark = pytest.mark.django_db

VISITORS = ("member", "other", "anon", "staff")

# Every non-admin URL pattern, by "namespace:name" (or its route when unnamed) -> its class.
URL_CLASSES = {
    "": "home-redirect",
    "healthz": "public",
    "favicon": "public-redirect",
    "device-openapi": "public",
    "login": "login",
    "logout": "logout",
    "devices:list": "device-list",
    "fleets:list": "fleet-list",
    "fleets:detail": "fleet-page",
    "devices:export": "export",
    "devices:detail": "device-page",
    "device-api-register": "device-api",
    "device-api-target-state": "device-api",
    "device-api-state-report": "device-api",
    "device-api-vpn-connect": "device-api",
    "device-api-vpn-disconnect": "device-api",
    # The read API takes tokens only (its own matrix: tests/test_readapi_tenants.py).
    "readapi:openapi": "public",
    "readapi:devices": "device-api",
    "readapi:device": "device-api",
    "readapi:history": "device-api",
    "readapi:fleets": "device-api",
    "readapi:metrics": "metrics",
    "readapi:tokens": "account-page",
    "readapi:revoke": "account-post",
    "devices:columns": "saved-views",
    "devices:view-save": "saved-views",
    "devices:view-rename": "saved-views",
    "devices:view-delete": "saved-views",
    "notifications:list": "notifications",
    "notifications:add": "notifications",
    "notifications:edit": "notifications",
    "notifications:test": "notifications",
    "notifications:mute-device": "notifications",
    "notifications:mute-fleet": "notifications",
    "notifications:unmute": "notifications",
}


def walk(patterns, prefix: str = "", namespace: str = "") -> list[tuple[str, str, URLPattern]]:
    found = []
    for p in patterns:
        if isinstance(p, URLResolver):
            ns = ":".join(filter(None, [namespace, p.namespace or ""]))
            found += walk(p.url_patterns, prefix + str(p.pattern), ns)
        else:
            key = ":".join(filter(None, [namespace, p.name or ""])) if p.name else ""
            found.append((prefix + str(p.pattern), key, p))
    return found


@dataclass
class Case:
    url: str
    visitor: str
    expect: int  # status code
    htmx: bool = False
    redirect_to: str = ""  # prefix of Location for redirects
    contains: str = ""  # must appear in the body
    absent: str = ""  # must not appear in the body
    method: str = "get"


@pytest.fixture
def world(org, other_org, make_fleet, make_device, owner, other_user, staff_client):
    mine = make_device(name="alpha-northwind-device")
    other_fleet, _ = make_fleet(other_org, "robots")
    theirs = make_device(other_fleet, name="omega-contoso-device")
    clients = {"anon": Client()}
    for name, user in (("member", owner), ("other", other_user)):
        clients[name] = Client()
        clients[name].force_login(user)
    clients["staff"] = staff_client
    return {"mine": mine, "theirs": theirs, "clients": clients, "staff": staff_client.user}


def login_redirect(visitor: str, found: int, logged_in: int, htmx: bool = False) -> tuple[int, str]:
    if visitor == "anon":
        return (403, "") if htmx else (302, "/login/")
    return logged_in, ""


def dashboard_cases(url: str, world) -> list[Case]:
    mine, theirs = world["mine"], world["theirs"]
    fleet_param = f"{mine.organization.slug}/{mine.fleet.slug}"
    cases = []
    for htmx in (False, True):
        for visitor in VISITORS:
            if visitor == "anon":
                cases.append(Case(url, visitor, 403 if htmx else 302, htmx, "" if htmx else "/login/"))
                cases.append(
                    Case(f"{url}?fleet={fleet_param}", visitor, 403 if htmx else 302, htmx, "" if htmx else "/login/")
                )
                continue
            sees_mine = visitor == "member"
            cases.append(
                Case(
                    url,
                    visitor,
                    200,
                    htmx,
                    contains=mine.name if sees_mine else "",
                    absent="" if sees_mine else mine.name,
                )
            )
            if visitor == "other":
                cases.append(
                    Case(url, visitor, 200, htmx, contains=theirs.name if "fleets" not in url else "", absent=mine.name)
                )
            # Another organization's fleet in the URL is a 404, not an empty page.
            cases.append(
                Case(
                    f"{url}?fleet={fleet_param}",
                    visitor,
                    200 if sees_mine else 404,
                    htmx,
                    absent="" if sees_mine else mine.name,
                )
            )
    return cases


def fleet_list_cases(url: str, world) -> list[Case]:
    mine, theirs = world["mine"].fleet.name, world["theirs"].fleet.name
    cases = []
    for htmx in (False, True):
        for visitor in VISITORS:
            if visitor == "anon":
                cases.append(Case(url, visitor, 403 if htmx else 302, htmx, "" if htmx else "/login/"))
            elif visitor == "member":
                cases.append(Case(url, visitor, 200, htmx, contains=mine, absent=theirs))
            elif visitor == "other":
                cases.append(Case(url, visitor, 200, htmx, contains=theirs, absent=mine))
            else:
                cases.append(Case(url, visitor, 200, htmx, absent=mine))
    return cases


def export_cases(url: str, world) -> list[Case]:
    mine = world["mine"]
    cases = []
    for visitor in VISITORS:
        if visitor == "anon":
            cases.append(Case(url, visitor, 302, redirect_to="/login/"))
            continue
        sees_mine = visitor == "member"
        cases.append(
            Case(url, visitor, 200, contains=mine.uuid if sees_mine else "", absent="" if sees_mine else mine.uuid)
        )
        cases.append(
            Case(
                f"{url}?fleet={mine.organization.slug}/{mine.fleet.slug}",
                visitor,
                200 if sees_mine else 404,
                absent="" if sees_mine else mine.uuid,
            )
        )
    return cases


def device_page_cases(world) -> list[Case]:
    mine = world["mine"]
    cases = []
    for uuid in (mine.uuid, mine.uuid.upper()):
        url = f"/devices/{uuid}/"
        for htmx in (False, True):
            for visitor in VISITORS:
                if visitor == "anon":
                    cases.append(Case(url, visitor, 403 if htmx else 302, htmx, "" if htmx else "/login/"))
                else:
                    member = visitor == "member"
                    cases.append(
                        Case(
                            url,
                            visitor,
                            200 if member else 404,
                            htmx,
                            contains=mine.name if member else "",
                            absent="" if member else mine.name,
                        )
                    )
    return cases


def fleet_page_cases(world) -> list[Case]:
    mine, theirs = world["mine"], world["theirs"]
    cases = []
    for device, owner in ((mine, "member"), (theirs, "other")):
        url = f"/fleets/{device.organization.slug}/{device.fleet.slug}/"
        for htmx in (False, True):
            for visitor in VISITORS:
                if visitor == "anon":
                    cases.append(Case(url, visitor, 403 if htmx else 302, htmx, "" if htmx else "/login/"))
                elif visitor == owner:
                    cases.append(Case(url, visitor, 200, htmx, contains=device.fleet.name))
                else:
                    cases.append(Case(url, visitor, 404, htmx, absent=device.fleet.name))
    return cases


def notification_cases(key: str, world) -> list[Case]:
    """Owners of the data's organization only; another organization's objects are 404; POST-only forms."""
    from django.utils import timezone

    from notifications.models import Channel, Mute

    mine = world["mine"]
    channel = Channel.objects.get_or_create(
        organization=mine.organization, name="matrix-channel", defaults={"url": "https://hooks.example.com/"}
    )[0]
    mute = Mute.objects.get_or_create(
        organization=mine.organization, device=mine, defaults={"starts_at": timezone.now(), "until": timezone.now()}
    )[0]
    url = {
        "notifications:list": "/notifications/",
        "notifications:add": f"/notifications/add/{mine.organization.slug}/",
        "notifications:edit": f"/notifications/{channel.pk}/",
        "notifications:test": f"/notifications/{channel.pk}/test/",
        "notifications:mute-device": f"/notifications/mute/device/{mine.uuid}/",
        "notifications:mute-fleet": f"/notifications/mute/fleet/{mine.fleet.pk}/",
        "notifications:unmute": f"/notifications/mute/{mute.pk}/end/",
    }[key]
    cases = [Case(url, "anon", 302, redirect_to="/login/")]
    if key == "notifications:list":
        cases += [
            Case(url, "member", 200, contains=channel.name),
            Case(url, "other", 200, absent=channel.name),
            Case(url, "staff", 403),
        ]
    elif key in ("notifications:add", "notifications:edit"):
        cases += [Case(url, "member", 200), Case(url, "other", 404), Case(url, "staff", 404)]
    else:
        member_post = 400 if key.startswith("notifications:mute-") else 302  # no form data: refused
        cases += [Case(url, v, 405) for v in ("member", "other", "staff")]
        cases += [
            Case(url, "other", 404, method="post"),
            Case(url, "staff", 404, method="post"),
            Case(url, "member", member_post, method="post"),
            Case(url, "anon", 302, method="post"),
        ]
    return cases


def saved_view_cases(key: str, world) -> list[Case]:
    """POST-only forms (saved views, the column chooser); another user's or organization's view is a
    404; no form data is refused."""
    from devices.models import SavedView

    mine = world["mine"]
    owner = mine.organization.memberships.get().user
    view = SavedView.objects.get_or_create(organization=mine.organization, owner=owner, name="matrix-view")[0]
    url = {
        "devices:columns": "/devices/columns/",
        "devices:view-save": "/devices/views/",
        "devices:view-rename": f"/devices/views/{view.pk}/rename/",
        "devices:view-delete": f"/devices/views/{view.pk}/delete/",
    }[key]
    cases = [Case(url, v, 405) for v in VISITORS] + [Case(url, "anon", 302, redirect_to="/login/", method="post")]
    if key in ("devices:view-save", "devices:columns"):
        # Nothing of an organization's: the user's own (the column choice) or a form to fill.
        return cases + [Case(url, v, 400, method="post") for v in ("member", "other", "staff")]
    cases += [Case(url, v, 404, method="post") for v in ("other", "staff")]
    return cases + [Case(url, "member", 400 if key == "devices:view-rename" else 303, method="post")]


def non_admin_cases(world) -> tuple[list[Case], list[str]]:
    cases: list[Case] = []
    unclassified = []
    mine = world["mine"]
    for route, key, _pattern in walk(get_resolver().url_patterns):
        if route.startswith("admin/"):
            continue
        cls = URL_CLASSES.get(key)
        if cls is None:
            unclassified.append(f"{route!r} ({key or 'unnamed'})")
            continue
        url = "/" + route
        if cls == "home-redirect":
            cases += [Case("/", v, 302, redirect_to="/devices/") for v in VISITORS]
        elif cls == "public":
            cases += [Case(url, v, 200) for v in VISITORS]
        elif cls == "public-redirect":
            cases += [Case(url, v, 301, redirect_to="/static/") for v in VISITORS]
        elif cls == "login":
            cases += [Case(url, v, 200 if v == "anon" else 302) for v in VISITORS]
        elif cls == "logout":
            cases += [Case(url, v, 405) for v in VISITORS]  # POST only: a link cannot log anybody out
            cases += [Case(url, v, 302, method="post") for v in ("anon",)]
        elif cls == "device-list":
            cases += dashboard_cases(url, world)
        elif cls == "fleet-list":
            cases += fleet_list_cases(url, world)
        elif cls == "fleet-page":
            cases += fleet_page_cases(world)
        elif cls == "export":
            cases += export_cases(url, world)
        elif cls == "device-page":
            cases += device_page_cases(world)
        elif cls == "notifications":
            cases += notification_cases(key, world)
        elif cls == "saved-views":
            cases += saved_view_cases(key, world)
        elif cls == "device-api":
            # A browser session authenticates nothing on the device API, staff's included.
            concrete = re.sub(r"<str:uuid>", mine.uuid, url)
            cases += [Case(concrete, v, -401) for v in VISITORS]
            cases += [Case(concrete, v, -401, method="post") for v in VISITORS]
        elif cls == "metrics":
            cases += [Case(url, v, 404) for v in VISITORS]  # FLEETSTATUS_METRICS_TOKEN is not set
        elif cls == "account-page":
            cases += [Case(url, v, 302, redirect_to="/login/") if v == "anon" else Case(url, v, 200) for v in VISITORS]
        elif cls == "account-post":
            concrete = re.sub(r"<int:\w+>", "1", url)
            cases += [Case(concrete, v, 302 if v == "anon" else 405) for v in VISITORS]
    return cases, unclassified


# --- Admin ---------------------------------------------------------------------------------------


def make_instance(model: type[models.Model], world) -> models.Model:
    """An object of any admin-registered model, for its change/delete/history pages."""
    known = {Device: world["mine"], get_user_model(): world["staff"]}
    if model in known:
        return known[model]
    if model._meta.label_lower == "fleets.organization":
        return world["mine"].organization
    if model._meta.label_lower == "fleets.fleet":
        return world["mine"].fleet
    if model._meta.app_label == "notifications":
        from django.utils import timezone

        from notifications.models import Channel, Delivery, Mute

        org = world["mine"].organization
        channel = Channel.objects.get_or_create(
            organization=org, name="admin-matrix", url="https://hooks.example.com/"
        )[0]
        if model is Mute:
            return Mute.objects.create(
                organization=org, device=world["mine"], starts_at=timezone.now(), until=timezone.now()
            )
        if model is Delivery:
            return Delivery.objects.create(channel=channel, event=Delivery.Event.TEST, created_at=timezone.now())
        return channel
    values = {}
    for f in model._meta.concrete_fields:
        if (
            f.primary_key
            or f.has_default()
            or f.null
            or getattr(f, "auto_now", False)
            or getattr(f, "auto_now_add", False)
        ):
            continue
        if isinstance(f, models.GenericIPAddressField):
            values[f.name] = "192.0.2.1"
        elif isinstance(f, models.CharField | models.TextField):
            values[f.name] = "x"
        elif isinstance(f, models.IntegerField):
            values[f.name] = 1
        elif isinstance(f, models.DateTimeField):
            from django.utils import timezone

            values[f.name] = timezone.now()
        elif isinstance(f, models.BooleanField):
            values[f.name] = False
        else:
            raise AssertionError(f"add a fixture object for {model._meta.label} (field {f.name}) to make_instance()")
    return model.objects.create(**values)


ADMIN_SUFFIX = re.compile(r"^(?P<app>\w+)/(?P<model>\w+)/(?P<rest>.*)$")


def admin_cases(world) -> tuple[list[Case], list[str]]:
    cases: list[Case] = []
    unclassified: list[str] = []
    staff_request = RequestFactory().get("/admin/")
    staff_request.user = world["staff"]
    by_path = {(m._meta.app_label, m._meta.model_name): (m, ma) for m, ma in admin.site._registry.items()}
    apps = sorted({m._meta.app_label for m in admin.site._registry})
    device_ct = ContentType.objects.get_for_model(Device).pk
    instances: dict[type[models.Model], models.Model] = {}

    def everyone(url: str, staff: int, staff_redirect: str = "", others_redirect: str = "/admin/login/") -> None:
        for v in VISITORS:
            if v == "staff":
                cases.append(Case(url, v, staff, redirect_to=staff_redirect))
            else:
                cases.append(Case(url, v, 302, redirect_to=others_redirect))

    for route, _key, _pattern in walk(get_resolver().url_patterns):
        if not route.startswith("admin/"):
            continue
        rest = route.removeprefix("admin/")
        fixed: dict[str, Callable[[], None]] = {
            "": lambda: everyone("/admin/", 200),
            "login/": lambda: cases.extend(Case("/admin/login/", v, 302 if v == "staff" else 200) for v in VISITORS),
            # POST only for staff; others are sent to the admin (and from there to its login).
            "logout/": lambda: everyone("/admin/logout/", 405, others_redirect="/admin/"),
            "password_change/": lambda: everyone("/admin/password_change/", 200),
            "password_change/done/": lambda: everyone("/admin/password_change/done/", 200),
            "autocomplete/": lambda: everyone("/admin/autocomplete/", 403),
            "jsi18n/": lambda: everyone("/admin/jsi18n/", 200),
            "r/<path:content_type_id>/<path:object_id>/": lambda: everyone(
                f"/admin/r/{device_ct}/{world['mine'].pk}/", -302404
            ),
            "(?P<url>.*)$": lambda: everyone("/admin/no-such-page/", 404),
        }
        if rest in fixed:
            fixed[rest]()
            continue
        if rest.startswith("^(?P<app_label>"):
            for app in apps:
                everyone(f"/admin/{app}/", 200)
            continue
        match = ADMIN_SUFFIX.match(rest)
        if not match or (match["app"], match["model"]) not in by_path:
            unclassified.append(route)
            continue
        model, model_admin = by_path[(match["app"], match["model"])]
        base = f"/admin/{match['app']}/{match['model']}/"
        tail = match["rest"]
        obj = None
        if "object_id" in tail or "<id>" in tail:
            obj = instances.get(model) or instances.setdefault(model, make_instance(model, world))
        if tail == "":
            everyone(base, 200 if model_admin.has_view_or_change_permission(staff_request) else 403)
        elif tail == "add/":
            everyone(base + "add/", 200 if model_admin.has_add_permission(staff_request) else 403)
        elif tail == "<path:object_id>/change/":
            everyone(
                f"{base}{obj.pk}/change/", 200 if model_admin.has_view_or_change_permission(staff_request, obj) else 403
            )
        elif tail == "<path:object_id>/history/":
            everyone(
                f"{base}{obj.pk}/history/",
                200 if model_admin.has_view_or_change_permission(staff_request, obj) else 403,
            )
        elif tail == "<path:object_id>/delete/":
            everyone(f"{base}{obj.pk}/delete/", 200 if model_admin.has_delete_permission(staff_request, obj) else 403)
        elif tail == "<path:object_id>/":
            everyone(f"{base}{obj.pk}/", 302, staff_redirect=f"{base}{obj.pk}/change/")
        elif tail == "<id>/password/":
            everyone(f"{base}{obj.pk}/password/", 200)
        else:
            unclassified.append(route)
    return cases, unclassified


def check(case: Case, client: Client) -> str | None:
    headers = {"HX-Request": "true"} if case.htmx else {}
    response = getattr(client, case.method)(case.url, headers=headers)
    where = f"{case.method.upper()} {case.url} as {case.visitor}{' (htmx)' if case.htmx else ''}"
    body = (
        b"".join(response.streaming_content).decode()
        if response.streaming
        else response.content.decode(errors="replace")
    )
    if case.expect == -401:
        # Device API: refused as unauthenticated (or the wrong method), always JSON.
        if response.status_code not in (401, 405) or not response["Content-Type"].startswith("application/json"):
            return f"{where}: expected a JSON 401/405, got {response.status_code}"
        return None
    if case.expect == -302404:
        return (
            None if response.status_code in (302, 404) else f"{where}: expected 302 or 404, got {response.status_code}"
        )
    if response.status_code != case.expect:
        return f"{where}: expected {case.expect}, got {response.status_code}"
    if case.redirect_to and not response["Location"].startswith(case.redirect_to):
        return f"{where}: redirected to {response['Location']}, expected {case.redirect_to}"
    if case.htmx and case.visitor == "anon" and case.expect == 403 and "HX-Redirect" not in response.headers:
        return f"{where}: a logged-out htmx poll must get an HX-Redirect header"
    if case.contains and case.contains not in body:
        return f"{where}: {case.contains!r} missing"
    if case.absent and case.absent in body:
        return f"{where}: shows another organization's {case.absent!r}"
    return None


def test_every_url_is_classified_and_isolates_tenants(world, settings):
    cases, unclassified = non_admin_cases(world)
    admin_list, admin_unclassified = admin_cases(world)
    assert not unclassified + admin_unclassified, (
        "URL patterns without an expectation in tests/reliability/test_tenant_matrix.py: "
        + ", ".join(unclassified + admin_unclassified)
    )
    failures = [f for case in cases + admin_list if (f := check(case, world["clients"][case.visitor]))]
    assert not failures, "\n".join(failures)
    patterns = len(walk(get_resolver().url_patterns))
    figures.add("tenant matrix", url_patterns=patterns, requests=len(cases) + len(admin_list))
    print(f"tenant matrix: {patterns} URL patterns, {len(cases) + len(admin_list)} requests checked")
