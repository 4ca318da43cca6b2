#!/bin/sh
# Runs inside the QEMU guest (see scripts/qemu-nvme-test.sh), with the controller bound to
# vfio-pci. Environment: PCI_ADDR, NVME_SERIAL, NVME_BLOCK_SIZE, BLUEPOLL, GUEST_MODE.
# Exit status 0 means every step passed.
set -u
URI="pcie:$PCI_ADDR"
failed=""

step() {
    name="$1"
    shift
    echo "== $name"
    if "$@"; then
        echo "== $name: ok"
    else
        echo "== $name: FAILED (exit $?)"
        failed="$failed [$name]"
    fi
}

# Runs a command that must fail with an error mentioning $1.
expect_error() {
    pattern="$1"
    shift
    if out=$("$@" 2>&1); then
        echo "$out"
        echo "unexpectedly succeeded"
        return 1
    fi
    echo "$out"
    echo "$out" | grep -q "$pattern"
}

if [ "${GUEST_MODE:-normal}" = rogue-dma ]; then
    # Deliberately DMA to an address the IOMMU does not map: the host must report a failure.
    step "rogue DMA" "$BLUEPOLL" selftest rogue-dma "$URI"
    [ -z "$failed" ]
    exit $?
fi

step "devinfo" "$BLUEPOLL" devinfo "$URI"

step "driver checks" "$BLUEPOLL" selftest device "$URI" --destructive --strict \
    --serial="$NVME_SERIAL" --block-size="$NVME_BLOCK_SIZE" --capacity=64M

# Two jobs on two reactors, random mixed I/O, every block verified; well clear of the self-test
# regions the host checks after power-off.
step "bench with verify" "$BLUEPOLL" bench --name=guest --filename="$URI" --ioengine=dev \
    --rw=randrw --bs=4k --iodepth=16 --numjobs=2 --cpus=0,1 --offset=48M --size=8M \
    --verify=crc32c --eta=never

# The conformance suite every backend passes in the tests (round trips, error statuses, queue
# full, doorbell batching, flush, write-zeroes, trim), on the namespace's last 4 MiB; every
# check must run (a skipped one fails the step).
conformance() {
    out=$("$BLUEPOLL" selftest conformance "$URI" --destructive --size=4M 2>&1)
    status=$?
    echo "$out"
    [ "$status" -eq 0 ] && ! echo "$out" | grep -q "skipped:"
}
step "conformance" conformance

# A process killed while it owns the controller, queues full: the next open must reset it.
"$BLUEPOLL" bench --name=victim --filename="$URI" --rw=randwrite --bs=4k --iodepth=32 \
    --offset=48M --size=16M --time_based --runtime=120 --eta=never >/dev/null 2>&1 &
victim=$!
sleep 4
step "refused while another process owns it" expect_error "already open" "$BLUEPOLL" devinfo "$URI"
if kill -0 "$victim" 2>/dev/null; then
    kill -9 "$victim"
    wait "$victim" 2>/dev/null
    echo "== killed a bench holding the controller (pid $victim)"
    step "reopen after kill -9" "$BLUEPOLL" bench --name=after-kill --filename="$URI" \
        --rw=randrw --bs=4k --iodepth=8 --offset=48M --size=2M --verify=crc32c --eta=never
else
    echo "== the victim bench exited before it could be killed"
    failed="$failed [kill -9 victim]"
fi

# Last, as it leaves the controller to the kernel: a device bound to nvme instead of vfio-pci.
sysfs=/sys/bus/pci/devices/$PCI_ADDR
echo "$PCI_ADDR" > "$sysfs/driver/unbind"
echo nvme > "$sysfs/driver_override"
echo "$PCI_ADDR" > /sys/bus/pci/drivers_probe
step "refused when bound to nvme" expect_error "bound to driver 'nvme', not vfio-pci" \
    "$BLUEPOLL" devinfo "$URI"

if [ -n "$failed" ]; then
    echo "failed steps:$failed"
    exit 1
fi
exit 0
