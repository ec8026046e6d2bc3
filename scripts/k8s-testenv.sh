#!/usr/bin/env bash
# A throwaway real Kubernetes control plane for tests: etcd + kube-apiserver as plain processes on 127.0.0.1
# (what controller-runtime's envtest does). No kubelet, controller-manager or scheduler.
#
# Usage:
#   bash scripts/k8s-testenv.sh start DIR   # prints the path of an admin kubeconfig (DIR/kubeconfig) on stdout
#   bash scripts/k8s-testenv.sh stop DIR    # stops both processes and removes DIR (KEEP=1 keeps DIR for its logs)
#   bash scripts/k8s-testenv.sh status DIR  # exit 0 when the API server answers /readyz
#   bash scripts/k8s-testenv.sh restart-apiserver DIR [DOWN_SECONDS]  # same port, same etcd data
#
# Binaries: $ETCD and $KUBE_APISERVER, else ${DRIFTD_BIN_CACHE:-$HOME/.cache/driftd-bin}/env.sh
# (written by scripts/k8s-bins.sh). DIR also gets: pki/ (ca, apiserver serving cert, admin client cert
# O=system:masters, sa.key), env (ports, URLs, pids), etcd.log, kube-apiserver.log, audit.log (every
# write request at Metadata level, JSON lines).
# Everything binds to 127.0.0.1 only. RBAC is on; the ServiceAccount admission plugin is off (no
# controller-manager creates default ServiceAccounts), as in envtest.
set -euo pipefail

MARK=.driftd-testenv

log() { printf '[k8s-testenv] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

load_bins() {
  local envf="${DRIFTD_BIN_CACHE:-$HOME/.cache/driftd-bin}/env.sh"
  if { [ -z "${ETCD:-}" ] || [ -z "${KUBE_APISERVER:-}" ]; } && [ -f "$envf" ]; then
    local e=${ETCD:-} k=${KUBE_APISERVER:-}
    # shellcheck disable=SC1090
    . "$envf"
    ETCD=${e:-$ETCD}; KUBE_APISERVER=${k:-$KUBE_APISERVER}
  fi
  [ -x "${ETCD:-}" ] || die "etcd not found (set ETCD or run scripts/k8s-bins.sh)"
  [ -x "${KUBE_APISERVER:-}" ] || die "kube-apiserver not found (set KUBE_APISERVER or run scripts/k8s-bins.sh)"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

gen_pki() {  # PKI_DIR
  local d=$1
  mkdir -p "$d"; chmod 700 "$d"
  (
    cd "$d"
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -nodes -key ca.key -sha256 -days 3650 -subj "/CN=driftd-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out ca.crt 2>/dev/null
    # serving certificate
    openssl genrsa -out apiserver.key 2048 2>/dev/null
    openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    # admin client certificate (cluster-admin through the system:masters group)
    openssl genrsa -out admin.key 2048 2>/dev/null
    openssl req -new -key admin.key -subj "/O=system:masters/CN=admin" -out admin.csr 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=clientAuth" >admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
      -extfile admin.ext -out admin.crt 2>/dev/null
    # service-account token signing key
    openssl genrsa -out sa.key 2048 2>/dev/null
    rm -f ./*.csr ./*.ext ca.srl
  )
}

write_kubeconfig() {  # FILE PORT PKI
  local f=$1 port=$2 p=$3
  umask 077
  cat >"$f" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: driftd-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $(base64 -w0 "$p/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 "$p/admin.crt")
    client-key-data: $(base64 -w0 "$p/admin.key")
contexts:
- name: driftd-test
  context:
    cluster: driftd-test
    user: admin
current-context: driftd-test
EOF
}

# spawn LOG PIDFILE CMD...: detached (own session), stdin/stdout/stderr away from the caller's pipes
spawn() {
  local logf=$1 pidf=$2; shift 2
  setsid "$@" </dev/null >"$logf" 2>&1 &
  echo $! >"$pidf"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() {  # PIDFILE
  local pidf=$1 pid
  [ -f "$pidf" ] || return 0
  pid=$(cat "$pidf")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; }
  fi
  rm -f "$pidf"
}

wait_http() {  # what URL TIMEOUT_S PIDFILE LOG [curl args...]
  local what=$1 url=$2 timeout=$3 pidf=$4 logf=$5; shift 5
  local deadline=$(( $(date +%s) + timeout ))
  while :; do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url" 2>/dev/null)" = 200 ]; then return 0; fi
    alive "$pidf" || { log "$what exited; last lines of $logf:"; tail -n 30 "$logf" >&2; return 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { log "$what not ready after ${timeout}s; last lines of $logf:"; tail -n 30 "$logf" >&2; return 1; }
    sleep 0.3
  done
}

# spawn_apiserver DIR ETCD_PORT API_PORT RUN: start kube-apiserver and wait for /readyz (non-zero if it fails)
spawn_apiserver() {
  local dir=$1 ec=$2 ap=$3 run=$4 pki="$1/pki"
  # audit log of every write (Metadata level): lets tests prove which API calls were made
  [ -f "$dir/audit-policy.yaml" ] || printf '%s\n' \
    'apiVersion: audit.k8s.io/v1' 'kind: Policy' 'omitStages: [RequestReceived]' 'rules:' \
    '- level: None' '  verbs: [get, list, watch]' '- level: Metadata' >"$dir/audit-policy.yaml"
  # shellcheck disable=SC2086  # extra args are split on purpose
  spawn "$dir/kube-apiserver.log" "$dir/kube-apiserver.pid" "$KUBE_APISERVER" \
    --etcd-servers="http://127.0.0.1:$ec" --etcd-prefix="/registry-$run" \
    --secure-port="$ap" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --cert-dir="$pki" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --authorization-mode=RBAC \
    --service-account-issuer="https://127.0.0.1:$ap/" \
    --service-account-key-file="$pki/sa.key" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
    --disable-admission-plugins=ServiceAccount --endpoint-reconciler-type=none \
    --audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/audit.log" \
    --audit-log-format=json --audit-log-mode=blocking \
    ${K8S_TESTENV_APISERVER_ARGS:-}
  wait_http kube-apiserver "https://127.0.0.1:$ap/readyz" "${K8S_TESTENV_TIMEOUT:-90}" \
    "$dir/kube-apiserver.pid" "$dir/kube-apiserver.log" \
    --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key"
}

cmd_start() {
  local dir=${1:?usage: start DIR}
  load_bins
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  if alive "$dir/kube-apiserver.pid"; then log "already running in $dir"; echo "$dir/kubeconfig"; return 0; fi
  touch "$dir/$MARK"
  local pki="$dir/pki" run attempt
  [ -f "$pki/sa.key" ] || gen_pki "$pki"
  run=$(basename "$dir" | tr -c 'A-Za-z0-9\n' '-')

  local ec ep ap ok=0
  for attempt in 1 2 3; do   # a port picked as free can be taken before the server binds it: retry
    ec=$(free_port); ep=$(free_port); ap=$(free_port)
    rm -rf "$dir/etcd-data"
    spawn "$dir/etcd.log" "$dir/etcd.pid" "$ETCD" --name=driftd-test --data-dir="$dir/etcd-data" \
      --listen-client-urls="http://127.0.0.1:$ec" --advertise-client-urls="http://127.0.0.1:$ec" \
      --listen-peer-urls="http://127.0.0.1:$ep" --initial-advertise-peer-urls="http://127.0.0.1:$ep" \
      --initial-cluster="driftd-test=http://127.0.0.1:$ep" \
      --unsafe-no-fsync --log-level=warn
    if wait_http etcd "http://127.0.0.1:$ec/health" 30 "$dir/etcd.pid" "$dir/etcd.log"; then ok=1; break; fi
    stop_pid "$dir/etcd.pid"
  done
  [ $ok = 1 ] || die "etcd did not start"

  ok=0
  for attempt in 1 2 3; do
    [ "$attempt" = 1 ] || ap=$(free_port)
    if spawn_apiserver "$dir" "$ec" "$ap" "$run"; then ok=1; break; fi
    stop_pid "$dir/kube-apiserver.pid"
  done
  if [ $ok != 1 ]; then stop_pid "$dir/etcd.pid"; die "kube-apiserver did not become ready"; fi

  write_kubeconfig "$dir/kubeconfig" "$ap" "$pki"
  cat >"$dir/env" <<EOF
ETCD_URL=http://127.0.0.1:$ec
ETCD_PORT=$ec
RUN=$run
APISERVER_URL=https://127.0.0.1:$ap
APISERVER_PORT=$ap
ETCD_PID=$(cat "$dir/etcd.pid")
APISERVER_PID=$(cat "$dir/kube-apiserver.pid")
KUBECONFIG=$dir/kubeconfig
EOF
  log "ready: https://127.0.0.1:$ap (etcd http://127.0.0.1:$ec)"
  echo "$dir/kubeconfig"
}

cmd_stop() {
  local dir=${1:?usage: stop DIR}
  [ -d "$dir" ] || return 0
  stop_pid "$dir/kube-apiserver.pid"
  stop_pid "$dir/etcd.pid"
  if [ -f "$dir/$MARK" ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$dir"; fi
}

# restart-apiserver DIR [DOWN_SECONDS]: stop kube-apiserver, stay down DOWN_SECONDS, start it again on the
# same port against the same etcd (data kept); updates APISERVER_PID in DIR/env
cmd_restart_apiserver() {
  local dir=${1:?usage: restart-apiserver DIR [DOWN_SECONDS]} down=${2:-0}
  [ -f "$dir/env" ] || die "$dir/env missing: not started"
  load_bins
  dir=$(cd "$dir" && pwd)
  local ec ap run
  ec=$(sed -n 's/^ETCD_PORT=//p' "$dir/env"); ap=$(sed -n 's/^APISERVER_PORT=//p' "$dir/env")
  run=$(sed -n 's/^RUN=//p' "$dir/env")
  stop_pid "$dir/kube-apiserver.pid"
  sleep "$down"
  local ok=0 attempt
  for attempt in 1 2 3 4 5; do   # the port may linger briefly after the old process exits
    if spawn_apiserver "$dir" "$ec" "$ap" "$run"; then ok=1; break; fi
    stop_pid "$dir/kube-apiserver.pid"; sleep 1
  done
  [ $ok = 1 ] || die "kube-apiserver did not come back on port $ap"
  sed -i "s/^APISERVER_PID=.*/APISERVER_PID=$(cat "$dir/kube-apiserver.pid")/" "$dir/env"
  log "restarted: https://127.0.0.1:$ap"
}

cmd_status() {
  local dir=${1:?usage: status DIR}
  [ -f "$dir/env" ] || return 1
  local url; url=$(sed -n 's/^APISERVER_URL=//p' "$dir/env")
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$dir/pki/ca.crt" \
        --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" "$url/readyz")" = 200 ]
}

case "${1:-}" in
  start)  shift; cmd_start "$@" ;;
  stop)   shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  restart-apiserver) shift; cmd_restart_apiserver "$@" ;;
  *) echo "usage: $0 start DIR | stop DIR | status DIR | restart-apiserver DIR [DOWN_SECONDS]" >&2; exit 2 ;;
esac
