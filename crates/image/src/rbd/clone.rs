//! Clones: making one from a snapshot of another image, and flattening one (copying up
//! everything it still reads from its parent, then cutting the link).

use std::time::{Duration, Instant};

use super::features;
use super::header::{Meta, check_layout};
use super::lifecycle::creation;
use super::{HEADER_OBJECT, Image, ImageInfo, being_removed, check_name, collection_of, now_ns};
use crate::error::ImageError;
use crate::lock::MaintenanceOp;
use crate::object_map::ObjectState;
use crate::snapshot::{PARENT_KEY, ParentLink, child_key, encode_child};
use bluepoll_store::{StoreHandle, Transaction};

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
    let catalog = crate::lock::catalog(store.fsid());
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

impl Image {
    /// Copies every object a clone still reads from its parent into the clone, at most
    /// `objects_per_second` (None: as fast as it goes), then cuts the link.
    pub fn flatten(
        &mut self,
        objects_per_second: Option<u64>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        self.run_maintenance(MaintenanceOp::Flatten { objects_per_second }, &mut progress)
    }

    /// [`Image::flatten`], run here by the lock owner.
    pub(super) fn flatten_local(
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
}
