//! VFIO: owning a PCI function from user space (Linux Documentation/driver-api/vfio.rst).
//!
//! All of the driver's system interface lives here: the container, group and device file
//! descriptors and their ioctls, the BAR0 mapping and its volatile register accesses, PCI config
//! space, and IOMMU (type1) DMA mappings. Everything above this module is safe code.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use crate::error::NvmeError;

// ioctl numbers from <linux/vfio.h>: _IO(VFIO_TYPE = ';', VFIO_BASE + n), no size or direction.
const fn vfio_io(n: u64) -> u64 {
    (b';' as u64) << 8 | (100 + n)
}
const VFIO_GET_API_VERSION: u64 = vfio_io(0);
const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
const VFIO_SET_IOMMU: u64 = vfio_io(2);
const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
const VFIO_DEVICE_RESET: u64 = vfio_io(11);
const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);

const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1_IOMMU: libc::c_ulong = 1;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;

/// PCI Command register (PCI Local Bus 3.0 §6.2.2) and the bits the driver sets.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_BUS_MASTER: u16 = 1 << 2;
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// A normalised PCI address, `DDDD:BB:DD.F`.
pub fn parse_pci_address(text: &str) -> Option<String> {
    let (domain, rest) = match text.matches(':').count() {
        2 => text.split_once(':')?,
        1 => ("0000", text),
        _ => return None,
    };
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let domain = u32::from_str_radix(domain, 16)
        .ok()
        .filter(|&d| d <= 0xffff)?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let dev = u8::from_str_radix(dev, 16).ok().filter(|&d| d < 32)?;
    let func = u8::from_str_radix(func, 16).ok().filter(|&f| f < 8)?;
    Some(format!("{domain:04x}:{bus:02x}:{dev:02x}.{func:x}"))
}

fn vfio_error(addr: &str, reason: impl Into<String>) -> NvmeError {
    NvmeError::Vfio {
        device: addr.to_string(),
        reason: reason.into(),
    }
}

fn os_error(addr: &str, what: &str, err: io::Error) -> NvmeError {
    vfio_error(addr, format!("{what}: {err}"))
}

/// Issues an ioctl whose argument is a pointer or a plain integer, mapping -1 to the OS error.
///
/// # Safety
/// `arg` must be what `request` expects: a pointer to a live, correctly laid out struct of the
/// right size (with `argsz` filled in), or an integer for requests that take one.
unsafe fn ioctl(fd: &impl AsRawFd, request: u64, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: `fd` is borrowed, so the descriptor stays open for the call. The kernel reads or
    // writes memory only through `arg`, and this function's contract has the caller pass what
    // `request` expects: an integer, or a pointer to a live #[repr(C)] struct of the request's
    // layout (argsz filled in) that the caller keeps borrowed until we return.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Checks that the function exists, is bound to vfio-pci and sits in an IOMMU group, and returns
/// the group's number; each failure names the fix.
fn iommu_group_of(addr: &str) -> Result<u32, NvmeError> {
    let sysfs = PathBuf::from(format!("/sys/bus/pci/devices/{addr}"));
    if !sysfs.exists() {
        return Err(vfio_error(
            addr,
            "no such PCI function (see /sys/bus/pci/devices, or `lspci -D`)",
        ));
    }
    let link_name = |p: &Path| -> Option<String> {
        std::fs::read_link(p)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    };
    match link_name(&sysfs.join("driver")).as_deref() {
        Some("vfio-pci") => {}
        other => {
            let bound = match other {
                Some(driver) => format!("bound to driver '{driver}'"),
                None => "bound to no driver".to_string(),
            };
            return Err(vfio_error(
                addr,
                format!(
                    "{bound}, not vfio-pci; bind it with: modprobe vfio-pci; \
                     echo {addr} > /sys/bus/pci/devices/{addr}/driver/unbind; \
                     echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override; \
                     echo {addr} > /sys/bus/pci/drivers_probe (docs/nvme-driver.md)"
                ),
            ));
        }
    }
    let group = link_name(&sysfs.join("iommu_group")).ok_or_else(|| {
        vfio_error(
            addr,
            "has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the \
             kernel command line)",
        )
    })?;
    group
        .parse()
        .map_err(|_| vfio_error(addr, format!("unexpected IOMMU group name '{group}'")))
}

/// The members of an IOMMU group and their drivers, for the "not viable" message.
fn group_members(group: u32) -> String {
    let dir = format!("/sys/kernel/iommu_groups/{group}/devices");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return "unknown".into();
    };
    let mut members: Vec<String> = entries
        .flatten()
        .map(|e| {
            let driver = std::fs::read_link(e.path().join("driver"))
                .ok()
                .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "no driver".into());
            format!("{} ({driver})", e.file_name().to_string_lossy())
        })
        .collect();
    members.sort();
    members.join(", ")
}

/// One PCI function owned through VFIO, with its own container (and so its own IOVA space).
pub struct VfioDevice {
    addr: String,
    // Field order is drop order: the device before the group before the container, the reverse
    // of how they were opened.
    device: File,
    _group: File,
    container: File,
    config_offset: u64,
    bar0: Bar0,
}

impl VfioDevice {
    pub fn open(addr: &str) -> Result<VfioDevice, NvmeError> {
        let group_id = iommu_group_of(addr)?;
        let open_rw = |path: &str| OpenOptions::new().read(true).write(true).open(path);

        let container = open_rw("/dev/vfio/vfio")
            .map_err(|e| os_error(addr, "open /dev/vfio/vfio (is the vfio module loaded?)", e))?;
        // SAFETY: VFIO_GET_API_VERSION ignores its argument, so 0 passes no memory; `container`
        // is an open VFIO container.
        let version = unsafe { ioctl(&container, VFIO_GET_API_VERSION, 0) }
            .map_err(|e| os_error(addr, "VFIO_GET_API_VERSION", e))?;
        if version != VFIO_API_VERSION {
            return Err(vfio_error(
                addr,
                format!("kernel VFIO API version {version}, expected {VFIO_API_VERSION}"),
            ));
        }
        // SAFETY: VFIO_CHECK_EXTENSION takes the extension number by value and touches no
        // memory of ours; `container` is open for the closure's whole use.
        let has = |ext| unsafe { ioctl(&container, VFIO_CHECK_EXTENSION, ext) }.unwrap_or(0) > 0;
        let iommu_type = if has(VFIO_TYPE1V2_IOMMU) {
            VFIO_TYPE1V2_IOMMU
        } else if has(VFIO_TYPE1_IOMMU) {
            VFIO_TYPE1_IOMMU
        } else {
            return Err(vfio_error(
                addr,
                "the kernel offers no type1 IOMMU backend (load vfio_iommu_type1)",
            ));
        };

        let group_path = format!("/dev/vfio/{group_id}");
        let group = open_rw(&group_path).map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EBUSY) {
                " (already open, in this or another process)"
            } else {
                ""
            };
            os_error(addr, &format!("open {group_path}{hint}"), e)
        })?;
        let mut status = GroupStatus {
            argsz: std::mem::size_of::<GroupStatus>() as u32,
            ..GroupStatus::default()
        };
        // SAFETY: VFIO_GROUP_GET_STATUS writes a struct vfio_group_status, which GroupStatus
        // (#[repr(C)], two u32) matches; `status` is a local, exclusively borrowed for the call,
        // and its argsz is its own size, so the kernel writes no further.
        unsafe {
            ioctl(
                &group,
                VFIO_GROUP_GET_STATUS,
                &mut status as *mut GroupStatus as libc::c_ulong,
            )
        }
        .map_err(|e| os_error(addr, "VFIO_GROUP_GET_STATUS", e))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(vfio_error(
                addr,
                format!(
                    "IOMMU group {group_id} is not viable: every device in it must be bound to \
                     vfio-pci or to no driver (members: {})",
                    group_members(group_id)
                ),
            ));
        }
        let container_fd: libc::c_int = container.as_raw_fd();
        // SAFETY: VFIO_GROUP_SET_CONTAINER reads one int through the pointer; `container_fd` is a
        // local that lives through the call, holding the fd of the open `container`.
        unsafe {
            ioctl(
                &group,
                VFIO_GROUP_SET_CONTAINER,
                &container_fd as *const libc::c_int as libc::c_ulong,
            )
        }
        .map_err(|e| os_error(addr, "VFIO_GROUP_SET_CONTAINER", e))?;
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value and touches no memory of ours.
        unsafe { ioctl(&container, VFIO_SET_IOMMU, iommu_type) }
            .map_err(|e| os_error(addr, "VFIO_SET_IOMMU", e))?;

        let name = CString::new(addr).map_err(|_| vfio_error(addr, "bad PCI address"))?;
        // SAFETY: VFIO_GROUP_GET_DEVICE_FD only reads a NUL-terminated device name through the
        // pointer; `name` is a CString (so NUL-terminated, no interior NUL) that outlives the
        // call.
        let fd = unsafe {
            ioctl(
                &group,
                VFIO_GROUP_GET_DEVICE_FD,
                name.as_ptr() as libc::c_ulong,
            )
        }
        .map_err(|e| os_error(addr, "VFIO_GROUP_GET_DEVICE_FD", e))?;
        // SAFETY: a successful VFIO_GROUP_GET_DEVICE_FD returns a new, open file descriptor (the
        // error case was mapped to Err above), which nothing else owns or will close.
        let device = File::from(unsafe { OwnedFd::from_raw_fd(fd) });

        let config = region_info(addr, &device, VFIO_PCI_CONFIG_REGION_INDEX)?;
        let bar = region_info(addr, &device, VFIO_PCI_BAR0_REGION_INDEX)?;
        if bar.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || bar.size < 0x2000 {
            return Err(vfio_error(
                addr,
                format!(
                    "BAR0 ({} bytes, flags {:#x}) cannot be memory-mapped; is this an NVMe \
                     controller?",
                    bar.size, bar.flags
                ),
            ));
        }
        let bar0 = Bar0::map(addr, &device, bar.offset, bar.size as usize)?;
        Ok(VfioDevice {
            addr: addr.to_string(),
            device,
            _group: group,
            container,
            config_offset: config.offset,
            bar0,
        })
    }

    pub fn bar0(&self) -> &Bar0 {
        &self.bar0
    }

    /// Function-level reset through VFIO, when the device offers one. Clears whatever state a
    /// previous owner left; the controller reset that follows does not depend on it.
    pub fn reset(&self) -> bool {
        // SAFETY: VFIO_DEVICE_RESET ignores its argument, so 0 passes no memory; `self.device` is
        // open. Resetting cannot make the device write host memory: it can only DMA into what
        // this container's IOMMU maps.
        unsafe { ioctl(&self.device, VFIO_DEVICE_RESET, 0) }.is_ok()
    }

    /// Turns on memory decoding and bus mastering (the device may now DMA, but only into what the
    /// IOMMU maps) and masks legacy interrupts, which a polled driver never uses.
    pub fn enable_bus_master(&self) -> Result<(), NvmeError> {
        self.update_command(|c| {
            c | PCI_COMMAND_MEMORY | PCI_COMMAND_BUS_MASTER | PCI_COMMAND_INTX_DISABLE
        })
    }

    /// Stops the device from issuing any DMA: the last resort when the controller will not stop.
    pub fn disable_bus_master(&self) -> Result<(), NvmeError> {
        self.update_command(|c| c & !PCI_COMMAND_BUS_MASTER)
    }

    fn update_command(&self, change: impl Fn(u16) -> u16) -> Result<(), NvmeError> {
        let mut raw = [0u8; 2];
        let at = self.config_offset + PCI_COMMAND;
        self.device
            .read_exact_at(&mut raw, at)
            .map_err(|e| os_error(&self.addr, "read PCI command register", e))?;
        let value = change(u16::from_le_bytes(raw));
        self.device
            .write_all_at(&value.to_le_bytes(), at)
            .map_err(|e| os_error(&self.addr, "write PCI command register", e))
    }

    /// Maps `len` bytes at `vaddr` for device access at `iova`. The kernel pins the pages; this
    /// fails with a memlock hint when the locked-memory limit is too low.
    pub fn map_dma(&self, vaddr: usize, iova: u64, len: usize) -> Result<(), NvmeError> {
        let mut map = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: vaddr as u64,
            iova,
            size: len as u64,
        };
        // SAFETY: VFIO_IOMMU_MAP_DMA only reads a struct vfio_iommu_type1_dma_map, which DmaMap
        // (#[repr(C)]) matches; `map` is a local borrowed for the call, argsz its own size. The
        // kernel pins the pages behind [vaddr, vaddr + len) (it fails with EFAULT if they are
        // not mapped) until the range is unmapped from the IOMMU: if this process frees its
        // mapping first, the pages stay pinned and reachable only by the device, never handed to
        // anyone else. From now on the device may write those pages whenever a command names
        // them; the callers (controller.rs) map only DeviceMemory, which is never viewed as a
        // slice, and DMA pool regions, whose buffers a command names only while it owns them and
        // which are not dereferenced until the completion hands them back.
        let result = unsafe {
            ioctl(
                &self.container,
                VFIO_IOMMU_MAP_DMA,
                &mut map as *mut DmaMap as libc::c_ulong,
            )
        };
        result.map(|_| ()).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::ENOMEM) | Some(libc::EPERM) => format!(
                    " — cannot lock {len} bytes of DMA memory: raise the locked-memory limit \
                     (`ulimit -l`, LimitMEMLOCK= for a service; it is {})",
                    memlock_limit()
                ),
                _ => String::new(),
            };
            vfio_error(
                &self.addr,
                format!("IOMMU map of {len} bytes at IOVA {iova:#x}: {e}{hint}"),
            )
        })
    }

    pub fn unmap_dma(&self, iova: u64, len: usize) -> Result<(), NvmeError> {
        let mut unmap = DmaUnmap {
            argsz: std::mem::size_of::<DmaUnmap>() as u32,
            flags: 0,
            iova,
            size: len as u64,
        };
        // SAFETY: VFIO_IOMMU_UNMAP_DMA reads, and writes back the size field of, a struct
        // vfio_iommu_type1_dma_unmap, which DmaUnmap (#[repr(C)]) matches; `unmap` is a local
        // exclusively borrowed for the call, argsz its own size.
        unsafe {
            ioctl(
                &self.container,
                VFIO_IOMMU_UNMAP_DMA,
                &mut unmap as *mut DmaUnmap as libc::c_ulong,
            )
        }
        .map(|_| ())
        .map_err(|e| os_error(&self.addr, "IOMMU unmap", e))
    }
}

fn memlock_limit() -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes exactly one struct rlimit through the pointer, and `limit` is a
    // local of that type, exclusively borrowed for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return "unknown".into();
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", limit.rlim_cur / 1024)
    }
}

fn region_info(addr: &str, device: &File, index: u32) -> Result<RegionInfo, NvmeError> {
    let mut info = RegionInfo {
        argsz: std::mem::size_of::<RegionInfo>() as u32,
        index,
        ..RegionInfo::default()
    };
    // SAFETY: VFIO_DEVICE_GET_REGION_INFO writes a struct vfio_region_info, which RegionInfo
    // (#[repr(C)]) matches; `info` is a local exclusively borrowed for the call, and argsz (its
    // own size) stops the kernel from writing capability chains past it.
    unsafe {
        ioctl(
            device,
            VFIO_DEVICE_GET_REGION_INFO,
            &mut info as *mut RegionInfo as libc::c_ulong,
        )
    }
    .map_err(|e| os_error(addr, &format!("VFIO region {index} info"), e))?;
    Ok(info)
}

/// BAR0 mapped into this process: the controller's registers and doorbells. Accesses are
/// volatile 32-bit loads and stores, the width every NVMe register supports.
pub struct Bar0 {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is device memory with no thread affinity (munmap in Drop works from any
// thread); every access is a single volatile 32-bit load or store, and which thread writes which
// doorbell is the driver's protocol (each queue pair writes only its own), not a memory-safety
// question.
unsafe impl Send for Bar0 {}
// SAFETY: &Bar0 allows only volatile 32-bit loads and stores at bounds-checked, aligned offsets,
// never a Rust reference into the mapping; concurrent register accesses from several threads are
// what MMIO allows, and none of them can touch memory outside BAR0.
unsafe impl Sync for Bar0 {}

impl Bar0 {
    fn map(addr: &str, device: &File, offset: u64, len: usize) -> Result<Bar0, NvmeError> {
        // SAFETY: asks for a new shared mapping at an address of the kernel's choosing, so no
        // existing memory is affected; `device` is an open VFIO device fd and offset/len are
        // what VFIO reported for BAR0. The result is checked before use and unmapped only in
        // Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                device.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os_error(addr, "mmap of BAR0", io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| vfio_error(addr, "mmap of BAR0 returned null"))?;
        Ok(Bar0 { base, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn read32(&self, offset: usize) -> u32 {
        assert!(
            offset % 4 == 0 && offset + 4 <= self.len,
            "BAR0 offset {offset:#x}"
        );
        // SAFETY: offset + 4 <= len (asserted above), so the 4 bytes lie in the mapping, which
        // lives as long as self; base is page aligned and offset a multiple of 4, so the u32 is
        // aligned. MMIO needs a volatile access, and no Rust reference into BAR0 exists.
        unsafe { self.base.as_ptr().add(offset).cast::<u32>().read_volatile() }
    }

    #[inline]
    pub fn write32(&self, offset: usize, value: u32) {
        assert!(
            offset % 4 == 0 && offset + 4 <= self.len,
            "BAR0 offset {offset:#x}"
        );
        // SAFETY: offset + 4 <= len (asserted above), so the 4 bytes lie in the mapping, which
        // lives as long as self; base is page aligned and offset a multiple of 4, so the u32 is
        // aligned. A volatile store reaches the register; no Rust reference into BAR0 exists.
        unsafe {
            self.base
                .as_ptr()
                .add(offset)
                .cast::<u32>()
                .write_volatile(value)
        }
    }

    /// A 64-bit register as two 32-bit reads, low dword first (Base 2.0 §3.1.3 allows this).
    pub fn read64(&self, offset: usize) -> u64 {
        self.read32(offset) as u64 | (self.read32(offset + 4) as u64) << 32
    }

    pub fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

impl Drop for Bar0 {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned, and BAR0 is reached only through
        // &self methods, none of which can run after Drop.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// Memory the controller reads and writes on its own: queue rings, PRP lists, Identify buffers.
///
/// It is never viewed as a Rust slice. The device may write it at any moment, so every access is
/// a volatile load or store of plain integers at a checked offset.
pub struct DeviceMemory {
    base: NonNull<u8>,
    len: usize,
    /// Keeps the mapping alive; its bytes are reached only through `base`.
    _owner: crate::dma::DmaBuf,
}

// SAFETY: DeviceMemory owns its buffer exclusively (the DmaBuf is never handed out or
// dereferenced), so moving it to another thread moves the only handle; the device's own accesses
// do not depend on which thread holds it. (Not Sync: shared use goes through a Mutex.)
unsafe impl Send for DeviceMemory {}

impl DeviceMemory {
    /// Zeroed, page-aligned device memory of at least `len` bytes.
    pub fn new(len: usize) -> Result<DeviceMemory, NvmeError> {
        let mut owner = crate::dma::DmaBuf::new(len)?;
        let base = NonNull::new(owner.as_mut_ptr()).expect("DMA buffers are never null");
        let memory = DeviceMemory {
            base,
            len: owner.len(),
            _owner: owner,
        };
        for offset in (0..memory.len).step_by(8) {
            memory.write_u64(offset, 0);
        }
        Ok(memory)
    }

    pub fn addr(&self) -> usize {
        self.base.as_ptr() as usize
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn at<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset % std::mem::align_of::<T>() == 0
                && offset + std::mem::size_of::<T>() <= self.len,
            "device memory offset {offset:#x}"
        );
        // SAFETY: offset + size_of::<T>() <= len (asserted above), so `add` stays inside the
        // buffer `_owner` keeps mapped for as long as self lives.
        unsafe { self.base.as_ptr().add(offset).cast::<T>() }
    }

    #[inline]
    pub fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: `at` asserted the u32 is in bounds and aligned, in memory `_owner` keeps
        // mapped. The device may write it at any moment, so it is read with a volatile load,
        // never through a reference.
        unsafe { self.at::<u32>(offset).read_volatile() }
    }

    #[inline]
    pub fn write_u64(&self, offset: usize, value: u64) {
        // SAFETY: `at` asserted the u64 is in bounds and aligned, in memory `_owner` keeps
        // mapped; no reference into it exists. Volatile so the store is not elided or merged
        // before the doorbell that tells the device to read it.
        unsafe { self.at::<u64>(offset).write_volatile(value) }
    }

    /// Writes a submission entry (64 bytes at a 64-byte aligned offset).
    #[inline]
    pub fn write_sqe(&self, offset: usize, sqe: &super::wire::SubmissionEntry) {
        // SAFETY: `at` asserted bounds and the 8-byte alignment of SubmissionEntry, in memory
        // `_owner` keeps mapped. The slot is one the device does not read now (the published
        // tail has not passed it), and the store is volatile, so no reference into device
        // memory is formed.
        unsafe {
            self.at::<super::wire::SubmissionEntry>(offset)
                .write_volatile(*sqe)
        }
    }

    /// Reads a completion entry (16 bytes at a 16-byte aligned offset).
    #[inline]
    pub fn read_cqe(&self, offset: usize) -> super::wire::CompletionEntry {
        // SAFETY: `at` asserted bounds and alignment, in memory `_owner` keeps mapped. Callers
        // read the entry only after seeing its phase tag flip and an Acquire fence, so the
        // device has finished writing it; the load is volatile and copies it out by value.
        unsafe {
            self.at::<super::wire::CompletionEntry>(offset)
                .read_volatile()
        }
    }

    /// Copies `out.len()` bytes out, for data the device has finished writing (Identify).
    pub fn copy_out(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.len);
        for (i, byte) in out.iter_mut().enumerate() {
            // SAFETY: offset + out.len() <= len (asserted above), so each byte lies in memory
            // `_owner` keeps mapped; byte loads need no alignment, and a volatile load copies the
            // byte out without forming a reference to device memory.
            *byte = unsafe { self.base.as_ptr().add(offset + i).read_volatile() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_normalise() {
        assert_eq!(
            parse_pci_address("0000:00:04.0").as_deref(),
            Some("0000:00:04.0")
        );
        assert_eq!(
            parse_pci_address("00:1f.7").as_deref(),
            Some("0000:00:1f.7")
        );
        assert_eq!(
            parse_pci_address("1:2:3.4").as_deref(),
            Some("0001:02:03.4")
        );
        for bad in [
            "",
            "00:04",
            "00:04.8",
            "00:20.0",
            "zz:00.0",
            "0:0:0:0.0",
            "x",
        ] {
            assert_eq!(parse_pci_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn unbound_or_missing_functions_explain_themselves() {
        let e = iommu_group_of("ffff:ff:1f.7").unwrap_err().to_string();
        assert!(e.contains("no such PCI function"), "{e}");
    }

    #[test]
    fn device_memory_is_zeroed_and_bounds_checked() {
        let memory = DeviceMemory::new(100).unwrap();
        assert_eq!(memory.len(), 4096);
        assert_eq!(memory.read_u32(4092), 0);
        memory.write_u64(8, 0x1122_3344_5566_7788);
        assert_eq!(memory.read_u32(8), 0x5566_7788);
        let mut out = [0u8; 4];
        memory.copy_out(12, &mut out);
        assert_eq!(u32::from_le_bytes(out), 0x1122_3344);
        let caught = std::panic::catch_unwind(|| memory.read_u32(4096));
        assert!(caught.is_err());
    }
}
