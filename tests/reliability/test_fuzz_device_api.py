"""Fuzz the device API from its own OpenAPI document (schemathesis 4 strategies driven by hypothesis).

Each operation gets schema-conforming (positive) and schema-violating (negative) requests, sent
in-process through Django's test client on the test database. Auth and target UUIDs are swapped in
part of the time so the fuzzer reaches the handlers: the right key for a real fixture device,
another device's key, a key of the wrong kind, garbage, none. Every response must be:

- never a 5xx (the test client re-raises a view's exception, so a crash fails the example);
- every error a 4xx with a JSON body `{"error": "..."}`;
- no row changed by a rejected request (digest of the tables before/after);
- no success without the right key for the right device.

FLEETSTATUS_FUZZ_SCALE multiplies the number of examples (e.g. 5 for a longer local run).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from django.db import connection
from django.test import Client
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NotSet

from devices import services
from devices.api.openapi import build_document
from devices.models import Device, StatusTransition
from fleets.keys import generate_key, hash_key
from fleets.models import Fleet, Organization, ServiceKey
from tests.reliability import figures

pytestmark = pytest.mark.django_db

SCALE = float(os.environ.get("FLEETSTATUS_FUZZ_SCALE", "1"))
# Examples per operation and (positive, negative) generation mode. With the hostile-request test
# that is over 2,000 requests; cheap operations get more, the deeply nested state report fewer.
EXAMPLES = {
    "GET /device/v3/{uuid}/state": (300, 300),
    "POST /device/register": (150, 150),
    "PATCH /device/v3/state": (150, 150),
    "POST /services/vpn/client-connect": (100, 100),
    "POST /services/vpn/client-disconnect": (100, 100),
}
HOSTILE_EXAMPLES = 450

HYPOTHESIS = dict(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)

# The key each operation needs; anything else must be refused.
RIGHT_KEY = {
    "POST /device/register": "provisioning",
    "GET /device/v3/{uuid}/state": "own_device",
    "PATCH /device/v3/state": "own_device",
    "POST /services/vpn/client-connect": "service",
    "POST /services/vpn/client-disconnect": "service",
}
# Weighted: the right key half the time so the handlers are reached, every wrong kind otherwise.
AUTH_CHOICES = ["right"] * 6 + [
    "generated",
    "none",
    "peer_device",
    "foreign_device",
    "provisioning",
    "foreign_provisioning",
    "service",
    "own_device",
    "garbage",
    "basic",
    "empty_bearer",
]
TARGET_CHOICES = ["own"] * 5 + ["generated", "peer", "foreign", "fresh", "own_and_peer"]


@dataclass
class World:
    me: Device
    peer: Device  # another device in the same fleet
    foreign: Device  # a device of another organization
    keys: dict[str, str]
    fleets: dict[str, Fleet]  # provisioning key name -> the fleet it registers into


@pytest.fixture
def world(db) -> World:
    org = Organization.objects.create(slug="fuzz", name="Fuzz", tier="paid")
    other = Organization.objects.create(slug="elsewhere", name="Elsewhere", tier="paid")
    fleet = Fleet(organization=org, slug="f", name="F", device_type="raspberrypi4-64")
    provisioning = fleet.issue_provisioning_key()
    fleet.save()
    other_fleet = Fleet(organization=other, slug="g", name="G")
    foreign_provisioning = other_fleet.issue_provisioning_key()
    other_fleet.save()
    me, me_key = services.create_device(fleet, secrets.token_hex(16))
    peer, peer_key = services.create_device(fleet, secrets.token_hex(16))
    foreign, foreign_key = services.create_device(other_fleet, secrets.token_hex(31))
    service = generate_key()
    ServiceKey.objects.create(name="tunnel", key_hash=hash_key(service))
    keys = {
        "own_device": me_key,
        "peer_device": peer_key,
        "foreign_device": foreign_key,
        "provisioning": provisioning,
        "foreign_provisioning": foreign_provisioning,
        "service": service,
    }
    return World(
        me=me,
        peer=peer,
        foreign=foreign,
        keys=keys,
        fleets={"provisioning": fleet, "foreign_provisioning": other_fleet},
    )


def table_digest() -> str:
    """One cheap fingerprint of every row a device API request could touch."""
    tables = [Device, StatusTransition, Fleet, ServiceKey]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            parts = []
            for model in tables:
                table = model._meta.db_table
                cursor.execute(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM {table} t")
                parts.append(cursor.fetchone()[0])
        return ",".join(parts)
    digest = hashlib.sha256()
    for model in tables:
        for row in model.objects.order_by("pk").values_list():
            digest.update(repr(row).encode())
    return digest.hexdigest()


def auth_header(choice: str, operation: str, world: World, garbage: str) -> str | None | NotSet:
    """The Authorization header to send; NotSet keeps what schemathesis generated."""
    if choice == "generated":
        return NotSet()
    if choice == "none":
        return None
    if choice == "garbage":
        return f"Bearer {garbage}"
    if choice == "basic":
        return "Basic " + garbage
    if choice == "empty_bearer":
        return "Bearer "
    key = world.keys[RIGHT_KEY[operation] if choice == "right" else choice]
    return f"Bearer {key}"


def retarget(case: schemathesis.Case, operation: str, target: str, world: World) -> None:
    """Point the request at a real device part of the time (the generated UUIDs never exist)."""
    uuid = {
        "own": world.me.uuid,
        "peer": world.peer.uuid,
        "foreign": world.foreign.uuid,
        "fresh": secrets.token_hex(16),
        "own_and_peer": world.me.uuid,
    }.get(target)
    if operation == "POST /device/register" and target == "own":
        uuid = secrets.token_hex(16)  # a new device registering itself; the others are taken (409)
    if uuid is None:
        return
    body = case.body
    if operation == "GET /device/v3/{uuid}/state":
        case.path_parameters["uuid"] = uuid
    elif operation == "POST /device/register" and isinstance(body, dict):
        body["uuid"] = uuid
    elif operation == "PATCH /device/v3/state" and isinstance(body, dict) and body:
        reports = list(body.values())
        case.body = {uuid: reports[0]}
        if target == "own_and_peer":
            case.body[world.peer.uuid] = reports[-1]
    elif operation.startswith("POST /services/vpn") and isinstance(body, dict):
        body["uuids"] = [uuid, world.peer.uuid] if target == "own_and_peer" else [uuid]


KEY_DEVICE = {"own_device": "own", "peer_device": "peer", "foreign_device": "foreign"}
PROVISIONING_KEYS = ("provisioning", "foreign_provisioning")


def authorized(operation: str, auth: str, target: str) -> bool:
    """Whether the request carries the right key for what it targets (it may still be invalid)."""
    key = RIGHT_KEY[operation] if auth == "right" else auth
    if operation == "POST /device/register":
        return key in PROVISIONING_KEYS  # each fleet's key registers into that fleet (checked in the test)
    if operation.startswith("POST /services/vpn"):
        return key == "service"
    if operation == "GET /device/v3/{uuid}/state":
        return KEY_DEVICE.get(key) == ("own" if target == "own_and_peer" else target)
    return target != "own_and_peer" and KEY_DEVICE.get(key) == target


def send(client: Client, case: schemathesis.Case, authorization: str | None | NotSet):
    # schemathesis serializes the body (a dict as JSON; negative mode also makes raw bytes).
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    headers = {k: v for k, v in kwargs["headers"].items() if k.lower() not in ("content-type", "content-length")}
    content_type = kwargs["headers"].get("Content-Type") or "application/json"
    if not isinstance(authorization, NotSet):
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        if authorization is not None:
            headers["Authorization"] = authorization
    if "json" in kwargs:
        data: bytes | str = json.dumps(kwargs["json"])
    else:
        data = kwargs.get("data") or b""
    return client.generic(
        case.method,
        case.formatted_path,
        data=data,
        content_type=content_type,
        headers=headers,
        query_params=kwargs.get("params") or None,
    )


def assert_json_error(response, context: str) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, f"{context}: status {response.status_code}: {response.content[:300]!r}"
    assert response["Content-Type"].startswith("application/json"), (
        f"{context}: error is not JSON: {response['Content-Type']} {response.content[:300]!r}"
    )
    body = json.loads(response.content)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (
        f"{context}: no error message: {body!r}"
    )
    return body


def generation_document() -> dict[str, Any]:
    """The served document, with open-ended parts bounded so generation stays fast.

    `additionalProperties: true` (agents' unknown keys, accepted and ignored) would make hypothesis
    build arbitrary nested JSON for every example, ten times slower; here unknown keys get short
    string values (the hostile-request test below sends arbitrary nested JSON instead), and maps
    keyed by app/release/service names hold at most three entries. Every documented constraint
    stays as it is, so positive and negative examples mean the same as for the served document.
    """

    def bound(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("additionalProperties") is True:
                node["additionalProperties"] = {"type": "string", "maxLength": 12}
            elif isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
                node["maxProperties"] = 3
            for value in node.values():
                bound(value)
        elif isinstance(node, list):
            for value in node:
                bound(value)
        return node

    return bound(copy.deepcopy(build_document()))


SCHEMA = schemathesis.openapi.from_dict(generation_document())
OPERATIONS = sorted(RIGHT_KEY)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_fuzz_device_api(world: World, operation: str, mode: GenerationMode) -> None:
    client = Client()
    api_operation = SCHEMA[operation.split(" ", 1)[1]][operation.split(" ", 1)[0]]
    outcomes: Counter = Counter()
    state = {"digest": table_digest()}

    @settings(max_examples=int(EXAMPLES[operation][mode == GenerationMode.NEGATIVE] * SCALE), **HYPOTHESIS)
    @given(
        case=api_operation.as_strategy(generation_mode=mode),
        auth=st.sampled_from(AUTH_CHOICES),
        target=st.sampled_from(TARGET_CHOICES),
        garbage=st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=600),
    )
    def run(case: schemathesis.Case, auth: str, target: str, garbage: str) -> None:
        retarget(case, operation, target, world)
        response = send(client, case, auth_header(auth, operation, world, garbage))
        outcomes[response.status_code] += 1
        context = f"{operation} [{mode}] auth={auth} target={target} body={str(case.body)[:300]}"
        # Updated before asserting: a failing example must not leave a stale baseline for the next.
        after, before = table_digest(), state["digest"]
        state["digest"] = after
        fresh = operation != "POST /device/register" or target in ("own", "fresh")  # generated UUIDs repeat: 409
        if mode == GenerationMode.POSITIVE and authorized(operation, auth, target) and fresh:
            # The document must describe the API exactly: what it calls valid is accepted.
            assert response.status_code in (200, 201), (
                f"{context}: a valid request got {response.status_code}: {response.content[:300]!r}"
            )
        if response.status_code >= 400:
            assert_json_error(response, context)
            assert after == before, f"{context}: rejected with {response.status_code} but rows changed"
            return
        assert authorized(operation, auth, target), f"{context}: {response.status_code} without the right key"
        assert response.status_code in (200, 201, 304), f"{context}: unexpected {response.status_code}"
        if response.status_code != 304:
            assert isinstance(json.loads(response.content), dict)
        if response.status_code == 201:
            key = RIGHT_KEY[operation] if auth == "right" else auth
            created = Device.objects.select_related("fleet").get(uuid=json.loads(response.content)["uuid"])
            assert created.fleet == world.fleets[key], (
                f"{context}: registered into {created.fleet}, not the key's fleet"
            )

    run()
    total = sum(outcomes.values())
    figures.add("device API fuzz", requests=total, **{f"status_{code}": n for code, n in sorted(outcomes.items())})
    print(f"{operation} [{mode}]: {total} requests, outcomes {dict(sorted(outcomes.items()))}")
    if mode == GenerationMode.POSITIVE:
        # The right key on the right device must have got through at least once, or the fuzzer
        # only ever exercised the auth check.
        assert any(200 <= code < 300 for code in outcomes), f"no request reached the handler: {dict(outcomes)}"


# --- Hostile requests the schema cannot describe ------------------------------------------------

API_PATHS = ["/device/register", "/device/v3/state", "/services/vpn/client-connect", "/services/vpn/client-disconnect"]
POST_PATHS = ["/device/register", "/services/vpn/client-connect", "/services/vpn/client-disconnect"]

path_segment = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="0123456789abcdefABCDEF/%.-_", max_size=70),
    st.sampled_from(["..", "%2F", "a%2Fb", "%00", "%ff", "\u202e", " ", "0" * 10_000, "f" * 62 + "0", "F" * 32]),
)
raw_body = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"",
            b"{",
            b"null",
            b"[]",
            b'"text"',
            b"NaN",
            b'{"uuid": NaN}',
            b'{"uuid": 1e999}',
            b"\xff\xfe{}",
            b'{"serviceId": 1' + b"0" * 5000 + b', "uuids": []}',
            b"[" * 100_000 + b"]" * 100_000,
            b'{"uuids": ["' + b"a" * 32 + b'"], "serviceId": -1}',
            b'{"uuids": "' + b"a" * 32 + b'", "serviceId": 1}',
            b'{"uuid": "' + b"x" * 1_000_000 + b'"}',
            b" " * 3_000_000,
        ]
    ),
    st.dictionaries(
        st.text(max_size=70),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=300),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
            ),
            max_leaves=20,
        ),
        max_size=5,
    ).map(lambda d: json.dumps(d).encode()),
)
hostile_auth = st.one_of(
    st.none(),
    st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=100),
    st.sampled_from(
        ["Bearer", "Bearer ", "bearer x", "Bearer " + "A" * 20_000, "Bearer \u00e9\u00e9", "Token abc", "Bearer a b"]
    ),
)


def _hostile_request(world: World, kind: str, choice: Any, auth: str | None, key_name: str | None):
    headers = {}
    if key_name:
        headers["Authorization"] = f"Bearer {world.keys[key_name]}"
    elif auth is not None:
        headers["Authorization"] = auth
    client = Client()
    if kind == "path":
        return client.get(f"/device/v3/{choice}/state", headers=headers)
    if kind == "method":
        path, method = choice
        return client.generic(method, path, data=b"{}", content_type="application/json", headers=headers)
    path, body, content_type = choice
    method = "PATCH" if path == "/device/v3/state" else "POST"
    return client.generic(method, path, data=body, content_type=content_type, headers=headers)


hostile_request = st.one_of(
    st.tuples(st.just("path"), path_segment),
    st.tuples(
        st.just("method"),
        st.tuples(
            st.sampled_from([*API_PATHS, "/device/v3/" + "a" * 32 + "/state"]),
            st.sampled_from(["PUT", "DELETE", "POST", "PATCH", "OPTIONS", "TRACE", "GET"]),
        ),
    ),
    st.tuples(
        st.just("body"),
        st.tuples(
            st.sampled_from(API_PATHS),
            raw_body,
            st.sampled_from(
                [
                    "application/json",
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                ]
            ),
        ),
    ),
)


def test_hostile_requests_get_json_4xx_and_change_nothing(world: World) -> None:
    outcomes: Counter = Counter()
    state = {"digest": table_digest()}

    @settings(max_examples=int(HOSTILE_EXAMPLES * SCALE), **HYPOTHESIS)
    @given(
        request=hostile_request,
        auth=hostile_auth,
        key_name=st.sampled_from([None, None, "own_device", "service", "provisioning", "peer_device"]),
    )
    def run(request: tuple[str, Any], auth: str | None, key_name: str | None) -> None:
        kind, choice = request
        response = _hostile_request(world, kind, choice, auth, key_name)
        outcomes[response.status_code] += 1
        after, before = table_digest(), state["digest"]
        state["digest"] = after
        context = f"{kind} {str(choice)[:200]} auth={str(auth)[:40]} key={key_name}"
        if response.status_code >= 400:
            assert_json_error(response, context)
            assert after == before, f"{context}: rejected with {response.status_code} but rows changed"
        else:
            # Only a well-formed request with the right key may succeed: a GET of the own state by
            # path, or a JSON body that happens to be valid with the right key.
            assert key_name is not None, f"{context}: {response.status_code} without a key"

    run()
    total = sum(outcomes.values())
    figures.add("device API fuzz", requests=total, **{f"status_{code}": n for code, n in sorted(outcomes.items())})
    print(f"hostile: {total} requests, outcomes {dict(sorted(outcomes.items()))}")
