"""P10 and P11 on a shared-machine-sized installation (125,000 devices in 1,000 fleets), seeded once:

    .venv/bin/python -m benchmarks.readapi_small

The full figures come from `python3 dev.py bench --only P10,P11` on the 1,000,000-device plan.
"""

from __future__ import annotations

import os
import sys

from benchmarks import readapi


def main() -> int:
    """Seed the read API's plan if needed and print P10 and P11 (one command, shared-machine sized)."""
    import argparse

    from benchmarks import environment as cli

    os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/fleetstatus_bench_readapi")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/7")
    cli.configure_environment()
    cli.ensure_database()
    import django

    django.setup()
    from django.core.management import call_command

    from benchmarks import report, seed
    from benchmarks.context import Context

    plan = seed._plan(
        "readapi",
        large=100_000,
        large_fleets=100,
        other_devices=[3_000] * 8,
        other_fleets=[112] * 7 + [106],
        due=1_000,
    )
    call_command("migrate", verbosity=0, interactive=False)
    if seed.is_seeded(plan):
        cli.log(f"reusing the {plan.name!r} data seeded at {seed.get_meta('seed')['seeded_at']}")
    else:
        seed.seed_and_record(plan, log=cli.log)
    args = argparse.Namespace(load_seconds=None, profile=False)
    ctx = Context.load(plan=plan, args=args, log=cli.log)
    rows = readapi.p10(ctx) + readapi.p11(ctx)
    cli.log("\n" + report.table(rows))
    cli.log("\n" + report.machine_text(report.machine()))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
