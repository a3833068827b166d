"""Helpers shared by the device API tests (tests/test_api_*.py)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.http.response import ResponseHeaders
from django.test import Client, RequestFactory
from django.utils import timezone

from devices.models import Device, StatusTransition
from fleets.keys import generate_key, hash_key
from fleets.models import Fleet, ServiceKey


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def send(
    client: Client,
    method: str,
    url: str,
    body: Any = None,
    *,
    key: str | None = None,
    raw: bytes | str | None = None,
    headers: dict | None = None,
):
    """One API call; body is JSON-encoded unless raw bytes are given."""
    all_headers = {**(bearer(key) if key is not None else {}), **(headers or {})}
    data = raw if raw is not None else (json.dumps(body) if body is not None else "")
    return getattr(client, method.lower())(url, data=data, content_type="application/json", headers=all_headers)


def snapshot() -> tuple[list[dict], list[dict]]:
    """Every device row and every transition: compare before/after to prove nothing was written."""
    return list(Device.objects.order_by("pk").values()), list(StatusTransition.objects.order_by("pk").values())


def service_key(name: str = "vpn") -> str:
    key = generate_key()
    ServiceKey.objects.create(name=name, key_hash=hash_key(key))
    return key


def bulk_devices(fleet: Fleet, count: int, **signals: Any) -> list[Device]:
    """Many devices at once for scale tests, each with the status the rule gives its signals.

    (Going through services.create_device 8,000 times would make the test slower than what it measures.)
    """
    now = timezone.now()
    devices = []
    for i in range(count):
        d = Device(
            uuid=secrets.token_hex(16),
            organization_id=fleet.organization_id,
            fleet=fleet,
            name=f"bulk-{i:05d}",
            activated_at=now if signals.get("is_active", True) else None,
            status_changed_at=now,
            **signals,
        )
        d.overall_status = d.compute_status()
        devices.append(d)
    return Device.objects.bulk_create(devices, batch_size=500)


class WsgiResponse:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status_code = int(status.split()[0])
        self.headers = ResponseHeaders(dict(headers))
        self.content = body

    def __getitem__(self, name: str) -> str:
        return self.headers[name]

    def json(self):
        return json.loads(self.content)


class WsgiClient:
    """Requests through fleetstatus.wsgi.application, the production entry point (the edge, devices/api/edge.py)."""

    def __init__(self, secure: bool = False, **defaults) -> None:
        self.factory = RequestFactory(**defaults)
        self.secure = secure

    def __getattr__(self, method: str):
        from fleetstatus.wsgi import application

        def call(path, *args, **kwargs):
            environ = getattr(self.factory, method)(path, *args, secure=self.secure, **kwargs).environ
            got = {}

            def start_response(status, headers, exc_info=None):
                got["status"], got["headers"] = status, headers

            # As Django's test client does: the request must not close the test's connection.
            request_started.disconnect(close_old_connections)
            request_finished.disconnect(close_old_connections)
            try:
                result = application(environ, start_response)
                try:
                    body = b"".join(result)
                finally:
                    if hasattr(result, "close"):
                        result.close()
            finally:
                request_started.connect(close_old_connections)
                request_finished.connect(close_old_connections)
            return WsgiResponse(got["status"], got["headers"], body)

        return call
