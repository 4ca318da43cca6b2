//! The file or block device behind a `uring:` namespace: opening it, what O_DIRECT demands of it,
//! the disk sysfs shows behind it, and which fallocate modes its filesystem supports.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::options::UriOptions;
use crate::device::DeviceClass;
use crate::error::NvmeError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BackingKind {
    RegularFile,
    BlockDevice,
}

/// What `statx(STATX_DIOALIGN)` says about O_DIRECT on a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DirectIoSupport {
    Aligned {
        memory: u32,
        offset: u32,
    },
    Refused,
    /// Kernel or filesystem too old to say.
    Unknown,
}

pub(super) fn direct_io_support(file: &File) -> DirectIoSupport {
    // SAFETY: libc::statx is a C struct of integers and integer arrays (no pointers, no enums),
    // so all-zero bytes are a valid value of it.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the whole call (`file` is borrowed), the empty path is a static
    // NUL-terminated C string that AT_EMPTY_PATH makes the kernel ignore, and `stx` is a local
    // struct statx, exclusively borrowed, that the kernel fills and writes nothing beyond.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return DirectIoSupport::Unknown;
    }
    if stx.stx_dio_offset_align == 0 {
        return DirectIoSupport::Refused;
    }
    DirectIoSupport::Aligned {
        memory: stx.stx_dio_mem_align.max(1),
        offset: stx.stx_dio_offset_align,
    }
}

/// The whole disk behind a file or block device, as sysfs shows it.
pub(super) struct BackingDisk {
    dir: PathBuf,
    name: String,
}

impl BackingDisk {
    pub(super) fn of(dev: libc::dev_t) -> Option<BackingDisk> {
        let node = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
        let dir = std::fs::canonicalize(node).ok()?;
        // A partition's queue attributes live on the disk that holds it.
        let dir = if dir.join("partition").exists() {
            dir.parent()?.to_path_buf()
        } else {
            dir
        };
        let name = dir.file_name()?.to_str()?.to_string();
        Some(BackingDisk { dir, name })
    }

    pub(super) fn attribute(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join("queue").join(name))
            .ok()
            .map(|s| s.trim().to_string())
    }

    pub(super) fn number(&self, name: &str) -> Option<u64> {
        self.attribute(name)?.parse().ok()
    }

    pub(super) fn class(&self) -> DeviceClass {
        if self.attribute("rotational").as_deref() == Some("1") {
            DeviceClass::Hdd
        } else if self.name.starts_with("nvme") {
            DeviceClass::Nvme
        } else {
            DeviceClass::Ssd
        }
    }
}

/// Opens PATH, creating it when `size=` allows. Block devices are opened O_EXCL so a device that
/// is mounted or claimed by another program is refused instead of overwritten.
pub(super) fn open_backing(opts: &UriOptions) -> Result<(File, BackingKind), NvmeError> {
    let path = &opts.path;
    let existing = match std::fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound && opts.size.is_some() => None,
        Err(e) => return Err(NvmeError::io(path, e)),
    };
    let kind = match existing.as_ref().map(|m| m.file_type()) {
        None => BackingKind::RegularFile,
        Some(t) if t.is_file() => BackingKind::RegularFile,
        Some(t) if t.is_block_device() => BackingKind::BlockDevice,
        Some(_) => {
            return Err(NvmeError::Unsupported {
                path: path.clone(),
                reason: "not a regular file or a block device".into(),
            });
        }
    };
    let mut flags = 0;
    if opts.direct {
        flags |= libc::O_DIRECT;
    }
    if kind == BackingKind::BlockDevice {
        flags |= libc::O_EXCL;
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true).custom_flags(flags);
    if existing.is_none() {
        options.create(true).mode(0o644);
    }
    let file = options.open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) if opts.direct => NvmeError::Unsupported {
            path: path.clone(),
            reason: "the filesystem refuses O_DIRECT (EINVAL); open it with ?direct=0 for \
                     buffered I/O"
                .into(),
        },
        Some(libc::EBUSY) if kind == BackingKind::BlockDevice => NvmeError::Unsupported {
            path: path.clone(),
            reason: format!("the device is in use (mounted, or held by another program): {e}"),
        },
        _ => NvmeError::io(path, e),
    })?;
    // The path may have been swapped between the stat and the open; trust only the open file.
    let opened = file
        .metadata()
        .map_err(|e| NvmeError::io(path, e))?
        .file_type();
    let opened_kind = if opened.is_file() {
        BackingKind::RegularFile
    } else if opened.is_block_device() {
        BackingKind::BlockDevice
    } else {
        return Err(NvmeError::Unsupported {
            path: path.clone(),
            reason: "not a regular file or a block device".into(),
        });
    };
    if opened_kind != kind {
        return Err(NvmeError::Unsupported {
            path: path.clone(),
            reason: "changed type while being opened".into(),
        });
    }
    Ok((file, kind))
}

/// What a regular file's filesystem can do with fallocate, found once at open.
pub(super) struct Zeroing {
    /// Mode implementing Write Zeroes: ZERO_RANGE where the filesystem has it (ext4, xfs), else
    /// PUNCH_HOLE (tmpfs), whose holes read back as zeroes just the same; None if neither works.
    pub(super) write_zeroes_mode: Option<i32>,
    /// Whether PUNCH_HOLE (our Trim) works.
    pub(super) punch_hole: bool,
}

/// Tries both fallocate modes on a scratch file beside `path` (same directory, so same
/// filesystem), then deletes it: probing the user's file itself would leave blocks allocated past
/// its end (ext4 does not punch beyond EOF). If no scratch file can be made (a read-only
/// directory), both modes are assumed to work and an unsupported one completes with Invalid
/// Command Opcode when used.
pub(super) fn probe_zeroing(path: &Path, block: u64) -> Zeroing {
    let assumed = Zeroing {
        write_zeroes_mode: Some(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE),
        punch_hole: true,
    };
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        ".bluepoll-fallocate-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let scratch = path.with_file_name(name);
    let Ok(file) = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&scratch)
    else {
        return assumed;
    };
    let _ = file.set_len(2 * block);
    let fallocate = |mode: i32| -> bool {
        let Ok(len) = libc::off_t::try_from(block) else {
            return false;
        };
        // SAFETY: fallocate takes only integers, so no memory of ours is passed, and it acts on
        // the scratch file's fd, open while `file` lives (the closure borrows it).
        unsafe { libc::fallocate(file.as_raw_fd(), mode, 0, len) == 0 }
    };
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let zero_range = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    let punch_hole = fallocate(punch);
    let write_zeroes_mode = if fallocate(zero_range) {
        Some(zero_range)
    } else if punch_hole {
        Some(punch)
    } else {
        None
    };
    drop(file);
    let _ = std::fs::remove_file(&scratch);
    Zeroing {
        write_zeroes_mode,
        punch_hole,
    }
}
