import re

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from devices import services
from devices.models import UUID_REGEX, Device
from fleets.models import Organization


class Command(BaseCommand):
    help = (
        "Tag devices of an organization: tag_devices <org> key=value [key=value ...] <uuid> [<uuid> ...]. "
        "key= with an empty value removes the tag key from the devices. A key is 1 to 64 characters of "
        "a-z, 0-9, _ . -; a value 1 to 200 printable characters. Any bad organization, UUID or tag writes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("org_slug", help="the organization's slug")
        parser.add_argument(
            "items", nargs="+", metavar="key=value|uuid", help="tags (key=value; key= removes), then device UUIDs"
        )

    def handle(self, org_slug, items, **options):
        organization = Organization.objects.filter(slug=org_slug).first()
        if organization is None:
            raise CommandError(f"no organization {org_slug!r}")
        assignments, uuids = [], []
        for item in items:
            if "=" in item:
                try:
                    assignments.append(services.parse_assignment(item))
                except services.TagError as exc:
                    raise CommandError(str(exc)) from None
            elif re.fullmatch(UUID_REGEX, item.lower()):
                uuids.append(item.lower())
            else:
                raise CommandError(f"{item[:70]!r} is neither key=value nor a device UUID (32 or 62 hex characters)")
        if not assignments:
            raise CommandError("give at least one key=value tag")
        if not uuids:
            raise CommandError("give at least one device UUID")
        devices = Device.objects.filter(organization=organization, uuid__in=uuids)
        found = set(devices.values_list("uuid", flat=True))
        missing = [u for u in dict.fromkeys(uuids) if u not in found]
        if missing:
            raise CommandError(f"no device {', '.join(missing[:10])} in organization {org_slug!r}; nothing written")
        with transaction.atomic():
            for key, value in assignments:
                services.set_tag(devices, key, value)
        for key, value in assignments:
            done = f"tagged {key}={value}" if value is not None else f"removed tag {key} from"
            self.stdout.write(f"{done} {len(found)} device{'s' if len(found) != 1 else ''} of {org_slug}")
