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
from collections.abc import Callable, Iterator
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
SETUP_HINT = "run `bash scripts/docker-env.sh` as root"

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
