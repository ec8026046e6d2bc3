#!/usr/bin/env bash
# Bring up a local Docker engine and two registry-free test images for driftd's real-Docker tests.
#
# Usage: bash scripts/docker-env.sh          (as root; idempotent; safe to rerun at any time)
#
#   1. installs Debian's docker.io and busybox-static when dockerd / a static busybox are missing;
#   2. starts dockerd in the background (no bridge, no iptables: containers get network "none"
#      only) unless /var/run/docker.sock already answers; log in /tmp/driftd-dockerd.log;
#   3. builds driftd-test/busybox:1.0 and :2.0 from Debian's busybox-static with `docker import`
#      (no image registry is needed or contacted); skipped when both exist with this recipe.
#
# Environment: DRIFTD_DOCKERD_LOG (log path), DRIFTD_DOCKERD_WAIT (seconds to wait, default 60),
#              DRIFTD_DOCKER_STORAGE_DRIVER (force a driver, e.g. vfs; default: dockerd picks,
#              overlay2 on this machine's ext4 root).
set -euo pipefail

LOG=${DRIFTD_DOCKERD_LOG:-/tmp/driftd-dockerd.log}
WAIT=${DRIFTD_DOCKERD_WAIT:-60}
SOCK=/var/run/docker.sock
PIDFILE=/var/run/docker.pid
IMAGE=driftd-test/busybox
VERSIONS=(1.0 2.0)
RECIPE=1 # bump when the rootfs below changes, so existing images are rebuilt
export DEBIAN_FRONTEND=noninteractive
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
START=$(date +%s)

say() { echo "docker-env: $*" >&2; }
die() {
  echo "docker-env: ERROR: $*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, starts dockerd)"

# ---------------------------------------------------------------- 1. packages
have_static_busybox() {
  [ -x /bin/busybox ] && [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ]
}

apt_install() {
  local pkg missing=()
  for pkg in "$@"; do # (no `| grep -q` here: with pipefail its early exit fails the pipe)
    [[ "$(apt-cache policy "$pkg" 2>/dev/null)" == *"Candidate: "[0-9]* ]] || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get update (package lists lack: ${missing[*]})"
    apt-get update -q >&2
  fi
  # No init system here: keep docker.io's postinst from starting a default dockerd (with a
  # docker0 bridge and iptables rules) through its init script while we install.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    made_policy=1
  fi
  local rc=0
  say "apt-get install $*"
  if ! apt-get install -y -q --no-install-recommends "$@" >&2; then
    say "install failed; refreshing package lists and retrying once"
    apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "$@" >&2 || rc=$?
  fi
  [ "$made_policy" = 1 ] && rm -f "$policy"
  return "$rc"
}

pkgs=()
command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
have_static_busybox || pkgs+=(busybox-static)
if [ "${#pkgs[@]}" -gt 0 ]; then
  apt_install "${pkgs[@]}" || die "could not install ${pkgs[*]}"
fi
command -v dockerd >/dev/null 2>&1 || die "dockerd still missing after installing docker.io"
have_static_busybox || die "static /bin/busybox still missing after installing busybox-static"

# The CLI that ships with docker.io matches its daemon; fall back to any docker on PATH.
if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker) || die "no docker CLI"; fi

# ---------------------------------------------------------------- 2. dockerd
engine_up() { timeout 10 "$DOCKER" info >/dev/null 2>&1; }

alive() { # $1 = pid: running and not a zombie (a killed dockerd lingers as one until reaped)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

dockerd_pid() { # pid of a live dockerd owning the pidfile, else fail
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] && echo "$pid"
}

start_dockerd() {
  # --bridge=none / --iptables=false / --ip6tables=false: no docker0 bridge, no NAT or
  # forwarding rules, nothing that routes anywhere; tests use network_mode="none".
  # Storage driver: dockerd's own choice (overlay2 here); DRIFTD_DOCKER_STORAGE_DRIVER overrides.
  local flags=(--bridge=none --iptables=false --ip6tables=false --host="unix://$SOCK" --pidfile="$PIDFILE")
  [ -z "${DRIFTD_DOCKER_STORAGE_DRIVER:-}" ] || flags+=(--storage-driver="$DRIFTD_DOCKER_STORAGE_DRIVER")
  say "starting dockerd ${flags[*]} (log: $LOG)"
  echo "=== $(date -u +%FT%TZ) docker-env.sh: dockerd ${flags[*]}" >>"$LOG"
  setsid nohup dockerd "${flags[@]}" >>"$LOG" 2>&1 </dev/null &
  pid=$!
  started=1
}

started=0
if ! engine_up; then
  if pid=$(dockerd_pid); then
    say "dockerd (pid $pid) is running but not answering yet; waiting for it"
  else
    start_dockerd
  fi
  deadline=$(($(date +%s) + WAIT))
  until engine_up; do
    if ! alive "$pid"; then
      if [ "$started" = 0 ]; then # the dockerd we were waiting for went away: start our own
        start_dockerd
        continue
      fi
      tail -n 30 "$LOG" >&2 || true
      die "dockerd (pid $pid) exited during start-up; see $LOG"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail -n 30 "$LOG" >&2 || true
      die "docker engine not answering on $SOCK after ${WAIT}s; see $LOG"
    fi
    sleep 0.5
  done
  say "dockerd up (pid $pid)"
fi

# ---------------------------------------------------------------- 3. test images
image_ok() {
  [ "$("$DOCKER" image inspect -f '{{index .Config.Labels "driftd-test.recipe"}}' "$IMAGE:$1" 2>/dev/null)" = "$RECIPE" ]
}

build_image() { # $1 = version
  local ver=$1 root
  root=$(mktemp -d /tmp/driftd-rootfs.XXXXXX)
  ROOTFS_TMP=$root
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,home/app,proc,sys,dev,run,var/tmp,var/log}
  cp /bin/busybox "$root/bin/busybox"
  # In the chroot /proc/self/exe is unreadable, so busybox links its applets to argv[0],
  # /bin/busybox, into their standard places (/bin/sh, /usr/bin/awk, ...).
  chroot "$root" /bin/busybox --install -s
  [ -L "$root/bin/sh" ] || die "busybox --install did not create /bin/sh"
  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
app:x:1000:
nogroup:x:65534:
EOF
  cat >"$root/etc/shadow" <<'EOF'
root:*:19000:0:99999:7:::
app:!:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
EOF
  cat >"$root/etc/os-release" <<EOF
NAME="driftd-test busybox"
ID=driftd-test
VERSION_ID="$ver"
VERSION="$ver (busybox $(/bin/busybox | head -n1 | awk '{print $2}'))"
PRETTY_NAME="driftd-test busybox $ver"
EOF
  echo "$ver" >"$root/etc/driftd-image-version"
  chmod 0755 "$root" "$root/etc"
  chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/os-release" "$root/etc/driftd-image-version"
  chmod 0640 "$root/etc/shadow"
  chmod 1777 "$root/tmp" "$root/var/tmp"
  chmod 0700 "$root/root"
  chown 1000:1000 "$root/home/app"
  # PID 1 is a shell that exits on SIGTERM, so `docker stop` returns at once instead of
  # waiting out the 10 s grace period (PID 1 ignores signals it has no handler for).
  tar --numeric-owner -C "$root" -cf - . | "$DOCKER" import \
    --change 'CMD ["/bin/sh","-c","trap \"exit 0\" TERM INT; sleep 1000000 & wait"]' \
    --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL driftd-test.recipe=$RECIPE driftd-test.image-version=$ver" \
    --message "driftd-test busybox $ver (docker-env.sh recipe $RECIPE)" \
    - "$IMAGE:$ver" >/dev/null
  rm -rf "$root"
  ROOTFS_TMP=
}

ROOTFS_TMP=
trap '[ -z "$ROOTFS_TMP" ] || rm -rf "$ROOTFS_TMP"' EXIT

for ver in "${VERSIONS[@]}"; do
  if image_ok "$ver"; then continue; fi
  say "building $IMAGE:$ver from /bin/busybox"
  build_image "$ver"
  image_ok "$ver" || die "$IMAGE:$ver missing after import"
done

# ---------------------------------------------------------------- summary
info=$("$DOCKER" info -f '{{.ServerVersion}} {{.Driver}} {{.CgroupDriver}}/v{{.CgroupVersion}}')
read -r server driver cgroup <<<"$info"
ids=""
for ver in "${VERSIONS[@]}"; do
  ids+=" $IMAGE:$ver=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE:$ver" | cut -c1-19)"
done
echo "docker-env: ok dockerd=$server storage=$driver cgroup=$cgroup socket=$SOCK${ids} ($(($(date +%s) - START))s)"
