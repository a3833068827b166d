"""The Device Summary's status strip: a device's statuses over the last 24 hours and 7 days.

Both strips come from one query over the device's transitions of the last 7 days (the index
(device, -at, -id) serves it), newest first and capped at MAX_TRANSITIONS: a device that flapped
all week costs one bounded read. Transitions form a chain (each `from_status` is the previous
`to_status`, docs/design.md, Statuses), so the status before the window is the `from_status` of its
first transition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from devices import status_names
from devices.models import Device, StatusTransition

WINDOWS: tuple[tuple[str, str, timedelta], ...] = (
    ("24h", "24 hours", timedelta(hours=24)),
    ("7d", "7 days", timedelta(days=7)),
)
# A strip is at most a few hundred pixels of segments: beyond this many changes in 7 days the older
# ones merge into "several changes" anyway, so they are not read.
MAX_TRANSITIONS = 500
# Segments narrower than this share of the strip (in %) are drawn as one "several changes" segment:
# a strip of hundreds of slivers can be neither seen nor tabbed through.
MIN_PERCENT = 0.5
NO_DATA = "nodata"  # before the device existed (its first transition comes from "")
OTHER = "other"  # several short statuses, or more changes than one read takes
LABELS = {NO_DATA: "No data", OTHER: "Several changes"}


@dataclass
class Segment:
    status: str
    start: datetime
    end: datetime
    window: timedelta
    changes: int = 1

    @property
    def label(self) -> str:
        label = LABELS.get(self.status) or status_names.label(self.status)
        return f"{label} ({self.changes})" if self.status == OTHER and self.changes > 1 else label

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    @property
    def percent(self) -> float:
        return 100 * self.duration / self.window

    @property
    def width(self) -> str:
        return f"{self.percent:.3f}%"

    @property
    def title(self) -> str:
        return f"{self.label} from {self.start.astimezone(UTC):%Y-%m-%d %H:%M} UTC for {duration_text(self.duration)}"


@dataclass
class Strip:
    key: str
    label: str
    start: datetime
    end: datetime
    segments: list[Segment] = field(default_factory=list)


def duration_text(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return f"{seconds} s"


def strips(device: Device, now: datetime, current_status: str | None = None) -> list[Strip]:
    """The 24-hour and 7-day strips of `device` up to `now` (one query)."""
    widest = max(span for _, _, span in WINDOWS)
    base = now - widest
    rows = list(
        StatusTransition.objects.filter(device=device, at__gt=base, at__lte=now)
        .order_by("-at", "-id")
        .values_list("from_status", "to_status", "at")[: MAX_TRANSITIONS + 1]
    )
    truncated = len(rows) > MAX_TRANSITIONS
    rows = rows[:MAX_TRANSITIONS][::-1]
    if rows:
        first = OTHER if truncated else (rows[0][0] or NO_DATA)
    else:
        first = current_status or device.overall_status
    # (status, since) over [base, now]; each holds until the next one's `since`.
    timeline = [(first, base), *((to_status, at) for _, to_status, at in rows)]
    return [_strip(key, label, timeline, now - span, now) for key, label, span in WINDOWS]


def _strip(key: str, label: str, timeline: list[tuple[str, datetime]], start: datetime, end: datetime) -> Strip:
    window = end - start
    # (status, since, until) runs of equal status clipped to the window; plain tuples, and the
    # Segment objects only for what is drawn (a flapping week is hundreds of runs).
    runs: list[list] = []
    for n, (status, since) in enumerate(timeline):
        until = timeline[n + 1][1] if n + 1 < len(timeline) else end
        since, until = max(since, start), min(until, end)
        if until <= since:
            continue
        if runs and runs[-1][0] == status:
            runs[-1][2] = until
        else:
            runs.append([status, since, until])
    return Strip(key, label, start, end, _merge_narrow(runs, window))


def _merge_narrow(runs: list[list], window: timedelta) -> list[Segment]:
    """Runs of two or more narrow segments become one "several changes" segment; a lone narrow
    one keeps its status (the strip draws it at least a pixel wide)."""
    narrow = window * (MIN_PERCENT / 100)
    merged: list[Segment] = []
    run: list[tuple[datetime, datetime]] = []  # (start, end) of consecutive narrow runs
    lone_status = ""
    for item in [*runs, None]:
        if item is not None and item[2] - item[1] < narrow:
            run.append((item[1], item[2]))
            lone_status = item[0]
            continue
        if len(run) == 1:
            merged.append(Segment(lone_status, run[0][0], run[0][1], window))
        elif run:
            merged.append(Segment(OTHER, run[0][0], run[-1][1], window, len(run)))
        run = []
        if item is not None:
            merged.append(Segment(item[0], item[1], item[2], window))
    return merged
