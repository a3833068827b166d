from django.core.management.base import BaseCommand

from fleets import counts


class Command(BaseCommand):
    help = (
        "Recount the devices per organization, fleet and status (the counts the Devices and Fleets pages show) "
        "and re-install the triggers that keep them. Needed only after loading devices with triggers disabled."
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
            if wrong:
                raise SystemExit(1)
            self.stdout.write("counts are exact")
            return
        installed = counts.install_triggers()
        total = counts.rebuild()
        self.stdout.write(("re-installed the triggers; " if installed else "") + f"counted {total} devices")
