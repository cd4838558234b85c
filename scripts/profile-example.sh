#!/usr/bin/env bash
# Where the example's added cost per request goes: the example server, layers
# off and on, run under callgrind (instruction counts, simulated L1 caches,
# allocation calls) while wrk sends the same GraphQL POST as
# scripts/figures.sh. Prints per-request totals and the difference by crate,
# by function and by allocation site (scripts/profile-example.py).
#
#   scripts/profile-example.sh            # 10 s of load per variant
#   PROFILE_SECONDS=20 scripts/profile-example.sh
#
# Counts, not timings: they do not depend on the machine's load, and two runs
# agree to well under 1 %. Valgrind hides the CPU's SHA extensions, so the
# `sha2` row is the portable code's count (natively SHA-NI does the same work
# in a fraction). Needs valgrind and wrk (apt-get install valgrind wrk);
# loopback only, about 2 minutes after a build.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${PROFILE_SECONDS:-10}"
for tool in valgrind callgrind_control wrk curl; do
  command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install valgrind wrk curl)" >&2; exit 1; }
done
pin_server=() pin_load=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  pin_server=(taskset -c "$(($(nproc) - 1))") pin_load=(taskset -c 0)
fi

echo "== building the example (release)" >&2
cargo build --release --example graphql >/dev/null 2>&1
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
. scripts/example-load.sh
example_load_script

profile() { # $1 = off|on, $2 = port; prints the number of requests profiled
  example_start "$1" "$2" "${pin_server[@]}" valgrind --tool=callgrind --cache-sim=yes \
    --callgrind-out-file="$work/$1.callgrind"
  # Warm up (connections, caches, the verified-token cache), then count only
  # the measured window: zero the counters before, dump them after.
  "${pin_load[@]}" wrk -t1 -c4 -d2s -s "$work/post.lua" "http://127.0.0.1:$2/graphql" >/dev/null
  callgrind_control -z "$example_pid" >/dev/null
  "${pin_load[@]}" wrk -t1 -c4 -d"${seconds}s" -s "$work/post.lua" \
    "http://127.0.0.1:$2/graphql" > "$work/wrk-$1.txt"
  callgrind_control -d "$example_pid" >/dev/null
  example_stop
  example_wrk_ok "$1" "$work/wrk-$1.txt"
  awk '/requests in/ {print $1}' "$work/wrk-$1.txt"
}

echo "== profiling, layers off" >&2
off=$(profile off 4111)
echo "== profiling, layers on" >&2
on=$(profile on 4112)
# callgrind writes the dump requested with -d as <file>.1
echo "date: $(date -u +%Y-%m-%d)  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')  $(valgrind --version)"
python3 scripts/profile-example.py "$work/off.callgrind.1" "$off" "$work/on.callgrind.1" "$on" "${PROFILE_TOP:-15}"
