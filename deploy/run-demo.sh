#!/usr/bin/env bash
# Starts the demo that `make run` runs: legate-cp on examples/cp-demo.yaml, five demo upstreams
# (payments v1 twice, payments v2 at 0 % for a canary rollout, inventory over HTTP/2, ledger
# over mTLS) and a legate proxy that legate-cp configures over xDS (mTLS) and that reports its
# load to legate-cp every second. Ctrl-C (or SIGTERM) stops every process this script
# started, by PID, and nothing else.
#
# Usage: deploy/run-demo.sh [--keep-state]
#   Each run starts clean: the state of the previous run in the state directory (legate-cp's
#   admin changes, the proxy's xDS cache, the admin token, the certificates) is removed first.
#   --keep-state (make run KEEP_STATE=1) keeps it, so a `legatectl set-weights` of the last run
#   still applies.
# Environment (defaults in parentheses), so that a second demo or a test can run beside one:
#   BIN                directory holding the binaries (target/debug)
#   DEMO_STATE_DIR     state directory (.demo)
#   DEMO_PROXY_PORT    the proxy's listener (15001)       DEMO_ADMIN_PORT     legate's admin (15000)
#   DEMO_CP_XDS_PORT   legate-cp's xDS (15010)             DEMO_CP_ADMIN_PORT  legate-cp's admin (15011)
#   DEMO_CP_METRICS_PORT  legate-cp's /metrics (15014)
#   DEMO_UPSTREAM_PORTS  five ports: payments v1, payments v1, payments v2, inventory, ledger
#                      (18081 18082 18083 18084 18085)
# With other ports or another state directory, the mesh legate-cp serves is a copy of
# examples/cp-demo.yaml in the state directory with those ports; otherwise it is the example
# itself, so edits to it apply while the demo runs.
set -euo pipefail
cd "$(dirname "$0")/.."

keep_state=
for arg in "$@"; do
  case "$arg" in
    --keep-state) keep_state=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "run-demo.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

BIN=${BIN:-target/debug}
STATE=${DEMO_STATE_DIR:-.demo}
PROXY_PORT=${DEMO_PROXY_PORT:-15001}
ADMIN_PORT=${DEMO_ADMIN_PORT:-15000}
CP_XDS_PORT=${DEMO_CP_XDS_PORT:-15010}
CP_ADMIN_PORT=${DEMO_CP_ADMIN_PORT:-15011}
CP_METRICS_PORT=${DEMO_CP_METRICS_PORT:-15014}
read -r -a UP_PORTS <<<"${DEMO_UPSTREAM_PORTS:-18081 18082 18083 18084 18085}"
if [ "${#UP_PORTS[@]}" -ne 5 ]; then
  echo "run-demo.sh: DEMO_UPSTREAM_PORTS needs five ports, got '${DEMO_UPSTREAM_PORTS:-}'" >&2
  exit 2
fi

fail() { echo "run-demo.sh: $*" >&2; exit 1; }

for bin in legate legate-cp legatectl legate-demo-upstream; do
  [ -x "$BIN/$bin" ] || fail "$BIN/$bin not found: build first (make run does), or set BIN"
done
command -v curl >/dev/null || fail "curl not found: the demo's checks and its try: lines use it"

# Every port must be free before anything starts: a demo already running would otherwise answer
# this one's readiness checks, and starting over it would remove its state.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_free() { # port what env-var
  if port_busy "$1"; then
    fail "127.0.0.1:$1 ($2) is already in use: a demo seems to be running already (another" \
      "make run?). Stop it with Ctrl-C in its terminal, or give this one other ports ($3=...)."
  fi
}
check_free "$PROXY_PORT" "the proxy's listener" DEMO_PROXY_PORT
check_free "$ADMIN_PORT" "legate's admin" DEMO_ADMIN_PORT
check_free "$CP_XDS_PORT" "legate-cp's xDS" DEMO_CP_XDS_PORT
check_free "$CP_ADMIN_PORT" "legate-cp's admin" DEMO_CP_ADMIN_PORT
check_free "$CP_METRICS_PORT" "legate-cp's metrics" DEMO_CP_METRICS_PORT
for port in "${UP_PORTS[@]}"; do check_free "$port" "a demo upstream" DEMO_UPSTREAM_PORTS; done

# Only what this script creates is removed, never the directory itself: DEMO_STATE_DIR may name
# a directory holding other things.
STATE_ITEMS=(cp-data proxy-cache pki admin.token cp-demo.yaml cp.addr legate.addr logs)
mkdir -p "$STATE"
if [ -z "$keep_state" ]; then
  for item in "${STATE_ITEMS[@]}"; do rm -rf "${STATE:?}/$item"; done
  state_note="started clean (make run KEEP_STATE=1 keeps the last run's state)"
else
  rm -f "$STATE/cp.addr" "$STATE/legate.addr"
  state_note="kept from the last run (--keep-state)"
fi
mkdir -p "$STATE/logs"

pids=()
names=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -f "$STATE/demo.pids"
  echo "demo stopped"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
started() { # name pid
  names+=("$1")
  pids+=("$2")
  echo "$2 $1" >>"$STATE/demo.pids"
}
: >"$STATE/demo.pids"

# Polls `check` (a command) every 0.1s until it succeeds, for at most 20s, failing early when
# process PID exits: only a process this script started may satisfy it.
# LOG, when set, is the process's log: its first lines (where the error is) are printed when it
# exits early.
wait_until() { # name pid what check...
  local name=$1 pid=$2 what=$3
  shift 3
  for _ in $(seq 1 200); do
    if ! kill -0 "$pid" 2>/dev/null; then
      [ -n "${LOG:-}" ] && [ -s "$LOG" ] && head -n 5 "$LOG" | sed 's/^/  | /' >&2
      fail "$name (pid $pid) exited before $what${LOG:+ (log: $LOG)}"
    fi
    if "$@"; then return 0; fi
    sleep 0.1
  done
  fail "$name (pid $pid) did not $what within 20s"
}
file_has() { [ -f "$1" ] && grep -qxF -- "$2" "$1"; }

# The admin API wants a token: a random one, readable by this user only.
TOKEN_FILE="$STATE/admin.token"
if [ ! -s "$TOKEN_FILE" ]; then
  (umask 077 && od -An -vtx1 -N32 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE" && echo >>"$TOKEN_FILE")
fi

# The xDS channel runs over mTLS: a throwaway CA in $STATE/pki, a server certificate for
# legate-cp and the proxy's node identity spiffe://legate.local/node/demo-proxy. The ledger
# upstream serves mTLS with spiffe://legate.local/ns/default/sa/ledger and accepts the demo node
# cluster's client certificate, which legate-cp hands the proxy over SDS.
PKI="$STATE/pki"
"$BIN/legatectl" certs --out "$PKI" --host localhost --host ledger --node demo-proxy \
  --cluster demo >/dev/null

# The mesh: the example itself with the default ports and state directory, else a copy with
# this run's ports (each default address must be in the example, so the two cannot drift).
MESH=examples/cp-demo.yaml
defaults=(127.0.0.1:15001 127.0.0.1:18081 127.0.0.1:18082 127.0.0.1:18083 localhost:18084
  127.0.0.1:18085 ../.demo/pki/)
ours=("127.0.0.1:$PROXY_PORT" "127.0.0.1:${UP_PORTS[0]}" "127.0.0.1:${UP_PORTS[1]}"
  "127.0.0.1:${UP_PORTS[2]}" "localhost:${UP_PORTS[3]}" "127.0.0.1:${UP_PORTS[4]}" pki/)
if [ "$PROXY_PORT ${UP_PORTS[*]} $STATE" != "15001 18081 18082 18083 18084 18085 .demo" ]; then
  MESH="$STATE/cp-demo.yaml"
  sed_args=()
  for i in "${!defaults[@]}"; do
    grep -qF -- "${defaults[$i]}" examples/cp-demo.yaml ||
      fail "examples/cp-demo.yaml no longer mentions ${defaults[$i]}: update this script"
    sed_args+=(-e "s|${defaults[$i]//./\\.}|${ours[$i]}|g")
  done
  sed "${sed_args[@]}" examples/cp-demo.yaml >"$MESH"
fi

start_upstream() { # name version port [flags...]
  local name=$1 version=$2 port=$3 log="$STATE/logs/upstream-$1-$2-$3.log"
  shift 3
  "$BIN/legate-demo-upstream" --name "$name" --version "$version" --listen "127.0.0.1:$port" \
    "$@" >"$log" 2>&1 &
  started "upstream $name $version" $!
  LOG=$log wait_until "upstream $name $version" $! "listen on 127.0.0.1:$port" \
    file_has "$log" "listening on 127.0.0.1:$port"
}
start_upstream payments v1 "${UP_PORTS[0]}"
start_upstream payments v1 "${UP_PORTS[1]}"
start_upstream payments v2 "${UP_PORTS[2]}"
start_upstream inventory v1 "${UP_PORTS[3]}" --protocol http2
start_upstream ledger v1 "${UP_PORTS[4]}" \
  --tls-cert "$PKI/ledger.pem" --tls-key "$PKI/ledger.key" --client-ca "$PKI/ca.pem"

# legate-cp first, and the proxy only once legate-cp listens (it writes its address file then),
# so the proxy's first connection succeeds instead of logging a failure.
"$BIN/legate-cp" --config "$MESH" --data-dir "$STATE/cp-data" \
  --xds-address "127.0.0.1:$CP_XDS_PORT" --admin-address "127.0.0.1:$CP_ADMIN_PORT" \
  --metrics-address "127.0.0.1:$CP_METRICS_PORT" --address-file "$STATE/cp.addr" \
  --xds-tls-cert "$PKI/localhost.pem" --xds-tls-key "$PKI/localhost.key" \
  --xds-client-ca "$PKI/ca.pem" \
  --admin-token-file "$TOKEN_FILE" --lrs-interval 1s &
started legate-cp $!
wait_until legate-cp $! "listen on 127.0.0.1:$CP_XDS_PORT and 127.0.0.1:$CP_ADMIN_PORT" \
  file_has "$STATE/cp.addr" "admin=127.0.0.1:$CP_ADMIN_PORT"
file_has "$STATE/cp.addr" "xds=127.0.0.1:$CP_XDS_PORT" ||
  fail "legate-cp listens elsewhere than 127.0.0.1:$CP_XDS_PORT: $(cat "$STATE/cp.addr")"

# Proxies report their load every second (--lrs-interval 1s, the least legate-cp allows; 5s
# by default), so that a canary rollout's steps are judged within seconds of the traffic.
# A demo has no remote load balancer to tell about a shutdown: a short drain stops it quickly.
"$BIN/legate" --node-id demo-proxy --node-cluster demo \
  --admin-address "127.0.0.1:$ADMIN_PORT" --admin-address-path "$STATE/legate.addr" \
  --xds-server "https://localhost:$CP_XDS_PORT" --xds-ca "$PKI/ca.pem" \
  --xds-cert "$PKI/node-demo-proxy.pem" --xds-key "$PKI/node-demo-proxy.key" \
  --cache-dir "$STATE/proxy-cache" --drain-time 1s &
started legate $!
legate_pid=$!
wait_until legate "$legate_pid" "listen on 127.0.0.1:$ADMIN_PORT" \
  file_has "$STATE/legate.addr" "127.0.0.1:$ADMIN_PORT"
ready() { curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/ready" 2>/dev/null; }
wait_until legate "$legate_pid" "become ready" ready
listening() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/listeners" 2>/dev/null | grep -qF "127.0.0.1:$PROXY_PORT"; }
wait_until legate "$legate_pid" "listen on 127.0.0.1:$PROXY_PORT" listening

CTL="$BIN/legatectl"
[ "$CP_ADMIN_PORT" = 15011 ] || CTL="$CTL --server 127.0.0.1:$CP_ADMIN_PORT"
CTL="$CTL --token-file $TOKEN_FILE"
cat <<MSG

legate-cp: mesh $MESH, xDS over mTLS on 127.0.0.1:$CP_XDS_PORT (certificates in $PKI),
           admin on 127.0.0.1:$CP_ADMIN_PORT, admin token in $TOKEN_FILE
           (legatectl --token-file, or LEGATE_CP_TOKEN_FILE),
           Prometheus metrics on http://127.0.0.1:$CP_METRICS_PORT/metrics.
legate:    proxy on 127.0.0.1:$PROXY_PORT, admin on 127.0.0.1:$ADMIN_PORT, configured over xDS.
state:     $STATE, $state_note.
try: curl http://127.0.0.1:$PROXY_PORT/payments/charge
try: curl -H 'x-canary: 1' http://127.0.0.1:$PROXY_PORT/payments/charge
try: curl --http2-prior-knowledge http://127.0.0.1:$PROXY_PORT/inventory/items
try: curl -i http://127.0.0.1:$PROXY_PORT/ledger/entries   # mTLS upstream: see x-tls-version, x-client-san
try: $CTL set-weights payments v1=0 v2=100   # then curl payments again: all v2
try: $CTL status
try: curl http://127.0.0.1:$ADMIN_PORT/config_dump

canary: payments v2 serves 0 % (the x-canary header reaches it). Send traffic in a second
        terminal, roll v2 out and watch it promoted (about 30 s); then make v2 fail a fifth of
        its requests and start again: the rollout rolls back at its first step.
try: for i in \$(seq 3000); do curl -s -o /dev/null http://127.0.0.1:$PROXY_PORT/payments/charge; sleep 0.01; done   # about a minute of traffic
try: $CTL canary start payments --to v2 --steps 10,50,100 --interval 10s --max-error-rate 1% --min-requests 20
try: $CTL canary status payments --watch   # until the rollout ends; Ctrl-C stops watching
try: curl -X POST http://127.0.0.1:${UP_PORTS[2]}/control -d '{"fail_ratio":0.2}'   # v2 fails 20 %: start the rollout again
try: curl -X POST http://127.0.0.1:${UP_PORTS[2]}/control -d '{"fail_ratio":0}'   # v2 heals
Press Ctrl-C to stop.
MSG

set +e
wait -n "${pids[@]}"
status=$?
for i in "${!pids[@]}"; do
  kill -0 "${pids[$i]}" 2>/dev/null || echo "run-demo.sh: ${names[$i]} (pid ${pids[$i]}) exited with status $status" >&2
done
exit "$status"
