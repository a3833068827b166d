from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from devices.status import SIGNALS, HeartbeatState, Status, UpdateStatus, compute_status
from fleets.models import Fleet, Organization

UUID_REGEX = r"^(?:[0-9a-f]{32}|[0-9a-f]{62})$"
uuid_validator = RegexValidator(UUID_REGEX, "A device UUID is 32 or 62 lowercase hexadecimal characters.")
percent_validators = [MinValueValidator(0), MaxValueValidator(100)]


def effective_poll_interval(device_override: int | None, fleet_interval: int | None) -> int:
    """Seconds between target-state fetches: device, else fleet, else default; never below the floor."""
    interval = device_override or fleet_interval or settings.FLEETSTATUS_DEFAULT_POLL_INTERVAL
    return max(interval, settings.FLEETSTATUS_MIN_POLL_INTERVAL)


def effective_cloudlink(device_override: bool | None, fleet_switch: bool) -> bool:
    """Whether cloudlink is expected: the device's override, else its fleet's switch.

    devices.status.effective_cloudlink_expression() is the same rule in SQL.
    """
    return fleet_switch if device_override is None else device_override


def heartbeat_window(interval_seconds: int) -> timedelta:
    return timedelta(seconds=interval_seconds * settings.FLEETSTATUS_HEARTBEAT_TOLERANCE)


class Device(models.Model):
    # On PostgreSQL the column has collation "C" (migration 0004): its unique index then serves
    # equality, prefix search (LIKE 'abc%') and ORDER BY uuid alike, so no second
    # varchar_pattern_ops index is kept. UUIDs are lowercase hex: the order is the same.
    uuid = models.CharField(max_length=62, unique=True, validators=[uuid_validator])
    # Denormalised from fleet (devices only move between fleets of one organization) so that every
    # page filter and sort is one index on (organization, column).
    # No single-column index on either foreign key: the (organization, ...) and (fleet, ...)
    # indexes below serve every lookup by them, and each index costs every device write (a write
    # that changes an indexed column, which every device write does, inserts into all of them).
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="devices", db_index=False)
    fleet = models.ForeignKey(Fleet, on_delete=models.PROTECT, related_name="devices", db_index=False)
    name = models.CharField(max_length=100)
    device_type = models.CharField(max_length=64, blank=True, default="")
    os_version = models.CharField(max_length=64, blank=True, default="")
    os_variant = models.CharField(max_length=32, blank=True, default="")
    supervisor_version = models.CharField(max_length=32, blank=True, default="")
    # balena agents report every address, space separated.
    ip_address = models.CharField(max_length=255, blank=True, default="")
    mac_address = models.CharField(max_length=255, blank=True, default="")
    release = models.CharField("current release", max_length=64, blank=True, default="")
    # Indexed (Meta.indexes; a hash index on PostgreSQL, migration 0004) so a valid key of another
    # device is told apart from a wrong key (403 vs 401): equality is the only lookup by it.
    api_key_hash = models.CharField(max_length=64, editable=False, blank=True, default="")
    notes = models.TextField(blank=True, default="")

    # Overrides of the fleet's settings (None = use the fleet's).
    poll_interval = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    cloudlink_enabled = models.BooleanField(null=True, blank=True)

    # --- Signals the status rule reads (docs/design.md, Statuses) ---
    is_active = models.BooleanField(default=True)
    is_frozen = models.BooleanField(default=False)
    frozen_reason = models.CharField(max_length=200, blank=True, default="")
    provisioning_state = models.CharField(max_length=64, blank=True, default="")
    provisioning_progress = models.SmallIntegerField(null=True, blank=True, validators=percent_validators)
    api_heartbeat_state = models.CharField(max_length=8, choices=HeartbeatState.choices, default=HeartbeatState.UNKNOWN)
    last_api_heartbeat_at = models.DateTimeField(null=True, blank=True)
    # last_api_heartbeat_at + interval x 1.5 while the heartbeat is online; the sweep reads only
    # rows whose deadline has passed (partial index below).
    heartbeat_deadline = models.DateTimeField(null=True, blank=True)
    is_connected_to_vpn = models.BooleanField(default=False)
    vpn_service_id = models.IntegerField(null=True, blank=True)
    last_vpn_event = models.DateTimeField(null=True, blank=True)
    last_connectivity_event = models.DateTimeField(null=True, blank=True)
    # NULL = nothing reported, as balena stores it; the status rule and tests rely on that.
    update_status = models.CharField(max_length=20, choices=UpdateStatus.choices, null=True, blank=True)  # noqa: DJ001
    download_progress = models.SmallIntegerField(null=True, blank=True, validators=percent_validators)
    # When update_status last took its current value: set by a state report only when the value
    # changes (devices/services/reporting.py), so "since" is the time of the change, not of the report.
    update_status_changed_at = models.DateTimeField(null=True, blank=True)
    # The text the device agent reports (e.g. "Idle", "Downloading"); not the overall status.
    status = models.CharField("agent status", max_length=50, blank=True, default="")

    # Metrics the agent reports.
    memory_usage = models.BigIntegerField(null=True, blank=True, validators=[MinValueValidator(0)])
    memory_total = models.BigIntegerField(null=True, blank=True, validators=[MinValueValidator(0)])
    storage_usage = models.BigIntegerField(null=True, blank=True, validators=[MinValueValidator(0)])
    storage_total = models.BigIntegerField(null=True, blank=True, validators=[MinValueValidator(0)])
    cpu_temp = models.SmallIntegerField(null=True, blank=True)
    cpu_usage = models.SmallIntegerField(null=True, blank=True, validators=percent_validators)
    is_undervolted = models.BooleanField(default=False)
    last_state_report_at = models.DateTimeField(null=True, blank=True)

    # Latest contact of any kind (fetch, report, tunnel event): the "last seen" column.
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # When the device last became active; the allowance keeps the oldest activated devices working.
    activated_at = models.DateTimeField(null=True, blank=True)

    # --- The stored overall status (docs/design.md, Statuses); only devices.services writes it ---
    overall_status = models.CharField(max_length=24, choices=Status.choices, default=Status.CONFIGURING)
    status_changed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        indexes = [
            # Page filters and sorts, all scoped to an organization.
            models.Index(fields=["organization", "overall_status", "name"], name="dev_org_status_name"),
            models.Index(fields=["organization", "name"], name="dev_org_name"),
            models.Index(fields=["organization", "last_seen_at"], name="dev_org_last_seen"),
            # A status filter sorted by last seen, oldest first; newest first (DESC NULLS LAST) has
            # its own PostgreSQL-only index (migration 0010), as for last seen alone.
            models.Index(fields=["organization", "overall_status", "last_seen_at"], name="dev_org_status_seen"),
            # "Last seen, newest first" (DESC NULLS LAST) has its own PostgreSQL-only index,
            # created in migration 0002 outside the model state (SQLite cannot index NULLS LAST).
            # The sorts with a second key (ORDER BY x, name, id): the index gives the page in order and
            # only the id tiebreak among equal names is sorted (migration 0005).
            models.Index(fields=["organization", "device_type", "name"], name="dev_org_device_type_name"),
            models.Index(fields=["organization", "os_version", "name"], name="dev_org_os_name"),
            # Release and IP address have many distinct values per organization, so (organization, x)
            # leaves only small groups for an incremental sort by name, and stays a small,
            # deduplicated index that device writes pay less for (migration 0006).
            models.Index(fields=["organization", "release"], name="dev_org_release"),
            models.Index(fields=["organization", "ip_address"], name="dev_org_ip"),
            models.Index(fields=["organization", "api_heartbeat_state", "name"], name="dev_org_heartbeat_name"),
            models.Index(fields=["organization", "is_connected_to_vpn", "name"], name="dev_org_vpn_name"),
            # The update status filter and sort, and the "update status since" sort (ascending; the
            # descending NULLS LAST one is PostgreSQL-only, migration 0007, as for last seen).
            models.Index(fields=["organization", "update_status", "name"], name="dev_org_update_status_name"),
            models.Index(fields=["organization", "update_status_changed_at"], name="dev_org_update_since"),
            # No index for the search: it reads DeviceSearch, whose rows only change with the
            # searched columns, so device writes no longer pay for trigram indexes (migration 0010).
            models.Index(fields=["fleet", "overall_status"], name="dev_fleet_status"),
            models.Index(fields=["api_key_hash"], name="dev_api_key_hash"),
            models.Index(fields=["fleet", "name"], name="dev_fleet_name"),
            # (No index for the allowance's "active devices in activation order": reconcile_frozen
            # reads every active device of the organization anyway, so an index would save only
            # the sort, and cost every device write; migration 0004.)
            # The staleness sweep: only devices whose heartbeat is online have a deadline to watch.
            models.Index(
                fields=["heartbeat_deadline"],
                name="dev_heartbeat_due",
                condition=Q(api_heartbeat_state=HeartbeatState.ONLINE),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(provisioning_progress__isnull=True)
                | Q(provisioning_progress__gte=0, provisioning_progress__lte=100),
                name="dev_provisioning_progress_range",
            ),
            models.CheckConstraint(
                condition=Q(download_progress__isnull=True) | Q(download_progress__gte=0, download_progress__lte=100),
                name="dev_download_progress_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name or self.uuid

    @property
    def short_uuid(self) -> str:
        return self.uuid[:7]

    @property
    def effective_cloudlink(self) -> bool:
        return effective_cloudlink(self.cloudlink_enabled, self.fleet.cloudlink_enabled)

    @effective_cloudlink.setter
    def effective_cloudlink(self, value: bool) -> None:
        # Querysets annotated by devices.status.annotate_signals() set the same value computed in
        # SQL; the property above is the source of truth, so the annotation is not kept.
        pass

    @property
    def effective_poll_interval(self) -> int:
        return effective_poll_interval(self.poll_interval, self.fleet.poll_interval)

    def signals(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SIGNALS}

    def compute_status(self) -> Status:
        return compute_status(self.signals())


class DeviceSearch(models.Model):
    """What the Devices page's search and its counts read: one narrow row per device, kept by
    database triggers on devices_device (devices/search.py), never written by the app.

    Trigram indexes on the device table cost every device write (none is a HOT update); here the
    row changes only when a searched column or the status changes, and a status change leaves
    every index alone (a HOT update). The status is here so that a broad search (one letter, a
    common IP prefix) counts its matches per status from these rows alone.
    """

    device_id = models.BigIntegerField(primary_key=True)
    organization_id = models.BigIntegerField()
    fleet_id = models.BigIntegerField()
    overall_status = models.CharField(max_length=24)
    # UPPER(name), computed by the database: matching it costs no UPPER() per row and per search.
    name = models.CharField(max_length=100)
    # The name as it is: the Devices page sorted by name with a search or a tag filter takes its
    # page of device ids from these rows (devsearch_org_name), not from the much wider devices.
    sort_name = models.CharField(max_length=100)
    ip_address = models.CharField(max_length=255)
    uuid = models.CharField(max_length=62)
    # The device's tags, one "key=value" line each in key order (values hold no line break, keys no
    # "="); a database default so the triggers' INSERTs need not name it.
    tags = models.TextField(db_default="", default="")

    class Meta:
        # PostgreSQL-only indexes (trigram GIN for name and IP contains, the UUID prefix; GIN over
        # the tag lines) are made by migrations 0010 and 0011 outside the model state.
        indexes = [
            models.Index(fields=["organization_id", "device_id"], name="devsearch_org_device"),
            models.Index(fields=["organization_id", "sort_name", "device_id"], name="devsearch_org_name"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id}: {self.name}"


class StatusTransition(models.Model):
    """One change of a device's overall status: the history every page reads."""

    # No index of its own: transition_device_at (device, -at, -id) serves every lookup by device.
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="transitions", db_index=False)
    from_status = models.CharField(max_length=24, choices=Status.choices, blank=True, default="")
    to_status = models.CharField(max_length=24, choices=Status.choices)
    at = models.DateTimeField()
    reason = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["device", "-at", "-id"], name="transition_device_at"),
            models.Index(fields=["at"], name="transition_at"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id}: {self.from_status or '∅'} → {self.to_status} at {self.at:%Y-%m-%d %H:%M:%S}"


class TaskRun(models.Model):
    """Last successful run of a periodic task: the dead-man's switch the pages show."""

    name = models.CharField(max_length=50, primary_key=True)
    last_success_at = models.DateTimeField()
    details = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.last_success_at}"


TAG_KEY_REGEX = r"^[a-z0-9_.-]{1,64}$"
TAG_VALUE_MAX_LENGTH = 200
tag_key_validator = RegexValidator(
    TAG_KEY_REGEX, "A tag key is 1 to 64 characters of a-z, 0-9, underscore, dot and hyphen."
)


def validate_tag_value(value: str) -> None:
    if not value or len(value) > TAG_VALUE_MAX_LENGTH or not value.isprintable():
        raise ValidationError(
            f"A tag value is 1 to {TAG_VALUE_MAX_LENGTH} printable characters (no control characters or line breaks).",
            code="tag_value",
        )


class DeviceTag(models.Model):
    """A key/value label on a device (location=gate-b); one value per key and device.

    Written only through devices.services.tags (and the device admin's inline).
    """

    # No index of its own: devtag_device_key (device, key) serves every lookup by device.
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="tags", db_index=False)
    # Denormalised from the device (devices never change organization) so that a tag filter is one
    # index range on (organization, key, value), yielding the device ids without touching devices.
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="+", db_index=False, editable=False
    )
    key = models.CharField(max_length=64, validators=[tag_key_validator])
    value = models.CharField(max_length=TAG_VALUE_MAX_LENGTH, validators=[validate_tag_value])

    class Meta:
        ordering = ["key"]
        constraints = [models.UniqueConstraint(fields=["device", "key"], name="devtag_device_key")]
        indexes = [models.Index(fields=["organization", "key", "value", "device"], name="devtag_org_key_value")]

    def __str__(self) -> str:
        return f"{self.key}={self.value}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The admin's inline creates tags through the form; the organization always follows the device.
        self.organization_id = self.device.organization_id
        super().save(*args, **kwargs)


class SavedView(models.Model):
    """A named Devices page query: its filters, sort and columns, as a validated query string.

    Personal to its owner, or shared with the owner's organization; only the owner renames or deletes it.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="saved_views")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="saved_views")
    name = models.CharField(max_length=80)
    query = models.CharField(max_length=2000, blank=True, default="")
    shared = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "owner", "name"], name="unique_saved_view_name"),
        ]
        # The menu reads an organization's shared views and a user's own in one query.
        indexes = [models.Index(fields=["organization", "shared"], name="saved_view_org_shared")]

    def __str__(self) -> str:
        return f"{self.name} ({self.organization.slug})"


class ColumnChoice(models.Model):
    """The optional columns a user chose for the Devices page (column keys, comma-separated).

    No row: the default columns. The page reads it in the query that loads the user's
    organizations (devices.queries.user_organizations), so it costs the page no query of its own.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="device_columns"
    )
    columns = models.CharField(max_length=300, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.user_id}: {self.columns or '(none)'}"
