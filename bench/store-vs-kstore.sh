#!/usr/bin/env bash
# The object store against a KStore baseline (object data as RocksDB values, RocksDB's default
# Env on the kernel filesystem) on the same disk, same workload, in one invocation with the
# rounds alternating which goes first: random overwrites of existing objects at QD64, for each
# block size. bluepoll runs on a `uring:` image file in the same directory.
# Targets: >= 2x IOPS for 64 KiB writes, >= 1x for 4 KiB.
#
# usage: bench/store-vs-kstore.sh [--dir=DIR] [--rounds=R] [--runtime=S] [--bs=4k,64k]
#                                 [--size=1G] [--nrfiles=256] [--iodepth=64]
#   --dir defaults to ~/.cache/bluepoll/store-vs-kstore (on the local disk; not tmpfs)
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
dir="$HOME/.cache/bluepoll/store-vs-kstore"
rounds=3 runtime=10 sizes=4k,64k size=1G nrfiles=256 iodepth=64
for arg in "$@"; do
    case "$arg" in
        --dir=*) dir="${arg#*=}" ;;
        --rounds=*) rounds="${arg#*=}" ;;
        --runtime=*) runtime="${arg#*=}" ;;
        --bs=*) sizes="${arg#*=}" ;;
        --size=*) size="${arg#*=}" ;;
        --nrfiles=*) nrfiles="${arg#*=}" ;;
        --iodepth=*) iodepth="${arg#*=}" ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) echo "store-vs-kstore.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
mkdir -p "$dir"
if [ "$(stat -f -c %T "$dir")" = tmpfs ]; then
    echo "store-vs-kstore.sh: $dir is on tmpfs; give --dir on the local disk" >&2
    exit 2
fi
ensure_packages python3
bin="$(build_release)"
echo "machine: $(nproc) cpus, $(uname -r), disk: $(df --output=source "$dir" | tail -1)"
common=(--rw=randwrite --iodepth="$iodepth" --size="$size" --nrfiles="$nrfiles"
        --runtime="$runtime" --time_based --output-format=json)
results="$dir/results.txt"
: > "$results"
IFS=, read -r -a bss <<< "$sizes"
for bs in "${bss[@]}"; do
    for round in $(seq 1 "$rounds"); do
        # Fresh every round: neither side inherits the other's page cache state or a fuller DB.
        rm -rf "$dir"/kstore.* "$dir"/main.img
        order=(store kstore)
        [ $((round % 2)) -eq 0 ] && order=(kstore store)
        for side in "${order[@]}"; do
            if [ "$side" = store ]; then
                json=$("$bin" bench --name=store --ioengine=store --bs="$bs" "${common[@]}" \
                    --filename="uring:$dir/main.img?size=8G")
            else
                json=$("$bin" bench --name=kstore --ioengine=kstore --bs="$bs" "${common[@]}" \
                    --directory="$dir")
            fi
            iops=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["iops"])' <<< "$json")
            p99=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["clat_ns"]["percentile"]["99.000000"])' <<< "$json")
            echo "$bs $round $side $iops $p99" | tee -a "$results"
        done
    done
done
rm -rf "$dir"/kstore.* "$dir"/main.img
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print()
print(f"{'bs':>5} {'bluepoll IOPS':>14} {'KStore IOPS':>12} {'ratio (median)':>15} {'per round':>22} {'p99 ratio':>10}")
for bs in dict.fromkeys(r[0] for r in rows):
    by = lambda side, col: {r[1]: float(r[col]) for r in rows if r[0] == bs and r[2] == side}
    s, k = by("store", 3), by("kstore", 3)
    sp, kp = by("store", 4), by("kstore", 4)
    ratios = [s[r] / k[r] for r in s if r in k and k[r] > 0]
    p99 = [sp[r] / kp[r] for r in sp if r in kp and kp[r] > 0]
    print(f"{bs:>5} {statistics.median(s.values()):>14,.0f} {statistics.median(k.values()):>12,.0f} "
          f"{statistics.median(ratios):>14.2f}x {min(ratios):>9.2f}-{max(ratios):.2f}x "
          f"{statistics.median(p99):>9.3f}x")
EOF
