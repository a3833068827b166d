"""Cloudlink tunnel events of the VPN server, for thousands of devices in one call."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from devices.models import Device
from devices.services.changes import Transition, transition_time
from devices.services.lifecycle import reconcile_frozen
from devices.services.sql import among, insert_transitions, tunnel_event
from devices.status import SIGNALS, annotate_signals, compute_status
from fleetstatus.metrics import count_transitions


@dataclass
class TunnelResult:
    """What set_tunnel did: devices it applied to, status transitions written, devices reactivated."""

    matched: int = 0
    transitions: int = 0
    reactivated: int = 0


def set_tunnel(uuids: Iterable[str], connected: bool, service_id: int, at: datetime | None = None) -> TunnelResult:
    """Cloudlink tunnel up or down for many devices at once (the VPN server's client events).

    Connect marks the tunnel up, remembers which VPN service holds it, stamps the event and
    last-seen times and reactivates inactive devices (any contact does; docs/design.md, Frozen and
    Inactive), then reconciles the allowance once per affected organization. Disconnect applies
    only where the same service still holds the device: after a device hops to another VPN
    instance, the old instance's late disconnect must not take the new tunnel down. Unknown UUIDs
    are ignored.

    A VPN server sends thousands of UUIDs in one call when it restarts, so the cost is a constant
    number of statements whatever the count, in one transaction: on PostgreSQL ONE statement that
    locks the rows in id order (the order every bulk change uses, so concurrent calls cannot
    deadlock), writes each row once and inserts the transitions (sql.tunnel_event), elsewhere the
    same in a few (_tunnel_event_in_python); then the allowance per organization.
    """
    at = at or timezone.now()
    wanted = sorted(set(uuids))
    result = TunnelResult()
    if not wanted:
        return result
    changes: dict[str, Any] = {
        "is_connected_to_vpn": connected,
        "vpn_service_id": service_id if connected else None,
        "last_vpn_event": at,
        "last_connectivity_event": at,
    }
    if connected:
        # A disconnect is the VPN server noticing the device is gone, not contact from it.
        changes["last_seen_at"] = at
        reason = f"cloudlink tunnel connected (VPN service {service_id})"
    else:
        reason = f"cloudlink tunnel disconnected (VPN service {service_id})"
    reactivated_orgs: set[int] = set()
    with transaction.atomic():
        groups = tunnel_event(wanted, connected, service_id, at, reason)
        if groups is None:
            groups = _tunnel_event_in_python(wanted, connected, service_id, changes, at, reason)
        entered: list[str] = []
        for org_id, was_active, status, changed, count in groups:
            result.matched += count
            if changed:
                result.transitions += count
                entered += [status] * count
            if connected and not was_active:
                reactivated_orgs.add(org_id)
                result.reactivated += count
        count_transitions(entered)
        for org_id in sorted(reactivated_orgs):
            result.transitions += reconcile_frozen(org_id, reason=f"{reason}: reactivated", at=at)
    return result


def _tunnel_event_in_python(
    wanted: list[str], connected: bool, service_id: int, changes: dict[str, Any], at: datetime, reason: str
) -> list[tuple[int, bool, str, bool, int]]:
    """sql.tunnel_event where the database cannot do it in one statement (SQLite), with the same result.

    One SELECT that locks the rows in id order and reads plain values rather than models, one
    UPDATE per resulting (status, reactivated, stamp) group, one INSERT of all transitions.
    """
    # PostgreSQL re-checks this condition on a row that another transaction changed while we
    # waited for its lock, so a connect through another service that lands first is respected.
    held = {} if connected else {"vpn_service_id": service_id}
    groups: dict[tuple[bool, str, datetime | None], list[int]] = defaultdict(list)
    transitions: list[Transition] = []
    outcome: Counter[tuple[int, bool, str, bool]] = Counter()
    rows = (
        annotate_signals(Device.objects.filter(uuid__in=among(wanted), **held))
        .select_for_update(of=("self",))
        .order_by("pk")
        .values("pk", "overall_status", "status_changed_at", "organization_id", *SIGNALS)
    )
    for row in rows:
        reactivating = connected and not row["is_active"]
        signals = {**row, **changes, "is_active": True} if reactivating else {**row, **changes}
        new_status = compute_status(signals).value
        if new_status != row["overall_status"]:
            stamp = transition_time(at, row["status_changed_at"])
            transitions.append(Transition(row["pk"], row["overall_status"], new_status, stamp))
            groups[(reactivating, new_status, stamp)].append(row["pk"])
        else:
            groups[(reactivating, "", None)].append(row["pk"])
        outcome[(row["organization_id"], row["is_active"], new_status, new_status != row["overall_status"])] += 1
    for (reactivating, new_status, stamp), pks in groups.items():
        fields = dict(changes)
        if reactivating:
            fields.update(is_active=True, activated_at=at)
        if new_status:
            fields.update(overall_status=new_status, status_changed_at=stamp)
        Device.objects.filter(pk__in=among(pks)).update(**fields)
    insert_transitions(transitions, reason[:200])
    return [(*key, count) for key, count in outcome.items()]
