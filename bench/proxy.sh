#!/usr/bin/env bash
# Throughput and tail latency: direct to a trivial upstream, through nginx (reverse proxy with
# keep-alive upstreams) and through ramp, at the same concurrency, in one run.
#
#   bash bench/proxy.sh            # 3 rounds of 10 s per target, 50 connections
#   DURATION=5s CONNS=100 ROUNDS=5 bash bench/proxy.sh
#
# Installs wrk and nginx from Debian packages when missing. Everything listens on 127.0.0.1 and
# stops by itself at the end. Every request carries a random x-user-id, so ramp really buckets
# (5% canary share) and records per-variant counters on every request.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-1}"
ROUNDS="${ROUNDS:-3}"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  echo "installing wrk and nginx (apt)..." >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
fi

# RAMP=/path/to/ramp measures that binary instead (e.g. an older build, side by side).
if [ -z "${RAMP:-}" ]; then
  cargo build --release --locked -p ramp >/dev/null 2>&1 || cargo build --release --locked -p ramp
  RAMP="${CARGO_TARGET_DIR:-target}/release/ramp"
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/up/nginx.pid" ] && nginx -p "$work/up" -c "$work/up/nginx.conf" -s quit 2>/dev/null || true
  [ -f "$work/px/nginx.pid" ] && nginx -p "$work/px" -c "$work/px/nginx.conf" -s quit 2>/dev/null || true
  sleep 0.3
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
UP1=$(free_port); UP2=$(free_port); NGX=$(free_port); RMP=$(free_port)

# The upstream: nginx, one worker, in its own process, answering "ok" to everything.
mkdir -p "$work/up" "$work/px"
cat > "$work/up/nginx.conf" <<NGINX
worker_processes 1;
pid $work/up/nginx.pid;
error_log $work/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP1; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$UP2; location / { return 200 "ok\n"; } }
}
NGINX
nginx -p "$work/up" -c "$work/up/nginx.conf"

# The peer: nginx as a reverse proxy with keep-alive upstream connections, as many workers as cores.
cat > "$work/px/nginx.conf" <<NGINX
worker_processes auto;
pid $work/px/nginx.pid;
error_log $work/px/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$UP1; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
nginx -p "$work/px" -c "$work/px/nginx.conf"

# ramp: the seed plan's shape, 5% canary, phases long enough that nothing changes during the run.
cat > "$work/plan.toml" <<PLAN
name = "bench"
[upstreams]
stable = "http://127.0.0.1:$UP1"
canary = "http://127.0.0.1:$UP2"
[[phase]]
name = "canary"
traffic = "5%"
duration = "24h"
success = ["error_rate < 0.1%", "p95_latency <= 200ms"]
[rollback]
triggers = ["error_rate > 1%"]
PLAN
"$RAMP" serve --plan "$work/plan.toml" --listen "127.0.0.1:$RMP" --db "$work/ramp.db" --api 127.0.0.1:0 > "$work/ramp.log" 2>&1 &
pids+=($!)

cat > "$work/users.lua" <<'LUA'
math.randomseed(42)
request = function()
  wrk.headers["x-user-id"] = "user-" .. math.random(1, 100000)
  return wrk.format(nil, "/pay")
end
LUA

for port in $UP1 $NGX $RMP; do
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

run() { # name port round -> prints one line, appends "rps p99ms" to $work/<name>.all
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$work/users.lua" "http://127.0.0.1:$2/" > "$work/$1.txt" 2>&1
  local rps p99
  rps=$(awk '/^Requests\/sec/ {print $2}' "$work/$1.txt")
  p99=$(awk '$1=="99%" {print $2}' "$work/$1.txt")
  printf '  round %s  %-8s %12s req/s   p99 %s\n' "$3" "$1" "$rps" "$p99"
  echo "$rps $(to_ms "$p99")" >> "$work/$1.all"
}
to_ms() { # 1.23ms | 850.00us | 1.2s -> ms
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000 } else print v }'
}
median() { # column file
  sort -g -k"$1" "$2" | awk -v c="$1" '{ v[NR] = $c } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS interleaved rounds"
# Rounds interleave the three targets so that drift in the machine's speed (other tenants,
# thermal state) hits all of them alike; the medians are compared.
for round in $(seq "$ROUNDS"); do
  run direct "$UP1" "$round"
  run nginx "$NGX" "$round"
  run ramp "$RMP" "$round"
done
for name in direct nginx ramp; do
  printf '%-8s median %12s req/s   p99 %s ms\n' "$name" "$(median 1 "$work/$name.all")" "$(median 2 "$work/$name.all")"
done
ratio_rps=$(awk -v a="$(median 1 "$work/ramp.all")" -v b="$(median 1 "$work/nginx.all")" 'BEGIN { printf "%.2f", a/b }')
ratio_p99=$(awk -v a="$(median 2 "$work/ramp.all")" -v b="$(median 2 "$work/nginx.all")" 'BEGIN { printf "%.2f", a/b }')
echo "ramp/nginx (medians): throughput ×$ratio_rps, p99 ×$ratio_p99 (target: throughput >= 1.00, p99 <= 1.00)"
if grep -qi "error" "$work/ramp.log"; then echo "ramp log:"; tail -5 "$work/ramp.log"; fi
