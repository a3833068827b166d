"""python manage.py seed_bench [--quick]: the benchmark data of issue 8 (see benchmarks/seed.py).

Wipes the database it points at (its name must contain "bench") and the Redis DB of REDIS_URL.
`python3 dev.py bench` seeds by itself; this is for seeding alone.
"""

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Seed 1,000,000 benchmark devices (100,000 with --quick). Wipes the database: its name must contain 'bench'."

    def add_arguments(self, parser):
        parser.add_argument("--quick", action="store_true", help="100,000 devices instead of 1,000,000")

    def handle(self, *args, quick: bool = False, **options):
        from benchmarks import seed

        plan = seed.QUICK if quick else seed.FULL
        made = seed.seed_and_record(plan, log=self.stdout.write)
        self.stdout.write(
            f"seeded {made['devices']:,} devices and {made['transitions']:,} transitions in {made['seconds']['total']} s"
        )
