"""Drive virtual devices against a fleetstatus server over HTTP (the `simulator` package).

Without --provisioning-key/--service-key the keys come from var/demo.json, written by load_demo,
so `dev.py run` can start it from the Procfile with no secrets on the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from simulator import MIXED, SCENARIO_CHOICES, Options, SimulatorError, run_simulator

FLEET_RE = re.compile(r"^[-a-zA-Z0-9_]+/[-a-zA-Z0-9_]+$")


def demo_secrets_path() -> Path:
    return settings.VAR_DIR / "demo.json"


def positive_float(value: str) -> float:
    # ArgumentTypeError, not CommandError: argparse turns it into a usage error (exit 2 on the
    # command line, CommandError under call_command).
    try:
        number = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from exc
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {value!r}")
    return number


class Command(BaseCommand):
    help = "Simulate N devices of a fleet over HTTP: registration, target-state polling, state reports, tunnels."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--fleet", required=True, help="<org-slug>/<fleet-slug>")
        parser.add_argument("--count", type=int, required=True, help="number of virtual devices")
        parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="fleetstatus server to talk to")
        parser.add_argument("--scenario", default=MIXED, choices=SCENARIO_CHOICES)
        parser.add_argument(
            "--duration", type=positive_float, help="stop after this many seconds (default: run until Ctrl-C)"
        )
        parser.add_argument("--provisioning-key", help="the fleet's provisioning key (default: from var/demo.json)")
        parser.add_argument("--service-key", help="a tunnel-server service key (default: from var/demo.json)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the scenario mix and device behaviour")
        parser.add_argument(
            "--poll-scale",
            type=positive_float,
            default=1.0,
            help="multiply every interval the server sends (e.g. 0.2 to poll five times as often in a demo)",
        )
        parser.add_argument("--device-type", default="raspberrypi5", help="device type sent when registering")
        parser.add_argument("--connections", type=int, default=20, help="size of the HTTP connection pool")
        parser.add_argument("--service-id", type=int, default=1, help="serviceId of the simulated tunnel server")
        parser.add_argument(
            "--state-file",
            help="where device UUIDs and API keys are kept between runs (default: var/simulator-<org>-<fleet>.json)",
        )
        parser.add_argument("--no-state-file", action="store_true", help="register new devices every run")
        parser.add_argument(
            "--summary-interval", type=float, default=10.0, help="seconds between summary lines (0: none)"
        )
        parser.add_argument(
            "--wait", type=positive_float, default=120.0, help="seconds to wait for the server to answer"
        )
        parser.add_argument("--ramp-up", type=float, default=5.0, help="spread device start-up over this many seconds")

    def handle(self, **options) -> None:
        fleet = options["fleet"]
        if not FLEET_RE.match(fleet):
            raise CommandError(f"--fleet must be <org-slug>/<fleet-slug>, got {fleet!r}")
        if options["count"] < 1:
            raise CommandError("--count must be at least 1")
        if options["connections"] < 1:
            raise CommandError("--connections must be at least 1")
        if options["ramp_up"] < 0 or options["summary_interval"] < 0:
            raise CommandError("--ramp-up and --summary-interval cannot be negative")
        provisioning_key, service_key = self._keys(fleet, options["provisioning_key"], options["service_key"])
        if options["no_state_file"]:
            state_file = None
        elif options["state_file"]:
            state_file = Path(options["state_file"])
        else:
            state_file = settings.VAR_DIR / f"simulator-{fleet.replace('/', '-')}.json"

        sim_options = Options(
            base_url=options["base_url"],
            fleet=fleet,
            count=options["count"],
            provisioning_key=provisioning_key,
            service_key=service_key,
            scenario=options["scenario"],
            duration=options["duration"],
            seed=options["seed"],
            poll_scale=options["poll_scale"],
            device_type=options["device_type"],
            connections=options["connections"],
            state_file=state_file,
            service_id=options["service_id"],
            summary_interval=options["summary_interval"],
            wait_timeout=options["wait"],
            ramp_up=options["ramp_up"],
        )
        # httpx logs every request at INFO: thousands of lines a second with thousands of devices.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        try:
            result = run_simulator(sim_options, self._write)
        except SimulatorError as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            raise CommandError("interrupted") from None
        if result.fatal:
            raise CommandError(result.fatal)
        if result.stats.server_errors:
            raise CommandError(f"the server answered {result.stats.server_errors} requests with a 5xx error")

    def _write(self, line: str) -> None:
        self.stdout.write(line)
        # honcho reads our stdout through a pipe: without a flush the lines arrive in bursts.
        self.stdout.flush()

    def _keys(self, fleet: str, provisioning_key: str | None, service_key: str | None) -> tuple[str, str]:
        if provisioning_key and service_key:
            return provisioning_key, service_key
        path = demo_secrets_path()
        try:
            demo = json.loads(path.read_text())
        except FileNotFoundError:
            demo = {}
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read {path}: {exc}") from exc
        provisioning_key = provisioning_key or (demo.get("provisioning_keys") or {}).get(fleet)
        service_key = service_key or demo.get("service_key")
        if not provisioning_key:
            raise CommandError(
                f"no provisioning key for {fleet}: pass --provisioning-key (or run load_demo for the demo fleets)"
            )
        if not service_key:
            raise CommandError("no service key: pass --service-key (create one with create_service_key)")
        return provisioning_key, service_key
