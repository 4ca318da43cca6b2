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
//! `snapshot.rs`, the lock in `lock.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::ImageError;
use super::lock::{
    Acquire, FlushWaiter, InFlight, LockCell, LockEvent, LockRequest, LockWaiter, MaintenanceOp,
    MapUndo, OpUpdate, RefusedWrite, StateChange, Transitions,
};
use super::object_map::{MAP_BLOCK, ObjectMap, ObjectState};
use super::snapshot::{
    CHILD_KEY_PREFIX, DiffExtent, PARENT_KEY, ParentLink, REMOVING_KEY_PREFIX, SNAP_KEY_PREFIX,
    SNAP_SEQ_KEY, SnapInfo, changed_objects, child_key, decode_seq, encode_child, encode_seq,
    extents_of, preserved_object, removing_key, snap_key, snap_map_object,
};
use bluepoll_store::{StoreError, StoreHandle, Transaction};

const HEADER_OBJECT: &str = "header";
const HEADER_ATTR: &str = "header";
const MAP_OBJECT: &str = "object_map";
const COLLECTION_PREFIX: &str = "img.";
const HEADER_VERSION: u8 = 1;
const HEADER_LEN: usize = 32;
/// Objects removed per transaction while shrinking or removing an image.
const REMOVE_BATCH: usize = 64;

/// Image features (bits of the header's feature word).
pub mod features {
    pub const OBJECT_MAP: u32 = 1;
    pub const EXCLUSIVE_LOCK: u32 = 2;
    pub const FAST_DIFF: u32 = 4;
    /// Several writers at once: no object map can be kept.
    pub const SHARED: u32 = 8;
    pub const ALL: u32 = OBJECT_MAP | EXCLUSIVE_LOCK | FAST_DIFF | SHARED;
    pub const DEFAULT: u32 = OBJECT_MAP | EXCLUSIVE_LOCK | FAST_DIFF;
}

/// Header flags.
const FLAG_MAP_INVALID: u32 = 1;

/// What an image is (its header record; docs/format.md, "Image header").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub size: u64,
    /// Data objects are `1 << order` bytes.
    pub order: u8,
    pub features: u32,
    pub flags: u32,
    pub created_ns: u64,
}

impl ImageInfo {
    pub fn object_size(&self) -> u64 {
        1 << self.order
    }

    pub fn objects(&self) -> u64 {
        self.size.div_ceil(self.object_size())
    }

    pub fn has_object_map(&self) -> bool {
        self.features & features::OBJECT_MAP != 0
    }

    pub fn map_invalid(&self) -> bool {
        self.flags & FLAG_MAP_INVALID != 0
    }

    /// The header record as stored (docs/format.md, image header).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN);
        b.push(HEADER_VERSION);
        b.push(self.order);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.features.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.created_ns.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads a stored header record, checking its length, version and checksum.
    pub fn decode(b: &[u8]) -> Result<ImageInfo, ImageError> {
        let bad = |reason: String| ImageError::HeaderCorrupt { reason };
        if b.len() != HEADER_LEN {
            return Err(bad(format!("{} bytes, not {HEADER_LEN}", b.len())));
        }
        let stored = u32::from_le_bytes(b[28..32].try_into().expect("4"));
        let computed = crc32c::crc32c(&b[..28]);
        if stored != computed {
            return Err(bad(format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            )));
        }
        if b[0] != HEADER_VERSION {
            return Err(bad(format!("unknown version {}", b[0])));
        }
        if b[2..4] != [0, 0] {
            return Err(bad("reserved bytes are not zero".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
        let info = ImageInfo {
            order: b[1],
            features: u32_at(4),
            flags: u32_at(8),
            size: u64_at(12),
            created_ns: u64_at(20),
        };
        check_layout(info.order, info.features).map_err(|e| bad(e.to_string()))?;
        Ok(info)
    }
}

fn check_layout(order: u8, features: u32) -> Result<(), ImageError> {
    if !(12..=26).contains(&order) {
        return Err(ImageError::invalid(format!(
            "object order {order} is outside 12..=26 (4 KiB to 64 MiB objects)"
        )));
    }
    if features & !features::ALL != 0 {
        return Err(ImageError::invalid(format!(
            "unknown features {features:#x}"
        )));
    }
    if features & features::SHARED != 0
        && features & (features::OBJECT_MAP | features::FAST_DIFF) != 0
    {
        return Err(ImageError::invalid(
            "a shared image keeps no object map (several writers cannot agree on one)",
        ));
    }
    if features & features::FAST_DIFF != 0 && features & features::OBJECT_MAP == 0 {
        return Err(ImageError::invalid("fast-diff needs the object map"));
    }
    if features & features::OBJECT_MAP != 0 && features & features::EXCLUSIVE_LOCK == 0 {
        return Err(ImageError::invalid(
            "the object map needs the exclusive lock (only one owner can keep it true)",
        ));
    }
    Ok(())
}

/// How long a client waits, by default, for the owner to hand the lock over, or to start on an
/// operation it was asked to run.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of an open image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageStats {
    /// Reads of data objects sent to the store.
    pub object_reads: u64,
    /// Pieces of reads answered with zeros from the map alone.
    pub reads_from_map: u64,
    /// Reads of a clone answered from its parent, and objects copied up from it.
    pub parent_reads: u64,
    pub copy_ups: u64,
    /// Objects preserved for the newest snapshot before their first change after it.
    pub preserved: u64,
    /// Transactions that changed map blocks, and the blocks they wrote.
    pub map_updates: u64,
    pub map_blocks_written: u64,
}

/// What `diff` found, and what it took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffReport {
    pub extents: Vec<DiffExtent>,
    /// Objects that changed.
    pub objects_changed: u64,
    /// Object maps read (each a few blocks) and data objects read (fast-diff reads none).
    pub maps_read: u64,
    pub data_objects_read: u64,
}

/// An open image.
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

/// The parent a clone reads the objects it has not written from.
struct ParentView {
    link: ParentLink,
    /// Shared with the callbacks of asynchronous reads that find an object missing.
    view: Arc<SnapView>,
}

/// An image as a snapshot of it saw it: read-only.
pub struct SnapView {
    store: StoreHandle,
    image: String,
    coll: String,
    snap: SnapInfo,
    order: u8,
    map: ObjectMap,
    parent: Option<ParentView>,
}

/// The pieces of one asynchronous read coming together.
struct Gather {
    out: Vec<u8>,
    left: usize,
    error: Option<ImageError>,
    done: Option<OnImageRead>,
}

/// Called with an asynchronous read's bytes.
type OnImageRead = Box<dyn FnOnce(Result<Vec<u8>, ImageError>) + Send>;

impl Gather {
    /// One piece of the read is in (`bytes` go at `at`; shorter than asked, the rest stays
    /// zeros); the last one answers.
    fn piece(gather: &Mutex<Gather>, at: usize, bytes: Result<Vec<u8>, ImageError>) {
        let mut state = bluepoll_base::sync::lock(gather);
        match bytes {
            Ok(bytes) => state.out[at..at + bytes.len()].copy_from_slice(&bytes),
            Err(e) => {
                state.error.get_or_insert(e);
            }
        }
        state.left -= 1;
        let last = state.left == 0;
        drop(state);
        if last {
            Gather::finish(gather);
        }
    }

    fn finish(gather: &Mutex<Gather>) {
        let mut state = bluepoll_base::sync::lock(gather);
        let result = match state.error.take() {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut state.out)),
        };
        let done = state.done.take();
        drop(state);
        if let Some(done) = done {
            done(result);
        }
    }
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

fn check_snap_name(name: &str) -> Result<(), ImageError> {
    if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control()) {
        return Err(ImageError::invalid(format!(
            "snapshot name '{}' must be 1 to 200 characters, no control characters",
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

/// The images of a store, by name.
pub fn list(store: &StoreHandle) -> Result<Vec<String>, ImageError> {
    let mut names: Vec<String> = store
        .list_collections()?
        .into_iter()
        .filter_map(|c| c.strip_prefix(COLLECTION_PREFIX).map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// The transaction that makes an image's collection, header and (empty) map.
fn creation(name: &str, info: &ImageInfo) -> Transaction {
    let mut t = Transaction::new(collection_of(name));
    t.create_collection()
        .touch(HEADER_OBJECT)
        .setattr(HEADER_OBJECT, HEADER_ATTR, info.encode());
    if info.has_object_map() {
        let mut map = ObjectMap::new(info.objects());
        t.touch(MAP_OBJECT);
        write_map_blocks(&mut t, &mut map, MAP_OBJECT);
    }
    t
}

/// Makes an image of `size` bytes with `1 << order`-byte objects.
pub fn create(
    store: &StoreHandle,
    name: &str,
    size: u64,
    order: u8,
    features: u32,
) -> Result<ImageInfo, ImageError> {
    check_name(name)?;
    check_layout(order, features)?;
    if store.collection_exists(&collection_of(name))? {
        return Err(ImageError::Exists { name: name.into() });
    }
    let info = ImageInfo {
        size,
        order,
        features,
        flags: 0,
        created_ns: now_ns(),
    };
    store.apply(creation(name, &info))?;
    Ok(info)
}

/// Makes `child`, a clone of `parent` at its snapshot `snap`: it starts with the snapshot's size
/// and reads what it has not written from the snapshot; its first write to an object copies the
/// object up. The snapshot cannot be removed while the clone links to it.
pub fn clone_image(
    store: &StoreHandle,
    parent: &str,
    snap: &str,
    child: &str,
    features: u32,
) -> Result<ImageInfo, ImageError> {
    check_name(child)?;
    let parent_image = Image::open(store, parent)?;
    if features & features::OBJECT_MAP == 0 {
        return Err(ImageError::invalid(
            "a clone needs the object map (it tells copied-up objects from the parent's)",
        ));
    }
    check_layout(parent_image.info.order, features)?;
    let s = parent_image.snap(snap)?.clone();
    if store.collection_exists(&collection_of(child))? {
        return Err(ImageError::Exists { name: child.into() });
    }
    let info = ImageInfo {
        size: s.size,
        order: parent_image.info.order,
        features,
        flags: 0,
        created_ns: now_ns(),
    };
    // Nothing may remove the snapshot between the check and the link.
    let catalog = super::lock::catalog(store.fsid());
    let _linking = bluepoll_base::sync::lock(&catalog);
    let now = Meta::load(store, &collection_of(parent))?;
    match now.snaps.iter().find(|x| x.id == s.id) {
        None => {
            return Err(ImageError::NoSuchSnapshot {
                image: parent.into(),
                snap: snap.into(),
            });
        }
        Some(x) if x.removing => return Err(being_removed(parent, snap)),
        Some(_) => {}
    }
    // The parent's record of its child goes first: a crash in between leaves a record `snap rm`
    // recognises as stale, never a clone its parent does not know.
    let mut t = Transaction::new(collection_of(parent));
    t.omap_setkey(HEADER_OBJECT, &child_key(s.id, child), &encode_child());
    store.apply(t)?;
    let mut t = creation(child, &info);
    let link = ParentLink {
        image: parent.into(),
        snap: s.id,
        overlap: s.size,
    };
    t.omap_setkey(HEADER_OBJECT, PARENT_KEY, &link.encode());
    store.apply(t)?;
    Ok(info)
}

/// Removes an image and all its objects (in batches; a crash leaves a smaller image to remove
/// again). An image with snapshots, or one another client holds the lock of, is not removed.
pub fn remove(store: &StoreHandle, name: &str) -> Result<(), ImageError> {
    check_name(name)?;
    let coll = collection_of(name);
    if !store.collection_exists(&coll)? {
        return Err(ImageError::NoSuchImage { name: name.into() });
    }
    let meta = Meta::load(store, &coll)?;
    if let Some(s) = meta.snaps.first() {
        return Err(ImageError::invalid(format!(
            "image '{name}' has {} snapshot(s) ('{}' first): remove them first",
            meta.snaps.len(),
            s.name
        )));
    }
    if let Some(owner) = super::lock::cell(store.fsid(), name).owner() {
        return Err(ImageError::LockBusy {
            name: name.into(),
            owner,
        });
    }
    loop {
        let objects = store.list_objects(&coll, None, REMOVE_BATCH)?;
        if objects.is_empty() {
            break;
        }
        let mut t = Transaction::new(&coll);
        for o in &objects {
            t.remove(o);
        }
        store.apply(t)?;
    }
    let mut t = Transaction::new(&coll);
    t.remove_collection();
    store.apply(t)?;
    if let Some(link) = meta.parent {
        let parent_coll = collection_of(&link.image);
        if store.collection_exists(&parent_coll)? {
            let mut t = Transaction::new(&parent_coll);
            t.omap_rmkeys(HEADER_OBJECT, vec![child_key(link.snap, name)]);
            store.apply(t)?;
        }
    }
    Ok(())
}

/// Queues the blocks of `map` changed since the last call into `t` (as `object`); returns
/// their indices.
fn write_map_blocks(t: &mut Transaction, map: &mut ObjectMap, object: &str) -> Vec<u64> {
    let dirty = map.take_dirty();
    let mut written = Vec::with_capacity(dirty.len());
    for (index, block) in dirty {
        t.write(object, index * MAP_BLOCK as u64, block);
        written.push(index);
    }
    written
}

/// When a write is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteAck {
    /// Once durable.
    Durable,
    /// Once the store has taken it (a volatile write cache; a flush makes it durable).
    Accepted,
}

fn load_header(store: &StoreHandle, coll: &str, name: &str) -> Result<ImageInfo, ImageError> {
    match store.getattr(coll, HEADER_OBJECT, HEADER_ATTR) {
        Ok(h) => ImageInfo::decode(&h),
        Err(StoreError::NoSuchCollection { .. }) | Err(StoreError::NoSuchObject { .. }) => {
            Err(ImageError::NoSuchImage { name: name.into() })
        }
        Err(e) => Err(e.into()),
    }
}

fn load_map(
    store: &StoreHandle,
    coll: &str,
    object: &str,
    objects: u64,
) -> Result<ObjectMap, ImageError> {
    let len = ObjectMap::new(objects).blocks() * MAP_BLOCK as u64;
    let bytes = store.read(coll, object, 0, len)?;
    ObjectMap::decode(&bytes, objects)
}

/// What the header object's omap says: snapshots, the snapshot sequence, the parent, children.
struct Meta {
    snaps: Vec<SnapInfo>,
    seq: u64,
    parent: Option<ParentLink>,
    /// (snapshot id, child image name).
    children: Vec<(u64, String)>,
}

impl Meta {
    fn load(store: &StoreHandle, coll: &str) -> Result<Meta, ImageError> {
        let omap: BTreeMap<Vec<u8>, Vec<u8>> = store.omap_get(coll, HEADER_OBJECT)?;
        let mut meta = Meta {
            snaps: Vec::new(),
            seq: 0,
            parent: None,
            children: Vec::new(),
        };
        let mut removing = Vec::new();
        for (key, value) in &omap {
            if key.as_slice() == SNAP_SEQ_KEY {
                meta.seq = decode_seq(value)?;
            } else if key.as_slice() == PARENT_KEY {
                meta.parent = Some(ParentLink::decode(value)?);
            } else if key.starts_with(SNAP_KEY_PREFIX.as_bytes()) {
                meta.snaps.push(SnapInfo::decode(value)?);
            } else if let Some(rest) = key.strip_prefix(REMOVING_KEY_PREFIX.as_bytes()) {
                let id = decode_seq(value)?;
                if rest != format!("{id:016x}").as_bytes() {
                    return Err(ImageError::HeaderCorrupt {
                        reason: format!(
                            "removal mark {} names snapshot {id}",
                            String::from_utf8_lossy(key)
                        ),
                    });
                }
                removing.push(id);
            } else if let Some(rest) = key.strip_prefix(CHILD_KEY_PREFIX.as_bytes()) {
                let text = String::from_utf8_lossy(rest);
                if let Some((id, child)) = text.split_once('.')
                    && let Ok(id) = u64::from_str_radix(id, 16)
                {
                    meta.children.push((id, child.to_string()));
                }
            }
        }
        meta.snaps.sort_by_key(|s| s.id);
        for s in meta.snaps.iter_mut() {
            s.removing = removing.contains(&s.id);
        }
        Ok(meta)
    }
}

fn being_removed(image: &str, snap: &str) -> ImageError {
    ImageError::invalid(format!(
        "snapshot '{image}@{snap}' is being removed (a removal began, perhaps cut short): \
         run 'snap rm' again to finish it"
    ))
}

/// Object `index` of the image in `coll` as snapshot `snap` saw it — the first copy preserved
/// for a snapshot at or after it, else the head object — or None if neither exists. Retries
/// when a concurrent snapshot removal moves the copy between the lookup and the read.
fn read_object_at(
    store: &StoreHandle,
    coll: &str,
    index: u64,
    snap: u64,
    within: u64,
    len: u64,
) -> Result<Option<Vec<u8>>, ImageError> {
    let prefix = format!("data.{index:016x}@");
    for _ in 0..4 {
        let after = preserved_object(index, snap.saturating_sub(1));
        let next = store.list_objects(coll, Some(&after), 1)?;
        let name = match next.first() {
            Some(n) if n.starts_with(&prefix) => n.clone(),
            _ => data_object(index),
        };
        match store.read(coll, &name, within, len) {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(e) if e.is_not_found() && name == data_object(index) => return Ok(None),
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ImageError::Conflict {
        reason: format!("object {index} kept moving while it was read at snapshot {snap}"),
    })
}

impl ParentView {
    fn open(store: &StoreHandle, link: ParentLink, depth: u32) -> Result<ParentView, ImageError> {
        if depth > 16 {
            return Err(ImageError::invalid(format!(
                "clone chain deeper than 16 at '{}'",
                link.image
            )));
        }
        let view = SnapView::open_id(store, &link.image, link.snap, depth + 1)?;
        Ok(ParentView {
            link,
            view: Arc::new(view),
        })
    }

    /// Fills `out` with the parent's bytes at `offset`, as far as `overlap` reaches.
    fn read_into(&self, overlap: u64, offset: u64, out: &mut [u8]) -> Result<(), ImageError> {
        let overlap = overlap.min(self.link.overlap);
        if offset >= overlap {
            return Ok(());
        }
        let n = ((overlap - offset) as usize).min(out.len());
        self.view.read_into(offset, &mut out[..n])
    }
}

impl SnapView {
    fn open_id(
        store: &StoreHandle,
        image: &str,
        id: u64,
        depth: u32,
    ) -> Result<SnapView, ImageError> {
        let coll = collection_of(image);
        let info = load_header(store, &coll, image)?;
        let meta = Meta::load(store, &coll)?;
        let snap = meta
            .snaps
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .ok_or_else(|| ImageError::NoSuchSnapshot {
                image: image.into(),
                snap: format!("#{id}"),
            })?;
        if snap.removing {
            return Err(being_removed(image, &snap.name));
        }
        let map = load_map(
            store,
            &coll,
            &snap_map_object(id),
            snap.size.div_ceil(info.object_size()),
        )?;
        let parent = match meta.parent {
            Some(link) if snap.parent_overlap > 0 => Some(ParentView::open(store, link, depth)?),
            _ => None,
        };
        Ok(SnapView {
            store: store.clone(),
            image: image.into(),
            coll,
            snap,
            order: info.order,
            map,
            parent,
        })
    }

    pub fn image(&self) -> &str {
        &self.image
    }

    pub fn info(&self) -> &SnapInfo {
        &self.snap
    }

    pub fn object_map(&self) -> &ObjectMap {
        &self.map
    }

    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, ImageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.snap.size => {}
            _ => {
                return Err(ImageError::Beyond {
                    offset,
                    len,
                    size: self.snap.size,
                });
            }
        }
        let mut out = vec![0u8; len as usize];
        self.read_into(offset, &mut out)?;
        // A removal that began meanwhile may have taken copies this read needed (it would then
        // have read the head instead): its mark is committed before the first copy goes, so
        // checking for it after the read tells.
        let keys = vec![removing_key(self.snap.id), snap_key(self.snap.id)];
        let found = self
            .store
            .omap_get_values(&self.coll, HEADER_OBJECT, &keys)?;
        if found.len() != 1 || !found.contains_key(&keys[1]) {
            return Err(being_removed(&self.image, &self.snap.name));
        }
        Ok(out)
    }

    fn read_into(&self, offset: u64, out: &mut [u8]) -> Result<(), ImageError> {
        let object_size = 1u64 << self.order;
        for (index, within, n, at) in pieces_of(object_size, offset, out.len() as u64) {
            let piece = &mut out[at..at + n as usize];
            let found = if self.map.get(index).may_exist() {
                read_object_at(&self.store, &self.coll, index, self.snap.id, within, n)?
            } else {
                None
            };
            match (found, &self.parent) {
                (Some(bytes), _) => piece[..bytes.len()].copy_from_slice(&bytes),
                (None, Some(p)) => p.read_into(
                    self.snap.parent_overlap,
                    index * object_size + within,
                    piece,
                )?,
                (None, None) => {}
            }
        }
        Ok(())
    }
}

impl Image {
    pub fn open(store: &StoreHandle, name: &str) -> Result<Image, ImageError> {
        check_name(name)?;
        let coll = collection_of(name);
        let info = load_header(store, &coll, name)?;
        let lock = (info.features & features::EXCLUSIVE_LOCK != 0)
            .then(|| super::lock::cell(store.fsid(), name));
        let mut image = Image {
            store: store.clone(),
            name: name.into(),
            coll,
            info,
            map: None,
            map_suspect: Arc::new(AtomicBool::new(false)),
            map_undo: Arc::new(MapUndo::default()),
            stats: ImageStats::default(),
            snaps: Vec::new(),
            snap_seq: 0,
            parent: None,
            client: super::lock::new_client_id(),
            lock,
            owner: false,
            in_flight: Arc::new(InFlight::default()),
            transitions: Arc::new(Transitions::default()),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        };
        image.refresh()?;
        // The first client takes the lock at once (most images have one client, which then
        // answers reads of unwritten space from its map); later ones ask for it when they
        // write.
        if let Some(cell) = image.lock.clone()
            && matches!(cell.try_acquire(image.client), Acquire::Acquired)
        {
            image.owner = true;
            // What was loaded before the lock was taken may predate the last owner's changes.
            if let Err(e) = image.refresh() {
                image.owner = false;
                cell.release(image.client);
                return Err(e);
            }
        }
        Ok(image)
    }

    /// Reloads the header, snapshots, parent link and object map from the store (what another
    /// client may have changed); the lock owner does this when it takes the lock.
    pub fn refresh(&mut self) -> Result<(), ImageError> {
        self.info = load_header(&self.store, &self.coll, &self.name)?;
        let meta = Meta::load(&self.store, &self.coll)?;
        self.snaps = meta.snaps;
        self.snap_seq = meta.seq;
        if self.parent.as_ref().map(|p| &p.link) != meta.parent.as_ref() {
            self.parent = match meta.parent {
                Some(link) => Some(ParentView::open(&self.store, link, 0)?),
                None => None,
            };
        }
        self.map = None;
        if self.info.has_object_map() && !self.info.map_invalid() {
            match load_map(&self.store, &self.coll, MAP_OBJECT, self.info.objects()) {
                Ok(map) => self.map = Some(map),
                // Every object may exist from now on, until `rebuild_object_map`.
                // Only the owner may say so in the header: another client may have read the
                // map mid-change (a shrink truncating it) and hold a stale header.
                Err(ImageError::MapCorrupt { .. }) if self.lock.is_some() && !self.owner => {}
                Err(e @ ImageError::MapCorrupt { .. }) => self.invalidate_map(&e.to_string())?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store the image lives in.
    pub fn store(&self) -> &StoreHandle {
        &self.store
    }

    /// The store shard (and reactor) that serves the image's objects.
    pub fn shard(&self) -> usize {
        self.store.shard_of(&self.coll)
    }

    pub fn info(&self) -> ImageInfo {
        self.info
    }

    pub fn stats(&self) -> ImageStats {
        self.stats
    }

    /// Snapshots, oldest first (as of the last refresh for a client that does not own the lock).
    pub fn snapshots(&self) -> &[SnapInfo] {
        &self.snaps
    }

    pub fn parent(&self) -> Option<&ParentLink> {
        self.parent.as_ref().map(|p| &p.link)
    }

    /// Snapshot `name`, unless it is missing or being removed.
    fn snap(&self, name: &str) -> Result<&SnapInfo, ImageError> {
        let snap = self.snaps.iter().find(|s| s.name == name).ok_or_else(|| {
            ImageError::NoSuchSnapshot {
                image: self.name.clone(),
                snap: name.into(),
            }
        })?;
        if snap.removing {
            return Err(being_removed(&self.name, name));
        }
        Ok(snap)
    }

    /// The image as snapshot `name` saw it.
    pub fn snapshot(&self, name: &str) -> Result<SnapView, ImageError> {
        let id = self.snap(name)?.id;
        SnapView::open_id(&self.store, &self.name, id, 0)
    }

    /// The object map, when this client may trust it: the image keeps a valid one and this
    /// client owns the lock.
    pub fn object_map(&self) -> Option<&ObjectMap> {
        if self.lock.is_some() && !self.owner {
            return None;
        }
        self.map.as_ref()
    }

    /// The object map as this client last loaded or kept it (for inspection: another client
    /// that owns the lock may have changed it since).
    pub fn loaded_object_map(&self) -> Option<&ObjectMap> {
        self.map.as_ref()
    }

    fn invalidate_map(&mut self, why: &str) -> Result<(), ImageError> {
        log::warn!("bluepoll image {}: object map invalid: {why}", self.name);
        self.map = None;
        self.info.flags |= FLAG_MAP_INVALID;
        let mut t = Transaction::new(&self.coll);
        t.setattr(HEADER_OBJECT, HEADER_ATTR, self.info.encode());
        self.store.apply(t)?;
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.info.size => Ok(()),
            _ => Err(ImageError::Beyond {
                offset,
                len,
                size: self.info.size,
            }),
        }
    }

    fn pieces(&self, offset: u64, len: u64) -> Vec<(u64, u64, u64, usize)> {
        pieces_of(self.info.object_size(), offset, len)
    }

    /// Whether the map says the object may exist (without a trusted map: maybe).
    fn may_exist(&self, index: u64) -> bool {
        self.object_map().is_none_or(|m| m.get(index).may_exist())
    }

    /// How far the parent shows through (0 for an image that is not a clone).
    fn overlap(&self) -> u64 {
        self.parent
            .as_ref()
            .map_or(0, |p| p.link.overlap.min(self.info.size))
    }

    fn parent_covers(&self, index: u64) -> bool {
        index * self.info.object_size() < self.overlap()
    }

    /// Fills `out` (image bytes at `offset`) from the parent where it shows through.
    fn read_parent(&mut self, offset: u64, out: &mut [u8]) -> Result<(), ImageError> {
        let overlap = self.overlap();
        match &self.parent {
            Some(p) if offset < overlap => {
                self.stats.parent_reads += 1;
                p.read_into(overlap, offset, out)
            }
            _ => {
                self.stats.reads_from_map += 1;
                Ok(())
            }
        }
    }

    pub fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, ImageError> {
        self.check_range(offset, len)?;
        self.serve_lock_requests()?;
        let mut out = vec![0u8; len as usize];
        let object_size = self.info.object_size();
        for (index, within, n, at) in self.pieces(offset, len) {
            let piece = &mut out[at..at + n as usize];
            if self.may_exist(index) {
                self.stats.object_reads += 1;
                match self.store.read(&self.coll, &data_object(index), within, n) {
                    // Short: the object ends sooner; the rest reads as zeros.
                    Ok(bytes) => {
                        piece[..bytes.len()].copy_from_slice(&bytes);
                        continue;
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.read_parent(index * object_size + within, piece)?;
        }
        Ok(out)
    }

    /// Applies `t` with the map blocks `map` changed; the in-memory map follows only if the
    /// transaction commits.
    fn commit(&mut self, mut t: Transaction, map: Option<ObjectMap>) -> Result<(), ImageError> {
        let mut map = map;
        if let Some(m) = map.as_mut() {
            let blocks = write_map_blocks(&mut t, m, MAP_OBJECT).len() as u64;
            if blocks > 0 {
                self.stats.map_updates += 1;
                self.stats.map_blocks_written += blocks;
            }
        }
        if t.is_empty() {
            return Ok(());
        }
        self.store.apply(t)?;
        if map.is_some() {
            self.map = map;
        }
        Ok(())
    }

    /// Starts a read; `done` gets the bytes on a store reactor (it must not block), or on a
    /// thread of its own when a clone with an untrusted map finds an object missing and reads
    /// the parent for it. Reads see every request queued before them. What a clone reads from
    /// its parent by its map is read at once.
    pub fn read_async(
        &mut self,
        offset: u64,
        len: u64,
        done: impl FnOnce(Result<Vec<u8>, ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        self.check_range(offset, len)?;
        let mut out = vec![0u8; len as usize];
        let mut wanted = Vec::new();
        let object_size = self.info.object_size();
        for (index, within, n, at) in self.pieces(offset, len) {
            if self.may_exist(index) {
                self.stats.object_reads += 1;
                wanted.push((index, within, n, at));
            } else {
                self.read_parent(index * object_size + within, &mut out[at..at + n as usize])?;
            }
        }
        let gather = Arc::new(Mutex::new(Gather {
            out,
            left: wanted.len(),
            error: None,
            done: Some(Box::new(done)),
        }));
        if wanted.is_empty() {
            Gather::finish(&gather);
            return Ok(());
        }
        // A clone's object that turns out not to exist (the map said it may: it is not trusted)
        // is read from the parent — with blocking calls, which the reactor running the
        // callback cannot make, so on a thread of its own: rare, and never with a trusted map.
        let parent = self
            .parent
            .as_ref()
            .map(|p| (Arc::clone(&p.view), self.overlap()));
        for (index, within, n, at) in wanted {
            let g = Arc::clone(&gather);
            let parent = parent.clone();
            self.store
                .read_async(&self.coll, &data_object(index), within, n, move |r| {
                    let offset = index * object_size + within;
                    match r {
                        Ok(bytes) => Gather::piece(&g, at, Ok(bytes)),
                        Err(e) if e.is_not_found() => match parent {
                            Some((view, overlap)) if offset < overlap => {
                                let on_thread = Arc::clone(&g);
                                let read_from_parent = move || {
                                    let k = ((overlap - offset) as usize).min(n as usize);
                                    let mut bytes = vec![0u8; k];
                                    let read = view.read_into(offset, &mut bytes).map(|()| bytes);
                                    Gather::piece(&on_thread, at, read);
                                };
                                if let Err(e) = std::thread::Builder::new()
                                    .name("clone-parent-read".into())
                                    .spawn(read_from_parent)
                                {
                                    let reason = format!("no thread to read the parent: {e}");
                                    Gather::piece(&g, at, Err(ImageError::Conflict { reason }));
                                }
                            }
                            // Past the overlap, or not a clone: zeros, as `out` holds.
                            _ => Gather::piece(&g, at, Ok(Vec::new())),
                        },
                        Err(e) => Gather::piece(&g, at, Err(e.into())),
                    }
                })?;
        }
        Ok(())
    }

    // ---- changes ---------------------------------------------------------------------------

    /// Before a request changes `offset..offset + len`: the lock (taken over from its owner if
    /// need be), the outcome of queued writes that changed the map's word on its objects, and
    /// the map's standing after a failed one.
    fn prepare_change(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.serve_lock_requests()?;
        self.acquire_lock()?;
        let objects: Vec<u64> = self.pieces(offset, len).iter().map(|p| p.0).collect();
        self.transitions.wait_settled(&objects);
        self.settle_suspicion()
    }

    /// Whether `read_async` of this image runs without blocking, as on a store reactor: its
    /// reads go to the store alone (a clone reads from its parent at once).
    pub fn reads_without_blocking(&self) -> bool {
        self.parent.is_none()
    }

    /// Whether `write_async` of `offset..offset + len` runs without blocking, as on a store
    /// reactor: this client owns the lock and nobody asks for it, the map is trusted and says
    /// what each object needs (no store lookups, no copy-up), no earlier write's outcome is
    /// awaited, and the writes in flight are few (past that, a blocking caller waits on the
    /// store's throttle).
    pub fn writes_without_blocking(&self, offset: u64, len: u64) -> bool {
        const MAX_WRITES_IN_FLIGHT: u64 = 256;
        let lock_ready = match &self.lock {
            None => true,
            Some(cell) => self.owner && !cell.has_request(),
        };
        let Some(map) = self.object_map() else {
            return false;
        };
        let objects = self.objects_of(offset, len);
        lock_ready
            && self.parent.is_none()
            && !self.map_suspect.load(Ordering::Relaxed)
            && !self.map_undo.pending()
            && self.in_flight.count() < MAX_WRITES_IN_FLIGHT
            && objects
                .clone()
                .all(|index| map.get(index) != ObjectState::Pending)
            && !self.transitions.any(objects)
    }

    /// The indices of the objects `offset..offset + len` touches (none when `len` is 0).
    pub fn objects_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let object_size = self.info.object_size();
        match len {
            0 => 0..0,
            _ => offset / object_size..(offset + len - 1) / object_size + 1,
        }
    }

    /// Whether object `index` must be preserved for the newest snapshot before it changes:
    /// it is unchanged since that snapshot (EXISTS_CLEAN; without a trusted map, the store and
    /// the snapshot's map decide).
    fn needs_preserve(&self, map: Option<&ObjectMap>, index: u64) -> Result<bool, ImageError> {
        let Some(latest) = self.snaps.last() else {
            return Ok(false);
        };
        match map.map(|m| m.get(index)) {
            Some(ObjectState::ExistsClean) => return Ok(true),
            // PENDING (a shrink cut short) no longer says whether the object changed since the
            // snapshot: ask the store, as without a map.
            Some(ObjectState::Pending) | None => {}
            Some(_) => return Ok(false),
        }
        let objects = latest.size.div_ceil(self.info.object_size());
        let snap_map = load_map(
            &self.store,
            &self.coll,
            &snap_map_object(latest.id),
            objects,
        )?;
        Ok(snap_map.get(index).may_exist()
            && self.store.exists(&self.coll, &data_object(index))?
            && !self
                .store
                .exists(&self.coll, &preserved_object(index, latest.id))?)
    }

    fn exists(&self, map: Option<&ObjectMap>, index: u64) -> Result<bool, ImageError> {
        match map {
            Some(m) => Ok(m.get(index).may_exist()),
            None => Ok(self.store.exists(&self.coll, &data_object(index))?),
        }
    }

    /// What must happen in `t` before object `index` is changed in place: preserving it for
    /// the newest snapshot, or copying it up from the parent. Whether it exists afterwards.
    fn before_change(
        &mut self,
        t: &mut Transaction,
        map: Option<&ObjectMap>,
        index: u64,
    ) -> Result<bool, ImageError> {
        if self.needs_preserve(map, index)? {
            let latest = self.snaps.last().expect("needs_preserve saw one").id;
            t.clone_object(&data_object(index), &preserved_object(index, latest));
            self.stats.preserved += 1;
            return Ok(true);
        }
        let exists = self.exists(map, index)?;
        if !exists && self.parent_covers(index) {
            let object_size = self.info.object_size();
            let start = index * object_size;
            let mut bytes = vec![0u8; object_size.min(self.overlap() - start) as usize];
            self.read_parent(start, &mut bytes)?;
            if bytes.iter().any(|&b| b != 0) {
                t.write(&data_object(index), 0, bytes);
                self.stats.copy_ups += 1;
                return Ok(true);
            }
        }
        Ok(exists)
    }

    /// The transaction of a write, and the map after it.
    fn write_transaction(
        &mut self,
        offset: u64,
        data: &[u8],
    ) -> Result<(Transaction, Option<ObjectMap>), ImageError> {
        let mut t = Transaction::new(&self.coll);
        let pieces = self.pieces(offset, data.len() as u64);
        // Most writes land on objects the map already says were written since the last
        // snapshot: the map then stays as it is and is not copied (it can be megabytes).
        let current = self.map.take();
        let mut changed = current
            .as_ref()
            .filter(|m| {
                m.has_dirty()
                    || pieces
                        .iter()
                        .any(|&(index, ..)| m.get(index) != ObjectState::Exists)
            })
            .cloned();
        let mut build = || -> Result<(), ImageError> {
            for &(index, within, n, at) in &pieces {
                self.before_change(&mut t, changed.as_ref().or(current.as_ref()), index)?;
                t.write(
                    &data_object(index),
                    within,
                    data[at..at + n as usize].to_vec(),
                );
                if let Some(m) = changed.as_mut() {
                    m.set(index, ObjectState::Exists)?;
                }
            }
            Ok(())
        };
        let built = build();
        self.map = current;
        built?;
        Ok((t, changed))
    }

    /// Queues a write; `done` runs on a store reactor once it is durable (it must not block),
    /// or with the error that kept it from being stored: `NoSpace` (nothing of it applied,
    /// the map as before) when the store cannot hold it.
    pub fn write_async(
        &mut self,
        offset: u64,
        data: &[u8],
        done: impl FnOnce(Result<(), ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        self.check_range(offset, data.len() as u64)?;
        self.prepare_change(offset, data.len() as u64)?;
        self.queue_write(offset, data, WriteAck::Durable, done)
    }

    /// Queues a write for a volatile write cache (NBD without FUA): `accepted` runs on a store
    /// reactor once the store has taken it — its space allocated, every later read seeing it —
    /// or with the error that refused it (`NoSpace`, nothing applied). It is durable once a
    /// later [`flush`](Self::flush) succeeds. Should it fail after it was accepted (only a
    /// device or metadata failure, which stops the store), every flush of this open image
    /// fails from then on.
    pub fn write_cached(
        &mut self,
        offset: u64,
        data: &[u8],
        accepted: impl FnOnce(Result<(), ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        self.check_range(offset, data.len() as u64)?;
        self.prepare_change(offset, data.len() as u64)?;
        self.queue_write(offset, data, WriteAck::Accepted, accepted)
    }

    /// `write_async` for a caller that must not block, such as a store reactor: it serves no
    /// lock request (handing the lock over waits for the writes in flight, which the reactor
    /// itself finishes) and refuses (WouldBlock) unless [`Self::writes_without_blocking`] holds.
    /// Callbacks of this image's writes run on the reactor, so between that check and this call,
    /// under the same hold of the image, nothing it checked can change.
    pub fn write_async_now(
        &mut self,
        offset: u64,
        data: &[u8],
        done: impl FnOnce(Result<(), ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        self.check_write_now(offset, data.len() as u64)?;
        self.queue_write(offset, data, WriteAck::Durable, done)
    }

    /// [`write_cached`](Self::write_cached) under the rules of
    /// [`write_async_now`](Self::write_async_now).
    pub fn write_cached_now(
        &mut self,
        offset: u64,
        data: &[u8],
        accepted: impl FnOnce(Result<(), ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        self.check_write_now(offset, data.len() as u64)?;
        self.queue_write(offset, data, WriteAck::Accepted, accepted)
    }

    fn check_write_now(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check_range(offset, len)?;
        if !self.writes_without_blocking(offset, len) {
            return Err(StoreError::WouldBlock {
                call: "write_async_now",
            }
            .into());
        }
        Ok(())
    }

    fn queue_write(
        &mut self,
        offset: u64,
        data: &[u8],
        ack: WriteAck,
        answer: impl FnOnce(Result<(), ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        if let Some(why) = self.in_flight.lost_reason() {
            return Err(ImageError::WritesLost {
                name: self.name.clone(),
                reason: why,
            });
        }
        let (mut t, mut map) = self.write_transaction(offset, data)?;
        let mut blocks_written = Vec::new();
        if let Some(m) = map.as_mut() {
            blocks_written = write_map_blocks(&mut t, m, MAP_OBJECT);
            if !blocks_written.is_empty() {
                self.stats.map_updates += 1;
                self.stats.map_blocks_written += blocks_written.len() as u64;
            }
        }
        // The objects whose state in the map this write changes: until it finishes, later
        // changes of them wait for its outcome (`prepare_change`); if the store refuses it,
        // their states are put back.
        let changing: Vec<StateChange> = match (&map, self.map.as_ref()) {
            (Some(after), Some(before)) => self
                .objects_of(offset, data.len() as u64)
                .filter(|&i| before.get(i) != after.get(i))
                .map(|i| (i, before.get(i), after.get(i)))
                .collect(),
            _ => Vec::new(),
        };
        let settled: Vec<u64> = changing.iter().map(|c| c.0).collect();
        let suspect = Arc::clone(&self.map_suspect);
        let in_flight = Arc::clone(&self.in_flight);
        let transitions = Arc::clone(&self.transitions);
        let undo = Arc::clone(&self.map_undo);
        in_flight.start();
        transitions.begin(&settled);
        let begun = settled.clone();
        // PREPARE's outcome, read by the commit callback (both run on the shard's reactor,
        // this one first).
        let prepared = Arc::new(AtomicBool::new(false));
        let prepared_seen = Arc::clone(&prepared);
        let (accepted, done) = match ack {
            WriteAck::Accepted => (Some(answer), None),
            WriteAck::Durable => (None, Some(answer)),
        };
        let queued = self.store.queue_transaction_staged(
            t,
            move |r| {
                match &r {
                    Ok(()) => prepared.store(true, Ordering::Relaxed),
                    Err(_) => undo.push(RefusedWrite {
                        states: changing,
                        blocks: blocks_written,
                    }),
                }
                if let Some(accepted) = accepted {
                    accepted(r.map_err(ImageError::from));
                }
            },
            move |r| {
                // A write refused at PREPARE never happened (its caller is told, on the write
                // itself), so no flush covers it. One that failed after PREPARE was applied in
                // memory and then lost with the store: the map cannot be trusted, and no flush
                // of this image may succeed again.
                let lost = match &r {
                    Err(e) if prepared_seen.load(Ordering::Relaxed) => {
                        suspect.store(true, Ordering::Relaxed);
                        in_flight.lost(format!("a write failed after the store took it: {e}"));
                        true
                    }
                    _ => false,
                };
                transitions.end(&settled);
                // A caller's callback that panics must not leave the write counted in flight
                // (every later flush would wait for it forever): finish, then let the store
                // report the panic.
                let answered = done.map(|done| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        done(r.map_err(ImageError::from))
                    }))
                });
                in_flight.finish(!lost);
                if let Some(Err(panic)) = answered {
                    std::panic::resume_unwind(panic);
                }
            },
        );
        if let Err(e) = queued {
            self.transitions.end(&begun);
            // Not queued: the map stays as it was, its own changed blocks still to be written.
            self.in_flight.finish(true);
            return Err(e.into());
        }
        if map.is_some() {
            self.map = map;
        }
        Ok(())
    }

    /// Writes out map blocks left to rewrite by writes the store refused (a later write may
    /// have carried a refused write's state in a shared block). Queued like a write, so a
    /// flush that follows covers it; without a trusted map, or when nothing is left, nothing.
    pub fn write_back_map(&mut self) -> Result<(), ImageError> {
        if self.lock.is_some() && !self.owner {
            return Ok(());
        }
        self.settle_suspicion()?;
        let Some(current) = self.map.as_ref().filter(|m| m.has_dirty()) else {
            return Ok(());
        };
        let mut map = current.clone();
        let mut t = Transaction::new(&self.coll);
        let blocks = write_map_blocks(&mut t, &mut map, MAP_OBJECT);
        self.stats.map_updates += 1;
        self.stats.map_blocks_written += blocks.len() as u64;
        let undo = Arc::clone(&self.map_undo);
        let in_flight = Arc::clone(&self.in_flight);
        in_flight.start();
        let queued = self.store.queue_transaction_staged(
            t,
            move |r| {
                if r.is_err() {
                    undo.push(RefusedWrite {
                        states: Vec::new(),
                        blocks,
                    });
                }
            },
            move |_| in_flight.finish(true),
        );
        if let Err(e) = queued {
            self.in_flight.finish(true);
            return Err(e.into());
        }
        self.map = Some(map);
        Ok(())
    }

    /// Settles the outcomes of queued writes: map changes of refused ones are put back (and
    /// their blocks rewritten with the next map change); after a write failed past PREPARE
    /// (the store stopped), the map is no longer trusted.
    fn settle_suspicion(&mut self) -> Result<(), ImageError> {
        if self.map_undo.pending() {
            let undo = self.map_undo.take();
            if let Some(m) = self.map.as_mut() {
                for refused in undo {
                    for (index, before, after) in refused.states {
                        if m.get(index) == after {
                            m.set(index, before)?;
                        }
                    }
                    for b in refused.blocks {
                        m.mark_block_dirty(b);
                    }
                }
            }
        }
        if self.map_suspect.swap(false, Ordering::Relaxed) && self.map.is_some() {
            self.invalidate_map("a write failed after the store had taken it")?;
        }
        Ok(())
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        self.check_range(offset, data.len() as u64)?;
        self.prepare_change(offset, data.len() as u64)?;
        let (t, map) = self.write_transaction(offset, data)?;
        self.commit(t, map)
    }

    /// Puts removing object `index` (known to exist) into `t`: preserved for the newest
    /// snapshot instead, if it still needs it.
    fn remove_object(&mut self, t: &mut Transaction, index: u64, preserve: bool) {
        match (preserve, self.snaps.last()) {
            (true, Some(latest)) => {
                t.rename(&data_object(index), &preserved_object(index, latest.id));
                self.stats.preserved += 1;
            }
            _ => {
                t.remove(&data_object(index));
            }
        }
    }

    /// Discards `offset..offset + len`: whole objects are removed (and read as zeros from the
    /// map), parts of objects zeroed. In a clone, where the parent shows through, an object is
    /// emptied rather than removed (so it hides the parent).
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check_range(offset, len)?;
        self.prepare_change(offset, len)?;
        let object_size = self.info.object_size();
        let mut t = Transaction::new(&self.coll);
        let mut map = self.map.clone();
        for (index, within, n, _) in self.pieces(offset, len) {
            // The object's bytes inside the image (the last one may be short).
            let object_end = (self.info.size - index * object_size).min(object_size);
            let head = data_object(index);
            if within == 0 && n >= object_end {
                let exists = self.exists(map.as_ref(), index)?;
                let preserve = exists && self.needs_preserve(map.as_ref(), index)?;
                if self.parent_covers(index) {
                    if preserve {
                        let latest = self.snaps.last().expect("preserve needs one").id;
                        t.clone_object(&head, &preserved_object(index, latest));
                        self.stats.preserved += 1;
                    } else if !exists {
                        t.touch(&head);
                    }
                    t.truncate(&head, 0);
                    if let Some(m) = map.as_mut() {
                        m.set(index, ObjectState::Exists)?;
                    }
                } else if exists {
                    self.remove_object(&mut t, index, preserve);
                    if let Some(m) = map.as_mut() {
                        m.set(index, ObjectState::Nonexistent)?;
                    }
                }
            } else if self.before_change(&mut t, map.as_ref(), index)? {
                t.zero(&head, within, n);
                if let Some(m) = map.as_mut() {
                    m.set(index, ObjectState::Exists)?;
                }
            }
        }
        self.commit(t, map)
    }

    /// Zeroes `offset..offset + len` (the same as a discard here: discarded space reads zeros).
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.discard(offset, len)
    }

    /// Waits until every write queued so far is durable; an error if a write the store had
    /// taken was lost (then every later flush fails too). A write the store refused (ENOSPC
    /// at PREPARE, nothing of it applied) was reported to its own callback and is not covered.
    pub fn flush(&mut self) -> Result<(), ImageError> {
        self.write_back_map()?;
        let waiter = self.flush_waiter();
        if waiter.wait() {
            Ok(())
        } else if let Some(reason) = waiter.lost_reason() {
            Err(ImageError::WritesLost {
                name: self.name.clone(),
                reason,
            })
        } else {
            Err(ImageError::WriteFailed {
                name: self.name.clone(),
            })
        }
    }

    /// A handle that waits for the queued writes without holding the image.
    pub fn flush_waiter(&self) -> FlushWaiter {
        FlushWaiter {
            in_flight: Arc::clone(&self.in_flight),
        }
    }

    // ---- the exclusive lock ----------------------------------------------------------------

    /// This client's id, as lock events name it.
    pub fn client_id(&self) -> u64 {
        self.client
    }

    pub fn is_lock_owner(&self) -> bool {
        self.owner
    }

    /// The client that holds the image's lock, if any.
    pub fn lock_owner(&self) -> Option<u64> {
        self.lock.as_ref().and_then(|c| c.owner())
    }

    /// How long to wait for the owner to hand the lock over or to start on a request.
    pub fn set_lock_timeout(&mut self, timeout: Duration) {
        self.lock_timeout = timeout;
    }

    /// Lock acquired/released notifications and requests, for every client of the image.
    pub fn watch(&self) -> Option<Receiver<LockEvent>> {
        self.lock.as_ref().map(|c| c.watch())
    }

    /// A handle a thread can wait on for requests this client, as the owner, should serve.
    pub fn lock_waiter(&self) -> Option<LockWaiter> {
        self.lock.as_ref().map(|c| LockWaiter {
            cell: Arc::clone(c),
        })
    }

    /// Takes the lock (asking its owner to hand it over, and waiting up to the lock timeout),
    /// then reloads what the previous owner changed. Images without the feature need none.
    pub fn acquire_lock(&mut self) -> Result<(), ImageError> {
        let Some(cell) = self.lock.clone() else {
            return Ok(());
        };
        if self.owner {
            return Ok(());
        }
        match cell.try_acquire(self.client) {
            Acquire::Acquired => {}
            Acquire::HeldBy(_) => cell
                .acquire_from_owner(self.client, Instant::now() + self.lock_timeout)
                .map_err(|owner| ImageError::LockBusy {
                    name: self.name.clone(),
                    owner,
                })?,
        }
        self.owner = true;
        if let Err(e) = self.refresh() {
            self.owner = false;
            cell.release(self.client);
            return Err(e);
        }
        Ok(())
    }

    /// Hands the lock back once every queued write has been answered.
    pub fn release_lock(&mut self) -> Result<(), ImageError> {
        let Some(cell) = self.lock.clone() else {
            return Ok(());
        };
        if !self.owner {
            return Ok(());
        }
        self.in_flight.wait_drained();
        let settled = self.settle_suspicion();
        self.owner = false;
        cell.release(self.client);
        settled
    }

    /// As the owner: answers what other clients asked (hand the lock over, run an operation);
    /// how many requests were served. A non-owner has nothing to serve.
    pub fn serve_lock_requests(&mut self) -> Result<usize, ImageError> {
        let Some(cell) = self.lock.clone() else {
            return Ok(0);
        };
        let mut served = 0;
        while self.owner {
            let Some(request) = cell.next_request(self.client) else {
                break;
            };
            served += 1;
            match request {
                LockRequest::Release => self.release_lock()?,
                LockRequest::Run { op, updates, .. } => {
                    let mut report = |done, total| {
                        let _ = updates.send(OpUpdate::Progress { done, total });
                    };
                    let result = self.run_local(&op, &mut report);
                    let _ = updates.send(OpUpdate::Finished(result.map_err(|e| e.to_string())));
                }
            }
        }
        Ok(served)
    }

    /// Runs a maintenance operation: here if this client owns the lock or nobody does (it
    /// then takes it), else by the owner, reporting its progress here.
    fn run_maintenance(
        &mut self,
        op: MaintenanceOp,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        let Some(cell) = self.lock.clone() else {
            return self.run_local(&op, progress);
        };
        loop {
            if self.owner {
                return self.run_local(&op, progress);
            }
            let owner = match cell.try_acquire(self.client) {
                Acquire::Acquired => {
                    self.owner = true;
                    if let Err(e) = self.refresh() {
                        self.owner = false;
                        cell.release(self.client);
                        return Err(e);
                    }
                    continue;
                }
                Acquire::HeldBy(owner) => owner,
            };
            let (ticket, updates) = cell.ask_owner(self.client, op.clone());
            let mut heard = Instant::now();
            let answer = loop {
                match updates.recv_timeout(Duration::from_millis(20)) {
                    Ok(OpUpdate::Progress { done, total }) => {
                        heard = Instant::now();
                        progress(done, total);
                    }
                    Ok(OpUpdate::Finished(result)) => break Some(result),
                    Err(RecvTimeoutError::Disconnected) => break None,
                    Err(RecvTimeoutError::Timeout) => {
                        // The owner left without taking it: ask again (or take the lock).
                        if cell.owner() != Some(owner) && cell.withdraw(ticket) {
                            break None;
                        }
                        if heard.elapsed() > self.lock_timeout && cell.withdraw(ticket) {
                            return Err(ImageError::LockBusy {
                                name: self.name.clone(),
                                owner,
                            });
                        }
                    }
                }
            };
            if let Some(result) = answer {
                self.refresh()?;
                return result.map_err(|reason| ImageError::Proxied {
                    op: op.name(),
                    owner,
                    reason,
                });
            }
        }
    }

    fn run_local(
        &mut self,
        op: &MaintenanceOp,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        // Queued writes first: every operation below reads the state they leave.
        self.in_flight.wait_drained();
        self.settle_suspicion()?;
        match op {
            MaintenanceOp::Resize { size } => self.resize_local(*size, progress),
            MaintenanceOp::SnapCreate { name } => self.snap_create_local(name),
            MaintenanceOp::SnapRemove { name } => self.snap_remove_local(name, progress),
            MaintenanceOp::Rollback { snap } => self.rollback_local(snap, progress),
            MaintenanceOp::Flatten { objects_per_second } => {
                self.flatten_local(*objects_per_second, progress)
            }
        }
    }

    // ---- maintenance -----------------------------------------------------------------------

    /// Grows or shrinks the image. Shrinking removes the objects past the new end in batches
    /// (marked PENDING first, so a crash in between leaves the map saying "may exist"), calling
    /// `progress(done, total)` after each; the header changes last. Run by the lock owner.
    pub fn resize(
        &mut self,
        size: u64,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        self.run_maintenance(MaintenanceOp::Resize { size }, &mut progress)
    }

    /// Takes a snapshot named `name` (run by the lock owner).
    pub fn snap_create(&mut self, name: &str) -> Result<SnapInfo, ImageError> {
        check_snap_name(name)?;
        self.run_maintenance(
            MaintenanceOp::SnapCreate { name: name.into() },
            &mut |_, _| {},
        )?;
        self.snap(name).cloned()
    }

    /// Removes snapshot `name`: the objects it alone kept go, its map goes (run by the owner).
    pub fn snap_remove(
        &mut self,
        name: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        self.run_maintenance(
            MaintenanceOp::SnapRemove { name: name.into() },
            &mut progress,
        )
    }

    /// Makes the image what snapshot `snap` saw again (later snapshots stay).
    pub fn rollback(
        &mut self,
        snap: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        self.run_maintenance(MaintenanceOp::Rollback { snap: snap.into() }, &mut progress)
    }

    /// Copies every object a clone still reads from its parent into the clone, at most
    /// `objects_per_second` (None: as fast as it goes), then cuts the link.
    pub fn flatten(
        &mut self,
        objects_per_second: Option<u64>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        self.run_maintenance(MaintenanceOp::Flatten { objects_per_second }, &mut progress)
    }

    fn resize_local(
        &mut self,
        size: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        let object_size = self.info.object_size();
        let (old_objects, new_objects) = (self.info.objects(), size.div_ceil(object_size));
        if size < self.info.size {
            let mut doomed = Vec::new();
            for i in new_objects..old_objects {
                if self.exists(self.map.as_ref(), i)? {
                    doomed.push((i, self.needs_preserve(self.map.as_ref(), i)?));
                }
            }
            if let Some(mut map) = self.map.clone() {
                for &(i, _) in &doomed {
                    map.set(i, ObjectState::Pending)?;
                }
                self.commit(Transaction::new(&self.coll), Some(map))?;
            }
            let total = doomed.len() as u64;
            let mut done = 0;
            for batch in doomed.chunks(REMOVE_BATCH) {
                let mut t = Transaction::new(&self.coll);
                let mut map = self.map.clone();
                for &(i, preserve) in batch {
                    self.remove_object(&mut t, i, preserve);
                    if let Some(m) = map.as_mut() {
                        m.set(i, ObjectState::Nonexistent)?;
                    }
                }
                self.commit(t, map)?;
                done += batch.len() as u64;
                progress(done, total);
            }
            // The new last object keeps only what lies inside the image.
            let tail = size % object_size;
            let last = new_objects.saturating_sub(1);
            if tail != 0 && self.exists(self.map.as_ref(), last)? {
                let mut t = Transaction::new(&self.coll);
                let map = self.map.clone();
                if self.needs_preserve(map.as_ref(), last)? {
                    let latest = self.snaps.last().expect("preserve needs one").id;
                    t.clone_object(&data_object(last), &preserved_object(last, latest));
                    self.stats.preserved += 1;
                }
                t.truncate(&data_object(last), tail);
                let mut map = map;
                if let Some(m) = map.as_mut() {
                    m.set(last, ObjectState::Exists)?;
                }
                self.commit(t, map)?;
            }
        }
        let mut info = self.info;
        info.size = size;
        let mut t = Transaction::new(&self.coll);
        t.setattr(HEADER_OBJECT, HEADER_ATTR, info.encode());
        // A clone that shrinks sees less of its parent, even if it grows again.
        let mut link = self.parent.as_ref().map(|p| p.link.clone());
        if let Some(l) = link.as_mut()
            && size < l.overlap
        {
            l.overlap = size;
            t.omap_setkey(HEADER_OBJECT, PARENT_KEY, &l.encode());
        }
        let map = self.map.clone().map(|mut m| {
            m.resize(new_objects);
            m
        });
        if map.is_some() {
            t.truncate(
                MAP_OBJECT,
                ObjectMap::new(new_objects).blocks() * MAP_BLOCK as u64,
            );
        }
        self.commit(t, map)?;
        self.info = info;
        if let (Some(p), Some(l)) = (self.parent.as_mut(), link) {
            p.link = l;
        }
        Ok(())
    }

    fn snap_create_local(&mut self, name: &str) -> Result<(), ImageError> {
        if !self.info.has_object_map() {
            return Err(ImageError::invalid(
                "snapshots need the object map (the object-map feature)",
            ));
        }
        let Some(map) = self.map.clone() else {
            return Err(ImageError::invalid(
                "the object map is invalid: rebuild it before taking a snapshot",
            ));
        };
        if self.snaps.iter().any(|s| s.name == name) {
            return Err(ImageError::Exists {
                name: format!("{}@{name}", self.name),
            });
        }
        let id = self.snap_seq + 1;
        let info = SnapInfo {
            id,
            name: name.into(),
            size: self.info.size,
            created_ns: now_ns(),
            parent_overlap: self.overlap(),
            removing: false,
        };
        let mut t = Transaction::new(&self.coll);
        let snap_object = snap_map_object(id);
        t.touch(&snap_object);
        for b in 0..map.blocks() {
            t.write(&snap_object, b * MAP_BLOCK as u64, map.encode_block(b));
        }
        let mut head = map;
        head.mark_clean();
        t.omap_setkey(HEADER_OBJECT, &snap_key(id), &info.encode());
        t.omap_setkey(HEADER_OBJECT, SNAP_SEQ_KEY, &encode_seq(id));
        self.commit(t, Some(head))?;
        self.snap_seq = id;
        self.snaps.push(info);
        Ok(())
    }

    fn snap_map(&self, snap: &SnapInfo) -> Result<ObjectMap, ImageError> {
        load_map(
            &self.store,
            &self.coll,
            &snap_map_object(snap.id),
            snap.size.div_ceil(self.info.object_size()),
        )
    }

    fn snap_remove_local(
        &mut self,
        name: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        let pos = self
            .snaps
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| ImageError::NoSuchSnapshot {
                image: self.name.clone(),
                snap: name.into(),
            })?;
        let snap = self.snaps[pos].clone();
        // No clone may link to it while its clones are counted and its removal is marked.
        let catalog = super::lock::catalog(self.store.fsid());
        let linking = bluepoll_base::sync::lock(&catalog);
        // Clones of it block the removal; records of clones that are gone (or were never
        // finished) are dropped with it.
        let meta = Meta::load(&self.store, &self.coll)?;
        let mut stale = Vec::new();
        let mut live = Vec::new();
        for (id, child) in meta.children.iter().filter(|(id, _)| *id == snap.id) {
            let links_here = Meta::load(&self.store, &collection_of(child))
                .ok()
                .and_then(|m| m.parent)
                .is_some_and(|l| l.image == self.name && l.snap == *id);
            if links_here {
                live.push(child.clone());
            } else {
                stale.push(child_key(*id, child));
            }
        }
        if !live.is_empty() {
            return Err(ImageError::invalid(format!(
                "snapshot '{name}' has clones ({}): flatten or remove them first",
                live.join(", ")
            )));
        }
        // From the mark on, the snapshot is refused to readers, clones, rollback and diff: its
        // copies go one batch at a time, and a crash part-way must not leave it readable.
        if !snap.removing {
            let mut t = Transaction::new(&self.coll);
            t.omap_setkey(HEADER_OBJECT, &removing_key(snap.id), &encode_seq(snap.id));
            self.store.apply(t)?;
            self.snaps[pos].removing = true;
        }
        drop(linking);
        let snap_map = self.snap_map(&snap)?;
        let prev = pos.checked_sub(1).map(|p| self.snaps[p].clone());
        let prev_map = prev.as_ref().map(|p| self.snap_map(p)).transpose()?;
        // Each copy it holds goes to the previous snapshot if that one saw the object and kept
        // no copy of its own; otherwise it goes.
        let candidates: Vec<u64> = (0..snap_map.objects())
            .filter(|&i| snap_map.get(i).may_exist())
            .collect();
        let total = candidates.len() as u64;
        let mut done = 0;
        for batch in candidates.chunks(REMOVE_BATCH) {
            let mut t = Transaction::new(&self.coll);
            for &i in batch {
                let copy = preserved_object(i, snap.id);
                if !self.store.exists(&self.coll, &copy)? {
                    continue;
                }
                let hand_down = match (&prev, &prev_map) {
                    (Some(p), Some(pm)) => {
                        pm.get(i).may_exist()
                            && !self.store.exists(&self.coll, &preserved_object(i, p.id))?
                    }
                    _ => false,
                };
                match (&prev, hand_down) {
                    (Some(p), true) => t.rename(&copy, &preserved_object(i, p.id)),
                    _ => t.remove(&copy),
                };
            }
            if !t.is_empty() {
                self.store.apply(t)?;
            }
            done += batch.len() as u64;
            progress(done, total);
        }
        // What it marked written since the previous snapshot is now written since that one
        // in the next map (fast-diff stays right across the gap).
        let mut t = Transaction::new(&self.coll);
        let merge = |next: &mut ObjectMap| -> Result<(), ImageError> {
            for i in 0..snap_map.objects().min(next.objects()) {
                if snap_map.get(i) == ObjectState::Exists && next.get(i) == ObjectState::ExistsClean
                {
                    next.set(i, ObjectState::Exists)?;
                }
            }
            Ok(())
        };
        let mut head = None;
        match self.snaps.get(pos + 1).cloned() {
            Some(next) => {
                let mut m = self.snap_map(&next)?;
                let _ = m.take_dirty();
                merge(&mut m)?;
                write_map_blocks(&mut t, &mut m, &snap_map_object(next.id));
            }
            None => {
                if let Some(mut m) = self.map.clone() {
                    merge(&mut m)?;
                    head = Some(m);
                }
            }
        }
        t.remove(&snap_map_object(snap.id));
        let mut keys = vec![snap_key(snap.id), removing_key(snap.id)];
        keys.extend(stale);
        t.omap_rmkeys(HEADER_OBJECT, keys);
        self.commit(t, head)?;
        self.snaps.remove(pos);
        Ok(())
    }

    fn rollback_local(
        &mut self,
        name: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        let snap = self.snap(name)?.clone();
        if self.map.is_none() {
            return Err(ImageError::invalid(
                "the object map is invalid: rebuild it before a rollback",
            ));
        }
        let snap_map = self.snap_map(&snap)?;
        if snap.size > self.info.size {
            self.resize_local(snap.size, &mut |_, _| {})?;
        }
        let objects = snap_map.objects();
        let mut done = 0;
        for first in (0..objects).step_by(REMOVE_BATCH) {
            let mut t = Transaction::new(&self.coll);
            let mut map = self.map.clone();
            for i in first..(first + REMOVE_BATCH as u64).min(objects) {
                let here = map.as_ref().map_or(ObjectState::Nonexistent, |m| m.get(i));
                let preserve = self.needs_preserve(map.as_ref(), i)?;
                if !snap_map.get(i).may_exist() {
                    if here.may_exist() {
                        self.remove_object(&mut t, i, preserve);
                        if let Some(m) = map.as_mut() {
                            m.set(i, ObjectState::Nonexistent)?;
                        }
                    }
                    continue;
                }
                // The snapshot's version: the first copy at or after it, or the head object
                // itself (then unchanged since, and nothing is to be done).
                let after = preserved_object(i, snap.id - 1);
                let source = self
                    .store
                    .list_objects(&self.coll, Some(&after), 1)?
                    .into_iter()
                    .next()
                    .filter(|n| n.starts_with(&format!("data.{i:016x}@")));
                if let Some(source) = source {
                    if preserve {
                        let latest = self.snaps.last().expect("preserve needs one").id;
                        t.clone_object(&data_object(i), &preserved_object(i, latest));
                        self.stats.preserved += 1;
                    }
                    t.clone_object(&source, &data_object(i));
                    if let Some(m) = map.as_mut() {
                        m.set(i, ObjectState::Exists)?;
                    }
                }
            }
            self.commit(t, map)?;
            done = (first + REMOVE_BATCH as u64).min(objects);
            progress(done, objects);
        }
        let _ = done;
        if snap.size < self.info.size {
            self.resize_local(snap.size, &mut |_, _| {})?;
        }
        Ok(())
    }

    fn flatten_local(
        &mut self,
        objects_per_second: Option<u64>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        let Some(link) = self.parent.as_ref().map(|p| p.link.clone()) else {
            return Err(ImageError::invalid(format!(
                "image '{}' is not a clone",
                self.name
            )));
        };
        if let Some(s) = self.snaps.iter().find(|s| s.parent_overlap > 0) {
            return Err(ImageError::invalid(format!(
                "snapshot '{}' of the clone still reads from the parent: remove it first",
                s.name
            )));
        }
        let object_size = self.info.object_size();
        let reach = self.overlap().div_ceil(object_size);
        let mut todo = Vec::new();
        for i in 0..reach {
            if !self.exists(self.map.as_ref(), i)? {
                todo.push(i);
            }
        }
        let total = todo.len() as u64;
        let started = Instant::now();
        for (k, &i) in todo.iter().enumerate() {
            if let Some(rate) = objects_per_second.filter(|r| *r > 0) {
                let due = started + Duration::from_secs_f64(k as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let mut t = Transaction::new(&self.coll);
            let mut map = self.map.clone();
            if self.before_change(&mut t, map.as_ref(), i)?
                && let Some(m) = map.as_mut()
            {
                m.set(i, ObjectState::Exists)?;
            }
            self.commit(t, map)?;
            progress(k as u64 + 1, total);
        }
        let mut t = Transaction::new(&self.coll);
        t.omap_rmkeys(HEADER_OBJECT, vec![PARENT_KEY.to_vec()]);
        self.store.apply(t)?;
        self.parent = None;
        let parent_coll = collection_of(&link.image);
        if self.store.collection_exists(&parent_coll)? {
            let mut t = Transaction::new(&parent_coll);
            t.omap_rmkeys(HEADER_OBJECT, vec![child_key(link.snap, &self.name)]);
            self.store.apply(t)?;
        }
        Ok(())
    }

    /// What changed between snapshot `from` (None: an empty image) and snapshot `to` (None:
    /// the image now), from the object maps alone (fast-diff): no data object is read.
    pub fn diff(&mut self, from: Option<&str>, to: Option<&str>) -> Result<DiffReport, ImageError> {
        if self.info.features & features::FAST_DIFF == 0 {
            return Err(ImageError::invalid(
                "diff needs the fast-diff feature (it answers from the object maps)",
            ));
        }
        // A client that does not own the lock may have missed snapshots the owner took.
        if self.lock.is_some() && !self.owner {
            let meta = Meta::load(&self.store, &self.coll)?;
            self.snaps = meta.snaps;
            self.snap_seq = meta.seq;
        }
        let from_pos = from
            .map(|n| {
                self.snaps.iter().position(|s| s.name == n).ok_or_else(|| {
                    ImageError::NoSuchSnapshot {
                        image: self.name.clone(),
                        snap: n.into(),
                    }
                })
            })
            .transpose()?;
        let to_pos = to
            .map(|n| self.snap(n).map(|s| s.id))
            .transpose()?
            .map(|id| self.snaps.iter().position(|s| s.id == id).expect("found"));
        if let (Some(f), Some(t)) = (from_pos, to_pos)
            && f >= t
        {
            return Err(ImageError::invalid(format!(
                "snapshot '{}' is not older than '{}'",
                self.snaps[f].name, self.snaps[t].name
            )));
        }
        let reads_before = self.stats.object_reads;
        let mut maps_read = 0;
        let from_map = match from_pos {
            Some(f) => {
                maps_read += 1;
                Some(self.snap_map(&self.snaps[f].clone())?)
            }
            None => None,
        };
        let first = from_pos.map_or(0, |f| f + 1);
        let last = to_pos.map_or(self.snaps.len(), |t| t + 1);
        let mut later = Vec::new();
        for s in &self.snaps[first..last] {
            later.push(self.snap_map(s)?);
            maps_read += 1;
        }
        let size = match to_pos {
            Some(t) => self.snaps[t].size,
            None => {
                let head = match self.object_map() {
                    Some(m) => m.clone(),
                    None => {
                        let info = load_header(&self.store, &self.coll, &self.name)?;
                        if info.map_invalid() {
                            return Err(ImageError::invalid(
                                "the object map is invalid: rebuild it before a diff",
                            ));
                        }
                        load_map(&self.store, &self.coll, MAP_OBJECT, info.objects())?
                    }
                };
                later.push(head);
                maps_read += 1;
                self.info.size
            }
        };
        let refs: Vec<&ObjectMap> = later.iter().collect();
        let changed = changed_objects(from_map.as_ref(), &refs);
        Ok(DiffReport {
            extents: extents_of(&changed, self.info.object_size(), size),
            objects_changed: changed.len() as u64,
            maps_read,
            data_objects_read: self.stats.object_reads - reads_before,
        })
    }

    /// Rebuilds the object map from the objects that exist, and clears the invalid flag. With
    /// snapshots, an object is unchanged since the newest one (EXISTS_CLEAN) exactly when that
    /// snapshot saw it and kept no copy of it.
    pub fn rebuild_object_map(&mut self) -> Result<(), ImageError> {
        if !self.info.has_object_map() {
            return Err(ImageError::invalid("the image keeps no object map"));
        }
        self.serve_lock_requests()?;
        self.acquire_lock()?;
        self.in_flight.wait_drained();
        let latest = match self.snaps.last().cloned() {
            Some(s) => Some((s.id, self.snap_map(&s)?)),
            None => None,
        };
        let mut map = ObjectMap::new(self.info.objects());
        let mut copies = std::collections::HashSet::new();
        let mut heads = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let names = self
                .store
                .list_objects(&self.coll, after.as_deref(), 1024)?;
            let Some(last) = names.last().cloned() else {
                break;
            };
            for name in &names {
                let Some(rest) = name.strip_prefix("data.") else {
                    continue;
                };
                match rest.split_once('@') {
                    Some((index, snap)) => {
                        if let (Ok(i), Ok(s)) = (
                            u64::from_str_radix(index, 16),
                            u64::from_str_radix(snap, 16),
                        ) && latest.as_ref().is_some_and(|(id, _)| *id == s)
                        {
                            copies.insert(i);
                        }
                    }
                    None => {
                        if let Ok(i) = u64::from_str_radix(rest, 16)
                            && i < self.info.objects()
                        {
                            heads.push(i);
                        }
                    }
                }
            }
            after = Some(last);
        }
        for i in heads {
            let clean = latest
                .as_ref()
                .is_some_and(|(_, m)| m.get(i).may_exist() && !copies.contains(&i));
            let state = if clean {
                ObjectState::ExistsClean
            } else {
                ObjectState::Exists
            };
            map.set(i, state)?;
        }
        let mut info = self.info;
        info.flags &= !FLAG_MAP_INVALID;
        let mut t = Transaction::new(&self.coll);
        t.touch(MAP_OBJECT).truncate(MAP_OBJECT, 0).setattr(
            HEADER_OBJECT,
            HEADER_ATTR,
            info.encode(),
        );
        map.mark_all_dirty();
        self.commit(t, Some(map))?;
        self.info = info;
        Ok(())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = self.release_lock();
    }
}
