"""The device admin: staff edit a device's inputs; its status, signals and timestamps are read-only.

Every change goes through devices.services (never obj.save()), so the status is recomputed by the
same rule the API uses and a StatusTransition with reason "admin: <username>" is written when it
changes. Built for 100,000 devices: no per-row queries, no full count, filters that read small
tables only, and a search whose UUID part is a prefix match the unique index can serve.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms import Form
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from devices import services
from devices.admin_forms import DeviceAdminForm, DeviceTagInline, MoveToFleetForm, PreregisterForm, TagAssignmentForm
from devices.models import Device, DeviceSearch, StatusTransition
from devices.queries import search_condition
from fleets.models import Fleet, Organization

HEX_PREFIX = re.compile(r"[0-9a-f]{1,62}")
# A hex term this long that starts a UUID is taken as that UUID (the pages show 7 characters).
UUID_ONLY_LENGTH = 7
# How many device names a message or a confirmation page lists before "and N more".
LISTED_NAMES = 10
MOVE_PREVIEW_LIMIT = 50


def admin_reason(request: HttpRequest) -> str:
    return f"admin: {request.user.get_username()}"


def name_list(names: Sequence[str], limit: int = LISTED_NAMES, separator: str = ", ") -> str:
    shown = separator.join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural_form or singular + 's')}"


def titled(base: type[admin.FieldListFilter], title: str) -> type[admin.FieldListFilter]:
    """A field filter with a title of our choosing (verbose names like "is connected to vpn" read badly)."""

    class Titled(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.title = title

    return Titled


class FleetFilter(admin.SimpleListFilter):
    """Fleets from the (small) fleet table in one query, narrowed to the chosen organization.

    Django's RelatedFieldListFilter would label each fleet with str(fleet), one organization query
    per fleet; RelatedOnlyFieldListFilter would scan the device table for the fleets in use.
    """

    title = "fleet"
    parameter_name = "fleet__id__exact"
    organization_parameter = "organization__id__exact"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        fleets = Fleet.objects.select_related("organization").order_by("organization__name", "name")
        organization = request.GET.get(self.organization_parameter, "")
        if organization.isdigit():
            fleets = fleets.filter(organization_id=int(organization))
        return [(str(f.pk), f"{f.organization.name} / {f.name}") for f in fleets]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Device]) -> QuerySet[Device] | None:
        value = self.value()
        if value is None:
            return None
        if not value.isdigit():
            raise IncorrectLookupParameters(f"Not a fleet id: {value!r}")
        return queryset.filter(fleet_id=int(value))


EDITABLE_INPUTS = ("name", "fleet", "is_active", "poll_interval", "cloudlink_enabled", "notes")
DEVICE_FIELDSETS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "Inputs",
        {
            "fields": EDITABLE_INPUTS,
            "description": "Staff change these; the status follows, computed by the same rule as for the API.",
        },
    ),
    ("Status", {"fields": ("status_badge", "status_changed_at", "is_frozen", "frozen_reason", "recent_transitions")}),
    (
        "Heartbeat (target-state fetches)",
        {"fields": ("api_heartbeat_state", "last_api_heartbeat_at", "heartbeat_deadline", "effective_interval")},
    ),
    (
        "Cloudlink (tunnel)",
        {
            "fields": (
                "is_connected_to_vpn",
                "effective_cloudlink_display",
                "vpn_service_id",
                "last_vpn_event",
                "last_connectivity_event",
            )
        },
    ),
    (
        "Provisioning and updates",
        {
            "fields": (
                "provisioning_state",
                "provisioning_progress",
                "update_status",
                "download_progress",
                "status",
                "release",
            )
        },
    ),
    (
        "Device",
        {
            "fields": (
                "uuid",
                "organization",
                "device_type",
                "os_version",
                "os_variant",
                "supervisor_version",
                "ip_address",
                "mac_address",
            )
        },
    ),
    (
        "Metrics",
        {
            "classes": ("collapse",),
            "fields": (
                "cpu_usage",
                "cpu_temp",
                "memory_usage",
                "memory_total",
                "storage_usage",
                "storage_total",
                "is_undervolted",
                "last_state_report_at",
            ),
        },
    ),
    ("Timestamps", {"fields": ("last_seen_at", "created_at", "activated_at")}),
)
# Everything shown except the inputs. api_key_hash is in no fieldset: never shown.
DEVICE_READONLY_FIELDS = tuple(
    name for _, options in DEVICE_FIELDSETS for name in options["fields"] if name not in EDITABLE_INPUTS
)


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    form = DeviceAdminForm
    list_display = (
        "status_badge",
        "name",
        "uuid_prefix",
        "fleet_name",
        "organization_name",
        "heartbeat",
        "cloudlink",
        "last_seen",
    )
    list_display_links = ("name",)
    list_filter = (
        ("overall_status", titled(admin.ChoicesFieldListFilter, "status")),
        ("organization", admin.RelatedFieldListFilter),
        FleetFilter,
        ("api_heartbeat_state", titled(admin.ChoicesFieldListFilter, "heartbeat")),
        ("is_connected_to_vpn", titled(admin.BooleanFieldListFilter, "tunnel connected")),
        ("is_frozen", titled(admin.BooleanFieldListFilter, "frozen")),
        ("is_active", titled(admin.BooleanFieldListFilter, "active")),
    )
    # The real search is get_search_results(); this only makes the admin show the search box.
    search_fields = ("name",)
    search_help_text = (
        "Name or IP address (contains), or the start of a UUID; 7 or more hex characters that start a UUID find "
        "just that device."
    )
    list_select_related = ("fleet", "organization")
    # A COUNT(*) of the unfiltered table on every page view is the slow part at 100,000 rows.
    show_full_result_count = False
    # Facet counts run one aggregate per filter option; not on a table this size.
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    list_max_show_all = 500
    # Newest devices first, served by the primary key index (no sort of the whole table).
    ordering = ("-pk",)
    actions = ("deactivate", "reactivate", "move_to_fleet", "tag_devices")
    inlines = (DeviceTagInline,)

    class Media:
        # The badge's own stylesheet: self-contained, so the admin gets the dashboard's look.
        css = {"all": ("fleetstatus/badge.css",)}

    fieldsets = DEVICE_FIELDSETS
    readonly_fields = DEVICE_READONLY_FIELDS

    # --- Columns -------------------------------------------------------------------------------

    @admin.display(description="Status", ordering="overall_status")
    def status_badge(self, obj: Device) -> SafeString:
        # The same partial as every page, so the admin and the dashboard cannot disagree.
        return render_to_string("devices/_badge.html", {"device": obj})

    @admin.display(description="UUID", ordering="uuid")
    def uuid_prefix(self, obj: Device) -> SafeString:
        # The admin shows this method's return value (no template): format_html escapes every value.
        return format_html('<code title="{}">{}</code>', obj.uuid, obj.short_uuid)

    @admin.display(description="Fleet", ordering="fleet__name")
    def fleet_name(self, obj: Device) -> str:
        return obj.fleet.name

    @admin.display(description="Organization", ordering="organization__name")
    def organization_name(self, obj: Device) -> str:
        return obj.organization.name

    @admin.display(description="Heartbeat", ordering="api_heartbeat_state")
    def heartbeat(self, obj: Device) -> str:
        return obj.get_api_heartbeat_state_display()

    @admin.display(description="Cloudlink", ordering="is_connected_to_vpn")
    def cloudlink(self, obj: Device) -> str:
        tunnel = "Connected" if obj.is_connected_to_vpn else "Disconnected"
        return tunnel if obj.effective_cloudlink else f"{tunnel} (switched off)"

    @admin.display(description="Last seen", ordering="last_seen_at")
    def last_seen(self, obj: Device) -> SafeString | str:
        if obj.last_seen_at is None:
            return "Never"
        # The admin shows this method's return value (no template): format_html escapes every value.
        return format_html(
            '<time datetime="{}" title="{}">{}</time>',
            obj.last_seen_at.isoformat(),
            obj.last_seen_at,
            naturaltime(obj.last_seen_at),
        )

    # --- Read-only details on the change page --------------------------------------------------

    @admin.display(description="Effective polling interval")
    def effective_interval(self, obj: Device) -> str:
        source = "device override" if obj.poll_interval else ("fleet" if obj.fleet.poll_interval else "default")
        return f"{obj.effective_poll_interval} s ({source})"

    @admin.display(description="Cloudlink enabled")
    def effective_cloudlink_display(self, obj: Device) -> str:
        source = "fleet" if obj.cloudlink_enabled is None else "device override"
        return f"{'On' if obj.effective_cloudlink else 'Off'} ({source})"

    @admin.display(description="Recent status changes")
    def recent_transitions(self, obj: Device) -> SafeString | str:
        rows = list(StatusTransition.objects.filter(device=obj)[:10])
        if not rows:
            return "None"
        # The admin shows this method's return value (no template): format_html escapes every value.
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{} — {} → {} ({})</li>",
                ((t.at, t.get_from_status_display() or "∅", t.get_to_status_display(), t.reason) for t in rows),
            ),
        )

    # --- Search --------------------------------------------------------------------------------

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Device], search_term: str
    ) -> tuple[QuerySet[Device], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        # Name contains, IP contains and UUID prefix, as the Devices page searches: on the search
        # rows (devices/search.py), whose trigram indexes find a match among a million devices
        # without reading the device table.
        matches = queryset.filter(pk__in=DeviceSearch.objects.filter(search_condition(term)).values("device_id"))
        prefix = term.lower()
        if not HEX_PREFIX.fullmatch(prefix):
            return matches, False
        # UUIDs are stored lowercase, so a case-sensitive prefix match on the lowered term finds what
        # istartswith would, as LIKE 'abc%', which PostgreSQL's varchar_pattern_ops index on the
        # unique column serves (istartswith wraps the column in UPPER() and cannot).
        by_uuid = queryset.filter(uuid__startswith=prefix)
        if len(prefix) >= UUID_ONLY_LENGTH and by_uuid.exists():
            # A pasted (short) UUID: answer from the index alone. OR-ed with the name and IP
            # "contains" it would scan the whole table for one row.
            return by_uuid, False
        return matches, False

    # --- Permissions ---------------------------------------------------------------------------

    def has_delete_permission(self, request: HttpRequest, obj: Device | None = None) -> bool:
        # Deleting would bypass the allowance reconciliation and lose the history; deactivate instead.
        return False

    # --- Saving: inputs go through devices.services --------------------------------------------

    def save_model(self, request: HttpRequest, obj: Device, form: Form, change: bool) -> None:
        if not change:  # add_view is the preregistration form; nothing else creates devices here
            raise PermissionDenied
        changes = {
            name: form.cleaned_data[name] for name in form.changed_data if name in services.ADMIN_EDITABLE_FIELDS
        }
        if changes:
            services.apply_admin_edit(obj.pk, changes, reason=admin_reason(request))

    def changeform_view(
        self, request: HttpRequest, object_id: str | None = None, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        # "Save and add another" would lead to the preregistration form, not a blank device.
        extra_context = {**(extra_context or {}), "show_save_and_add_another": False}
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except services.DeviceChangeError as exc:
            # The form checked the same rules; this is a race (e.g. the device came online since).
            # The admin's transaction has been rolled back, so nothing changed.
            self.message_user(request, f"Nothing was changed: {exc}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    # --- Preregistration (the "add" button) ----------------------------------------------------

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = PreregisterForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            data = form.cleaned_data
            try:
                device, api_key = services.preregister_device(
                    data["fleet"], data["uuid"], name=data["name"], reason=admin_reason(request)
                )
            except services.DeviceChangeError as exc:
                form.add_error("uuid", str(exc))
            else:
                self.log_addition(request, device, [{"added": {}}])
                # Rendered, not redirected: the plain key must not pass through the session or a
                # message cookie. admin_view already marks the response never-cache.
                return TemplateResponse(
                    request,
                    "admin/devices/device/preregistered.html",
                    {
                        **self._page_context(request, f"Preregistered {device.name}"),
                        "device": device,
                        "api_key": api_key,
                    },
                )
        return TemplateResponse(
            request,
            "admin/devices/device/preregister.html",
            {**self._page_context(request, "Preregister a device"), "form": form, "adminform_errors": form.errors},
        )

    @staticmethod
    def _selection(request: HttpRequest, queryset: QuerySet[Device], total: int, action: str) -> dict:
        """What an action's intermediate page needs: a preview of the devices and the selection to post back."""
        return {
            "action": action,
            "devices": list(queryset.select_related("fleet")[:MOVE_PREVIEW_LIMIT]),
            "total": total,
            "more": max(total - MOVE_PREVIEW_LIMIT, 0),
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }

    def _page_context(self, request: HttpRequest, title: str) -> dict[str, Any]:
        return {**self.admin_site.each_context(request), "opts": self.opts, "title": title}

    # --- Actions -------------------------------------------------------------------------------

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description="Deactivate selected devices (Offline only)", permissions=["change"])
    def deactivate(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        result = services.set_devices_active(queryset, False, reason=admin_reason(request))
        if result.changed:
            self.message_user(request, f"Deactivated {plural(result.changed, 'device')}.", messages.SUCCESS)
        if result.refused:
            listed = name_list([f"{name}: {label}" for name, label in result.refused], separator="; ")
            self.message_user(
                request,
                f"Skipped {plural(len(result.refused), 'device')} that {'is' if len(result.refused) == 1 else 'are'} not "
                f"Offline — only an Offline device can be deactivated: {listed}.",
                messages.WARNING,
            )
        if result.unchanged:
            self.message_user(request, f"Already inactive, skipped: {name_list(result.unchanged)}.", messages.INFO)

    @admin.action(description="Reactivate selected devices", permissions=["change"])
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        result = services.set_devices_active(queryset, True, reason=admin_reason(request))
        if result.changed:
            self.message_user(request, f"Reactivated {plural(result.changed, 'device')}.", messages.SUCCESS)
            frozen = queryset.filter(is_frozen=True).count()
            if frozen:
                self.message_user(
                    request,
                    f"{plural(frozen, 'selected device')} {'is' if frozen == 1 else 'are'} Frozen: beyond the "
                    "organization's device allowance, or in a paid fleet while the organization is on the free tier.",
                    messages.WARNING,
                )
        if result.unchanged:
            self.message_user(request, f"Already active, skipped: {name_list(result.unchanged)}.", messages.INFO)

    @admin.action(description="Move selected devices to another fleet…", permissions=["change"])
    def move_to_fleet(self, request: HttpRequest, queryset: QuerySet[Device]) -> HttpResponse | None:
        organization_ids = list(queryset.order_by().values_list("organization_id", flat=True).distinct()[:2])
        if len(organization_ids) != 1:
            self.message_user(
                request,
                "The selected devices belong to more than one organization, and a device can only move to a fleet "
                "of its own organization. Select devices of one organization (filter by organization first).",
                messages.ERROR,
            )
            return None
        organization = Organization.objects.get(pk=organization_ids[0])
        form = MoveToFleetForm(request.POST if "apply" in request.POST else None, organization_id=organization.pk)
        if form.is_valid():
            fleet = form.cleaned_data["fleet"]
            try:
                moved = services.move_devices(queryset, fleet, reason=admin_reason(request))
            except services.DeviceChangeError as exc:
                self.message_user(request, f"Nothing was moved: {exc}", messages.ERROR)
                return None
            self.message_user(request, f"Moved {plural(moved, 'device')} to fleet {fleet.name}.", messages.SUCCESS)
            return None
        total = queryset.count()
        return TemplateResponse(
            request,
            "admin/devices/device/move_to_fleet.html",
            {
                **self._page_context(request, "Move devices to another fleet"),
                **self._selection(request, queryset, total, "move_to_fleet"),
                "form": form,
                "organization": organization,
            },
        )

    @admin.action(description="Tag selected devices…", permissions=["change"])
    def tag_devices(self, request: HttpRequest, queryset: QuerySet[Device]) -> HttpResponse | None:
        form = TagAssignmentForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            key, value = form.cleaned_data["tag"]
            count = services.set_tag(queryset, key, value)
            done = f"Set {key}={value} on" if value is not None else f"Removed tag {key} from"
            self.message_user(request, f"{done} {plural(count, 'device')}.", messages.SUCCESS)
            return None
        total = queryset.count()
        return TemplateResponse(
            request,
            "admin/devices/device/tag_devices.html",
            {
                **self._page_context(request, "Tag devices"),
                **self._selection(request, queryset, total, "tag_devices"),
                "form": form,
            },
            # A refused tag is a bad request: nothing was written.
            status=400 if form.is_bound else 200,
        )
