"""Virtual devices that talk to fleetstatus over HTTP exactly like real agents (docs/design.md, The device API).

Two layers:

- Scenario scripts (`simulator.scenarios`, pure and seeded): a generator per scenario yields actions,
  measured in ticks of one polling interval. No I/O, so tests play them against a model of the
  status rule in virtual time. Profiles and request bodies are in `simulator.bodies`.
- The runtime (`simulator.runner.Simulator`): one asyncio task per device (`simulator.device.Agent`)
  executes its script over one shared `httpx.AsyncClient` with a bounded connection pool, so
  thousands of devices run in one process. Polling runs in its own per-device task at the interval
  the server sends in `BALENA_SUPERVISOR_POLL_INTERVAL` (±10% jitter), like the supervisor's poll loop
  that runs independently of its state reports. Tunnel events go through one simulated tunnel
  server (`simulator.tunnel`) that batches them the way a VPN server does.

The simulator is a pure HTTP client: it imports nothing of the app and never touches the database,
so it can drive any fleetstatus installation it can reach.
"""

from simulator.bodies import (
    MAX_VPN_BATCH,
    OS_UPDATE_STATE,
    POLL_INTERVAL_KEY,
    POST_PROVISIONING_STATE,
    SERVICE_STATUS,
    Profile,
    apps_body,
    fleet_app_uuid,
    fleet_release,
    full_report,
    make_profile,
    metrics_fields,
    next_release,
    parse_poll_interval,
    register_body,
    state_body,
    vpn_bodies,
)
from simulator.device import Agent
from simulator.options import Options, Result, SimulatorError, Stats
from simulator.runner import Simulator, run_simulator
from simulator.scenarios import (
    MIXED,
    MIXED_WEIGHTS,
    NO_TUNNEL_AT_BOOT,
    SCENARIO_CHOICES,
    SCENARIOS,
    SCRIPTS,
    Action,
    Poll,
    Report,
    Script,
    Sleep,
    Tunnel,
    assign_scenarios,
)
from simulator.state import SimDevice, load_state, save_state
from simulator.tunnel import TunnelServer

__all__ = [
    "MAX_VPN_BATCH",
    "MIXED",
    "MIXED_WEIGHTS",
    "NO_TUNNEL_AT_BOOT",
    "OS_UPDATE_STATE",
    "POLL_INTERVAL_KEY",
    "POST_PROVISIONING_STATE",
    "SCENARIOS",
    "SCENARIO_CHOICES",
    "SCRIPTS",
    "SERVICE_STATUS",
    "Action",
    "Agent",
    "Options",
    "Poll",
    "Profile",
    "Report",
    "Result",
    "Script",
    "SimDevice",
    "Simulator",
    "SimulatorError",
    "Sleep",
    "Stats",
    "Tunnel",
    "TunnelServer",
    "apps_body",
    "assign_scenarios",
    "fleet_app_uuid",
    "fleet_release",
    "full_report",
    "load_state",
    "make_profile",
    "metrics_fields",
    "next_release",
    "parse_poll_interval",
    "register_body",
    "run_simulator",
    "save_state",
    "state_body",
    "vpn_bodies",
]
