#!/usr/bin/env python3
"""The two commands of the README, with nothing but Python installed.

    python3 dev.py run     # virtualenv + install, migrate, demo data, web + worker + beat + simulator
    python3 dev.py test    # the test suite (extra arguments go to pytest)

Standard library only: it builds .venv from requirements.txt (again whenever that file changes)
and then runs everything from there. DATABASE_URL / REDIS_URL switch both commands to PostgreSQL
and Redis; without them they use SQLite in ./var and a broker on the filesystem.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def ensure_venv() -> None:
    requirements = (ROOT / "requirements.txt").read_bytes()
    digest = hashlib.sha256(requirements + sys.version.encode()).hexdigest()
    stamp = VENV / ".requirements.sha256"
    if PYTHON.exists() and stamp.exists() and stamp.read_text() == digest:
        return
    if not PYTHON.exists():
        print(f"creating virtualenv in {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    print("installing requirements.txt", flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "-r", str(ROOT / "requirements.txt")], check=True)
    stamp.write_text(digest)


def venv_env(**defaults: str) -> dict[str, str]:
    env = {**defaults, **os.environ}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    return env


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([str(PYTHON), "manage.py", *args], cwd=ROOT, env=env, check=True)


def run(args: list[str]) -> int:
    ensure_venv()
    # Demo defaults (each can be overridden from the environment): debug mode for a local
    # laptop, and short polling intervals so statuses visibly change within a minute.
    env = venv_env(
        DEBUG="1",
        PORT="8000",
        FLEETSTATUS_DEFAULT_POLL_INTERVAL="30",
        FLEETSTATUS_MIN_POLL_INTERVAL="10",
        FLEETSTATUS_SIMULATED_DEVICES="60",
    )
    env["FLEETSTATUS_WEB_PORT"] = env["PORT"]
    manage(env, "migrate", "--noinput")
    manage(env, "load_demo")
    print(f"\nfleetstatus is starting on http://127.0.0.1:{env['PORT']}/  (log in as shown above; Ctrl-C stops it)\n", flush=True)
    os.chdir(ROOT)
    os.execve(str(BIN / "honcho"), [str(BIN / "honcho"), "start", "-f", str(ROOT / "Procfile"), *args], env)
    return 0


def test(args: list[str]) -> int:
    ensure_venv()
    return subprocess.run([str(PYTHON), "-m", "pytest", *args], cwd=ROOT, env=venv_env()).returncode


def bench(args: list[str]) -> int:
    ensure_venv()
    return subprocess.run([str(PYTHON), "-m", "benchmarks", *args], cwd=ROOT, env=venv_env()).returncode


COMMANDS = {"run": run, "test": test, "bench": bench}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__.strip())
        print("\nalso: python3 dev.py bench   # the benchmarks (needs DATABASE_URL and REDIS_URL)")
        return 2
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
