"""Inspect or prepare a running stack's database from outside its processes.

    python -m tests.reliability.probe <command> '<json arguments>'

Runs with the stack's own environment (DATABASE_URL of the throwaway cluster) and prints one JSON
line. Fault and soak tests use it to set up fixtures and to check invariants with the app's own
code (devices.status.with_computed_status), without sharing a Django configuration with pytest.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

MAX_REPORTED = 20


def setup(
    org: str = "faults",
    fleet: str = "fleet",
    poll_interval: int | None = 2,
    tier: str = "paid",
    service_key: bool = True,
) -> dict:
    from devices import services as _  # noqa: F401  (app registry ready)
    from fleets.keys import generate_key, hash_key
    from fleets.models import Fleet, Organization, ServiceKey

    organization, _created = Organization.objects.get_or_create(slug=org, defaults={"name": org, "tier": tier})
    f = Fleet(
        organization=organization,
        slug=fleet,
        name=fleet,
        device_type="raspberrypi4-64",
        fleet_type="free",
        poll_interval=poll_interval,
    )
    provisioning_key = f.issue_provisioning_key()
    f.save()
    answer: dict[str, Any] = {"provisioning_key": provisioning_key, "fleet": f"{org}/{fleet}", "fleet_id": f.pk}
    if service_key:
        key = generate_key()
        ServiceKey.objects.create(name=f"{org}-tunnel", key_hash=hash_key(key))
        answer["service_key"] = key
    return answer


def create_devices(fleet_id: int, count: int, prefix: str = "") -> list[dict]:
    from devices import services
    from fleets.models import Fleet

    fleet = Fleet.objects.get(pk=fleet_id)
    out = []
    for i in range(count):
        uuid = (prefix + f"{i:08x}" + os.urandom(16).hex())[:32]
        device, key = services.create_device(fleet, uuid, reason="fault test setup")
        out.append({"uuid": device.uuid, "api_key": key})
    return out


def heartbeat(uuids: list[str]) -> int:
    """A counted fetch for each device, through the same entry point the device API uses."""
    from devices.live.heartbeats import record_fetch
    from devices.models import Device

    count = 0
    for device in Device.objects.filter(uuid__in=uuids).select_related("fleet"):
        record_fetch(device)
        count += 1
    return count


def devices(uuids: list[str] | None = None) -> list[dict]:
    from devices.models import Device

    qs = Device.objects.order_by("pk")
    if uuids:
        qs = qs.filter(uuid__in=uuids)
    fields = [
        "uuid",
        "overall_status",
        "api_heartbeat_state",
        "is_connected_to_vpn",
        "last_api_heartbeat_at",
        "heartbeat_deadline",
        "status_changed_at",
        "last_seen_at",
        "is_active",
    ]
    return [
        {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()} for row in qs.values(*fields)
    ]


def transitions(uuids: list[str] | None = None) -> dict[str, list[dict]]:
    from devices.models import StatusTransition

    qs = StatusTransition.objects.order_by("device_id", "id")
    if uuids:
        qs = qs.filter(device__uuid__in=uuids)
    out: dict[str, list[dict]] = {}
    for uuid, frm, to, at, reason in qs.values_list(
        "device__uuid", "from_status", "to_status", "at", "reason"
    ).iterator(chunk_size=5000):
        out.setdefault(uuid, []).append({"from": frm, "to": to, "at": at.isoformat(), "reason": reason})
    return out


def check() -> dict:
    """The soak invariants: stored status == recomputed status; unbroken, time-ordered transition chains."""
    from django.db.models import F

    from devices.models import Device, StatusTransition
    from devices.status import with_computed_status

    total = Device.objects.count()
    mismatched = list(
        with_computed_status(Device.objects.order_by())
        .exclude(overall_status=F("computed_status"))
        .values_list("uuid", "overall_status", "computed_status")[:MAX_REPORTED]
    )
    mismatch_count = (
        with_computed_status(Device.objects.order_by()).exclude(overall_status=F("computed_status")).count()
    )
    stored = dict(Device.objects.values_list("pk", "overall_status"))
    uuid_of = dict(Device.objects.values_list("pk", "uuid"))
    broken: list[str] = []
    broken_count = 0
    checked = 0
    prev: dict[int, tuple[str, Any, str]] = {}
    rows = StatusTransition.objects.order_by("device_id", "id").values_list(
        "device_id", "id", "from_status", "to_status", "at", "reason"
    )
    for device_id, tid, frm, to, at, reason in rows.iterator(chunk_size=10000):
        checked += 1
        last = prev.get(device_id)
        problem = ""
        if last is None and frm != "":
            problem = f"first transition #{tid} starts from {frm!r}, not from nothing"
        elif last is not None and frm != last[0]:
            problem = f"transition #{tid} from {frm!r} but the previous one went to {last[0]!r}"
        elif last is not None and at < last[1]:
            problem = (
                f"transition #{tid} {frm}->{to} ({reason}) at {at.isoformat()} is earlier than the previous one "
                f"->{last[0]} ({last[2]}) at {last[1].isoformat()}"
            )
        if problem:
            broken_count += 1
            if len(broken) < MAX_REPORTED:
                broken.append(f"{uuid_of.get(device_id)}: {problem}")
        prev[device_id] = (to, at, reason)
    for device_id, status in stored.items():
        last = prev.get(device_id)
        if last is None or last[0] != status:
            broken_count += 1
            if len(broken) < MAX_REPORTED:
                broken.append(
                    f"{uuid_of[device_id]}: stored {status!r} but last transition went to {last[0] if last else None!r}"
                )
    by_status: dict[str, int] = {}
    for status in stored.values():
        by_status[status] = by_status.get(status, 0) + 1
    return {
        "devices": total,
        "transitions": checked,
        "status_mismatches": mismatch_count,
        "mismatch_examples": [list(m) for m in mismatched],
        "broken_chains": broken_count,
        "broken_examples": broken,
        "by_status": by_status,
    }


def db_settings() -> dict:
    from django.conf import settings

    db = settings.DATABASES["default"]
    return {
        "CONN_MAX_AGE": db.get("CONN_MAX_AGE"),
        "CONN_HEALTH_CHECKS": db.get("CONN_HEALTH_CHECKS"),
        "ENGINE": db["ENGINE"],
    }


def taskruns() -> list[dict]:
    from devices.models import TaskRun

    return [
        {"name": t.name, "last_success_at": t.last_success_at.isoformat(), "details": t.details}
        for t in TaskRun.objects.all()
    ]


COMMANDS = {
    "db_settings": db_settings,
    "setup": setup,
    "create_devices": create_devices,
    "heartbeat": heartbeat,
    "devices": devices,
    "transitions": transitions,
    "check": check,
    "taskruns": taskruns,
}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetstatus.settings")
    import django

    django.setup()
    command = sys.argv[1]
    kwargs = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    print(json.dumps(COMMANDS[command](**kwargs)))


if __name__ == "__main__":
    main()
