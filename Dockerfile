# driftd agent image: small, pinned, non-root by default (the DaemonSet grants what the
# host target needs explicitly). Build: docker build -t driftd:0.1.0 .
# Pin the base by digest in production:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> -t driftd:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock requirements-build.lock ./
COPY driftd ./driftd
COPY baselines ./baselines
# Every dependency and the build backend are installed by hash (scripts/lock.sh writes both lock
# files); driftd itself is built without build isolation, so no unpinned package is fetched.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes -r requirements-build.lock \
 && /opt/build/bin/python -m pip wheel --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation \
      -w /wheels . \
 && python -m venv /opt/driftd \
 && /opt/driftd/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes -r requirements.lock \
 && /opt/driftd/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps /wheels/*.whl \
 && /opt/driftd/bin/python -m compileall -q -j 0 /opt/driftd
# Byte-code is compiled at build time: the root filesystem is read-only at run time, and
# compiling on every start costs ~0.6 s CPU (bench/results/host.md).

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/driftd /opt/driftd
ENV PATH=/opt/driftd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    DRIFTD_HOST_ROOT=/host \
    DRIFTD_BASELINES=/etc/driftd/baselines \
    DRIFTD_STATE_DIR=/var/lib/driftd
# Non-root by default: outside the chart the image grants nothing. The chart runs it with
# runAsUser: 0 on purpose (restoring root-owned files with their exact owner and mode needs root;
# charts/driftd/README.md "Security model", docs/security.md "Supply chain").
USER 65532:65532
EXPOSE 9808
ENTRYPOINT ["driftd"]
CMD ["run"]
