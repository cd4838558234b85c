#!/usr/bin/env bash
# Throughput of the GraphQL example with tollgate's layers on and off, on
# loopback, with wrk (apt-get install wrk). Bounded: ROUNDS (default 3) pairs
# of runs of DURATION seconds (default 10) at 32 connections, alternating
# off/on; the medians are reported, since a 2-core machine shared by wrk and
# the server varies by several percent from run to run.
#
#   scripts/throughput.sh [DURATION] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
rounds="${2:-3}"
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

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

: > "$work/off"; : > "$work/on"
for round in $(seq "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then
    run off 4101 >> "$work/off"; run on 4102 >> "$work/on"
  else
    run on 4102 >> "$work/on"; run off 4101 >> "$work/off"
  fi
done
off=$(median < "$work/off")
on=$(median < "$work/on")
echo "layers off: $off req/s (median of: $(tr '\n' ' ' < "$work/off"))"
echo "layers on:  $on req/s (median of: $(tr '\n' ' ' < "$work/on"))"
awk -v on="$on" -v off="$off" 'BEGIN { printf "kept: %.1f %% of bare throughput\n", 100 * on / off }'
grep -h "50%\|99%" "$work"/wrk-*.txt | sed 's/^/  last runs, latency /' || true
