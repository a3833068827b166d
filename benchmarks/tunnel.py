"""P7: one client-connect call for 8,000 UUIDs (a VPN server re-announcing its tunnels after a restart).

Through Django's test Client in process: the full request path (auth, JSON parsing, validation,
set_tunnel) without the network. The 8,000 devices are active, not frozen and without a tunnel, so
every one of them changes status (the worst case: 8,000 transitions). A client-disconnect from
the same serviceId between runs puts them back; its time is reported too.
"""

from __future__ import annotations

import json
import time

from django.test import Client

from benchmarks.context import Context
from benchmarks.pages import profile_call, require_route
from benchmarks.report import Row, median, ms
from benchmarks.seed import service_key
from devices.models import Device, StatusTransition

COUNT = 8_000
SERVICE_ID = 77


def p7(ctx: Context) -> list[Row]:
    require_route("/services/vpn/client-connect", "POST /services/vpn/client-connect")
    uuids = list(
        Device.objects.filter(is_active=True, is_frozen=False, is_connected_to_vpn=False)
        .order_by("uuid")
        .values_list("uuid", flat=True)[:COUNT]
    )
    client = Client()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {service_key()}"}
    body = json.dumps({"uuids": uuids, "serviceId": SERVICE_ID})

    cpu: list[float] = []

    def call(path: str) -> float:
        c0, t0 = time.process_time(), time.perf_counter()
        response = client.post(path, body, content_type="application/json", **headers)
        elapsed = time.perf_counter() - t0
        if path.endswith("connect") and "disconnect" not in path:
            cpu.append(time.process_time() - c0)
        if response.status_code >= 300:
            raise AssertionError(f"POST {path} answered {response.status_code}: {response.content[:300]!r}")
        return elapsed

    runs = 3 if ctx.quick else 5
    connects, disconnects, transitions = [], [], []
    for _ in range(runs):
        before = StatusTransition.objects.count()
        connects.append(call("/services/vpn/client-connect"))
        transitions.append(StatusTransition.objects.count() - before)
        connected = Device.objects.filter(uuid__in=uuids, is_connected_to_vpn=True, vpn_service_id=SERVICE_ID).count()
        if connected != len(uuids):
            raise AssertionError(
                f"client-connect left {len(uuids) - connected} of {len(uuids)} devices without a tunnel"
            )
        disconnects.append(call("/services/vpn/client-disconnect"))
    t = median(connects)
    ok = t <= 1.0
    measured = f"{ms(t)} ({median(transitions):,.0f} transitions); disconnect {ms(median(disconnects))}"
    ctx.log(f"   {len(uuids):,} UUIDs: connect {measured}; Python CPU of a connect {ms(median(cpu))}")
    if not ok and ctx.args.profile:

        def cycle() -> None:
            call("/services/vpn/client-connect")
            call("/services/vpn/client-disconnect")

        profile_call(ctx, "p7-client-connect", cycle, repeat=2)
    return [
        Row(
            "P7",
            f"client-connect, {len(uuids):,} UUIDs in one call",
            "<= 1 s",
            measured,
            ok,
            {
                "connect_ms": [round(x * 1000, 1) for x in connects],
                "disconnect_ms": [round(x * 1000, 1) for x in disconnects],
                "transitions_per_connect": transitions,
                "connect_cpu_ms": [round(x * 1000, 1) for x in cpu],
            },
        )
    ]
