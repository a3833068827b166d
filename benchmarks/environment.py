"""Where the benchmarks run: the environment of a production process pointed at the bench database.

Shared by `python -m benchmarks` (cli.py) and the figures' small standalone entry points, which
import this module rather than the CLI (the CLI imports the figures).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/fleetstatus_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/6"
ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(message, flush=True)


def configure_environment(own_postgres_url: str | None = None) -> None:
    """Settings of a production process (DEBUG off) pointed at the bench database and Redis DB.

    own_postgres_url: the bench's own PostgreSQL (benchmarks/pgserver.py), used when DATABASE_URL is unset."""
    database_default = own_postgres_url or DEFAULT_DATABASE_URL
    for name, default in (("DATABASE_URL", database_default), ("REDIS_URL", DEFAULT_REDIS_URL)):
        if os.environ.get(name):
            log(f"{name}={os.environ[name]}")
        else:
            os.environ[name] = default
            log(f"{name} not set: using the bench default {default}")
    if os.environ.get("DEBUG", "0").lower() not in ("", "0", "false", "no", "off"):
        log("DEBUG is on in the environment: the benchmarks turn it off (they measure the production setup)")
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("SECRET_KEY", "fleetstatus-bench-only-not-secret-" + "x" * 20)
    # Plain HTTP on loopback; the in-process test client talks as host "testserver".
    os.environ["FLEETSTATUS_HTTPS"] = "0"
    os.environ["ALLOWED_HOSTS"] = "127.0.0.1,localhost,testserver"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "fleetstatus.settings"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def ensure_database() -> None:
    """Create the bench database when it does not exist yet (a fresh clone needs only a running server)."""
    import dj_database_url
    import psycopg
    from psycopg import sql

    config = dj_database_url.parse(os.environ["DATABASE_URL"])
    if "postgresql" not in config["ENGINE"] or "bench" not in config["NAME"]:
        return  # seed.py refuses anything but a PostgreSQL database named *bench*, with a message
    conninfo = psycopg.conninfo.make_conninfo(
        dbname="postgres",
        user=config.get("USER") or None,
        password=config.get("PASSWORD") or None,
        host=config.get("HOST") or None,
        port=config.get("PORT") or None,
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [config["NAME"]]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(config["NAME"])))
            log(f"created database {config['NAME']}")
