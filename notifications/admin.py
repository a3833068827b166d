from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from notifications.forms import validate_target
from notifications.models import Channel, Delivery, Mute


class ChannelAdminForm(forms.ModelForm):
    class Meta:
        model = Channel
        # No secret: it is never shown after creation (save_model reports a new one once).
        fields = ["organization", "name", "url", "fleets", "statuses", "hold_seconds", "fleet_threshold", "enabled"]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"].strip()
        validate_target(url)
        return url


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    form = ChannelAdminForm
    list_display = ["name", "organization", "kind", "hold_seconds", "fleet_threshold", "enabled"]
    list_filter = ["enabled"]
    list_select_related = ["organization"]
    search_fields = ["name", "organization__slug"]
    filter_horizontal = ["fleets"]

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            messages.info(request, f"Signing secret of {obj.name} (shown once): {obj.secret}")


@admin.register(Mute)
class MuteAdmin(admin.ModelAdmin):
    list_display = ["__str__", "organization", "starts_at", "until", "reason"]
    list_select_related = ["organization", "device", "fleet"]
    raw_id_fields = ["device", "fleet"]


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["uuid", "channel", "event", "state", "size", "attempts", "last_status_code", "created_at"]
    list_filter = ["state", "event"]
    list_select_related = ["channel"]
    readonly_fields = [f.name for f in Delivery._meta.fields]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False
