"""Notification context for pages owned by other apps: the Device Summary's per-change outcomes and
mute form, the Fleets page's fleet mutes. Each tag runs a fixed number of queries."""

from __future__ import annotations

from django import template
from django.db.models import Q
from django.utils import timezone

from fleets.models import Fleet, Membership
from notifications.forms import MuteForm
from notifications.models import Mute, Outcome

register = template.Library()


def _is_owner(user, organization_id: int) -> bool:
    return Membership.objects.filter(user=user, organization_id=organization_id, role=Membership.Role.OWNER).exists()


@register.inclusion_tag("notifications/device_card.html", takes_context=True)
def device_notifications(context, device, history) -> dict:
    transition_ids = [row.transition.pk for row in history or ()]
    rows = (
        list(
            Outcome.objects.filter(change__transition_id__in=transition_ids)
            .select_related("change", "channel", "delivery")
            .order_by("-change__at", "-change__id", "channel__name")
        )
        if transition_ids
        else []
    )
    now = timezone.now()
    mutes = list(Mute.objects.filter(Q(device=device) | Q(fleet_id=device.fleet_id), starts_at__lte=now, until__gt=now))
    request = context.get("request")
    can_mute = request is not None and _is_owner(request.user, device.organization_id)
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
    request = context.get("request")
    if request is None or not request.user.is_authenticated:
        return {"fleets": []}
    owned = Membership.objects.filter(user=request.user, role=Membership.Role.OWNER).values("organization_id")
    fleets = list(Fleet.objects.filter(organization_id__in=owned).order_by("name", "pk").only("pk", "name"))
    now = timezone.now()
    mutes = list(
        Mute.objects.filter(fleet__isnull=False, organization_id__in=owned, starts_at__lte=now, until__gt=now)
        .select_related("fleet")
        .order_by("until")
    )
    return {"fleets": fleets, "mutes": mutes, "mute_form": MuteForm(), "csrf_token": context.get("csrf_token")}
