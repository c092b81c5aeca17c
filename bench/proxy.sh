#!/usr/bin/env bash
# Proxy matrix: direct to a trivial upstream, through nginx, HAProxy and ramp (and, with
# RAMP_BASE, a second ramp build), side by side in one run, over
#   proxy workers × client connections × body shape × TLS on the proxy's listener.
# Per cell and target: req/s, p50, p99, the proxy's CPU per request, its RSS at the end of the
# load and 2 s later (idle), wrk's non-2xx responses and socket errors; then ramp's ratios.
#
#   bash bench/proxy.sh                      # the default matrix, ≈ 5.5 min (≈ 7 with RAMP_BASE)
#   RAMP_BASE=/tmp/ramp-prev bash bench/proxy.sh        # A/B: adds target "ramp-base"
#   WORKERS=2 CONNS=50 BODIES=1k TLS=off ROUNDS=5 DURATION=10s bash bench/proxy.sh   # one cell
#   WORKERS="1 2" CONNS="10 50 200 1000" BODIES="1k 64k post16k" TLS="off on" \
#     ROUNDS=3 DURATION=10s bash bench/proxy.sh  # the full matrix (≈ 85 min; the estimate is
#                                                #  printed before anything runs)
#
# Environment (defaults in brackets):
#   WORKERS   ["1 2"]  nginx worker_processes, HAProxy nbthread, ramp --workers
#   CONNS     ["50 1000"]  wrk connections (the full set: "10 50 200 1000")
#   BODIES    ["1k 64k post16k"]  1k / 64k: GET of a 1 KiB / 64 KiB upstream response;
#             post16k: POST of a 16 KiB body, the upstream answers "ok"
#   TLS       ["off on"]  on: each proxy terminates TLS (self-signed P-256 cert, TLS 1.3) on its
#             listener; the upstream leg stays cleartext. direct runs only with TLS off. wrk
#             opens every connection (a full handshake each) inside the measured time: at 1000
#             connections the handshakes take ≈ 1 s, so keep DURATION >= 3s there.
#   ROUNDS    [1]    interleaved rounds per cell; medians are reported
#   DURATION  [3s]   per wrk run
#   THREADS   [1]    wrk threads
#   WRK_TIMEOUT [2s] wrk's request timeout (timeouts count as socket errors)
#   TARGETS   ["direct nginx haproxy ramp"] a subset to run (ramp-base is added by RAMP_BASE)
#   SKIP      [""]   cells to skip: globs over "TLS/WORKERS/CONNS/BODY", e.g. "on/*/10/* */2/*/64k"
#   IDLE      [2]    seconds after a run at which the idle RSS is read
#   RAMP      [cargo build --release]  the ramp binary measured as "ramp"
#   RAMP_BASE [unset] a second ramp binary, measured as "ramp-base" in the same run
#   RESTART   [cell] cell: every proxy is started afresh for every cell (and round), so RSS and
#             CPU belong to that cell alone; group: once per TLS × workers (faster, RSS carries over)
#   NGINX_REUSEPORT [0]  1: nginx listens with `reuseport` (one socket per worker, like ramp)
#   DRY_RUN   [0]    1: print the matrix and the time estimate, run nothing
#   KEEP      [0]    1: keep the work directory (configs, every proxy's log, wrk's output)
#   OUT       [unset] also write every measurement (one line per run) as TSV to this file
#
# Installs wrk, nginx-light, haproxy and openssl with apt when missing. Everything listens on
# 127.0.0.1 and is stopped at the end, also on Ctrl-C. Every request carries a random
# x-user-id, so ramp really buckets (5% canary share) and records per-variant counters.
# CPU per request: utime+stime of the proxy's processes (nginx: master and workers) from
# /proc/PID/stat around the wrk run, divided by the requests wrk completed. RSS: sum of VmRSS.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS="${WORKERS:-1 2}"
CONNS="${CONNS:-50 1000}"
BODIES="${BODIES:-1k 64k post16k}"
TLS="${TLS:-off on}"
ROUNDS="${ROUNDS:-1}"
DURATION="${DURATION:-3s}"
THREADS="${THREADS:-1}"
WRK_TIMEOUT="${WRK_TIMEOUT:-2s}"
TARGETS="${TARGETS:-direct nginx haproxy ramp}"
SKIP="${SKIP:-}"
IDLE="${IDLE:-2}"
NGINX_REUSEPORT="${NGINX_REUSEPORT:-0}"
RESTART="${RESTART:-cell}"
KEEP="${KEEP:-0}"
DRY_RUN="${DRY_RUN:-0}"
OUT="${OUT:-}"

die() { echo "proxy.sh: $*" >&2; exit 1; }
for b in $BODIES; do case "$b" in 1k | 64k | post16k) ;; *) die "unknown body $b (1k, 64k, post16k)" ;; esac; done
case "$RESTART" in cell | group) ;; *) die "RESTART takes cell or group" ;; esac
for t in $TLS; do case "$t" in off | on) ;; *) die "TLS takes off and/or on, not $t" ;; esac; done
for t in $TARGETS; do case "$t" in direct | nginx | haproxy | ramp) ;; *) die "unknown target $t" ;; esac; done
for n in $WORKERS $CONNS $ROUNDS $THREADS $IDLE; do case "$n" in '' | *[!0-9]*) die "not a number: $n" ;; esac; done
dur_s=$(awk -v d="$DURATION" 'BEGIN { u = d; sub(/^[0-9.]+/, "", u); n = d + 0
  if (u == "" || u == "s") print n; else if (u == "m") print n * 60; else if (u == "h") print n * 3600; else print -1 }')
awk -v d="$dur_s" 'BEGIN { exit !(d > 0) }' || die "DURATION must look like 3s, 1m"

need() { command -v "$1" >/dev/null 2>&1; }
missing=()
need wrk || missing+=(wrk)
need nginx || missing+=(nginx-light)
need haproxy || missing+=(haproxy)
need openssl || missing+=(openssl)
need curl || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)..." >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# RAMP=/path/to/ramp measures that binary instead; RAMP_BASE=/path adds a second one.
if [ -z "${RAMP:-}" ]; then
  cargo build --release --locked -p ramp >/dev/null 2>&1 || cargo build --release --locked -p ramp
  RAMP="${CARGO_TARGET_DIR:-target}/release/ramp"
fi
[ -x "$RAMP" ] || die "RAMP=$RAMP is not an executable"
RAMP=$(realpath "$RAMP")
proxies=()
for t in nginx haproxy ramp; do [[ " $TARGETS " == *" $t "* ]] && proxies+=("$t"); done
if [ -n "${RAMP_BASE:-}" ]; then
  [ -x "$RAMP_BASE" ] || die "RAMP_BASE=$RAMP_BASE is not an executable"
  RAMP_BASE=$(realpath "$RAMP_BASE")
  proxies+=(ramp-base)
fi
with_direct=0
[[ " $TARGETS " == *" direct "* ]] && with_direct=1

# wrk at 1000 connections, and proxies holding a client and an upstream socket per connection.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The plan of the run, and what it will take.
skipped() { local c=$1 pat; for pat in $SKIP; do [[ $c == $pat ]] && return 0; done; return 1; }
first_w=${WORKERS%% *}; first_w=${first_w:-1}
runs=0; groups=0; ncells=0
for tls in $TLS; do for w in $WORKERS; do
  g=0
  for c in $CONNS; do for b in $BODIES; do
    skipped "$tls/$w/$c/$b" && continue
    g=1; ncells=$((ncells + 1))
    runs=$((runs + ${#proxies[@]} * ROUNDS))
    [ $with_direct = 1 ] && [ "$tls" = off ] && [ "$w" = "$first_w" ] && runs=$((runs + ROUNDS))
  done; done
  groups=$((groups + g))
done; done
[ $runs -gt 0 ] || die "nothing to run (check TARGETS, SKIP)"
# Per run: the duration plus ≈ 0.2 s (wrk start, /proc reads); per start of the proxies ≈ 1.2 s
# (start, check, stop) plus the wait for the last idle-RSS read.
nstarts=$groups
[ "$RESTART" = cell ] && nstarts=$((ncells * ROUNDS))
est=$(awk -v r=$runs -v d="$dur_s" -v s=$nstarts -v i="$IDLE" 'BEGIN { printf "%d", r * (d + 0.2) + s * (1.2 + i) + 2 }')
fmt_t() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "peers: $(nginx -v 2>&1 | sed 's/^nginx version: //'), HAProxy $(haproxy -v 2>&1 | awk 'NR==1 {print $3}'), wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}') -t$THREADS --timeout $WRK_TIMEOUT, ulimit -n $(ulimit -n)"
echo "ramp: $RAMP ($("$RAMP" --version 2>/dev/null || echo '?'))"
[ -n "${RAMP_BASE:-}" ] && echo "ramp-base: $RAMP_BASE ($("$RAMP_BASE" --version 2>/dev/null || echo '?'))"
echo "matrix: TLS=[$TLS] WORKERS=[$WORKERS] CONNS=[$CONNS] BODIES=[$BODIES] targets=[$([ $with_direct = 1 ] && printf 'direct ')${proxies[*]}]${SKIP:+ SKIP=[$SKIP]}"
echo "        $ncells cells, $runs runs of $DURATION, $ROUNDS round(s), proxies restarted per $RESTART; estimated total $(fmt_t "$est")"
[ "$DRY_RUN" = 1 ] && exit 0

work=$(mktemp -d /tmp/ramp-bench.XXXXXX)
chmod 755 "$work" # nginx workers (user nobody) read the upstream's files
pids=()     # long-running servers of the current group
samplers=() # background idle-RSS readers
upstream_pid=""
wrk_pid=""
alive() { [ -e "/proc/$1" ] && ! awk '{ sub(/^.*\) /, ""); exit $1 != "Z" }' "/proc/$1/stat" 2>/dev/null; }
stop_pids() { # pid... : TERM, up to 5 s, then KILL; reaps them
  local p i
  [ $# -gt 0 ] || return 0
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for i in $(seq 50); do
    local any=0
    for p in "$@"; do alive "$p" && any=1; done
    [ $any = 0 ] && break
    sleep 0.1
  done
  for p in "$@"; do alive "$p" && kill -KILL "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
cleanup() {
  trap - EXIT INT TERM HUP
  [ -n "$wrk_pid" ] && { kill "$wrk_pid" 2>/dev/null; wait "$wrk_pid" 2>/dev/null; } || true
  for p in "${samplers[@]:-}"; do [ -n "$p" ] && { pkill -P "$p" 2>/dev/null; kill "$p" 2>/dev/null; } || true; done
  stop_pids ${pids[@]+"${pids[@]}"} ${upstream_pid:+"$upstream_pid"}
  if [ "$KEEP" = 1 ]; then echo "kept $work (configs, logs, wrk output)" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'echo; echo "interrupted" >&2; exit 130' INT TERM HUP

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { # port name log
  local i
  for i in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not listen on 127.0.0.1:$1 within 10 s; its log:" >&2
  tail -20 "$3" >&2 || true
  exit 1
}

# The self-signed certificate every proxy uses with TLS on.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1
cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"

# The upstream: nginx, one worker, in its own process. /1k and /64k are files of those sizes;
# everything else (the 16 KiB POSTs to /post) gets "ok".
UP1=$(free_port); UP2=$(free_port)
mkdir -p "$work/up/html"
head -c 1024 /dev/zero | tr '\0' a > "$work/up/html/1k"
head -c 65536 /dev/zero | tr '\0' b > "$work/up/html/64k"
chmod 755 "$work/up" "$work/up/html"; chmod 644 "$work/up/html/"*
head -c 16384 /dev/zero | tr '\0' c > "$work/post16k.bin"
upstream_server() {
  cat <<NGINX
  server {
    listen 127.0.0.1:$1;
    root $work/up/html;
    location = /1k {}
    location = /64k {}
    location / { return 200 "ok\n"; }
  }
NGINX
}
cat > "$work/up/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/up/nginx.pid;
error_log $work/up/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  default_type application/octet-stream;
  types {}
  sendfile on;
  tcp_nopush on;
  open_file_cache max=16;
  keepalive_requests 1000000;
  client_body_temp_path $work/up/body;
$(upstream_server "$UP1")
$(upstream_server "$UP2")
}
NGINX
nginx -p "$work/up" -c "$work/up/nginx.conf" > "$work/up/stderr.log" 2>&1 &
upstream_pid=$!
wait_port "$UP1" "upstream nginx" "$work/up/error.log"

# The proxies are started fresh, on fresh ports, for every cell (RESTART=cell) or for every
# TLS × workers group (RESTART=group).
declare -A port pidlist log
starts=0
tls_shown=0
start_group() { # tls workers
  local tls=$1 w=$2 g reuse="" ssl="" hssl="" t
  starts=$((starts + 1)); g="$work/s$starts"
  mkdir -p "$g"
  pids=()
  [ "$NGINX_REUSEPORT" = 1 ] && reuse=" reuseport"
  [ "$tls" = on ] && ssl=" ssl" && hssl=" ssl crt $work/haproxy.pem"
  for t in "${proxies[@]}"; do port[$t]=$(free_port); done

  if [[ " ${proxies[*]} " == *" nginx "* ]]; then
    mkdir -p "$g/nginx"
    cat > "$g/nginx/nginx.conf" <<NGINX
daemon off;
worker_processes $w;
pid $g/nginx/nginx.pid;
error_log $g/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $g/nginx/body;
  client_body_buffer_size 64k;
  proxy_temp_path $g/nginx/proxy;
  proxy_max_temp_file_size 0;
  upstream backend { server 127.0.0.1:$UP1; keepalive 128; }
  server {
    listen 127.0.0.1:${port[nginx]}$ssl$reuse;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
    nginx -p "$g/nginx" -c "$g/nginx/nginx.conf" > "$g/nginx/stderr.log" 2>&1 &
    pids+=($!); pidlist[nginx]=$!; log[nginx]="$g/nginx/error.log"
  fi

  if [[ " ${proxies[*]} " == *" haproxy "* ]]; then
    mkdir -p "$g/haproxy"
    cat > "$g/haproxy/haproxy.cfg" <<HAPROXY
global
  nbthread $w
  maxconn 8192
defaults
  mode http
  maxconn 8192
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:${port[haproxy]}$hssl
  default_backend be
backend be
  server up 127.0.0.1:$UP1
HAPROXY
    haproxy -db -f "$g/haproxy/haproxy.cfg" > "$g/haproxy/haproxy.log" 2>&1 &
    pids+=($!); pidlist[haproxy]=$!; log[haproxy]="$g/haproxy/haproxy.log"
  fi

  for t in ramp ramp-base; do
    [[ " ${proxies[*]} " == *" $t "* ]] || continue
    local bin=$RAMP
    [ "$t" = ramp-base ] && bin=$RAMP_BASE
    mkdir -p "$g/$t"
    # The seed plan's shape, 5% canary, a phase long enough that nothing changes during the run.
    {
      cat <<PLAN
name = "bench"
[upstreams]
stable = "http://127.0.0.1:$UP1"
canary = "http://127.0.0.1:$UP2"
[proxy]
listen = "127.0.0.1:${port[$t]}"
PLAN
      [ "$tls" = on ] && printf '[proxy.tls]\ncert = "%s"\nkey = "%s"\n' "$work/cert.pem" "$work/key.pem"
      cat <<PLAN
[[phase]]
name = "canary"
traffic = "5%"
duration = "24h"
success = ["error_rate < 0.1%", "p95_latency <= 200ms"]
[rollback]
triggers = ["error_rate > 1%"]
PLAN
    } > "$g/$t/plan.toml"
    "$bin" serve --plan "$g/$t/plan.toml" --db "$g/$t/ramp.db" --api 127.0.0.1:0 \
      --workers "$w" --drain-timeout 1s > "$g/$t/ramp.log" 2>&1 &
    pids+=($!); pidlist[$t]=$!; log[$t]="$g/$t/ramp.log"
  done

  for t in "${proxies[@]}"; do wait_port "${port[$t]}" "$t" "${log[$t]}"; done
  # Each proxy must answer 200 on every path in use before anything is measured.
  local scheme=http b code
  [ "$tls" = on ] && scheme=https
  for t in "${proxies[@]}"; do
    for b in $BODIES; do
      local args=(-sk -o /dev/null -w '%{http_code}' -m 5 -H "x-user-id: smoke")
      case $b in post16k) args+=(--data-binary "@$work/post16k.bin" "$scheme://127.0.0.1:${port[$t]}/post") ;;
        *) args+=("$scheme://127.0.0.1:${port[$t]}/$b") ;; esac
      code=$(curl "${args[@]}" || true)
      [ "$code" = 200 ] || { echo "$t ($scheme, $w workers) answered $code on $b; its log:" >&2; tail -20 "${log[$t]}" >&2; exit 1; }
    done
  done
  if [ "$tls" = on ] && [ $tls_shown = 0 ]; then
    tls_shown=1
    for t in "${proxies[@]}"; do
      printf '  tls %-9s %s\n' "$t" "$(timeout 5 openssl s_client -connect "127.0.0.1:${port[$t]}" </dev/null 2>/dev/null | awk '/^New, /' | head -1 || true)"
    done
  fi
}
stop_group() {
  local p
  for p in "${samplers[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  samplers=()
  stop_pids ${pids[@]+"${pids[@]}"}
  pids=()
  # Keep the logs (with what the proxies said on the way out) for the report at the end.
  local t
  for t in "${proxies[@]}"; do cat "${log[$t]}" >> "$work/log-$t" 2>/dev/null || true; done
}

procs_of() { # target -> pids of its processes (nginx: master and workers)
  case $1 in
    direct) ;;
    nginx) echo "${pidlist[nginx]}" $(pgrep -P "${pidlist[nginx]}" || true) ;;
    *) echo "${pidlist[$1]}" ;;
  esac
}
cpu_ticks() { # pid... -> utime+stime summed
  local p s=0 v
  for p in "$@"; do
    v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)
    s=$((s + v))
  done
  echo $s
}
rss_mb() { # pid... -> VmRSS summed, MB
  [ $# -gt 0 ] || { echo -; return; }
  local p; for p in "$@"; do cat "/proc/$p/status" 2>/dev/null || true; done |
    awk '/^VmRSS:/ { s += $2 } END { printf "%.1f", s / 1024 }'
}
to_ms() { # 1.23ms | 850.00us | 1.2s | 1.00m -> ms
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v+0 }
    else if (v ~ /m$/) { sub(/m$/,"",v); print v*60000 } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000 } else print "-" }'
}
CLK_TCK=$(getconf CLK_TCK)

# wrk scripts: a random x-user-id on every request (as before), the body's path and method.
for b in $BODIES; do
  {
    echo 'math.randomseed(42)'
    case $b in
      post16k) echo 'wrk.method = "POST"'; echo 'wrk.body = string.rep("c", 16384)'
        echo 'wrk.headers["Content-Type"] = "application/octet-stream"'; path=/post ;;
      *) path="/$b" ;;
    esac
    cat <<LUA
request = function()
  wrk.headers["x-user-id"] = "user-" .. math.random(1, 100000)
  return wrk.format(nil, "$path")
end
LUA
  } > "$work/$b.lua"
done


raw="$work/raw.tsv"
: > "$raw"
started=$SECONDS
done_runs=0
run() { # target port tls workers conns body round
  local t=$1 p=$2 tls=$3 w=$4 c=$5 b=$6 r=$7 scheme=http f="$work/wrk-$1-$3-$4-$5-$6-$7.txt"
  [ "$tls" = on ] && scheme=https
  local pl
  pl=$(procs_of "$t")
  # shellcheck disable=SC2086
  local t0 t1
  t0=$(cpu_ticks $pl)
  local wrc=0
  # In the background and waited for: wrk handles SIGINT itself (it stops and prints its
  # results), and bash would then carry on; `wait` returns on Ctrl-C at once and the trap runs.
  timeout --foreground -k 5 $((${dur_s%.*} + 60)) wrk -t"$THREADS" -c"$c" -d"$DURATION" --timeout "$WRK_TIMEOUT" \
    --latency -s "$work/$b.lua" "$scheme://127.0.0.1:$p/" > "$f" 2>&1 &
  wrk_pid=$!
  wait "$wrk_pid" || wrc=$?
  wrk_pid=""
  # shellcheck disable=SC2086
  t1=$(cpu_ticks $pl)
  local rss
  # shellcheck disable=SC2086
  rss=$(rss_mb $pl)
  local rps reqs p50 p99 non2xx sockerr cpu
  rps=$(awk '/^Requests\/sec/ { printf "%.0f", $2 }' "$f")
  reqs=$(awk '/requests in/ { print $1 }' "$f")
  p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$f")")
  p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$f")")
  non2xx=$(awk '/Non-2xx/ { print $NF }' "$f"); non2xx=${non2xx:-0}
  sockerr=$(awk '/Socket errors/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$f"); sockerr=${sockerr:-0}
  if [ -z "$rps" ] || [ -z "$reqs" ] || [ "$reqs" = 0 ]; then
    echo "  wrk completed no requests against $t (exit $wrc):" >&2; sed 's/^/    /' "$f" >&2
    rps=0; reqs=0; p50=-; p99=-
  fi
  if [ "$t" = direct ] || [ "$reqs" = 0 ]; then cpu=-; else
    cpu=$(awk -v a="$t0" -v z="$t1" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.1f", (z - a) / hz * 1e6 / n }')
  fi
  done_runs=$((done_runs + 1))
  local el=$((SECONDS - started))
  printf '[%3d/%d %s] %-3s w%s c%-4s %-7s %-9s %8s req/s  p50 %6s  p99 %7s ms  %6s us/req  %6s MB%s\n' \
    "$done_runs" "$runs" "$(fmt_t $el)" "$tls" "$w" "$c" "$b" "$t" "$rps" "$p50" "$p99" "$cpu" "$rss" \
    "$([ "$non2xx$sockerr" = 00 ] || echo "  non-2xx $non2xx, socket errors $sockerr")"
  local row="$tls	$w	$c	$b	$t	$r	$rps	$p50	$p99	$cpu	$rss	$non2xx	$sockerr	$reqs"
  if [ "$t" = direct ]; then
    echo "$row	-" >> "$raw"
  else
    # The idle RSS is read IDLE s later in the background, while the next target runs.
    # shellcheck disable=SC2086
    ( sleep "$IDLE"; echo "$row	$(rss_mb $pl)" >> "$raw" ) &
    samplers+=($!)
  fi
}

for tls in $TLS; do
  for w in $WORKERS; do
    cells=()
    for c in $CONNS; do for b in $BODIES; do skipped "$tls/$w/$c/$b" || cells+=("$c/$b"); done; done
    [ ${#cells[@]} -gt 0 ] || continue
    [ "$RESTART" = group ] && start_group "$tls" "$w"
    for r in $(seq "$ROUNDS"); do
      for cell in "${cells[@]}"; do
        c=${cell%/*}; b=${cell#*/}
        [ "$RESTART" = cell ] && start_group "$tls" "$w"
        if [ $with_direct = 1 ] && [ "$tls" = off ] && [ "$w" = "$first_w" ]; then
          run direct "$UP1" "$tls" "$w" "$c" "$b" "$r"
        fi
        # Rounds rotate the proxies' order, so that none always runs first or last.
        n=${#proxies[@]}
        for i in $(seq 0 $((n - 1))); do
          t=${proxies[$(((i + r - 1) % n))]}
          run "$t" "${port[$t]}" "$tls" "$w" "$c" "$b" "$r"
        done
        [ "$RESTART" = cell ] && stop_group
      done
    done
    [ "$RESTART" = group ] && stop_group
  done
done
[ -n "$OUT" ] && { printf 'tls\tworkers\tconns\tbody\ttarget\tround\trps\tp50_ms\tp99_ms\tcpu_us_per_req\trss_mb\tnon2xx\tsocket_errors\trequests\tidle_rss_mb\n'; cat "$raw"; } > "$OUT"

# Medians over rounds, per cell and target.
order="direct ${proxies[*]}"
awk -F'\t' -v OFS='\t' -v order="$order" -v tlsl="$TLS" -v wl="$WORKERS" -v cl="$CONNS" -v bl="$BODIES" '
function med(key, col,   n, i, j, v, a, x) {
  n = cnt[key]; m = 0
  for (i = 1; i <= n; i++) { x = val[key, i, col]; if (x != "-") { m++; a[m] = x + 0 } }
  if (m == 0) return "-"
  for (i = 2; i <= m; i++) { v = a[i]; for (j = i - 1; j >= 1 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
  return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
}
{ key = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4 SUBSEP $5; n = ++cnt[key]; for (i = 7; i <= 15; i++) val[key, n, i] = $i }
END {
  nt = split(order, T, " "); split(tlsl, L, " "); split(wl, W, " "); split(cl, C, " "); split(bl, B, " ")
  for (a in L) for (b in W) for (c in C) for (d in B) for (e = 1; e <= nt; e++) {
    key = L[a] SUBSEP W[b] SUBSEP C[c] SUBSEP B[d] SUBSEP T[e]
    if (!(key in cnt)) continue
    print L[a], W[b], C[c], B[d], T[e], med(key, 7), med(key, 8), med(key, 9), med(key, 10), med(key, 11), med(key, 15), med(key, 12), med(key, 13), cnt[key] }
}' "$raw" > "$work/med.tsv"

# Sorted in the matrix order (TLS, workers, connections, body as given, targets as run).
idx() { local i=0 x; for x in $2; do [ "$x" = "$1" ] && { echo $i; return; }; i=$((i + 1)); done; echo 99; }
while IFS=$'\t' read -r l w c b t rest; do
  printf '%02d%02d%02d%02d%02d\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(idx "$l" "$TLS")" "$(idx "$w" "$WORKERS")" "$(idx "$c" "$CONNS")" "$(idx "$b" "$BODIES")" "$(idx "$t" "$order")" "$l" "$w" "$c" "$b" "$t" "$rest"
done < "$work/med.tsv" | sort | cut -f2- > "$work/sorted.tsv"

echo
echo "results$([ "$ROUNDS" -gt 1 ] && echo ", medians of $ROUNDS rounds") (latency in ms, proxy CPU in us per request, RSS in MB: at the end of the load / ${IDLE} s later)"
awk -F'\t' '
function n(x, fmt) { return x == "-" ? "-" : sprintf(fmt, x) }
{ cell = $1 " " $2 " " $3 " " $4
  if (cell != last) {
    printf "\nTLS %s, %s worker%s, %s connections, %s\n", $1, $2, ($2 == 1 ? "" : "s"), $3, $4
    printf "  %-9s %9s %7s %8s %7s %7s %7s %7s %7s\n", "target", "req/s", "p50", "p99", "us/req", "rss", "idle", "non2xx", "sockerr"
    last = cell }
  printf "  %-9s %9s %7s %8s %7s %7s %7s %7s %7s\n", $5, n($6, "%.0f"), n($7, "%.2f"), n($8, "%.2f"), n($9, "%.1f"), n($10, "%.1f"), n($11, "%.1f"), n($12, "%.0f"), n($13, "%.0f") }' "$work/sorted.tsv"

# ramp's ratios against each peer: throughput (higher is better), p99 and CPU per request
# (lower is better). The last line is the geometric mean over the cells.
peers=()
for t in nginx haproxy ramp-base; do [[ " ${proxies[*]} " == *" $t "* ]] && peers+=("$t"); done
if [[ " ${proxies[*]} " == *" ramp "* ]] && [ ${#peers[@]} -gt 0 ]; then
  echo
  echo "ramp / peer (req/s: > 1 is ramp faster; p99, CPU per request: < 1 is ramp better)"
  awk -F'\t' -v peers="${peers[*]}" '
  function r(a, b) { return (a == "-" || b == "-" || b + 0 == 0 || a + 0 == 0) ? "" : a / b }
  function f(x) { return x == "" ? "-" : sprintf("%.2f", x) }
  { cell = $1 " w" $2 " c" $3 " " $4
    if (!(cell in seen)) { seen[cell] = 1; cells[++nc] = cell }
    rps[cell, $5] = $6; p99[cell, $5] = $8; cpu[cell, $5] = $9 }
  END {
    np = split(peers, P, " ")
    printf "%-20s", ""; for (i = 1; i <= np; i++) printf "  %-17s", "ramp/" P[i]; printf "\n"
    printf "%-20s", "tls wN cN body"; for (i = 1; i <= np; i++) printf "  %5s %5s %5s", "req/s", "p99", "cpu"; printf "\n"
    for (k = 1; k <= nc; k++) {
      c = cells[k]; printf "%-20s", c
      for (i = 1; i <= np; i++) {
        split("", x)
        x[1] = r(rps[c, "ramp"], rps[c, P[i]]); x[2] = r(p99[c, "ramp"], p99[c, P[i]]); x[3] = r(cpu[c, "ramp"], cpu[c, P[i]])
        printf "  %5s %5s %5s", f(x[1]), f(x[2]), f(x[3])
        for (j = 1; j <= 3; j++) if (x[j] != "") { lg[i, j] += log(x[j]); ng[i, j]++ }
      }
      printf "\n"
    }
    printf "%-20s", "geometric mean"
    for (i = 1; i <= np; i++) for (j = 1; j <= 3; j++) printf (j == 1 ? "  %5s" : " %5s"), (ng[i, j] ? sprintf("%.2f", exp(lg[i, j] / ng[i, j])) : "-")
    printf "\n" }' "$work/sorted.tsv"
fi

# Anything that went wrong: failed requests, and warnings or errors in the proxies' logs.
echo
bad=$(awk -F'\t' '$12 != 0 || $13 != 0 || $14 == 0 {
  printf "  %s w%s c%s %s %s round %s: %s requests, non-2xx %s, socket errors %s\n", $1, $2, $3, $4, $5, $6, $14, $12, $13 }' "$raw" | sort)
if [ -n "$bad" ]; then echo "runs with failed requests:"; echo "$bad"; else echo "no non-2xx responses, no socket errors"; fi
cp "$work/up/error.log" "$work/log-upstream" 2>/dev/null || true
logpat='error|warn|warning|panic|panicked|alert|emerg|crit|fatal'
for t in upstream "${proxies[@]}"; do
  f="$work/log-$t"
  [ -s "$f" ] || continue
  n=$(grep -ciwE "$logpat" "$f" || true)
  [ "$n" -gt 0 ] || continue
  echo "$t's log: $n warning/error lines, the most frequent (timestamps and pids stripped):"
  grep -iwE "$logpat" "$f" | sed -E 's/^[0-9TZ:.\/ -]+//; s/\[[0-9]+\]//g; s/\(([0-9]+)\)//g; s/#[0-9]+//g' |
    sort | uniq -c | sort -rn | head -5 | cut -c1-150 | sed 's/^/  /'
done
echo "total $(fmt_t $((SECONDS - started))) (estimated $(fmt_t "$est"))"
