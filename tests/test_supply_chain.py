"""Supply chain (issue 10 item 7): the image installs only hashed pins, with a pinned build backend.

The static checks read the Dockerfile, pyproject.toml and the lock files; the real check runs the
Dockerfile's install steps (the same pip commands, against PyPI) in a fresh virtualenv, so a lock
that lacks a hash or a dependency fails here, not in an image build.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import need

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def pins(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a pip-compile/uv lock with --generate-hashes."""
    out: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock.read_text()):
        m = re.match(r"([A-Za-z0-9_.\-]+)==([^\s\\]+)", block)
        if m:
            out[_name(m.group(1))] = (m.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def test_every_runtime_dependency_is_pinned_with_hashes():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = pins(REPO / "requirements.lock")
    missing = sorted({_name(d) for d in deps} - set(lock))
    assert not missing, f"not in requirements.lock (run scripts/lock.sh): {missing}"
    unhashed = sorted(n for n, (_, h) in lock.items() if not h)
    assert not unhashed, f"pinned without a hash: {unhashed}"


def test_the_build_backend_is_pinned_and_hashed():
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    assert requires and all("==" in r for r in requires), requires
    build = pins(REPO / "requirements-build.lock")
    for r in requires:
        name, version = _name(r), r.split("==", 1)[1].strip()
        assert build.get(name, ("", []))[0] == version and build[name][1], (name, build.get(name))


def test_the_dockerfile_installs_by_hash_from_a_pinnable_base():
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.M)
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", DOCKERFILE, re.M)
    installs = re.findall(r"pip install ([^\\&\n]+)", DOCKERFILE)
    for line in installs:  # every install is hashed, or installs driftd's own wheel without dependencies
        assert "--require-hashes" in line or ("--no-deps" in line and "/wheels/" in line), line
    assert "--no-build-isolation" in DOCKERFILE  # the backend comes from the hashed build lock, not fetched
    # the user and capabilities the chart runs it with, documented where the image is built
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.M)
    daemonset = (REPO / "charts/driftd/templates/daemonset.yaml").read_text()
    assert user and f"runAsUser: {user.group(1)}" in daemonset and f"runAsGroup: {user.group(2)}" in daemonset
    import yaml

    caps = yaml.safe_load((REPO / "charts/driftd/values.yaml").read_text())["capabilities"]
    assert caps and all(f"--cap-add {c}" in DOCKERFILE for c in caps) and "--cap-drop ALL" in DOCKERFILE
    for label in ("version", "revision", "source"):
        assert f"org.opencontainers.image.{label}=" in DOCKERFILE, label
    assert re.search(r'^ENTRYPOINT \["driftd"\]$', DOCKERFILE, re.M) and "/healthz" in DOCKERFILE and "/readyz" in DOCKERFILE


def test_the_build_context_keeps_tests_caches_and_git_out():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[[ln.strip() for ln in ignore].index("*")] == "*", "an allow-list: everything is excluded first"
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "requirements.lock", "requirements-build.lock", "driftd", "baselines",
                       "wheelhouse"}  # wheelhouse: only the wheels of the locks, filled by scripts/image-build.sh
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M))
    assert {p for c in copied for p in c.split()} <= allowed


@pytest.mark.real
def test_the_dockerfiles_install_steps_work_with_require_hashes(tmp_path):
    """The RUN steps of the build stage, in a fresh venv: hashed build lock, wheel without isolation, hashed lock."""
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp_path / "probe"),
                        "six==1.17.0"], capture_output=True, text=True, timeout=120)
    need(r.returncode == 0, f"PyPI not reachable: {r.stderr.strip()[-200:]}")
    env = {**os.environ, "PIP_CACHE_DIR": str(Path.home() / ".cache/driftd-pip"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def sh(*args: str) -> None:
        p = subprocess.run(list(args), capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
        assert p.returncode == 0, f"{' '.join(args)}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"

    build, app = tmp_path / "build", tmp_path / "app"
    sh(sys.executable, "-m", "venv", str(build))
    sh(str(build / "bin/pip"), "install", "--require-hashes", "-r", "requirements-build.lock")
    sh(str(build / "bin/python"), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "w"), ".")
    sh(sys.executable, "-m", "venv", str(app))
    sh(str(app / "bin/pip"), "install", "--require-hashes", "-r", "requirements.lock")
    wheels = list((tmp_path / "w").glob("driftd-*.whl"))
    assert len(wheels) == 1
    sh(str(app / "bin/pip"), "install", "--no-deps", str(wheels[0]))
    sh(str(app / "bin/driftd"), "baseline", "lint", str(REPO / "baselines"))
