#!/usr/bin/env bash
# Runs the userspace NVMe PCIe driver (VFIO) against QEMU's emulated NVMe controller behind an
# emulated Intel IOMMU, in a throwaway Debian-kernel guest under software emulation (TCG).
#
#   scripts/qemu-nvme-test.sh [--mode MODE] [--keep] [--guest-script FILE]
#
#   --mode MODE          passed to the guest tests as GUEST_MODE (default: normal)
#   --keep               keep the work dir (image, initramfs, logs) and print its path
#   --guest-script FILE  run FILE in the guest instead of scripts/qemu-guest/nvme-tests.sh
#
# Environment: BLUEPOLL_BIN (use this binary instead of building the debug one),
# QEMU_NVME_TIMEOUT (hard cap on the QEMU run in seconds, default 600), QEMU_NVME_KEEP_DEBUG=1
# (keep the binary's debug info in the guest; by default it is stripped to keep the initramfs small).
#
# Steps: Debian packages (qemu-system-x86, busybox-static, cpio); the guest kernel (Debian's
# linux-image package, downloaded and unpacked once, never installed, cached under
# ~/.cache/bluepoll/guest-kernel/KVER/ as an ELF vmlinux plus the needed modules); a 64 MiB raw
# image prepared by `bluepoll selftest prepare-image`; an initramfs with busybox, the modules,
# bluepoll and its shared libraries, scripts/qemu-guest/init and the guest test script; the boot;
# then `bluepoll selftest check-image` on the image the guest wrote.
#
# Exit status: 0 pass (`PASS: ...` on stdout), 1 fail (`FAIL: reason` on stdout, log tails on
# stderr), 77 skipped (`skipped: reason`: packages or QEMU not available on this machine).
# PASS needs all of: QEMU exit status 33 (the guest wrote 0x10 to isa-debug-exit), `RESULT: PASS`
# in the serial log, no IOMMU fault in either log (QEMU's NVMe model may complete a command
# whose DMA the IOMMU blocked, so only the logs show it), and a passing check-image.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

NVME_SERIAL=bluepoll-qemu-0001
NVME_BLOCK_SIZE=4096
NVME_MDTS=9 # 2^9 minimum-size (4 KiB) pages: 2 MiB per command, so one PRP list of 512 entries is used whole
IMAGE_SIZE=64M
GUEST_MODULES=(nvme vfio_pci vfio_iommu_type1 uio_pci_generic)
CACHE_FORMAT="guest-kernel cache v1: ${GUEST_MODULES[*]}"
KERNEL_CACHE="$HOME/.cache/bluepoll/guest-kernel"
QEMU_TIMEOUT="${QEMU_NVME_TIMEOUT:-600}"
# IOMMU faults. Guest (Linux 6.1 drivers/iommu/intel/dmar.c, pr_fmt "DMAR: "):
#   "DMAR: DRHD: handling fault status reg %x"
#   "DMAR: [DMA Read NO_PASID] Request device [..] fault addr 0x.. [fault reason 0x..] ..."
#   (also "[DMA Write ...]", "[... PASID 0x..]", "[INTR-REMAP] ... fault index ...")
# QEMU 7.2 (hw/i386/intel_iommu.c, error_report_once, on stderr):
#   "vtd_iommu_translate: detected translation failure (dev=.., iova=0x..)"
#   "vtd_iova_to_slpte: detected slpte permission error (...)", "detected IOVA overflow",
#   "detected read error on DMAR slpte"
IOMMU_FAULT_RE='DMAR:.*fault|DMAR: \[(DMA (Read|Write)|INTR-REMAP)|translation failure|slpte permission error|IOVA overflow|read error on DMAR slpte|vtd.*fail'

mode=normal
keep=0
guest_script="$BLUEPOLL_ROOT/scripts/qemu-guest/nvme-tests.sh"
while [ $# -gt 0 ]; do
    case "$1" in
    --mode) mode="${2:?--mode needs a value}"; shift 2 ;;
    --mode=*) mode="${1#*=}"; shift ;;
    --keep) keep=1; shift ;;
    --guest-script) guest_script="${2:?--guest-script needs a file}"; shift 2 ;;
    --guest-script=*) guest_script="${1#*=}"; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "qemu-nvme-test.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$mode" in
'' | *[!A-Za-z0-9_.,-]*) echo "qemu-nvme-test.sh: bad --mode '$mode'" >&2; exit 2 ;;
esac
[ -f "$guest_script" ] || { echo "qemu-nvme-test.sh: no guest script $guest_script" >&2; exit 2; }

start_ns=$(date +%s%N)
log() { echo "qemu-nvme: $*" >&2; }
skip() { echo "skipped: $*"; exit 77; }
die() { echo "FAIL: $*"; exit 1; }

work=
cache_tmp=
cleanup() {
    [ -n "$cache_tmp" ] && rm -rf "$cache_tmp"
    if [ -n "$work" ]; then
        if [ "$keep" -eq 1 ]; then
            log "work dir kept: $work"
        else
            rm -rf "$work"
        fi
    fi
}
trap cleanup EXIT

# --- host packages and QEMU -------------------------------------------------------------------
ensure_packages qemu-system-x86 busybox-static cpio xz-utils ||
    skip "cannot install qemu-system-x86 busybox-static cpio xz-utils"
for tool in qemu-system-x86_64 busybox cpio gzip xz dpkg apt-get apt-cache flock ldd; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool not found"
done
echo quit | timeout 30 qemu-system-x86_64 -machine none -accel tcg -nodefaults -no-user-config \
    -display none -monitor stdio >/dev/null 2>&1 || skip "qemu-system-x86_64 cannot start (TCG)"
busybox_bin=$(command -v busybox)
ldd "$busybox_bin" >/dev/null 2>&1 && skip "$busybox_bin is not static (busybox-static is needed)"

# --- guest kernel (cached) --------------------------------------------------------------------
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1
}

cache_ok() { [ -f "$1/.complete" ] && [ "$(cat "$1/.complete")" = "$CACHE_FORMAT" ]; }

newest_cached_kernel() {
    local d best=
    for d in "$KERNEL_CACHE"/*/; do
        d=${d%/}
        cache_ok "$d" && best=${d##*/}
    done
    echo "$best"
}

# Copies the modules named in $@ and everything they depend on (depends= and softdep= in their
# .modinfo) from the unpacked package's module tree $src into $dst, decompressed.
collect_modules() {
    local src=$1 dst=$2
    shift 2
    local -A path_of=() done_=()
    local f rel name
    while IFS= read -r -d '' f; do
        rel=${f#"$src/"}
        name=${f##*/}
        name=${name%%.ko*}
        path_of[${name//-/_}]=$rel
    done < <(find "$src/kernel" \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) -print0)
    local -a todo=("$@")
    local out info deps dep
    while [ ${#todo[@]} -gt 0 ]; do
        name=${todo[0]//-/_}
        todo=("${todo[@]:1}")
        [ -n "${done_[$name]:-}" ] && continue
        done_[$name]=1
        rel=${path_of[$name]:-}
        if [ -z "$rel" ]; then
            # Built in, or a softdep for another architecture: nothing to copy.
            continue
        fi
        out="$dst/${rel%.ko*}.ko"
        mkdir -p "$(dirname "$out")"
        case "$rel" in
        *.ko.xz) xz -dc "$src/$rel" >"$out" ;;
        *.ko.zst) zstd -qdc "$src/$rel" >"$out" ;;
        *.ko.gz) gzip -dc "$src/$rel" >"$out" ;;
        *) cp "$src/$rel" "$out" ;;
        esac
        info=$(tr '\0' '\n' <"$out" | sed -n 's/^depends=//p; s/^softdep=//p')
        deps=$(echo "$info" | tr ',' ' ' | sed 's/\(pre\|post\)://g')
        for dep in $deps; do
            todo+=("$dep")
        done
    done
    for name in "$@"; do
        [ -n "${path_of[${name//-/_}]:-}" ] || { echo "module $name not in the kernel package" >&2; return 1; }
    done
}

# Decompresses the xz-compressed kernel inside bzImage $1 into the ELF $2 (QEMU boots an ELF
# vmlinux through its PVH note directly, faster than through the bzImage setup code).
extract_vmlinux() {
    local off
    for off in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$1" | cut -d: -f1); do
        { tail -c "+$((off + 1))" "$1" || true; } | xz -dc --single-stream >"$2" 2>/dev/null || continue
        [ "$(head -c 4 "$2" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] && return 0
    done
    return 1
}

# Fills $KERNEL_CACHE/$kver from the Debian package $pkg. Runs under the exclusive cache lock.
build_kernel_cache() {
    local pkg=$1 kver=$2 final="$KERNEL_CACHE/$2"
    log "fetching kernel $pkg..."
    cache_tmp=$(mktemp -d "$KERNEL_CACHE/.tmp.$kver.XXXXXX")
    (cd "$cache_tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >download.log 2>&1) || {
        cat "$cache_tmp/download.log" >&2
        skip "cannot download $pkg"
    }
    local deb
    deb=$(echo "$cache_tmp"/*.deb)
    dpkg -x "$deb" "$cache_tmp/unpacked"
    local out="$cache_tmp/out" moddir
    mkdir -p "$out/boot" "$out/modroot/lib/modules/$kver"
    dpkg-deb -f "$deb" Package Version >"$out/package"
    cp "$cache_tmp/unpacked/boot/"*"-$kver" "$out/boot/"
    extract_vmlinux "$out/boot/vmlinuz-$kver" "$out/vmlinux" ||
        die "no xz-compressed ELF kernel found in vmlinuz-$kver"
    moddir="$cache_tmp/unpacked/lib/modules/$kver"
    [ -d "$moddir" ] || moddir="$cache_tmp/unpacked/usr/lib/modules/$kver"
    collect_modules "$moddir" "$out/modroot/lib/modules/$kver" "${GUEST_MODULES[@]}" ||
        die "collecting modules from $pkg failed"
    cp "$moddir"/modules.builtin* "$moddir/modules.order" "$out/modroot/lib/modules/$kver/" 2>/dev/null || true
    busybox depmod -b "$out/modroot" "$kver"
    echo "$CACHE_FORMAT" >"$out/.complete"
    if [ -e "$final" ]; then
        mv "$final" "$cache_tmp/old"
    fi
    mv -T "$out" "$final"
    rm -rf "$cache_tmp"
    cache_tmp=
}

mkdir -p "$KERNEL_CACHE"
pkg=$(kernel_package)
if [ -z "$pkg" ] && [ -z "$(newest_cached_kernel)" ]; then
    as_root apt-get update -qq >/dev/null 2>&1 || true
    pkg=$(kernel_package)
fi
if [ -n "$pkg" ]; then
    kver=${pkg#linux-image-}
else
    kver=$(newest_cached_kernel)
    [ -n "$kver" ] || skip "no Debian kernel package (apt-cache depends linux-image-amd64 found none)"
fi
kdir="$KERNEL_CACHE/$kver"
# Readers hold the lock shared for the whole run, so a rebuild (exclusive) never replaces files
# under a running guest; two cold runs build the cache once.
exec {cache_lock}>"$KERNEL_CACHE/.lock"
flock -s "$cache_lock"
if ! cache_ok "$kdir"; then
    flock -x "$cache_lock"
    cache_ok "$kdir" || build_kernel_cache "$pkg" "$kver"
    flock -s "$cache_lock"
fi

# --- bluepoll ---------------------------------------------------------------------------------
if [ -n "${BLUEPOLL_BIN:-}" ]; then
    bin=$(realpath "$BLUEPOLL_BIN")
else
    ensure_rust
    log "building bluepoll (debug)..."
    (cd "$BLUEPOLL_ROOT" && cargo build --locked --quiet --bin bluepoll) >&2 || die "cargo build failed"
    bin="$CARGO_TARGET_DIR/debug/bluepoll"
fi
[ -x "$bin" ] || die "bluepoll binary $bin missing or not executable"

work=$(mktemp -d "${TMPDIR:-/tmp}/qemu-nvme.XXXXXX")

# Runs `bluepoll selftest $1 nvme.img` in the work dir; its output goes to stderr.
selftest_hook() {
    local rc=0
    (cd "$work" && "$bin" selftest "$1" nvme.img) >"$work/hook-$1.log" 2>&1 || rc=$?
    cat "$work/hook-$1.log" >&2
    return "$rc"
}

# --- disk image -------------------------------------------------------------------------------
truncate -s "$IMAGE_SIZE" "$work/nvme.img"
selftest_hook prepare-image || die "bluepoll selftest prepare-image failed"

# --- initramfs --------------------------------------------------------------------------------
log "building initramfs..."
stage="$work/initramfs"
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,root,lib}
ln -s bin "$stage/sbin"
cp "$busybox_bin" "$stage/bin/busybox"
for applet in $("$busybox_bin" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
done
if [ "$(id -u)" -eq 0 ]; then # else /init reopens the console once devtmpfs is mounted
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
fi
cp -a "$kdir/modroot/lib/modules" "$stage/lib/"
# The guest gets the binary without DWARF (symbols stay, so backtraces still name functions):
# debug info is most of a debug build's size and the initramfs lives in guest RAM.
# QEMU_NVME_KEEP_DEBUG=1 keeps it, for file:line in guest backtraces.
if [ "${QEMU_NVME_KEEP_DEBUG:-0}" != 1 ] && command -v strip >/dev/null 2>&1; then
    strip --strip-debug -o "$stage/bin/bluepoll" "$bin"
else
    cp "$bin" "$stage/bin/bluepoll"
fi
ldd_out=$(ldd "$bin" 2>&1) || ldd_out= # a static binary needs nothing more
if grep -q 'not found' <<<"$ldd_out"; then
    die "bluepoll needs a library that is missing: $(grep 'not found' <<<"$ldd_out" | head -n 1)"
fi
for lib in $(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$ldd_out"); do
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
done
install -m 755 "$BLUEPOLL_ROOT/scripts/qemu-guest/init" "$stage/init"
install -m 755 "$guest_script" "$stage/nvme-tests.sh"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) |
    gzip -1 >"$work/initrd.gz"

# --- boot -------------------------------------------------------------------------------------
append="console=ttyS0 panic=-1 quiet intel_iommu=on"
append+=" bluepoll.mode=$mode bluepoll.serial=$NVME_SERIAL bluepoll.block_size=$NVME_BLOCK_SIZE"
# shellcheck disable=SC2054 # the commas are QEMU's option syntax
qemu=(
    qemu-system-x86_64
    -accel tcg,thread=multi -cpu max -machine q35 -m 1G -smp 2
    -nodefaults -no-user-config -display none -no-reboot
    -serial "file:$work/serial.log"
    -kernel "$kdir/vmlinux" -initrd "$work/initrd.gz" -append "$append"
    -device intel-iommu,intremap=on,aw-bits=48
    -drive "file=$work/nvme.img,if=none,id=nv0,format=raw,discard=unmap"
    -device "nvme,serial=$NVME_SERIAL,drive=nv0,mdts=$NVME_MDTS,logical_block_size=$NVME_BLOCK_SIZE,physical_block_size=$NVME_BLOCK_SIZE"
    -device isa-debug-exit,iobase=0xf4,iosize=4
)
printf '%q ' "${qemu[@]}" >"$work/qemu-cmdline"
log "booting (kernel $kver, mode $mode)..."
qemu_rc=0
timeout --kill-after=10 "$QEMU_TIMEOUT" "${qemu[@]}" >"$work/qemu.log" 2>&1 || qemu_rc=$?
touch "$work/serial.log"

# --- verdict ----------------------------------------------------------------------------------
show_logs() {
    {
        echo "---- serial log, last 60 lines ----"
        tail -n 60 "$work/serial.log" | tr -d '\r'
        echo "---- QEMU stderr ----"
        tail -n 60 "$work/qemu.log"
        echo "----"
    } >&2
}
fail_run() {
    show_logs
    die "$*"
}
# The first fault line, preferring the kernel's one that names device, address and reason.
first_match() {
    { grep -aE -m 1 'DMAR: \[' "$1" || grep -aiE -m 1 "$IOMMU_FAULT_RE" "$1"; } | tr -d '\r'
}

line=$(first_match "$work/serial.log") && fail_run "DMAR fault in guest log: $line"
line=$(first_match "$work/qemu.log") && fail_run "IOMMU translation failure on QEMU stderr: $line"
[ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ] && fail_run "QEMU timed out after $QEMU_TIMEOUT s"
if ! grep -aq 'RESULT: PASS' "$work/serial.log"; then
    line=$(grep -a 'RESULT: FAIL' "$work/serial.log" | tail -n 1 | tr -d '\r')
    [ -n "$line" ] && fail_run "guest: $line"
    fail_run "no RESULT line on the serial console (QEMU exited $qemu_rc)"
fi
[ "$qemu_rc" -eq 33 ] || fail_run "guest printed RESULT: PASS but QEMU exited $qemu_rc, not 33"

# The guest's own report (its tests' output), for the record: on stderr, the verdict is on stdout.
{
    echo "---- serial log ----"
    tr -d '\r' <"$work/serial.log"
    echo "----"
} >&2
log "checking image..."
selftest_hook check-image || fail_run "bluepoll selftest check-image failed"

elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
echo "PASS: qemu nvme driver tests ($((elapsed_ms / 1000)).$((elapsed_ms % 1000 / 100)) s)"
