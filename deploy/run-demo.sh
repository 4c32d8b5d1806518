#!/usr/bin/env bash
# Starts the demo: four demo upstreams and a legate proxy on examples/demo.yaml.
# Ctrl-C (or SIGTERM) stops everything this script started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
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

"$BIN/legate" --config examples/demo.yaml &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null http://127.0.0.1:15000/ready 2>/dev/null; then break; fi
  sleep 0.1
done
curl -fsS -o /dev/null http://127.0.0.1:15000/ready || { echo "legate did not become ready" >&2; exit 1; }

cat <<'MSG'

legate is running: proxy on 127.0.0.1:15001, admin on 127.0.0.1:15000.
try: curl http://127.0.0.1:15001/payments/charge
try: curl -H 'x-canary: 1' http://127.0.0.1:15001/payments/charge
try: curl --http2-prior-knowledge http://127.0.0.1:15001/inventory/items
try: curl http://127.0.0.1:15000/clusters
try: curl http://127.0.0.1:15000/stats/prometheus
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
