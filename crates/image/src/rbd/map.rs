//! Keeping the object map: loading it, committing its changed blocks in the same transaction
//! as the data, putting back what writes the store refused changed, marking it invalid when it
//! cannot be trusted, and rebuilding it from the objects that exist.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::header::FLAG_MAP_INVALID;
use super::{HEADER_ATTR, HEADER_OBJECT, Image, MAP_OBJECT};
use crate::error::ImageError;
use crate::lock::RefusedWrite;
use crate::object_map::{MAP_BLOCK, ObjectMap, ObjectState};
use crate::snapshot::{SnapInfo, snap_map_object};
use bluepoll_store::{StoreHandle, Transaction};

/// Queues the blocks of `map` changed since the last call into `t` (as `object`); returns
/// their indices.
pub(super) fn write_map_blocks(t: &mut Transaction, map: &mut ObjectMap, object: &str) -> Vec<u64> {
    let dirty = map.take_dirty();
    let mut written = Vec::with_capacity(dirty.len());
    for (index, block) in dirty {
        t.write(object, index * MAP_BLOCK as u64, block);
        written.push(index);
    }
    written
}

/// The map in `object` of `coll` for an image (or snapshot) of `objects` objects, every block
/// checked ([`ImageError::MapCorrupt`] names a bad one).
pub(super) fn load_map(
    store: &StoreHandle,
    coll: &str,
    object: &str,
    objects: u64,
) -> Result<ObjectMap, ImageError> {
    let len = ObjectMap::new(objects).blocks() * MAP_BLOCK as u64;
    let bytes = store.read(coll, object, 0, len)?;
    ObjectMap::decode(&bytes, objects)
}

impl Image {
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

    /// Stops trusting the map: drops it and sets the header's invalid flag (logged with `why`),
    /// so every object may exist until [`Image::rebuild_object_map`].
    pub(super) fn invalidate_map(&mut self, why: &str) -> Result<(), ImageError> {
        log::warn!("bluepoll image {}: object map invalid: {why}", self.name);
        self.map = None;
        self.info.flags |= FLAG_MAP_INVALID;
        let mut t = Transaction::new(&self.coll);
        t.setattr(HEADER_OBJECT, HEADER_ATTR, self.info.encode());
        self.store.apply(t)?;
        Ok(())
    }

    /// Applies `t` with the map blocks `map` changed; the in-memory map follows only if the
    /// transaction commits.
    pub(super) fn commit(
        &mut self,
        mut t: Transaction,
        map: Option<ObjectMap>,
    ) -> Result<(), ImageError> {
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
    pub(super) fn settle_suspicion(&mut self) -> Result<(), ImageError> {
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

    /// The object map of snapshot `snap`, loaded from the store.
    pub(super) fn snap_map(&self, snap: &SnapInfo) -> Result<ObjectMap, ImageError> {
        load_map(
            &self.store,
            &self.coll,
            &snap_map_object(snap.id),
            snap.size.div_ceil(self.info.object_size()),
        )
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
