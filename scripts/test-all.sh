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
    # The embedding examples run to completion and check what they read back.
    for example in queue_pair store nbd_server; do
        echo "== example $example"
        cargo run --locked --quiet --example "$example"
    done
    # The model check of the RAM namespace's reader lock (crates/nvme/src/read_mostly.rs), in
    # a target directory of its own: `--cfg loom` changes every crate's build.
    echo "== loom model check (read_mostly)"
    RUSTFLAGS="--cfg loom" cargo test --locked --release -p bluepoll-nvme --lib \
        --target-dir "$CARGO_TARGET_DIR/loom" read_mostly::loom_model
    scripts/drills.sh
    # Last, since it replaces the test binary: the build without RocksDB the main job uses runs.
    echo "== bluepoll without the store feature: a short bench, and a store command refused"
    cargo run --locked --quiet --no-default-features -- bench --runtime=1 --eta=never >/dev/null
    if cargo run --locked --quiet --no-default-features -- mkfs --slow=mem:1G 2>/dev/null; then
        echo "a build without the store feature ran mkfs" >&2
        exit 1
    fi
fi
