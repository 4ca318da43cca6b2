#!/usr/bin/env bash
# Runs one job through real fio and through bluepoll, in this one invocation, and prints a
# side-by-side table with ratios (IOPS, clat p50, p99, p99.9; ratio = bluepoll / fio).
#
# usage: bench/compare-fio.sh [--engine=null|io_uring] [--file=PATH] [--file-size=SIZE]
#                             [--rounds=N] [--keep=DIR] JOB...
#
#   JOB...          a job file (e.g. bench/jobs/randread-4k-qd32.fio) and/or fio options
#                   (--name=x --rw=randread --bs=4k --iodepth=32 --runtime=10 --time_based),
#                   given unchanged to both tools.
#   --engine=null   fio's null engine vs bluepoll's null: namespace (default).
#   --engine=io_uring
#                   fio --ioengine=io_uring --direct=1 on PATH vs bluepoll's uring:PATH. The file
#                   is laid out with real data first (default ~/.cache/bluepoll/compare.img, 1g).
#   --rounds=N      alternate fio and bluepoll N times (a table per round), to see the noise.
#   --keep=DIR      keep the JSON results in DIR.
#
# Any job file runs, yours included: fio lets a job file's options win over the command line, so
# fio gets a copy of each job file without its ioengine/filename/directory lines (what this script
# sets: a job file written for /dev/nvme0n1 never touches it); bluepoll lets the command line win
# and reads the file as it is. Everything else is read unchanged by both.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
ensure_packages fio

engine=null
file="$HOME/.cache/bluepoll/compare.img"
file_size=1g
rounds=1
keep=""
job=()
for arg in "$@"; do
    case "$arg" in
        --engine=*) engine="${arg#*=}" ;;
        --file=*) file="${arg#*=}" ;;
        --file-size=*) file_size="${arg#*=}" ;;
        --rounds=*) rounds="${arg#*=}" ;;
        --keep=*) keep="${arg#*=}" ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) job+=("$arg") ;;
    esac
done
[ ${#job[@]} -gt 0 ] || { echo "compare-fio.sh: give a job file or fio job options (--help)" >&2; exit 2; }

bin="$(build_release)"
out="${keep:-$(mktemp -d)}"
mkdir -p "$out"

case "$engine" in
    null)
        # fio's null engine needs a size; a job's own size still wins (fio lets it).
        fio_args=(--ioengine=null --size=1T)
        bp_args=(--filename=null:1T)
        labels=("fio null" "bluepoll null:")
        ;;
    io_uring)
        mkdir -p "$(dirname "$file")"
        want=$("$bin" devinfo "mem:$file_size" | awk '/^capacity/ {print $4}' | tr -d '(')
        have=$(stat -c %s "$file" 2>/dev/null || echo 0)
        if [ "$have" -lt "$want" ]; then
            echo "laying out $file ($file_size of data, so reads hit real blocks)" >&2
            fio --name=layout --filename="$file" --rw=write --bs=1m --size="$file_size" \
                --ioengine=psync --direct=1 --output=/dev/null
        fi
        fio_args=(--ioengine=io_uring --direct=1 --filename="$file")
        bp_args=(--filename="uring:$file")
        labels=("fio io_uring" "bluepoll uring:")
        ;;
    *) echo "compare-fio.sh: unknown engine '$engine' (null, io_uring)" >&2; exit 2 ;;
esac

fio_job=()
for j in "${job[@]}"; do
    if [ -f "$j" ]; then
        copy="$out/fio-$(basename "$j")"
        grep -Ev '^[[:space:]]*(ioengine|filename|directory)[[:space:]]*=' "$j" > "$copy"
        fio_job+=("$copy")
    else
        fio_job+=("$j")
    fi
done

echo "job: ${job[*]}"
echo "fio:      fio ${fio_args[*]} ${fio_job[*]}"
echo "bluepoll: bluepoll bench ${job[*]} ${bp_args[*]}"
for round in $(seq 1 "$rounds"); do
    fio "${fio_args[@]}" --output-format=json --output="$out/fio.$round.json" "${fio_job[@]}"
    "$bin" bench "${job[@]}" "${bp_args[@]}" --output-format=json --output="$out/bluepoll.$round.json" --eta=never
    [ "$rounds" -gt 1 ] && echo "-- round $round"
    "$bin" compare "$out/fio.$round.json" "$out/bluepoll.$round.json" --peer-label="${labels[0]}" --label="${labels[1]}"
done
[ -n "$keep" ] && echo "results kept in $out" >&2
[ -n "$keep" ] || rm -rf "$out"
