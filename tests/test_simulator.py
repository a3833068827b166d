"""The device simulator: scenario scripts against the status rule, request bodies, the async
runtime against an in-process fake server, the command, and one run against a live server."""

from __future__ import annotations

import asyncio
import io
import json
import random
import socket
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

import simulator as sim
from devices.status import POST_PROVISIONING_STATE, UPDATE_STATUS_PRECEDENCE, HeartbeatState, Status, compute_status

UUID = "a" * 32

# --- A model of the server's signals, to play scripts in virtual time --------------------------


@dataclass
class Timeline:
    samples: list[tuple[float, Status]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    actions: list[sim.Action] = field(default_factory=list)
    signals: list[dict[str, Any]] = field(default_factory=list)

    def statuses(self) -> list[Status]:
        """Distinct consecutive statuses, each held for a positive time."""
        seq: list[Status] = []
        for _, status in self.samples:
            if not seq or seq[-1] != status:
                seq.append(status)
        return seq


def fold_apps(apps: dict[str, Any]) -> tuple[str | None, int | None]:
    """What the API makes of `apps`: lowest update status wins; a Downloading service
    with a progress makes the device downloading at that progress."""
    statuses, progress = [], None
    for app in apps.values():
        for release in app["releases"].values():
            statuses.append(release["update_status"])
            for service in release["services"].values():
                if service["status"] == "Downloading" and service["download_progress"] is not None:
                    progress = service["download_progress"]
                    statuses.append("downloading")
    if not statuses:
        return None, None
    return min(statuses, key=UPDATE_STATUS_PRECEDENCE.index), progress


def play(scenario: str, ticks: float = 150, seed: int = 1, step: float = 0.05) -> Timeline:
    """Run a scenario's script with one tick = one polling interval and a 1.5-tick heartbeat window."""
    rng = random.Random(seed)
    profile = sim.make_profile(rng, app_uuid="b" * 32, release="c" * 32)
    s: dict[str, Any] = {
        "is_active": True,
        "is_frozen": False,
        "provisioning_state": "",
        "provisioning_progress": None,
        "api_heartbeat_state": HeartbeatState.UNKNOWN.value,
        "is_connected_to_vpn": False,
        "last_connectivity_event": None,
        "update_status": None,
        "status": "",
        "download_progress": None,
        "effective_cloudlink": True,
    }
    timeline = Timeline()
    now, polling, next_fetch, last_fetch = 0.0, False, 0.0, None

    def advance(until: float) -> None:
        nonlocal now, next_fetch, last_fetch
        while now < until:
            now = min(until, now + step)
            while polling and next_fetch <= now:
                last_fetch, next_fetch = next_fetch, next_fetch + 1
            if last_fetch is not None:
                s["api_heartbeat_state"] = "online" if now <= last_fetch + 1.5 else "offline"
            timeline.samples.append((now, compute_status(s)))
            timeline.signals.append(dict(s))

    for action in sim.SCRIPTS[scenario](rng, profile):
        timeline.actions.append(action)
        if isinstance(action, sim.Report):
            timeline.reports.append(action.fields)
            for key, value in action.fields.items():
                if key in ("provisioning_state", "provisioning_progress", "status"):
                    s[key] = value
            if "apps" in action.fields:
                s["update_status"], s["download_progress"] = fold_apps(action.fields["apps"])
        elif isinstance(action, sim.Poll):
            if action.on and not polling:
                next_fetch = now
            polling = action.on
            advance(now)  # a fetch at this very moment
        elif isinstance(action, sim.Tunnel):
            s["is_connected_to_vpn"] = action.up
            s["last_connectivity_event"] = datetime(2025, 1, 1)
        elif isinstance(action, sim.Sleep):
            assert action.ticks > 0
            advance(now + action.ticks)
        if now >= ticks:
            break
    return timeline


def test_model_strings_match_the_server():
    assert sim.POST_PROVISIONING_STATE == POST_PROVISIONING_STATE
    assert set(sim.SERVICE_STATUS) == set(UPDATE_STATUS_PRECEDENCE) - {"rejected", "aborted"}


@pytest.mark.parametrize(
    "scenario, expected",
    [
        ("healthy", [Status.ONLINE]),
        ("tunnel-blocked", [Status.ONLINE_HEARTBEAT_ONLY]),
        ("agent-crashed", [Status.ONLINE_VPN_ONLY]),
        ("post-provisioning", [Status.POST_PROVISIONING]),
    ],
)
def test_steady_scenarios_hold_their_status(scenario, expected):
    for seed in range(5):
        assert play(scenario, seed=seed).statuses() == expected


def test_power_loss_goes_heartbeat_only_then_offline_then_recovers():
    seq = play("power-loss", ticks=200).statuses()
    assert seq[:4] == [Status.ONLINE, Status.ONLINE_HEARTBEAT_ONLY, Status.OFFLINE, Status.ONLINE]
    assert set(seq) == {Status.ONLINE, Status.ONLINE_HEARTBEAT_ONLY, Status.OFFLINE}


def test_power_loss_heartbeat_only_lasts_until_the_deadline():
    timeline = play("power-loss", ticks=60)
    hb_only = [t for t, status in timeline.samples if status == Status.ONLINE_HEARTBEAT_ONLY]
    # The last fetch can be up to one tick before the cut, so the window after the cut is 0.5-1.5 ticks.
    first_outage = [t for t in hb_only if t <= hb_only[0] + 2]
    assert 0.4 <= first_outage[-1] - first_outage[0] + 0.05 <= 1.55


def test_app_update_downloads_with_climbing_progress_then_is_done():
    timeline = play("app-update", ticks=60)
    seq = timeline.statuses()
    assert seq[:3] == [Status.ONLINE, Status.UPDATING, Status.ONLINE]
    assert seq.count(Status.UPDATING) >= 2  # it keeps updating to newer releases
    progress = [r["download_progress"] for r in timeline.reports if r.get("download_progress") is not None]
    first = progress[: progress.index(100) + 1]
    assert first[0] == 0 and first == sorted(first) and len(set(first)) >= 5
    # Each release moves forward: the running release after the update is the one downloaded before.
    downloading = next(r for r in timeline.reports if r.get("status") == "Downloading")
    (app,) = downloading["apps"].values()
    target = next(commit for commit in app["releases"] if commit != app["release_uuid"])
    done = next(
        r for r in timeline.reports if r.get("status") == "Idle" and "apps" in r and r is not timeline.reports[0]
    )
    (app_after,) = done["apps"].values()
    assert app_after["release_uuid"] == target and list(app_after["releases"]) == [target]


def test_os_update_configures_with_progress_then_runs_the_new_os():
    timeline = play("os-update", ticks=60)
    seq = timeline.statuses()
    assert seq[:2] == [Status.ONLINE, Status.CONFIGURING]
    assert Status.ONLINE in seq[2:]
    progress = [r["provisioning_progress"] for r in timeline.reports if r.get("provisioning_progress") is not None]
    first = progress[: progress.index(100) + 1]
    assert first == sorted(first) and first[0] == 0
    versions = [r["os_version"] for r in timeline.reports if "os_version" in r]
    assert len(versions) >= 2 and versions[1] != versions[0]
    # After the reboot the new supervisor clears the provisioning fields.
    reboot_report = [r for r in timeline.reports if "os_version" in r][1]
    assert reboot_report["provisioning_state"] == "" and reboot_report["provisioning_progress"] is None


def test_post_provisioning_never_fetches_nor_tunnels_and_progress_stops_at_100():
    timeline = play("post-provisioning")
    assert not any(isinstance(a, sim.Poll | sim.Tunnel) for a in timeline.actions)
    progress = [r["provisioning_progress"] for r in timeline.reports]
    assert progress == sorted(progress) and progress[0] == 0 and progress[-1] == 100
    assert all(
        r.get("provisioning_state", POST_PROVISIONING_STATE) == POST_PROVISIONING_STATE for r in timeline.reports
    )


def test_preregistered_never_does_anything():
    assert (
        list(
            sim.SCRIPTS["preregistered"](random.Random(1), sim.make_profile(random.Random(1), app_uuid="", release=""))
        )
        == []
    )


def test_flapping_visits_several_statuses():
    seq = play("flapping", ticks=300).statuses()
    assert {Status.ONLINE, Status.ONLINE_HEARTBEAT_ONLY, Status.ONLINE_VPN_ONLY} <= set(seq)
    assert len(seq) > 10


def test_scripts_are_deterministic_per_seed():
    for scenario in sim.SCENARIOS:
        assert play(scenario, ticks=40, seed=3).actions == play(scenario, ticks=40, seed=3).actions
    assert play("flapping", ticks=40, seed=3).actions != play("flapping", ticks=40, seed=4).actions


@pytest.mark.parametrize("scenario", sim.SCENARIOS)
def test_every_report_respects_the_field_contract(scenario):
    """Everything a script sends is a value the API accepts (docs/design.md, The device API; devices.models limits)."""
    texts = {
        "status": 50,
        "os_version": 64,
        "os_variant": 32,
        "supervisor_version": 32,
        "ip_address": 255,
        "mac_address": 255,
        "provisioning_state": 64,
    }
    percents = ("provisioning_progress", "download_progress", "cpu_usage")
    sizes = ("memory_usage", "memory_total", "storage_usage", "storage_total")
    for report in play(scenario, ticks=80).reports:
        json.dumps(report)
        for key, limit in texts.items():
            if key in report:
                assert isinstance(report[key], str) and len(report[key]) <= limit
        for key in percents:
            if report.get(key) is not None:
                assert isinstance(report[key], int) and 0 <= report[key] <= 100
        for key in sizes:
            if key in report:
                assert isinstance(report[key], int) and report[key] >= 0
        if "memory_usage" in report:
            assert report["memory_usage"] <= report["memory_total"]
        for app_uuid, app in report.get("apps", {}).items():
            assert len(app_uuid) == 32 and set(app) == {"release_uuid", "releases"}
            assert app["release_uuid"] in app["releases"]
            for release in app["releases"].values():
                assert release["update_status"] in UPDATE_STATUS_PRECEDENCE
                for service in release["services"].values():
                    assert set(service) == {"image", "status", "download_progress"}


def test_first_report_is_a_full_supervisor_report():
    report = play("healthy", ticks=1).reports[0]
    for key in (
        "status", "os_version", "os_variant", "supervisor_version", "ip_address", "mac_address",
        "provisioning_state", "provisioning_progress", "memory_usage", "memory_total", "storage_usage",
        "storage_total", "cpu_temp", "cpu_usage", "is_undervolted", "apps",
    ):  # fmt: skip
        assert key in report
    assert report["status"] == "Idle" and report["provisioning_state"] == "" and report["provisioning_progress"] is None
    assert "api_secret" in report  # real agents send keys the API must ignore


def test_request_body_shapes():
    assert sim.register_body(UUID, "raspberrypi5", "k") == {"uuid": UUID, "device_type": "raspberrypi5", "api_key": "k"}
    assert sim.state_body(UUID, {"status": "Idle"}) == {UUID: {"status": "Idle"}}
    uuids = [f"{i:032x}" for i in range(8001)]
    bodies = sim.vpn_bodies(uuids, 7)
    assert [len(b["uuids"]) for b in bodies] == [8000, 1] and all(b["serviceId"] == 7 for b in bodies)
    assert sim.vpn_bodies([], 7) == []


@pytest.mark.parametrize(
    "target, expected",
    [
        ({UUID: {"config": {"BALENA_SUPERVISOR_POLL_INTERVAL": "30000"}}}, 30.0),
        ({UUID: {"config": {"BALENA_SUPERVISOR_POLL_INTERVAL": 1500}}}, 1.5),
        ({UUID: {"config": {"BALENA_SUPERVISOR_POLL_INTERVAL": "soon"}}}, None),
        ({UUID: {"config": {"BALENA_SUPERVISOR_POLL_INTERVAL": "0"}}}, None),
        ({UUID: {"config": {}}}, None),
        ({"b" * 32: {"config": {"BALENA_SUPERVISOR_POLL_INTERVAL": "30000"}}}, None),
        ([], None),
    ],
)
def test_parse_poll_interval(target, expected):
    assert sim.parse_poll_interval(target, UUID) == expected


def test_mixed_covers_every_scenario_by_weight_and_is_deterministic():
    spread = sim.assign_scenarios("mixed", 20, seed=7)
    assert len(spread) == 20 and set(spread) == set(sim.SCENARIOS)
    assert spread == sim.assign_scenarios("mixed", 20, seed=7)
    assert spread != sim.assign_scenarios("mixed", 20, seed=8)
    big = Counter(sim.assign_scenarios("mixed", 1000, seed=1))
    total = sum(sim.MIXED_WEIGHTS.values())
    for name, weight in sim.MIXED_WEIGHTS.items():
        assert abs(big[name] - 1000 * weight / total) <= len(sim.SCENARIOS)  # one each first, then by weight
    assert sim.assign_scenarios("mixed", 3, seed=1).count("healthy") == 1
    assert sim.assign_scenarios("healthy", 4, seed=1) == ["healthy"] * 4
    with pytest.raises(ValueError):
        sim.assign_scenarios("sleepy", 1, seed=1)


def test_state_file_round_trip(tmp_path):
    path = tmp_path / "sim" / "state.json"
    devices = [sim.SimDevice.new(), sim.SimDevice.new()]
    devices[0].registered = True
    sim.save_state(path, "acme/robots", devices)
    assert path.stat().st_mode & 0o777 == 0o600
    assert sim.load_state(path, "acme/robots") == devices
    assert sim.load_state(tmp_path / "missing.json", "acme/robots") == []
    with pytest.raises(sim.SimulatorError, match="belongs to fleet"):
        sim.load_state(path, "acme/other")
    path.write_text("{not json")
    with pytest.raises(sim.SimulatorError, match="cannot read"):
        sim.load_state(path, "acme/robots")


# --- The runtime against an in-process fake server ------------------------------------------


class FakeServer:
    """The device API contract, in memory, recording every request."""

    def __init__(self, *, interval_ms: int = 20, register_status: int = 201, fail_state: int | None = None) -> None:
        self.interval_ms = interval_ms
        self.register_status = register_status
        self.fail_state = fail_state
        self.keys: dict[str, str] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.fetches: Counter = Counter()
        self.vpn: dict[str, bool] = {}
        self.vpn_calls: list[tuple[str, list[str]]] = []
        self.forget_next_fetch: set[str] = set()
        self.healthz_failures = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        body = json.loads(request.content) if request.content else None
        self.requests.append((method, path, body))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if path == "/healthz":
            if self.healthz_failures:
                self.healthz_failures -= 1
                raise httpx.ConnectError("connection refused")
            return httpx.Response(200, text="ok")
        if path == "/device/register":
            if token != "prov":
                return httpx.Response(401, json={"detail": "bad provisioning key"})
            if self.register_status != 201:
                return httpx.Response(self.register_status, json={"detail": "nope"})
            if body["uuid"] in self.keys:
                return httpx.Response(409, json={"detail": "taken"})
            self.keys[body["uuid"]] = body["api_key"]
            return httpx.Response(201, json={"id": len(self.keys), "uuid": body["uuid"], "api_key": body["api_key"]})
        if path.startswith("/device/v3/") and path.endswith("/state") and method == "GET":
            uuid = path.split("/")[3]
            if uuid in self.forget_next_fetch:
                self.forget_next_fetch.discard(uuid)
                del self.keys[uuid]
            if self.keys.get(uuid) != token:
                return httpx.Response(401, json={"detail": "unknown device"})
            if self.fail_state:
                return httpx.Response(self.fail_state, text="boom")
            self.fetches[uuid] += 1
            return httpx.Response(
                200, json={uuid: {"name": "x", "config": {sim.POLL_INTERVAL_KEY: str(self.interval_ms)}, "apps": {}}}
            )
        if path == "/device/v3/state" and method == "PATCH":
            (uuid,) = body
            if self.keys.get(uuid) != token:
                return httpx.Response(401, json={"detail": "unknown device"})
            return httpx.Response(200, json={})
        if path.startswith("/services/vpn/client-"):
            if token != "svc":
                return httpx.Response(401, json={"detail": "bad service key"})
            up = path.endswith("connect") and not path.endswith("disconnect")
            self.vpn_calls.append(("connect" if up else "disconnect", body["uuids"]))
            for uuid in body["uuids"]:
                self.vpn[uuid] = up
            return httpx.Response(200, json={})
        return httpx.Response(404)

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p.startswith(prefix))


def options(tmp_path: Path | None = None, **overrides) -> sim.Options:
    values = dict(
        base_url="http://fleetstatus.test",
        fleet="acme/robots",
        count=12,
        provisioning_key="prov",
        service_key="svc",
        scenario="mixed",
        duration=0.6,
        seed=5,
        ramp_up=0.05,
        summary_interval=0,
        vpn_batch_interval=0.05,
        wait_timeout=5,
        state_file=tmp_path / "state.json" if tmp_path else None,
    )
    values.update(overrides)
    return sim.Options(**values)


def run_fake(server: FakeServer, opts: sim.Options) -> tuple[sim.Result, list[str]]:
    lines: list[str] = []
    result = sim.run_simulator(opts, lines.append, transport=httpx.MockTransport(server.handler))
    return result, lines


def test_runtime_drives_devices_over_the_contract(tmp_path):
    server = FakeServer()
    result, lines = run_fake(server, options(tmp_path))
    scenarios = sim.assign_scenarios("mixed", 12, seed=5)
    prereg = scenarios.count("preregistered")
    assert result.ok and result.stats.server_errors == 0
    assert len(server.keys) == result.registered == 12 - prereg and len(result.not_registered) == prereg
    assert any("NOT registered" in line for line in lines) and lines[-1].startswith("simulator done")
    # Devices that always poll fetched many times at the 20 ms interval the server told them (a
    # default-interval device would fetch once in this 0.6 s run).
    always_polling = sum(1 for s in scenarios if s in ("healthy", "tunnel-blocked", "app-update", "os-update"))
    assert always_polling and sum(1 for n in server.fetches.values() if n >= 5) >= always_polling
    # Each report names only its own device, with its own key (checked by the fake), as {uuid: {...}}.
    reports = [b for m, p, b in server.requests if m == "PATCH"]
    assert reports and all(len(b) == 1 and next(iter(b)) in server.keys for b in reports)
    # Tunnel events went in batches (far fewer calls than devices), and the shutdown closed every tunnel.
    connects = [uuids for kind, uuids in server.vpn_calls if kind == "connect"]
    tunnelled = {u for uuids in connects for u in uuids}
    assert len(tunnelled) >= 5 and len(connects) < len(tunnelled) and max(map(len, connects)) >= 2
    assert server.vpn and not any(server.vpn.values())


def test_restart_reuses_registered_devices(tmp_path):
    server = FakeServer()
    run_fake(server, options(tmp_path, scenario="healthy", count=5, duration=0.2))
    first = dict(server.keys)
    assert len(first) == 5
    server.requests.clear()
    result, lines = run_fake(server, options(tmp_path, scenario="healthy", count=7, duration=0.2))
    assert server.count("POST", "/device/register") == 2  # only the two new devices
    assert len(server.keys) == 7 and set(first) <= set(server.keys) and result.registered == 7
    assert any("re-using 5 registered devices" in line for line in lines)
    saved = json.loads((tmp_path / "state.json").read_text())
    assert {d["uuid"] for d in saved["devices"][:5]} == set(first)


def test_unknown_device_registers_again_with_the_same_identity(tmp_path):
    server = FakeServer()
    run_fake(server, options(tmp_path, scenario="healthy", count=1, duration=0.1))
    (uuid,) = server.keys
    server.forget_next_fetch.add(uuid)  # e.g. the server's database was reset
    server.requests.clear()
    result, _ = run_fake(server, options(tmp_path, scenario="healthy", count=1, duration=0.3))
    assert result.ok and list(server.keys) == [uuid]
    assert server.count("POST", "/device/register") == 1 and server.fetches[uuid] >= 3


def test_uuid_taken_by_another_key_moves_the_device_to_a_new_uuid(tmp_path):
    stale = sim.SimDevice.new()
    stale.registered = True
    sim.save_state(tmp_path / "state.json", "acme/robots", [stale])
    server = FakeServer()
    server.keys[stale.uuid] = "somebody-elses-key-0000"  # our key no longer matches: fetch gets 401
    result, _ = run_fake(server, options(tmp_path, scenario="healthy", count=1, duration=0.3))
    assert result.ok and result.registered == 1
    (saved,) = json.loads((tmp_path / "state.json").read_text())["devices"]
    assert saved["uuid"] != stale.uuid and saved["registered"]
    assert server.keys[saved["uuid"]] == saved["api_key"] and server.fetches[saved["uuid"]] >= 3
    assert server.keys[stale.uuid] == "somebody-elses-key-0000"


def test_rejected_provisioning_key_stops_with_a_clear_error():
    server = FakeServer()
    result, lines = run_fake(server, options(provisioning_key="wrong", duration=30))
    assert not result.ok and "provisioning key for acme/robots was rejected (HTTP 401)" in result.fatal
    assert server.keys == {} and server.fetches == Counter()


def test_register_4xx_gives_up_on_the_device_and_says_why():
    result, lines = run_fake(FakeServer(register_status=400), options(scenario="healthy", count=3, duration=0.2))
    assert result.registered == 0 and result.fatal is None
    assert sum("register answered HTTP 400" in line for line in lines) == 1  # printed once, not per device


def test_server_errors_make_the_run_fail():
    result, lines = run_fake(FakeServer(fail_state=500), options(scenario="healthy", count=2, duration=0.2))
    assert not result.ok and result.stats.server_errors >= 2
    assert result.stats.errors_by_code()["500"] == result.stats.server_errors
    assert any("HTTP 500" in line for line in lines)


def test_waits_for_the_server_with_backoff():
    server = FakeServer()
    server.healthz_failures = 2
    result, lines = run_fake(server, options(scenario="healthy", count=1, duration=0.1))
    assert result.ok and result.registered == 1
    assert server.count("GET", "/healthz") == 3 and any("waiting for" in line for line in lines)
    server.healthz_failures = 10**6
    result, _ = run_fake(server, options(scenario="healthy", count=1, wait_timeout=0.5))
    assert result.fatal and "did not answer" in result.fatal and not result.ok


def test_tunnel_server_sends_only_net_changes_and_retries_failures():
    async def scenario() -> None:
        server = FakeServer()
        calls = {"n": 0}

        def flaky(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("client-connect") and calls["n"] == 0:
                calls["n"] += 1
                return httpx.Response(503, text="busy")
            return server.handler(request)

        simulator = sim.Simulator(options(), lambda line: None)
        async with httpx.AsyncClient(base_url="http://t", transport=httpx.MockTransport(flaky)) as client:
            simulator.attach(client)
            tunnel = simulator.tunnel
            tunnel.set("a" * 32, True)
            tunnel.set("b" * 32, True)
            tunnel.set("b" * 32, False)  # up and down within one window: nothing to send
            await tunnel.flush()  # the connect fails with 503 ...
            assert tunnel.connected == set() and tunnel.pending == {"a" * 32: True}
            await tunnel.flush()  # ... and is retried
            assert server.vpn_calls == [("connect", ["a" * 32])] and tunnel.connected == {"a" * 32}
            tunnel.set("a" * 32, True)
            await tunnel.flush()  # already up: no call
            assert len(server.vpn_calls) == 1
            tunnel.reset(["c" * 32])
            tunnel.set("d" * 32, True)  # came up just before the stop: never announced
            await tunnel.shutdown()
            assert server.vpn_calls[1][0] == "disconnect" and set(server.vpn_calls[1][1]) == {"a" * 32, "c" * 32}
            assert len(server.vpn_calls) == 2 and tunnel.connected == set()

    asyncio.run(scenario())


# --- The management command ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_reads_demo_keys_and_fails_clearly(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    with pytest.raises(CommandError, match="no provisioning key for demo/sim"):
        call_command("simulate_devices", "--fleet", "demo/sim", "--count", "2")
    (tmp_path / "demo.json").write_text(json.dumps({"provisioning_keys": {"demo/sim": "p"}}))
    with pytest.raises(CommandError, match="no service key"):
        call_command("simulate_devices", "--fleet", "demo/sim", "--count", "2")
    (tmp_path / "demo.json").write_text(json.dumps({"provisioning_keys": {"demo/sim": "p"}, "service_key": "s"}))
    out = io.StringIO()
    # Keys found: it gets as far as waiting for a server that is not there.
    with pytest.raises(CommandError, match="did not answer within 1 s"):
        call_command(
            "simulate_devices", "--fleet", "demo/sim", "--count", "2", "--wait", "1",
            "--base-url", f"http://127.0.0.1:{free_port()}", stdout=out,
        )  # fmt: skip
    assert "waiting for" in out.getvalue()
    assert not (tmp_path / "simulator-demo-sim.json").exists()  # nothing registered, nothing saved


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fleet", "sim", "--count", "2"], "<org-slug>/<fleet-slug>"),
        (["--fleet", "demo/sim", "--count", "0"], "--count"),
        (["--fleet", "demo/sim", "--count", "2", "--poll-scale", "0"], "positive"),
        (["--fleet", "demo/sim", "--count", "2", "--scenario", "sleepy"], "invalid choice"),
        (["--fleet", "demo/sim", "--count", "2", "--connections", "0"], "--connections"),
    ],
)
def test_command_rejects_bad_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("simulate_devices", *args, "--provisioning-key", "p", "--service-key", "s")


# --- Against a real server ------------------------------------------------------------------


@pytest.mark.slow
def test_simulator_against_live_server(live_server, settings, org, make_fleet, tmp_path):
    from django.db import connection

    from devices.models import Device, StatusTransition
    from fleets.keys import generate_key, hash_key
    from fleets.models import ServiceKey

    settings.FLEETSTATUS_DEFAULT_POLL_INTERVAL = 1
    settings.FLEETSTATUS_MIN_POLL_INTERVAL = 1
    fleet, provisioning_key = make_fleet(org, "sim")
    service_key = generate_key()
    ServiceKey.objects.create(name="test tunnel server", key_hash=hash_key(service_key))

    lines: list[str] = []
    result = sim.run_simulator(
        sim.Options(
            base_url=live_server.url,
            fleet=f"{org.slug}/sim",
            count=20,
            provisioning_key=provisioning_key,
            service_key=service_key,
            scenario="mixed",
            duration=9,
            seed=7,
            poll_scale=0.5,
            device_type=fleet.device_type,
            # The live server shares one in-memory SQLite connection between its threads: one
            # request at a time there. PostgreSQL takes real concurrency.
            connections=1 if connection.vendor == "sqlite" else 8,
            state_file=tmp_path / "state.json",
            summary_interval=3,
            ramp_up=0.5,
            vpn_batch_interval=0.5,
        ),
        lines.append,
    )
    print("\n".join(lines))
    scenarios = Counter(sim.assign_scenarios("mixed", 20, seed=7))
    assert result.stats.server_errors == 0, lines
    assert result.fatal is None, lines
    assert result.stats.errors_by_code() == {}, lines

    devices = Device.objects.filter(fleet=fleet)
    assert devices.count() == result.registered == 20 - scenarios["preregistered"]
    pollers = scenarios["healthy"] + scenarios["tunnel-blocked"] + scenarios["app-update"] + scenarios["os-update"]
    # Heartbeats: every polling device fetched, most more than once (the live server on SQLite
    # answers one request at a time, so the count depends on the machine's speed).
    assert result.stats.count("state", 200) > pollers
    assert devices.filter(api_heartbeat_state=HeartbeatState.ONLINE).count() >= pollers
    # What each scenario's devices went through (the state file keeps the devices in index order).
    order = [d["uuid"] for d in json.loads((tmp_path / "state.json").read_text())["devices"]]
    scenario_of = dict(zip(order, sim.assign_scenarios("mixed", 20, seed=7), strict=True))
    reached: dict[str, set[str]] = {name: set() for name in sim.SCENARIOS}
    transitions = StatusTransition.objects.filter(device__fleet=fleet).exclude(reason="registered")
    for uuid, to_status in transitions.values_list("device__uuid", "to_status"):
        reached[scenario_of[uuid]].add(to_status)
    assert Status.ONLINE in reached["healthy"], reached
    assert Status.ONLINE_HEARTBEAT_ONLY in reached["tunnel-blocked"] and Status.ONLINE not in reached["tunnel-blocked"]
    assert reached["agent-crashed"] >= {Status.ONLINE_VPN_ONLY} and Status.ONLINE not in reached["agent-crashed"]
    assert Status.UPDATING in reached["app-update"], reached
    assert Status.CONFIGURING in reached["os-update"], reached  # by a state report, not at registration
    assert reached["post-provisioning"] == {Status.POST_PROVISIONING}, reached
    never_fetched = devices.filter(
        uuid__in=[u for u, s in scenario_of.items() if s in ("agent-crashed", "post-provisioning")]
    )
    assert not never_fetched.exclude(api_heartbeat_state=HeartbeatState.UNKNOWN).exists()
    reported = devices.exclude(os_version="")
    assert reported.count() >= pollers
    assert devices.filter(provisioning_state=POST_PROVISIONING_STATE).count() == scenarios["post-provisioning"]
    # The simulator's tunnel server closed every tunnel when it stopped.
    assert not devices.filter(is_connected_to_vpn=True).exists()
