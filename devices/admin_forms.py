"""Forms of the device admin: the change form's inputs, preregistration, the move and tag actions,
and the tags inline.

They validate with the messages staff should see; devices.services re-checks the same rules under
row locks, so a race can still be refused but never half-applied.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import QuerySet

from devices import services
from devices.models import UUID_REGEX, Device, DeviceTag
from fleets.models import Fleet

OTHER_ORGANIZATION_MESSAGE = (
    "That fleet is not in this device's organization: a device can only move to another fleet of its own organization."
)


def fleets_of(organization_id: int) -> QuerySet[Fleet]:
    # select_related: a fleet's label names its organization; without it, one query per option.
    return Fleet.objects.filter(organization_id=organization_id).select_related("organization").order_by("name")


def clean_poll_interval_value(value: int | None) -> int | None:
    if value is not None and value < settings.FLEETSTATUS_MIN_POLL_INTERVAL:
        raise forms.ValidationError(services.poll_interval_floor_message(), code="below_floor")
    return value


class CloudlinkOverrideSelect(forms.NullBooleanSelect):
    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs)
        self.choices = [("unknown", "Use the fleet's setting"), ("true", "On"), ("false", "Off")]


class FleetChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Fleet) -> str:
        return f"{obj.name} ({obj.organization.name})"


class DeviceAdminForm(forms.ModelForm):
    """The inputs staff edit. Everything else on the change page is read-only (DeviceAdmin)."""

    fleet = FleetChoiceField(
        queryset=Fleet.objects.none(), error_messages={"invalid_choice": OTHER_ORGANIZATION_MESSAGE}
    )
    cloudlink_enabled = forms.NullBooleanField(
        required=False,
        label="Cloudlink",
        widget=CloudlinkOverrideSelect,
        help_text="Off: a device without tunnel counts as Online, not Online (Heartbeat Only).",
    )

    class Meta:
        model = Device
        fields = ["name", "fleet", "is_active", "poll_interval", "cloudlink_enabled", "notes"]
        labels = {"is_active": "Active", "poll_interval": "Polling interval override (seconds)"}
        help_texts = {
            "poll_interval": "Empty: the fleet's interval. Never below the installation's floor.",
            "is_active": "Only an Offline device can be deactivated; any contact reactivates it.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only the device's own organization's fleets are offered; a posted fleet of another
        # organization fails with OTHER_ORGANIZATION_MESSAGE.
        self.fields["fleet"].queryset = fleets_of(self.instance.organization_id)

    def clean_poll_interval(self) -> int | None:
        return clean_poll_interval_value(self.cleaned_data.get("poll_interval"))

    def clean_is_active(self) -> bool:
        active = self.cleaned_data["is_active"]
        # self.instance still holds the stored values here (the form copies its data onto it later).
        if not active and (refusal := services.deactivation_refusal(self.instance)):
            raise forms.ValidationError(refusal, code="not_offline")
        return active


class PreregisterForm(forms.Form):
    fleet = FleetChoiceField(
        queryset=Fleet.objects.select_related("organization").order_by("organization__name", "name")
    )
    uuid = forms.CharField(
        label="UUID",
        # Longer than any UUID, so a wrong length gets the shape message rather than a generic one.
        max_length=200,
        strip=True,
        help_text="32 or 62 lowercase hexadecimal characters, as in the device's config.json.",
    )
    name = forms.CharField(max_length=100, required=False, help_text="Optional; a name is generated otherwise.")

    def clean_uuid(self) -> str:
        uuid = self.cleaned_data["uuid"]
        if not re.fullmatch(UUID_REGEX, uuid):
            raise forms.ValidationError(services.UUID_SHAPE_MESSAGE, code="shape")
        taken = Device.objects.filter(uuid=uuid).select_related("fleet__organization").first()
        if taken is not None:
            raise forms.ValidationError(
                "A device with this UUID already exists: %(name)s in %(org)s / %(fleet)s.",
                code="taken",
                params={"name": taken.name, "org": taken.fleet.organization.name, "fleet": taken.fleet.name},
            )
        return uuid


class MoveToFleetForm(forms.Form):
    fleet = FleetChoiceField(
        queryset=Fleet.objects.none(),
        label="Move to fleet",
        error_messages={"invalid_choice": OTHER_ORGANIZATION_MESSAGE},
    )

    def __init__(self, *args: Any, organization_id: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["fleet"].queryset = fleets_of(organization_id)


class TagAssignmentForm(forms.Form):
    """The bulk tag action's input: key=value sets the tag on every selected device, key= removes it."""

    tag = forms.CharField(
        label="Tag",
        max_length=300,
        strip=True,
        help_text="key=value (e.g. location=gate-b) sets the tag on every selected device; key= removes the key.",
    )

    def clean_tag(self) -> tuple[str, str | None]:
        try:
            return services.parse_assignment(self.cleaned_data["tag"])
        except services.TagError as exc:
            raise forms.ValidationError(str(exc), code="tag") from exc


class DeviceTagInline(admin.TabularInline):
    """The device's tags on its change page; the model's validators check key and value."""

    model = DeviceTag
    fields = ("key", "value")
    extra = 1
    verbose_name = "tag"
