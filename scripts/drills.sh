#!/usr/bin/env bash
# The reliability drills on the assembled engine, each printing one summary line
# (`NAME: N runs, N faults, N lost, N corrupt`); exit status 1 when any drill loses or
# corrupts anything. docs/reliability.md says what each drill proves.
#   scripts/drills.sh                 bounded counts, as scripts/test-all.sh runs them
#   scripts/drills.sh --long SECONDS  each drill for SECONDS instead (release build)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_rust
cd "$BLUEPOLL_ROOT"
if [ "${1:-}" = "--long" ]; then
    seconds="${2:?--long needs SECONDS}"
    cargo build --release --locked --bin bluepoll
    bin="$CARGO_TARGET_DIR/release/bluepoll"
    bounds=(--long="$seconds")
else
    # The binary `cargo test` builds for the integration tests: `cargo build --bin` resolves
    # features without the dev-dependencies, which would build RocksDB a second time.
    cargo test --locked --no-run --quiet
    bin="$CARGO_TARGET_DIR/debug/bluepoll"
    bounds=()
fi
work="$(mktemp -d "${TMPDIR:-/var/tmp}/bluepoll-drills.XXXXXX")"
trap 'rm -rf "$work"' EXIT
status=0
"$bin" drill kill9 --dir="$work/kill9" ${bounds[@]+"${bounds[@]}"} --runs="${BLUEPOLL_KILL9_RUNS:-50}" || status=1
"$bin" drill power-cut --dir="$work/power-cut" ${bounds[@]+"${bounds[@]}"} --runs=100 || status=1
"$bin" drill eio --dir="$work/eio" ${bounds[@]+"${bounds[@]}"} --runs=100 || status=1
"$bin" drill enospc ${bounds[@]+"${bounds[@]}"} --runs=20 || status=1
"$bin" drill corruption --dir="$work/corruption" ${bounds[@]+"${bounds[@]}"} --runs=50 || status=1
exit "$status"
