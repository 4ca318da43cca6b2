//! Errors of the device layer.
//!
//! A command that fails is not an error here: it completes with an NVMe [`Status`]. These are the
//! failures around commands — opening a device, creating queue pairs, a queue pair that broke.

use std::io;
use std::path::PathBuf;

use super::command::{Opcode, Status};

/// Why opening a device, making or polling a queue pair, or getting a DMA buffer failed.
///
/// The `Display` text names the device (URI, path or PCI address) and the reason, ready for a
/// user; match on the variant to react to a kind of failure.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// A device URI that [`Device::open`](crate::Device::open) cannot accept: no scheme, an
    /// unknown, repeated or malformed parameter, a value out of range (including a `block_size=`
    /// finer than the O_DIRECT alignment of the file it names), a missing size or path.
    #[error("invalid device URI '{uri}': {reason}")]
    InvalidUri {
        /// The URI as given; for a wrapper (`fault:`, `sim:`) the wrapper's whole URI when its
        /// own options are at fault, the inner URI when that one is.
        uri: String,
        /// What is wrong, naming the parameter or option.
        reason: String,
    },

    /// [`Device::open`](crate::Device::open) got a well-formed scheme it does not know. (`spdk:`
    /// in a build without the `spdk` feature is [`Spdk`](Self::Spdk) instead.)
    #[error("unknown device scheme '{scheme}' in '{uri}' (expected one of: {expected})")]
    UnknownScheme {
        /// The scheme, the text before the first `:`.
        scheme: String,
        /// The whole URI.
        uri: String,
        /// The schemes this build knows, comma-separated ([`SCHEMES`](crate::uri::SCHEMES)).
        expected: &'static str,
    },

    /// A file operation on a path a backend uses failed: a `uring:` file that is missing
    /// (without `size=`), unreadable or cannot be extended, or an image the PCIe self-test
    /// reads.
    #[error("{path}: {source}")]
    Io {
        /// The file or block device.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A system call that is not about a particular path failed: mapping DMA memory (also
    /// hugepages that [`HugePages::Require`](crate::HugePages::Require) demanded), or locking a
    /// `uring:` file for a claim with an error other than "held by someone else".
    #[error("{what}: {source}")]
    Os {
        /// The operation, e.g. "mmap of DMA memory".
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The backend cannot serve this device the way it was asked to: not a regular file or
    /// block device, O_DIRECT refused, a block device in use, `size=` beyond the device, no
    /// whole block, a kernel without io_uring or refusing `sqpoll=1` or `poll=on`, an NVMe
    /// namespace with metadata or an unusable block size, a PCIe self-test image too small.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The file, device or URI concerned.
        path: PathBuf,
        /// What is missing, usually with the URI option that avoids it.
        reason: String,
    },

    /// Another owner holds the device: [`Device::claim`](crate::Device::claim) while a claim
    /// from this process, or (for `uring:` files and block devices) another process's
    /// advisory lock, is in place. The claim can be retried once the holder lets go.
    #[error("{uri} is in use: {holder} holds it (one owner at a time)")]
    Busy {
        /// The device's URI.
        uri: String,
        /// Who holds it: the owner name given to the earlier claim, or "another process".
        holder: String,
    },

    /// [`Device::slice`](crate::Device::slice) was asked for a range that is not whole blocks,
    /// is empty, or does not lie inside the device.
    #[error("cannot slice bytes [{offset}+{len}] of {uri}: {reason}")]
    InvalidSlice {
        /// The URI of the device being sliced.
        uri: String,
        /// Requested start, in bytes.
        offset: u64,
        /// Requested length, in bytes.
        len: u64,
        /// Which condition failed.
        reason: String,
    },

    /// [`Device::queue_pair`](crate::Device::queue_pair) was asked for a depth of 0 or above the
    /// namespace's `max_queue_depth`.
    #[error("queue depth {requested} is outside 1..={max} for {uri}")]
    InvalidQueueDepth {
        /// The device's URI.
        uri: String,
        /// The depth asked for.
        requested: u32,
        /// The namespace's `max_queue_depth`, the largest depth accepted.
        max: u32,
    },

    /// [`DmaPool::alloc`](crate::DmaPool::alloc) found every buffer handed out. Not permanent:
    /// a buffer returns to the pool when its [`DmaBuf`](crate::DmaBuf) is dropped.
    #[error("DMA buffer pool exhausted: all {count} buffers of {buf_size} bytes are in use")]
    PoolExhausted {
        /// Buffers in the pool.
        count: usize,
        /// Bytes per buffer.
        buf_size: usize,
    },

    /// A pool of zero buffers or zero-byte buffers, more than `u32::MAX` buffers, or a total size
    /// that overflows ([`DmaPool::with_config`](crate::DmaPool::with_config)).
    #[error("invalid DMA pool request: {reason}")]
    InvalidPool {
        /// Which limit the request broke.
        reason: String,
    },

    /// A command the device layer sent on its own behalf failed: the write-back of the blocks
    /// that survive a `fault:` power cut
    /// ([`FaultControl::power_cut`](crate::FaultControl::power_cut)). A caller's own commands
    /// never produce this; they complete with a [`Status`].
    #[error("{op} of {blocks} blocks at LBA {lba} failed: {status}")]
    Command {
        /// The failed command's opcode.
        op: Opcode,
        /// Its first block (0 for a Flush).
        lba: u64,
        /// Its length in blocks (0 for a Flush).
        blocks: u32,
        /// How the inner device completed it.
        status: Status,
    },

    /// A queue pair failed as a whole, not one command.
    ///
    /// From [`QueuePair::poll`] (and so `drain` and `execute`): the backend's path to the device
    /// failed — `io_uring_enter`, SPDK's completion processing, a `pcie:` command that timed out
    /// or a controller that failed. The queue pair is then unusable (io_uring and `pcie:` fail
    /// every later poll the same way): drop it and create another. Completions appended to `out`
    /// before the failure are valid.
    ///
    /// From [`Device::queue_pair`]: the backend could not set one up (io_uring_setup refused).
    /// From [`QueuePair::execute`]: it was called with commands outstanding, or the command's
    /// completion never came back.
    ///
    /// [`QueuePair::poll`]: crate::QueuePair::poll
    /// [`QueuePair::execute`]: crate::QueuePair::execute
    /// [`Device::queue_pair`]: crate::Device::queue_pair
    #[error("queue pair on {uri} is unusable: {reason}")]
    QueuePairFailed {
        /// Names the device: its URI, or for `pcie:` its PCI address.
        uri: String,
        /// What failed.
        reason: String,
    },

    /// Reserved for an operation refused because the device lost power. No backend returns it:
    /// commands caught by a `fault:` power cut complete with
    /// [`Status::ABORTED_POWER_LOSS`] instead.
    #[error("the device lost power; queue pairs created before the power cut are dead")]
    PowerLost,

    /// The VFIO system interface refused the `pcie:` device: the vfio modules missing, the
    /// device not bound to vfio-pci, its IOMMU group not viable or already open, a VFIO ioctl,
    /// BAR0 mapping or IOMMU (un)mapping failing.
    #[error("pcie:{device}: {reason}")]
    Vfio {
        /// The PCI address, `DDDD:BB:DD.F`.
        device: String,
        /// The step that failed, with the OS error and a hint where one helps.
        reason: String,
    },

    /// The NVMe controller behind a `pcie:` device misbehaved or lacks what the driver needs:
    /// it does not respond, timed out or reported a fatal status, lacks the NVM command set or
    /// 4 KiB pages, has no free I/O queue or IOVA space, or has no such active namespace.
    #[error("pcie:{device}: controller {reason}")]
    Controller {
        /// The PCI address, `DDDD:BB:DD.F`.
        device: String,
        /// What the controller did or lacks.
        reason: String,
    },

    /// The SPDK backend (or its absence from this build).
    #[error("spdk:{target}: {reason}")]
    Spdk {
        /// The `spdk:` URI's body, the transport ID.
        target: String,
        /// What failed; without the `spdk` feature, that the build has no SPDK backend.
        reason: String,
    },

    /// The `pcie:` controller completed an admin command (Identify, Create I/O Queue, ...)
    /// with an error status while the device was being opened.
    #[error("pcie:{device}: admin command {command} failed: {status}")]
    AdminCommand {
        /// The PCI address, `DDDD:BB:DD.F`.
        device: String,
        /// The command's name, e.g. "Identify Namespace".
        command: &'static str,
        /// The status it completed with.
        status: Status,
    },
}

impl NvmeError {
    pub(crate) fn uri(uri: &str, reason: impl Into<String>) -> NvmeError {
        NvmeError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> NvmeError {
        NvmeError::Io {
            path: path.into(),
            source,
        }
    }
}
