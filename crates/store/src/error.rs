//! Errors of the object store: values with the object, extent and reason, each with the errno
//! a POSIX-minded caller expects.

use bluepoll_bluefs::BlueFsError;
use bluepoll_kv::KvError;
use bluepoll_nvme::{NvmeError, Status};
use bluepoll_reactor::ReactorError;

/// Why a store call or transaction failed. [`errno`](StoreError::errno) maps each to the errno a
/// POSIX caller expects; the `Display` text names the collection, object, extent or reason.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A transaction, read or query named a collection that does not exist (for a transaction:
    /// at that point of it). ENOENT.
    #[error("collection '{coll}' does not exist")]
    NoSuchCollection {
        /// The collection's name.
        coll: String,
    },

    /// `create_collection` of a collection that exists. EEXIST.
    #[error("collection '{coll}' already exists")]
    CollectionExists {
        /// The collection's name.
        coll: String,
    },

    /// `remove_collection` of a collection that still holds an object. ENOTEMPTY.
    #[error("collection '{coll}' is not empty")]
    CollectionNotEmpty {
        /// The collection's name.
        coll: String,
    },

    /// An operation that needs an existing object (every transaction operation but `write`,
    /// `zero` and `touch`, and the source of a clone), or a read or query of one, found none.
    /// ENOENT.
    #[error("object '{obj}' does not exist in collection '{coll}'")]
    NoSuchObject {
        /// The collection's name.
        coll: String,
        /// The object's name.
        obj: String,
    },

    /// `rename` onto a name that an object already has. EEXIST.
    #[error("object '{obj}' already exists in collection '{coll}'")]
    ObjectExists {
        /// The collection's name.
        coll: String,
        /// The name that is taken (the rename's target).
        obj: String,
    },

    /// `getattr` of an attribute the object does not have. ENODATA.
    #[error("object '{obj}' in '{coll}' has no attribute '{name}'")]
    NoSuchAttr {
        /// The collection's name.
        coll: String,
        /// The object's name.
        obj: String,
        /// The attribute asked for.
        name: String,
    },

    /// The main device cannot give `wanted` bytes without eating into the space kept for
    /// BlueFS and RocksDB (`reserve`). Returned by a transaction whose data needs an allocation
    /// the device cannot give (nothing of the transaction is applied). ENOSPC.
    #[error(
        "no space: {wanted} bytes wanted, {free} free beyond the {reserve}-byte reserve kept for the metadata store"
    )]
    NoSpace {
        /// Bytes of the one allocation that failed (one write of the transaction, not its
        /// total).
        wanted: u64,
        /// Bytes the allocator had free beyond the reserve at that moment.
        free: u64,
        /// Bytes of the main device kept free for BlueFS (`bluefs_reserve`).
        reserve: u64,
    },

    /// The transaction would use more space while the main device is past the full ratio
    /// (overwrites that free as much as they take, and deletes, still go through). ENOSPC.
    #[error(
        "store full: {used} of {total} bytes in use, past the full ratio {ratio} ({limit} bytes); only overwrites and deletes are taken"
    )]
    Full {
        /// Bytes of the main device in use without the transaction's growth (what it takes
        /// beyond what it frees), BlueFS's space and the areas before the data included.
        used: u64,
        /// Bytes of the main device.
        total: u64,
        /// Bytes in use past which growth is refused: the data area's start plus `ratio` of
        /// the rest.
        limit: u64,
        /// The configured `full_ratio`.
        ratio: f64,
    },

    /// A device command on an object's data failed: a read, or the read of the old bytes a
    /// partial write completes its blocks with. (A failed data write stops the store instead:
    /// [`Failed`](StoreError::Failed).) EIO.
    #[error(
        "I/O error on '{coll}/{obj}': {op} of {len} bytes at object offset {offset} (device byte {phys}): {status}"
    )]
    Io {
        /// The collection's name.
        coll: String,
        /// The object's name.
        obj: String,
        /// The command that failed (`"read"`).
        op: &'static str,
        /// Object offset of the first byte of the failed command.
        offset: u64,
        /// Bytes of object data the read was for (it may have been split into several
        /// commands).
        len: u64,
        /// Byte offset on the main device of the first byte of the failed command.
        phys: u64,
        /// The NVMe status the device answered with.
        status: Status,
    },

    /// Data read back does not match the checksum recorded when it was written (a read, or
    /// the read of the old bytes a partial write completes its blocks with). EIO.
    #[error(
        "checksum mismatch in '{coll}/{obj}' at object offset {offset} (device byte {phys}): stored {expected:#010x}, read {actual:#010x}"
    )]
    ChecksumMismatch {
        /// The collection's name.
        coll: String,
        /// The object's name.
        obj: String,
        /// Object offset of the checksum block that failed.
        offset: u64,
        /// Byte offset of that block on the main device.
        phys: u64,
        /// The crc32c recorded when the block was written.
        expected: u32,
        /// The crc32c of the bytes read.
        actual: u32,
    },

    /// A transaction operation's arguments cannot be applied: a range past the largest object
    /// size (2^44 bytes), or a clone of an object onto itself. EINVAL.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What was wrong, naming the object.
        reason: String,
    },

    /// A [`StoreConfig`](crate::StoreConfig) (or its TOML file) is invalid: a value out of range,
    /// values that do not fit together, an unknown option, no main device. Returned by mkfs,
    /// mount, fsck and the config parsers. EINVAL.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What was wrong, naming the option.
        reason: String,
    },

    /// Metadata read from the devices does not decode or contradicts itself: a record that
    /// fails its checksum or does not parse, a freelist that overlaps BlueFS's space, a label
    /// and superblock that disagree, an allocator whose state contradicts a request. Returned
    /// by mount and fsck, and by reads and transactions that load a damaged record. EIO.
    #[error("corrupt metadata: {reason}")]
    Corrupt {
        /// What was found, naming the record.
        reason: String,
    },

    /// The devices do not make up a store, or not this one: no store label, a label of another
    /// store, a device smaller than its label says, a DB device given to a store made without
    /// one (or missing for one made with one), a device too small for mkfs; also a failed
    /// command of mkfs, mount or fsck on the main device. EIO.
    #[error("{device} device: {reason}")]
    WrongDevice {
        /// The device's role: `"main"` or `"db"`.
        device: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// An error the store cannot undo happened (a failed commit or data write): it accepts no
    /// more changes until it is mounted again, which recovers the last committed state. Every
    /// transaction queued after it (and the one that failed) gets this; so does a read of an
    /// object whose changes were lost with the failed commit, and `umount`. Also returned when
    /// the kv-sync thread cannot start. EROFS.
    #[error("the store stopped accepting changes: {reason}")]
    Failed {
        /// The first failure, as the store logged it.
        reason: String,
    },

    /// A blocking call was made on one of the store's reactor threads, where it would wait for
    /// itself. EDEADLK.
    #[error("{call} would block a reactor thread; use the callback form on reactors")]
    WouldBlock {
        /// The method called (`"apply"`, `"read"`, `"stat"`, ...).
        call: &'static str,
    },

    /// The store is unmounting or unmounted: a call through a [`StoreHandle`](crate::StoreHandle)
    /// that outlived its [`Store`](crate::Store), or a reply that never came because the
    /// store's reactors stopped. ESHUTDOWN.
    #[error("the store is unmounting")]
    Unmounting,

    /// RocksDB failed (opening it, a read, a scan or a write outside the commit path). ENOSPC
    /// when RocksDB ran out of space, else EIO.
    #[error(transparent)]
    Kv(#[from] KvError),

    /// BlueFS failed (mkfs, mount, or a file operation). ENOSPC when BlueFS ran out of space,
    /// else EIO.
    #[error(transparent)]
    BlueFs(#[from] BlueFsError),

    /// A device could not be opened, claimed or driven (not a failed command: that is
    /// [`Io`](StoreError::Io) or [`WrongDevice`](StoreError::WrongDevice)). EBUSY when another
    /// store, mkfs or fsck holds the device, else EIO.
    #[error(transparent)]
    Device(#[from] NvmeError),

    /// The store's reactors could not be started or reached. EIO.
    #[error(transparent)]
    Reactor(#[from] ReactorError),
}

impl StoreError {
    /// The errno a POSIX caller would see (positive).
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::NoSuchCollection { .. } | StoreError::NoSuchObject { .. } => libc::ENOENT,
            StoreError::CollectionExists { .. } | StoreError::ObjectExists { .. } => libc::EEXIST,
            StoreError::CollectionNotEmpty { .. } => libc::ENOTEMPTY,
            StoreError::NoSuchAttr { .. } => libc::ENODATA,
            StoreError::NoSpace { .. } | StoreError::Full { .. } => libc::ENOSPC,
            StoreError::InvalidArgument { .. } | StoreError::Config { .. } => libc::EINVAL,
            StoreError::Failed { .. } => libc::EROFS,
            StoreError::WouldBlock { .. } => libc::EDEADLK,
            StoreError::Unmounting => libc::ESHUTDOWN,
            StoreError::Device(NvmeError::Busy { .. }) => libc::EBUSY,
            StoreError::Kv(KvError::NoSpace { .. }) => libc::ENOSPC,
            StoreError::BlueFs(e) if e.is_no_space() => libc::ENOSPC,
            _ => libc::EIO,
        }
    }

    /// Whether the error means "out of space" ([`NoSpace`](StoreError::NoSpace),
    /// [`Full`](StoreError::Full), or RocksDB or BlueFS out of space): ENOSPC.
    pub fn is_no_space(&self) -> bool {
        self.errno() == libc::ENOSPC
    }

    /// Whether the error means "no such collection or object": ENOENT.
    pub fn is_not_found(&self) -> bool {
        self.errno() == libc::ENOENT
    }

    /// A copy for a second callback that reports the same outcome. The variants PREPARE
    /// returns are copied exactly; an error wrapped from a lower layer (not clonable) becomes
    /// `Failed` with its text.
    pub(crate) fn duplicate(&self) -> StoreError {
        use StoreError as E;
        match self {
            E::NoSuchCollection { coll } => E::NoSuchCollection { coll: coll.clone() },
            E::CollectionExists { coll } => E::CollectionExists { coll: coll.clone() },
            E::CollectionNotEmpty { coll } => E::CollectionNotEmpty { coll: coll.clone() },
            E::NoSuchObject { coll, obj } => E::NoSuchObject {
                coll: coll.clone(),
                obj: obj.clone(),
            },
            E::ObjectExists { coll, obj } => E::ObjectExists {
                coll: coll.clone(),
                obj: obj.clone(),
            },
            E::NoSuchAttr { coll, obj, name } => E::NoSuchAttr {
                coll: coll.clone(),
                obj: obj.clone(),
                name: name.clone(),
            },
            &E::NoSpace {
                wanted,
                free,
                reserve,
            } => E::NoSpace {
                wanted,
                free,
                reserve,
            },
            &E::Full {
                used,
                total,
                limit,
                ratio,
            } => E::Full {
                used,
                total,
                limit,
                ratio,
            },
            E::Io {
                coll,
                obj,
                op,
                offset,
                len,
                phys,
                status,
            } => E::Io {
                coll: coll.clone(),
                obj: obj.clone(),
                op,
                offset: *offset,
                len: *len,
                phys: *phys,
                status: *status,
            },
            E::ChecksumMismatch {
                coll,
                obj,
                offset,
                phys,
                expected,
                actual,
            } => E::ChecksumMismatch {
                coll: coll.clone(),
                obj: obj.clone(),
                offset: *offset,
                phys: *phys,
                expected: *expected,
                actual: *actual,
            },
            E::InvalidArgument { reason } => E::InvalidArgument {
                reason: reason.clone(),
            },
            E::Config { reason } => E::Config {
                reason: reason.clone(),
            },
            E::Corrupt { reason } => E::Corrupt {
                reason: reason.clone(),
            },
            E::WrongDevice { device, reason } => E::WrongDevice {
                device,
                reason: reason.clone(),
            },
            E::Failed { reason } => E::Failed {
                reason: reason.clone(),
            },
            E::WouldBlock { call } => E::WouldBlock { call },
            E::Unmounting => E::Unmounting,
            other => E::Failed {
                reason: other.to_string(),
            },
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> StoreError {
        StoreError::InvalidArgument {
            reason: reason.into(),
        }
    }
}

/// The result of every fallible store call.
pub type Result<T> = std::result::Result<T, StoreError>;
