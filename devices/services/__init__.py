"""The one way to change a device.

Every input change (API, sweep, admin, management commands, tests) goes through these functions.
They lock the rows they change, recompute the stored overall status with the rule of
devices.status, and when it changes write a StatusTransition in the same transaction.

- changes: locking, staging, recomputing, and writing a transition (the primitives of the others)
- lifecycle: create, register, preregister, (de)activate, move, staff edits, allowance, fleet and
  organization settings
- heartbeat: counted fetches on the database side, the write-back of the Redis store, expiry
- reporting: state reports
- tunnel: cloudlink tunnel events
- sql: the statements written by hand, each once
"""

from devices.live.heartbeats import WriteBack
from devices.services.changes import (
    BATCH_SIZE,
    DeviceChangeError,
    Transition,
    bulk_update_devices,
    recompute_statuses,
    transition_time,
)
from devices.services.heartbeat import (
    HEARTBEAT_EXPIRED,
    expire_heartbeats,
    extend_heartbeat_deadlines,
    heartbeat_changes,
    record_heartbeat,
    write_back_heartbeats,
)
from devices.services.lifecycle import (
    ADMIN_EDITABLE_FIELDS,
    FROZEN_OVER_ALLOWANCE,
    FROZEN_PAID_FLEET,
    OTHER_ORGANIZATION_MESSAGE,
    UUID_SHAPE_MESSAGE,
    ActivationResult,
    UUIDTaken,
    apply_admin_edit,
    check_move,
    check_poll_interval,
    create_device,
    deactivation_refusal,
    default_device_name,
    move_device,
    move_devices,
    move_refusal,
    poll_interval_floor_message,
    preregister_device,
    reconcile_frozen,
    register_device,
    set_active,
    set_devices_active,
    update_device,
    update_fleet,
    update_organization,
)
from devices.services.reporting import (
    STATE_REPORT_FIELDS,
    STATE_REPORTED,
    STATUS_GUARD_FIELDS,
    apply_state_report,
    state_report_snapshot,
    store_state_report,
)
from devices.services.tags import TagError, check_tag, parse_assignment, set_tag
from devices.services.tunnel import TunnelResult, set_tunnel

__all__ = [
    "TagError",
    "check_tag",
    "parse_assignment",
    "set_tag",
    "ADMIN_EDITABLE_FIELDS",
    "BATCH_SIZE",
    "FROZEN_OVER_ALLOWANCE",
    "FROZEN_PAID_FLEET",
    "HEARTBEAT_EXPIRED",
    "OTHER_ORGANIZATION_MESSAGE",
    "STATE_REPORTED",
    "STATE_REPORT_FIELDS",
    "STATUS_GUARD_FIELDS",
    "UUID_SHAPE_MESSAGE",
    "ActivationResult",
    "DeviceChangeError",
    "Transition",
    "TunnelResult",
    "UUIDTaken",
    "WriteBack",
    "apply_admin_edit",
    "apply_state_report",
    "bulk_update_devices",
    "check_move",
    "check_poll_interval",
    "create_device",
    "deactivation_refusal",
    "default_device_name",
    "expire_heartbeats",
    "extend_heartbeat_deadlines",
    "heartbeat_changes",
    "move_device",
    "move_devices",
    "move_refusal",
    "poll_interval_floor_message",
    "preregister_device",
    "recompute_statuses",
    "reconcile_frozen",
    "record_heartbeat",
    "register_device",
    "set_active",
    "set_devices_active",
    "set_tunnel",
    "state_report_snapshot",
    "store_state_report",
    "transition_time",
    "update_device",
    "update_fleet",
    "update_organization",
    "write_back_heartbeats",
]
