"""The Device Summary's status strip (devices/strip.py, templates/jinja2/devices/_strip.html)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from devices import strip
from devices.models import StatusTransition
from devices.templatetags.fleetstatus import status_strips

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def change(device, from_status: str, to_status: str, at: datetime) -> None:
    StatusTransition.objects.create(device=device, from_status=from_status, to_status=to_status, at=at)


@pytest.fixture
def device(make_device):
    d = make_device(at=NOW - timedelta(days=30))  # "" -> configuring, long before both windows
    change(d, "configuring", "online", NOW - timedelta(days=20))
    change(d, "online", "offline", NOW - timedelta(days=3))
    change(d, "offline", "online", NOW - timedelta(days=2))
    change(d, "online", "online-heartbeat-only", NOW - timedelta(hours=6))
    change(d, "online-heartbeat-only", "online", NOW - timedelta(hours=3))
    return d


def summary(s: strip.Strip) -> list[tuple[str, float]]:
    return [(seg.status, round(seg.percent, 2)) for seg in s.segments]


def test_segments_of_both_windows_from_one_query(device, django_assert_num_queries):
    with django_assert_num_queries(1):
        day, week = strip.strips(device, NOW, "online")
    assert (day.key, day.start, day.end) == ("24h", NOW - timedelta(hours=24), NOW)
    assert summary(day) == [("online", 75.0), ("online-heartbeat-only", 12.5), ("online", 12.5)]
    assert summary(week) == [
        ("online", round(100 * 4 / 7, 2)),
        ("offline", round(100 / 7, 2)),
        ("online", round(100 * (2 - 0.25) / 7, 2)),
        ("online-heartbeat-only", round(100 * 0.125 / 7, 2)),
        ("online", round(100 * 0.125 / 7, 2)),
    ]
    offline = week.segments[1]
    assert (offline.start, offline.duration) == (NOW - timedelta(days=3), timedelta(days=1))
    assert offline.title == "Offline from 2026-11-17 12:00 UTC for 1 d"
    assert sum((seg.duration for seg in week.segments), timedelta()) == timedelta(days=7)


def test_no_change_in_the_window_is_one_segment_of_the_current_status(make_device):
    d = make_device(at=NOW - timedelta(days=30))
    day, week = strip.strips(d, NOW, "configuring")
    assert summary(day) == [("configuring", 100.0)] and summary(week) == [("configuring", 100.0)]


def test_before_the_device_existed_is_no_data(make_device):
    d = make_device(at=NOW - timedelta(hours=12))
    day, _ = strip.strips(d, NOW)
    assert summary(day) == [("nodata", 50.0), ("configuring", 50.0)]
    assert day.segments[0].title.startswith("No data from")


def test_many_short_changes_merge_and_the_read_is_bounded(make_device, monkeypatch):
    d = make_device(at=NOW - timedelta(days=30))
    statuses = ["online", "offline"]
    for n in range(40):  # one change a minute for 40 minutes, 10 h ago
        before = "configuring" if n == 0 else statuses[(n + 1) % 2]
        change(d, before, statuses[n % 2], NOW - timedelta(hours=10, minutes=-n))
    day, week = strip.strips(d, NOW)
    assert [seg.status for seg in week.segments] == ["configuring", "other", "offline"]
    assert week.segments[1].changes == 39 and week.segments[1].label == "Several changes (39)"
    assert [seg.status for seg in day.segments] == ["configuring", "other", "offline"]
    # More changes than one read takes: the part before the oldest read is "several changes".
    monkeypatch.setattr(strip, "MAX_TRANSITIONS", 10)
    _, week = strip.strips(d, NOW)
    assert week.segments[0].status == "other" and week.segments[0].start == NOW - timedelta(days=7)


def test_the_fragment_renders_focusable_coloured_segments(device):
    html = status_strips(strip.strips(device, NOW, "online"))
    segments = re.findall(
        r'<span class="strip__seg seg--([a-z-]+)" role="listitem" tabindex="0" style="width: ([\d.]+)%" title="([^"]+)"',
        html,
    )
    assert [s for s, _, _ in segments] == ["online", "online-heartbeat-only", "online"] + [
        "online",
        "offline",
        "online",
        "online-heartbeat-only",
        "online",
    ]
    assert segments[1][1:] == ("12.500", "Online (Heartbeat Only) from 2026-11-20 06:00 UTC for 3 h")
    assert 'data-strip="24h"' in html and 'data-strip="7d"' in html


def test_duration_text():
    assert [strip.duration_text(timedelta(seconds=s)) for s in (42, 300, 3600, 5400, 86400, 90000)] == [
        "42 s",
        "5 min",
        "1 h",
        "1 h 30 min",
        "1 d",
        "1 d 1 h",
    ]
