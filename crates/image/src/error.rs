//! Errors of the image layer.

use thiserror::Error;

use bluepoll_store::StoreError;

/// What went wrong in an image operation. [`ImageError::errno`] maps each to the errno a block
/// client (NBD) is answered with.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The object store failed or refused the request (no space, a device error, a store that
    /// stopped after a failure, `WouldBlock` from a non-blocking call that would have to wait).
    #[error(transparent)]
    Store(#[from] StoreError),

    /// Opening or removing an image that does not exist (no collection `img.NAME`, or no
    /// header in it): also cloning from one, or opening a clone whose parent is gone.
    #[error("no image '{name}'")]
    NoSuchImage {
        /// The image name asked for.
        name: String,
    },

    /// Making an image, clone or snapshot whose name is taken.
    #[error("image '{name}' exists")]
    Exists {
        /// The name taken: the image's, or `IMAGE@SNAP` for a snapshot.
        name: String,
    },

    /// A request the image cannot take as asked: a bad name, order or feature combination, an
    /// operation the image's features or state do not allow (a snapshot without the object
    /// map, a diff without fast-diff, removing an image with snapshots or a snapshot with
    /// clones, using a snapshot whose removal began).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What was wrong, and what to do about it, for a person to read.
        reason: String,
    },

    /// A read or write of `len` bytes at `offset` reaches past the end of the image (or
    /// snapshot) of `size` bytes; nothing of it was done.
    #[error("{len} bytes at {offset} reach past the image's end ({size} bytes)")]
    Beyond {
        /// Where the request starts, in bytes from the image's start.
        offset: u64,
        /// The request's length in bytes.
        len: u64,
        /// The image's (or snapshot's) size in bytes.
        size: u64,
    },

    /// A record of the header object (the header attribute, a snapshot, the parent link, the
    /// snapshot sequence, a removal mark) failed its length, version or checksum check, or says
    /// something no image can (an unknown feature, an order outside 12..=26).
    #[error("image header damaged: {reason}")]
    HeaderCorrupt {
        /// Which record and which check, e.g. "snapshot record: checksum mismatch (...)".
        reason: String,
    },

    /// An object map that does not decode: the image's map is then treated as invalid (every
    /// object may exist) until it is rebuilt.
    #[error("object map damaged{}: {reason}", block.map(|b| format!(" in block {b}")).unwrap_or_default())]
    MapCorrupt {
        /// The 4 KiB map block that failed its checks; None when the map's length is wrong
        /// for the image's object count.
        block: Option<u64>,
        /// Which check failed.
        reason: String,
    },

    /// Opening, removing, rolling back to, cloning from or diffing a snapshot the image does
    /// not have (or, for a clone, a parent snapshot that is gone).
    #[error("image '{image}' has no snapshot '{snap}'")]
    NoSuchSnapshot {
        /// The image's name.
        image: String,
        /// The snapshot's name, or `#ID` when it was looked up by id (a clone's parent).
        snap: String,
    },

    /// Another client holds the exclusive lock and did not hand it over (or did not start on
    /// the request) in time; also returned by [`crate::remove`] while any client holds it.
    #[error("image '{name}' is locked by client {owner}, which did not answer in time")]
    LockBusy {
        /// The image's name.
        name: String,
        /// The client id (as [`crate::Image::client_id`] reports it) of the owner, or of the
        /// client first in line when the lock was between owners; 0 when nobody owned it at
        /// the deadline.
        owner: u64,
    },

    /// The lock owner ran the operation for this client and it failed there.
    #[error("{op} run by the lock owner (client {owner}) failed: {reason}")]
    Proxied {
        /// The operation, as [`crate::MaintenanceOp::name`] names it ("resize", "snap create",
        /// ...).
        op: &'static str,
        /// The client id of the owner that ran it.
        owner: u64,
        /// The owner's error, as text (it does not cross clients as a value).
        reason: String,
    },

    /// A write queued earlier (and perhaps already answered) did not reach the store: what
    /// [`crate::Image::flush`] returns after a queued write failed since the previous flush.
    #[error("a queued write to image '{name}' failed")]
    WriteFailed {
        /// The image's name.
        name: String,
    },

    /// A write acknowledged from the write cache failed afterwards: every flush fails and no
    /// write is taken until the image is opened again (after the store is remounted).
    #[error(
        "image {name}: acknowledged writes were lost ({reason}); remount the store and reopen the image"
    )]
    WritesLost {
        /// The image's name.
        name: String,
        /// The first such failure, as the store reported it.
        reason: String,
    },

    /// The image changed under a read in a way a retry did not settle (a snapshot removal kept
    /// moving a preserved copy), or a clone's read could not start a thread to read its parent.
    #[error("conflict: {reason}")]
    Conflict {
        /// What moved, or what could not be started.
        reason: String,
    },

    /// An index past the end of what it indexes (an object map entry past the image's last
    /// object).
    #[error("{what} {index} is out of range (there are {limit})")]
    OutOfRange {
        /// What was indexed, e.g. "object map entry".
        what: &'static str,
        /// The index asked for.
        index: u64,
        /// How many there are (valid indices are `0..limit`).
        limit: u64,
    },
}

impl ImageError {
    pub(crate) fn invalid(reason: impl Into<String>) -> ImageError {
        ImageError::InvalidArgument {
            reason: reason.into(),
        }
    }

    /// The errno a block client (NBD) gets for it: ENOENT for a missing image or snapshot,
    /// EBUSY for a busy lock, EAGAIN for a conflict, EEXIST, EINVAL, ENOSPC for a range past
    /// the end, EIO for damage and lost or failed writes, the store's own for a store error.
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
