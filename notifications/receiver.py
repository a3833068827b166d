"""A real HTTP receiver on 127.0.0.1 for the tests and the benchmark: records every POST it gets
and answers with scripted status codes (then 200). Not used by the app itself."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Received:
    def __init__(self, path: str, headers: dict[str, str], body: bytes, status: int) -> None:
        self.path, self.headers, self.body, self.status = path, headers, body, status

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.received: list[Received] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        # Set to make handlers wait (a slow receiver); a handler blocks until it is set again.
        self.gate = threading.Event()
        self.gate.set()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def respond(self, statuses: Iterable[int | tuple[int, dict[str, str]]]) -> None:
        """The next requests get these answers, in order (then 200)."""
        with self.lock:
            self.script = [s if isinstance(s, tuple) else (s, {}) for s in statuses]

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body, status))
                    receiver.arrived.notify_all()
                receiver.gate.wait(60)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        # stop() waits for the serve loop to notice the shutdown: poll often (the default is 0.5 s).
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.gate.set()
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until `count` requests have arrived (or timeout)."""
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.received) >= count, timeout)

    def delivered(self) -> list[Received]:
        """Requests answered with 2xx."""
        with self.lock:
            return [r for r in self.received if 200 <= r.status < 300]
