#!/usr/bin/env bash
# Set up and run every check driftd has: the real components the tests use (Docker Engine with
# local test images, the driftd image built from the Dockerfile, kube-apiserver/etcd/kubectl/helm/
# kubeconform/promtool/prometheus), then lint, types,
# layer contracts, baseline lint and pytest.
#
# Usage: bash scripts/test.sh [pytest args]   (CI runs this same command via .ci/run)
#   DRIFTD_TEST_SETUP=0  skip the component set-up (tests needing a missing component then skip
#                        locally, and fail when CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

if [ "${DRIFTD_TEST_SETUP:-1}" = 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== docker engine";  bash scripts/docker-env.sh
    # the driftd image from the Dockerfile, on a Debian base made with mmdebstrap (cached by recipe)
    echo "== driftd image";   bash scripts/image-build.sh
  else
    echo "== docker engine: not root, not starting dockerd (Docker tests skip locally)"
  fi
  if command -v go >/dev/null 2>&1; then
    echo "== k8s binaries";   bash scripts/k8s-bins.sh
  else
    echo "== k8s binaries: no Go toolchain (Kubernetes and chart tests skip locally)"
  fi
fi
envf="${DRIFTD_BIN_CACHE:-$HOME/.cache/driftd-bin}/env.sh"
# shellcheck disable=SC1090
if [ -f "$envf" ]; then source "$envf"; fi

echo "== ruff";          .venv/bin/ruff check driftd tests bench
echo "== mypy --strict"; .venv/bin/mypy driftd
echo "== import-linter"; .venv/bin/lint-imports
echo "== baseline lint"; .venv/bin/driftd baseline lint baselines
echo "== pytest";        .venv/bin/python -m pytest tests "$@"
