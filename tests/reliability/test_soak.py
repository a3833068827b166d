"""Soak: the device simulator's `flapping` scenario against the real server, worker and beat.

Thousands of virtual devices register, then switch their heartbeats and tunnels on and off at
random and send state reports, over HTTP on loopback. Afterwards, once every heartbeat has had
time to expire, the database must hold:

- every device's stored overall_status == the status recomputed from its signals
  (devices.status.with_computed_status, evaluated by tests/reliability/probe.py);
- every device's transitions an unbroken chain (each from_status is the previous to_status,
  timestamps non-decreasing, the last one equal to the stored status);
- no request answered with a 5xx (the simulator counts them and fails on any).

CI runs the short variant (1,000 devices for about a minute). The full one is
`python3 dev.py test -m soak` (FLEETSTATUS_SOAK_DEVICES / FLEETSTATUS_SOAK_SECONDS override it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from tests.reliability import figures
from tests.reliability.services import ROOT, AppStack, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

# Fleet polling interval: the heartbeat window is 1.5x this; the flapping agents switch polling
# on and off every 0.5-4 s, so statuses change constantly.
POLL_INTERVAL = 4


def _run_soak(stack: AppStack, devices: int, seconds: int) -> dict:
    keys = stack.probe("setup", org="soak", fleet="flappers", poll_interval=POLL_INTERVAL)
    stack.start_web(workers=2, threads=8)
    stack.start_worker()
    stack.start_beat()
    command = [
        sys.executable,
        "manage.py",
        "simulate_devices",
        "--fleet",
        keys["fleet"],
        "--count",
        str(devices),
        "--base-url",
        stack.base_url,
        "--scenario",
        "flapping",
        "--duration",
        str(seconds),
        "--provisioning-key",
        keys["provisioning_key"],
        "--service-key",
        keys["service_key"],
        "--no-state-file",
        "--summary-interval",
        "10",
        "--ramp-up",
        "10",
        "--connections",
        "40",
        "--seed",
        "7",
    ]
    started = time.monotonic()
    sim = subprocess.run(command, cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=seconds + 600)
    elapsed = time.monotonic() - started
    output = sim.stdout + sim.stderr
    final = [line for line in output.splitlines() if line.startswith("simulator done")]
    assert sim.returncode == 0, f"simulator failed ({sim.returncode}):\n{output[-4000:]}"
    assert final, output[-4000:]
    summary = final[-1]
    requests = int(re.search(r"requests (\d+)", summary).group(1))
    errors = re.search(r"errors: ([^;]*)", summary).group(1)
    assert not re.search(r"\b5\d\d: ", errors), f"5xx answers: {summary}"
    registered = re.search(r"registered (\d+)/(\d+)", summary)
    assert registered and registered.group(1) == registered.group(2) == str(devices), summary

    # Every agent has stopped: after one heartbeat window and two sweeps no heartbeat may be online.
    window = POLL_INTERVAL * 1.5
    wait_until(
        lambda: not stack.sql("SELECT 1 FROM devices_device WHERE api_heartbeat_state = 'online' LIMIT 1"),
        timeout=window + 30,
        interval=0.5,
        what="every heartbeat expired after the simulator stopped",
    )
    report = stack.probe("check")
    assert report["devices"] == devices
    assert report["status_mismatches"] == 0, "\n".join(map(str, report["mismatch_examples"]))
    assert report["broken_chains"] == 0, f"{report['broken_chains']} broken chains:\n" + "\n".join(
        report["broken_examples"]
    )
    figures.add(
        "soak",
        devices=report["devices"],
        transitions_checked=report["transitions"],
        requests=requests,
        server_errors=0,
        status_mismatches=0,
        broken_chains=0,
    )
    print(
        f"soak: {devices} devices, {elapsed:.0f}s, {summary}; checked {report['transitions']} transitions; "
        f"final statuses {report['by_status']}"
    )
    return report


def test_soak_flapping_ci(make_stack) -> None:
    report = _run_soak(make_stack(), devices=int(os.environ.get("FLEETSTATUS_SOAK_CI_DEVICES", "1000")), seconds=60)
    # The fleet really moved (not a quiet fleet): beyond its registration every device changed
    # status at least once more. On a loaded 2-core machine fewer devices get to flap in 60 s, so
    # this bound is a floor for "something happened"; correctness is asserted in _run_soak.
    assert report["transitions"] > 2 * report["devices"]


@pytest.mark.soak
def test_soak_flapping_full(make_stack) -> None:
    devices = int(os.environ.get("FLEETSTATUS_SOAK_DEVICES", "3000"))
    seconds = int(os.environ.get("FLEETSTATUS_SOAK_SECONDS", "300"))
    report = _run_soak(make_stack(), devices=devices, seconds=seconds)
    assert report["transitions"] > 3 * report["devices"]
