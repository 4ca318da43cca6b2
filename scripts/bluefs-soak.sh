#!/usr/bin/env bash
# BlueFS crash-consistency soak: the normal suite's power-cut test (520 runs) with many more
# seeds, in release mode. Usage: scripts/bluefs-soak.sh [SEEDS (default 20000)] [FIRST_SEED]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_rust
cd "$BLUEPOLL_ROOT"
export BLUEPOLL_SOAK_SEEDS="${1:-20000}" BLUEPOLL_SOAK_FIRST_SEED="${2:-0}"
cargo test --release --locked --lib power_cuts_at_flush_points -- --nocapture
