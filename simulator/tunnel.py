"""The simulated tunnel (VPN) server: batches connect/disconnect events like a real one does."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from simulator.bodies import vpn_bodies
from simulator.host import Host
from simulator.options import snippet


class TunnelServer:
    """One simulated VPN server: collects connect/disconnect events and sends them in batches."""

    def __init__(self, sim: Host, service_id: int) -> None:
        self.sim = sim
        self.service_id = service_id
        self.pending: dict[str, bool] = {}  # last event per device since the previous batch
        self.connected: set[str] = set()  # what the server was told
        self._lock = asyncio.Lock()

    def set(self, uuid: str, up: bool) -> None:
        self.pending[uuid] = up

    def forget(self, uuid: str) -> None:
        self.pending.pop(uuid, None)
        self.connected.discard(uuid)

    def reset(self, uuids: Sequence[str]) -> None:
        """Disconnect devices whose tunnel an earlier (crashed) run may have left up on the server."""
        self.connected.update(uuids)
        for uuid in uuids:
            self.pending[uuid] = False

    def take_batches(self) -> tuple[list[str], list[str]]:
        """(connects, disconnects) to send: only real changes, a device flapping within one batch
        window ends up in its final state without sending both events."""
        connects = [u for u, up in self.pending.items() if up and u not in self.connected]
        disconnects = [u for u, up in self.pending.items() if not up and u in self.connected]
        self.pending.clear()
        return connects, disconnects

    async def flush(self) -> None:
        async with self._lock:
            connects, disconnects = self.take_batches()
            await self._send("client-disconnect", disconnects, up=False)
            await self._send("client-connect", connects, up=True)

    async def _send(self, endpoint: str, uuids: list[str], *, up: bool) -> None:
        kind = f"vpn-{endpoint.removeprefix('client-')}"
        for body in vpn_bodies(uuids, self.service_id):
            response = await self.sim.request(
                kind, "POST", f"/services/vpn/{endpoint}", token=self.sim.options.service_key, json=body
            )
            if response is not None and response.status_code < 300:
                if up:
                    self.connected.update(body["uuids"])
                else:
                    self.connected.difference_update(body["uuids"])
                continue
            if response is not None and response.status_code in (401, 403):
                self.sim.fail(
                    f"the service key was rejected by {endpoint} (HTTP {response.status_code}): {snippet(response)}"
                )
                return
            if response is not None:
                self.sim.note_problem(kind, response)
            # Retry with the next batch unless the device changed its mind meanwhile.
            for uuid in body["uuids"]:
                self.pending.setdefault(uuid, up)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.sim.options.vpn_batch_interval)
            await self.flush()

    async def shutdown(self) -> None:
        """The tunnel server stops: every tunnel it holds goes down, and none that was about to open does."""
        self.pending = dict.fromkeys(self.connected, False)
        await self.flush()
