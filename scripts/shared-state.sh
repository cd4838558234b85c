#!/usr/bin/env bash
# Figures of docs/shared-state.md: over-admission with replica processes and
# recovery after an outage (benches/shared_state.rs), on loopback, with the
# machine and the date. The driver and the replicas run on core 0, Redis on
# core 1 (taskset), so they do not take turns on one core.
# Usage: scripts/shared-state.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)"; exit 1; }
cargo bench --bench shared_state --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/shared_state-* | grep -v '\.d$' | head -1)
echo "# $(date -u +%Y-%m-%d) · $(nproc) cores · $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) · $(redis-server --version | cut -d' ' -f3) · load $(cut -d' ' -f1-3 /proc/loadavg)"
TOLLGATE_BENCH_REDIS_CPU=1 taskset -c 0 "$bin" replicas "$rounds"
TOLLGATE_BENCH_REDIS_CPU=1 taskset -c 0 "$bin" recovery "$rounds"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
