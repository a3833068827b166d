"""A worker killed mid-delivery: real Celery worker and beat subprocesses against Redis.

The receiver holds the first request open; the worker sending it is killed (SIGKILL); a new worker
sends the same delivery again, with the same X-Fleetstatus-Delivery id, once the lease has passed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from notifications import engine
from notifications.models import Channel, Delivery
from notifications.receiver import Receiver
from tests.test_celery_worker import database_url

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 90  # seconds; workers need a few to start on a busy machine

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "fleetstatus", *command, "--loglevel", "INFO"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def test_worker_killed_mid_delivery_redelivers_with_the_same_id(transactional_db, org, tmp_path):
    receiver = Receiver().start()
    receiver.gate.clear()  # the first request hangs until the test lets it go
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "FLEETSTATUS_VAR_DIR": str(tmp_path),
        "FLEETSTATUS_NOTIFY_TICK_SECONDS": "1",
        "FLEETSTATUS_NOTIFY_LEASE_SECONDS": "3",
        "FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE": "1",
        "CONN_MAX_AGE": "0",
    }
    env.pop("FLEETSTATUS_TEST_DB", None)
    worker_cmd = ["worker", "--pool", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    log = tmp_path / "celery.log"
    channel = Channel.objects.create(organization=org, name="ops", url=receiver.url)
    delivery = engine.send_test(channel)
    beat = start(["beat", "--schedule", str(tmp_path / "beat-schedule")], env, log)
    first = start(worker_cmd, env, log)
    second = None
    try:
        assert receiver.wait_for(1, TIMEOUT), f"no request arrived:\n{log.read_text()[-3000:]}"
        stop(first, signal.SIGKILL)  # killed while the request is in flight
        receiver.gate.set()
        delivery.refresh_from_db()
        assert (delivery.state, delivery.attempts) == ("sending", 1)

        second = start(worker_cmd, env, log)
        deadline = time.monotonic() + TIMEOUT
        while Delivery.objects.get(pk=delivery.pk).state != "delivered":
            if time.monotonic() > deadline:
                pytest.fail(f"not redelivered after {TIMEOUT} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)  # waiting for real processes, bounded by TIMEOUT
    finally:
        for proc in (beat, first, second):
            if proc is not None:
                stop(proc)
        receiver.stop()
    ids = [r.headers["X-Fleetstatus-Delivery"] for r in receiver.received]
    assert ids == [str(delivery.uuid)] * 2
    delivery.refresh_from_db()
    assert delivery.attempts == 2
