//! The object map of an image (docs/image.md): two bits per data object saying whether it exists,
//! so reads of never-written space cost nothing, and diffs and clones stop scanning.
//!
//! On disk the map is a run of 4 KiB blocks, each with its own index and crc32c, so changing one
//! object's state rewrites one block (docs/format.md, "Image object map"):
//!
//! ```text
//!  offset  size
//!       0     1  version (1)
//!       1     3  zero
//!       4     4  block index, u32 LE
//!       8  4084  states: object i of the block in byte i / 4, bits 2 * (i % 4) and up
//!    4092     4  crc32c of bytes 0..4092, LE
//! ```
//!
//! States past the image's last object are NONEXISTENT; a decoder refuses anything else there,
//! since a map that claims objects beyond the end is not one this code wrote.

use std::collections::BTreeSet;

use super::error::ImageError;
use bluepoll_base::codec;

/// Bytes per map block on disk.
pub const MAP_BLOCK: usize = 4096;
const HEADER: usize = 8;
const STATES: usize = MAP_BLOCK - HEADER - 4;
/// Objects one block describes.
pub const OBJECTS_PER_BLOCK: u64 = (STATES * 4) as u64;
const VERSION: u8 = 1;

/// What the map says of one data object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectState {
    /// Never written, or discarded: reads are zeros, without I/O.
    Nonexistent = 0,
    /// Written since the last snapshot (or ever, without snapshots).
    Exists = 1,
    /// Being discarded: it may or may not exist until the removal commits.
    Pending = 2,
    /// Exists, unchanged since the newest snapshot (fast-diff skips it).
    ExistsClean = 3,
}

impl ObjectState {
    fn from_bits(bits: u8) -> ObjectState {
        match bits & 3 {
            0 => ObjectState::Nonexistent,
            1 => ObjectState::Exists,
            2 => ObjectState::Pending,
            _ => ObjectState::ExistsClean,
        }
    }

    /// Whether a read must look at the object (PENDING may still hold data).
    pub fn may_exist(self) -> bool {
        self != ObjectState::Nonexistent
    }
}

/// The map of one image (or one snapshot of it), in memory, with the blocks changed since they
/// were last written out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMap {
    objects: u64,
    /// Four states per byte, as on disk (without the block headers).
    states: Vec<u8>,
    dirty: BTreeSet<u64>,
}

impl ObjectMap {
    /// A map of `objects` objects, none existing; every block counts as changed (a new map is
    /// written out whole).
    pub fn new(objects: u64) -> ObjectMap {
        let mut map = ObjectMap {
            objects,
            states: vec![0; objects.div_ceil(4) as usize],
            dirty: BTreeSet::new(),
        };
        map.dirty.extend(0..map.blocks());
        map
    }

    /// Objects the map describes (the image's, or the snapshot's, object count).
    pub fn objects(&self) -> u64 {
        self.objects
    }

    /// Blocks the map takes on disk.
    pub fn blocks(&self) -> u64 {
        self.objects.div_ceil(OBJECTS_PER_BLOCK)
    }

    /// The state of `object`; objects past the end do not exist.
    pub fn get(&self, object: u64) -> ObjectState {
        if object >= self.objects {
            return ObjectState::Nonexistent;
        }
        let byte = self.states[(object / 4) as usize];
        ObjectState::from_bits(byte >> (2 * (object % 4)))
    }

    /// Sets `object`'s state; returns whether it changed (only a change dirties its block, so
    /// an update that changes nothing writes nothing).
    pub fn set(&mut self, object: u64, state: ObjectState) -> Result<bool, ImageError> {
        if object >= self.objects {
            return Err(ImageError::OutOfRange {
                what: "object map entry",
                index: object,
                limit: self.objects,
            });
        }
        if self.get(object) == state {
            return Ok(false);
        }
        let shift = 2 * (object % 4);
        let byte = &mut self.states[(object / 4) as usize];
        *byte = (*byte & !(3 << shift)) | ((state as u8) << shift);
        self.dirty.insert(object / OBJECTS_PER_BLOCK);
        Ok(true)
    }

    /// Grows or shrinks the map. New objects do not exist; the caller removes the objects a
    /// shrink drops before it shrinks the map.
    pub fn resize(&mut self, objects: u64) {
        let old_blocks = self.blocks();
        if objects < self.objects {
            // Clear the dropped states so the last block encodes as a fresh map's would.
            for object in objects..self.objects.min(objects.next_multiple_of(4)) {
                let shift = 2 * (object % 4);
                self.states[(object / 4) as usize] &= !(3 << shift);
            }
        }
        self.states.resize(objects.div_ceil(4) as usize, 0);
        self.objects = objects;
        let new_blocks = self.blocks();
        self.dirty.retain(|b| *b < new_blocks);
        // The (new) last block changed, and every block that appeared.
        if new_blocks > 0 {
            self.dirty
                .extend(old_blocks.min(new_blocks).saturating_sub(1)..new_blocks);
        }
    }

    /// After a snapshot: objects written before it are now unchanged since it.
    pub fn mark_clean(&mut self) {
        // EXISTS is 0b01 and EXISTS_CLEAN 0b11: set the high bit of every pair that is 0b01,
        // a byte (four objects) at a time, so a map of millions of objects turns in a moment.
        let bytes_per_block = (OBJECTS_PER_BLOCK / 4) as usize;
        for (i, byte) in self.states.iter_mut().enumerate() {
            let exists = *byte & 0x55 & !((*byte & 0xaa) >> 1);
            if exists != 0 {
                *byte |= exists << 1;
                self.dirty.insert((i / bytes_per_block) as u64);
            }
        }
    }

    /// Whether some block changed since the last `take_dirty`.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Block `block` counts as changed (a write that carried it failed).
    pub fn mark_block_dirty(&mut self, block: u64) {
        if block < self.blocks() {
            self.dirty.insert(block);
        }
    }

    /// Every block counts as changed (the next `take_dirty` writes the map out whole).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.extend(0..self.blocks());
    }

    /// Objects whose state is `state`, in order.
    pub fn objects_in(&self, state: ObjectState) -> impl Iterator<Item = u64> + '_ {
        (0..self.objects).filter(move |o| self.get(*o) == state)
    }

    /// The blocks changed since the last `take_dirty`, encoded, by index.
    pub fn take_dirty(&mut self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|b| (b, self.encode_block(b)))
            .collect()
    }

    /// Block `index`, as stored.
    pub fn encode_block(&self, index: u64) -> Vec<u8> {
        let mut block = vec![0u8; MAP_BLOCK];
        block[0] = VERSION;
        block[4..8].copy_from_slice(&(index as u32).to_le_bytes());
        let from = (index * OBJECTS_PER_BLOCK / 4) as usize;
        let to = (from + STATES).min(self.states.len());
        if from < to {
            block[HEADER..HEADER + (to - from)].copy_from_slice(&self.states[from..to]);
        }
        block.truncate(MAP_BLOCK - 4);
        codec::seal(&mut block);
        block
    }

    /// The map of `objects` objects from its blocks, each checked; an error names the block.
    pub fn decode(bytes: &[u8], objects: u64) -> Result<ObjectMap, ImageError> {
        let mut map = ObjectMap {
            objects,
            states: vec![0; objects.div_ceil(4) as usize],
            dirty: BTreeSet::new(),
        };
        let blocks = map.blocks();
        if bytes.len() as u64 != blocks * MAP_BLOCK as u64 {
            return Err(ImageError::MapCorrupt {
                block: None,
                reason: format!(
                    "{} bytes for {objects} objects, which take {blocks} blocks of {MAP_BLOCK}",
                    bytes.len()
                ),
            });
        }
        for (index, block) in bytes.chunks_exact(MAP_BLOCK).enumerate() {
            let bad = |reason: String| ImageError::MapCorrupt {
                block: Some(index as u64),
                reason,
            };
            codec::unseal(block).map_err(|e| bad(e.to_string()))?;
            if block[0] != VERSION || block[1..4] != [0, 0, 0] {
                return Err(bad(format!("unknown version {}", block[0])));
            }
            let recorded = u32::from_le_bytes(block[4..8].try_into().expect("4"));
            if recorded as usize != index {
                return Err(bad(format!("holds block {recorded}")));
            }
            let from = index * STATES;
            let to = (from + STATES).min(map.states.len());
            map.states[from..to].copy_from_slice(&block[HEADER..HEADER + (to - from)]);
            // Nothing may exist past the last object.
            let past_end = block[HEADER + (to - from)..MAP_BLOCK - 4]
                .iter()
                .any(|b| *b != 0);
            if past_end || map.tail_bits_set() {
                return Err(bad(format!("states past the image's {objects} objects")));
            }
        }
        Ok(map)
    }

    /// Whether the last byte holds states beyond the last object.
    fn tail_bits_set(&self) -> bool {
        let used = self.objects % 4;
        used != 0 && self.states.last().is_some_and(|b| b >> (2 * used) != 0)
    }
}

/// Objects that differ between two maps of the same image (fast-diff, from the maps alone):
/// those that exist in `to` and were written since `from` (EXISTS), and those that exist in one
/// and not the other.
pub fn diff(from: &ObjectMap, to: &ObjectMap) -> Vec<u64> {
    (0..from.objects().max(to.objects()))
        .filter(|&o| {
            let (a, b) = (from.get(o), to.get(o));
            b == ObjectState::Exists || a.may_exist() != b.may_exist()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bluepoll_base::rand::Rng;

    const STATES_ALL: [ObjectState; 4] = [
        ObjectState::Nonexistent,
        ObjectState::Exists,
        ObjectState::Pending,
        ObjectState::ExistsClean,
    ];

    fn encoded(map: &ObjectMap) -> Vec<u8> {
        (0..map.blocks())
            .flat_map(|b| map.encode_block(b))
            .collect()
    }

    #[test]
    fn an_update_that_changes_nothing_dirties_nothing() {
        let mut map = ObjectMap::new(100_000);
        assert_eq!(map.take_dirty().len() as u64, map.blocks());
        assert!(map.set(5, ObjectState::Exists).unwrap());
        assert!(!map.set(5, ObjectState::Exists).unwrap());
        assert!(
            map.set(OBJECTS_PER_BLOCK * 2 + 1, ObjectState::Pending)
                .unwrap()
        );
        let dirty: Vec<u64> = map.take_dirty().into_iter().map(|(b, _)| b).collect();
        assert_eq!(dirty, vec![0, 2]);
        assert!(!map.set(5, ObjectState::Exists).unwrap());
        assert!(map.take_dirty().is_empty());
        assert!(map.set(100_000, ObjectState::Exists).is_err());
    }

    /// Random updates and resizes against a plain vector: states agree, the dirty blocks are
    /// exactly those whose encoding changed, and the encoding decodes to the same map.
    #[test]
    fn random_updates_agree_with_a_model_and_round_trip() {
        let mut rng = Rng::new(7);
        for case in 0..40 {
            let mut objects = rng.below(3 * OBJECTS_PER_BLOCK);
            let mut model = vec![ObjectState::Nonexistent; objects as usize];
            let mut map = ObjectMap::new(objects);
            let mut on_disk = {
                map.take_dirty();
                encoded(&map)
            };
            for _ in 0..300 {
                match rng.below(20) {
                    0 => {
                        objects = rng.below(3 * OBJECTS_PER_BLOCK);
                        model.resize(objects as usize, ObjectState::Nonexistent);
                        map.resize(objects);
                        on_disk.resize(map.blocks() as usize * MAP_BLOCK, 0);
                    }
                    1 => {
                        map.mark_clean();
                        for s in model.iter_mut().filter(|s| **s == ObjectState::Exists) {
                            *s = ObjectState::ExistsClean;
                        }
                    }
                    _ if objects > 0 => {
                        let o = rng.below(objects);
                        let s = STATES_ALL[rng.below(4) as usize];
                        let changed = map.set(o, s).unwrap();
                        assert_eq!(changed, model[o as usize] != s, "case {case}");
                        model[o as usize] = s;
                    }
                    _ => {}
                }
                // Write out what changed, as the image does.
                for (b, block) in map.take_dirty() {
                    let at = b as usize * MAP_BLOCK;
                    on_disk[at..at + MAP_BLOCK].copy_from_slice(&block);
                }
                assert_eq!(
                    on_disk,
                    encoded(&map),
                    "case {case}: a changed block stayed clean"
                );
            }
            for (o, s) in model.iter().enumerate() {
                assert_eq!(map.get(o as u64), *s, "case {case} object {o}");
            }
            let back = ObjectMap::decode(&on_disk, objects).unwrap();
            assert_eq!(
                (0..objects).map(|o| back.get(o)).collect::<Vec<_>>(),
                model,
                "case {case}"
            );
        }
    }

    #[test]
    fn damage_is_refused_naming_the_block() {
        let mut map = ObjectMap::new(OBJECTS_PER_BLOCK + 10);
        map.set(OBJECTS_PER_BLOCK + 3, ObjectState::Exists).unwrap();
        let good = encoded(&map);
        assert_eq!(ObjectMap::decode(&good, map.objects()).unwrap(), {
            let mut m = map.clone();
            m.take_dirty();
            m
        });
        let mut flipped = good.clone();
        flipped[MAP_BLOCK + 100] ^= 4;
        let e = ObjectMap::decode(&flipped, map.objects()).unwrap_err();
        assert!(
            matches!(e, ImageError::MapCorrupt { block: Some(1), .. }),
            "{e}"
        );
        // Blocks swapped: each has a good crc but names the other place.
        let mut swapped = good[MAP_BLOCK..].to_vec();
        swapped.extend_from_slice(&good[..MAP_BLOCK]);
        let e = ObjectMap::decode(&swapped, map.objects()).unwrap_err();
        assert!(e.to_string().contains("holds block 1"), "{e}");
        // A state past the end, with a good crc.
        let mut past = map.clone();
        past.objects = OBJECTS_PER_BLOCK + 20;
        past.states.resize(past.objects.div_ceil(4) as usize, 0);
        past.set(OBJECTS_PER_BLOCK + 15, ObjectState::Exists)
            .unwrap();
        let e = ObjectMap::decode(&encoded(&past), map.objects()).unwrap_err();
        assert!(e.to_string().contains("past the image"), "{e}");
        assert!(ObjectMap::decode(&good[..MAP_BLOCK], map.objects()).is_err());
    }

    #[test]
    fn fast_diff_comes_from_the_maps() {
        let mut head = ObjectMap::new(10);
        for o in [1, 2, 3] {
            head.set(o, ObjectState::Exists).unwrap();
        }
        let mut snap = head.clone();
        snap.mark_clean();
        head.mark_clean();
        assert!(diff(&snap, &head).is_empty());
        head.set(2, ObjectState::Exists).unwrap(); // rewritten
        head.set(3, ObjectState::Nonexistent).unwrap(); // discarded
        head.set(7, ObjectState::Exists).unwrap(); // new
        assert_eq!(diff(&snap, &head), vec![2, 3, 7]);
    }
}
