"""State reports (PATCH /device/v3/state): one read, then one guarded UPDATE when the status stays."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from devices.api import parsing as reports
from devices.models import effective_cloudlink
from devices.services.lifecycle import update_device
from devices.services.sql import device_with_fleet, guarded_update
from devices.status import SIGNALS, compute_status

STATE_REPORTED = "state report"
# Every column a state report can write (devices/api/parsing.py), the two contact times included.
STATE_REPORT_FIELDS: tuple[str, ...] = (
    *reports.REPORT_TEXT_FIELDS,
    *reports.REPORT_INT_FIELDS,
    *reports.REPORT_BOOL_FIELDS,
    # What the apps part of a report reduces to (reports.summarize_apps).
    "update_status",
    "download_progress",
    "release",
    "last_state_report_at",
    "last_seen_at",
)
# What the overall status of a device is decided on, as stored on its row: the rule's signals
# (effective_cloudlink is the device override, else its fleet's switch) and the status itself.
_ROW_SIGNALS: tuple[str, ...] = tuple(s for s in SIGNALS if s != "effective_cloudlink")
STATUS_GUARD_FIELDS: tuple[str, ...] = (*_ROW_SIGNALS, "cloudlink_enabled", "overall_status")
_MISSING = object()

_SNAPSHOT_FIELDS: tuple[str, ...] = tuple(
    sorted({"pk", "uuid", "api_key_hash", "fleet__cloudlink_enabled", *STATUS_GUARD_FIELDS, *STATE_REPORT_FIELDS})
)


def state_report_snapshot(uuid: str) -> dict[str, Any] | None:
    """The one read of a state report: the device's key hash, status inputs and reportable columns.

    Not locked: apply_state_report() writes only under a guard that these values still hold.
    """
    return device_with_fleet(uuid, _SNAPSHOT_FIELDS)


def apply_state_report(snapshot: Mapping[str, Any], changes: dict[str, Any], *, at: datetime) -> bool:
    """Store a state report of the device read by state_report_snapshot(); True if one UPDATE did it.

    A report that cannot change the overall status (the rule of devices.status, evaluated on the
    read signals with the reported ones applied) is ONE plain UPDATE of the columns whose value
    changes, guarded by every status input and the status as read: if anything the status depends
    on changed since the read, the guard matches no row and the report takes the locked path.
    Otherwise update_device() locks the row, recomputes and writes the transition, as for any
    change (and moves update_status_changed_at when update_status changes, compared on the locked
    row). Raises Device.DoesNotExist if the device is gone.
    """
    signals = {name: changes.get(name, snapshot[name]) for name in _ROW_SIGNALS}
    signals["effective_cloudlink"] = effective_cloudlink(
        snapshot["cloudlink_enabled"], snapshot["fleet__cloudlink_enabled"]
    )
    if compute_status(signals).value == snapshot["overall_status"]:
        # (A report writes no field the device cache holds: nothing to invalidate.)
        diff = {name: value for name, value in changes.items() if snapshot.get(name, _MISSING) != value}
        if not diff:
            return True
        if "update_status" in diff:
            # "Update status since": only a change of the value moves it, in the same UPDATE (whose
            # guard includes update_status, so the snapshot's value is the one being replaced).
            diff["update_status_changed_at"] = at
        if guarded_update(snapshot["pk"], {name: snapshot[name] for name in STATUS_GUARD_FIELDS}, diff):
            return True
    update_device(snapshot["pk"], changes, reason=STATE_REPORTED, at=at)
    return False
