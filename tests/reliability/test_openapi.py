"""The OpenAPI document of the device API: served, loadable, and covering exactly the API's URLs."""

from __future__ import annotations

import json
import re

import pytest
import schemathesis
from django.urls import URLPattern, URLResolver, get_resolver, resolve

from devices.api.openapi import build_document

API_PREFIXES = ("device/", "services/")


def _routes(patterns, prefix: str = "") -> list[tuple[str, URLPattern]]:
    found = []
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            found += _routes(p.url_patterns, route)
        else:
            found.append((route, p))
    return found


@pytest.mark.django_db
def test_document_is_served_as_json(client):
    response = client.get("/device/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == json.loads(json.dumps(build_document()))


def test_schemathesis_loads_every_operation():
    schema = schemathesis.openapi.from_dict(build_document())
    labels = sorted(result.ok().label for result in schema.get_all_operations())
    assert labels == [
        "GET /device/v3/{uuid}/state",
        "PATCH /device/v3/state",
        "POST /device/register",
        "POST /services/vpn/client-connect",
        "POST /services/vpn/client-disconnect",
    ]


def test_every_api_url_is_documented_and_every_documented_path_exists():
    documented = build_document()["paths"]
    api_routes = [(route, p) for route, p in _routes(get_resolver().url_patterns) if route.startswith(API_PREFIXES)]
    undocumented = []
    for route, pattern in api_routes:
        if pattern.name == "device-openapi":
            continue
        as_template = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
        if as_template not in documented:
            undocumented.append(as_template)
    assert not undocumented, f"device API URLs missing from devices/openapi.py: {undocumented}"
    for path in documented:
        view = resolve(path.replace("{uuid}", "0" * 32))
        assert view.url_name and view.url_name.startswith("device-api"), f"{path} resolves to {view.url_name}"


def test_error_responses_are_json_objects_with_a_message():
    document = build_document()
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert operation["security"], f"{method} {path} has no security requirement"
            for code, response in operation["responses"].items():
                if code.startswith("4"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, f"{method} {path} {code}"
