#!/usr/bin/env bash
# Soak and fault run: the GraphQL example under load for SECONDS (default
# 180) on loopback, with 1,000,000 rotating client IPs, mixed valid, expired
# and garbage tokens, and clients disconnecting mid-request. Stops by itself.
#
#   scripts/soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example graphql --example soak 2>/dev/null
exec target/release/examples/soak "${1:-180}"
