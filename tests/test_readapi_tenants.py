"""Tenant isolation of the read API, generated from the URL configuration: every /api/v1/ route,
with its parameters filled from this organization's data and from another's, as a token of this
organization sees it. Another organization's device or fleet is a 404 and its data never appears;
a route this test does not know fails it, so a new endpoint cannot be forgotten."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from readapi.models import ApiToken
from tests.dashboard_helpers import device_in

pytestmark = pytest.mark.django_db

PREFIX = "api/v1/"


@pytest.fixture(autouse=True)
def _no_throttle(settings):
    settings.FLEETSTATUS_API_THROTTLE_REQUESTS = 0


def api_routes(patterns, prefix: str = "") -> list[str]:
    found = []
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            found += api_routes(p.url_patterns, route)
        elif isinstance(p, URLPattern) and route.startswith(PREFIX):
            found.append(route)
    return found


# Query strings that name another organization's fleet, per parameterless route that takes one.
FLEET_FILTERS = {"api/v1/devices": ["fleet={fleet}", "fleet={org}/{fleet}"]}
PUBLIC = {"api/v1/openapi.json"}
PARAMETERS = {"uuid"}


@pytest.fixture
def world(org, other_org, make_fleet, make_device, owner, other_user):
    mine = device_in(make_device, "online", name="alpha-northwind-device")
    their_fleet, _ = make_fleet(other_org, "robots")
    theirs = device_in(make_device, "offline", name="omega-contoso-device", fleet=their_fleet)
    return {
        "mine": mine,
        "theirs": theirs,
        "member": Client(headers={"Authorization": f"Bearer {ApiToken.issue(owner, 'm')[1]}"}),
        "other": Client(headers={"Authorization": f"Bearer {ApiToken.issue(other_user, 'o')[1]}"}),
    }


def fill(route: str, device) -> str:
    names = set(re.findall(r"<(?:\w+:)?(\w+)>", route))
    assert names <= PARAMETERS, f"add {names - PARAMETERS} to tests/test_readapi_tenants.py"
    return "/" + re.sub(r"<(?:\w+:)?uuid>", device.uuid, route)


def test_every_api_route_isolates_organizations(world):
    routes = api_routes(get_resolver().url_patterns)
    assert len(routes) >= 5
    checked = 0
    for route in routes:
        if route in PUBLIC:
            continue
        for viewer, own, foreign in (("member", "mine", "theirs"), ("other", "theirs", "mine")):
            client = world[viewer]
            own_device, foreign_device = world[own], world[foreign]
            has_parameters = "<" in route
            # Own data: 200 and never the other organization's names or UUIDs.
            response = client.get(fill(route, own_device))
            assert response.status_code == 200, (route, viewer, response.content[:200])
            body = response.content.decode()
            for secret in (
                foreign_device.uuid,
                foreign_device.name,
                foreign_device.fleet.slug,
                foreign_device.organization.slug,
            ):
                assert secret not in body, (route, viewer, secret)
            if has_parameters:
                # The other organization's ids: 404, as JSON, saying nothing about them.
                for uuid in (foreign_device.uuid, foreign_device.uuid.upper()):
                    response = client.get(fill(route, foreign_device).replace(foreign_device.uuid, uuid))
                    assert response.status_code == 404, (route, viewer)
                    assert (
                        json.loads(response.content)["error"] and foreign_device.name not in response.content.decode()
                    )
                checked += 1
            for template in FLEET_FILTERS.get(route, []):
                query = template.format(fleet=foreign_device.fleet.slug, org=foreign_device.organization.slug)
                response = client.get(f"/{route}?{query}")
                assert response.status_code == 404, (route, viewer, query)
                assert foreign_device.uuid not in response.content.decode()
                checked += 1
            # A search for the other organization's device finds nothing.
            if route == "api/v1/devices":
                found = json.loads(client.get(f"/{route}", {"q": foreign_device.name}).content)
                assert found["count"] == 0 and found["results"] == []
            checked += 1
    assert checked >= 12
