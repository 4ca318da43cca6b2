#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it. Installs the peer programs the tests drive (fio
# with its example job files and the python module its json+ converter needs,
# qemu-utils; the QEMU guest's packages through scripts/qemu-nvme-test.sh) when they are
# missing, and makes their absence a failure rather than a skip.
# Extra arguments go to `cargo test` (e.g. a test name filter); without any, the reliability
# drills (scripts/drills.sh) run after the tests with their bounded counts.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_rust
ensure_packages fio fio-examples python3-six qemu-utils
export BLUEPOLL_REQUIRE_PEERS="${BLUEPOLL_REQUIRE_PEERS:-1}"
# The userspace NVMe driver's only real test boots QEMU: a machine that cannot run it fails
# the suite loudly instead of passing without it (BLUEPOLL_REQUIRE_QEMU=0 to allow the skip).
export BLUEPOLL_REQUIRE_QEMU="${BLUEPOLL_REQUIRE_QEMU:-1}"
cd "$BLUEPOLL_ROOT"
# Every crate's unit tests, the integration tests, the examples and the doc tests.
cargo test --locked --workspace "$@"
if [ "$#" -eq 0 ]; then
    scripts/drills.sh
fi
