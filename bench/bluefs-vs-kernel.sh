#!/usr/bin/env bash
# The BlueFS append+fsync target, measured in one invocation:
#   4 KiB append + fsync loop, one thread, uring: file devices on the local disk:
#   ops/s >= 1.0x the same loop on a file of the kernel filesystem on the same disk
#   (O_DIRECT write + fdatasync), p99 <= 1.0x.
#
# usage: bench/bluefs-vs-kernel.sh [--rounds=N] [--runtime=SECONDS] [--dir=DIR] [--size=SIZE]
#                                  [--images=written|fallocate|sparse] [--warmup=SECONDS]
#                                  [--raw] [--taskset=CPUS] [--keep=DIR]
#
#   --rounds=3      rounds; each runs both loops, alternating which goes first
#   --runtime=10    seconds per loop per round
#   --dir=DIR       a directory on the local disk (default ~/.cache/bluepoll/bluefs-vs-kernel;
#                   /tmp may be tmpfs, which is refused)
#   --size=1g       bytes per file: BlueFS starts its file afresh when it is full, fio wraps
#                   around (then writes become overwrites: a warning says so)
#   --images=written  how the BlueFS device images (DB: size+1G, WAL: 256M) are prepared, once,
#                   and kept in DIR for the next invocation:
#                     written   (default) fallocate, then every byte written with zeroes, so they
#                               behave as a block device: a write changes no file metadata
#                     fallocate only fallocate: unwritten extents, so the host filesystem has an
#                               extent conversion to write at the fdatasync of each first write
#                     sparse    holes: the host filesystem allocates on first write
#   --warmup=2      seconds of each loop run (and discarded) before round 1
#   --raw           also run the loop on the raw DB image (ioengine=dev: 4 KiB write, then a
#                   Flush), for reference: what one write and one flush per loop cost here
#   --taskset=CPUS  run both tools under `taskset -c CPUS` (a diagnostic, default: not pinned;
#                   e.g. 0 puts each tool's thread and the kernel's helpers on one CPU)
#   --keep=DIR      keep the JSON results
#   --flush=inline  how the uring: devices flush (their flush= parameter): inline (default: an
#                   fdatasync by the BlueFS thread, which waits for it anyway) or async (an
#                   io_uring fsync run by a kernel worker)
#   --kind=wal      the BlueFS file's kind (bluefs_kind): wal (default: a RocksDB WAL file, on the
#                   WAL device with the log) or db (on the DB device)
#
# (a) bluepoll bench --ioengine=bluefs --filename='db=uring:DIR/db.img|wal=uring:DIR/wal.img'
#     with the job below: the file's data goes to the DB image, BlueFS's log to the WAL image.
# (b) fio --ioengine=psync with the same job on DIR/kernel.dat, deleted before each run (a new
#     file every time, laid out the way fio does for writes: fallocate, no data).
# The job (= bench/jobs/bluefs-append-fsync.fio): --rw=write --bs=4k --direct=1 --fdatasync=1
# --time_based --runtime=N --size=SIZE. For BlueFS fdatasync=N is its fsync (it has one sync).
#
# What is compared, per round, then as medians:
# - ops/s: write IOPS. Both tools count the runtime including the syncs, so at one I/O in flight
#   this is loops per second.
# - p99 of one loop (write + sync). bluepoll's bluefs engine times append+fsync as one write, so
#   its write clat p99 is exactly that. fio times the write and the fdatasync separately (write
#   clat, sync lat) and has no per-loop figure, so the kernel's loop p99 is known only between
#   max(p99 write, p99 sync) and p99 write + p99 sync. The p99 target is reported met only when
#   BlueFS's p99 is within the lower bound, missed only when it exceeds the upper bound, and
#   inconclusive in between.
# - device requests per loop, from the disk's /sys/class/block/*/stat (writes and flushes, both
#   tools' own I/O plus the host filesystem's metadata): where the time goes. Counts cover the
#   whole disk, so nothing else should use it meanwhile.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
ensure_packages fio
command -v python3 >/dev/null 2>&1 || ensure_packages python3

rounds=3
runtime=10
dir="$HOME/.cache/bluepoll/bluefs-vs-kernel"
kind=wal
flush=inline
size=1g
images=written
warmup=2
keep=""
raw=0
pin=()
for arg in "$@"; do
    case "$arg" in
        --rounds=*) rounds="${arg#*=}" ;;
        --runtime=*) runtime="${arg#*=}" ;;
        --dir=*) dir="${arg#*=}" ;;
        --size=*) size="${arg#*=}" ;;
        --images=*) images="${arg#*=}" ;;
        --warmup=*) warmup="${arg#*=}" ;;
        --keep=*) keep="${arg#*=}" ;;
        --raw) raw=1 ;;
        --taskset=*) pin=(taskset -c "${arg#*=}") ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        --kind=*) kind="${arg#*=}" ;;
        --flush=*) flush="${arg#*=}" ;;
        *) echo "bluefs-vs-kernel.sh: unknown argument '$arg' (--help)" >&2; exit 2 ;;
    esac
done
case "$images" in written|fallocate|sparse) ;; *)
    echo "bluefs-vs-kernel.sh: --images must be written, fallocate or sparse" >&2; exit 2 ;;
esac

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ "$(stat -f -c %T "$dir")" = tmpfs ]; then
    echo "bluefs-vs-kernel.sh: $dir is on tmpfs (no O_DIRECT, no disk); give --dir on the local disk" >&2
    exit 2
fi
bin="$(build_release)"
out="${keep:-$(mktemp -d)}"
mkdir -p "$out"
[ -n "$keep" ] || trap 'rm -rf "$out"' EXIT

size_bytes=$("$bin" devinfo "mem:$size" | awk '/^capacity/ {print $4}' | tr -d '(')
db="$dir/db.img"
wal="$dir/wal.img"
kfile="$dir/kernel.dat"
db_bytes=$((size_bytes + (1 << 30)))
wal_bytes=$((256 << 20))

# The images are made once per (mode, sizes) and kept.
marker="$dir/images.ready"
want="$images $db_bytes $wal_bytes"
if [ "$(cat "$marker" 2>/dev/null)" != "$want" ]; then
    rm -f "$marker" "$db" "$wal"
    for pair in "$db:$db_bytes" "$wal:$wal_bytes"; do
        f="${pair%:*}"; n="${pair##*:}"
        case "$images" in
            sparse) truncate -s "$n" "$f" ;;
            fallocate) fallocate -l "$n" "$f" ;;
            written)
                echo "writing $f ($((n >> 20)) MiB of zeroes, once)" >&2
                fallocate -l "$n" "$f"
                dd if=/dev/zero of="$f" bs=1M count=$((n >> 20)) oflag=direct conv=notrunc status=none
                ;;
        esac
    done
    sync
    echo "$want" > "$marker"
fi

# The disk under DIR, for request counts.
source_dev=$(df --output=source "$dir" | tail -1)
disk_stat=""
if [ -b "$source_dev" ]; then
    kname=$(basename "$(readlink -f "$source_dev")")
    [ -r "/sys/class/block/$kname/stat" ] && disk_stat="/sys/class/block/$kname/stat"
fi
# disk_counts -> "WRITES FLUSHES" (flushes "-" on kernels without the column)
disk_counts() {
    if [ -n "$disk_stat" ]; then
        awk '{print $5, (NF >= 17 ? $16 : "-")}' "$disk_stat"
    else
        echo "- -"
    fi
}
per_loop() { # BEFORE AFTER LOOPS FIELD -> requests per loop
    awk -v a="$1" -v b="$2" -v n="$3" -v f="$4" 'BEGIN {
        split(a, x, " "); split(b, y, " ");
        if (x[f] == "-" || y[f] == "-" || n == 0) print "-"; else printf "%.2f", (y[f] - x[f]) / n }'
}

# metrics FILE -> "IOPS WRITES WRITE_P99_NS SYNCS SYNC_P99_NS ERROR IO_BYTES" of the first job
metrics() { python3 - "$1" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
job = json.loads(text[text.find("{"):])["jobs"][0]
w, s = job["write"], job["sync"]
pct = lambda lat: lat.get("percentile", {}).get("99.000000", 0)
print(w["iops"], w["total_ios"], pct(w["clat_ns"]), s["lat_ns"]["N"], pct(s["lat_ns"]), job["error"], w["io_bytes"])
PY
}
median() { sort -g | awk '{v[NR]=$1} END {if (NR == 0) print "-"; else print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "-" }'; }
us() { awk -v n="$1" 'BEGIN { printf "%.0f", n / 1000 }'; }

job=(--name=append-fsync --rw=write --bs=4k --direct=1 --fdatasync=1 --size="$size" --time_based)
filename="db=uring:$db?flush=$flush|wal=uring:$wal?flush=$flush"

# The appended file is a RocksDB WAL file (bluefs_kind=wal: named *.log), the append+fsync
# workload RocksDB has: it lives on the WAL device beside the BlueFS log, so one flush covers the
# data and the log record (--kind=db puts it on the DB device: two devices, two flushes).
run_bluefs() { # JSON SECONDS
    "${pin[@]}" "$bin" bench "${job[@]}" --runtime="$2" --ioengine=bluefs --filename="$filename" \
        --bluefs_kind="$kind" --output-format=json --output="$1" --eta=never
}
run_raw() { # JSON SECONDS
    "${pin[@]}" "$bin" bench "${job[@]}" --runtime="$2" --ioengine=dev --filename="uring:$db" \
        --output-format=json --output="$1" --eta=never
}
run_kernel() { # JSON SECONDS
    rm -f "$kfile"
    "${pin[@]}" fio "${job[@]}" --runtime="$2" --ioengine=psync --filename="$kfile" \
        --output-format=json --output="$1" >/dev/null
    rm -f "$kfile"
}

echo "machine: $(nproc) cpus, $(uname -r), $(fio --version), bluepoll $("$bin" version | cut -d' ' -f2)"
echo "disk: $dir on $source_dev ($(stat -f -c %T "$dir")), BlueFS images: $images${pin[*]:+, under ${pin[*]}}"
echo "(a) bluepoll bench ${job[*]} --runtime=$runtime --ioengine=bluefs --filename='$filename'"
echo "(b) fio ${job[*]} --runtime=$runtime --ioengine=psync --filename=$kfile"
echo "    p99 = one loop (write+sync): bluefs exact; kernel between max(p99 write, p99 sync) and their sum"
echo "(c) bench/kernel-append-fsync.py: the same kernel loop timed whole (exact loop p99), on $kfile.loop"
echo

if [ "$warmup" != 0 ]; then
    run_bluefs "$out/warmup-bluefs.json" "$warmup"
    run_kernel "$out/warmup-kernel.json" "$warmup"
fi

: > "$out/r.ops"; : > "$out/r.lo"; : > "$out/r.hi"
: > "$out/b.ops"; : > "$out/k.ops"; : > "$out/b.p99"; : > "$out/k.lo"; : > "$out/k.hi"
: > "$out/e.ops"; : > "$out/e.p99"
status=0
declare -A before after
for r in $(seq "$rounds"); do
    order=(bluefs kernel)
    [ $((r % 2)) -eq 0 ] && order=(kernel bluefs)
    [ "$raw" = 1 ] && order+=(raw)
    for tool in "${order[@]}"; do
        before[$tool]=$(disk_counts)
        "run_$tool" "$out/$tool.$r.json" "$runtime"
        after[$tool]=$(disk_counts)
    done
    read -r e_iops e_p99 e_p50 < <("${pin[@]}" python3 "$(dirname "$0")/kernel-append-fsync.py" "$kfile.loop" "$runtime")
    rm -f "$kfile.loop"
    read -r b_iops b_ios b_p99 b_syncs b_sync99 b_err _ < <(metrics "$out/bluefs.$r.json")
    read -r k_iops k_ios k_w99 _ k_s99 k_err k_bytes < <(metrics "$out/kernel.$r.json")
    if [ "$b_err" != 0 ] || [ "$k_err" != 0 ]; then
        echo "round $r: a run failed (bluefs error $b_err, fio error $k_err); results in $out" >&2
        status=1
    fi
    k_lo=$(awk -v a="$k_w99" -v b="$k_s99" 'BEGIN { print (a > b ? a : b) }')
    k_hi=$(awk -v a="$k_w99" -v b="$k_s99" 'BEGIN { print a + b }')
    printf "round %s (%s first):\n" "$r" "${order[0]}"
    printf "  bluefs  %8.0f ops/s   loop p99 %6s us (fsync p99 %s us, %s fsyncs)\n" \
        "$b_iops" "$(us "$b_p99")" "$(us "$b_sync99")" "$b_syncs"
    printf "  kernel  %8.0f ops/s   loop p99 %6s..%s us (write p99 %s us, fdatasync p99 %s us)\n" \
        "$k_iops" "$(us "$k_lo")" "$(us "$k_hi")" "$(us "$k_w99")" "$(us "$k_s99")"
    if [ "$raw" = 1 ]; then
        read -r x_iops x_ios x_w99 _ x_s99 _ < <(metrics "$out/raw.$r.json")
        printf "  raw dev %8.0f ops/s   (write p99 %s us, flush p99 %s us; %s writes, %s flushes per loop)\n" \
            "$x_iops" "$(us "$x_w99")" "$(us "$x_s99")" \
            "$(per_loop "${before[raw]}" "${after[raw]}" "$x_ios" 1)" \
            "$(per_loop "${before[raw]}" "${after[raw]}" "$x_ios" 2)"
    fi
    printf "  kernel loop (exact) %8.0f ops/s   loop p99 %6s us (p50 %s us)\n" \
        "$e_iops" "$(us "$e_p99")" "$(us "$e_p50")"
    printf "  bluefs/kernel loop (exact): ops %s, p99 %s\n" "$(div "$b_iops" "$e_iops")" \
        "$(div "$b_p99" "$e_p99")"
    div "$b_iops" "$e_iops" >> "$out/e.ops"
    div "$b_p99" "$e_p99" >> "$out/e.p99"
    printf "  disk requests per loop: bluefs %s writes, %s flushes; kernel %s writes, %s flushes\n" \
        "$(per_loop "${before[bluefs]}" "${after[bluefs]}" "$b_ios" 1)" \
        "$(per_loop "${before[bluefs]}" "${after[bluefs]}" "$b_ios" 2)" \
        "$(per_loop "${before[kernel]}" "${after[kernel]}" "$k_ios" 1)" \
        "$(per_loop "${before[kernel]}" "${after[kernel]}" "$k_ios" 2)"
    printf "  bluefs/kernel: ops %s, p99 %s..%s\n" "$(div "$b_iops" "$k_iops")" \
        "$(div "$b_p99" "$k_hi")" "$(div "$b_p99" "$k_lo")"
    if [ "$k_bytes" -gt "$size_bytes" ]; then
        echo "  warning: fio wrote more than --size=$size and wrapped around: its later writes were overwrites"
    fi
    div "$b_iops" "$k_iops" >> "$out/r.ops"
    div "$b_p99" "$k_hi" >> "$out/r.lo"
    div "$b_p99" "$k_lo" >> "$out/r.hi"
    echo "$b_iops" >> "$out/b.ops"; echo "$k_iops" >> "$out/k.ops"
    echo "$b_p99" >> "$out/b.p99"; echo "$k_lo" >> "$out/k.lo"; echo "$k_hi" >> "$out/k.hi"
done

ops_ratio=$(median < "$out/r.ops")
p99_lo=$(median < "$out/r.lo")
p99_hi=$(median < "$out/r.hi")
echo
echo "medians over $rounds rounds:"
printf "  bluefs  %8.0f ops/s   loop p99 %s us\n" "$(median < "$out/b.ops")" "$(us "$(median < "$out/b.p99")")"
printf "  kernel  %8.0f ops/s   loop p99 %s..%s us\n" "$(median < "$out/k.ops")" \
    "$(us "$(median < "$out/k.lo")")" "$(us "$(median < "$out/k.hi")")"
echo "  ratio bluefs/kernel (median of rounds): ops ${ops_ratio}x, p99 ${p99_lo}x..${p99_hi}x"
verdict_ops=$(awk -v r="$ops_ratio" 'BEGIN { print (r >= 1.0 ? "met" : "NOT met") }')
verdict_p99=$(awk -v lo="$p99_lo" -v hi="$p99_hi" 'BEGIN {
    if (hi <= 1.0) print "met"; else if (lo > 1.0) print "NOT met"; else print "inconclusive (the kernel loop p99 is only known within bounds)" }')
echo "  target ops/s >= 1.0x: $verdict_ops"
echo "  target p99 <= 1.0x:   $verdict_p99"
e_ops=$(median < "$out/e.ops")
e_p99=$(median < "$out/e.p99")
echo "  against the exactly timed kernel loop: ops ${e_ops}x ($(awk -v r="$e_ops" 'BEGIN { print (r >= 1.0 ? "met" : "NOT met") }')), p99 ${e_p99}x ($(awk -v r="$e_p99" 'BEGIN { print (r <= 1.0 ? "met" : "NOT met") }'))"
[ -n "$keep" ] && echo "results kept in $out" >&2
exit "$status"
