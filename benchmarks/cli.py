"""`python -m benchmarks`: migrate, seed, run the figures P1-P13 (README "Performance"), print one table.

python3 dev.py bench                   # everything
python3 dev.py bench --only P1,P4      # some figures
python3 dev.py bench --skip-seed       # reuse the data of the last seed
python3 dev.py bench --seed-only       # migrate and seed, run no figure
python3 dev.py bench --quick           # 100,000 devices: a smoke run, not the targets
python3 dev.py bench --json out.json   # also write the results as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.environment import DEFAULT_DATABASE_URL, configure_environment, ensure_database, log

ALL = ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10", "P11", "P12", "P13"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python3 dev.py bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", help="comma-separated figures to run, e.g. P1,P4 (default: all)")
    p.add_argument(
        "--skip-seed", action="store_true", help="reuse the seeded data (fails when there is none for this size)"
    )
    p.add_argument("--seed-only", action="store_true", help="migrate and seed (wiping the bench database), then stop")
    p.add_argument(
        "--quick", action="store_true", help="100,000 devices and short runs: checks the harness, not the targets"
    )
    p.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    p.add_argument(
        "--profile", action="store_true", help="profile (pyinstrument) every in-process figure that misses its target"
    )
    p.add_argument(
        "--shared-postgres",
        action="store_true",
        help=f"without DATABASE_URL, use {DEFAULT_DATABASE_URL} instead of the bench's own tuned server",
    )
    p.add_argument(
        "--load-seconds", type=int, default=None, help="length of each P4/P5 load run (default 60; 10 with --quick)"
    )
    args = p.parse_args(argv)
    if args.seed_only and args.skip_seed:
        p.error("--seed-only and --skip-seed exclude each other")
    only = [x.strip().upper() for x in args.only.split(",")] if args.only else ALL
    unknown = [x for x in only if x not in ALL]
    if unknown:
        p.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")
    args.figures = only
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    own_server = None
    if not os.environ.get("DATABASE_URL") and not args.shared_postgres:
        # The bench's own server, configured for a large fleet (see benchmarks/pgserver.py).
        from benchmarks.pgserver import BenchPostgres

        own_server = BenchPostgres(log)
        own_server.start()
    try:
        return run(args, own_server.url if own_server else None)
    finally:
        if own_server:
            own_server.stop()


def run(args: argparse.Namespace, own_postgres_url: str | None) -> int:
    configure_environment(own_postgres_url)
    ensure_database()
    import django

    django.setup()
    from django.core.management import call_command

    from benchmarks import installations, report, runners, seed
    from benchmarks.context import Context

    started = time.perf_counter()
    plan = seed.QUICK if args.quick else seed.FULL
    m = report.machine()
    log(f"\nfleetstatus benchmarks ({plan.name}: {plan.total_devices:,} devices); load average {m['load_average']}")
    log("migrating")
    call_command("migrate", verbosity=0, interactive=False)
    # As a production deployment does: whitenoise serves from STATIC_ROOT (and warns without it).
    call_command("collectstatic", verbosity=0, interactive=False)
    if args.skip_seed:
        if not seed.is_seeded(plan):
            log(f"--skip-seed: no {plan.name!r} data in this database; run without --skip-seed first")
            return 2
        log(f"--skip-seed: reusing the data seeded at {seed.get_meta('seed')['seeded_at']}")
        seed.restore_deferred_indexes(log)  # if the last seed died half-way
        # Earlier runs updated many rows (P5-P7 write devices, P6 re-arms 10,000 of them); where
        # autovacuum is off (as on the shared test server) index-only scans would degrade run by run.
        seed.vacuum(log=log)
    else:
        made = seed.seed_and_record(plan, log=log)
        # The smaller installations (P6, P12) describe the data just replaced: seeded again when needed.
        installations.drop_all(log=log)
        if args.seed_only:
            log(
                f"seeded {made['devices']:,} devices and {made['transitions']:,} transitions"
                f" in {made['seconds']['total']} s"
            )
            return 0
    ctx = Context.load(plan=plan, args=args, log=log)

    rows: list[report.Row] = []
    benchmarks: dict[str, Callable] = runners.ALL
    for figure in args.figures:
        log(f"\n== {figure}")
        t0 = time.perf_counter()
        try:
            rows.extend(benchmarks[figure](ctx))
        except report.NotAvailable as exc:
            rows.append(
                report.Row(figure, runners.TITLES[figure], runners.TARGETS[figure], f"not available yet: {exc}", None)
            )
        except Exception as exc:  # noqa: BLE001 - one broken figure must not hide the others
            traceback.print_exc()
            rows.append(
                report.Row(
                    figure,
                    runners.TITLES[figure],
                    runners.TARGETS[figure],
                    f"error: {exc.__class__.__name__}: {exc}",
                    False,
                )
            )
        log(f"   ({time.perf_counter() - t0:.0f} s)")
    ctx.close()

    m["load_average_end"] = report.load_average()
    elapsed = time.perf_counter() - started
    log(f"\nResults ({plan.name} data, {elapsed / 60:.1f} min in all)\n")
    log(report.table(rows))
    log("")
    log(report.machine_text(m))
    if plan is seed.QUICK:
        log("--quick: 100,000 devices and short load runs; these figures check the harness, not the targets")
    if args.json:
        Path(args.json).write_text(
            json.dumps(report.as_json(rows, m, {"plan": plan.name, "seconds": round(elapsed)}), indent=2, default=str)
        )
        log(f"wrote {args.json}")
    return 0 if all(r.ok is not False for r in rows) else 1
