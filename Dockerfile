# driftd agent image: small, pinned, non-root by default (the DaemonSet grants what the
# host target needs explicitly). Build: docker build -t driftd:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY driftd ./driftd
COPY baselines ./baselines
RUN python -m venv /opt/driftd \
 && /opt/driftd/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements.lock \
 && /opt/driftd/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps . \
 && /opt/driftd/bin/python -m compileall -q -j 0 /opt/driftd
# Byte-code is compiled at build time: the root filesystem is read-only at run time, and
# compiling on every start costs ~0.6 s CPU (bench/results/host.md).

FROM python:3.11-slim-bookworm
COPY --from=build /opt/driftd /opt/driftd
ENV PATH=/opt/driftd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    DRIFTD_HOST_ROOT=/host \
    DRIFTD_BASELINES=/etc/driftd/baselines \
    DRIFTD_STATE_DIR=/var/lib/driftd
USER 65532:65532
EXPOSE 9808
ENTRYPOINT ["driftd"]
CMD ["run"]
