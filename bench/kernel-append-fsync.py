#!/usr/bin/env python3
"""The kernel's 4 KiB append + fdatasync loop timed as one operation (fio times the write and
the fdatasync apart, so its loop p99 is only known within bounds).

usage: kernel-append-fsync.py FILE SECONDS   -> prints "OPS_PER_S P99_NS P50_NS"
The file is created (truncated) and written with O_DIRECT from a page-aligned buffer.
"""
import mmap
import os
import sys
import time


def main() -> None:
    path, seconds = sys.argv[1], float(sys.argv[2])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(4096))
    latencies = []
    offset = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter_ns()
        os.pwrite(fd, buf, offset)
        os.fdatasync(fd)
        latencies.append(time.perf_counter_ns() - start)
        offset += 4096
    os.close(fd)
    latencies.sort()
    n = len(latencies)
    print(f"{n / seconds:.0f} {latencies[min(n - 1, int(n * 0.99))]} {latencies[n // 2]}")


if __name__ == "__main__":
    main()
