"""What a delivery says: the webhook's JSON body, and the summary text of chat and email messages."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse

from devices import status_names
from notifications.models import Delivery

# Devices listed by name in a chat or email message; the link shows them all.
SHOWN = 50


def webhook_payload(delivery: Delivery, now: datetime) -> dict[str, Any]:
    channel = delivery.channel
    base = {"event": delivery.event, "organization": channel.organization.slug}
    if delivery.event == Delivery.Event.CHANGES:
        return {
            **base,
            "channel": channel.name,
            "sent_at": now.isoformat(),
            "changes": delivery.payload.get("changes", []),
        }
    if delivery.event == Delivery.Event.TEST:
        return {**base, "channel": channel.name, "sent_at": now.isoformat(), "message": delivery.payload["message"]}
    p = delivery.payload
    return {**base, "fleet": p["fleet"], "not_online": p["not_online"], "active": p["active"], "at": p["at"]}


def devices_link(**params: str) -> str:
    query = urlencode({k: v for k, v in params.items() if v})
    return f"{settings.FLEETSTATUS_BASE_URL}{reverse('devices:list')}{'?' + query if query else ''}"


def summary(delivery: Delivery) -> tuple[str, str]:
    """(subject, body) of a chat or email message."""
    p = delivery.payload
    if delivery.event == Delivery.Event.TEST:
        return "fleetstatus test message", p["message"]
    if delivery.event in (Delivery.Event.DEGRADED, Delivery.Event.RECOVERED):
        word = "degraded" if delivery.event == Delivery.Event.DEGRADED else "recovered"
        subject = f"Fleet {p.get('fleet_name') or p['fleet']} {word}: {p['not_online']} of {p['active']} not online"
        return subject, f"{subject}\n{devices_link(fleet=p['fleet'])}"
    changes = p.get("changes", [])
    # The organization's own status names, as its pages show them.
    naming = delivery.channel.organization.status_names

    def name(slug: str) -> str:
        return status_names.label(slug, naming) if slug else slug

    fleets = sorted({c["fleet"] for c in changes})
    watched = set(delivery.channel.watched)
    entered = Counter(c["to"] for c in changes if c["to"] in watched)
    recovered = sum(1 for c in changes if c["to"] not in watched)
    parts = [f"{n} device{'s' if n != 1 else ''} went {name(s)}" for s, n in entered.most_common()]
    if recovered:
        parts.append(f"{recovered} recovered")
    where = f" in {fleets[0]}" if len(fleets) == 1 else f" in {len(fleets)} fleets"
    subject = f"{delivery.channel.organization.name}{where}: " + "; ".join(parts)
    status = next(iter(entered)) if len(entered) == 1 and not recovered else ""
    link = devices_link(fleet=fleets[0] if len(fleets) == 1 else "", status=status)
    lines = [{**c, "from_label": name(c["from"]), "to_label": name(c["to"])} for c in changes[:SHOWN]]
    context = {"subject": subject, "changes": lines, "link": link, "more": max(len(changes) - SHOWN, 0)}
    return subject, render_to_string("notifications/message.txt", context)
