//! RBD-style block images on the object store (DESIGN §6; issue 8, in progress): images with
//! an object map — create, open, read, write, discard, write-zeroes, resize, remove, list,
//! map rebuild. The exclusive lock, snapshots, clones and the NBD export come next.

pub mod error;
pub mod object_map;
pub mod rbd;

pub use error::ImageError;
pub use object_map::{ObjectMap, ObjectState, diff};
pub use rbd::{Image, ImageInfo, ImageStats, create, features, list, remove};
