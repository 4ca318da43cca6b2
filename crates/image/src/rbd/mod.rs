//! An image: a header, an object map and fixed-size data objects, all in one collection of the
//! object store (`img.NAME`), so an image's changes commit in order on one shard.
//!
//! Each request is one store transaction: the data change and the map blocks it changes commit
//! together, so the map can never say NONEXISTENT for an object that exists (librbd has to write
//! EXISTS before the data and PENDING before a removal because its map and data are updated
//! separately; here PENDING marks objects a shrinking resize has still to remove).
//!
//! With the exclusive-lock feature only the lock owner writes and trusts its map (another
//! client's copy may be stale, so it reads every object); snapshots and clones are described in
//! [`crate::snapshot`], the lock in [`crate::lock`].
//!
//! Layout: `header` is the header record and the header object's omap (features, size, object
//! order; snapshots, parent link, children), `lifecycle` making, opening and removing images,
//! `view` the read-only views of a snapshot and of a clone's parent, `read` the read path,
//! `write` the write path (write, discard, flush; synchronous, queued and cached), `copy_up`
//! what must happen before an object changes (preserve it for the newest snapshot, or copy it
//! up from the parent), `map` keeping the object map (committing its blocks with the data,
//! undoing refused writes, invalidating and rebuilding it), `locking` the exclusive lock as a
//! client sees it (taking, handing over, proxying maintenance to the owner), `resize`,
//! `snapshots` (create, remove, rollback), `clone` (clone, flatten) and `diff` (fast-diff).

mod clone;
mod copy_up;
mod diff;
mod header;
mod lifecycle;
mod locking;
mod map;
mod read;
mod resize;
mod snapshots;
mod view;
mod write;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::error::ImageError;
use super::lock::{InFlight, LockCell, MapUndo, Transitions};
use super::object_map::ObjectMap;
use super::snapshot::SnapInfo;
use bluepoll_store::StoreHandle;

use self::view::ParentView;

pub use self::clone::clone_image;
pub use self::diff::DiffReport;
pub use self::header::{ImageInfo, features};
pub use self::lifecycle::{create, list, remove};
pub use self::view::SnapView;

/// The object that carries the header record (in an attribute) and the omap of snapshots,
/// parent link and children.
const HEADER_OBJECT: &str = "header";
/// The attribute of [`HEADER_OBJECT`] that holds the [`ImageInfo`] record.
const HEADER_ATTR: &str = "header";
/// The head object map (snapshots' maps are `object_map.SNAPID`).
const MAP_OBJECT: &str = "object_map";
/// An image named NAME lives in the collection `img.NAME`.
const COLLECTION_PREFIX: &str = "img.";
/// Objects removed per transaction while shrinking or removing an image.
const REMOVE_BATCH: usize = 64;

/// Counters of an open image, since it was opened ([`Image::stats`]); each client counts its
/// own requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageStats {
    /// Reads of data objects sent to the store.
    pub object_reads: u64,
    /// Pieces of reads answered with zeros from the map alone.
    pub reads_from_map: u64,
    /// Pieces of reads of a clone answered from its parent (where the parent shows through
    /// and the clone has no object of its own).
    pub parent_reads: u64,
    /// Objects a clone copied up from its parent before their first change (only those
    /// holding something other than zeros).
    pub copy_ups: u64,
    /// Objects preserved for the newest snapshot before their first change after it.
    pub preserved: u64,
    /// Transactions that carried changed map blocks.
    pub map_updates: u64,
    /// Map blocks (4 KiB each) those transactions wrote.
    pub map_blocks_written: u64,
}

/// An open image: one client of it. Reads, writes and maintenance go through it; with the
/// exclusive-lock feature it takes the lock when it first writes (or at once, if nobody holds
/// it) and hands it back when dropped.
pub struct Image {
    store: StoreHandle,
    name: String,
    coll: String,
    info: ImageInfo,
    /// The head map as last loaded or kept; trusted only while this client owns the lock.
    /// None for a shared image, or while the map is invalid.
    map: Option<ObjectMap>,
    /// Set from a store reactor when a queued write failed after PREPARE (its transaction
    /// was applied in memory; only a store failure does this).
    map_suspect: Arc<AtomicBool>,
    /// Map changes of queued writes the store refused at PREPARE, to put back.
    map_undo: Arc<MapUndo>,
    stats: ImageStats,
    /// Oldest first.
    snaps: Vec<SnapInfo>,
    snap_seq: u64,
    parent: Option<ParentView>,
    client: u64,
    /// Some for images with the exclusive-lock feature.
    lock: Option<Arc<LockCell>>,
    owner: bool,
    in_flight: Arc<InFlight>,
    transitions: Arc<Transitions>,
    lock_timeout: Duration,
}

fn collection_of(name: &str) -> String {
    format!("{COLLECTION_PREFIX}{name}")
}

fn data_object(index: u64) -> String {
    format!("data.{index:016x}")
}

fn check_name(name: &str) -> Result<(), ImageError> {
    if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(ImageError::invalid(format!(
            "image name '{}' must be 1 to 200 characters, no '/' or control characters",
            name.escape_debug()
        )));
    }
    Ok(())
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The pieces of `offset..offset + len` for `object_size`-byte objects: (object index, offset
/// in it, length, offset in the request).
fn pieces_of(object_size: u64, offset: u64, len: u64) -> Vec<(u64, u64, u64, usize)> {
    let end = offset + len;
    let mut at = offset;
    let mut out = Vec::new();
    while at < end {
        let index = at / object_size;
        let within = at % object_size;
        let n = (object_size - within).min(end - at);
        out.push((index, within, n, (at - offset) as usize));
        at += n;
    }
    out
}

fn being_removed(image: &str, snap: &str) -> ImageError {
    ImageError::invalid(format!(
        "snapshot '{image}@{snap}' is being removed (a removal began, perhaps cut short): \
         run 'snap rm' again to finish it"
    ))
}
