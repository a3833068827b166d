"""The pure parts of the scale-out benchmark (benchmarks/scaleout.py, P13): adding up wrk processes
that ran side by side, the CPU accounting from /proc, the private cluster's commands, and the
sweep's fan-out. No load run, no server."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from benchmarks import cli, load, runners, scaleout

WRK_LINE = (
    'WRK_JSON {"requests": %d, "duration_us": 10000000, "bytes": 100, "connect": 0, "read": %d, "write": 0, '
    '"status": 0, "timeout": 0, "p50": %d, "p90": 2000, "p99": %d, "max": 9000, "mean": 1.5}\n'
)


def test_wrk_processes_side_by_side_add_their_counts_and_keep_the_worst_percentile():
    a = load.parse_wrk("Running 10s test\n" + WRK_LINE % (5000, 0, 1000, 4000))
    b = load.parse_wrk(WRK_LINE % (3000, 2, 1500, 7000))
    assert a["rps"] == pytest.approx(500)
    assert b["errors"] == 2
    both = scaleout.combine([a, b])
    assert both["requests"] == 8000
    assert both["rps"] == pytest.approx(800)
    assert both["errors"] == 2
    assert both["p99"] == 7000
    assert both["p50"] == 1500
    assert both["processes"] == 2


def test_a_wrk_run_without_its_summary_line_fails_loudly():
    with pytest.raises(AssertionError, match="no summary"):
        load.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused", "", 1)


def test_cpu_ticks_of_a_process_skip_a_name_with_spaces_and_parentheses():
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    stat = "4242 (gunicorn: worker (x) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 5"
    assert scaleout.pid_cpu_ticks(stat) == 300


def test_machine_busy_ticks_leave_out_idle_and_iowait():
    proc_stat = "cpu  100 5 40 800 30 2 3 0 7 0\ncpu0 50 2 20 400 15 1 1 0 0 0\n"
    busy, total = scaleout.machine_ticks(proc_stat)
    assert total == 100 + 5 + 40 + 800 + 30 + 2 + 3
    assert busy == total - 800 - 30


def test_cpu_shares_are_percent_of_one_core_and_other_is_the_rest_of_the_machine():
    before = {"at": 0.0, "gunicorn": 1.0, "redis": 0.5, "wrk": 0.0, "machine_busy": 10.0, "machine_total": 100.0}
    after = {"at": 10.0, "gunicorn": 11.0, "redis": 2.5, "wrk": 1.0, "machine_busy": 28.0, "machine_total": 120.0}
    shares = scaleout.cpu_shares(before, after)
    assert shares["gunicorn"] == pytest.approx(100)
    assert shares["redis"] == pytest.approx(20)
    assert shares["wrk"] == pytest.approx(10)
    assert shares["machine_busy"] == pytest.approx(180)
    assert shares["other"] == pytest.approx(50)
    assert shares["machine_percent_of_all"] == pytest.approx(90)  # 180 % of the 2 cores' 200 %
    assert "gunicorn 100" in scaleout.cpu_text(shares)


def test_the_private_cluster_is_three_loopback_masters_that_persist_nothing(tmp_path: Path):
    ports = [7201, 7202, 7203]
    server = scaleout.cluster_server_command("redis-server", 7202, tmp_path)
    option = dict(zip(server[1::2], server[2::2], strict=True))
    assert option["--port"] == "7202"
    assert option["--bind"] == "127.0.0.1"
    assert option["--cluster-enabled"] == "yes"
    assert option["--save"] == "" and option["--appendonly"] == "no"
    assert option["--cluster-config-file"] == str(tmp_path / "nodes.conf")
    create = scaleout.cluster_create_command("redis-cli", ports)
    assert create[:3] == ["redis-cli", "--cluster", "create"]
    assert create[3:6] == ["127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"]
    assert create[create.index("--cluster-replicas") + 1] == "0"
    assert create[-1] == "--cluster-yes"
    assert scaleout.cluster_url(ports) == "redis+cluster://127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203"
    # Not the ports of the reliability test's cluster, which may run at the same time.
    assert not set(scaleout.BenchCluster().ports) & set(range(7100, 7200))


def test_the_sweep_is_sent_as_beat_sends_it_every_shard_once():
    groups = scaleout.sweep_groups()
    assert len(groups) == min(settings.FLEETSTATUS_SWEEP_TASKS, settings.FLEETSTATUS_HEARTBEAT_SHARDS)
    shards = sorted(s for g in groups for s in g)
    assert shards == list(range(settings.FLEETSTATUS_HEARTBEAT_SHARDS))


def test_the_first_worker_alone_serves_the_one_worker_runs():
    first = scaleout.worker_command("celery", 1, [scaleout.FIRST_WORKER_QUEUE, scaleout.SWEEP_QUEUE])
    second = scaleout.worker_command("celery", 2, [scaleout.SWEEP_QUEUE])
    queues = {cmd[cmd.index("--hostname") + 1]: cmd[cmd.index("--queues") + 1].split(",") for cmd in (first, second)}
    owners = [name for name, qs in queues.items() if scaleout.FIRST_WORKER_QUEUE in qs]
    assert owners == ["bench-sweep-1@%h"]
    assert all(scaleout.SWEEP_QUEUE in qs for qs in queues.values())
    assert first[first.index("--concurrency") + 1] == "1"
    assert first[1:3] == ["-A", "benchmarks.sweepworker"]


def test_p13_is_a_figure_of_the_bench():
    assert "P13" in cli.ALL
    assert runners.ALL["P13"] is scaleout.p13
    assert cli.parse_args(["--only", "p13"]).figures == ["P13"]
