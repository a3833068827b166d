"""Device identities kept between runs (var/simulator-<org>-<fleet>.json), so a restart re-uses them."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from simulator.options import SimulatorError


@dataclass
class SimDevice:
    uuid: str
    api_key: str
    registered: bool = False

    @classmethod
    def new(cls) -> SimDevice:
        return cls(uuid=secrets.token_hex(16), api_key=secrets.token_hex(16))


def load_state(path: Path, fleet: str) -> list[SimDevice]:
    """Devices of an earlier run for this fleet, so a restarted simulator does not register new ones."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise SimulatorError(f"cannot read the simulator state file {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("fleet") != fleet:
        raise SimulatorError(
            f"{path} belongs to fleet {data.get('fleet') if isinstance(data, dict) else '?'!r}, not {fleet!r}"
        )
    devices = []
    for item in data.get("devices", []):
        try:
            devices.append(
                SimDevice(uuid=str(item["uuid"]), api_key=str(item["api_key"]), registered=bool(item.get("registered")))
            )
        except (KeyError, TypeError) as exc:
            raise SimulatorError(f"{path}: bad device entry {item!r}") from exc
    return devices


def save_state(path: Path, fleet: str, devices: Sequence[SimDevice]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    payload = {
        "fleet": fleet,
        "devices": [{"uuid": d.uuid, "api_key": d.api_key, "registered": d.registered} for d in devices],
    }
    # Device API keys are secrets: owner-only file, replaced atomically so a kill mid-write never
    # leaves a half file behind.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=1)
    os.replace(tmp, path)
