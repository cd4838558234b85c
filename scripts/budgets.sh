#!/usr/bin/env bash
# Per-request cost budgets (benches/budgets.txt), checked: instruction counts
# under callgrind (gungraun) and heap allocations (dhat). Counts, not times:
# the machine's load does not move them. Prints one table; fails when a path
# exceeds a budget. .ci/run calls it.
#
#   scripts/budgets.sh            # every path
#
# Needs valgrind and gungraun's runner at the version of the gungraun
# dev-dependency: `cargo install --locked gungraun-runner@0.20.0`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/budgets
mkdir -p "$out"
status=0
cargo bench --bench budgets -- --output-format=json > "$out/instructions.json" 2> "$out/instructions.log" || status=$?
cargo bench --bench allocations > "$out/allocations.txt" 2> "$out/allocations.log" || status=$?
python3 scripts/budgets.py "$out" || true
if [ "$status" -ne 0 ]; then
  echo "a per-request budget was exceeded (benches/budgets.txt); logs in $out/" >&2
  grep -E "Regression|exceeded|error" "$out/instructions.log" "$out/allocations.log" >&2 || tail -20 "$out/instructions.log" >&2
fi
exit "$status"
