#!/usr/bin/env bash
# Runs bluepoll's main job: `bluepoll bench` with the default job (bench/jobs/quick.fio: 4 KiB
# random reads, QD32, 10 s) on a RAM namespace (mem:256M), printing a fio-like summary.
# Extra arguments go to `bluepoll bench` (e.g. --output-format=json, --plot=run.svg).
# It builds bluepoll without the `store` feature: the bench on devices needs no RocksDB, so a
# fresh machine compiles only the device, reactor, BlueFS and bench crates (a few minutes).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bin="$(build_release lean)"
exec "$bin" bench "$@"
