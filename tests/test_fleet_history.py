"""Fleet count history (fleets/history.py): snapshots written by the fold, upsert per minute, roll-up, pruning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices.models import Device
from fleets import counts, history
from fleets.models import FleetCountSnapshot
from fleets.tasks import compact_fleet_history
from tests.dashboard_helpers import device_in

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 20, 12, 0, 30, tzinfo=UTC)


def snaps(fleet) -> list[tuple[datetime, int, int, int]]:
    return list(
        FleetCountSnapshot.objects.filter(fleet_id=fleet.pk)
        .order_by("at")
        .values_list("at", "online", "offline", "configuring")
    )


def test_a_fold_snapshots_each_changed_fleet_once_per_minute(org, fleet, make_fleet, make_device):
    quiet, _ = make_fleet(org, "quiet")
    with time_machine.travel(T0, tick=False):
        device_in(make_device, "online")
        device_in(make_device, "offline")
        counts.fold()
    assert snaps(fleet) == [(T0.replace(second=0), 1, 1, 0)]
    assert snaps(quiet) == []  # nothing changed there
    # Later in the same minute: the same row, updated (upsert on (fleet, minute)).
    with time_machine.travel(T0 + timedelta(seconds=20), tick=False):
        device_in(make_device, "online")
        counts.fold()
    assert snaps(fleet) == [(T0.replace(second=0), 2, 1, 0)]
    # The next minute: a new row; a fold with nothing pending writes nothing.
    with time_machine.travel(T0 + timedelta(minutes=1), tick=False):
        make_device()
        counts.fold()
        counts.fold()
    assert snaps(fleet)[-1] == (T0.replace(second=0) + timedelta(minutes=1), 2, 1, 1)
    assert len(snaps(fleet)) == 2


def test_the_snapshot_is_one_statement_per_fold_whatever_the_number_of_fleets(org, make_fleet, make_device):
    fleets = [make_fleet(org, f"f{i}")[0] for i in range(6)]
    with time_machine.travel(T0, tick=False):
        for f in fleets:
            make_device(f)
        with CaptureQueriesContext(connection) as fold_queries:
            counts.fold()
    inserts = [q["sql"] for q in fold_queries.captured_queries if "fleets_fleetcountsnapshot" in q["sql"]]
    assert len(inserts) == 1
    assert FleetCountSnapshot.objects.filter(at=T0.replace(second=0)).count() == 6


def test_a_fleet_whose_last_device_left_gets_zeros(org, fleet, make_device):
    with time_machine.travel(T0, tick=False):
        make_device()
        counts.fold()
    with time_machine.travel(T0 + timedelta(minutes=5), tick=False):
        Device.objects.all().delete()
        counts.fold()
    assert snaps(fleet)[-1] == (T0.replace(second=0) + timedelta(minutes=5), 0, 0, 0)


def test_rollup_keeps_the_worst_minute_of_each_hour_after_a_week(org, fleet):
    base = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
    rows = [(0, 10, 0), (5, 6, 4), (20, 9, 1), (61, 10, 0)]  # minute offset, online, offline
    for minutes, on, off in rows:
        FleetCountSnapshot.objects.create(
            organization_id=org.pk, fleet_id=fleet.pk, at=base + timedelta(minutes=minutes), online=on, offline=off
        )
    recent = FleetCountSnapshot.objects.create(
        organization_id=org.pk, fleet_id=fleet.pk, at=base + timedelta(days=6, minutes=7), online=1
    )
    now = base + timedelta(days=7, hours=3)
    assert history.rollup(now) == 2
    assert [(at, on, off) for at, on, off, _ in snaps(fleet)] == [
        (base, 6, 4),  # 10:05 was the hour's worst (40 % not online)
        (base + timedelta(hours=1), 10, 0),
        (recent.at, 1, 0),  # younger than a week: untouched
    ]
    assert history.rollup(now) == 0  # idempotent


def test_prune_keeps_the_latest_snapshot_of_each_fleet(org, fleet, make_fleet, settings):
    settings.FLEETSTATUS_TRANSITION_RETENTION_DAYS = 30
    other, _ = make_fleet(org, "other")
    now = datetime(2026, 11, 30, tzinfo=UTC)
    for days in (40, 35, 10):
        FleetCountSnapshot.objects.create(organization_id=org.pk, fleet_id=fleet.pk, at=now - timedelta(days=days))
    FleetCountSnapshot.objects.create(organization_id=org.pk, fleet_id=other.pk, at=now - timedelta(days=50))
    FleetCountSnapshot.objects.create(organization_id=org.pk, fleet_id=999_999, at=now)  # deleted fleet
    assert history.prune(now) == 3
    assert [at for at, *_ in snaps(fleet)] == [now - timedelta(days=10)]
    assert FleetCountSnapshot.objects.filter(fleet_id=other.pk).count() == 1  # its only one: kept


def test_compact_task(org, fleet):
    FleetCountSnapshot.objects.create(organization_id=org.pk, fleet_id=fleet.pk, at=T0 - timedelta(days=400))
    FleetCountSnapshot.objects.create(organization_id=org.pk, fleet_id=fleet.pk, at=T0 - timedelta(days=1))
    with time_machine.travel(T0, tick=False):
        assert compact_fleet_history.apply().get() == {"rolled_up": 0, "pruned": 1}


def test_column_points_worst_and_latest_per_column_with_the_carried_snapshot(org, fleet):
    start = T0 - timedelta(hours=1)
    for minutes, on, off in ((-90, 1, 0), (-80, 2, 0), (5, 3, 1), (7, 3, 3), (8, 4, 0), (25, 5, 0), (60, 6, 0)):
        snapshot = FleetCountSnapshot(organization_id=org.pk, fleet_id=fleet.pk, online=on, offline=off)
        snapshot.at = start + timedelta(minutes=minutes)
        snapshot.save()
    pairs = history.column_points(fleet.pk, start, T0, timedelta(minutes=10))
    simple = {
        col: ((w.at, w.counts["online"], w.counts["offline"]), (last.at, last.counts["online"]))
        for col, (w, last) in pairs.items()
    }
    assert simple == {
        0: ((start + timedelta(minutes=7), 3, 3), (start + timedelta(minutes=8), 4)),  # the carried 2/0 is at `start`
        2: ((start + timedelta(minutes=25), 5, 0), (start + timedelta(minutes=25), 5)),
        6: ((T0, 6, 0), (T0, 6)),  # exactly at the end: the fleet page counts it in the last column
    }
    assert history.column_points(fleet.pk, T0 - timedelta(days=40), T0 - timedelta(days=35), timedelta(hours=4)) == {}


def test_periods_cut_the_range_where_the_share_crosses_the_threshold(org, fleet):
    start = T0 - timedelta(hours=10)
    for hours, on, off in ((-12, 5, 5), (-9, 10, 0), (-6, 9, 1), (-5, 8, 2), (-4, 6, 4), (-3, 10, 0), (-1, 7, 3)):
        FleetCountSnapshot.objects.create(
            organization_id=org.pk, fleet_id=fleet.pk, at=T0 + timedelta(hours=hours), online=on, offline=off
        )
    found = [(p.start, p.above, round(p.peak, 2), p.peak_at) for p in history.periods(fleet.pk, start, T0, 0.1)]
    h = lambda n: T0 + timedelta(hours=n)  # noqa: E731
    assert found == [
        (start, True, 0.5, start),  # 5/5 was in force when the range began
        (h(-9), False, 0.1, h(-6)),  # exactly 10 % is not above
        (h(-5), True, 0.4, h(-4)),
        (h(-3), False, 0.0, h(-3)),
        (h(-1), True, 0.3, h(-1)),
    ]


def test_point_share_counts_active_devices_only():
    p = history.Point(T0, {**dict.fromkeys(history.STATUS_SLUGS, 0), "online": 8, "offline": 2, "inactive": 90})
    assert (p.total, p.active, p.not_online, p.share) == (100, 10, 2, 0.2)
    assert history.Point(T0, dict.fromkeys(history.STATUS_SLUGS, 0)).share == 0.0


def test_the_carried_snapshot_is_the_latest_before_the_range(org, fleet):
    start = T0 - timedelta(hours=1)
    for minutes, on, off in ((-90, 5, 5), (-80, 10, 0), (30, 10, 0)):
        FleetCountSnapshot.objects.create(
            organization_id=org.pk, fleet_id=fleet.pk, at=start + timedelta(minutes=minutes), online=on, offline=off
        )
    worst, latest = history.column_points(fleet.pk, start, T0, timedelta(minutes=20))[0]
    assert worst == latest and (worst.at, worst.counts["offline"]) == (start, 0)  # 10/0, not the older 5/5
    assert [(p.start, p.above) for p in history.periods(fleet.pk, start, T0, 0.1)] == [(start, False)]


def reference(snapshots, start, end, step, threshold):
    """Columns and periods computed the plain way, from every snapshot."""
    before = [s for s in snapshots if s.at <= start]
    points = [history.Point(start, before[-1].counts)] if before else []
    points += [s for s in snapshots if start < s.at <= end]
    columns = {}
    for p in points:
        col = int((p.at - start).total_seconds() // step.total_seconds())
        worst, _ = columns.get(col, (p, p))
        columns[col] = (max(worst, p, key=lambda q: (q.share, q.at)), p)
    periods = []
    for p in points:
        above = p.share > threshold
        if periods and periods[-1].above == above:
            if p.share > periods[-1].peak:
                periods[-1] = history.Period(periods[-1].start, above, p.share, p.at)
        else:
            periods.append(history.Period(p.at, above, p.share, p.at))
    return columns, periods


@pytest.mark.parametrize("seed", range(4))
def test_one_read_gives_the_reference_columns_and_periods(org, fleet, seed):
    import random

    rng = random.Random(seed)
    base = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
    rows = []
    for minutes in sorted(rng.sample(range(0, 3 * 24 * 60), 400)):
        on, off = rng.choice([(10, 0), (9, 1), (8, 2), (5, 5), (18, 2), (0, 0), (4, 6)])  # equal shares, no devices
        rows.append(FleetCountSnapshot(organization_id=org.pk, fleet_id=fleet.pk, at=base + timedelta(minutes=minutes)))
        rows[-1].online, rows[-1].offline = on, off
    FleetCountSnapshot.objects.bulk_create(rows)
    snapshots = [
        history.Point(r.at, {**dict.fromkeys(history.STATUS_SLUGS, 0), "online": r.online, "offline": r.offline})
        for r in rows
    ]
    for hours, step in ((24, timedelta(minutes=15)), (48, timedelta(hours=2)), (70, timedelta(hours=6))):
        end = base + timedelta(hours=hours, seconds=rng.randint(0, 3600))
        start = end - timedelta(hours=hours // 2)
        for threshold in (0.1, 0.15, 0.5):
            columns, periods = history.read(fleet.pk, start, end, step, threshold)
            assert (columns, periods) == reference(snapshots, start, end, step, threshold)
