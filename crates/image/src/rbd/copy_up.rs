//! Before an object changes: preserving it for the newest snapshot (a store clone as
//! `data.X@S`, or a rename when it is removed), or copying it up from a clone's parent.

use super::map::load_map;
use super::{Image, data_object};
use crate::error::ImageError;
use crate::object_map::{ObjectMap, ObjectState};
use crate::snapshot::{preserved_object, snap_map_object};
use bluepoll_store::Transaction;

impl Image {
    /// Whether object `index` must be preserved for the newest snapshot before it changes:
    /// it is unchanged since that snapshot (EXISTS_CLEAN; without a trusted map, the store and
    /// the snapshot's map decide).
    pub(super) fn needs_preserve(
        &self,
        map: Option<&ObjectMap>,
        index: u64,
    ) -> Result<bool, ImageError> {
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

    /// Whether object `index` exists: by `map` when there is one, else by asking the store.
    pub(super) fn exists(&self, map: Option<&ObjectMap>, index: u64) -> Result<bool, ImageError> {
        match map {
            Some(m) => Ok(m.get(index).may_exist()),
            None => Ok(self.store.exists(&self.coll, &data_object(index))?),
        }
    }

    /// What must happen in `t` before object `index` is changed in place: preserving it for
    /// the newest snapshot, or copying it up from the parent. Whether it exists afterwards.
    pub(super) fn before_change(
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

    /// Puts removing object `index` (known to exist) into `t`: preserved for the newest
    /// snapshot instead, if it still needs it.
    pub(super) fn remove_object(&mut self, t: &mut Transaction, index: u64, preserve: bool) {
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
}
