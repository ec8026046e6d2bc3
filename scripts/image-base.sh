#!/usr/bin/env bash
# The base image driftd's Dockerfile builds on when no registry is reachable (CI, air-gapped hosts):
# Debian 12 with Python from Debian's own packages, made by mmdebstrap from the Debian archive (and its
# security updates) and loaded with `docker import`. Prints the image reference as its last line.
#
#   bash scripts/image-base.sh            # -> driftd-base/debian-python:12-<recipe hash>
#
# The tag carries the sha256 of this file (the recipe): the image is reused while the recipe is
# unchanged and rebuilt when it changes. The rootfs tarball is cached in ~/.cache/driftd-image, so a
# pruned Docker engine re-imports it without downloading anything. Needs root (mmdebstrap, docker).
# Env: DRIFTD_IMAGE_CACHE (cache dir), DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
# python3-venv: the build stage makes the virtualenvs; ca-certificates: TLS to the API server and registries.
PACKAGES=python3-minimal,libpython3.11-stdlib,python3-venv,ca-certificates,tzdata
# Essential packages an immutable agent image never runs, purged through dpkg (its status stays true for
# scanners): perl (dpkg maintainer scripts only), login/PAM, util-linux (mount, fdisk), diffutils. ~17 MB.
RUNTIME_UNUSED="login util-linux diffutils perl-base"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CACHE=${DRIFTD_IMAGE_CACHE:-$HOME/.cache/driftd-image}
recipe=$(sha256sum "$0" | cut -c1-12)
REF="driftd-base/debian-python:12-$recipe"
tarball="$CACHE/debian-python-12-$recipe.tar"

log() { echo "image-base: $*" >&2; }

if docker image inspect "$REF" >/dev/null 2>&1; then
  log "reusing $REF"
  echo "$REF"
  exit 0
fi
mkdir -p "$CACHE"
if [ ! -s "$tarball" ]; then
  command -v mmdebstrap >/dev/null 2>&1 || {
    log "installing mmdebstrap (Debian package)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap; } >&2
  }
  log "building the rootfs with mmdebstrap ($SUITE: $PACKAGES)"
  # essential + Python only: no apt, no compilers; docs, man pages and locales never unpacked;
  # merged /usr without the usrmerge package (which would pull in perl); no glibc iconv modules (gconv, 9 MB:
# Python has its own codecs).
  mmdebstrap --variant=essential --format=tar --include="$PACKAGES" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*' \
    --customize-hook="chroot \"\$1\" dpkg --purge --force-remove-essential --force-depends $RUNTIME_UNUSED" \
    --customize-hook='rm -rf "$1"/var/cache/* "$1"/var/log/* "$1"/var/lib/apt/lists/*' \
    "$SUITE" "$tarball.tmp" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main" >&2
  mv "$tarball.tmp" "$tarball"
  find "$CACHE" -maxdepth 1 -type f -name 'debian-python-12-*.tar' ! -name "$(basename "$tarball")" -delete  # older recipes
fi
log "importing $tarball"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["/usr/bin/python3"]' \
  --change "LABEL org.opencontainers.image.title=debian-python io.driftd.base.recipe=$recipe" \
  "$tarball" "$REF" >&2
echo "$REF"
