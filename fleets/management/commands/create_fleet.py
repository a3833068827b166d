from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from fleets.models import Fleet, Organization, Tier


class Command(BaseCommand):
    help = "Create a fleet in an organization. Prints its provisioning key as the last line (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("fleet_slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--type", dest="fleet_type", choices=Tier.values, default=Tier.FREE)
        parser.add_argument("--device-type", default="raspberrypi4-64")
        parser.add_argument("--poll-interval", type=int, default=None, help="seconds")

    def handle(self, org_slug, fleet_slug, name, fleet_type, device_type, poll_interval, **options):
        try:
            org = Organization.objects.get(slug=org_slug)
        except Organization.DoesNotExist:
            raise CommandError(f"no organization {org_slug!r}") from None
        floor = settings.FLEETSTATUS_MIN_POLL_INTERVAL
        if poll_interval is not None and poll_interval < floor:
            raise CommandError(f"--poll-interval must be at least {floor} seconds (FLEETSTATUS_MIN_POLL_INTERVAL)")
        if Fleet.objects.filter(organization=org, slug=fleet_slug).exists():
            raise CommandError(f"fleet {org_slug}/{fleet_slug} already exists")
        fleet = Fleet(
            organization=org,
            slug=fleet_slug,
            name=name or fleet_slug,
            fleet_type=fleet_type,
            device_type=device_type,
            poll_interval=poll_interval,
        )
        key = fleet.issue_provisioning_key()
        try:
            fleet.full_clean()
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        fleet.save()
        self.stdout.write(f"created fleet {fleet} ({fleet.fleet_type}); provisioning key (shown once):")
        self.stdout.write(key)
