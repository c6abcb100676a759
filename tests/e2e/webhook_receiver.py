"""A webhook receiver for the e2e tests: a loopback HTTP server that records every delivery
(headers and raw body) and answers 204. Signatures are checked by the tests, with the
reference implementations (`standardwebhooks` for Standard Webhooks)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """Records POSTs to any path; `url(path)` is where to point a webhook."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        # What every POST is answered; a 5xx makes the sender retry (and is not recorded).
        self.answer_status = 204
        self.refused = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    status = receiver.answer_status
                    if status < 300:
                        receiver.deliveries.append(Delivery(
                            self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    else:
                        receiver.refused += 1
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def deliveries_to(self, path: str) -> list[Delivery]:
        """The deliveries to `path` so far."""
        with self._lock:
            return [d for d in self.deliveries if d.path == path]

    def wait_for(self, path: str, count: int = 1, limit_s: float = 30) -> list[Delivery]:
        """The deliveries to `path`, once there are `count` of them."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            with self._lock:
                got = [d for d in self.deliveries if d.path == path]
            if len(got) >= count:
                return got
            time.sleep(0.05)
        pytest.fail(f"{count} webhook(s) to {path} did not arrive within {limit_s} s")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
