#!/usr/bin/env bash
# Why the WAL device exists: 4 KiB overwrites of existing objects on a store whose main device
# is a simulated HDD and whose WAL and DB devices are simulated NVMe (`sim:`, a model of seek,
# rotation and transfer time — a simulation, labelled as such in the output), with deferred
# writes on (the overwrite is journaled in the metadata commit on the NVMe WAL and applied to
# the HDD later, in sorted batches) and off (every overwrite is a copy-on-write to the HDD
# before its commit). Both at a rate the HDD sustains either way, so the latency measured is
# the commit path, not a queue. Target: p50 with deferred writes <= 1/5 of p50 without.
#
# usage: bench/store-tiers.sh [--rounds=R] [--runtime=S] [--rate=IOPS] [--iodepth=N]
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
rounds=3 runtime=10 rate=100 iodepth=1
for arg in "$@"; do
    case "$arg" in
        --rounds=*) rounds="${arg#*=}" ;;
        --runtime=*) runtime="${arg#*=}" ;;
        --rate=*) rate="${arg#*=}" ;;
        --iodepth=*) iodepth="${arg#*=}" ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) echo "store-tiers.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
ensure_packages python3
bin="$(build_release)"
devices='slow=sim:hdd+mem:4G|db=sim:nvme+mem:1G|wal=sim:nvme+mem:256M'
common=(--name=tiers --ioengine=store "--filename=$devices" --rw=randwrite --bs=4k
        --iodepth="$iodepth" --rate_iops="$rate" --size=256M --nrfiles=64
        --runtime="$runtime" --time_based --output-format=json)
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for round in $(seq 1 "$rounds"); do
    order=(on off)
    [ $((round % 2)) -eq 0 ] && order=(off on)
    for mode in "${order[@]}"; do
        size=64k
        [ "$mode" = off ] && size=0
        JSON=$("$bin" bench "${common[@]}" --store_deferred_size="$size") \
        python3 -c '
import json, os, sys
w = json.loads(os.environ["JSON"])["jobs"][0]["write"]
p = w["clat_ns"]["percentile"]
print(sys.argv[1], sys.argv[2], w["iops"], p["50.000000"], p["99.000000"])' "$mode" "$round" >> "$results"
        tail -1 "$results"
    done
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
def col(mode, i):
    return [float(r[i]) for r in rows if r[0] == mode]
on50, off50 = statistics.median(col("on", 3)), statistics.median(col("off", 3))
on99, off99 = statistics.median(col("on", 4)), statistics.median(col("off", 4))
print()
print("simulated devices: main = HDD (7200 rpm, 8.5 ms average seek), WAL and DB = NVMe")
print(f"{'deferred':>9} {'IOPS':>8} {'p50 (us)':>10} {'p99 (us)':>10}")
print(f"{'on':>9} {statistics.median(col('on', 2)):>8.0f} {on50/1e3:>10.1f} {on99/1e3:>10.1f}")
print(f"{'off':>9} {statistics.median(col('off', 2)):>8.0f} {off50/1e3:>10.1f} {off99/1e3:>10.1f}")
print(f"p50 on/off = {on50/off50:.3f} (target <= 0.200)")
EOF
