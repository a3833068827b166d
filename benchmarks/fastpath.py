"""CPU of one steady-state device fetch through the edge, in process: `.venv/bin/python -m benchmarks.fastpath`.

Calls the WSGI application of the web process (fleetstatus.wsgi: EdgeWSGI in front of Django) with
a prepared environ for `GET /device/v3/<uuid>/state`, as gunicorn would, against a warmed device
cache and heartbeat store, and P4's ceiling (benchmarks/ceiling.py, one Redis GET) the same way.
Prints this process's CPU time per call (time.process_time; median of --runs runs of --calls
calls) for both and their ratio: the part of P4's gap to its ceiling that is the fast path's Python.

A handful of devices (--devices) in the database of FASTPATH_BENCH_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/fleetstatus_bench_fastpath, created if missing; its name must
contain "bench": its devices and fleets are replaced) and REDIS_URL (default DB 14, flushed).
Every device's first fetch takes the database path, which fills the cache and puts the device in
the online set, as in production; every timed fetch must then be answered by the edge (checked).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/fleetstatus_bench_fastpath"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
HOST = "127.0.0.1"
PORT = "8000"


def _setup(url: str) -> None:
    name = urlparse(url).path.lstrip("/")
    if "bench" not in name:
        sys.exit(f"refusing to use database {name!r}: its name must contain 'bench' (its devices are replaced)")
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    sys.path.insert(0, str(ROOT))
    from benchmarks.environment import configure_environment, ensure_database

    configure_environment()  # production settings (DEBUG off), plain HTTP
    ensure_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _seed(count: int) -> list[tuple[str, str]]:
    """(uuid, api key) of `count` fresh active devices in one fleet, Redis emptied."""
    import redis
    from django.conf import settings

    from devices import services
    from devices.live import heartbeats
    from devices.models import Device
    from fleets.models import Fleet, Organization

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    heartbeats.store().reset()
    Device.objects.all().delete()
    Fleet.objects.all().delete()
    Organization.objects.filter(slug="bench-fastpath").delete()
    org = Organization.objects.create(slug="bench-fastpath", name="Bench fast path")
    fleet = Fleet.objects.create(organization=org, slug="fleet", name="Fleet", device_type="generic-amd64")
    devices = []
    for i in range(count):
        uuid = f"{i * 0x1000 + 0x0A0B:04x}" + "c" * 28  # spread over the shards
        _, key = services.create_device(fleet, uuid, name=f"bench-device-{i}")
        devices.append((uuid, key))
    return devices


def environ_for(uuid: str, key: str) -> dict:
    """What gunicorn passes for a device's fetch over plain HTTP on loopback."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": f"/device/v3/{uuid}/state",
        "QUERY_STRING": "",
        "RAW_URI": f"/device/v3/{uuid}/state",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": HOST,
        "SERVER_PORT": PORT,
        "REMOTE_ADDR": HOST,
        "REMOTE_PORT": "50000",
        "HTTP_HOST": f"{HOST}:{PORT}",
        "HTTP_USER_AGENT": "Supervisor/14.0",
        "HTTP_ACCEPT": "*/*",
        "HTTP_AUTHORIZATION": f"Bearer {key}",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _call(app, environ: dict) -> tuple[str, bytes]:
    answer: list[str] = []

    def start_response(status, headers, exc_info=None):
        answer.append(status)

    body = b"".join(app(dict(environ), start_response))
    return answer[0], body


def _cpu_per_call(app, environs: list[dict], calls: int) -> float:
    n = len(environs)
    start = time.process_time()
    for i in range(calls):
        _call(app, environs[i % n])
    return (time.process_time() - start) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions of one more edge run")
    parser.add_argument("--sort", default="tottime", help="cProfile's sort key for --profile (e.g. cumulative)")
    args = parser.parse_args(argv)
    _setup(os.environ.get("FASTPATH_BENCH_DATABASE_URL", DEFAULT_URL))
    devices = _seed(args.devices)

    from benchmarks import ceiling
    from fleetstatus.wsgi import application, django_application

    environs = [environ_for(uuid, key) for uuid, key in devices]
    for environ in environs:  # first fetch: database path, fills the cache, joins the online set
        status, _ = _call(application, environ)
        assert status.startswith("200"), status
    to_django = []

    def counted_django(environ, start_response):
        to_django.append(environ)
        return django_application(environ, start_response)

    application.app = counted_django
    for environ in environs:
        status, body = _call(application, environ)
        assert status.startswith("200") and body, (status, body)
    ceiling._client = ceiling.redis.Redis.from_url(os.environ["REDIS_URL"])
    ceiling.prepare(os.environ["REDIS_URL"])
    bare = [environ_for(uuid, key) for uuid, key in devices]
    _cpu_per_call(application, environs, args.calls // 3)  # warm-up
    _cpu_per_call(ceiling.application, bare, args.calls // 3)

    edge, ceil = [], []
    for _ in range(args.runs):  # interleaved: both see the same machine
        edge.append(_cpu_per_call(application, environs, args.calls))
        ceil.append(_cpu_per_call(ceiling.application, bare, args.calls))
    if to_django:
        sys.exit(f"{len(to_django)} timed fetches went to Django: the edge did not answer them")
    e, c = statistics.median(edge) * 1e6, statistics.median(ceil) * 1e6
    print(f"edge fetch:      {e:7.1f} us CPU per fetch (runs: {', '.join(f'{x * 1e6:.0f}' for x in edge)})")
    print(f"ceiling GET:     {c:7.1f} us CPU per call  (runs: {', '.join(f'{x * 1e6:.0f}' for x in ceil)})")
    print(f"edge / ceiling:  {e / c:7.2f}")
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(_cpu_per_call, application, environs, args.calls)
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(args.sort).print_stats(30)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
