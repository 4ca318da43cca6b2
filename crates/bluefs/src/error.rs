//! Errors of the BlueFS layer.

use super::alloc::AllocError;
use super::format::FormatError;
use bluepoll_nvme::{NvmeError, Opcode, Status};

/// Why a BlueFS operation failed.
///
/// An operation that fails changes no metadata, with one exception spelled out by
/// [`ReadOnly`](BlueFsError::ReadOnly): when a write the log depends on may or may not have
/// landed, the filesystem stops taking changes.
#[derive(Debug, thiserror::Error)]
pub enum BlueFsError {
    /// The device layer refused: opening a queue pair or DMA pool, or a submission or poll
    /// failed (not a command's own status; that is [`Io`](BlueFsError::Io)).
    #[error(transparent)]
    Device(#[from] NvmeError),

    /// A command completed with an error status.
    #[error("{op} of {len} bytes at byte {offset} of the {device} device failed: {status}")]
    Io {
        /// The device: `"wal"`, `"db"` or `"slow"`.
        device: &'static str,
        /// The command: read, write or flush.
        op: Opcode,
        /// Byte offset on the device of the failed command (0 for a flush).
        offset: u64,
        /// Bytes the command moved (0 for a flush).
        len: u64,
        /// The status it completed with.
        status: Status,
    },

    /// A label or superblock did not decode (mount, expand), or the superblock encoder refused
    /// one (compaction): the structure and the field are in the inner error.
    #[error(transparent)]
    Format(#[from] FormatError),

    /// Making the RocksDB Env over BlueFS failed.
    #[error("RocksDB environment over BlueFS: {reason}")]
    RocksEnv {
        /// What the shim reported.
        reason: String,
    },

    /// Every device the data may go to is full (the log keeps its own reserve).
    #[error("no space left for {what}: {detail}")]
    NoSpace {
        /// What needed the space, with its size (`"65536 bytes of db data"`, `"… of log"`).
        what: String,
        /// What each device tried had free, or the allocator's refusal.
        detail: String,
    },

    /// The allocator refused for a reason other than space (an extent out of range, a double
    /// free, a shrinking device): a bug or damaged metadata. `NoSpace` from an allocator becomes
    /// [`NoSpace`](BlueFsError::NoSpace) instead.
    #[error("allocator: {0}")]
    Alloc(AllocError),

    /// No such file or directory (or lock, for `unlock_file`), or a writer's file was removed
    /// while it flushed.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path (or directory name) as given.
        path: String,
    },

    /// `mkdir` of a directory, or `link` to a name, that already exists.
    #[error("{path}: already exists")]
    Exists {
        /// The path (or directory name) as given.
        path: String,
    },

    /// `rmdir` of a directory that still has files.
    #[error("{path}: directory not empty")]
    NotEmpty {
        /// The directory's name.
        path: String,
    },

    /// The file is in use in a way the operation conflicts with: already open for writing
    /// (a second writer, `truncate` by path), or already locked (`lock_file`).
    #[error("{path}: {reason}")]
    Busy {
        /// The path as given.
        path: String,
        /// Which conflict, e.g. `"already open for writing"`.
        reason: &'static str,
    },

    /// A path that is not `DIR/NAME`, or has an empty or over-long part.
    #[error("invalid path '{path}': {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A [`BlueFsConfig`](crate::BlueFsConfig) that mkfs or mount refuses.
    #[error("invalid BlueFS configuration: {reason}")]
    InvalidConfig {
        /// Which setting, its value and the rule it breaks.
        reason: String,
    },

    /// The devices do not belong together or to BlueFS.
    #[error("{device} device: {reason}")]
    WrongDevice {
        /// The device: `"wal"`, `"db"` or `"slow"`.
        device: &'static str,
        /// What is wrong: another filesystem's or role's label, a device that shrank, one too
        /// small, one missing that the metadata references, an unusable block size.
        reason: String,
    },

    /// Metadata contradicts itself: replay met a damaged log (past what a torn tail explains),
    /// no superblock slot is valid, extents overlap, or a file's size runs past its allocation.
    /// When a committed op fails to apply, the filesystem also turns read-only.
    #[error("corrupt metadata: {reason}")]
    Corrupt {
        /// What contradicts what, naming the file, extent or log frame.
        reason: String,
    },

    /// A write the log depends on failed (a log frame, a superblock, a flush after data, an I/O
    /// of compaction), or a committed op failed to apply; what reached the device is unknown,
    /// so nothing more is written until the filesystem is mounted again. Returned by every
    /// later change.
    #[error("BlueFS is read-only until remounted: {reason}")]
    ReadOnly {
        /// The failure that turned the filesystem read-only.
        reason: String,
    },
}

impl From<AllocError> for BlueFsError {
    fn from(e: AllocError) -> BlueFsError {
        match e {
            AllocError::NoSpace { .. } => BlueFsError::NoSpace {
                what: "an allocation".into(),
                detail: e.to_string(),
            },
            other => BlueFsError::Alloc(other),
        }
    }
}

impl BlueFsError {
    /// Whether this is [`NoSpace`](BlueFsError::NoSpace): the caller may free space and retry.
    pub fn is_no_space(&self) -> bool {
        matches!(self, BlueFsError::NoSpace { .. })
    }

    /// Whether this is [`NotFound`](BlueFsError::NotFound).
    pub fn is_not_found(&self) -> bool {
        matches!(self, BlueFsError::NotFound { .. })
    }
}

/// What BlueFS operations return.
pub type Result<T> = std::result::Result<T, BlueFsError>;
