//! An image: a header, an object map and fixed-size data objects, all in one collection of the
//! object store (`img.NAME`), so an image's changes commit in order on one shard.
//!
//! Each request is one store transaction: the data change and the map blocks it changes commit
//! together, so the map can never say NONEXISTENT for an object that exists (librbd has to write
//! EXISTS before the data and PENDING before a removal because its map and data are updated
//! separately; here PENDING marks objects a shrinking resize has still to remove).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::error::ImageError;
use super::object_map::{MAP_BLOCK, ObjectMap, ObjectState};
use crate::store::{StoreError, StoreHandle, Transaction};

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

    fn encode(&self) -> Vec<u8> {
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

    fn decode(b: &[u8]) -> Result<ImageInfo, ImageError> {
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
    Ok(())
}

/// Counters of an open image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageStats {
    /// Reads of data objects sent to the store.
    pub object_reads: u64,
    /// Pieces of reads answered with zeros from the map alone.
    pub reads_from_map: u64,
    /// Transactions that changed map blocks, and the blocks they wrote.
    pub map_updates: u64,
    pub map_blocks_written: u64,
}

/// An open image.
pub struct Image {
    store: StoreHandle,
    name: String,
    coll: String,
    info: ImageInfo,
    /// None for a shared image, or while the map is invalid.
    map: Option<ObjectMap>,
    /// Set from a store reactor when a queued write failed.
    map_suspect: Arc<AtomicBool>,
    stats: ImageStats,
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
    fn finish(gather: &Mutex<Gather>) {
        let mut state = crate::sync::lock(gather);
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

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
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
    let coll = collection_of(name);
    if store.collection_exists(&coll)? {
        return Err(ImageError::Exists { name: name.into() });
    }
    let info = ImageInfo {
        size,
        order,
        features,
        flags: 0,
        created_ns: now_ns(),
    };
    let mut t = Transaction::new(&coll);
    t.create_collection()
        .touch(HEADER_OBJECT)
        .setattr(HEADER_OBJECT, HEADER_ATTR, info.encode());
    if info.has_object_map() {
        let map = ObjectMap::new(info.objects());
        t.touch(MAP_OBJECT);
        write_map_blocks(&mut t, &mut map.clone());
    }
    store.apply(t)?;
    Ok(info)
}

/// Removes an image and all its objects (in batches; a crash leaves a smaller image to remove
/// again).
pub fn remove(store: &StoreHandle, name: &str) -> Result<(), ImageError> {
    check_name(name)?;
    let coll = collection_of(name);
    if !store.collection_exists(&coll)? {
        return Err(ImageError::NoSuchImage { name: name.into() });
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
    Ok(())
}

/// Queues the map blocks changed since the last call into `t`; returns how many.
fn write_map_blocks(t: &mut Transaction, map: &mut ObjectMap) -> u64 {
    let dirty = map.take_dirty();
    for (index, block) in &dirty {
        t.write(MAP_OBJECT, index * MAP_BLOCK as u64, block.clone());
    }
    dirty.len() as u64
}

impl Image {
    pub fn open(store: &StoreHandle, name: &str) -> Result<Image, ImageError> {
        check_name(name)?;
        let coll = collection_of(name);
        let header = match store.getattr(&coll, HEADER_OBJECT, HEADER_ATTR) {
            Ok(h) => h,
            Err(StoreError::NoSuchCollection { .. }) | Err(StoreError::NoSuchObject { .. }) => {
                return Err(ImageError::NoSuchImage { name: name.into() });
            }
            Err(e) => return Err(e.into()),
        };
        let info = ImageInfo::decode(&header)?;
        let mut image = Image {
            store: store.clone(),
            name: name.into(),
            coll,
            info,
            map: None,
            map_suspect: Arc::new(AtomicBool::new(false)),
            stats: ImageStats::default(),
        };
        if info.has_object_map() && !info.map_invalid() {
            let len = ObjectMap::new(info.objects()).blocks() * MAP_BLOCK as u64;
            let bytes = store.read(&image.coll, MAP_OBJECT, 0, len)?;
            match ObjectMap::decode(&bytes, info.objects()) {
                Ok(map) => image.map = Some(map),
                // Every object may exist from now on, until `rebuild_object_map`.
                Err(e) => image.invalidate_map(&e.to_string())?,
            }
        }
        Ok(image)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn info(&self) -> ImageInfo {
        self.info
    }

    pub fn stats(&self) -> ImageStats {
        self.stats
    }

    /// The object map, when the image keeps a valid one.
    pub fn object_map(&self) -> Option<&ObjectMap> {
        self.map.as_ref()
    }

    fn invalidate_map(&mut self, why: &str) -> Result<(), ImageError> {
        eprintln!("bluepoll image {}: object map invalid: {why}", self.name);
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

    /// The pieces of `offset..offset + len`: (object index, offset in it, length).
    fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
        let object_size = self.info.object_size();
        let end = offset + len;
        let mut at = offset;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let index = at / object_size;
            let within = at % object_size;
            let n = (object_size - within).min(end - at);
            at += n;
            Some((index, within, n))
        })
    }

    /// Whether the map says the object may exist (without a map: maybe).
    fn may_exist(&self, index: u64) -> bool {
        self.map.as_ref().is_none_or(|m| m.get(index).may_exist())
    }

    pub fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, ImageError> {
        self.check_range(offset, len)?;
        let mut out = vec![0u8; len as usize];
        let mut at = 0usize;
        for (index, within, n) in self.pieces(offset, len).collect::<Vec<_>>() {
            if self.may_exist(index) {
                self.stats.object_reads += 1;
                match self.store.read(&self.coll, &data_object(index), within, n) {
                    // Short: the object ends sooner; the rest reads as zeros.
                    Ok(bytes) => out[at..at + bytes.len()].copy_from_slice(&bytes),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            } else {
                self.stats.reads_from_map += 1;
            }
            at += n as usize;
        }
        Ok(out)
    }

    /// Applies `t` with the map blocks `map` changed; the in-memory map follows only if the
    /// transaction commits.
    fn commit(&mut self, mut t: Transaction, map: Option<ObjectMap>) -> Result<(), ImageError> {
        let mut map = map;
        if let Some(m) = map.as_mut() {
            let blocks = write_map_blocks(&mut t, m);
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

    /// Starts a read; `done` gets the bytes on a store reactor (it must not block). Reads see
    /// every request queued before them.
    pub fn read_async(
        &mut self,
        offset: u64,
        len: u64,
        done: impl FnOnce(Result<Vec<u8>, ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        self.check_range(offset, len)?;
        let pieces: Vec<(u64, u64, u64, usize)> = {
            let mut at = 0usize;
            self.pieces(offset, len)
                .collect::<Vec<_>>()
                .into_iter()
                .map(|(index, within, n)| {
                    let p = (index, within, n, at);
                    at += n as usize;
                    p
                })
                .collect()
        };
        let wanted: Vec<_> = pieces
            .into_iter()
            .filter(|&(index, ..)| {
                let read = self.may_exist(index);
                if read {
                    self.stats.object_reads += 1;
                } else {
                    self.stats.reads_from_map += 1;
                }
                read
            })
            .collect();
        let gather = Arc::new(Mutex::new(Gather {
            out: vec![0u8; len as usize],
            left: wanted.len(),
            error: None,
            done: Some(Box::new(done)),
        }));
        if wanted.is_empty() {
            Gather::finish(&gather);
            return Ok(());
        }
        for (index, within, n, at) in wanted {
            let g = Arc::clone(&gather);
            self.store
                .read_async(&self.coll, &data_object(index), within, n, move |r| {
                    let mut state = crate::sync::lock(&g);
                    match r {
                        Ok(bytes) => state.out[at..at + bytes.len()].copy_from_slice(&bytes),
                        Err(e) if e.is_not_found() => {}
                        Err(e) => {
                            state.error.get_or_insert(e.into());
                        }
                    }
                    state.left -= 1;
                    let last = state.left == 0;
                    drop(state);
                    if last {
                        Gather::finish(&g);
                    }
                })?;
        }
        Ok(())
    }

    /// Queues a write; `done` runs on a store reactor once it is durable (it must not block).
    /// The map changes at once, so later requests see it; should the write fail, the map is
    /// marked suspect and invalidated at the next request.
    pub fn write_async(
        &mut self,
        offset: u64,
        data: &[u8],
        done: impl FnOnce(Result<(), ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        self.check_range(offset, data.len() as u64)?;
        self.settle_suspicion()?;
        let mut t = Transaction::new(&self.coll);
        let mut map = self.map.clone();
        let mut at = 0usize;
        for (index, within, n) in self.pieces(offset, data.len() as u64).collect::<Vec<_>>() {
            t.write(
                &data_object(index),
                within,
                data[at..at + n as usize].to_vec(),
            );
            if let Some(m) = map.as_mut() {
                m.set(index, ObjectState::Exists)?;
            }
            at += n as usize;
        }
        if let Some(m) = map.as_mut() {
            let blocks = write_map_blocks(&mut t, m);
            if blocks > 0 {
                self.stats.map_updates += 1;
                self.stats.map_blocks_written += blocks;
            }
        }
        let suspect = Arc::clone(&self.map_suspect);
        self.store.queue_transaction(t, move |r| {
            if r.is_err() {
                suspect.store(true, Ordering::Relaxed);
            }
            done(r.map_err(ImageError::from));
        })?;
        if map.is_some() {
            self.map = map;
        }
        Ok(())
    }

    /// A queued write failed after its map change was taken: stop trusting the map.
    fn settle_suspicion(&mut self) -> Result<(), ImageError> {
        if self.map_suspect.swap(false, Ordering::Relaxed) && self.map.is_some() {
            self.invalidate_map("a write failed after its map update was queued")?;
        }
        Ok(())
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        self.check_range(offset, data.len() as u64)?;
        self.settle_suspicion()?;
        let mut t = Transaction::new(&self.coll);
        let mut map = self.map.clone();
        let mut at = 0usize;
        for (index, within, n) in self.pieces(offset, data.len() as u64).collect::<Vec<_>>() {
            t.write(
                &data_object(index),
                within,
                data[at..at + n as usize].to_vec(),
            );
            if let Some(m) = map.as_mut() {
                m.set(index, ObjectState::Exists)?;
            }
            at += n as usize;
        }
        self.commit(t, map)
    }

    /// Discards `offset..offset + len`: whole objects are removed (and read as zeros from the
    /// map), parts of objects zeroed.
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check_range(offset, len)?;
        self.settle_suspicion()?;
        let object_size = self.info.object_size();
        let mut t = Transaction::new(&self.coll);
        let mut map = self.map.clone();
        for (index, within, n) in self.pieces(offset, len).collect::<Vec<_>>() {
            // The object's bytes inside the image (the last one may be short).
            let object_end = (self.info.size - index * object_size).min(object_size);
            let exists = match &map {
                Some(m) => m.get(index).may_exist(),
                None => self.store.exists(&self.coll, &data_object(index))?,
            };
            if !exists {
                continue;
            }
            if within == 0 && n >= object_end {
                t.remove(&data_object(index));
                if let Some(m) = map.as_mut() {
                    m.set(index, ObjectState::Nonexistent)?;
                }
            } else {
                t.zero(&data_object(index), within, n);
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

    /// Every request is durable when it returns; nothing is left to flush.
    pub fn flush(&mut self) -> Result<(), ImageError> {
        Ok(())
    }

    /// Grows or shrinks the image. Shrinking removes the objects past the new end in batches
    /// (marked PENDING first, so a crash in between leaves the map saying "may exist"), calling
    /// `progress(done, total)` after each; the header changes last.
    pub fn resize(
        &mut self,
        size: u64,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        let object_size = self.info.object_size();
        let (old_objects, new_objects) = (self.info.objects(), size.div_ceil(object_size));
        if size < self.info.size {
            let doomed: Vec<u64> = (new_objects..old_objects)
                .filter(|&i| self.may_exist(i))
                .collect();
            if let Some(mut map) = self.map.clone() {
                for &i in &doomed {
                    map.set(i, ObjectState::Pending)?;
                }
                self.commit(Transaction::new(&self.coll), Some(map))?;
            }
            let total = doomed.len() as u64;
            for (n, batch) in doomed.chunks(REMOVE_BATCH).enumerate() {
                let mut t = Transaction::new(&self.coll);
                let mut map = self.map.clone();
                for &i in batch {
                    if map.is_some() || self.store.exists(&self.coll, &data_object(i))? {
                        t.remove(&data_object(i));
                    }
                    if let Some(m) = map.as_mut() {
                        m.set(i, ObjectState::Nonexistent)?;
                    }
                }
                self.commit(t, map)?;
                progress(((n + 1) * REMOVE_BATCH).min(doomed.len()) as u64, total);
            }
            // The new last object keeps only what lies inside the image.
            let tail = size % object_size;
            if tail != 0 && self.may_exist(new_objects - 1) {
                let last = data_object(new_objects - 1);
                if self.store.exists(&self.coll, &last)? {
                    let mut t = Transaction::new(&self.coll);
                    t.truncate(&last, tail);
                    self.store.apply(t)?;
                }
            }
        }
        let mut info = self.info;
        info.size = size;
        let mut t = Transaction::new(&self.coll);
        t.setattr(HEADER_OBJECT, HEADER_ATTR, info.encode());
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
        Ok(())
    }

    /// Rebuilds the object map from the objects that exist, and clears the invalid flag.
    pub fn rebuild_object_map(&mut self) -> Result<(), ImageError> {
        if !self.info.has_object_map() {
            return Err(ImageError::invalid("the image keeps no object map"));
        }
        let mut map = ObjectMap::new(self.info.objects());
        let mut after: Option<String> = None;
        loop {
            let names = self
                .store
                .list_objects(&self.coll, after.as_deref(), 1024)?;
            let Some(last) = names.last().cloned() else {
                break;
            };
            for name in &names {
                if let Some(index) = name
                    .strip_prefix("data.")
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                    && index < self.info.objects()
                {
                    map.set(index, ObjectState::Exists)?;
                }
            }
            after = Some(last);
        }
        let mut info = self.info;
        info.flags &= !FLAG_MAP_INVALID;
        let mut t = Transaction::new(&self.coll);
        t.touch(MAP_OBJECT).truncate(MAP_OBJECT, 0).setattr(
            HEADER_OBJECT,
            HEADER_ATTR,
            info.encode(),
        );
        self.commit(t, Some(map))?;
        self.info = info;
        Ok(())
    }
}
