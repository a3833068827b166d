"""Fuzz the read API from its own OpenAPI document (/api/v1/openapi.json) with schemathesis.

Positive and negative examples for every operation, sent in-process through Django's test client,
with a token of this organization most of the time and otherwise another organization's, a revoked
one, garbage or none; path UUIDs point at a real device of either organization part of the time.
Every response must be a 2xx (only with a valid token) or a JSON 4xx {"error": ...}; never a 5xx (the
test client re-raises a view's exception). A valid request with a valid token is a 200, or a 404
for what the token cannot see, or a 400 for a generated cursor (no generated string is a cursor
this API signed).
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import schemathesis
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from readapi.models import ApiToken
from readapi.openapi import build_document
from tests.dashboard_helpers import device_in

pytestmark = pytest.mark.django_db

SCALE = float(os.environ.get("FLEETSTATUS_FUZZ_SCALE", "1"))
EXAMPLES = 160  # per operation and mode: 4 x 2 x 160 = 1,280 requests
HYPOTHESIS = dict(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SCHEMA = schemathesis.openapi.from_dict(build_document())
OPERATIONS = [
    "GET /api/v1/devices",
    "GET /api/v1/devices/{uuid}",
    "GET /api/v1/devices/{uuid}/history",
    "GET /api/v1/fleets",
]
AUTH = ["own"] * 6 + ["other", "revoked", "garbage", "none", "basic"]
TARGET = ["own"] * 3 + ["foreign", "generated"]
TOP_LEVEL = {
    "GET /api/v1/devices": {"count", "counts", "results", "next"},
    "GET /api/v1/devices/{uuid}": {"uuid", "status", "why"},
    "GET /api/v1/devices/{uuid}/history": {"uuid", "results", "next"},
    "GET /api/v1/fleets": {"organizations", "fleets"},
}


@pytest.fixture(autouse=True)
def _no_throttle(settings):
    settings.FLEETSTATUS_API_THROTTLE_REQUESTS = 0


@pytest.fixture
def world(org, other_org, owner, other_user, make_device, make_fleet):
    mine = device_in(make_device, "online", name="mine")
    device_in(make_device, "offline", name="kiosk-2")
    theirs = device_in(make_device, "online", name="theirs", fleet=make_fleet(other_org, "robots")[0])
    revoked, revoked_plain = ApiToken.issue(owner, "revoked")
    revoked.revoke(timezone.now())
    return {
        "devices": {"own": mine, "foreign": theirs},
        "auth": {
            "own": f"Bearer {ApiToken.issue(owner, 'fuzz')[1]}",
            "other": f"Bearer {ApiToken.issue(other_user, 'fuzz')[1]}",
            "revoked": f"Bearer {revoked_plain}",
            "garbage": "Bearer fsr_not-a-token",
            "basic": "Basic b2xpdmlhOng=",
            "none": None,
        },
    }


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_fuzz_read_api(world, operation: str, mode: GenerationMode) -> None:
    method, path = operation.split(" ", 1)
    api_operation = SCHEMA[path][method]
    outcomes: Counter = Counter()
    client = Client()

    @settings(max_examples=int(EXAMPLES * SCALE), **HYPOTHESIS)
    @given(
        case=api_operation.as_strategy(generation_mode=mode), auth=st.sampled_from(AUTH), target=st.sampled_from(TARGET)
    )
    def run(case: schemathesis.Case, auth: str, target: str) -> None:
        if "uuid" in (case.path_parameters or {}) and target != "generated":
            case.path_parameters["uuid"] = world["devices"][target].uuid
        header = world["auth"][auth]
        response = client.get(
            case.formatted_path, case.query or {}, headers={"Authorization": header} if header else {}
        )
        outcomes[response.status_code] += 1
        context = f"{operation} [{mode}] auth={auth} target={target} query={case.query} path={case.path_parameters}"
        assert response.status_code < 500, context
        assert response["Content-Type"] == "application/json", context
        body = json.loads(response.content)
        if response.status_code >= 400:
            assert isinstance(body.get("error"), str) and body["error"], context
            if auth in ("own", "other"):
                assert response.status_code != 401, context
            return
        assert auth in ("own", "other"), f"{context}: {response.status_code} without a valid token"
        assert TOP_LEVEL[operation] <= set(body), context
        if "uuid" in (case.path_parameters or {}):
            assert target == ("own" if auth == "own" else "foreign"), f"{context}: another organization's device"

    run()
    total = sum(outcomes.values())
    print(f"{operation} [{mode}]: {total} requests, {dict(sorted(outcomes.items()))}")
    assert not any(code >= 500 for code in outcomes)
    if mode == GenerationMode.POSITIVE:
        assert outcomes[200] > 0, f"no valid request reached the handler: {dict(outcomes)}"
    else:
        assert any(400 <= code < 500 for code in outcomes)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_valid_requests_with_a_valid_token_are_answered(world, operation: str) -> None:
    """What the document calls valid, with this organization's token and its device: 200, except
    404 for a fleet that does not exist and 400 for a cursor the API never issued."""
    client = Client(headers={"Authorization": world["auth"]["own"]})
    method, path = operation.split(" ", 1)
    outcomes: Counter = Counter()

    @settings(max_examples=int(60 * SCALE), **HYPOTHESIS)
    @given(case=SCHEMA[path][method].as_strategy(generation_mode=GenerationMode.POSITIVE))
    def run(case: schemathesis.Case) -> None:
        if "uuid" in (case.path_parameters or {}):
            case.path_parameters["uuid"] = world["devices"]["own"].uuid
        query = case.query or {}
        response = client.get(case.formatted_path, query)
        outcomes[response.status_code] += 1
        allowed = {200}
        if query.get("cursor") is not None:
            allowed.add(400)
        if query.get("fleet") is not None:
            allowed.add(404)
        assert response.status_code in allowed, (operation, query, response.content[:300])

    run()
    assert outcomes[200] > 0, dict(outcomes)
