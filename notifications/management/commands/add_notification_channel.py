"""python manage.py add_notification_channel <org> <url> [--name N] [--fleet SLUG ...] [--on S,...]
[--hold SECONDS] [--fleet-threshold PERCENT] [--secret S]; prints the signing secret last."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from devices.status import Status
from fleets.models import Fleet, Organization
from notifications.forms import ChannelForm
from notifications.models import DEFAULT_STATUSES, Channel


class Command(BaseCommand):
    help = "Add a notification channel to an organization; prints its signing secret as the last line."

    def add_arguments(self, parser) -> None:
        parser.add_argument("organization", help="organization slug")
        parser.add_argument("url", help="http(s)://… webhook, mailto:a@example.com, or an Apprise URL")
        parser.add_argument("--name", default="")
        parser.add_argument("--fleet", action="extend", nargs="+", default=[], metavar="SLUG", help="(default: all)")
        parser.add_argument("--on", default=",".join(DEFAULT_STATUSES), help="statuses whose entry notifies")
        parser.add_argument("--hold", type=int, default=60, metavar="SECONDS")
        parser.add_argument("--fleet-threshold", type=int, default=None, metavar="PERCENT")
        parser.add_argument("--secret", default="")

    def handle(self, *args, **options) -> None:
        org = Organization.objects.filter(slug=options["organization"]).first()
        if org is None:
            raise CommandError(f"No organization with slug {options['organization']!r}.")
        fleets = []
        for slug in options["fleet"]:
            fleet = Fleet.objects.filter(organization=org, slug=slug).first()
            if fleet is None:
                raise CommandError(f"Organization {org.slug!r} has no fleet {slug!r}.")
            fleets.append(fleet.pk)
        statuses = [s.strip() for s in options["on"].split(",") if s.strip()]
        unknown = [s for s in statuses if s not in Status.values]
        if unknown or not statuses:
            raise CommandError(
                f"Unknown status {', '.join(unknown) or '(none)'}; choose from {', '.join(Status.values)}."
            )
        url = options["url"]
        name = options["name"] or urlsplit(url).hostname or url.split(":", 1)[0]
        data = {
            "name": name,
            "url": url,
            "fleets": fleets,
            "statuses": statuses,
            "hold_seconds": options["hold"],
            "fleet_threshold": options["fleet_threshold"],
            "enabled": True,
        }
        form = ChannelForm(data, organization=org)
        if not form.is_valid():
            problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())
            raise CommandError(f"Nothing created. {problems}")
        with transaction.atomic():
            channel: Channel = form.save(commit=False)
            if options["secret"]:
                channel.secret = options["secret"]
            channel.save()
            form.save_m2m()
        self.stdout.write(f"Created channel {channel.name!r} ({channel.kind}) for {org.slug}.")
        self.stdout.write(channel.secret)
