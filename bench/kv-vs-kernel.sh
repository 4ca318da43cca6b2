#!/usr/bin/env bash
# RocksDB on BlueFS against RocksDB's default Env on the kernel filesystem of the same disk:
# db_bench-style workloads (fillseq, fillrandom, overwrite, readrandom, seekrandom, fillsync),
# same options, one invocation, rounds alternating which goes first (bluepoll kvbench).
# Targets: fillsync >= 1.2x; fillrandom, overwrite, readrandom >= 0.9x.
#
# usage: bench/kv-vs-kernel.sh [--dir=DIR] [--num=N] [--rounds=R] [--value-size=B] [--workloads=...]
#   --dir defaults to ~/.cache/bluepoll/kv-vs-kernel (on the local disk; /tmp may be tmpfs)
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
dir="$HOME/.cache/bluepoll/kv-vs-kernel"
args=()
for arg in "$@"; do
    case "$arg" in
        --dir=*) dir="${arg#*=}" ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) args+=("$arg") ;;
    esac
done
mkdir -p "$dir"
if [ "$(stat -f -c %T "$dir")" = tmpfs ]; then
    echo "kv-vs-kernel.sh: $dir is on tmpfs; give --dir on the local disk" >&2
    exit 2
fi
bin="$(build_release)"
echo "machine: $(nproc) cpus, $(uname -r), disk: $(df --output=source "$dir" | tail -1)"
exec "$bin" kvbench --dir="$dir" "${args[@]}"
