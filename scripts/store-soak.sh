#!/usr/bin/env bash
# Object-store crash-consistency soak: the normal suite's power-cut test (320 runs) with many
# more seeds, in release mode. Usage: scripts/store-soak.sh [RUNS (default 10000)] [FIRST_SEED]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_rust
cd "$BLUEPOLL_ROOT"
export BLUEPOLL_STORE_CRASH_RUNS="${1:-10000}" BLUEPOLL_STORE_CRASH_FIRST_SEED="${2:-0}"
cargo test --release --locked --test store_crash -- --nocapture
