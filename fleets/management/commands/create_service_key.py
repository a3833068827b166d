from django.core.management.base import BaseCommand

from fleets.keys import generate_key, hash_key
from fleets.models import ServiceKey


class Command(BaseCommand):
    help = "Create an API key for the tunnel server (VPN endpoints only). Prints the key as the last line (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("--name", default="")

    def handle(self, name, **options):
        key = generate_key()
        ServiceKey.objects.create(name=name[:100], key_hash=hash_key(key))
        self.stdout.write("service key (shown once):")
        self.stdout.write(key)
