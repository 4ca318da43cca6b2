//! The `uring:` namespace: what opening a file or block device decides once (block size,
//! alignment, ring flags, supported commands), the device claim, and queue pair creation.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use super::backing::{
    BackingDisk, BackingKind, DirectIoSupport, direct_io_support, open_backing, probe_zeroing,
};
use super::fixed::FixedBuffers;
use super::options::{PollMode, UriOptions};
use super::queue_pair::UringQueuePair;
use super::ring::Ring;
use super::setup::{RingPlan, TaskRunMode, choose_ring_features, probe_iopoll, setup_error_hint};
use super::slab::Slab;
use crate::device::{
    DeviceClass, Namespace, NamespaceInfo, OwnerSlot, QueuePairBackend, SupportedOps,
};
use crate::error::NvmeError;

const MAX_TRANSFER_BYTES: u32 = 4 << 20;
const MAX_QUEUE_DEPTH: u32 = 4096;
/// Safe for O_DIRECT on every filesystem and device we know of.
const DEFAULT_FILE_BLOCK_SIZE: u32 = 4096;
/// What buffered I/O asks of a buffer address: nothing beyond the integer alignment DMA pools
/// give anyway.
pub(super) const BUFFERED_BUFFER_ALIGNMENT: u32 = 4;

/// Entries of the plain ring beside an IOPOLL ring: flushes and fallocates are rare and slow, so
/// a few dozen in flight is plenty; more simply wait in `unsent` for the next poll.
const SYNC_RING_ENTRIES: u32 = 64;

pub(crate) struct UringNamespace {
    pub(super) info: NamespaceInfo,
    pub(super) file: File,
    pub(super) plan: RingPlan,
    /// The fallocate mode that implements Write Zeroes on this file (see `probe_zeroing`).
    pub(super) zeroes_mode: i32,
    /// `flush=inline`: Flush is an fdatasync made by the polling thread when it hands the
    /// command over, instead of an io_uring fsync that a kernel worker runs and our thread then
    /// waits for (two wake-ups). For threads that wait for their flushes anyway (BlueFS); a
    /// reactor with other queue pairs to poll would rather not block.
    pub(super) flush_inline: bool,
    owner: OwnerSlot,
    /// The backing file's path, opened again for the claim's lock.
    path: std::path::PathBuf,
    /// While claimed: a second descriptor of the backing file carrying the advisory lock. The
    /// lock is not taken on `file` because the rings register `file` and a dead process's rings
    /// are torn down by the kernel some time after it exits, keeping `file` (and a lock on it)
    /// alive for up to a second; this descriptor is in no ring, so the lock ends with the
    /// process and a restart right after kill -9 finds the device free.
    lock: std::sync::Mutex<Option<File>>,
}

impl UringNamespace {
    pub fn open(uri: &str, rest: &str) -> Result<UringNamespace, NvmeError> {
        UringNamespace::open_with(uri, rest, TaskRunMode::Cooperative)
    }

    pub(super) fn open_with(
        uri: &str,
        rest: &str,
        preferred_taskrun: TaskRunMode,
    ) -> Result<UringNamespace, NvmeError> {
        let opts = UriOptions::parse(uri, rest)?;
        let preferred_taskrun = opts.taskrun.unwrap_or(preferred_taskrun);
        let path = opts.path.clone();
        let (file, kind) = open_backing(&opts)?;
        let meta = file.metadata().map_err(|e| NvmeError::io(&path, e))?;

        // The file grows to this only once every check has passed.
        let bytes = match kind {
            BackingKind::RegularFile => meta.len().max(opts.size.unwrap_or(0)),
            BackingKind::BlockDevice => {
                let device_len = (&file)
                    .seek(SeekFrom::End(0))
                    .map_err(|e| NvmeError::io(&path, e))?;
                match opts.size {
                    Some(want) if want > device_len => {
                        return Err(NvmeError::Unsupported {
                            path,
                            reason: format!(
                                "size={want} is larger than the device ({device_len} bytes)"
                            ),
                        });
                    }
                    Some(want) => want,
                    None => device_len,
                }
            }
        };

        let disk = BackingDisk::of(match kind {
            BackingKind::RegularFile => meta.dev(),
            BackingKind::BlockDevice => meta.rdev(),
        });
        let logical_block_size = match kind {
            BackingKind::BlockDevice => disk
                .as_ref()
                .and_then(|d| d.number("logical_block_size"))
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| n.is_power_of_two()),
            BackingKind::RegularFile => None,
        };

        // What O_DIRECT demands of a file offset and of a buffer address.
        let (offset_alignment, memory_alignment) = if opts.direct {
            match (direct_io_support(&file), kind) {
                (DirectIoSupport::Refused, _) => {
                    return Err(NvmeError::Unsupported {
                        path,
                        reason: "the filesystem does not support O_DIRECT on this file; \
                                 open it with ?direct=0 for buffered I/O"
                            .into(),
                    });
                }
                (DirectIoSupport::Aligned { memory, offset }, _) => (offset, memory),
                (DirectIoSupport::Unknown, BackingKind::BlockDevice) => {
                    let lbs = logical_block_size.unwrap_or(DEFAULT_FILE_BLOCK_SIZE);
                    (lbs, lbs)
                }
                (DirectIoSupport::Unknown, BackingKind::RegularFile) => {
                    (DEFAULT_FILE_BLOCK_SIZE, DEFAULT_FILE_BLOCK_SIZE)
                }
            }
        } else {
            (1, BUFFERED_BUFFER_ALIGNMENT)
        };

        let default_block_size = match kind {
            BackingKind::BlockDevice => logical_block_size.unwrap_or(DEFAULT_FILE_BLOCK_SIZE),
            BackingKind::RegularFile => DEFAULT_FILE_BLOCK_SIZE,
        }
        .max(offset_alignment);
        let block_size = opts.block_size.unwrap_or(default_block_size);
        if block_size % offset_alignment != 0 {
            return Err(NvmeError::uri(
                uri,
                format!(
                    "block_size {block_size} is finer than the {offset_alignment}-byte alignment \
                     O_DIRECT needs on {}; use block_size={offset_alignment} or larger, or direct=0",
                    path.display()
                ),
            ));
        }
        let capacity_blocks = bytes / block_size as u64;
        if capacity_blocks == 0 {
            return Err(NvmeError::Unsupported {
                path,
                reason: format!(
                    "{bytes} bytes hold no whole {block_size}-byte block; give size= to extend it"
                ),
            });
        }

        let (taskrun, submit_all) = choose_ring_features(&path, preferred_taskrun)?;
        if kind == BackingKind::RegularFile && bytes > meta.len() {
            // Sparse: costs nothing until written. Never shrinks what is there.
            file.set_len(bytes).map_err(|e| NvmeError::io(&path, e))?;
        }
        let mut plan = RingPlan {
            iopoll: false,
            sqpoll_idle_ms: opts.sqpoll_idle_ms,
            taskrun,
            submit_all,
        };
        if plan.sqpoll_idle_ms.is_some()
            && let Err(e) = plan.build(2, false)
        {
            return Err(NvmeError::Unsupported {
                path,
                reason: format!(
                    "sqpoll=1: the kernel refused an SQPOLL ring: {e}{}",
                    setup_error_hint(&e)
                ),
            });
        }
        // A device without poll queues fails polled bios with EOPNOTSUPP, but only once a bio is
        // issued; sysfs says so up front, and the probe confirms the whole stack end to end.
        let device_polls = disk
            .as_ref()
            .and_then(|d| d.attribute("io_poll"))
            .map(|value| value == "1");
        let probe = || probe_iopoll(&file, &plan, block_size, capacity_blocks);
        plan.iopoll = match opts.poll {
            PollMode::Off => false,
            PollMode::Auto => device_polls == Some(true) && probe().is_ok(),
            PollMode::On => {
                let verdict = match device_polls {
                    Some(false) => Err(io::Error::other(
                        "the device has no poll queues (its sysfs queue/io_poll is 0)",
                    )),
                    _ => probe(),
                };
                if let Err(e) = verdict {
                    return Err(NvmeError::Unsupported {
                        path,
                        reason: format!(
                            "poll=on: polled I/O (IOPOLL) does not work here: {e}; \
                             use poll=auto or poll=off"
                        ),
                    });
                }
                true
            }
        };

        let mut zeroes_mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        let (ops, trim_reads_zeroes, volatile_write_cache) = match kind {
            // Punched holes read back as zeroes; completed writes sit in the page cache or the
            // disk's cache until fdatasync.
            BackingKind::RegularFile => {
                let zeroing = probe_zeroing(&path, block_size as u64);
                if let Some(mode) = zeroing.write_zeroes_mode {
                    zeroes_mode = mode;
                }
                let ops = SupportedOps {
                    flush: true,
                    write_zeroes: zeroing.write_zeroes_mode.is_some(),
                    trim: zeroing.punch_hole,
                };
                (ops, true, true)
            }
            BackingKind::BlockDevice => {
                // On a block device the kernel turns PUNCH_HOLE into "write zeroes, unmapping
                // allowed, no fallback": it either zeroes the range or fails with EOPNOTSUPP, so
                // trim is offered only where the device has a write-zeroes command.
                let trim = disk
                    .as_ref()
                    .and_then(|d| d.number("write_zeroes_max_bytes"))
                    .is_none_or(|max| max > 0);
                let write_back = disk
                    .as_ref()
                    .and_then(|d| d.attribute("write_cache"))
                    .is_none_or(|mode| mode == "write back");
                let ops = SupportedOps {
                    flush: true,
                    write_zeroes: true,
                    trim,
                };
                (ops, trim, write_back)
            }
        };

        let class = opts
            .class
            .or_else(|| disk.as_ref().map(BackingDisk::class))
            .unwrap_or(DeviceClass::Ssd);
        let info = NamespaceInfo {
            uri: uri.to_string(),
            model: model_name(kind, opts.direct, &plan),
            serial: String::new(),
            block_size,
            capacity_blocks,
            max_transfer_bytes: MAX_TRANSFER_BYTES,
            buffer_alignment: if opts.direct {
                memory_alignment
            } else {
                BUFFERED_BUFFER_ALIGNMENT
            },
            max_queue_depth: MAX_QUEUE_DEPTH,
            class,
            ops,
            trim_reads_zeroes,
            volatile_write_cache,
        };
        Ok(UringNamespace {
            info,
            file,
            plan,
            zeroes_mode,
            flush_inline: opts.flush_inline,
            owner: OwnerSlot::default(),
            path,
            lock: std::sync::Mutex::new(None),
        })
    }
}

/// Who holds the flock on `file`'s inode, from /proc/locks (`N: FLOCK ADVISORY WRITE PID
/// MAJ:MIN:INODE ...`, the device numbers in hex): "pid N (command)". None when /proc is not
/// there or the holder is not listed (a lock on another host's view of a network file).
fn lock_holder(file: &File) -> Option<String> {
    let meta = file.metadata().ok()?;
    let inode = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1:" "FLOCK" "ADVISORY" "WRITE" pid dev:inode start end; a waiter has "->" after
        // the number and so never matches.
        let fields = fields.get(1..)?;
        (fields.first() == Some(&"FLOCK") && fields.get(4) == Some(&inode.as_str()))
            .then(|| fields.get(3)?.parse::<u32>().ok())
            .flatten()
            .filter(|pid| *pid != std::process::id())
    })?;
    Some(match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(command) => format!("process {pid} ({})", command.trim()),
        // A lock can outlive its process while the kernel finishes closing the file.
        Err(_) => format!("process {pid}, which has exited (the kernel is releasing its lock)"),
    })
}

fn model_name(kind: BackingKind, direct: bool, plan: &RingPlan) -> String {
    let medium = match kind {
        BackingKind::RegularFile => "file",
        BackingKind::BlockDevice => "block device",
    };
    let io = if direct { "O_DIRECT" } else { "buffered" };
    let completions = if plan.iopoll {
        "IOPOLL"
    } else {
        "interrupt completions"
    };
    let sqpoll = if plan.sqpoll_idle_ms.is_some() {
        ", SQPOLL"
    } else {
        ""
    };
    format!("io_uring {medium} ({io}, {completions}{sqpoll})")
}

impl Namespace for UringNamespace {
    fn info(&self) -> &NamespaceInfo {
        &self.info
    }

    /// This process's slot, then an exclusive advisory lock (flock) on a descriptor of the file
    /// of its own: other processes that claim it — another bluepoll mounting the same file or
    /// block device — find it held until this claim ends or the process dies (kill -9 included:
    /// the kernel drops the lock as the process exits). A refusal names the holder's pid and
    /// command when /proc/locks tells them.
    fn claim(&self, owner: &str) -> Result<(), NvmeError> {
        self.owner.take(&self.info.uri, owner)?;
        let locked = File::open(&self.path).and_then(|file| {
            // SAFETY: flock takes only integers, so no memory is passed; the descriptor is
            // `file`'s, open until `file` is dropped after this call or at release.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                Ok(file)
            } else {
                Err(io::Error::last_os_error())
            }
        });
        match locked {
            Ok(file) => {
                *bluepoll_base::sync::lock(&self.lock) = Some(file);
                Ok(())
            }
            Err(source) => {
                self.owner.clear();
                Err(if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    NvmeError::Busy {
                        uri: self.info.uri.clone(),
                        holder: lock_holder(&self.file).unwrap_or_else(|| {
                            "another process (advisory lock on the file)".into()
                        }),
                    }
                } else {
                    NvmeError::Os {
                        what: "locking the device file",
                        source,
                    }
                })
            }
        }
    }

    fn release_claim(&self) {
        // Closing the lock's descriptor ends the lock.
        drop(bluepoll_base::sync::lock(&self.lock).take());
        self.owner.clear();
    }

    fn create_queue_pair(
        self: Arc<Self>,
        depth: u32,
    ) -> Result<Box<dyn QueuePairBackend>, NvmeError> {
        let entries = depth.max(1).next_power_of_two();
        let data = Ring::new(&self, entries, self.plan.iopoll)?;
        let sync = if self.plan.iopoll {
            Some(Ring::new(&self, SYNC_RING_ENTRIES.min(entries), false)?)
        } else {
            None
        };
        Ok(Box::new(UringQueuePair {
            slab: Slab::with_capacity(depth as usize),
            unsent: VecDeque::with_capacity(depth as usize),
            ready: VecDeque::new(),
            broken: None,
            data,
            sync,
            fixed: FixedBuffers::default(),
            ns: self,
        }))
    }
}
