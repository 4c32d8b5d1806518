#!/usr/bin/env bash
# Starts the demo: legate-cp on examples/cp-demo.yaml, four demo upstreams, and a legate
# proxy configured by legate-cp over xDS. Ctrl-C (or SIGTERM) stops everything this script
# started, by PID. State (legate-cp's admin changes, the proxy's xDS cache) lives in .demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
STATE=.demo
mkdir -p "$STATE"
pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo stopped"
}
trap cleanup INT TERM EXIT

start_upstream() { # name version address [protocol]
  "$BIN/legate-demo-upstream" --name "$1" --version "$2" --listen "$3" --protocol "${4:-auto}" >/dev/null &
  pids+=($!)
}
start_upstream payments v1 127.0.0.1:18081
start_upstream payments v1 127.0.0.1:18082
start_upstream payments v2 127.0.0.1:18083
start_upstream inventory v1 127.0.0.1:18084 http2

# The admin API wants a token: a random one, readable by this user only, kept across runs.
TOKEN_FILE="$STATE/admin.token"
if [ ! -s "$TOKEN_FILE" ]; then
  (umask 077 && od -An -vtx1 -N32 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE" && echo >>"$TOKEN_FILE")
fi

# The xDS channel runs over mTLS: a throwaway CA (kept across runs in .demo/pki), a server
# certificate for legate-cp and the proxy's node identity spiffe://legate.local/node/demo-proxy.
PKI="$STATE/pki"
# The ledger upstream serves mTLS with spiffe://legate.local/ns/default/sa/ledger and accepts
# the demo node cluster's client certificate, which legate-cp hands the proxy over SDS.
"$BIN/legatectl" certs --out "$PKI" --host localhost --host ledger --node demo-proxy \
  --cluster demo >/dev/null
"$BIN/legate-demo-upstream" --name ledger --version v1 --listen 127.0.0.1:18085 \
  --tls-cert "$PKI/ledger.pem" --tls-key "$PKI/ledger.key" --client-ca "$PKI/ca.pem" >/dev/null &
pids+=($!)

"$BIN/legate-cp" --config examples/cp-demo.yaml --data-dir "$STATE/cp-data" \
  --xds-address 127.0.0.1:15010 --admin-address 127.0.0.1:15011 \
  --xds-tls-cert "$PKI/localhost.pem" --xds-tls-key "$PKI/localhost.key" \
  --xds-client-ca "$PKI/ca.pem" \
  --admin-token-file "$TOKEN_FILE" &
pids+=($!)

"$BIN/legate" --node-id demo-proxy --node-cluster demo --admin-address 127.0.0.1:15000 \
  --xds-server https://localhost:15010 --xds-ca "$PKI/ca.pem" \
  --xds-cert "$PKI/node-demo-proxy.pem" --xds-key "$PKI/node-demo-proxy.key" \
  --cache-dir "$STATE/proxy-cache" &
pids+=($!)

for _ in $(seq 1 150); do
  if curl -fsS -o /dev/null http://127.0.0.1:15000/ready 2>/dev/null; then break; fi
  sleep 0.1
done
curl -fsS -o /dev/null http://127.0.0.1:15000/ready || { echo "legate did not become ready" >&2; exit 1; }

cat <<MSG

legate-cp: xDS over mTLS on 127.0.0.1:15010 (certificates in $PKI),
           admin on 127.0.0.1:15011 (legatectl's default),
           admin token in $TOKEN_FILE (legatectl --token-file, or LEGATE_CP_TOKEN_FILE).
legate:    proxy on 127.0.0.1:15001, admin on 127.0.0.1:15000, configured over xDS.
try: curl http://127.0.0.1:15001/payments/charge
try: curl -H 'x-canary: 1' http://127.0.0.1:15001/payments/charge
try: curl --http2-prior-knowledge http://127.0.0.1:15001/inventory/items
try: curl -i http://127.0.0.1:15001/ledger/entries   # mTLS upstream: see x-tls-version, x-client-san
try: $BIN/legatectl --token-file $TOKEN_FILE set-weights payments v1=0 v2=100   # then curl payments again: all v2
try: $BIN/legatectl --token-file $TOKEN_FILE status
try: curl http://127.0.0.1:15000/config_dump
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
