#!/usr/bin/env bash
# Runs the decoders' fuzz targets (src/fuzzing.rs, one binary each in fuzz/) under libFuzzer.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   every target (or those named), 60 s each
#   scripts/fuzz.sh seed                               only (re)write the seed corpora
#
# Corpora live in fuzz/corpus/NAME, seeded from bluepoll::fuzzing::seeds; crashes are saved in
# fuzz/artifacts/NAME and replayed with `cargo fuzz run NAME FILE` (same environment as below).
# The script stops at the first target that crashes.
#
# cargo-fuzz passes rustc flags that are nightly-only; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take them. Its sanitizer flags change every unit's fingerprint, RocksDB's build
# included, so the fuzz build has a target directory of its own (FUZZ_TARGET_DIR): the first
# build takes about 20 minutes on 2 cores, later ones only relink.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$BLUEPOLL_ROOT"

# The seeds are made by the encoders, so a test binary (in the shared test target directory,
# not the sanitizer one) writes them.
write_seeds() {
    BLUEPOLL_FUZZ_CORPUS="$BLUEPOLL_ROOT/fuzz/corpus" \
        cargo test --locked --quiet --test decoder_fuzz -- --ignored --exact write_seed_corpus \
        >/dev/null
    echo "seed corpora written to fuzz/corpus/" >&2
}

ensure_rust
if [ "${1:-}" = seed ]; then
    write_seeds
    exit 0
fi

seconds=60
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(basename -s .rs fuzz/fuzz_targets/*.rs)
fi
for target in "${targets[@]}"; do
    if [ ! -f "fuzz/fuzz_targets/$target.rs" ]; then
        echo "no fuzz target '$target' (see fuzz/fuzz_targets/)" >&2
        exit 1
    fi
done

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
write_seeds

export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/bluepoll/fuzz-target}"
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    echo "== fuzz $target for ${seconds} s" >&2
    # -timeout: an input that takes seconds is a hang (libFuzzer's default allows 20 minutes).
    # -max_len: libFuzzer's default, the largest seed, keeps text inputs to a few hundred bytes,
    # too short for a parser's blowups.
    cargo fuzz run "$target" -- -max_total_time="$seconds" -timeout=10 -max_len=16384
done
