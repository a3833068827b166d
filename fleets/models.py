from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models

from fleets.keys import generate_key, hash_key


class Tier(models.TextChoices):
    FREE = "free", "Free"
    PAID = "paid", "Paid"


class StatusNames(models.TextChoices):
    """Which names the pages give the statuses (devices/status_names.py); only labels change."""

    FLEETSTATUS = "fleetstatus", "fleetstatus (Online, Online (VPN Only), Offline, …)"
    BALENA = "balena", "balenaCloud (Operational, Reduced Functionality, Disconnected, …)"


class Organization(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50, unique=True)
    tier = models.CharField(max_length=8, choices=Tier.choices, default=Tier.FREE)
    # None means unlimited.
    device_allowance = models.PositiveIntegerField(null=True, blank=True)
    status_names = models.CharField(
        max_length=12,
        choices=StatusNames.choices,
        default=StatusNames.FLEETSTATUS,
        help_text="The names the pages show for the statuses. Only labels change: URLs, the API and the rule do not.",
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="organizations")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="unique_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class Fleet(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="fleets")
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50)
    device_type = models.CharField(max_length=64, blank=True, default="")
    fleet_type = models.CharField(max_length=8, choices=Tier.choices, default=Tier.FREE)
    # Seconds; None means the installation default. Never below FLEETSTATUS_MIN_POLL_INTERVAL.
    poll_interval = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    cloudlink_enabled = models.BooleanField(default=True)
    provisioning_key_hash = models.CharField(max_length=64, db_index=True, editable=False, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization__name", "name"]
        constraints = [models.UniqueConstraint(fields=["organization", "slug"], name="unique_fleet_slug_per_org")]
        # An organization's fleets in name order: the Devices page's fleet sort walks them and reads
        # each fleet's devices, instead of joining and sorting every device of the organization.
        indexes = [models.Index(fields=["organization", "name"], name="fleet_org_name")]

    def __str__(self) -> str:
        return f"{self.organization.slug}/{self.slug}"

    def issue_provisioning_key(self) -> str:
        """Set a new provisioning key and return it; only its hash is kept (save() is up to the caller)."""
        key = generate_key()
        self.provisioning_key_hash = hash_key(key)
        return key


class ServiceKey(models.Model):
    """A key for the tunnel server (the VPN client-connect/-disconnect endpoints only)."""

    name = models.CharField(max_length=100, blank=True, default="")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name or f"service key #{self.pk}"


# --- Device counts per (organization, fleet, status) --------------------------------------------------
# Maintained by database triggers on devices_device (fleets/counts.py installs them), so every path
# that changes a device — services, bulk UPDATEs of the sweep, tunnel events, the admin, COPY with
# triggers on, deletion — is counted without the application's help. Plain integer columns, no
# foreign keys: a trigger's insert must take no lock on the fleet or organization row.


class StatusCount(models.Model):
    """Folded counts: devices of one fleet in one stored overall status (rows with n = 0 are removed)."""

    organization_id = models.BigIntegerField()
    fleet_id = models.BigIntegerField()
    status = models.CharField(max_length=24)
    n = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization_id", "fleet_id", "status"], name="status_count_key"),
        ]

    def __str__(self) -> str:
        return f"fleet {self.fleet_id} {self.status}: {self.n}"


class StatusCountDelta(models.Model):
    """Append-only changes to StatusCount, written by the triggers (one row per statement and
    (organization, fleet, status) whose count changed) and folded into StatusCount by the beat.
    Writers only ever insert here, so concurrent device writes never wait on a shared counter row."""

    id = models.BigAutoField(primary_key=True)
    organization_id = models.BigIntegerField()
    fleet_id = models.BigIntegerField()
    status = models.CharField(max_length=24)
    n = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["organization_id", "fleet_id"], name="status_delta_org_fleet")]

    def __str__(self) -> str:
        return f"fleet {self.fleet_id} {self.status}: {self.n:+d}"


# --- Device counts per fleet over time (fleets/history.py) --------------------------------------------


class FleetCountSnapshot(models.Model):
    """A fleet's device count per status from `at` until its next snapshot.

    One row per fleet and minute whose counts changed (written by every fold of the kept counts),
    rolled up to one row per hour after a week, pruned with the transitions' retention. One integer
    column per status, so a chart reads plain rows. No foreign keys, like the counts: the fold's
    insert takes no lock on the fleet row.
    """

    id = models.BigAutoField(primary_key=True)
    organization_id = models.BigIntegerField()
    fleet_id = models.BigIntegerField()
    at = models.DateTimeField()
    online = models.IntegerField(default=0)
    online_vpn_only = models.IntegerField(default=0)
    online_heartbeat_only = models.IntegerField(default=0)
    offline = models.IntegerField(default=0)
    configuring = models.IntegerField(default=0)
    updating = models.IntegerField(default=0)
    post_provisioning = models.IntegerField(default=0)
    inactive = models.IntegerField(default=0)
    frozen = models.IntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["fleet_id", "at"], name="fleet_snapshot_key")]
        # Roll-up and pruning walk snapshots by age across all fleets.
        indexes = [models.Index(fields=["at"], name="fleet_snapshot_at")]

    def __str__(self) -> str:
        return f"fleet {self.fleet_id} at {self.at:%Y-%m-%d %H:%M}"
