"""State reports (PATCH /device/v3/state): one UPDATE when the status stays, else a read and the locked path."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from devices.api import parsing as reports
from devices.models import effective_cloudlink
from devices.services.lifecycle import update_device
from devices.services.sql import device_with_fleet, guarded_update, store_report
from devices.status import SIGNALS, compute_status
from fleets.keys import hash_key, key_matches

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


def store_state_report(uuid: str, key: str, changes: dict[str, Any], *, at: datetime) -> bool:
    """Store a device's report in ONE statement if that is all it takes; True if it did.

    The steady report (it leaves the status as it is: devices/services/sql.py, store_report) costs
    one round trip: the device found by UUID and key hash, the status rule checked on the row as
    written, no read before. False means nothing was written and the caller decides with
    state_report_snapshot() and apply_state_report(): an unknown device, a wrong key, a report
    that changes the status (its transition is written under the row lock), or SQLite.
    """
    stored_hash = store_report(uuid, hash_key(key), changes, at)
    # The row was found by this hash already; the constant-time comparison is every key check's.
    return stored_hash is not None and key_matches(key, stored_hash)


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
