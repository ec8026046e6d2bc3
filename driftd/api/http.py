"""HTTP endpoints (edge): /metrics, /healthz, /readyz and the read-only drifts API.

Pipeline position: beside the engine, read-only.  Binds to a configurable address,
loopback by default.  Nothing here can change state.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class ApiServer:
    """A small threaded HTTP server; ``start`` returns once it is listening."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        registry: CollectorRegistry,
        healthy: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
        drifts: Callable[[], list[dict[str, Any]]],
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "driftd"

            def log_message(self, format: str, *args: Any) -> None:  # quiet: we log structurally
                return

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, why = (server.healthy if path == "/healthz" else server.ready)()
                    self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
                elif path == "/api/v1/drifts":
                    body = json.dumps({"drifts": server.drifts()}, default=str).encode()
                    self._send(200, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

        self.registry = registry
        self.healthy = healthy
        self.ready = ready
        self.drifts = drifts
        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="driftd-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
