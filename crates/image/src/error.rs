//! Errors of the image layer.

use thiserror::Error;

use bluepoll_store::StoreError;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("no image '{name}'")]
    NoSuchImage { name: String },

    #[error("image '{name}' exists")]
    Exists { name: String },

    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: String },

    #[error("{len} bytes at {offset} reach past the image's end ({size} bytes)")]
    Beyond { offset: u64, len: u64, size: u64 },

    #[error("image header damaged: {reason}")]
    HeaderCorrupt { reason: String },

    /// An object map that does not decode: the image's map is then treated as invalid (every
    /// object may exist) until it is rebuilt.
    #[error("object map damaged{}: {reason}", block.map(|b| format!(" in block {b}")).unwrap_or_default())]
    MapCorrupt { block: Option<u64>, reason: String },

    #[error("image '{image}' has no snapshot '{snap}'")]
    NoSuchSnapshot { image: String, snap: String },

    /// Another client holds the exclusive lock and did not hand it over (or did not start on
    /// the request) in time.
    #[error("image '{name}' is locked by client {owner}, which did not answer in time")]
    LockBusy { name: String, owner: u64 },

    /// The lock owner ran the operation for this client and it failed there.
    #[error("{op} run by the lock owner (client {owner}) failed: {reason}")]
    Proxied {
        op: &'static str,
        owner: u64,
        reason: String,
    },

    /// A write queued earlier (and perhaps already answered) did not reach the store.
    #[error("a queued write to image '{name}' failed")]
    WriteFailed { name: String },

    /// A write acknowledged from the write cache failed afterwards: every flush fails and no
    /// write is taken until the image is opened again (after the store is remounted).
    #[error(
        "image {name}: acknowledged writes were lost ({reason}); remount the store and reopen the image"
    )]
    WritesLost { name: String, reason: String },

    /// The image changed under a read in a way a retry did not settle.
    #[error("conflict: {reason}")]
    Conflict { reason: String },

    #[error("{what} {index} is out of range (there are {limit})")]
    OutOfRange {
        what: &'static str,
        index: u64,
        limit: u64,
    },
}

impl ImageError {
    pub(crate) fn invalid(reason: impl Into<String>) -> ImageError {
        ImageError::InvalidArgument {
            reason: reason.into(),
        }
    }

    /// The errno a block client (NBD) gets for it.
    pub fn errno(&self) -> i32 {
        match self {
            ImageError::Store(e) => e.errno(),
            ImageError::NoSuchImage { .. } | ImageError::NoSuchSnapshot { .. } => libc::ENOENT,
            ImageError::LockBusy { .. } => libc::EBUSY,
            ImageError::Conflict { .. } => libc::EAGAIN,
            ImageError::Proxied { .. }
            | ImageError::WriteFailed { .. }
            | ImageError::WritesLost { .. } => libc::EIO,
            ImageError::Exists { .. } => libc::EEXIST,
            ImageError::InvalidArgument { .. } | ImageError::OutOfRange { .. } => libc::EINVAL,
            ImageError::Beyond { .. } => libc::ENOSPC,
            ImageError::HeaderCorrupt { .. } | ImageError::MapCorrupt { .. } => libc::EIO,
        }
    }
}
