//! RBD-style block images on the object store (docs/image.md): images with a 2-bit object map,
//! an exclusive lock with handover and proxied maintenance, snapshots (create, list, remove,
//! rollback) with a map each, fast-diff, clones with copy-up and flatten; and [`nbd`], the NBD
//! server that exports them.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod error;
pub mod lock;
pub mod nbd;
pub mod object_map;
pub mod rbd;
pub mod snapshot;

pub use error::ImageError;
pub use lock::{FlushWaiter, LockEvent, LockWaiter, MaintenanceOp, OpUpdate};
pub use object_map::{ObjectMap, ObjectState, diff};
pub use rbd::{
    DiffReport, Image, ImageInfo, ImageStats, SnapView, clone_image, create, features, list, remove,
};
pub use snapshot::{DiffExtent, ParentLink, SnapInfo};
