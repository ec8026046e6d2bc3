#!/usr/bin/env bash
# Regenerate the image's hashed lock files (run after changing dependencies in pyproject.toml):
#   requirements.lock        driftd's runtime dependencies, every distribution's sha256 (pip --require-hashes)
#   requirements-build.lock  the pinned build backend (hatchling) and its dependencies, hashed too
# Uses uv from PyPI in a throwaway venv; resolves for CPython 3.11 on Linux (the image's python:3.11-slim).
set -euo pipefail
cd "$(dirname "$0")/.."
tool="${XDG_CACHE_HOME:-$HOME/.cache}/driftd-lock-venv"
[ -x "$tool/bin/uv" ] || { python3 -m venv "$tool" && "$tool/bin/pip" install -q uv; }
uv="$tool/bin/uv"
common=(--generate-hashes --python-version 3.11 --python-platform linux --no-header --quiet)
"$uv" pip compile pyproject.toml "${common[@]}" -o requirements.lock
backend=$(python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml","rb"))["build-system"]["requires"]))')
printf '%s\n' "$backend" | "$uv" pip compile - "${common[@]}" -o requirements-build.lock
echo "lock: $(grep -c '^[A-Za-z]' requirements.lock) runtime + $(grep -c '^[A-Za-z]' requirements-build.lock) build pins, hashed"
