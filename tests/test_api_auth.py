"""The HTTP listeners: two of them, bounded threads and timeouts, TLS, and Kubernetes bearer-token auth.

The listener behaviour (idle connections, slow senders, TLS, the ``Server`` header) runs on
127.0.0.1 with short timeouts; the auth runs against the real kube-apiserver of
tests/k8s_support.py: ServiceAccounts with and without an RBAC grant, their tokens from the
TokenRequest API, and driftd's TokenReview/SubjectAccessReview calls counted in the API
server's audit log.  TLS certificates come from the ``openssl`` command (``need``: fails in CI
when missing).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import need
from k8s_support import KubeEnv, KubeRest
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from driftd.api.auth import KubernetesAuth
from driftd.api.http import ApiServer
from driftd.runtime import build_api_server
from driftd.settings import load_settings

DRIFTS = [{"key": "host:file:/etc/motd", "baseline": "motd", "last_error": "EACCES"}]


# ---------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DRIFTD_* variable of the calling shell leaks into the settings built here."""
    import os

    for k in list(os.environ):
        if k.startswith("DRIFTD_"):
            monkeypatch.delenv(k)


def get(port: int, path: str, *, token: str | None = None, tls: ssl.SSLContext | None = None,
        timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection
    if tls is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """True once the server has closed ``s`` (EOF or reset) within ``timeout`` seconds."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture
def serve() -> Iterator[Callable[..., ApiServer]]:
    started: list[ApiServer] = []

    def start(**kw: Any) -> ApiServer:
        registry = CollectorRegistry()
        Counter("driftd_test_total", "a sample", registry=registry).inc()
        kw.setdefault("api_address", ("127.0.0.1", 0))
        srv = ApiServer("127.0.0.1", 0, registry=registry, healthy=lambda: (True, "ok"), ready=lambda: (True, "ok"),
                        drifts=lambda: DRIFTS, **kw)
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def idle_sockets() -> Iterator[Callable[[int, int], list[socket.socket]]]:
    opened: list[socket.socket] = []

    def open_(port: int, n: int) -> list[socket.socket]:
        out = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
        opened.extend(out)
        return out

    yield open_
    for s in opened:
        s.close()


# ---------------------------------------------------------------------------- settings
class TestSettings:
    def test_defaults(self) -> None:
        h = load_settings().http
        assert (h.address, h.api_address) == ("127.0.0.1:9808", "127.0.0.1:9809")
        assert (h.api_auth, h.metrics_auth) == ("none", "none")
        assert (h.auth_cache_seconds, h.request_timeout_seconds, h.max_connections) == (60.0, 10.0, 16)
        assert h.tls_cert_file is None and h.tls_key_file is None

    @pytest.mark.parametrize("address", ["0.0.0.0:9809", "10.1.2.3:9809", "[::]:9809", "node-a.example:9809"])
    def test_no_auth_is_refused_off_loopback(self, address: str) -> None:
        with pytest.raises(ValidationError) as e:
            load_settings(http={"api_address": address})
        msg = str(e.value)
        assert "http.api_auth none serves /api/v1/drifts" in msg and f"not {address}" in msg
        assert "set http.api_auth: kubernetes" in msg
        assert load_settings(http={"api_address": address, "api_auth": "kubernetes"}).http.api_auth == "kubernetes"

    @pytest.mark.parametrize("address", ["127.0.0.1:9809", "127.0.0.2:1", "[::1]:9809", "localhost:9809"])
    def test_no_auth_is_fine_on_loopback(self, address: str) -> None:
        assert load_settings(http={"api_address": address}).http.api_auth == "none"

    def test_cli_names_the_setting(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        from driftd.cli import _settings, parser

        args = parser().parse_args(["run", "--api-listen", "0.0.0.0:9809", "--state-dir", str(tmp_path)])
        with pytest.raises(SystemExit) as e:
            _settings(args)
        assert e.value.code == 2
        assert "driftd: setting http: Value error, http.api_auth none serves" in capsys.readouterr().err

    def test_tls_files_go_together(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError, match=r"tls_cert_file and http\.tls_key_file go together"):
            load_settings(http={"tls_cert_file": str(tmp_path / "c.pem")})


# ---------------------------------------------------------------------------- listeners
class TestListeners:
    def test_two_listeners_and_no_python_banner(self, serve: Callable[..., ApiServer]) -> None:
        srv = serve()
        mport, aport = srv.address[1], srv.api_address[1]
        assert mport != aport
        code, headers, body = get(mport, "/metrics")
        assert code == 200 and b"driftd_test_total 1.0" in body
        assert get(mport, "/healthz")[0] == 200 and get(mport, "/readyz")[0] == 200
        assert get(mport, "/api/v1/drifts")[0] == 404, "the drifts API is not on the metrics listener"
        code, headers, body = get(aport, "/api/v1/drifts")
        assert code == 200 and json.loads(body) == {"drifts": DRIFTS}
        assert headers["cache-control"] == "no-store"
        assert get(aport, "/metrics")[0] == 404 and get(aport, "/healthz")[0] == 404
        for port in (mport, aport):
            for path in ("/healthz", "/nope"):
                assert get(port, path)[1]["server"] == "driftd", "no Python version in the banner"
        # error pages written by http.server itself carry the same banner
        with socket.create_connection(("127.0.0.1", mport), timeout=5) as s:
            s.sendall(b"BREW /coffee HTTP/1.0\r\n\r\n")
            raw = s.recv(4096)
        assert raw.startswith(b"HTTP/1.0 501") and b"\r\nServer: driftd\r\n" in raw and b"Python" not in raw
        assert srv.describe() == {"address": f"127.0.0.1:{mport}", "api_address": f"127.0.0.1:{aport}", "tls": False,
                                  "api_auth": "none", "metrics_auth": "none"}

    def test_one_listener_when_both_addresses_are_the_same(self, serve: Callable[..., ApiServer]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        registry = CollectorRegistry()
        srv = ApiServer("127.0.0.1", port, registry=registry, healthy=lambda: (True, "ok"), ready=lambda: (True, "ok"),
                        drifts=lambda: DRIFTS, api_address=("127.0.0.1", port))
        srv.start()
        try:
            assert srv.api_address == srv.address
            assert get(port, "/api/v1/drifts")[0] == 200 and get(port, "/healthz")[0] == 200
        finally:
            srv.stop()

    def test_idle_connections_hold_no_thread_and_are_dropped_after_the_timeout(
            self, serve: Callable[..., ApiServer], idle_sockets: Callable[[int, int], list[socket.socket]]) -> None:
        """Connections that send nothing wait in the selector: /healthz answers at once, whatever their number,
        and each idle one is closed request_timeout after it was accepted."""
        srv = serve(request_timeout=1.0, max_connections=2)
        port = srv.address[1]
        idle = idle_sockets(port, 10)  # five times the handler threads
        started = time.monotonic()
        assert get(port, "/healthz", timeout=2)[0] == 200
        assert time.monotonic() - started < 0.5, "an idle connection must not delay others"
        assert all(closed_by_peer(s, 3.0) for s in idle)
        assert 0.8 < time.monotonic() - started < 3.0
        assert get(port, "/healthz")[0] == 200

    def test_slow_senders_take_threads_only_until_the_timeout(
            self, serve: Callable[..., ApiServer], idle_sockets: Callable[[int, int], list[socket.socket]]) -> None:
        """More slow senders (a request trickling in) than handler threads: others wait for a thread, at most
        about one request timeout, and are answered; the slow ones are cut off at the timeout."""
        srv = serve(request_timeout=1.0, max_connections=2)
        port = srv.address[1]
        slow = idle_sockets(port, 2)
        for s in slow:
            s.sendall(b"GET /healthz HTTP/1.0\r\nX-Slow: ")  # never finished
        time.sleep(0.2)  # both are on a handler thread now
        started = time.monotonic()
        code, _, _ = get(port, "/healthz", timeout=5)
        waited = time.monotonic() - started
        assert code == 200
        assert 0.5 < waited < 2.0, f"/healthz waited {waited:.2f}s for a handler thread"
        for s in slow:
            assert closed_by_peer(s, 2.0)

    def test_a_crowd_of_idle_connections_cannot_lock_others_out(
            self, serve: Callable[..., ApiServer], idle_sockets: Callable[[int, int], list[socket.socket]]) -> None:
        """Past 8 x max_connections waiting connections, the oldest idle ones are closed to make room."""
        srv = serve(request_timeout=5.0, max_connections=2)
        port = srv.address[1]
        crowd = idle_sockets(port, 16 + 4)
        assert get(port, "/healthz", timeout=2)[0] == 200
        assert all(closed_by_peer(s, 1.0) for s in crowd[:5]), "the oldest idle connections make room"
        assert not any(closed_by_peer(s, 0.1) for s in crowd[-10:]), "younger ones keep their time"


# ---------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    need(shutil.which("openssl") is not None, "openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "tls.crt", d / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=driftd-test",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return crt, key


def client_tls(crt: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(crt))
    ctx.check_hostname = True
    return ctx


class TestTLS:
    def test_metrics_and_api_over_https(self, tmp_path: Path, cert: tuple[Path, Path],
                                        idle_sockets: Callable[[int, int], list[socket.socket]]) -> None:
        crt, key = cert
        s = load_settings(http={"address": "127.0.0.1:0", "api_address": "127.0.0.1:0", "tls_cert_file": str(crt),
                                "tls_key_file": str(key), "request_timeout_seconds": 1.0, "max_connections": 2})
        srv = build_api_server(s, registry=CollectorRegistry(), healthy=lambda: (True, "ok"), ready=lambda: (True, "ok"),
                               drifts=lambda: DRIFTS)
        srv.start()
        try:
            mport, aport = srv.address[1], srv.api_address[1]
            tls = client_tls(crt)
            code, headers, _ = get(mport, "/metrics", tls=tls)
            assert code == 200 and headers["server"] == "driftd" and headers["content-type"].startswith("text/plain")
            assert get(mport, "/healthz", tls=tls)[0] == 200
            assert json.loads(get(aport, "/api/v1/drifts", tls=tls)[2]) == {"drifts": DRIFTS}
            with socket.create_connection(("127.0.0.1", mport), timeout=5) as raw, \
                    tls.wrap_socket(raw, server_hostname="127.0.0.1") as t:
                assert t.version() in ("TLSv1.2", "TLSv1.3")
            # no TLS below 1.2
            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
            with contextlib.suppress(ValueError, ssl.SSLError):
                old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
                old.set_ciphers("ALL:@SECLEVEL=0")
            with pytest.warns(DeprecationWarning):
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            with pytest.raises((ssl.SSLError, ConnectionError)):
                get(mport, "/healthz", tls=old)
            # plain HTTP on the TLS port gets no answer
            with pytest.raises((http.client.HTTPException, ConnectionError)):
                get(mport, "/healthz")
            # a client that never starts the handshake holds no thread: others are answered
            idle_sockets(mport, 6)
            started = time.monotonic()
            assert get(mport, "/healthz", tls=tls, timeout=2)[0] == 200
            assert time.monotonic() - started < 0.5
            assert srv.describe()["tls"] is True
        finally:
            srv.stop()


# ---------------------------------------------------------------------------- auth without an API server
class FakeReviews:
    """Answers TokenReview/SubjectAccessReview like the API server would, for one known token."""

    def __init__(self, allowed: dict[str, bool]) -> None:
        self.allowed = allowed  # token → may get the path
        self.calls: list[str] = []
        self.fail = False

    def __call__(self, path: str, body: Any) -> dict[str, Any]:
        self.calls.append(body["kind"])
        if self.fail:
            raise RuntimeError("kubernetes API unreachable")
        if body["kind"] == "TokenReview":
            tok = body["spec"]["token"]
            if tok not in self.allowed:
                return {"status": {"authenticated": False, "error": "invalid"}}
            return {"status": {"authenticated": True, "user": {"username": f"user-{tok}", "groups": ["g"]}}}
        assert (body["spec"].get("nonResourceAttributes") or body["spec"]["resourceAttributes"])["verb"] == "get"
        return {"status": {"allowed": self.allowed[body["spec"]["user"].removeprefix("user-")]}}


class TestAuthUnits:
    def test_statuses_and_headers(self, serve: Callable[..., ApiServer]) -> None:
        reviews = FakeReviews({"good": True, "meh": False})
        auth = KubernetesAuth(reviews, cache_seconds=60)
        srv = serve(api_authorize=auth)
        aport = srv.api_address[1]
        code, headers, body = get(aport, "/api/v1/drifts")
        assert code == 401 and headers["www-authenticate"] == 'Bearer realm="driftd"'
        assert b"EACCES" not in body and b"/etc/motd" not in body
        code, headers, body = get(aport, "/api/v1/drifts", token="bogus")
        assert code == 401 and 'error="invalid_token"' in headers["www-authenticate"]
        code, _, body = get(aport, "/api/v1/drifts", token="meh")
        assert code == 403 and body == b"Forbidden: user 'user-meh' may not get /api/v1/drifts\n"
        code, headers, body = get(aport, "/api/v1/drifts", token="good")
        assert code == 200 and json.loads(body) == {"drifts": DRIFTS} and headers["cache-control"] == "no-store"
        # /metrics and the probes stay open when only the API is protected
        assert get(srv.address[1], "/metrics")[0] == 200

    def test_runtime_wiring_checks_the_drifts_of_this_node(self) -> None:
        """build_api_server: the drifts API as resource drifts.driftd.io/<node>, /metrics as its URL, one cache."""
        sent: list[dict[str, Any]] = []

        def reviews(path: str, body: Any) -> dict[str, Any]:
            sent.append(body)
            if body["kind"] == "TokenReview":
                return {"status": {"authenticated": True, "user": {"username": "u", "uid": "1", "groups": ["g"],
                                                                    "extra": {"k": ["v"]}}}}
            return {"status": {"allowed": True}}

        s = load_settings(node_name="node-x", http={"address": "127.0.0.1:0", "api_address": "127.0.0.1:0",
                                                    "api_auth": "kubernetes", "metrics_auth": "kubernetes"})
        srv = build_api_server(s, registry=CollectorRegistry(), healthy=lambda: (True, "ok"), ready=lambda: (True, "ok"),
                               drifts=lambda: DRIFTS, reviews=reviews)
        srv.start()
        try:
            assert get(srv.api_address[1], "/api/v1/drifts", token="t")[0] == 200
            assert get(srv.address[1], "/metrics", token="t")[0] == 200
            assert get(srv.address[1], "/healthz")[0] == 200
        finally:
            srv.stop()
        sars = [b["spec"] for b in sent if b["kind"] == "SubjectAccessReview"]
        assert sars == [
            {"user": "u", "uid": "1", "groups": ["g"], "extra": {"k": ["v"]},
             "resourceAttributes": {"group": "driftd.io", "resource": "drifts", "name": "node-x", "verb": "get"}},
            {"user": "u", "uid": "1", "groups": ["g"], "extra": {"k": ["v"]},
             "nonResourceAttributes": {"path": "/metrics", "verb": "get"}},
        ]
        assert [b["spec"] for b in sent if b["kind"] == "TokenReview"] == [{"token": "t"}] * 2

    def test_cache_positive_negative_and_expiry(self) -> None:
        now = [1000.0]
        reviews = FakeReviews({"good": True, "meh": False})
        auth = KubernetesAuth(reviews, cache_seconds=60, clock=lambda: now[0])
        for _ in range(3):
            assert auth("good", "/api/v1/drifts")[0] == 200
            assert auth("meh", "/api/v1/drifts")[0] == 403
            assert auth("bogus", "/api/v1/drifts")[0] == 401
        assert reviews.calls.count("TokenReview") == 3 and reviews.calls.count("SubjectAccessReview") == 2
        assert auth("good", "/metrics")[0] == 200  # keyed by path too
        assert reviews.calls.count("TokenReview") == 4
        now[0] += 61
        assert auth("good", "/api/v1/drifts")[0] == 200
        assert reviews.calls.count("TokenReview") == 5
        # no answer from the API server: 503, and nothing cached
        reviews.fail = True
        now[0] += 61
        assert auth("good", "/api/v1/drifts") == (503, "authorization unavailable")
        reviews.fail = False
        assert auth("good", "/api/v1/drifts")[0] == 200
        # malformed tokens never reach the API server
        before = len(reviews.calls)
        assert auth("x" * 20_000, "/api/v1/drifts")[0] == 401 and auth("a b", "/api/v1/drifts")[0] == 401
        assert len(reviews.calls) == before

    def test_cache_is_bounded_and_keeps_no_token(self) -> None:
        reviews = FakeReviews({"good": True})
        auth = KubernetesAuth(reviews, cache_seconds=60, max_entries=5)
        for i in range(50):
            auth(f"random-{i}", "/api/v1/drifts")
        assert len(auth._cache) <= 5
        auth("good", "/api/v1/drifts")
        assert not any("good" in k or "random" in k for k in auth._cache)

    def test_unavailable_is_logged_without_the_token(self) -> None:
        from driftd.testing import capture_logs

        reviews = FakeReviews({})
        reviews.fail = True
        auth = KubernetesAuth(reviews)
        with capture_logs() as logs:
            assert auth("sekret-token-value", "/api/v1/drifts")[0] == 503
        assert [e["event"] for e in logs] == ["http.auth_unavailable"]
        assert "sekret" not in json.dumps(logs, default=str)


# ---------------------------------------------------------------------------- auth against the real API server
def service_account_token(rest: KubeRest, ns: str, name: str) -> str:
    rest.post(f"/api/v1/namespaces/{ns}/serviceaccounts",
              {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
    tr = rest.post(f"/api/v1/namespaces/{ns}/serviceaccounts/{name}/token",
                   {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    return str(tr["status"]["token"])


NODE = "node-a"
READER_RULES: dict[str, list[dict[str, Any]]] = {
    # what the chart's <release>-drift-reader ClusterRole grants (docs/operations.md)
    "reader": [{"apiGroups": ["driftd.io"], "resources": ["drifts"], "verbs": ["get"]}],
    "scraper": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
    "elsewhere": [{"apiGroups": ["driftd.io"], "resources": ["drifts"], "resourceNames": ["node-b"], "verbs": ["get"]}],
    # what the built-in system:discovery role already gives every authenticated user
    "discovery": [{"nonResourceURLs": ["/api/v1/drifts"], "verbs": ["get"]}],
}


@pytest.fixture
def readers(k8s_rest: KubeRest, k8s_namespace: str) -> Iterator[dict[str, str]]:
    """Tokens of ServiceAccounts granted READER_RULES (``reader``: the drifts of every node, ``scraper``:
    /metrics, ``elsewhere``: the drifts of node-b only, ``discovery``: the non-resource URL) and ``nobody``."""
    ns = k8s_namespace
    made: list[str] = []
    for role, rules in READER_RULES.items():
        name = f"{ns}-{role}"
        k8s_rest.post("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
            "rules": rules})
        made.append(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}")
        k8s_rest.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": role, "namespace": ns}]})
        made.append(f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}")
    tokens = {sa: service_account_token(k8s_rest, ns, sa) for sa in [*READER_RULES, "nobody"]}
    yield {**tokens, "ns": ns}
    for path in made:
        with contextlib.suppress(Exception):
            k8s_rest.delete(path)


def reviews_by_driftd(env: KubeEnv, since: int) -> dict[str, int]:
    events = env.audit()[since:]
    return {res: sum(1 for e in events if (e.get("objectRef") or {}).get("resource") == res and e.get("verb") == "create"
                     and not e.get("userAgent", "").startswith("driftd-tests"))
            for res in ("tokenreviews", "subjectaccessreviews")}


@pytest.mark.real
class TestKubernetesAuth:
    def start(self, kubeconfig: str, **http: Any) -> Any:
        s = load_settings(http={"address": "127.0.0.1:0", "api_address": "127.0.0.1:0", "api_auth": "kubernetes", **http},
                          kubernetes={"kubeconfig": kubeconfig}, node_name=NODE)
        srv = build_api_server(s, registry=CollectorRegistry(), healthy=lambda: (True, "ok"), ready=lambda: (True, "ok"),
                               drifts=lambda: DRIFTS)
        srv.start()
        return srv

    def test_token_review_and_subject_access_review(self, k8s_env: KubeEnv, k8s_kubeconfig: str,
                                                    readers: dict[str, str]) -> None:
        srv = self.start(k8s_kubeconfig)
        try:
            aport = srv.api_address[1]
            since = len(k8s_env.audit())
            code, headers, _ = get(aport, "/api/v1/drifts")
            assert code == 401 and headers["www-authenticate"].startswith("Bearer")
            assert get(aport, "/api/v1/drifts", token="not-a-token")[0] == 401
            code, _, body = get(aport, "/api/v1/drifts", token=readers["nobody"])
            assert code == 403 and b"/etc/motd" not in body
            assert body == f"Forbidden: user 'system:serviceaccount:{readers['ns']}:nobody' may not get " \
                           f"drifts.driftd.io/{NODE}\n".encode()
            assert get(aport, "/api/v1/drifts", token=readers["scraper"])[0] == 403  # /metrics only
            assert get(aport, "/api/v1/drifts", token=readers["elsewhere"])[0] == 403  # another node's drifts
            # the non-resource URL /api/v1/drifts is not what is checked: system:discovery grants /api/* to everyone
            assert get(aport, "/api/v1/drifts", token=readers["discovery"])[0] == 403
            code, headers, body = get(aport, "/api/v1/drifts", token=readers["reader"])
            assert code == 200 and json.loads(body) == {"drifts": DRIFTS}
            assert reviews_by_driftd(k8s_env, since) == {"tokenreviews": 6, "subjectaccessreviews": 5}
            # the decisions are cached: the same requests again send no review
            since = len(k8s_env.audit())
            for _ in range(3):
                assert get(aport, "/api/v1/drifts", token=readers["reader"])[0] == 200
                assert get(aport, "/api/v1/drifts", token=readers["nobody"])[0] == 403
                assert get(aport, "/api/v1/drifts", token="not-a-token")[0] == 401
            assert reviews_by_driftd(k8s_env, since) == {"tokenreviews": 0, "subjectaccessreviews": 0}
            # metrics and probes stay open with only the API protected
            assert get(srv.address[1], "/metrics")[0] == 200 and get(srv.address[1], "/healthz")[0] == 200
        finally:
            srv.stop()

    def test_no_cache_reviews_every_request(self, k8s_env: KubeEnv, k8s_kubeconfig: str,
                                            readers: dict[str, str]) -> None:
        srv = self.start(k8s_kubeconfig, auth_cache_seconds=0)
        try:
            since = len(k8s_env.audit())
            for _ in range(3):
                assert get(srv.api_address[1], "/api/v1/drifts", token=readers["reader"])[0] == 200
            assert reviews_by_driftd(k8s_env, since) == {"tokenreviews": 3, "subjectaccessreviews": 3}
        finally:
            srv.stop()

    def test_metrics_auth(self, k8s_kubeconfig: str, readers: dict[str, str]) -> None:
        srv = self.start(k8s_kubeconfig, metrics_auth="kubernetes")
        try:
            mport = srv.address[1]
            assert get(mport, "/metrics")[0] == 401
            assert get(mport, "/metrics", token=readers["reader"])[0] == 403
            assert get(mport, "/metrics", token=readers["scraper"])[0] == 200
            assert get(mport, "/healthz")[0] == 200 and get(mport, "/readyz")[0] == 200, "probes carry no token"
        finally:
            srv.stop()

    def test_audience(self, k8s_kubeconfig: str, readers: dict[str, str]) -> None:
        """A token for the API server is refused when driftd asks for its own audience."""
        srv = self.start(k8s_kubeconfig, auth_audiences=["driftd"])
        try:
            assert get(srv.api_address[1], "/api/v1/drifts", token=readers["reader"])[0] == 401
        finally:
            srv.stop()

    def test_api_server_unreachable_is_503(self, tmp_path: Path, k8s_env: KubeEnv, readers: dict[str, str]) -> None:
        import yaml

        cfg = yaml.safe_load(Path(k8s_env.kubeconfig).read_text())
        for c in cfg["clusters"]:
            c["cluster"]["server"] = "https://127.0.0.1:1"
        bad = tmp_path / "unreachable.kubeconfig"
        bad.write_text(yaml.safe_dump(cfg))
        srv = self.start(str(bad))
        try:
            code, _, body = get(srv.api_address[1], "/api/v1/drifts", token=readers["reader"], timeout=15)
            assert (code, body) == (503, b"Service Unavailable: authorization unavailable\n")
        finally:
            srv.stop()
