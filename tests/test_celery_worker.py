"""The staleness engine for real: a Celery worker and a Celery beat, as subprocesses, against Redis.

No eager mode: beat schedules `devices.tasks.sweep` every second through the Redis broker, the
worker runs it against the test database, and a device that stops fetching turns Offline on its
own while one that keeps fetching (Redis only, written back by the worker) stays online.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.utils import timezone

from devices import services
from devices.live import heartbeats
from devices.models import Device, StatusTransition, TaskRun
from devices.status import Status

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 90  # seconds; the worker needs a few to start on a busy machine

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


def database_url() -> str:
    """DATABASE_URL of the test database (already created by pytest-django) for the subprocesses."""
    db = settings.DATABASES["default"]
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}{port}/{quote(str(db['NAME']), safe='')}"


@pytest.fixture
def celery_processes(transactional_db, tmp_path):
    """Start `celery worker` and `celery beat`; stop both (their whole process groups) afterwards."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "FLEETSTATUS_SWEEP_INTERVAL": "1",
        "FLEETSTATUS_MIN_POLL_INTERVAL": "1",
        "FLEETSTATUS_VAR_DIR": str(tmp_path),
        "CONN_MAX_AGE": "0",
    }
    env.pop("FLEETSTATUS_TEST_DB", None)
    celery = [sys.executable, "-m", "celery", "-A", "fleetstatus"]
    commands = {
        # solo pool: one process, enough for a sweep per second, light on a shared machine.
        "worker": [*celery, "worker", "--pool", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        "beat": [*celery, "beat", "--schedule", str(tmp_path / "beat-schedule")],
    }
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    try:
        for name, command in commands.items():
            logs[name] = tmp_path / f"{name}.log"
            with logs[name].open("wb") as out:
                procs[name] = subprocess.Popen(
                    [*command, "--loglevel", "INFO"],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        yield procs, logs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def test_worker_and_beat_turn_a_silent_device_offline(settings, make_device, fleet, celery_processes):
    procs, logs = celery_processes
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = 1  # this process computes deadlines too
    services.update_fleet(fleet, {"poll_interval": 2}, reason="test")  # window: 3 s
    silent = make_device()
    chatty = make_device(poll_interval=10)  # window: 15 s, fetches every ~0.5 s below
    started = timezone.now()
    for d in (silent, chatty):
        heartbeats.record_fetch(Device.objects.select_related("fleet").get(pk=d.pk), at=started)
    silent_deadline = Device.objects.get(pk=silent.pk).heartbeat_deadline
    assert silent_deadline == started + timedelta(seconds=3)

    deadline = time.monotonic() + TIMEOUT
    last_fetch = started
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"celery {name} exited with {proc.returncode}:\n{logs[name].read_text()[-3000:]}")
        last_fetch = timezone.now()
        heartbeats.record_fetch(Device.objects.select_related("fleet").get(pk=chatty.pk), at=last_fetch)
        now_silent = Device.objects.get(pk=silent.pk)
        chatty_row = Device.objects.get(pk=chatty.pk)
        if now_silent.overall_status == Status.OFFLINE and chatty_row.last_api_heartbeat_at > started:
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"after {TIMEOUT} s: silent is {now_silent.overall_status}, chatty last written back "
                f"{chatty_row.last_api_heartbeat_at}\nworker log:\n{logs['worker'].read_text()[-3000:]}"
                f"\nbeat log:\n{logs['beat'].read_text()[-2000:]}"
            )
        time.sleep(0.5)  # waiting for real processes, bounded by TIMEOUT

    expiry = StatusTransition.objects.get(device=silent, to_status=Status.OFFLINE)
    assert (expiry.from_status, expiry.at) == (Status.ONLINE_HEARTBEAT_ONLY, silent_deadline)
    # The fetches that only Redis saw were written back by the worker, and kept it online.
    assert Device.objects.get(pk=chatty.pk).overall_status == Status.ONLINE_HEARTBEAT_ONLY
    assert not StatusTransition.objects.filter(device=chatty, to_status=Status.OFFLINE).exists()
    run = TaskRun.objects.get(name="sweep")
    assert run.last_success_at > started and "error" not in run.details
