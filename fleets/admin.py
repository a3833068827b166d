"""Admin for organizations and fleets.

Changes that affect devices (tier, allowance, fleet type, polling interval, cloudlink) go through
devices.services so frozen devices are reconciled and statuses recomputed; the changelists count
devices with one aggregate query, never one per row.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count, Q, QuerySet
from django.forms import Form
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html_join
from django.utils.safestring import SafeString

from devices import services
from devices.admin_forms import clean_poll_interval_value
from devices.models import Device
from devices.status import Status
from fleets.models import Fleet, Membership, Organization


def admin_reason(request: HttpRequest) -> str:
    return f"admin: {request.user.get_username()}"


def changed_values(form: Form) -> dict[str, Any]:
    return {name: form.cleaned_data[name] for name in form.changed_data if name in form.cleaned_data}


class ServiceSavingAdmin(admin.ModelAdmin):
    """Shows a refusal by devices.services (a race past the form's checks) as a message; the
    admin's transaction is rolled back, so nothing is half-saved."""

    def changeform_view(
        self, request: HttpRequest, object_id: str | None = None, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except services.DeviceChangeError as exc:
            self.message_user(request, f"Nothing was changed: {exc}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


class PageCountsChangeList(ChangeList):
    """Attaches device counts to the rows of the shown page only, with one aggregate query.

    Annotating the changelist queryset instead would put a join and GROUP BY over every device of
    the installation into the pagination COUNT as well, and aggregate all rows before LIMIT; this
    reads just the devices of the listed rows, through the (organization|fleet, ...) indexes.
    """

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        rows = list(self.result_list)
        self.model_admin.attach_device_counts(rows)
        self.result_list = rows


class DeviceCountsAdmin(ServiceSavingAdmin):
    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return PageCountsChangeList

    def attach_device_counts(self, rows: list[Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def count(self, obj: Any, name: str) -> int:
        # The change page shows the counts too; its object did not come through the changelist.
        if not hasattr(obj, name):
            self.attach_device_counts([obj])
        return getattr(obj, name)

    @staticmethod
    def set_counts(rows: list[Any], by_pk: dict[int, dict[str, int]], names: tuple[str, ...]) -> None:
        for row in rows:
            counts = by_pk.get(row.pk, {})
            for name in names:
                setattr(row, name, counts.get(name, 0))


# --- Organizations -----------------------------------------------------------------------------


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    # A select of every user would load the whole user table into each page.
    autocomplete_fields = ("user",)


@admin.register(Organization)
class OrganizationAdmin(DeviceCountsAdmin):
    list_display = ("name", "slug", "tier", "status_names", "usage", "frozen_devices")
    list_filter = ("tier", "status_names")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    fields = ("name", "slug", "tier", "device_allowance", "status_names", "usage", "frozen_devices")
    readonly_fields = ("usage", "frozen_devices")
    inlines = (MembershipInline,)

    def attach_device_counts(self, rows: list[Organization]) -> None:
        names = ("active_device_count", "frozen_device_count")
        by_pk = {
            row.pop("organization_id"): row
            for row in Device.objects.filter(organization_id__in=[o.pk for o in rows if o.pk])
            .order_by()
            .values("organization_id")
            .annotate(
                active_device_count=Count("pk", filter=Q(is_active=True)),
                frozen_device_count=Count("pk", filter=Q(is_frozen=True)),
            )
        }
        self.set_counts(rows, by_pk, names)

    @admin.display(description="Active devices / allowance")
    def usage(self, obj: Organization) -> str:
        allowance = "unlimited" if obj.device_allowance is None else obj.device_allowance
        return f"{self.count(obj, 'active_device_count')} / {allowance}"

    @admin.display(description="Frozen devices")
    def frozen_devices(self, obj: Organization) -> int:
        return self.count(obj, "frozen_device_count")

    def save_model(self, request: HttpRequest, obj: Organization, form: Form, change: bool) -> None:
        if not change:
            obj.save()  # a new organization has no devices to reconcile
            return
        changes = changed_values(form)
        if changes:
            # Reconciles Frozen for every device of the organization when tier or allowance changed.
            services.update_organization(obj, changes, reason=admin_reason(request))


# --- Fleets ------------------------------------------------------------------------------------


def status_count_name(status: Status) -> str:
    return "count_" + status.value.replace("-", "_")


class FleetAdminForm(forms.ModelForm):
    class Meta:
        model = Fleet
        fields = ["organization", "name", "slug", "device_type", "fleet_type", "poll_interval", "cloudlink_enabled"]
        labels = {"poll_interval": "Polling interval (seconds)", "cloudlink_enabled": "Cloudlink"}
        help_texts = {
            "poll_interval": "Empty: the installation default. Devices may override it.",
            "cloudlink_enabled": "Off: a device without tunnel counts as Online, not Online (Heartbeat Only).",
            "fleet_type": "A paid fleet's devices are Frozen while the organization is on the free tier.",
        }

    def clean_poll_interval(self) -> int | None:
        return clean_poll_interval_value(self.cleaned_data.get("poll_interval"))


@admin.register(Fleet)
class FleetAdmin(DeviceCountsAdmin):
    form = FleetAdminForm
    list_display = (
        "name",
        "organization",
        "fleet_type",
        "interval",
        "cloudlink_enabled",
        "device_count",
        "status_counts",
    )
    list_filter = ("organization", "fleet_type", "cloudlink_enabled")
    search_fields = ("name", "slug", "organization__name")
    list_select_related = ("organization",)
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("provisioning_key", "device_count", "status_counts")
    actions = ("issue_provisioning_key",)

    def get_fields(self, request: HttpRequest, obj: Fleet | None = None) -> list[str]:
        fields = list(FleetAdminForm.Meta.fields)
        return fields + (["provisioning_key", "device_count", "status_counts"] if obj else [])

    def get_readonly_fields(self, request: HttpRequest, obj: Fleet | None = None) -> tuple[str, ...]:
        # Devices store their fleet's organization (for indexed per-organization pages), so a fleet
        # never changes organization.
        return (*self.readonly_fields, "organization") if obj else ()

    def attach_device_counts(self, rows: list[Fleet]) -> None:
        # One GROUP BY for the page's fleets: a filtered count per status, plus the total.
        per_status = {status_count_name(s): Count("pk", filter=Q(overall_status=s.value)) for s in Status}
        by_pk = {
            row.pop("fleet_id"): row
            for row in Device.objects.filter(fleet_id__in=[f.pk for f in rows if f.pk])
            .order_by()
            .values("fleet_id")
            .annotate(device_total=Count("pk"), **per_status)
        }
        self.set_counts(rows, by_pk, ("device_total", *per_status))

    @admin.display(description="Polling interval")
    def interval(self, obj: Fleet) -> str:
        return f"{obj.poll_interval} s" if obj.poll_interval else "default"

    @admin.display(description="Devices")
    def device_count(self, obj: Fleet) -> int:
        return self.count(obj, "device_total")

    @admin.display(description="By status")
    def status_counts(self, obj: Fleet) -> SafeString | str:
        changelist = reverse("admin:devices_device_changelist")
        counts = [(s, self.count(obj, status_count_name(s))) for s in Status]
        shown = [(s, n) for s, n in counts if n]
        if not shown:
            return "–"
        # The admin shows this method's return value (no template): format_html escapes every value.
        return format_html_join(
            " · ",
            '<a style="white-space:nowrap" href="{}?fleet__id__exact={}&amp;overall_status__exact={}">{}&nbsp;{}</a>',
            ((changelist, obj.pk, s.value, s.label, n) for s, n in shown),
        )

    @admin.display(description="Provisioning key")
    def provisioning_key(self, obj: Fleet) -> str:
        if obj.provisioning_key_hash:
            return "Set (only its hash is stored). Issue a new one with the fleet list's action."
        return "Not issued yet: use the action “Issue a new provisioning key” on the fleet list."

    def save_model(self, request: HttpRequest, obj: Fleet, form: Form, change: bool) -> None:
        if not change:
            obj.save()  # a new fleet has no devices yet
            self.message_user(
                request,
                "Issue the fleet's provisioning key with the action “Issue a new provisioning key”.",
                messages.INFO,
            )
            return
        changes = changed_values(form)
        if changes:
            services.update_fleet(obj, changes, reason=admin_reason(request))

    @admin.action(description="Issue a new provisioning key", permissions=["change"])
    def issue_provisioning_key(self, request: HttpRequest, queryset: QuerySet[Fleet]) -> HttpResponse:
        fleets = list(queryset.select_related("organization").order_by("organization__name", "name"))
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Issue new provisioning keys",
            "fleets": fleets,
            "selected": [str(f.pk) for f in fleets],
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        if request.POST.get("confirm") != "yes":
            return TemplateResponse(request, "admin/fleets/fleet/provisioning_key.html", context)
        issued = []
        for fleet in fleets:
            key = fleet.issue_provisioning_key()
            services.update_fleet(
                fleet, {"provisioning_key_hash": fleet.provisioning_key_hash}, reason=admin_reason(request)
            )
            self.log_change(request, fleet, "Issued a new provisioning key.")
            issued.append((fleet, key))
        # Rendered, not redirected with a message: the plain key must not be stored anywhere, not
        # even in the session or a message cookie. admin_view marks the response never-cache.
        return TemplateResponse(request, "admin/fleets/fleet/provisioning_key.html", {**context, "issued": issued})
