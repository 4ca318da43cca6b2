//! Read-only views: an image as one of its snapshots saw it ([`SnapView`]), and the parent
//! snapshot a clone reads the objects it has not written from.

use std::sync::Arc;

use super::header::{Meta, load_header};
use super::map::load_map;
use super::{HEADER_OBJECT, being_removed, collection_of, data_object, pieces_of};
use crate::error::ImageError;
use crate::object_map::ObjectMap;
use crate::snapshot::{
    ParentLink, SnapInfo, preserved_object, removing_key, snap_key, snap_map_object,
};
use bluepoll_store::StoreHandle;

/// The parent a clone reads the objects it has not written from.
pub(super) struct ParentView {
    pub(super) link: ParentLink,
    /// Shared with the callbacks of asynchronous reads that find an object missing.
    pub(super) view: Arc<SnapView>,
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
    /// Opens the parent `link` names; `depth` counts the parent links followed to get here (a
    /// chain deeper than 16 is refused).
    pub(super) fn open(
        store: &StoreHandle,
        link: ParentLink,
        depth: u32,
    ) -> Result<ParentView, ImageError> {
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
    pub(super) fn read_into(
        &self,
        overlap: u64,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), ImageError> {
        let overlap = overlap.min(self.link.overlap);
        if offset >= overlap {
            return Ok(());
        }
        let n = ((overlap - offset) as usize).min(out.len());
        self.view.read_into(offset, &mut out[..n])
    }
}

impl SnapView {
    /// Opens snapshot `id` of `image`, refusing one whose removal began; `depth` as for
    /// [`ParentView::open`].
    pub(super) fn open_id(
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

    /// The name of the image this is a snapshot of.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The snapshot's record: id, name, size, when it was taken.
    pub fn info(&self) -> &SnapInfo {
        &self.snap
    }

    /// The snapshot's object map, as it was loaded when the view was opened.
    pub fn object_map(&self) -> &ObjectMap {
        &self.map
    }

    /// The `len` bytes at `offset` as the snapshot saw them (unwritten space, and a clone's
    /// space past its parent overlap, reads as zeros). [`ImageError::Beyond`] when the range
    /// reaches past the snapshot's size; [`ImageError::InvalidArgument`] when the snapshot's
    /// removal began (before or during the read: its copies may be gone).
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

    /// Fills `out` with the snapshot's bytes at `offset` (the range is inside the snapshot).
    pub(super) fn read_into(&self, offset: u64, out: &mut [u8]) -> Result<(), ImageError> {
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
