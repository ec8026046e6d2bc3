#!/usr/bin/env bash
# Set up and run every check driftd has: lint, types, layer contracts, baselines, tests.
# Usage: bash scripts/test.sh [pytest args]      (CI runs this same command via .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "== ruff";          .venv/bin/ruff check driftd tests bench
echo "== mypy --strict"; .venv/bin/mypy driftd
echo "== import-linter"; .venv/bin/lint-imports
echo "== baseline lint"; .venv/bin/driftd baseline lint baselines
echo "== pytest";        .venv/bin/python -m pytest tests "$@"
