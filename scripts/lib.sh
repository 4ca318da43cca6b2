# Shared by the scripts in this directory; source it, do not run it.
#
# - ensure_packages PKG...: installs Debian packages that are missing (idempotent; apt-get update
#   only when an install needs it; sudo when not root).
# - BLUEPOLL_TARGET: the cargo target directory every script and CI share, under ~/.cache so
#   repeated runs (and the RocksDB build, 15-20 minutes from scratch) are reused.
# - ensure_rust [lean]: the toolchain check, the packages RocksDB's build needs, and ccache in
#   front of the C/C++ compilers (cargo builds RocksDB again for every distinct set of
#   build-script dependencies — `cargo clippy`'s differ from the tests' — and ccache makes those
#   repeats cache hits instead of 15-20 minutes each). `lean`: for a build without the `store`
#   feature, which compiles no C++ (only a C compiler, for mimalloc).
# - build_release [lean]: builds the release `bluepoll` (`lean`: without the `store` feature, so
#   without RocksDB) and prints its path. Both builds write the same path; each caller builds the
#   one it runs right before running it.

BLUEPOLL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bluepoll/target}"
BLUEPOLL_TARGET="$CARGO_TARGET_DIR"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root to run: $*" >&2
        return 1
    fi
}

ensure_packages() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        as_root apt-get update -qq >/dev/null
        as_root apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
        exit 1
    fi
    if [ "${1:-}" = lean ]; then
        ensure_packages gcc
        return 0
    fi
    # RocksDB is built from source (librocksdb-sys): a C++ compiler, and libclang for bindgen.
    ensure_packages g++ libclang-dev ccache
    # cc-rs takes a known wrapper as the first word of CC/CXX. A caller's own CC/CXX win.
    export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/bluepoll/ccache}"
    export CC="${CC:-ccache cc}" CXX="${CXX:-ccache c++}"
}

# Builds the release binary and prints its path.
build_release() {
    local features=()
    if [ "${1:-}" = lean ]; then
        ensure_rust lean
        features=(--no-default-features)
    else
        ensure_rust
    fi
    (cd "$BLUEPOLL_ROOT" && cargo build --release --locked --quiet "${features[@]}" --bin bluepoll) >&2
    echo "$BLUEPOLL_TARGET/release/bluepoll"
}
