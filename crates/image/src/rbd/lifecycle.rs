//! Making, listing and removing images; opening an [`Image`], reloading it from the store, and
//! what it tells about itself.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::header::{Meta, check_layout, features, load_header};
use super::locking::DEFAULT_LOCK_TIMEOUT;
use super::map::{load_map, write_map_blocks};
use super::view::ParentView;
use super::{
    COLLECTION_PREFIX, HEADER_ATTR, HEADER_OBJECT, Image, ImageInfo, ImageStats, MAP_OBJECT,
    REMOVE_BATCH, check_name, collection_of, now_ns,
};
use crate::error::ImageError;
use crate::lock::{Acquire, InFlight, MapUndo, Transitions};
use crate::object_map::ObjectMap;
use crate::snapshot::{ParentLink, SnapInfo, child_key};
use bluepoll_store::{StoreHandle, Transaction};

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
pub(super) fn creation(name: &str, info: &ImageInfo) -> Transaction {
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
    if let Some(owner) = crate::lock::cell(store.fsid(), name).owner() {
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

impl Image {
    /// Opens image `name` as a new client of it, loading its header, snapshots, parent link and
    /// object map. With the exclusive-lock feature, takes the lock if nobody holds it.
    /// [`ImageError::NoSuchImage`] when there is no such image, [`ImageError::HeaderCorrupt`]
    /// when its records do not decode.
    pub fn open(store: &StoreHandle, name: &str) -> Result<Image, ImageError> {
        check_name(name)?;
        let coll = collection_of(name);
        let info = load_header(store, &coll, name)?;
        let lock = (info.features & features::EXCLUSIVE_LOCK != 0)
            .then(|| crate::lock::cell(store.fsid(), name));
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
            client: crate::lock::new_client_id(),
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

    /// The image's name.
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

    /// The header as this client last loaded or changed it (size, order, features, flags).
    pub fn info(&self) -> ImageInfo {
        self.info
    }

    /// This client's counters.
    pub fn stats(&self) -> ImageStats {
        self.stats
    }

    /// Snapshots, oldest first (as of the last refresh for a client that does not own the lock).
    pub fn snapshots(&self) -> &[SnapInfo] {
        &self.snaps
    }

    /// For a clone, the parent snapshot it reads from and how far it shows through; None
    /// otherwise (or once flattened).
    pub fn parent(&self) -> Option<&ParentLink> {
        self.parent.as_ref().map(|p| &p.link)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = self.release_lock();
    }
}
