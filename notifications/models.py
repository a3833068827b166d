"""Notification channels, mutes, the outbox of status changes and the deliveries made from it.

Flow (docs/notifications.md): a database trigger copies every status transition of an organization
that has a channel into PendingChange, in the transition's own transaction (notifications/outbox.py).
The dispatcher (notifications/engine.py) evaluates due changes per channel (hold, mute, scope),
groups them into Delivery rows, and the sender (notifications/sending.py) delivers each Delivery
with retries; the Delivery's uuid is the id receivers use to drop a redelivery.
"""

from __future__ import annotations

import secrets
import uuid

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from devices.models import Device
from devices.status import Status
from fleets.models import Fleet, Organization

DEFAULT_STATUSES = [Status.OFFLINE.value]


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class Channel(models.Model):
    class Kind(models.TextChoices):
        WEBHOOK = "webhook", "Webhook"
        EMAIL = "email", "Email"
        APPRISE = "apprise", "Apprise"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="notification_channels")
    name = models.CharField(max_length=100)
    # http(s)://… (webhook), mailto:a@example.com[,b@…] (email), any other Apprise URL.
    url = models.CharField(max_length=2000)
    # Signs webhook bodies (HMAC-SHA256); shown once, when the channel is created.
    secret = models.CharField(max_length=100, default=new_secret)
    # Empty = the whole organization.
    fleets = models.ManyToManyField(Fleet, blank=True, related_name="notification_channels")
    # Statuses whose entry notifies; leaving them for a status not listed is the recovery.
    statuses = models.JSONField(default=list)
    hold_seconds = models.PositiveIntegerField(default=60, validators=[MaxValueValidator(24 * 3600)])
    # Percent of a fleet's active devices not online that makes it degraded; None = no fleet events.
    fleet_threshold = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization", "name"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="notify_channel_name")]

    def __str__(self) -> str:
        return f"{self.organization.slug}/{self.name}"

    @property
    def kind(self) -> str:
        return kind_of(self.url)

    @property
    def kind_label(self) -> str:
        return Channel.Kind(self.kind).label

    @property
    def watched(self) -> set[str]:
        return set(self.statuses or DEFAULT_STATUSES)


def kind_of(url: str) -> str:
    lowered = url.lower()
    if lowered.startswith(("http://", "https://")):
        return Channel.Kind.WEBHOOK
    if lowered.startswith("mailto:") and not lowered.startswith("mailto://"):
        return Channel.Kind.EMAIL
    return Channel.Kind.APPRISE


class Mute(models.Model):
    """No notification for a device, or every device of a fleet, for changes before `until`."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="mutes")
    device = models.ForeignKey(Device, null=True, blank=True, on_delete=models.CASCADE, related_name="mutes")
    fleet = models.ForeignKey(Fleet, null=True, blank=True, on_delete=models.CASCADE, related_name="mutes")
    starts_at = models.DateTimeField()
    until = models.DateTimeField()
    reason = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-until"]
        constraints = [
            models.CheckConstraint(
                condition=Q(device__isnull=False, fleet__isnull=True) | Q(device__isnull=True, fleet__isnull=False),
                name="mute_device_or_fleet",
            )
        ]
        indexes = [models.Index(fields=["organization", "until"], name="mute_org_until")]

    def __str__(self) -> str:
        return f"{self.device or self.fleet} muted until {self.until:%Y-%m-%d %H:%M}"


class PendingChange(models.Model):
    """The outbox: one status transition to evaluate, written by a trigger with the transition.

    Plain integer columns (no foreign keys): the trigger's insert must take no lock on other rows.
    """

    id = models.BigAutoField(primary_key=True)
    transition_id = models.BigIntegerField()
    device_id = models.BigIntegerField()
    organization_id = models.BigIntegerField()
    fleet_id = models.BigIntegerField()
    from_status = models.CharField(max_length=24)
    to_status = models.CharField(max_length=24)
    at = models.DateTimeField()
    processed_at = models.DateTimeField(null=True, blank=True)
    # {channel id: [Result, delivery id or None, channel name]} once processed. Kept on this row, not
    # as a row per channel: the dispatcher already updates every change it reads, and a sweep that
    # expires 10,000 devices would otherwise insert 10,000 rows per channel.
    results = models.JSONField(null=True, blank=True)

    class Meta:
        indexes = [
            # The dispatcher reads only unprocessed rows, oldest first.
            models.Index(fields=["at", "id"], name="notify_pending_due", condition=Q(processed_at__isnull=True)),
            models.Index(fields=["transition_id"], name="notify_pending_transition"),
        ]

    def __str__(self) -> str:
        return f"device {self.device_id}: {self.from_status} -> {self.to_status} at {self.at}"


class Result(models.TextChoices):
    """What one channel did with one change: the Device Summary's "notified / held / muted / off"."""

    NOTIFIED = "notified", "notified"
    HELD = "held", "held (changed again within the hold time)"
    MUTED = "muted", "muted"
    OFF = "off", "channel off"


class NotifiedState(models.Model):
    """The last watched status a channel announced for a device: a recovery is sent only after it.

    Plain ids, no foreign keys: the dispatcher upserts one row per announced device in one
    statement, and a key check and index per row would double its cost. Rows of a deleted channel
    are never read again (ids are not reused)."""

    channel_id = models.BigIntegerField()
    device_id = models.BigIntegerField()
    status = models.CharField(max_length=24)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["channel_id", "device_id"], name="notify_state_key")]

    def __str__(self) -> str:
        return f"device {self.device_id} announced {self.status} on {self.channel_id}"


class FleetAlert(models.Model):
    """Fleets a channel has announced as degraded (threshold crossed) and not yet recovered."""

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE)
    fleet = models.ForeignKey(Fleet, on_delete=models.CASCADE)
    since = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["channel", "fleet"], name="notify_fleet_alert_key")]

    def __str__(self) -> str:
        return f"fleet {self.fleet_id} degraded on {self.channel_id} since {self.since}"


class Delivery(models.Model):
    """One message to one channel, and its delivery attempts (the delivery log)."""

    class State(models.TextChoices):
        COLLECTING = "collecting", "collecting"
        PENDING = "pending", "waiting to send"
        SENDING = "sending", "sending"
        DELIVERED = "delivered", "delivered"
        FAILED = "failed", "failed"

    class Event(models.TextChoices):
        CHANGES = "devices.status_changed", "devices.status_changed"
        DEGRADED = "fleet.degraded", "fleet.degraded"
        RECOVERED = "fleet.recovered", "fleet.recovered"
        TEST = "test", "test"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=24, choices=Event.choices)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    # devices.status_changed: {"changes": [...]}; fleet events: the event's fields.
    payload = models.JSONField(default=dict)
    size = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # A sender owns the row until then; a worker that died leaves it to be sent again (same uuid).
    lease_until = models.DateTimeField(null=True, blank=True)
    # Handed to the queue until then: the dispatcher does not queue it again meanwhile (workers that
    # fall behind would otherwise find the same delivery queued once per tick).
    queued_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.IntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["channel", "-created_at"], name="notify_delivery_channel"),
            models.Index(
                fields=["next_attempt_at"],
                name="notify_delivery_due",
                condition=Q(state__in=["pending", "sending"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} to {self.channel_id} ({self.state})"
