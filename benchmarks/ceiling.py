"""P4's ceiling: a bare WSGI app that makes one Redis call per request and nothing else.

Served by gunicorn with the production settings (gunicorn.conf.py) under P4's wrk load, it measures
what this machine's gunicorn, Redis and load generator allow for one Redis round trip per request,
so the heartbeat figure can be read as a share of it. It answers every path (P4's requests are
sent unchanged) with a small JSON body and the worker's pid in X-Worker-Pid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import redis

KEY = "fleetstatus:bench:ceiling"
BODY = b'{"ceiling": true}'

_client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/6"))


def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
    value = _client.get(KEY)
    status = "200 OK" if value is not None else "503 Service Unavailable"
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(BODY))),
            ("X-Worker-Pid", str(os.getpid())),
        ],
    )
    return [BODY]


def prepare(url: str) -> None:
    """The key every request reads (a 503 otherwise, which wrk counts as an error)."""
    redis.Redis.from_url(url).set(KEY, b"1")
