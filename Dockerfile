# driftd agent image. Two stages: `build` installs the locked dependencies and driftd into a virtualenv;
# the final stage is the base image plus that virtualenv, nothing else (no pip, no compilers, no tests).
#
# Build (scripts/image-build.sh does this, on a Debian base it makes itself when no registry is reachable):
#   docker build -t driftd:0.1.0 .
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> -t driftd:0.1.0 .   # pinned base
# The base must provide python3 3.11 with the venv module, and be the same in both stages (the virtualenv
# links to its interpreter).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock requirements-build.lock ./
COPY wheelhouse ./wheelhouse
COPY driftd ./driftd
COPY baselines ./baselines
# PIP_OFFLINE=1: install only from ./wheelhouse (scripts/image-build.sh fills it on the host; no
# network in the build); otherwise PyPI, with ./wheelhouse consulted first. Hashes are checked either way.
ARG PIP_OFFLINE=
# Every dependency and the build backend are installed by hash (scripts/lock.sh writes both lock
# files); driftd itself is built without build isolation, so no unpinned package is fetched.
# Byte-code is compiled here: the root filesystem is read-only at run time, and compiling on every
# start costs ~0.6 s CPU (bench/results/host.md). pip and setuptools leave the runtime virtualenv, and so do
# the Kubernetes client's asyncio half (kubernetes.aio, ~70 MB) and the aiohttp stack only it uses: driftd
# uses the synchronous client (tests/test_image.py imports every driftd module inside the image). The
# client's generated API and model classes (~57 MB as source plus byte-code) are kept as byte-code only,
# without docstrings (-OO): ~12 MB; their tracebacks show no source lines. So is univers (package version
# ranges), whose docstrings are its doctests.
# pygments too: rich needs it only for syntax highlighting, which driftd's tables and colours never use;
# markdown-it-py and mdurl (rich.markdown only); tzdata (python-dateutil's fallback: the base has
# /usr/share/zoneinfo); pydantic's pydantic.v1 compatibility copy (nothing imports it). python-debian keeps
# debian_support (dpkg version ordering) and drops its file parsers.
ARG UNUSED_DEPS="aiohttp aiohttp-retry aiohappyeyeballs aiosignal frozenlist multidict propcache yarl pygments \
markdown-it-py mdurl tzdata"
RUN python3 -m venv /opt/build \
 && export PIP_FIND_LINKS=/src/wheelhouse PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
 && /opt/build/bin/pip install ${PIP_OFFLINE:+--no-index} --require-hashes -r requirements-build.lock \
 && /opt/build/bin/python -m pip wheel --no-index --no-deps --no-build-isolation -w /wheels . \
 && python3 -m venv /opt/driftd \
 && /opt/driftd/bin/pip install ${PIP_OFFLINE:+--no-index} --require-hashes -r requirements.lock \
 && /opt/driftd/bin/pip install --no-index --no-deps /wheels/*.whl \
 && /opt/driftd/bin/pip uninstall -y -q $UNUSED_DEPS \
 && rm -rf /opt/driftd/lib/python3.11/site-packages/kubernetes/aio \
 && rm -rf /opt/driftd/lib/python3.11/site-packages/pydantic/v1 \
 && D=/opt/driftd/lib/python3.11/site-packages/debian \
 && rm -rf "$D/deb822.py" "$D/_deb822_repro" "$D/debfile.py" "$D/arfile.py" "$D/changelog.py" "$D/copyright.py" \
      "$D/debtags.py" "$D/doc-debtags" "$D/watch.py" "$D/substvars.py" \
 && K=/opt/driftd/lib/python3.11/site-packages/kubernetes/client \
 && /opt/driftd/bin/python -OO -m compileall -q -b -j 0 "$K/api" "$K/models" \
 && find "$K/api" "$K/models" -name '*.py' -delete \
 && find "$K/api" "$K/models" -name __pycache__ -prune -exec rm -rf {} + \
 && U=/opt/driftd/lib/python3.11/site-packages/univers \
 && /opt/driftd/bin/python -OO -m compileall -q -b -j 0 "$U" && find "$U" -name '*.py' -delete \
 && find "$U" -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/driftd/bin/pip uninstall -y -q pip setuptools \
 && find /opt/driftd -depth -type d \( -name tests -o -name test \) -path '*/site-packages/*' -exec rm -rf {} + \
 && rm -f /opt/driftd/bin/activate* /opt/driftd/bin/Activate.ps1 \
 && /opt/driftd/bin/python -m compileall -q -j 0 /opt/driftd

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/driftd/driftd
LABEL org.opencontainers.image.title="driftd" \
      org.opencontainers.image.description="Configuration drift enforcement agent: hosts, containers and pods held to hardened baselines" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/driftd /opt/driftd
ENV PATH=/opt/driftd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DRIFTD_HOST_ROOT=/host \
    DRIFTD_BASELINES=/etc/driftd/baselines \
    DRIFTD_STATE_DIR=/var/lib/driftd \
    DRIFTD_HTTP__ADDRESS=0.0.0.0:9808
# The user and capabilities the chart runs it with: root (uid 0) with every capability dropped but
# CHOWN, DAC_OVERRIDE, FOWNER and FSETID (restoring root-owned files with their exact owner and mode
# needs them), no privilege escalation, a read-only root filesystem with /tmp and the state directory
# writable. On a Docker host, the same:
#   docker run -d --name driftd --read-only --tmpfs /tmp --cap-drop ALL \
#     --cap-add CHOWN --cap-add DAC_OVERRIDE --cap-add FOWNER --cap-add FSETID \
#     --security-opt no-new-privileges -v /etc:/host/etc -v /var/run/docker.sock:/var/run/docker.sock \
#     -v driftd-state:/var/lib/driftd -v "$PWD/baselines:/etc/driftd/baselines:ro" -p 127.0.0.1:9808:9808 \
#     -e DRIFTD_DOCKER__ENABLED=true driftd:0.1.0
# (charts/driftd/README.md "Security model", docs/security.md "Supply chain").
# Probes, on the metrics listener (DRIFTD_HTTP__ADDRESS, port 9808): GET /healthz (liveness: the
# scheduler and workers run) and GET /readyz (readiness: baselines loaded, the first scan done).
# SIGTERM stops it cleanly within the chart's 30 s grace period.
USER 0:0
EXPOSE 9808
STOPSIGNAL SIGTERM
ENTRYPOINT ["driftd"]
CMD ["run"]
