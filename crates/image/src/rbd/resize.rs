//! Growing and shrinking an image (a maintenance operation: run by the lock owner).

use super::{HEADER_ATTR, HEADER_OBJECT, Image, MAP_OBJECT, REMOVE_BATCH, data_object};
use crate::error::ImageError;
use crate::lock::MaintenanceOp;
use crate::object_map::{MAP_BLOCK, ObjectMap, ObjectState};
use crate::snapshot::{PARENT_KEY, preserved_object};
use bluepoll_store::Transaction;

impl Image {
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

    /// [`Image::resize`], run here by the lock owner.
    pub(super) fn resize_local(
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
}
