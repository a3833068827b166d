from django.core.management.base import BaseCommand

from devices import search
from fleets import counts


class Command(BaseCommand):
    help = (
        "Recount the devices per organization, fleet and status (the counts the Devices and Fleets pages show) "
        "and copy them into the search table, re-installing the triggers that keep both. "
        "Needed only after loading devices with triggers disabled."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--check", action="store_true", help="only compare the counts with the devices; exit 1 if they differ"
        )

    def handle(self, *args, check: bool = False, **options):
        if check:
            wrong = counts.mismatches()
            for (org, fleet, status), (kept, real) in sorted(wrong.items()):
                self.stdout.write(f"organization {org} fleet {fleet} {status}: counted {kept}, actually {real}")
            stale = search.mismatches()
            if stale:
                self.stdout.write(f"search rows differ from the devices for ids {', '.join(map(str, stale))}")
            if wrong or stale:
                raise SystemExit(1)
            self.stdout.write("counts are exact, and so are the search rows")
            return
        installed = counts.install_triggers()
        installed = search.install_triggers() or installed
        total = counts.rebuild()
        copied = search.rebuild()
        self.stdout.write(
            ("re-installed the triggers; " if installed else "")
            + f"counted {total} devices; copied {copied} for search"
        )
