#!/usr/bin/env bash
# What a gateway hop costs next to tollgate's layers: the example service
# three ways, on loopback only, bounded in requests and time (about 2.5
# minutes after the build with the defaults).
#
#   scripts/hop.sh            # measure, print the report
#   scripts/hop.sh --write    # ... and replace docs/performance.md's `hop`
#                             # section and docs/figures.svg
#
# Variants:
#   bare      target/release/examples/graphql, TOLLGATE_LAYERS=off, no proxy
#   embedded  the same with TOLLGATE_LAYERS=on (tollgate's auth + limits)
#   gateway   the example with TOLLGATE_LAYERS=off behind nginx: proxy_pass
#             to a keep-alive upstream pool, one worker, no access log, and
#             no checks of its own (so the comparison favours the gateway)
#
# Each round runs the three in a rotating order, each with fresh processes:
#   - CPU per request: wrk sends HOP_REQUESTS requests from HOP_CONNECTIONS
#     connections (a Lua script stops it after that many responses; the
#     count and the statuses are checked); the user + system CPU time of the
#     server processes (the example, and for gateway nginx's master and
#     worker) is read from /proc/PID/stat (utime + stime) before and after;
#   - latency: wrk with one connection for HOP_SECONDS: p50 and p99.
# The servers are pinned to the last core, wrk to core 0. scripts/hop.py
# reports medians over rounds, their range, and bootstrap 95 % intervals
# (resampling rounds) of what each variant adds over bare, and of the ratio.
#
# Environment: HOP_ROUNDS (7), HOP_REQUESTS (60000), HOP_CONNECTIONS (16),
# HOP_SECONDS (3).
# Results in target/figures/: hop-runs.txt (one line per round and variant),
# hop-machine.txt, hop.json, hop.txt (the report), hop.md (the docs section).
# Needs wrk and nginx; as root, installs the missing ones from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/figures
mkdir -p "$out"
write="${1:-}"
rounds="${HOP_ROUNDS:-7}"
requests="${HOP_REQUESTS:-60000}"
connections="${HOP_CONNECTIONS:-16}"
seconds="${HOP_SECONDS:-3}"
port_bare=4111 port_embedded=4112 port_service=4113 port_nginx=4114

if [ "$rounds" -lt 2 ] || [ "$requests" -lt 1000 ]; then
  echo "HOP_ROUNDS must be at least 2 and HOP_REQUESTS at least 1000" >&2
  exit 1
fi

# A command, or its Debian package installed (as root) when it is missing.
need() { # $1 = command, $2... = Debian packages to try, in order
  local cmd=$1 pkg
  shift
  command -v "$cmd" >/dev/null && return 0
  [ -x "/usr/sbin/$cmd" ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    for pkg in "$@"; do
      # A stale package list knows no candidate: update once, then retry.
      if ! apt-cache show "$pkg" >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
      fi
      apt-cache show "$pkg" >/dev/null 2>&1 || continue
      echo "== installing $pkg from Debian" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
      break
    done
  fi
  command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || {
    echo "$cmd not found (apt-get install $1)" >&2
    exit 1
  }
}
need wrk wrk
# Debian 12's nginx-light is nginx plus a module; later releases dropped it.
need nginx nginx nginx-light
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

cores=$(nproc)
if [ "$cores" -ge 2 ] && command -v taskset >/dev/null; then
  pin_server=(taskset -c "$((cores - 1))")
  pin_load=(taskset -c 0)
else
  echo "warning: one core or no taskset: servers and load share the CPU" >&2
  pin_server=()
  pin_load=()
fi

echo "== building the example" >&2
cargo build --release --example graphql >/dev/null 2>&1

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "cores: $cores"
  echo "memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "rustc: $(rustc --version)"
  echo "nginx: $("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //')"
  echo "wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
  echo "clk_tck: $(getconf CLK_TCK)"
  echo "pinned: $([ ${#pin_server[@]} -gt 0 ] && echo "servers on core $((cores - 1)), wrk on core 0" || echo no)"
  echo "rounds: $rounds"
  echo "requests: $requests"
  echo "connections: $connections"
  echo "seconds: $seconds"
  echo "load_before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/hop-machine.txt"

work=$(mktemp -d)
chmod 755 "$work" # nginx's worker may run as another user
nginx_pid=
cleanup() {
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null
  kill $(jobs -p) 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
. scripts/example-load.sh
example_load_script

# Counted load: stops after the number of responses given as its argument.
{
  cat "$work/post.lua"
  cat <<'LUA'
local want, seen = 0, 0
function init(args) want = tonumber(args[1]) end
function response(status, headers, body)
  seen = seen + 1
  if seen == want then
    wrk.thread:stop()
    -- wrk's main thread sleeps for -d whatever its threads do; SIGINT (from
    -- a shell whose parent is wrk) ends that sleep, as Ctrl-C would. Not
    -- os.execute: system(3) ignores SIGINT in wrk while the shell runs. Sent
    -- again every 0.1 s until wrk is gone: one was seen to go unheeded.
    io.popen("(while kill -INT $PPID; do sleep 0.1; done) >/dev/null 2>&1 &"):close()
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("hop: responses %d errors %d\n", summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout))
end
LUA
} > "$work/count.lua"
# Latency: percentiles in µs from wrk's own histogram.
{
  cat "$work/post.lua"
  cat <<'LUA'
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("hop: responses %d errors %d p50 %d p99 %d\n", summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
LUA
} > "$work/latency.lua"

# utime + stime, in clock ticks, of the processes given, summed.
cpu_ticks() {
  local total=0 pid f
  for pid in "$@"; do
    # Past the command name, which ends in ") ": utime and stime are the
    # 12th and 13th fields (14 and 15 of proc(5)).
    read -r -a f < <(sed 's/^.*) //' "/proc/$pid/stat")
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

nginx_start() { # $1 = upstream port, $2 = listening port
  local dir="$work/nginx" user=""
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && user="user $(id -un) $(id -gn);"
  cat > "$dir/nginx.conf" <<CONF
$user
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  # nginx closes a keep-alive connection after 1,000 requests by default;
  # the example never does, so neither does nginx here.
  keepalive_requests 1000000;
  upstream service {
    server 127.0.0.1:$1;
    keepalive 16;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://service;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
  "${pin_server[@]}" "$nginx_bin" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
    -g 'daemon off;' > "$dir/stdout.log" 2>&1 &
  nginx_pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$2/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "nginx did not answer on port $2:" >&2
  cat "$dir/error.log" "$dir/stdout.log" >&2
  exit 1
}

nginx_stop() {
  kill "$nginx_pid" 2>/dev/null || true # TERM: the master stops its worker
  wait "$nginx_pid" 2>/dev/null || true
  nginx_pid=
}

# The value after `name` in wrk's "hop: ..." line.
hop_field() { # $1 = file, $2 = name
  awk -v name="$2" '/^hop:/ { for (i = 2; i < NF; i++) if ($i == name) print $(i + 1) }' "$1"
}

wrk_checked() { # $1 = label, $2 = output file; then wrk's arguments
  local label=$1 file=$2
  shift 2
  "${pin_load[@]}" wrk "$@" > "$file" 2>&1 || {
    echo "wrk failed ($label):" >&2
    cat "$file" >&2
    exit 1
  }
  example_wrk_ok "$label" "$file"
  if [ -n "$(hop_field "$file" errors)" ] && [ "$(hop_field "$file" errors)" -ne 0 ]; then
    echo "wrk saw errors ($label):" >&2
    cat "$file" >&2
    exit 1
  fi
}

measure() { # $1 = round, $2 = variant
  local round=$1 variant=$2 url service_pids proxy_pids=() s0 s1 p0=0 p1=0 t0 t1 seen
  case $variant in
    bare)
      example_start off "$port_bare" "${pin_server[@]}"
      url="http://127.0.0.1:$port_bare/graphql"
      ;;
    embedded)
      example_start on "$port_embedded" "${pin_server[@]}"
      url="http://127.0.0.1:$port_embedded/graphql"
      ;;
    gateway)
      example_start off "$port_service" "${pin_server[@]}"
      nginx_start "$port_service" "$port_nginx"
      url="http://127.0.0.1:$port_nginx/graphql"
      proxy_pids=("$nginx_pid" $(pgrep -P "$nginx_pid"))
      ;;
  esac
  service_pids=("$example_pid")

  # Warm up (connections, nginx's upstream pool, the verified-token cache).
  wrk_checked "$variant warm-up" "$work/warm.txt" \
    -t1 -c"$connections" -d1s -s "$work/post.lua" "$url"
  sleep 0.2

  s0=$(cpu_ticks "${service_pids[@]}")
  [ ${#proxy_pids[@]} -gt 0 ] && p0=$(cpu_ticks "${proxy_pids[@]}")
  t0=$(date +%s%N)
  wrk_checked "$variant counted" "$work/count.txt" \
    -t1 -c"$connections" -d60s -s "$work/count.lua" "$url" -- "$requests"
  t1=$(date +%s%N)
  # Requests still in flight when wrk stopped (fewer than the connections)
  # finish in this pause, so their CPU time is not read in the next variant.
  sleep 0.3
  s1=$(cpu_ticks "${service_pids[@]}")
  [ ${#proxy_pids[@]} -gt 0 ] && p1=$(cpu_ticks "${proxy_pids[@]}")
  seen=$(hop_field "$work/count.txt" responses)
  if [ -z "$seen" ] || [ "$seen" -lt "$requests" ]; then
    echo "wrk stopped after ${seen:-?} of $requests responses ($variant):" >&2
    cat "$work/count.txt" >&2
    exit 1
  fi

  wrk_checked "$variant latency" "$work/latency.txt" \
    -t1 -c1 -d"${seconds}s" --latency -s "$work/latency.lua" "$url"

  [ "$variant" = gateway ] && nginx_stop
  example_stop

  # round variant responses service_ticks proxy_ticks wall_ns p50_us p99_us latency_responses
  echo "$round $variant $seen $((s1 - s0)) $((p1 - p0)) $((t1 - t0))" \
    "$(hop_field "$work/latency.txt" p50) $(hop_field "$work/latency.txt" p99)" \
    "$(hop_field "$work/latency.txt" responses)" >> "$out/hop-runs.txt"
}

echo "== hop: $rounds rounds of bare, embedded, gateway (rotating order)," \
  "$requests requests each for CPU, ${seconds} s at one connection for latency" >&2
echo "# round variant responses service_ticks proxy_ticks wall_ns p50_us p99_us latency_responses" \
  > "$out/hop-runs.txt"
variants=(bare embedded gateway)
for round in $(seq "$rounds"); do
  for i in 0 1 2; do
    variant=${variants[$(((round - 1 + i) % 3))]}
    measure "$round" "$variant"
  done
  echo "   round $round of $rounds done" >&2
done
echo "load_after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/hop-machine.txt"

python3 scripts/hop.py "$out" $write
