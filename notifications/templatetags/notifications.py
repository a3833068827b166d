"""Notification context for pages owned by other apps: the Device Summary's per-change outcomes and
mute form, the Fleets page's fleet mutes. Each tag runs a fixed number of queries."""

from __future__ import annotations

from django import template
from django.db.models import Q
from django.utils import timezone

from devices.queries import owned_organizations, user_organizations
from notifications.forms import MuteForm
from notifications.models import Delivery, Mute, PendingChange, Result

register = template.Library()
LABELS = dict(Result.choices)


@register.inclusion_tag("notifications/device_card.html", takes_context=True)
def device_notifications(context, device, history) -> dict:
    transition_ids = [row.transition.pk for row in history or ()]
    changes = []
    if transition_ids:
        changes = list(
            PendingChange.objects.filter(transition_id__in=transition_ids, results__isnull=False).order_by("-at", "-id")
        )
    delivery_ids = {r[1] for c in changes for r in c.results.values() if r[1] is not None}
    deliveries = Delivery.objects.in_bulk(delivery_ids) if delivery_ids else {}
    rows = [
        {
            "change": change,
            "channel": name,
            "result": result,
            "label": LABELS.get(result, result),
            "delivery": deliveries.get(delivery_id),
        }
        for change in changes
        for result, delivery_id, name in sorted(change.results.values(), key=lambda r: r[2])
    ]
    now = timezone.now()
    mutes = list(Mute.objects.filter(Q(device=device) | Q(fleet_id=device.fleet_id), starts_at__lte=now, until__gt=now))
    request = context.get("request")
    can_mute = request is not None and any(o.pk == device.organization_id for o in owned_organizations(request))
    return {
        "device": device,
        "rows": rows,
        "mutes": mutes,
        "can_mute": can_mute,
        "mute_form": MuteForm(),
        "csrf_token": context.get("csrf_token"),
    }


@register.inclusion_tag("notifications/fleet_mutes.html", takes_context=True)
def fleet_mutes(context) -> dict:
    """Mute forms for the owned fleets this page of the Fleets page shows (at most a page of them,
    whatever the organization's size), and the current fleet mutes of every organization of the user
    (members see them too; only owners may end one)."""
    request = context.get("request")
    if request is None or not request.user.is_authenticated:
        return {"fleets": []}
    owned = [o.pk for o in owned_organizations(request)]
    fleets = [
        card["fleet"]
        for section in context.get("sections", ())
        if section["org"].pk in owned
        for card in section["fleets"]
    ]
    now = timezone.now()
    mutes = list(
        Mute.objects.filter(
            fleet__isnull=False,
            organization_id__in=[o.pk for o in user_organizations(request)],
            starts_at__lte=now,
            until__gt=now,
        )
        .select_related("fleet")
        .order_by("until")
    )
    for mute in mutes:
        mute.can_end = mute.organization_id in owned
    return {"fleets": fleets, "mutes": mutes, "mute_form": MuteForm(), "csrf_token": context.get("csrf_token")}
