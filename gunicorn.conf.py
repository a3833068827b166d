"""gunicorn settings of the web process (`gunicorn fleetstatus.wsgi` reads this file from the working directory).

Threaded workers (gthread) with keep-alive: most requests are device fetches that take well under a
millisecond of Python and one Redis round trip (the fetch fast path, devices/api). A sync worker closes every
connection after one response, so each fetch would also pay a TCP handshake and a graceful close
that waits for the client; gthread keeps the connection (a TLS proxy in front reuses its upstream
connections the same way) and a thread waiting on Redis or PostgreSQL lets another one run.
One worker process per core plus one, each with a few threads: the work is Python under the GIL,
so more threads per process only queue; a spare process covers the moments a worker waits.
The comparison of worker shapes is in README "Performance" (python3 dev.py bench --only P4).
"""

from __future__ import annotations

import multiprocessing
import os


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


workers = _int("FLEETSTATUS_WEB_WORKERS", multiprocessing.cpu_count() + 1)
worker_class = os.environ.get("FLEETSTATUS_WEB_WORKER_CLASS", "gthread")
threads = _int("FLEETSTATUS_WEB_THREADS", 4)
# Seconds an idle keep-alive connection stays open (gunicorn's default is 2).
keepalive = _int("FLEETSTATUS_WEB_KEEPALIVE", 30)
backlog = 2048
# A gthread worker keeps every connection it accepts for as long as the client keeps it alive. On
# one shared listening socket the worker that happens to run when connections arrive takes them
# all, and a few long-lived connections (a proxy's upstream pool, a load generator) then load one
# process while the others idle. With reuse_port each worker listens on its own socket and the
# kernel spreads new connections over them. Two servers of the same user can then bind the same
# port without an error, and connections queued on a worker that dies are reset: set
# FLEETSTATUS_WEB_REUSE_PORT=0 to go back to one shared socket.
reuse_port = os.environ.get("FLEETSTATUS_WEB_REUSE_PORT", "1").strip().lower() not in ("0", "false", "no", "off")
