//! Snapshots of an image: looking one up, taking one, removing one (handing the copies it
//! alone kept to the previous snapshot) and rolling the image back to one. The scheme is
//! described in [`crate::snapshot`].

use super::header::Meta;
use super::map::write_map_blocks;
use super::view::SnapView;
use super::{
    HEADER_OBJECT, Image, REMOVE_BATCH, being_removed, collection_of, data_object, now_ns,
};
use crate::error::ImageError;
use crate::lock::MaintenanceOp;
use crate::object_map::{MAP_BLOCK, ObjectMap, ObjectState};
use crate::snapshot::{
    SNAP_SEQ_KEY, SnapInfo, child_key, encode_seq, preserved_object, removing_key, snap_key,
    snap_map_object,
};
use bluepoll_store::Transaction;

fn check_snap_name(name: &str) -> Result<(), ImageError> {
    if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control()) {
        return Err(ImageError::invalid(format!(
            "snapshot name '{}' must be 1 to 200 characters, no control characters",
            name.escape_debug()
        )));
    }
    Ok(())
}

impl Image {
    /// Snapshot `name`, unless it is missing or being removed.
    pub(super) fn snap(&self, name: &str) -> Result<&SnapInfo, ImageError> {
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

    /// [`Image::snap_create`], run here by the lock owner.
    pub(super) fn snap_create_local(&mut self, name: &str) -> Result<(), ImageError> {
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

    /// [`Image::snap_remove`], run here by the lock owner.
    pub(super) fn snap_remove_local(
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
        let catalog = crate::lock::catalog(self.store.fsid());
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

    /// [`Image::rollback`], run here by the lock owner.
    pub(super) fn rollback_local(
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
}
