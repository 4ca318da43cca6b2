#!/usr/bin/env bash
# Measures issue #2's performance targets in one invocation, each against its peer run right
# next to it on this machine (alternating, ROUNDS times, median ratio reported):
#   1. null: 4 KiB randread QD128, one reactor        vs fio --ioengine=null, same job   (>= 2x)
#      (also fio null at QD1, its fastest setting: fio's null engine is synchronous)
#   2. uring: file on the local disk, 4 KiB randread, direct, QD32
#                                                      vs fio --ioengine=io_uring         (>= 1.0x IOPS, p99 <= 1.1x)
#   3. mem: numjobs=2 on cpus 0,1                      vs numjobs=1                       (>= 1.7x)
# usage: bench/perf-targets.sh [ROUNDS=3] [RUNTIME=5]   (env FILE=path for the uring test file)
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
ensure_packages fio
command -v python3 >/dev/null 2>&1 || ensure_packages python3
rounds="${1:-3}"
runtime="${2:-5}"
file="${FILE:-$HOME/.cache/bluepoll/perf.img}"
bin="$(build_release)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# json_field FILE.json iops|p99 -> the first job's read IOPS, or its read clat p99 in ns
json_field() { python3 - "$@" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
job = doc["jobs"][0]["read"]
print(job["iops"] if sys.argv[2] == "iops" else job["clat_ns"]["percentile"]["99.000000"])
PY
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.2f\n", b / a; else print "-" }'; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

echo "machine: $(nproc) cpus, $(uname -r), $(fio --version), bluepoll $("$bin" version | cut -d' ' -f2)"
echo

job_null=(--name=null-qd128 --rw=randread --bs=4k --iodepth=128 --size=1g --runtime="$runtime" --time_based)
job_null_qd1=(--name=null-qd1 --rw=randread --bs=4k --iodepth=1 --size=1g --runtime="$runtime" --time_based)
echo "1. null 4k randread QD128, one reactor: bluepoll bench ${job_null[*]} --filename=null:1T"
: > "$tmp/r1"; : > "$tmp/r1b"
for r in $(seq "$rounds"); do
    fio --ioengine=null "${job_null[@]}" --output-format=json --output="$tmp/f.json"
    fio --ioengine=null "${job_null_qd1[@]}" --output-format=json --output="$tmp/f1.json"
    "$bin" bench "${job_null[@]}" --filename=null:1T --cpus=0 --output-format=json --output="$tmp/b.json" --eta=never
    f=$(json_field "$tmp/f.json" iops); f1=$(json_field "$tmp/f1.json" iops); b=$(json_field "$tmp/b.json" iops)
    printf "   round %s: fio null QD128 %.0f, fio null QD1 %.0f, bluepoll %.0f IOPS -> %sx / %sx\n" "$r" "$f" "$f1" "$b" "$(ratio "$f" "$b")" "$(ratio "$f1" "$b")"
    ratio "$f" "$b" >> "$tmp/r1"; ratio "$f1" "$b" >> "$tmp/r1b"
done
echo "   median ratio vs fio (same job): $(median < "$tmp/r1")x; vs fio at QD1: $(median < "$tmp/r1b")x   (target >= 2x)"
echo

mkdir -p "$(dirname "$file")"
if [ "$(stat -c %s "$file" 2>/dev/null || echo 0)" -lt $((1 << 30)) ]; then
    fio --name=layout --filename="$file" --rw=write --bs=1m --size=1g --ioengine=psync --direct=1 --output=/dev/null
fi
job_uring=(--name=uring-qd32 --rw=randread --bs=4k --iodepth=32 --size=1g --runtime="$runtime" --time_based)
echo "2. io_uring on $file (1 GiB, $(df --output=source "$file" | tail -1)), 4k randread QD32 direct"
echo "   bluepoll bench ${job_uring[*]} --filename=uring:$file"
: > "$tmp/r2"; : > "$tmp/r2p"
for r in $(seq "$rounds"); do
    fio --ioengine=io_uring --direct=1 --filename="$file" "${job_uring[@]}" --output-format=json --output="$tmp/f.json"
    "$bin" bench "${job_uring[@]}" --filename="uring:$file" --cpus=0 --output-format=json --output="$tmp/b.json" --eta=never
    f=$(json_field "$tmp/f.json" iops); b=$(json_field "$tmp/b.json" iops)
    fp=$(json_field "$tmp/f.json" p99); bp=$(json_field "$tmp/b.json" p99)
    printf "   round %s: fio %.0f IOPS p99 %s ns, bluepoll %.0f IOPS p99 %s ns -> IOPS %sx, p99 %sx\n" "$r" "$f" "$fp" "$b" "$bp" "$(ratio "$f" "$b")" "$(ratio "$fp" "$bp")"
    ratio "$f" "$b" >> "$tmp/r2"; ratio "$fp" "$bp" >> "$tmp/r2p"
done
echo "   median IOPS ratio $(median < "$tmp/r2")x (target >= 1.0), median p99 ratio $(median < "$tmp/r2p")x (target <= 1.1)"
echo

job_mem=(--filename=mem:1G --name=mem --rw=randread --bs=4k --iodepth=32 --size=1g --runtime="$runtime" --time_based --group_reporting)
echo "3. mem: scaling, 4k randread QD32 per job: bluepoll bench ${job_mem[*]} --numjobs=1|2 --cpus=0,1"
: > "$tmp/r3"
for r in $(seq "$rounds"); do
    "$bin" bench "${job_mem[@]}" --numjobs=1 --cpus=0 --output-format=json --output="$tmp/one.json" --eta=never
    "$bin" bench "${job_mem[@]}" --numjobs=2 --cpus=0,1 --output-format=json --output="$tmp/two.json" --eta=never
    one=$(json_field "$tmp/one.json" iops); two=$(json_field "$tmp/two.json" iops)
    printf "   round %s: 1 job %.0f, 2 jobs %.0f IOPS -> %sx\n" "$r" "$one" "$two" "$(ratio "$one" "$two")"
    ratio "$one" "$two" >> "$tmp/r3"
done
echo "   median scaling $(median < "$tmp/r3")x (target >= 1.7)"
