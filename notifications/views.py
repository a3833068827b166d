"""The Notifications page (organization owners): channels, add/edit, test message, delivery log;
and the mute/unmute forms the Device Summary and the Fleets page post to."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from devices.models import Device
from devices.queries import owned_organizations
from fleets.models import Fleet
from notifications import engine
from notifications.forms import ChannelForm, MuteForm
from notifications.models import Channel, Delivery, Mute

LOG_SIZE = 25


def _channel(request: HttpRequest, pk: int) -> Channel:
    return get_object_or_404(
        Channel.objects.select_related("organization"), pk=pk, organization__in=owned_organizations(request)
    )


@login_required
@require_http_methods(["GET", "HEAD"])
def channel_list(request: HttpRequest) -> HttpResponse:
    organizations = owned_organizations(request)
    if not organizations:
        return HttpResponseForbidden("Only organization owners manage notifications.")
    channels = list(
        Channel.objects.filter(organization__in=organizations)
        .select_related("organization")
        .prefetch_related("fleets")
        .order_by("organization__name", "name")
    )
    deliveries = list(
        Delivery.objects.filter(channel__organization__in=organizations)
        .exclude(state=Delivery.State.COLLECTING)
        .select_related("channel")
        .order_by("-created_at", "-id")[:LOG_SIZE]
    )
    mutes = list(
        Mute.objects.filter(organization__in=organizations, until__gt=timezone.now())
        .select_related("device", "fleet")
        .order_by("until")
    )
    context = {"organizations": organizations, "channels": channels, "deliveries": deliveries, "mutes": mutes}
    return render(request, "notifications/list.html", context)


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def channel_add(request: HttpRequest, org_slug: str) -> HttpResponse:
    organization = next((o for o in owned_organizations(request) if o.slug == org_slug), None)
    if organization is None:
        raise Http404("No such organization.")
    form = ChannelForm(request.POST or None, organization=organization)
    if request.method == "POST":
        if not form.is_valid():
            return render(request, "notifications/form.html", {"form": form, "organization": organization}, status=400)
        with transaction.atomic():
            channel = form.save()
        # The secret is shown this once, on this response; it is never shown again.
        return render(request, "notifications/created.html", {"channel": channel}, status=201)
    return render(request, "notifications/form.html", {"form": form, "organization": organization})


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def channel_edit(request: HttpRequest, pk: int) -> HttpResponse:
    channel = _channel(request, pk)
    form = ChannelForm(request.POST or None, instance=channel, organization=channel.organization)
    if request.method == "POST":
        if not form.is_valid():
            context = {"form": form, "organization": channel.organization, "channel": channel}
            return render(request, "notifications/form.html", context, status=400)
        form.save()
        return redirect("notifications:list")
    return render(
        request, "notifications/form.html", {"form": form, "organization": channel.organization, "channel": channel}
    )


@login_required
@require_POST
def channel_test(request: HttpRequest, pk: int) -> HttpResponse:
    from notifications.tasks import deliver

    channel = _channel(request, pk)
    delivery = engine.send_test(channel)
    transaction.on_commit(lambda: deliver.delay(delivery.pk))
    return redirect("notifications:list")


def _mute(request: HttpRequest, organization_id: int, **target: Device | Fleet) -> bool:
    """Record a mute of `target` (device= or fleet=) from the posted form; False on bad input."""
    form = MuteForm(request.POST)
    if not form.is_valid():
        return False
    now = timezone.now()
    Mute.objects.create(
        organization_id=organization_id,
        starts_at=now,
        until=now + timedelta(hours=form.cleaned_data["hours"]),
        reason=form.cleaned_data["reason"],
        **target,
    )
    return True


MUTE_REFUSED = "Mute for 1 to 720 hours."


@login_required
@require_POST
def mute_device(request: HttpRequest, uuid: str) -> HttpResponse:
    device = get_object_or_404(Device, uuid=uuid.lower(), organization__in=owned_organizations(request))
    if not _mute(request, device.organization_id, device=device):
        return HttpResponseBadRequest(MUTE_REFUSED)
    return redirect("devices:detail", uuid=device.uuid)


@login_required
@require_POST
def mute_fleet(request: HttpRequest, pk: int) -> HttpResponse:
    fleet = get_object_or_404(Fleet, pk=pk, organization__in=owned_organizations(request))
    if not _mute(request, fleet.organization_id, fleet=fleet):
        return HttpResponseBadRequest(MUTE_REFUSED)
    return redirect("fleets:list")


@login_required
@require_POST
def unmute(request: HttpRequest, pk: int) -> HttpResponse:
    mute = get_object_or_404(
        Mute.objects.select_related("device"), pk=pk, organization__in=owned_organizations(request)
    )
    # Ending it now keeps the record of the window that was muted.
    Mute.objects.filter(pk=mute.pk).update(until=min(mute.until, timezone.now()))
    if mute.device is not None:
        return redirect("devices:detail", uuid=mute.device.uuid)
    return redirect("notifications:list" if request.POST.get("next") == "notifications" else "fleets:list")
