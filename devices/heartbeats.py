"""Counted target-state fetches (heartbeats).

The device API calls `record_fetch()` for every counted fetch. Without Redis it is the database
path of devices.services.record_heartbeat (one conditional UPDATE for a device already online).
"""

from __future__ import annotations

from datetime import datetime

from devices import services
from devices.models import Device


def record_fetch(device: Device, *, at: datetime | None = None) -> Device:
    return services.record_heartbeat(device, at=at)
