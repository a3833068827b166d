#!/usr/bin/env python3
"""The README's commands, with nothing but Python installed.

    python3 dev.py run     # virtualenv + runtime packages, migrate, demo data, web + worker + beat + simulator
    python3 dev.py test    # the test suite (extra arguments go to pytest)
    python3 dev.py bench   # the benchmarks (extra arguments go to python -m benchmarks; see --help)
    python3 dev.py lint    # ruff check and ruff format --check of the whole repository

Standard library only: it builds .venv and installs what the command needs there: `run` only
requirements.txt (runtime), the others requirements-dev.txt (runtime + tests and tooling). Each file
set has its own stamp in .venv, so a change to a requirements file re-installs on the next command
that needs it. DATABASE_URL / REDIS_URL switch run and test to PostgreSQL and Redis; without them
they use SQLite in ./var and a broker on the filesystem.
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


RUNTIME = ROOT / "requirements.txt"
DEV = ROOT / "requirements-dev.txt"


def requirement_files(top: Path) -> list[Path]:
    """top and every file it includes with `-r` (pip's own syntax), in order."""
    files = [top]
    for line in top.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("-r", "--requirement"):
            files += requirement_files(top.parent / parts[1])
    return files


def ensure_venv(requirements: Path) -> None:
    """Create .venv if needed and install `requirements` unless its stamp says it is already there."""
    digest = hashlib.sha256(sys.version.encode())
    for path in requirement_files(requirements):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    stamp = VENV / f".{requirements.stem}.sha256"
    if PYTHON.exists() and stamp.exists() and stamp.read_text() == digest.hexdigest():
        return
    if not PYTHON.exists():
        print(f"creating virtualenv in {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
        subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    print(f"installing {requirements.name}", flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True)
    stamp.write_text(digest.hexdigest())


def venv_env(**defaults: str) -> dict[str, str]:
    env = {**defaults, **os.environ}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    return env


def manage(env: dict[str, str], *args: str, capture: bool = False) -> str:
    # Only stdout is captured: errors still reach the terminal as they happen.
    stdout = subprocess.PIPE if capture else None
    result = subprocess.run([str(PYTHON), "manage.py", *args], cwd=ROOT, env=env, check=True, text=True, stdout=stdout)
    return result.stdout or ""


def run(args: list[str]) -> int:
    ensure_venv(RUNTIME)
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
    demo = manage(env, "load_demo", capture=True)
    print(demo, end="", flush=True)
    login = next((line for line in demo.splitlines() if line.startswith("login:")), "login: see above")
    var_dir = ROOT / (env.get("FLEETSTATUS_VAR_DIR") or "var")  # the Procfile resolves it from ROOT too
    var_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"\nfleetstatus is starting on http://127.0.0.1:{env['PORT']}/  ({login}; Ctrl-C stops it)"
        f"\nthe web server's access log goes to {var_dir / 'access.log'}\n",
        flush=True,
    )
    os.chdir(ROOT)
    os.execve(str(BIN / "honcho"), [str(BIN / "honcho"), "start", "-f", str(ROOT / "Procfile"), *args], env)
    return 0


def test(args: list[str]) -> int:
    ensure_venv(DEV)
    return subprocess.run([str(PYTHON), "-m", "pytest", *args], cwd=ROOT, env=venv_env()).returncode


def bench(args: list[str]) -> int:
    ensure_venv(DEV)
    return subprocess.run([str(PYTHON), "-m", "benchmarks", *args], cwd=ROOT, env=venv_env()).returncode


def lint(args: list[str]) -> int:
    ensure_venv(DEV)
    ruff = str(BIN / "ruff")
    # Both always run, so one command shows every finding; the result fails if either does.
    check = subprocess.run([ruff, "check", ".", *args], cwd=ROOT, env=venv_env()).returncode
    fmt = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, env=venv_env()).returncode
    return check or fmt


COMMANDS = {"run": run, "test": test, "bench": bench, "lint": lint}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__.strip())
        return 2
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
