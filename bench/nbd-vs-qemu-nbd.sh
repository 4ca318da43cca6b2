#!/usr/bin/env bash
# fio's NBD engine against `bluepoll serve` (an image on a uring: file store) and, in the same
# invocation, against qemu-nbd serving a raw file on the same disk: 4 KiB randread and randwrite,
# QD16, rounds alternating which server goes first. Both exports are written in full first, so
# reads read data (an unwritten bluepoll image would answer from its object map). Target
# (issue 8): IOPS >= 1.0x qemu-nbd.
#
# usage: bench/nbd-vs-qemu-nbd.sh [--dir=DIR] [--size=1G] [--runtime=10] [--rounds=3]
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
ensure_packages fio qemu-utils
dir="$HOME/.cache/bluepoll/nbd-vs-qemu-nbd" size=1G runtime=10 rounds=3
for arg in "$@"; do
    case "$arg" in
        --dir=*) dir="${arg#*=}" ;;
        --size=*) size="${arg#*=}" ;;
        --runtime=*) runtime="${arg#*=}" ;;
        --rounds=*) rounds="${arg#*=}" ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) echo "unknown option $arg" >&2; exit 2 ;;
    esac
done
mkdir -p "$dir"
bin="$(build_release)"
# class=ssd: a virtio disk reports itself rotational, which would give the store an HDD's
# tuning (deferred writes, a throttle sized for ~100 I/Os in flight) on a disk that does
# ~100k random writes a second. Set the class the disk really is, as an operator would.
# IDLE_SPIN_US and PREFER_DEFERRED_SIZE (environment) tune the store for experiments: the
# reactors' busy-poll time before they sleep, and the largest overwrite journaled in the kv.
cat > "$dir/store.toml" <<EOF
[devices]
slow = "uring:$dir/store.img?size=$(( $(numfmt --from=iec "$size") * 2 ))&class=${class:-ssd}"
[store]
idle_spin_us = ${IDLE_SPIN_US:-200}
${PREFER_DEFERRED_SIZE:+prefer_deferred_size = \"$PREFER_DEFERRED_SIZE\"}
EOF
store="--config=$dir/store.toml"
rm -f "$dir/store.img" "$dir/raw.img"
"$bin" mkfs "$store" --force >/dev/null
"$bin" image create bench --size="$size" "$store" >/dev/null
truncate -s "$size" "$dir/raw.img"
"$bin" serve "$store" --listen=127.0.0.1:10811 >/dev/null &
ours=$!
qemu-nbd -f raw -x bench --persistent -b 127.0.0.1 -p 10812 -t --cache=none --aio=native "$dir/raw.img" &
theirs=$!
trap 'kill -INT $ours 2>/dev/null; kill $theirs 2>/dev/null; wait' EXIT
sleep 1
run() { # PORT RW -> IOPS
    fio --name=nbd --ioengine=nbd --uri="nbd://127.0.0.1:$1/bench" --rw="$2" --bs=4k \
        --iodepth=16 --size="$size" --runtime="$runtime" --time_based --output-format=json 2>/dev/null |
        sed -n '/^{/,$p' | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(round(j["read"]["iops"]+j["write"]["iops"]))'
}
for port in 10811 10812; do
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$port/bench" --rw=write --bs=1M \
        --iodepth=4 --size="$size" >/dev/null
done
echo "machine: $(nproc) cpus, $(uname -r), disk: $(df --output=source "$dir" | tail -1)"
for rw in randread randwrite; do
    for r in $(seq 1 "$rounds"); do
        if (( r % 2 )); then a=$(run 10811 $rw); b=$(run 10812 $rw); else b=$(run 10812 $rw); a=$(run 10811 $rw); fi
        echo "$rw round $r: bluepoll $a IOPS, qemu-nbd $b IOPS, ratio $(python3 -c "print(round($a/max($b,1),2))")"
    done
done
