#!/usr/bin/env bash
# Build (once) and cache the real Kubernetes binaries that driftd's integration tests use:
#   kube-apiserver, kubectl  (k8s.io/kubernetes via a wrapper Go module, see shared docs k8s-test-infra.md)
#   etcd                     (go.etcd.io/etcd/server/v3 via a wrapper Go module)
#   helm, kubeconform        (go install)
#   promtool, prometheus     (Debian's `prometheus` package, unpacked with dpkg -x; nothing installed or started)
#
# Usage: bash scripts/k8s-bins.sh            (idempotent, non-interactive; safe under CI=true)
# Cache: ${DRIFTD_BIN_CACHE:-$HOME/.cache/driftd-bin}/<name>-<version>/<name>
# Writes ${DRIFTD_BIN_CACHE}/env.sh with `export KUBE_APISERVER=... ETCD=... KUBECTL=... HELM=... KUBECONFORM=... PROMTOOL=... PROMETHEUS=...`
# Only package registries are used (Go module proxy, Debian apt). Go build/module caches stay in their defaults.
#
# Overrides (all optional): K8S_VERSIONS="1.37.2 1.36.3 1.35.4" (tried in order), ETCD_VERSIONS="3.6.16 3.6.15",
# HELM_VERSIONS="3.22.0 4.3.1", KUBECONFORM_VERSION=0.7.0, DRIFTD_BIN_TIMING=1 (print build times).
set -euo pipefail

CACHE=${DRIFTD_BIN_CACHE:-$HOME/.cache/driftd-bin}
K8S_VERSIONS=${K8S_VERSIONS:-"1.37.2 1.36.3 1.35.4"}
ETCD_VERSIONS=${ETCD_VERSIONS:-"3.6.16 3.6.15 3.6.14"}
HELM_VERSIONS=${HELM_VERSIONS:-"3.22.0 4.3.1"}
KUBECONFORM_VERSION=${KUBECONFORM_VERSION:-0.7.0}

export CGO_ENABLED=0
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
export GONOSUMDB= GOPRIVATE=
export DEBIAN_FRONTEND=noninteractive

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
WORK="$CACHE/.work"   # wrapper modules (go.mod/go.sum only) and logs; small
mkdir -p "$WORK"
export CACHE WORK

log() { printf '[k8s-bins %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
command -v go >/dev/null || die "go is not installed"

# run_timed NAME CMD... : runs CMD, logs its duration; output goes to $WORK/NAME.log (tail shown on failure)
run_timed() {
  local name=$1; shift
  local logf="$WORK/$name.log" t0 t1 rc=0
  t0=$(date +%s)
  # A fresh bash with errexit, so a failing step inside the function stops it (errexit is ignored in
  # functions called from `cmd || ...` contexts, which is how run_timed is used).
  bash -c "set -euo pipefail; $(declare -f); \"\$@\"" run_timed "$@" >"$logf" 2>&1 </dev/null || rc=$?
  t1=$(date +%s)
  if [ $rc -ne 0 ]; then
    log "$name FAILED after $((t1 - t0))s (log: $logf):"; tail -n 25 "$logf" >&2
    return $rc
  fi
  log "$name built in $((t1 - t0))s"
  echo "$name $((t1 - t0))" >>"$WORK/timings.txt"
}

# ---------------------------------------------------------------- kube-apiserver + kubectl
# Wrapper module: requires k8s.io/kubernetes vX.Y.Z and replaces each staging module (read from its go.mod)
# with its published v0.Y.Z.  `go install pkg@version` cannot do this because of kubernetes' replace directives.
k8s_prepare() {  # V DIR
  local V=$1 W=$2 MINOR PATCH KMOD m
  MINOR=$(cut -d. -f2 <<<"$V"); PATCH=${V##*.}
  rm -rf "$W"; mkdir -p "$W"; cd "$W"
  go mod init driftd.test/k8sbin >/dev/null 2>&1
  KMOD=$(go mod download -json "k8s.io/kubernetes@v$V" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$KMOD" ] || { echo "k8s.io/kubernetes@v$V not served"; return 1; }
  go mod edit -go="$(sed -n 's/^go //p' "$KMOD")"
  # same runtime defaults as upstream binaries
  sed -n 's/^godebug \(.*\)$/\1/p' "$KMOD" | while read -r gd; do go mod edit -godebug="$gd"; done
  for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$KMOD"); do
    go mod edit -replace="$m=$m@v0.$MINOR.$PATCH"
  done
  go mod edit -require="k8s.io/kubernetes@v$V"
  go get "k8s.io/kubernetes/cmd/kube-apiserver@v$V" "k8s.io/kubernetes/cmd/kubectl@v$V"
}

k8s_ldflags() {  # V
  local V=$1 MINOR; MINOR=$(cut -d. -f2 <<<"$V")
  local p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=v%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean -X %s.buildDate=1970-01-01T00:00:00Z ' \
      "$p" "$V" "$p" "$p" "$MINOR" "$p" "$p"
  done
  printf -- '-s -w'
}

k8s_build() {  # V BIN
  local V=$1 BIN=$2 W="$WORK/k8s-$1"
  ( cd "$W" && go build -trimpath -ldflags "$(k8s_ldflags "$V")" -o "$CACHE/$BIN-$V/$BIN.tmp" "k8s.io/kubernetes/cmd/$BIN" ) \
    && mv "$CACHE/$BIN-$V/$BIN.tmp" "$CACHE/$BIN-$V/$BIN"
}

build_k8s() {
  local V
  # 1) any candidate already fully cached?
  for V in $K8S_VERSIONS; do
    if [ -x "$CACHE/kube-apiserver-$V/kube-apiserver" ] && [ -x "$CACHE/kubectl-$V/kubectl" ]; then
      log "kube-apiserver/kubectl v$V cached"; K8S_V=$V; return 0
    fi
  done
  # 2) build the first candidate whose modules all resolve
  for V in $K8S_VERSIONS; do
    log "kubernetes v$V: resolving wrapper module"
    if ! run_timed "k8s-$V-modules" k8s_prepare "$V" "$WORK/k8s-$V"; then
      log "kubernetes v$V: modules not fully served, trying the next version"; continue
    fi
    mkdir -p "$CACHE/kube-apiserver-$V" "$CACHE/kubectl-$V"
    if [ ! -x "$CACHE/kube-apiserver-$V/kube-apiserver" ]; then
      log "building kube-apiserver v$V (cold: 10-25 min on 2 cores)"
      run_timed "kube-apiserver-$V" k8s_build "$V" kube-apiserver || { log "kube-apiserver v$V failed"; continue; }
    fi
    if [ ! -x "$CACHE/kubectl-$V/kubectl" ]; then
      log "building kubectl v$V"
      run_timed "kubectl-$V" k8s_build "$V" kubectl || { log "kubectl v$V failed"; continue; }
    fi
    K8S_V=$V; return 0
  done
  die "no Kubernetes version from '$K8S_VERSIONS' could be built"
}

# ---------------------------------------------------------------- etcd
etcd_build() {  # V
  local V=$1 W="$WORK/etcd-$1"
  rm -rf "$W"; mkdir -p "$W" "$CACHE/etcd-$V"; cd "$W"
  go mod init driftd.test/etcdbin >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@v$V"
  go build -trimpath -ldflags "-s -w" -o "$CACHE/etcd-$V/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$CACHE/etcd-$V/etcd.tmp" "$CACHE/etcd-$V/etcd"
}

build_etcd() {
  local V
  for V in $ETCD_VERSIONS; do
    [ -x "$CACHE/etcd-$V/etcd" ] && { log "etcd v$V cached"; ETCD_V=$V; return 0; }
  done
  for V in $ETCD_VERSIONS; do
    log "building etcd v$V"
    run_timed "etcd-$V" etcd_build "$V" && { ETCD_V=$V; return 0; }
  done
  die "no etcd version from '$ETCD_VERSIONS' could be built"
}

# ---------------------------------------------------------------- helm
helm_build() {  # V
  local V=$1 MAJ=${1%%.*} W="$WORK/helm-$1" KV KMAJ KMIN LD
  local mod="helm.sh/helm/v$MAJ"
  rm -rf "$W"; mkdir -p "$W" "$CACHE/helm-$V"; cd "$W"
  go mod init driftd.test/helmbin >/dev/null 2>&1
  go get "$mod/cmd/helm@v$V"
  # Same version stamping as helm's Makefile: its own version, and the default Kubernetes version
  # (.Capabilities.KubeVersion for `helm template`) taken from the client-go it builds against.
  KV=$(go list -m -f '{{.Version}}' k8s.io/client-go)            # v0.X.Y
  KMAJ=$(( $(cut -d. -f1 <<<"${KV#v}") + 1 )); KMIN=$(cut -d. -f2 <<<"$KV")
  LD="-s -w -X $mod/internal/version.version=v$V -X $mod/internal/version.gitTreeState=clean"
  local pkg
  for pkg in pkg/lint/rules pkg/chartutil pkg/chart/common/util pkg/chart/common internal/version; do
    if grep -rqs 'k8sVersionMajor' "$(go list -m -f '{{.Dir}}' "$mod")/$pkg"/*.go 2>/dev/null; then
      LD="$LD -X $mod/$pkg.k8sVersionMajor=$KMAJ -X $mod/$pkg.k8sVersionMinor=$KMIN"
    fi
  done
  go build -trimpath -ldflags "$LD" -o "$CACHE/helm-$V/helm.tmp" "$mod/cmd/helm"
  mv "$CACHE/helm-$V/helm.tmp" "$CACHE/helm-$V/helm"
}

build_helm() {
  local V
  for V in $HELM_VERSIONS; do
    [ -x "$CACHE/helm-$V/helm" ] && { log "helm v$V cached"; HELM_V=$V; return 0; }
  done
  for V in $HELM_VERSIONS; do
    log "building helm v$V"
    run_timed "helm-$V" helm_build "$V" && { HELM_V=$V; return 0; }
  done
  die "no helm version from '$HELM_VERSIONS' could be built"
}

# ---------------------------------------------------------------- kubeconform
build_kubeconform() {
  local V=$KUBECONFORM_VERSION
  if [ -x "$CACHE/kubeconform-$V/kubeconform" ]; then log "kubeconform v$V cached"; return 0; fi
  log "building kubeconform v$V"
  mkdir -p "$CACHE/kubeconform-$V"
  run_timed "kubeconform-$V" env GOBIN="$CACHE/kubeconform-$V" \
    go install -trimpath -ldflags "-s -w -X main.version=v$V" "github.com/yannh/kubeconform/cmd/kubeconform@v$V" \
    || die "kubeconform v$V failed"
}

# ---------------------------------------------------------------- promtool + prometheus
# Both from the same Debian `prometheus` deb (same version); nothing is installed, no daemon is started here.
# tests/test_prometheus_e2e.py runs the server on 127.0.0.1 against a real driftd.
promtool_fetch() {
  local tmp ver
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  cd "$tmp"
  if ! apt-get download prometheus >/dev/null 2>&1; then
    apt-get update -qq || true
    apt-get download prometheus
  fi
  local deb; deb=$(ls prometheus_*.deb | head -n1)
  ver=$(dpkg-deb -f "$deb" Version | sed 's/[^A-Za-z0-9.+~-]/_/g')
  dpkg -x "$deb" x
  mkdir -p "$CACHE/promtool-$ver" "$CACHE/prometheus-$ver"
  install -m 0755 x/usr/bin/promtool "$CACHE/promtool-$ver/promtool"
  install -m 0755 x/usr/bin/prometheus "$CACHE/prometheus-$ver/prometheus"
  echo "$ver" >"$CACHE/.promtool-version"
}

# prom_cached V: promtool and prometheus of version V are both in the cache
prom_cached() { [ -x "$CACHE/promtool-$1/promtool" ] && [ -x "$CACHE/prometheus-$1/prometheus" ]; }

build_promtool() {
  local c v
  if [ -f "$CACHE/.promtool-version" ]; then
    PROMTOOL_V=$(cat "$CACHE/.promtool-version")
    prom_cached "$PROMTOOL_V" && { log "promtool + prometheus $PROMTOOL_V cached"; return 0; }
  fi
  for c in "$CACHE"/promtool-*/promtool; do
    v=$(basename "$(dirname "$c")"); v=${v#promtool-}
    prom_cached "$v" && { PROMTOOL_V=$v; log "promtool + prometheus $PROMTOOL_V cached"; return 0; }
  done
  # nothing cached, or an older cache holding promtool only: one download brings both
  log "fetching promtool + prometheus from Debian's prometheus package"
  run_timed promtool promtool_fetch || die "promtool/prometheus: apt-get download prometheus failed"
  PROMTOOL_V=$(cat "$CACHE/.promtool-version")
  prom_cached "$PROMTOOL_V" || die "promtool/prometheus $PROMTOOL_V missing after the download"
}

# ---------------------------------------------------------------- main
T0=$(date +%s)
: >"$WORK/timings.txt"
build_etcd
build_kubeconform
build_promtool
build_helm
build_k8s

ENVF="$CACHE/env.sh"
{
  echo "# generated by scripts/k8s-bins.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "export DRIFTD_BIN_CACHE='$CACHE'"
  echo "export KUBE_APISERVER='$CACHE/kube-apiserver-$K8S_V/kube-apiserver'"
  echo "export KUBECTL='$CACHE/kubectl-$K8S_V/kubectl'"
  echo "export ETCD='$CACHE/etcd-$ETCD_V/etcd'"
  echo "export HELM='$CACHE/helm-$HELM_V/helm'"
  echo "export KUBECONFORM='$CACHE/kubeconform-$KUBECONFORM_VERSION/kubeconform'"
  echo "export PROMTOOL='$CACHE/promtool-$PROMTOOL_V/promtool'"
  echo "export PROMETHEUS='$CACHE/prometheus-$PROMTOOL_V/prometheus'"
  echo "export DRIFTD_K8S_VERSION='$K8S_V'"
} >"$ENVF.tmp"
mv "$ENVF.tmp" "$ENVF"

log "done in $(( $(date +%s) - T0 ))s; env file: $ENVF"
# shellcheck disable=SC1090
. "$ENVF"
for b in "$KUBE_APISERVER" "$KUBECTL" "$ETCD" "$HELM" "$KUBECONFORM" "$PROMTOOL" "$PROMETHEUS"; do
  [ -x "$b" ] || die "missing $b"
  echo "$b"
done
