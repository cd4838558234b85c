#!/usr/bin/env bash
# Runs fuzz targets for SECONDS each (default 300), one after another, and
# prints executions and findings. Needs cargo-fuzz (cargo install cargo-fuzz);
# on a stable toolchain RUSTC_BOOTSTRAP=1 lets it use the sanitizer flags.
#
#   scripts/fuzz.sh [SECONDS] [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-300}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(cookie_extraction token_bytes signed_claims client_ip stack)
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  log=$(mktemp)
  status=0
  cargo fuzz run -O "$target" "corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1 || status=$?
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  if [ "$status" -eq 0 ]; then
    echo "$target: ${execs:-?} executions in ${seconds}s, no findings"
  else
    echo "$target: FINDING (exit $status), see artifacts/$target"; tail -30 "$log"
  fi
  rm -f "$log"
done
