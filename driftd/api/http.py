"""HTTP endpoints (edge): /metrics, /healthz, /readyz and the read-only drifts API.

Pipeline position: beside the engine, read-only.  Nothing here can change state.

Two listeners (one when both addresses are the same):

* **metrics**: ``/metrics`` (for the scraper; optionally behind ``metrics_authorize``) and
  ``/healthz`` ``/readyz`` (always open: the kubelet's probes carry no token);
* **api**: ``/api/v1/drifts`` (paths and errors of this node), behind ``api_authorize``
  unless it is bound to loopback (the settings refuse anything else).

Each listener accepts on one thread and keeps a connection that has sent nothing yet in a
selector, not in a thread: an idle connection costs no handler thread, and is closed
``request_timeout`` seconds after it was accepted.  A connection that has sent bytes goes to
one of ``max_connections`` handler threads, waiting for one (at most ``request_timeout``)
when all are busy; the TLS handshake, reading the request and writing the answer all share
one deadline of ``request_timeout`` seconds.  At most ``8 * max_connections`` connections
wait (idle or queued); beyond that the oldest idle one is closed to make room.  HTTP/1.0, one
request per connection; the ``Server`` header is ``driftd`` (no Python version).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Authorize = Callable[[str, str], tuple[int, str]]
Answer = tuple[int, bytes, str]
TEXT = "text/plain; charset=utf-8"
DRIFTS_PATH = "/api/v1/drifts"


def server_tls_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or newer, the certificate chain and key from PEM files (read once)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


@dataclass(frozen=True)
class Route:
    answer: Callable[[], Answer]
    authorize: Authorize | None = None  # None: open to anyone who can connect
    private: bool = False  # answered with Cache-Control: no-store


class _DeadlineIO(io.RawIOBase):
    """Socket reads and writes that all end by one deadline (a slow sender cannot hold a thread)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request timed out")
        self._sock.settimeout(left)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        self._arm()
        return self._sock.recv_into(b)

    def write(self, b: Any) -> int:
        view = memoryview(b)
        self._arm()
        self._sock.sendall(view)
        return len(view)


class _Handler(BaseHTTPRequestHandler):
    server_version = "driftd"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: nothing idles between requests
    server: _Listener  # type: ignore[assignment]

    def version_string(self) -> str:
        return "driftd"

    def setup(self) -> None:
        raw = _DeadlineIO(self.request, self.server.deadline())
        self.connection = self.request
        self.rfile = io.BufferedReader(raw, 8192)
        self.wfile = raw  # type: ignore[assignment]

    def finish(self) -> None:
        return  # the listener closes the socket

    def log_message(self, format: str, *args: Any) -> None:  # quiet: we log structurally
        return

    def _send(self, code: int, body: bytes, ctype: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _bearer(self) -> str | None:
        scheme, _, token = (self.headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        route = self.server.routes.get(path)
        if route is None:
            self._send(404, b"not found\n", TEXT)
            return
        if route.authorize is not None:
            token = self._bearer()
            if token is None:
                self._send(401, b"Unauthorized: a bearer token is required\n", TEXT,
                           {"WWW-Authenticate": 'Bearer realm="driftd"'})
                return
            code, reason = route.authorize(token, path)
            if code != 200:
                extra = {"WWW-Authenticate": 'Bearer realm="driftd", error="invalid_token"'} if code == 401 else {}
                self._send(code, f"{self.responses.get(code, ('Error',))[0]}: {reason}\n".encode(), TEXT, extra)
                return
        try:
            code, body, ctype = route.answer()
        except Exception:
            self._send(500, b"internal error\n", TEXT)
            return
        self._send(code, body, ctype, {"Cache-Control": "no-store"} if route.private else None)

    do_HEAD = do_GET


class _Listener:
    """One listening socket: an accept/selector thread and a fixed pool of handler threads."""

    def __init__(self, name: str, host: str, port: int, routes: Mapping[str, Route], *, tls: ssl.SSLContext | None,
                 request_timeout: float, max_connections: int) -> None:
        self.name = name
        self.routes = dict(routes)
        self.tls = tls
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.max_waiting = 8 * max_connections
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(128)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self._local = threading.local()
        self._ready: queue.Queue[tuple[socket.socket, Any, float] | None] = queue.Queue()
        self._idle: dict[socket.socket, tuple[Any, float]] = {}  # connection → (peer, accepted at), oldest first
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.dropped = 0  # connections closed unanswered: idle past the timeout, waited too long, or crowded out

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def deadline(self) -> float:
        return float(self._local.deadline)

    # ---- lifecycle
    def start(self) -> None:
        self._threads = [threading.Thread(target=self._accept_loop, name=f"driftd-http-{self.name}", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"driftd-http-{self.name}-{i}", daemon=True)
                          for i in range(self.max_connections)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        for _ in range(self.max_connections):
            self._ready.put(None)
        for t in self._threads:
            t.join(timeout=self.request_timeout + 1)
        self.close()

    def close(self) -> None:
        """Release every socket (also when the listener never served)."""
        self._stopping = True
        for conn in list(self._idle):
            self._drop(conn)
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._close(item[0])
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._sock.close()

    # ---- accepting: idle connections wait here, in the selector, not in a thread
    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping:
                now = time.monotonic()
                for conn, (_, accepted) in list(self._idle.items()):
                    if now - accepted < self.request_timeout:
                        break  # oldest first: the rest are younger
                    sel.unregister(conn)
                    self._drop(conn)
                timeout = (next(iter(self._idle.values()))[1] + self.request_timeout - now) if self._idle else None
                for key, _ in sel.select(timeout if timeout is None else max(timeout, 0.0)):
                    if key.data == "wake":
                        return
                    if key.data == "listen":
                        self._accept(sel)
                    else:
                        sent = cast(socket.socket, key.fileobj)  # it sent its first bytes: a thread may answer it
                        sel.unregister(sent)
                        peer, _ = self._idle.pop(sent)
                        self._ready.put((sent, peer, time.monotonic()))
        finally:
            sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(64):  # drain the backlog in bursts
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: the selector tells us again
            conn.setblocking(False)
            while len(self._idle) + self._ready.qsize() >= self.max_waiting and self._idle:
                oldest = next(iter(self._idle))
                sel.unregister(oldest)
                self._drop(oldest)
            if len(self._idle) + self._ready.qsize() >= self.max_waiting:
                self._drop(conn)  # every waiting slot holds a connection with a request: this one waits for none
                continue
            self._idle[conn] = (peer, time.monotonic())
            sel.register(conn, selectors.EVENT_READ, "conn")

    def _drop(self, conn: socket.socket) -> None:
        self._idle.pop(conn, None)
        self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        self.dropped += 1
        with contextlib.suppress(OSError):
            conn.close()

    # ---- answering: a fixed number of threads
    def _work(self) -> None:
        while True:
            item = self._ready.get()
            if item is None:
                return
            conn, peer, queued = item
            if time.monotonic() - queued > self.request_timeout:
                self._close(conn)  # waited its whole time for a thread: the client has likely given up
                continue
            self._local.deadline = time.monotonic() + self.request_timeout
            self._serve(conn, peer)

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        sock: socket.socket = conn
        try:
            with contextlib.suppress(Exception):  # a failed handshake, a timeout, a hang-up: nothing to report
                conn.setblocking(True)
                if self.tls is not None:
                    conn.settimeout(self.request_timeout)
                    sock = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                    sock.do_handshake()
                _Handler(sock, peer, self)  # type: ignore[arg-type]
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
            if sock is not conn:
                with contextlib.suppress(OSError):
                    conn.close()


class ApiServer:
    """The metrics listener and the drifts API listener; ``start`` returns once both are listening."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        registry: CollectorRegistry,
        healthy: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
        drifts: Callable[[], list[dict[str, Any]]],
        baselines: Callable[[], dict[str, Any]] | None = None,
        api_address: tuple[str, int] | None = None,
        api_authorize: Authorize | None = None,
        metrics_authorize: Authorize | None = None,
        tls: ssl.SSLContext | None = None,
        request_timeout: float = 10.0,
        max_connections: int = 16,
    ) -> None:
        self.registry = registry
        self.healthy = healthy
        self.ready = ready
        self.drifts = drifts
        self.baselines = baselines  # the set in force (version, per-baseline hashes), beside the drifts
        self.tls = tls is not None
        self.api_auth = api_authorize is not None
        self.metrics_auth = metrics_authorize is not None

        def probe(check: Callable[[], tuple[bool, str]]) -> Callable[[], Answer]:
            def answer() -> Answer:
                ok, why = check()
                return 200 if ok else 503, (why + "\n").encode(), TEXT
            return answer

        metrics_routes = {
            "/metrics": Route(lambda: (200, generate_latest(self.registry), CONTENT_TYPE_LATEST), metrics_authorize),
            "/healthz": Route(probe(lambda: self.healthy())),
            "/readyz": Route(probe(lambda: self.ready())),
        }
        api_routes = {
            DRIFTS_PATH: Route(lambda: (200, json.dumps(self._drifts_doc(), default=str).encode(), "application/json"),
                               api_authorize, private=True),
        }
        opts: dict[str, Any] = {"tls": tls, "request_timeout": request_timeout, "max_connections": max_connections}
        if api_address is None or (port != 0 and tuple(api_address) == (host, port)):  # port 0: two ephemeral ports
            self._metrics = _Listener("metrics", host, port, {**metrics_routes, **api_routes}, **opts)
            self._api: _Listener | None = None
        else:
            self._metrics = _Listener("metrics", host, port, metrics_routes, **opts)
            try:
                self._api = _Listener("api", api_address[0], int(api_address[1]), api_routes, **opts)
            except OSError:
                self._metrics.close()
                raise

    @property
    def address(self) -> tuple[str, int]:
        """The metrics listener (/metrics, /healthz, /readyz)."""
        return self._metrics.address

    @property
    def api_address(self) -> tuple[str, int]:
        """The drifts API listener (the metrics listener when both were given the same address)."""
        return (self._api or self._metrics).address

    def describe(self) -> dict[str, Any]:
        """What the ``http.listening`` log line says (never a secret)."""
        def fmt(a: tuple[str, int]) -> str:
            return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"

        return {"address": fmt(self.address), "api_address": fmt(self.api_address), "tls": self.tls,
                "api_auth": "kubernetes" if self.api_auth else "none",
                "metrics_auth": "kubernetes" if self.metrics_auth else "none"}

    def _listeners(self) -> list[_Listener]:
        return [self._metrics, *([self._api] if self._api else [])]

    def _drifts_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"drifts": self.drifts()}
        if self.baselines is not None:
            doc["baselines"] = self.baselines()
        return doc

    def start(self) -> None:
        for listener in self._listeners():
            listener.start()

    def stop(self) -> None:
        for listener in self._listeners():
            listener.stop()

    def close(self) -> None:
        """Release the sockets of a server that was never started."""
        for listener in self._listeners():
            listener.close()
