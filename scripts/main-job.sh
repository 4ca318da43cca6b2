#!/usr/bin/env bash
# Runs bluepoll's main job: `bluepoll bench` with the default job (bench/jobs/quick.fio: 4 KiB
# random reads, QD32, 10 s) on a RAM namespace (mem:256M), printing a fio-like summary.
# Extra arguments go to `bluepoll bench` (e.g. --output-format=json, --plot=run.svg).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bin="$(build_release)"
exec "$bin" bench "$@"
