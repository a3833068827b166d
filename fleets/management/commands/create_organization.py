from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from fleets.models import Organization, Tier


class Command(BaseCommand):
    help = "Create an organization. Prints its slug as the last line."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--tier", choices=Tier.values, default=Tier.FREE)
        parser.add_argument("--allowance", type=int, default=None, help="device allowance (default: unlimited)")

    def handle(self, slug, name, tier, allowance, **options):
        if allowance is not None and allowance < 0:
            raise CommandError("--allowance must be zero or more")
        if Organization.objects.filter(slug=slug).exists():
            raise CommandError(f"organization {slug!r} already exists")
        org = Organization(slug=slug, name=name or slug, tier=tier, device_allowance=allowance)
        try:
            org.full_clean()
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        org.save()
        self.stdout.write(
            f"created organization {org.name} (tier {org.tier}, allowance {org.device_allowance or 'unlimited'})"
        )
        self.stdout.write(org.slug)
