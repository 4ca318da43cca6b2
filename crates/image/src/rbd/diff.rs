//! Fast-diff: what changed between two snapshots (or a snapshot and the image now), from the
//! object maps alone.

use super::header::{Meta, load_header};
use super::map::load_map;
use super::{Image, MAP_OBJECT, features};
use crate::error::ImageError;
use crate::object_map::ObjectMap;
use crate::snapshot::{DiffExtent, changed_objects, extents_of};

/// What [`Image::diff`] found, and what it took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffReport {
    /// The changed byte ranges, in order, whole objects each (the last one cut at the image's
    /// end), adjacent objects of the same kind merged.
    pub extents: Vec<DiffExtent>,
    /// Objects that changed.
    pub objects_changed: u64,
    /// Object maps read (each a few blocks).
    pub maps_read: u64,
    /// Data objects read while diffing: 0, since fast-diff reads only maps (the count proves
    /// it).
    pub data_objects_read: u64,
}

impl Image {
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
}
