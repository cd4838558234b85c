#!/usr/bin/env bash
# Throughput of the GraphQL example with tollgate's layers on and off, on
# loopback, with wrk (apt-get install wrk). Bounded: two runs of DURATION
# seconds each (default 10) at 32 connections.
#
#   scripts/throughput.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }

cargo build --release --example graphql 2>/dev/null
bin=target/release/examples/graphql
secret="throughput-secret-of-at-least-32-bytes!"
token=$(TOLLGATE_SECRET="$secret" "$bin" mint load-user)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"query":"{ anonymousFeed(first: 1) { title } }"}'
wrk.headers["content-type"] = "application/json"
wrk.headers["cookie"] = "theme=dark; da3=$token"
LUA

run() { # $1 = on|off, $2 = port
  TOLLGATE_LAYERS="$1" TOLLGATE_ADDR="127.0.0.1:$2" TOLLGATE_SECRET="$secret" \
    TOLLGATE_USER_PER_MIN=4000000000 TOLLGATE_USER_BURST=4000000000 \
    "$bin" > "$work/server-$1.log" &
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$2/healthz" >/dev/null && break; sleep 0.1; done
  wrk -t2 -c32 -d"${duration}s" --latency -s "$work/post.lua" "http://127.0.0.1:$2/graphql" > "$work/wrk-$1.txt"
  kill %% 2>/dev/null || true
  wait 2>/dev/null || true
  awk '/Requests\/sec/ {print $2}' "$work/wrk-$1.txt"
}

off=$(run off 4101)
on=$(run on 4102)
echo "layers off: $off req/s"
echo "layers on:  $on req/s"
awk -v on="$on" -v off="$off" 'BEGIN { printf "kept: %.1f %% of bare throughput\n", 100 * on / off }'
grep -h "50%\|99%" "$work"/wrk-*.txt | sed 's/^/  latency /' || true
