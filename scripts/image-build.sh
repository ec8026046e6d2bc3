#!/usr/bin/env bash
# Build the driftd image from the Dockerfile, as CI does and as an operator would before pushing it.
#
#   bash scripts/image-build.sh                       # on the Debian base of scripts/image-base.sh
#   PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:... bash scripts/image-build.sh   # on a registry base
#   IMAGE=registry.example.com/platform/driftd:0.1.0 bash scripts/image-build.sh
#
# Tags IMAGE (default driftd:<version>, the chart's default image reference) and prints it last.
# OCI labels carry the version (pyproject.toml), the git revision and the source. The wheels of both
# lock files are downloaded on the host first (pip checks every hash; cached in ~/.cache/driftd-image)
# into wheelhouse/, and the build installs from there with --no-index: it needs no network, and a
# TLS-intercepting proxy's CA never enters the image. ONLINE=1 lets pip in the build use PyPI instead.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then revision="$revision-dirty"; fi
IMAGE=${IMAGE:-driftd:$version}
base=${PYTHON_IMAGE:-$(bash scripts/image-base.sh | tail -1)}

offline=()
if [ "${ONLINE:-0}" != 1 ]; then
  cache=${DRIFTD_IMAGE_CACHE:-$HOME/.cache/driftd-image}/wheels
  mkdir -p "$cache"
  for lock in requirements-build.lock requirements.lock; do
    python3 -m pip download -q --disable-pip-version-check --require-hashes --no-deps --only-binary=:all: \
      --python-version 3.11 --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform linux_x86_64 --abi cp311 --abi abi3 --abi none \
      -r "$lock" -d "$cache" >&2
  done
  find wheelhouse -maxdepth 1 -name '*.whl' -delete
  cp -l "$cache"/*.whl wheelhouse/ 2>/dev/null || cp "$cache"/*.whl wheelhouse/
  offline=(--build-arg PIP_OFFLINE=1 --network none)
fi
echo "image-build: $IMAGE on $base" >&2
docker build "${offline[@]}" \
  --build-arg "PYTHON_IMAGE=$base" \
  --build-arg "VERSION=$version" \
  --build-arg "REVISION=$revision" \
  --build-arg "SOURCE=https://github.com/driftd/driftd" \
  -t "$IMAGE" . >&2
find wheelhouse -maxdepth 1 -name '*.whl' -delete
echo "$IMAGE"
