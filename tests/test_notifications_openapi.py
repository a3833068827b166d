"""The webhook bodies the engine really sends match their schemas in the read API's OpenAPI document."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from devices import services
from fleets import counts
from notifications import engine, sending
from notifications.models import Channel
from readapi.openapi import build_document

pytestmark = pytest.mark.django_db

ONLINE = {"api_heartbeat_state": "online", "is_connected_to_vpn": True}
OFFLINE = {"api_heartbeat_state": "offline", "is_connected_to_vpn": False}


def problems(value: Any, schema: dict, path: str = "$") -> list[str]:
    """The subset of JSON Schema the document uses: type, enum, required, properties, items, bounds, formats."""
    found = []
    kind = schema.get("type")
    checks = {"object": dict, "array": list, "string": str, "integer": int}
    if kind in checks and not isinstance(value, checks[kind]):
        return [f"{path}: {type(value).__name__} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{path}: {value!r} not in {schema['enum']}")
    if schema.get("format") == "date-time":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            found.append(f"{path}: {value!r} is not a date-time")
    if kind == "integer" and value < schema.get("minimum", value):
        found.append(f"{path}: {value} below the minimum")
    if kind == "object":
        found += [f"{path}: missing {k}" for k in schema.get("required", []) if k not in value]
        found += [f"{path}: unexpected {k}" for k in value if k not in schema.get("properties", {})]
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                found += problems(value[k], sub, f"{path}.{k}")
    if kind == "array":
        if len(value) > schema.get("maxItems", len(value)):
            found.append(f"{path}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            found += problems(item, schema["items"], f"{path}[{i}]")
    return found


@pytest.fixture
def schemas() -> dict:
    return build_document()["components"]["schemas"]


def run(now) -> None:
    engine.dispatch(now)
    for pk in sending.due_ids(now):
        sending.deliver(pk, now)


def test_the_validator_catches_a_wrong_body(schemas):
    schema = schemas["WebhookFleetEvent"]
    assert problems({"event": "fleet.gone", "organization": "o", "fleet": "f", "active": -1, "at": "x"}, schema) == [
        "$: missing not_online",
        "$.event: 'fleet.gone' not in ['fleet.degraded', 'fleet.recovered']",
        "$.active: -1 below the minimum",
        "$.at: 'x' is not a date-time",
    ]


def test_sent_bodies_match_the_documented_schemas(org, make_device, receiver, settings, schemas):
    settings.FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE = True
    Channel.objects.create(organization=org, name="ops", url=receiver.url, hold_seconds=0, fleet_threshold=50)
    t0 = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    devices = [make_device(at=t0, name=f"kiosk-{i}", **ONLINE) for i in range(4)]
    counts.fold()
    run(t0 + timedelta(seconds=5))
    for d in devices[:3]:
        services.update_device(d, OFFLINE, reason="test", at=t0 + timedelta(seconds=10))
    counts.fold()
    run(t0 + timedelta(seconds=60))
    bodies = {b["event"]: b for b in (m.json() for m in receiver.delivered())}
    assert set(bodies) == {"devices.status_changed", "fleet.degraded"}
    assert problems(bodies["devices.status_changed"], schemas["WebhookDevicesStatusChanged"]) == []
    assert len(bodies["devices.status_changed"]["changes"]) == 3
    assert problems(bodies["fleet.degraded"], schemas["WebhookFleetEvent"]) == []
