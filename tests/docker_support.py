"""Real-Docker test helpers: a client for the local engine and labelled, self-cleaning containers.

The engine and the images come from ``scripts/docker-env.sh`` (dockerd without bridge or
iptables, ``driftd-test/busybox:1.0`` and ``:2.0`` imported from Debian's busybox-static).
Every container made here runs with ``network_mode="none"`` and carries the label
``driftd-test=1``, so ``cleanup_test_containers`` can sweep whatever a crashed run left.

Limits of the engine on this machine (see the script's report): the sandbox's capability
bounding set lacks CAP_SYS_RESOURCE, so containers with ``privileged=True`` or
``cap_add=["ALL"|"SYS_RESOURCE"]`` can be *created* and inspected but not started (pass
``start=False``); AppArmor is absent, so ``apparmor=...`` security options are accepted and
ignored; seccomp works.

Use the fixtures by adding ``pytest_plugins = ("docker_support",)`` to tests/conftest.py, or
call the functions directly.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from conftest import need
from docker.models.containers import Container

SOCKET = "/var/run/docker.sock"
BASE_URL = f"unix://{SOCKET}"
IMAGE_V1 = "driftd-test/busybox:1.0"
IMAGE_V2 = "driftd-test/busybox:2.0"
TEST_IMAGES = (IMAGE_V1, IMAGE_V2)
LABEL = "driftd-test"
LABEL_FILTER = {"label": f"{LABEL}=1"}
SCOPE = "driftd-scope"  # per-test label: a test's baselines select only its own containers
SETUP_HINT = "run `bash scripts/docker-env.sh` as root"
DOCKER_PID = Path("/var/run/docker.pid")
DOCKER_ENV = Path(__file__).resolve().parent.parent / "scripts" / "docker-env.sh"

_client: docker.DockerClient | None = None
# (client, container id) made by make_container without a pytest request, removed at exit.
_pending: list[tuple[docker.DockerClient, str]] = []


def docker_client_or_fail(*, images: bool = True) -> docker.DockerClient:
    """A client for the local engine: skips locally, fails under CI=true, when it is missing.

    With ``images`` (the default) the two test images must exist as well.
    """
    global _client
    if _client is not None:
        try:
            _client.ping()
        except Exception:
            _client = None
    if _client is None:
        need(os.path.exists(SOCKET), f"no Docker engine socket at {SOCKET}: {SETUP_HINT}")
        try:
            client = docker.DockerClient(base_url=BASE_URL, timeout=30)
            client.ping()
        except Exception as exc:
            need(False, f"Docker engine at {SOCKET} not answering ({exc}): {SETUP_HINT}")
            raise  # unreachable: need() skipped or failed
        _client = client
    if images:
        for image in TEST_IMAGES:
            try:
                _client.images.get(image)
            except docker.errors.ImageNotFound:
                need(False, f"test image {image} missing: {SETUP_HINT}")
    return _client


def _remove(client: docker.DockerClient, container_id: str) -> None:
    try:
        client.api.remove_container(container_id, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: removal already in progress
            raise


def make_container(
    client: docker.DockerClient,
    name: str,
    image: str = IMAGE_V1,
    *,
    start: bool = True,
    request: pytest.FixtureRequest | None = None,
    **kwargs: Any,
) -> Container:
    """Create (and by default start) a test container; it is removed at teardown.

    Always ``network_mode="none"`` and label ``driftd-test=1`` (merged into ``labels``);
    other keyword arguments go to ``client.containers.create``. Cleanup is registered with
    ``request.addfinalizer`` when a pytest ``request`` is given, otherwise at interpreter exit
    (``cleanup_test_containers`` also sweeps everything labelled). A leftover test container
    with the same name (from a crashed run) is replaced. When ``start`` fails the container is
    removed and the error re-raised.
    """
    if kwargs.get("network_mode", "none") != "none":
        raise ValueError("test containers always run with network_mode='none'")
    kwargs["network_mode"] = "none"
    labels = dict(kwargs.pop("labels", None) or {})
    labels[LABEL] = "1"
    kwargs["labels"] = labels
    try:
        old = client.containers.get(name)
    except docker.errors.NotFound:
        pass
    else:
        if old.labels.get(LABEL) != "1":
            raise RuntimeError(f"container {name!r} exists and is not a driftd test container")
        _remove(client, old.id)

    container = client.containers.create(image, name=name, **kwargs)
    cid = container.id
    assert cid is not None
    if request is not None:
        request.addfinalizer(lambda: _remove(client, cid))
    else:
        _pending.append((client, cid))
    if start:
        try:
            container.start()
        except docker.errors.APIError:
            _remove(client, cid)
            raise
    container.reload()
    return container


def cleanup_test_containers(client: docker.DockerClient) -> int:
    """Remove every container labelled ``driftd-test=1`` (running or not); returns how many."""
    removed = 0
    for container in client.containers.list(all=True, filters=LABEL_FILTER):
        assert container.id is not None
        _remove(client, container.id)
        removed += 1
    return removed


@atexit.register
def _remove_pending() -> None:
    while _pending:
        client, cid = _pending.pop()
        with contextlib.suppress(Exception):  # the engine may be gone at exit; the label sweep catches it later
            _remove(client, cid)


@pytest.fixture
def docker_client() -> docker.DockerClient:
    """The local engine's client (skip locally / fail in CI without it)."""
    return docker_client_or_fail()


@pytest.fixture
def make_test_container(docker_client: docker.DockerClient, request: pytest.FixtureRequest) -> Iterator[Callable[..., Container]]:
    """``make_test_container(name, image=..., **kwargs)``: ``make_container`` removed at teardown."""

    def make(name: str, image: str = IMAGE_V1, **kwargs: Any) -> Container:
        return make_container(docker_client, name, image, request=request, **kwargs)

    yield make


# --------------------------------------------------------------------------- per-test scope


@pytest.fixture
def image_ids(docker_client: docker.DockerClient) -> dict[str, str]:
    return {IMAGE_V1: docker_client.images.get(IMAGE_V1).id, IMAGE_V2: docker_client.images.get(IMAGE_V2).id}


@pytest.fixture
def scope(docker_client: docker.DockerClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique scope label value; every container (replacements, parked ones) and volume with it is removed at teardown."""
    value = uuid.uuid4().hex[:10]
    yield value
    for attempt in range(30):  # the engine may be restarting (the daemon test restarts it)
        try:
            client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=30)
            for c in client.containers.list(all=True, filters={"label": f"{SCOPE}={value}"}):
                client.api.remove_container(c.id, force=True, v=True)
            for v in client.volumes.list(filters={"name": value}):
                v.remove(force=True)
            return
        except Exception as e:
            if attempt == 29:
                print(f"scope cleanup failed (the driftd-test=1 label sweep catches it later): {e}")
            time.sleep(2)


@pytest.fixture
def make(make_test_container: Callable[..., Any], scope: str) -> Callable[..., Any]:
    """``make(name, image=IMAGE_V1, **kwargs)``: a test container in this test's scope (name made unique)."""

    def create(name: str, image: str = IMAGE_V1, **kwargs: Any) -> Any:
        labels = {SCOPE: scope, **(kwargs.pop("labels", None) or {})}
        return make_test_container(f"{name}-{scope}", image, labels=labels, **kwargs)

    return create


@pytest.fixture
def docker_runtime(make_runtime: Callable[..., Any], baselines_dir: Callable[..., Path]) -> Callable[..., Any]:
    """``docker_runtime({file: yaml}, **settings)``: a runtime with the Docker target enabled."""

    def build(files: dict[str, str], **settings: Any) -> Any:
        settings.setdefault("docker", {"enabled": True})
        return make_runtime(baselines_dir(files), **settings)

    return build

# --------------------------------------------------------------------------- engine kill / start


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1][0] != "Z"


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((d / "stat").read_text().rsplit(") ", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
    return out


def engine_answers(timeout: float = 5) -> bool:
    try:
        docker.DockerClient(base_url=BASE_URL, timeout=timeout).ping()
    except Exception:
        return False
    return True


def need_engine_control() -> None:
    """Killing and restarting dockerd needs root and its pid file (skip locally / fail in CI)."""
    need(os.geteuid() == 0 and DOCKER_PID.exists(), "killing and restarting dockerd needs root and /var/run/docker.pid")


def kill_engine(sig: int = signal.SIGKILL, timeout: float = 60) -> None:
    """Send ``sig`` to dockerd and wait until it is gone (a SIGKILLed dockerd leaves its pid file: removed)."""
    pid = int(DOCKER_PID.read_text().strip())
    children = _children(pid)  # its managed containerd: a new dockerd cannot start one while it lingers
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    for p in (pid, *children):
        while alive(p):
            if time.monotonic() > deadline:
                raise AssertionError(f"dockerd (pid {pid}) or its child {p} alive {timeout:.0f} s after signal {sig}")
            time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        if DOCKER_PID.read_text().strip() == str(pid):
            DOCKER_PID.unlink()


def start_engine(timeout: float = 180) -> None:
    """Start dockerd again through ``scripts/docker-env.sh`` and wait until it answers."""
    global _client
    for attempt in range(3):  # dockerd may give up on a containerd that was still going away
        proc = subprocess.run(["bash", str(DOCKER_ENV)], capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            break
        if attempt == 2:
            raise AssertionError(f"docker-env.sh failed:\n{proc.stderr[-3000:]}")
        time.sleep(1)
    deadline = time.monotonic() + 60
    while not engine_answers(2):
        if time.monotonic() > deadline:
            raise AssertionError("dockerd not answering after docker-env.sh")
        time.sleep(0.1)
    _client = None  # the cached client's connections died with the old engine


def ensure_engine() -> None:
    """Leave a running engine behind, whatever a test did to it."""
    if engine_answers():
        return
    if DOCKER_PID.exists():
        try:
            pid = int(DOCKER_PID.read_text().strip())
        except ValueError:
            pid = 0
        if not pid or not alive(pid):
            DOCKER_PID.unlink(missing_ok=True)
    start_engine()


# --------------------------------------------------------------------------- Engine API relay


class EngineRelay:
    """A unix-socket relay to the engine that can hold one matching Engine API request.

    ``EngineRelay(path).start()``, point a client at ``relay.url``; ``relay.hold("POST",
    r"/containers/create")`` makes the next request whose method and path (version prefix
    and query stripped) match be held: ``relay.held`` is set and the request is neither
    forwarded nor answered until ``release(forward=...)``: ``forward=True`` sends it on to the
    engine (its answer goes to the client if it is still there), ``forward=False`` drops it
    (the client's connection is closed as if the engine died).  Every request seen is in
    ``relay.log`` as ``"METHOD /path"``.
    """

    def __init__(self, path: Path, upstream: str = SOCKET) -> None:
        self.path = Path(path)
        self.upstream = upstream
        self.url = f"unix://{self.path}"
        self.log: list[str] = []
        self.held = threading.Event()
        self.held_request = ""
        self.forwarded = threading.Event()  # the held request reached the engine and it answered
        self._pattern: tuple[str, re.Pattern[str]] | None = None
        self._release = threading.Event()
        self._forward = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> EngineRelay:
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock = sock
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()
        return self

    def hold(self, method: str, path_regex: str) -> None:
        with self._lock:
            self._pattern = (method.upper(), re.compile(path_regex))
            self.held.clear()
            self._release.clear()
            self.forwarded.clear()

    def release(self, *, forward: bool) -> None:
        self._forward = forward
        self._release.set()

    def close(self) -> None:
        self._stop.set()
        self._release.set()
        if self._sock is not None:
            self._sock.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> EngineRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="relay-conn", daemon=True).start()

    def _match(self, method: str, path: str) -> bool:
        with self._lock:
            if self._pattern is None or self.held.is_set():
                return False
            m, rx = self._pattern
            if m != method or not rx.search(path):
                return False
            self.held_request = f"{method} {path}"
            self.held.set()
            self._pattern = None
            return True

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.upstream)
        except OSError:
            client.close()
            return
        answered = threading.Event()
        threading.Thread(target=self._pump, args=(upstream, client, answered), name="relay-up", daemon=True).start()
        buf = b""
        try:
            while True:
                request, buf = self._read_request(client, buf)
                if request is None:
                    break
                line = request.split(b"\r\n", 1)[0].decode("latin-1")
                method, target = line.split(" ")[:2]
                path = re.sub(r"^/v[0-9.]+", "", target.split("?", 1)[0])
                self.log.append(f"{method} {path}")
                if self._match(method, path):
                    self._release.wait()
                    if not self._forward or self._stop.is_set():
                        break
                    answered.clear()
                    upstream.sendall(request)
                    if answered.wait(60):
                        self.forwarded.set()
                    continue
                upstream.sendall(request)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, answered: threading.Event) -> None:
        dst_ok = True
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                answered.set()
                if dst_ok:
                    try:
                        dst.sendall(data)
                    except OSError:
                        dst_ok = False  # the client died; keep reading so a forwarded request completes
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _read_request(sock: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
        """One whole HTTP request (head + Content-Length or chunked body) from ``sock``."""

        def more() -> bool:
            nonlocal buf
            data = sock.recv(65536)
            if not data:
                return False
            buf += data
            return True

        while b"\r\n\r\n" not in buf:
            if not more():
                return None, buf
        head, _, rest = buf.partition(b"\r\n\r\n")
        headers = {}
        for h in head.split(b"\r\n")[1:]:
            k, _, v = h.partition(b":")
            headers[k.strip().lower()] = v.strip()
        buf = rest
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while True:
                while b"\r\n" not in buf:
                    if not more():
                        return None, buf
                size_line, _, buf = buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(buf) < size + 2:
                    if not more():
                        return None, buf
                body += size_line + b"\r\n" + buf[:size + 2]
                buf = buf[size + 2:]
                if size == 0:
                    return head + b"\r\n\r\n" + body, buf
        length = int(headers.get(b"content-length", b"0") or 0)
        while len(buf) < length:
            if not more():
                return None, buf
        return head + b"\r\n\r\n" + buf[:length], buf[length:]
