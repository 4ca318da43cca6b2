//! Errors of the object store: values with the object, extent and reason, each with the errno
//! a POSIX-minded caller expects.

use bluepoll_bluefs::BlueFsError;
use bluepoll_kv::KvError;
use bluepoll_nvme::{NvmeError, Status};
use bluepoll_reactor::ReactorError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("collection '{coll}' does not exist")]
    NoSuchCollection { coll: String },

    #[error("collection '{coll}' already exists")]
    CollectionExists { coll: String },

    #[error("collection '{coll}' is not empty")]
    CollectionNotEmpty { coll: String },

    #[error("object '{obj}' does not exist in collection '{coll}'")]
    NoSuchObject { coll: String, obj: String },

    #[error("object '{obj}' already exists in collection '{coll}'")]
    ObjectExists { coll: String, obj: String },

    #[error("object '{obj}' in '{coll}' has no attribute '{name}'")]
    NoSuchAttr {
        coll: String,
        obj: String,
        name: String,
    },

    /// The main device cannot give `wanted` bytes without eating into the space kept for
    /// BlueFS and RocksDB (`reserve`).
    #[error(
        "no space: {wanted} bytes wanted, {free} free beyond the {reserve}-byte reserve kept for the metadata store"
    )]
    NoSpace {
        wanted: u64,
        free: u64,
        reserve: u64,
    },

    /// The transaction would use more space while the main device is past the full ratio
    /// (overwrites that free as much as they take, and deletes, still go through).
    #[error(
        "store full: {used} of {total} bytes in use, past the full ratio {ratio} ({limit} bytes); only overwrites and deletes are taken"
    )]
    Full {
        used: u64,
        total: u64,
        limit: u64,
        ratio: f64,
    },

    /// A device command on an object's data failed.
    #[error(
        "I/O error on '{coll}/{obj}': {op} of {len} bytes at object offset {offset} (device byte {phys}): {status}"
    )]
    Io {
        coll: String,
        obj: String,
        op: &'static str,
        offset: u64,
        len: u64,
        phys: u64,
        status: Status,
    },

    /// Data read back does not match the checksum recorded when it was written.
    #[error(
        "checksum mismatch in '{coll}/{obj}' at object offset {offset} (device byte {phys}): stored {expected:#010x}, read {actual:#010x}"
    )]
    ChecksumMismatch {
        coll: String,
        obj: String,
        offset: u64,
        phys: u64,
        expected: u32,
        actual: u32,
    },

    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: String },

    #[error("invalid configuration: {reason}")]
    Config { reason: String },

    /// Metadata read from the devices does not decode or contradicts itself.
    #[error("corrupt metadata: {reason}")]
    Corrupt { reason: String },

    /// The devices do not make up a store, or not this one.
    #[error("{device} device: {reason}")]
    WrongDevice {
        device: &'static str,
        reason: String,
    },

    /// An error the store cannot undo happened (a failed commit or data write): it accepts no
    /// more changes until it is mounted again, which recovers the last committed state.
    #[error("the store stopped accepting changes: {reason}")]
    Failed { reason: String },

    /// A blocking call was made on one of the store's reactor threads, where it would wait for
    /// itself.
    #[error("{call} would block a reactor thread; use the callback form on reactors")]
    WouldBlock { call: &'static str },

    #[error("the store is unmounting")]
    Unmounting,

    #[error(transparent)]
    Kv(#[from] KvError),

    #[error(transparent)]
    BlueFs(#[from] BlueFsError),

    #[error(transparent)]
    Device(#[from] NvmeError),

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

    pub fn is_no_space(&self) -> bool {
        self.errno() == libc::ENOSPC
    }

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

pub type Result<T> = std::result::Result<T, StoreError>;
