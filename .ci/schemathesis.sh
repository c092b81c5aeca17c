#!/usr/bin/env bash
# Property-based tests of the HTTP API against its OpenAPI document (docs/openapi.json):
# schemathesis drives a fresh `ramp serve` on loopback (free ports) with generated requests,
# and fails on any answer the document does not allow (status, content type, body schema,
# server errors, accepted invalid input, refused valid input).
# Usage: bash .ci/schemathesis.sh RAMP_BINARY SCHEMATHESIS_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
ramp=$(realpath "$1")
st=$(realpath "$2")
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Two backends on free ports.
ports=()
for name in stable canary; do
  timeout 900 python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$work" > "$work/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    port=$(sed -n 's/.* port \([0-9]*\).*/\1/p' "$work/$name.log" | head -1)
    [ -n "$port" ] && break
    sleep 0.1
  done
  ports+=("$port")
done
cat > "$work/plan.toml" << PLAN
name = "pay"
[upstreams]
stable = "http://127.0.0.1:${ports[0]}"
canary = "http://127.0.0.1:${ports[1]}"
[[phase]]
name = "canary"
traffic = "20%"
duration = "24h"
success = ["error_rate < 1%"]
[rollback]
triggers = ["error_rate > 5%", "pci_alerts >= 2"]
PLAN
timeout 900 "$ramp" serve --plan "$work/plan.toml" --db "$work/ramp.db" \
  --api 127.0.0.1:0 --listen 127.0.0.1:0 > "$work/serve.log" 2>&1 &
pids+=($!)
api=
for _ in $(seq 200); do
  api=$(sed -n 's/.*API on \(http:[^ ]*\).*/\1/p' "$work/serve.log" | head -1)
  [ -n "$api" ] && break
  sleep 0.1
done
[ -n "$api" ] || { cat "$work/serve.log"; echo "ramp serve did not start"; exit 1; }
token=$(grep -A1 "created an admin token" "$work/serve.log" | tail -1 | tr -d ' ')

start=$(date +%s)
# The document as a file (served, schemathesis would skip GET /v1/openapi.json itself).
(cd .ci && timeout 600 "$st" run ../docs/openapi.json --url "$api" \
  -H "Authorization: Bearer $token" \
  --max-examples 100 --seed 1 --continue-on-failure --request-timeout 10 \
  --no-color)
echo "schemathesis: passed in $(($(date +%s) - start)) s"
