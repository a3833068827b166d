"""The Device Summary page's reading of one device: why it has its status, its history and uptime.

The explanation reuses devices.status.RULES (the first rule that matches is *the* reason), so the
page can never explain a status with different logic from the one that decided it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import DurationField, ExpressionWrapper, F, Q, Sum, Value

from devices import status_names
from devices.models import Device, StatusTransition, heartbeat_window
from devices.status import RULES, HeartbeatState, Status, UpdateStatus, compute_status

# Status changes per page of the Device Summary's history (older pages: ?before=<transition id>).
HISTORY_LIMIT = 25
UPTIME_WINDOWS: tuple[tuple[str, timedelta], ...] = (
    ("24 h", timedelta(hours=24)),
    ("7 d", timedelta(days=7)),
    ("30 d", timedelta(days=30)),
)
PARTIAL = (Status.ONLINE_VPN_ONLY.value, Status.ONLINE_HEARTBEAT_ONLY.value)
NO_DATA = ""  # the from_status of a device's first transition: before it existed

# What each status means (docs/design.md, Statuses), shown under the badge.
MEANINGS: dict[str, str] = {
    "online": "Both links work: it fetches its target state on time and its cloudlink tunnel is up.",
    "online-vpn-only": "Its tunnel is up, but it has not fetched its target state within its polling window.",
    "online-heartbeat-only": "It fetches its target state on time, but its cloudlink tunnel is down.",
    "offline": "No tunnel and no target-state fetch within its polling window (or never any fetch).",
    "configuring": "Applying OS configuration (for example an OS update), or registered but never connected yet.",
    "updating": "Downloading a new application release while its heartbeat is alive.",
    "post-provisioning": "Provisioned (flashed) but not yet come online from its internal storage.",
    "inactive": "Deactivated by a user, or preregistered and never connected.",
    "frozen": "Outside its organization's device allowance, or in a paid fleet type while the organization is on the free tier.",
}

# Why a rule matched, by its position in RULES (docs/design.md, The rule, numbers them from 1).
RULE_REASONS: dict[int, str] = {
    1: "It is deactivated (by a user, or preregistered and never connected). Any contact from the device reactivates it.",
    2: "It is outside what its organization may run: {frozen_reason}. Frozen devices get no target state.",
    3: "It has been provisioned (flashed) but has not come online from its internal storage yet.",
    4: "It is registered but has never connected: no tunnel event and no target-state fetch yet.",
    5: "It has no cloudlink tunnel and its last target-state fetch is older than its polling window (or it never fetched).",
    6: "It is downloading a new release while its heartbeat is alive.",
    7: "It is applying OS configuration (provisioning progress is reported).",
    8: "Its tunnel is up but it has not fetched its target state within its polling window.",
    9: "It fetches its target state on time but its cloudlink tunnel is down.",
    10: "Both links work: it fetched its target state within its polling window and its tunnel is up (or cloudlink is switched off for it).",
}


@dataclass
class Signal:
    """One row of the why-panel: what the device reported against the threshold that matters."""

    name: str
    value: str
    detail: str = ""
    ok: bool | None = None  # True: in good shape; False: this signal pulls the status down; None: neutral
    times: dict[str, datetime | None] = field(default_factory=dict)


@dataclass
class Explanation:
    status: Status
    rule: int
    reason: str
    computed: Status
    heartbeat_interval: int
    heartbeat_deadline: datetime | None
    deadline_passed: bool
    # The status the device takes when its heartbeat deadline passes (None: no deadline running).
    after_expiry: Status | None
    offline_prediction: str
    signals: list[Signal]

    @property
    def meaning(self) -> str:
        return MEANINGS[self.status.value]


def matching_rule(device: Device) -> tuple[int, Status]:
    signals = device.signals()
    for number, (status, cond) in enumerate(RULES, start=1):
        if cond.test(signals):
            return number, status
    return len(RULES) + 1, Status.ONLINE


def interval_source(device: Device) -> str:
    if device.poll_interval:
        source = "set on the device"
    elif device.fleet.poll_interval:
        source = "the fleet's setting"
    else:
        source = "the default"
    floor = settings.FLEETSTATUS_MIN_POLL_INTERVAL
    configured = device.poll_interval or device.fleet.poll_interval or settings.FLEETSTATUS_DEFAULT_POLL_INTERVAL
    if configured < floor:
        source += f", raised to the {floor} s floor"
    return source


def explain(device: Device, now: datetime) -> Explanation:
    rule, computed = matching_rule(device)
    status = Status(device.overall_status)
    reason = RULE_REASONS[rule].format(frozen_reason=device.frozen_reason or "no reason recorded")
    interval = device.effective_poll_interval
    window = heartbeat_window(interval)
    hb_online = device.api_heartbeat_state == HeartbeatState.ONLINE
    deadline = None
    if hb_online and device.heartbeat_deadline:
        # The stored deadline is the one the sweep acts on (last fetch + interval × 1.5 when it was
        # set; moved when an interval changes), so it is the honest "turns Offline at".
        deadline = device.heartbeat_deadline
    elif device.last_api_heartbeat_at:
        deadline = device.last_api_heartbeat_at + window
    deadline_passed = bool(hb_online and deadline and deadline <= now)
    after_expiry = None
    if hb_online and deadline and status not in (Status.INACTIVE, Status.FROZEN):
        after_expiry = Status(compute_status({**device.signals(), "api_heartbeat_state": HeartbeatState.OFFLINE.value}))
    return Explanation(
        status=status,
        rule=rule,
        reason=reason,
        computed=computed,
        heartbeat_interval=interval,
        heartbeat_deadline=deadline,
        deadline_passed=deadline_passed,
        after_expiry=after_expiry,
        offline_prediction=_offline_prediction(device, after_expiry, deadline_passed),
        signals=_signals(device, interval, deadline, now),
    )


def _offline_prediction(device: Device, after_expiry: Status | None, deadline_passed: bool) -> str:
    """What happens if nothing more arrives from the device, in words (the page adds the time)."""
    status = Status(device.overall_status)
    offline = status_names.label(Status.OFFLINE)
    if status == Status.OFFLINE:
        return f"It is {offline} now; its next target-state fetch or tunnel connect brings it back."
    if status in (Status.INACTIVE, Status.FROZEN):
        return f"{status_names.label(status)} devices are not watched for heartbeats; the status changes only when its inputs do."
    if after_expiry is not None:
        if deadline_passed:
            return f"Its heartbeat deadline has passed; the next re-evaluation makes it {status_names.label(after_expiry)}."
        if after_expiry == status:
            return f"Its heartbeat expires at the deadline unless a fetch arrives; the status stays {status_names.label(status)}."
        if after_expiry == Status.OFFLINE:
            return f"It turns {offline} at its heartbeat deadline unless a target-state fetch arrives before then."
        return (
            f"At its heartbeat deadline it becomes {status_names.label(after_expiry)} unless a target-state fetch arrives; "
            f"it turns {offline} once its tunnel is down too."
        )
    if device.is_connected_to_vpn:
        return f"Its heartbeat has expired already; it turns {offline} as soon as the tunnel server reports the tunnel down."
    if status == Status.CONFIGURING:
        return "It has not connected yet, so no deadline is running; it stays Configuring until it does."
    return "No heartbeat deadline is running: it has not fetched its target state since it last went silent."


def _signals(device: Device, interval: int, deadline: datetime | None, now: datetime) -> list[Signal]:
    signals: list[Signal] = []
    signals.append(
        Signal(
            "Active",
            "Yes" if device.is_active else "No",
            "Counts toward the organization's allowance."
            if device.is_active
            else "Deactivated or preregistered: shown as Inactive.",
            ok=device.is_active,
        )
    )
    signals.append(
        Signal(
            "Frozen",
            "Yes" if device.is_frozen else "No",
            device.frozen_reason if device.is_frozen else "Within the organization's allowance and tier.",
            ok=not device.is_frozen,
        )
    )
    if device.provisioning_state or device.provisioning_progress is not None:
        progress = f" at {device.provisioning_progress}%" if device.provisioning_progress is not None else ""
        signals.append(Signal("Provisioning", f"{device.provisioning_state or 'in progress'}{progress}", ok=None))
    else:
        signals.append(Signal("Provisioning", "Nothing in progress", ok=True))

    hb = HeartbeatState(device.api_heartbeat_state)
    hb_detail = f"Polls every {interval} s ({interval_source(device)}); each fetch sets the deadline to its time + {interval} s × {settings.FLEETSTATUS_HEARTBEAT_TOLERANCE:g}."
    signals.append(
        Signal(
            "Target-state fetch (heartbeat)",
            {"online": "Online", "offline": "Offline (expired)", "unknown": "Never fetched"}[hb.value],
            hb_detail,
            ok=hb == HeartbeatState.ONLINE and not (deadline and deadline <= now),
            times={
                "last fetch": device.last_api_heartbeat_at,
                "deadline": deadline if hb == HeartbeatState.ONLINE else None,
            },
        )
    )

    cloudlink = device.effective_cloudlink
    if device.is_connected_to_vpn:
        tunnel_value, tunnel_ok = "Connected", True
        tunnel_times = {"connected since": device.last_vpn_event}
    else:
        tunnel_value = "Not connected" if device.last_connectivity_event else "Never connected"
        tunnel_ok = False if cloudlink else None
        tunnel_times = {"last connected": device.last_vpn_event}
    tunnel_detail = (
        "Cloudlink is on for this device."
        if cloudlink
        else "Cloudlink is switched off for this device: a missing tunnel is expected."
    )
    tunnel_times["last tunnel event"] = device.last_connectivity_event
    signals.append(Signal("Cloudlink tunnel", tunnel_value, tunnel_detail, ok=tunnel_ok, times=tunnel_times))

    if device.update_status:
        label = UpdateStatus(device.update_status).label
        progress = f" at {device.download_progress}%" if device.download_progress is not None else ""
        update_ok = {"rejected": False, "aborted": False, "done": True}.get(device.update_status)
        signals.append(
            Signal(
                "Release update",
                f"{label}{progress}",
                f"Agent status: {device.status or 'not reported'}.",
                ok=update_ok,
            )
        )
    else:
        signals.append(
            Signal("Release update", "None reported", f"Agent status: {device.status or 'not reported'}.", ok=None)
        )
    return signals


# --- History ----------------------------------------------------------------------------------------


@dataclass
class HistoryRow:
    transition: StatusTransition
    duration: timedelta
    ongoing: bool


def history(
    device: Device, now: datetime, limit: int = HISTORY_LIMIT, before: int | None = None
) -> tuple[list[HistoryRow], bool] | None:
    """A page of `limit` transitions, newest first, each with how long it lasted; and whether older
    ones exist. One index range read on (device, -at, -id), however long the history is.

    `before` (a transition id of this device) starts the page just after it: the row itself is read
    too, for how long the first row of the page lasted, and dropped. None when `before` is not a
    transition of this device.
    """
    transitions = StatusTransition.objects.filter(device=device).order_by("-at", "-id")
    if before is not None:
        # (at, id) <= the named transition's, as one row comparison on the index.
        transitions = transitions.extra(
            where=[
                "(at, id) <= (SELECT t.at, t.id FROM devices_statustransition t WHERE t.id = %s AND t.device_id = %s)"
            ],
            params=[before, device.pk],
        )
    rows = list(transitions[: limit + 1 + (before is not None)])
    until = now
    if before is not None:
        if not rows or rows[0].pk != before:
            return None
        until = rows.pop(0).at
    more = len(rows) > limit
    rows = rows[:limit]
    result = []
    for i, t in enumerate(rows):
        result.append(HistoryRow(t, max(until - t.at, timedelta(0)), ongoing=before is None and i == 0))
        until = t.at
    return result, more


# --- Uptime -----------------------------------------------------------------------------------------


@dataclass
class Uptime:
    label: str
    span: timedelta
    seconds: dict[str, float]  # per status slug, plus NO_DATA

    @property
    def covered(self) -> float:
        return max(self.span.total_seconds() - self.seconds.get(NO_DATA, 0.0), 0.0)

    def share(self, *statuses: str) -> float | None:
        """Share (0..1) of the covered time in these statuses; None when nothing is covered."""
        if self.covered <= 0:
            return None
        return sum(self.seconds.get(s, 0.0) for s in statuses) / self.covered

    @property
    def online(self) -> float | None:
        return self.share(Status.ONLINE.value)

    @property
    def partial(self) -> float | None:
        return self.share(*PARTIAL)

    @property
    def other(self) -> float | None:
        if self.covered <= 0:
            return None
        return max(1.0 - (self.online or 0.0) - (self.partial or 0.0), 0.0)

    @property
    def no_data(self) -> timedelta:
        return timedelta(seconds=self.seconds.get(NO_DATA, 0.0))

    def percent_of_span(self, kind: str) -> float:
        """For the bar: share of the whole window (no data included) as a percentage."""
        total = self.span.total_seconds()
        if not total:
            return 0.0
        parts = {
            "online": self.seconds.get(Status.ONLINE.value, 0.0),
            "partial": sum(self.seconds.get(s, 0.0) for s in PARTIAL),
            "nodata": self.seconds.get(NO_DATA, 0.0),
        }
        parts["other"] = max(total - sum(parts.values()), 0.0)
        return round(100 * parts[kind] / total, 2)


def uptime(device: Device, now: datetime, current_status: str) -> list[Uptime]:
    """Time per status over each window, from one aggregate query over the window's transitions.

    Transitions form a chain (each `from_status` is the previous `to_status`), so the time spent in
    status S within [start, now] telescopes to
        sum(at - start over transitions leaving S) - sum(at - start over transitions entering S)
        + (now - start if S is the current status).
    The transition before the window needs no row of its own (its status is the `from_status` of
    the first one inside), and a device created inside the window has a first transition from ""
    — the time before it existed, counted as no data. This is a SUM over an index range instead of
    reading every transition into Python: a device with 10,000 transitions costs one small query.
    """
    widest = max(span for _, span in UPTIME_WINDOWS)
    base = now - widest
    in_window = StatusTransition.objects.filter(device=device, at__gt=base, at__lte=now).order_by()
    # One pass over the widest window's transitions, grouped by (from, to) pair (a handful of
    # groups): the pair's sum of (at - start) counts for its from_status and against its to_status.
    # (Two aggregates, one per side, UNIONed, read the rows twice and made PostgreSQL plan a
    # parallel query whose worker start-up cost more than the sums.)
    sums = {}
    for i, (_, span) in enumerate(UPTIME_WINDOWS):
        start = now - span
        diff = ExpressionWrapper(F("at") - Value(start), output_field=DurationField())
        sums[f"w{i}"] = Sum(diff, filter=Q(at__gt=start)) if start > base else Sum(diff)
    names = [f"w{i}" for i in range(len(UPTIME_WINDOWS))]
    pairs = (
        in_window.values("from_status", "to_status").annotate(**sums).values_list("from_status", "to_status", *names)
    )
    totals: list[dict[str, float]] = [dict() for _ in UPTIME_WINDOWS]
    for leaving, entering, *values in pairs:
        for i, value in enumerate(values):
            if value is not None:
                seconds = _seconds(value)
                totals[i][leaving] = totals[i].get(leaving, 0.0) + seconds
                totals[i][entering] = totals[i].get(entering, 0.0) - seconds
    result = []
    for i, (label, span) in enumerate(UPTIME_WINDOWS):
        seconds = totals[i]
        seconds[current_status] = seconds.get(current_status, 0.0) + span.total_seconds()
        # Float sums can leave -0.000001 where a status was entered and left at the same instant.
        result.append(Uptime(label, span, {k: v for k, v in seconds.items() if v > 1e-6}))
    return result


def _seconds(value: timedelta | int | float) -> float:
    # Django returns a timedelta for a DurationField aggregate; some backends may hand back the raw
    # value (microseconds on SQLite).
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value) / 1_000_000
