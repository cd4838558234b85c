#!/usr/bin/env bash
# Every performance figure in docs/performance.md, from one command.
#
#   scripts/figures.sh            # measure, print the tables
#   scripts/figures.sh --write    # ... and replace docs/performance.md's generated
#                                 # sections and docs/figures.svg
#
# What it runs (loopback only, bounded in time — about 9 minutes):
# 1. criterion groups `peers` (tollgate's limiter layer next to
#    tower_governor's), `stack`-level benches of `rate_limit` and
#    `fast_path`, `example` (the example's own stack, Prometheus recorder on)
#    and `multicore`, pinned to one core with taskset where there are two
#    (the 1M-key decision also with malloc on transparent huge pages);
# 2. `proxy_hop`: bare vs embedded layers vs a gateway hop, interleaved per
#    request within one process, medians with bootstrap 95 % intervals;
# 3. scripts/hop.sh: the example bare, with its layers on, and with its layers
#    off behind nginx, in rounds of fresh processes: CPU per request and
#    latency, with what each adds over bare (docs' `hop` section);
# 4. scripts/budgets.sh: instruction and allocation counts per request of
#    each budgeted path (docs' `budgets` section; counts, not times);
# 5. the example's throughput with the layers off and on: the server pinned
#    to one core, the load generator (wrk) to the other, alternating rounds,
#    medians and the range.
# Results go to target/figures/; scripts/figures.py turns them into tables.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/figures
mkdir -p "$out"
write="${1:-}"
rounds="${FIGURES_ROUNDS:-5}"
seconds="${FIGURES_SECONDS:-8}"

cores=$(nproc)
# Server / bench on the last core, load generator on core 0.
if [ "$cores" -ge 2 ] && command -v taskset >/dev/null; then
  pin_server=(taskset -c "$((cores - 1))")
  pin_load=(taskset -c 0)
else
  pin_server=()
  pin_load=()
fi

{
  echo "date: $(date -u +%Y-%m-%d)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "cores: $cores"
  echo "memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "rustc: $(rustc --version)"
  echo "load_before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/machine.txt"

echo "== building" >&2
cargo bench --bench tollgate --no-run >/dev/null 2>&1
cargo build --release --example graphql >/dev/null 2>&1

echo "== criterion groups" >&2
# The 1M-key decision once more with glibc's malloc on transparent huge pages
# (a deployment setting, glibc >= 2.35): fewer TLB misses in the key tables.
# Saved as criterion baseline `thp`, so the plain run below keeps its own.
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "${pin_server[@]}" cargo bench --bench tollgate -- \
  'rate_limit/local_decision/1000000_keys' --save-baseline thp > "$out/criterion-thp.txt" 2>&1
# Single-threaded groups on one core, so the other one absorbs the rest of
# the system. `multicore` needs every core.
"${pin_server[@]}" cargo bench --bench tollgate -- \
  'peers|auth/HS256|rate_limit/local_decision/1000000_keys|rate_limit/stack|fast_path/(bare|HS256/auth_hit$|HS256/auth_miss|HS256/stack_hit)|example' \
  > "$out/criterion.txt" 2>&1
cargo bench --bench tollgate -- multicore > "$out/multicore.txt" 2>&1

echo "== proxy_hop (interleaved)" >&2
cargo bench --bench tollgate -- proxy_hop > "$out/proxy_hop.txt" 2>&1

echo "== hop: bare vs embedded vs nginx (scripts/hop.sh)" >&2
scripts/hop.sh > "$out/hop.log" 2>&1 || {
  cat "$out/hop.log" >&2
  exit 1
}

echo "== cost budgets: instructions and allocations per request (scripts/budgets.sh)" >&2
scripts/budgets.sh > "$out/budgets.log" 2>&1 || {
  cat "$out/budgets.log" >&2
  exit 1
}

echo "== throughput (${rounds} alternating rounds of ${seconds} s)" >&2
if command -v wrk >/dev/null; then
  work=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
  . scripts/example-load.sh
  example_load_script
  run() { # $1 = on|off, $2 = port
    example_start "$1" "$2" "${pin_server[@]}"
    "${pin_load[@]}" wrk -t1 -c16 -d"${seconds}s" -s "$work/post.lua" "http://127.0.0.1:$2/graphql" > "$work/wrk.txt"
    example_stop
    example_wrk_ok "$1" "$work/wrk.txt"
    echo "$1 $(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")"
  }
  : > "$out/throughput.txt"
  for round in $(seq "$rounds"); do
    if [ $((round % 2)) -eq 1 ]; then
      run off 4101 >> "$out/throughput.txt"; run on 4102 >> "$out/throughput.txt"
    else
      run on 4102 >> "$out/throughput.txt"; run off 4101 >> "$out/throughput.txt"
    fi
  done
else
  echo "wrk not found (apt-get install wrk): no throughput figures" >&2
  : > "$out/throughput.txt"
fi
echo "load_after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"

python3 scripts/figures.py "$out" $write
