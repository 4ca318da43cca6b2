#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it. Installs the peer programs the tests drive (fio)
# when they are missing, and makes their absence a failure rather than a skip.
# Extra arguments go to `cargo test` (e.g. a test name filter); without any, the reliability
# drills (scripts/drills.sh) run after the tests with their bounded counts.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_rust
ensure_packages fio qemu-utils
export BLUEPOLL_REQUIRE_PEERS="${BLUEPOLL_REQUIRE_PEERS:-1}"
cd "$BLUEPOLL_ROOT"
cargo test --locked "$@"
if [ "$#" -eq 0 ]; then
    scripts/drills.sh
fi
