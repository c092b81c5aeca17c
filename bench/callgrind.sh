#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind (repeatable on a noisy
# machine, unlike throughput): ramp serve with one proxy worker in front of a one-worker nginx
# upstream, N1 and then N2 requests from h2load (HTTP/1.1, 10 connections, keep-alive), each in
# its own run; (Ir(N2) - Ir(N1)) / (N2 - N1) cancels start-up and shutdown.
#
#   bash bench/callgrind.sh                       # the current release build
#   RAMP=/path/to/ramp bash bench/callgrind.sh    # another build (side by side: run both)
#   N1=2000 N2=12000 TLS=on bash bench/callgrind.sh
#
# Installs valgrind, nginx-light and nghttp2-client (h2load) with apt when missing. Everything
# listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
N1="${N1:-2000}"
N2="${N2:-12000}"
TLS="${TLS:-off}"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need valgrind || ! need nginx || ! need h2load; then
  echo "installing valgrind, nginx-light, nghttp2-client (apt)..." >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind nginx-light nghttp2-client >/dev/null
fi
if [ -z "${RAMP:-}" ]; then
  cargo build --release --locked -p ramp >/dev/null 2>&1 || cargo build --release --locked -p ramp
  RAMP="${CARGO_TARGET_DIR:-target}/release/ramp"
fi

work=$(mktemp -d)
cleanup() {
  pkill -f "valgrind.*$work" 2>/dev/null || true
  [ -f "$work/up/nginx.pid" ] && nginx -p "$work/up" -c "$work/up/nginx.conf" -s quit 2>/dev/null || true
  sleep 0.3
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
UP=$(free_port)
mkdir -p "$work/up"
cat > "$work/up/nginx.conf" <<NGINX
worker_processes 1;
pid $work/up/nginx.pid;
error_log $work/up/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } }
}
NGINX
nginx -p "$work/up" -c "$work/up/nginx.conf"

scheme=http
tls_table=""
if [ "$TLS" = on ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
  scheme=https
  tls_table="[proxy.tls]
cert = \"$work/cert.pem\"
key = \"$work/key.pem\""
fi

count() { # requests -> total Ir
  local n=$1 port
  port=$(free_port)
  cat > "$work/plan.toml" <<PLAN
name = "callgrind"
[upstreams]
stable = "http://127.0.0.1:$UP"
canary = "http://127.0.0.1:$UP"
[proxy]
listen = "127.0.0.1:$port"
$tls_table
[[phase]]
name = "canary"
traffic = "5%"
duration = "24h"
[rollback]
triggers = ["error_rate > 1%"]
PLAN
  rm -f "$work"/ramp.db* "$work"/cg.out
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$RAMP" serve --plan "$work/plan.toml" --db "$work/ramp.db" --api 127.0.0.1:0 --workers 1 \
    > "$work/serve.log" 2>&1 &
  local vg=$!
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  h2load --h1 -n "$n" -c 10 -H 'x-user-id: user-42' "$scheme://127.0.0.1:$port/pay" > "$work/h2load.txt" 2>&1
  grep -q "succeeded, 0 failed" "$work/h2load.txt" || grep "requests:" "$work/h2load.txt" >&2
  kill -INT "$vg"
  wait "$vg" || true
  awk '/^summary:/ {print $2}' "$work/cg.out"
}

a=$(count "$N1")
b=$(count "$N2")
echo "$RAMP (TLS $TLS): $(( (b - a) / (N2 - N1) )) instructions per request (callgrind, user space; Ir $a at $N1 requests, $b at $N2)"
