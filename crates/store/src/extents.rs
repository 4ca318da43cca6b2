//! An object's extent map: which byte ranges of the object live where on the main device, with
//! a crc32c per checksum block.
//!
//! Mappings are whole allocation units (`min_alloc_size`) at both ends, so every allocation unit
//! of the device is mapped by whole units of objects and a reference count per unit is exact.
//! The map is cut into shards of `span` object bytes, each stored under its own key (format.rs),
//! so a 4 KiB overwrite of a large object rewrites one small shard, not the whole map; a mapping
//! never crosses a shard boundary (it is split there).
//!
//! Shards are `Arc`s: a transaction works on a clone of the map (a clone of the shard pointers)
//! and `Arc::make_mut` copies only the shards it changes. Comparing pointers with the map it
//! started from then says exactly which shard keys to write — and throwing the clone away undoes
//! a failed transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::format::ExtentRecord;

/// One mapping: `len` bytes of the object (a multiple of the allocation unit) at `phys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LExtent {
    pub len: u32,
    pub phys: u64,
}

/// The mappings of one shard, by object offset, and the checksums of its checksum blocks: a
/// dense array over the whole shard (values under holes mean nothing), so copying a shard is
/// two allocations however many mappings it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub extents: BTreeMap<u64, LExtent>,
    pub csums: Vec<u32>,
}

/// A stretch of an object range: unmapped (reads as zeroes), or mapped to the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Hole {
        offset: u64,
        len: u64,
    },
    Mapped {
        offset: u64,
        len: u64,
        phys: u64,
        /// The checksums of the piece's checksum blocks (the piece starts and ends on them when
        /// the range asked for does).
        csums: Vec<u32>,
    },
}

#[cfg(test)]
impl Piece {
    pub fn offset(&self) -> u64 {
        match self {
            Piece::Hole { offset, .. } | Piece::Mapped { offset, .. } => *offset,
        }
    }
    pub fn len(&self) -> u64 {
        match self {
            Piece::Hole { len, .. } | Piece::Mapped { len, .. } => *len,
        }
    }
}

/// The shards of a map, sorted by index: a vector, so copying it (once per transaction that
/// changes the object) is one allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ShardTable(Vec<(u32, Arc<Shard>)>);

impl ShardTable {
    fn find(&self, index: u32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&index, |(i, _)| *i)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn iter(&self) -> impl DoubleEndedIterator<Item = (&u32, &Arc<Shard>)> {
        self.0.iter().map(|(i, s)| (i, s))
    }
    fn values(&self) -> impl DoubleEndedIterator<Item = &Arc<Shard>> {
        self.0.iter().map(|(_, s)| s)
    }
    fn keys(&self) -> impl Iterator<Item = &u32> {
        self.0.iter().map(|(i, _)| i)
    }
    fn get(&self, index: &u32) -> Option<&Arc<Shard>> {
        self.find(*index).ok().map(|at| &self.0[at].1)
    }
    fn contains_key(&self, index: &u32) -> bool {
        self.find(*index).is_ok()
    }
    fn get_mut(&mut self, index: &u32) -> Option<&mut Arc<Shard>> {
        self.find(*index).ok().map(|at| &mut self.0[at].1)
    }
    fn insert(&mut self, index: u32, shard: Arc<Shard>) {
        match self.find(index) {
            Ok(at) => self.0[at].1 = shard,
            Err(at) => self.0.insert(at, (index, shard)),
        }
    }
    fn remove(&mut self, index: &u32) {
        if let Ok(at) = self.find(*index) {
            self.0.remove(at);
        }
    }
    fn get_or_insert_with(
        &mut self,
        index: u32,
        f: impl FnOnce() -> Arc<Shard>,
    ) -> &mut Arc<Shard> {
        let at = match self.find(index) {
            Ok(at) => at,
            Err(at) => {
                self.0.insert(at, (index, f()));
                at
            }
        };
        &mut self.0[at].1
    }
    /// Shards with indexes in `first..=last`.
    fn range(&self, first: u32, last: u32) -> impl Iterator<Item = (&u32, &Arc<Shard>)> {
        let from = self.find(first).unwrap_or_else(|at| at);
        self.0[from..]
            .iter()
            .take_while(move |(i, _)| *i <= last)
            .map(|(i, s)| (i, s))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentMap {
    span: u64,
    csum_block: u64,
    /// Shared between copies until one of them changes (then only the top map and the shards
    /// that change are copied).
    shards: Arc<ShardTable>,
}

impl ExtentMap {
    pub fn new(span: u64, csum_block: u64) -> ExtentMap {
        debug_assert!(span.is_power_of_two() && csum_block.is_power_of_two() && span >= csum_block);
        ExtentMap {
            span,
            csum_block,
            shards: Arc::new(ShardTable::default()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Bytes of memory the map holds, roughly (counted per shard, so it costs nothing per
    /// mapping).
    pub fn memory(&self) -> usize {
        self.shards
            .values()
            .map(|s| 96 + s.extents.len() * 48 + s.csums.len() * 4)
            .sum()
    }

    fn shard_of(&self, offset: u64) -> u32 {
        (offset / self.span) as u32
    }

    fn new_shard(&self) -> Shard {
        Shard {
            extents: BTreeMap::new(),
            csums: vec![0; (self.span / self.csum_block) as usize],
        }
    }

    /// Every mapping in object order, with its checksums.
    pub fn iter(&self) -> impl Iterator<Item = (u64, LExtent, &[u32])> + '_ {
        let (span, cb) = (self.span, self.csum_block);
        self.shards.iter().flat_map(move |(i, s)| {
            let start = *i as u64 * span;
            s.extents.iter().map(move |(o, e)| {
                let first = ((o - start) / cb) as usize;
                (
                    *o,
                    *e,
                    &s.csums[first..first + (e.len as u64 / cb) as usize],
                )
            })
        })
    }

    /// Where the last mapping ends (0: none).
    pub fn end(&self) -> u64 {
        self.shards
            .values()
            .next_back()
            .and_then(|s| s.extents.iter().next_back())
            .map_or(0, |(o, e)| o + e.len as u64)
    }

    /// Loads one shard's records (mount path).
    pub fn load_shard(&mut self, index: u32, records: Vec<ExtentRecord>) {
        let start = index as u64 * self.span;
        let mut shard = self.new_shard();
        for r in records {
            let first = ((r.offset - start) / self.csum_block) as usize;
            let n = r.csums.len().min(shard.csums.len().saturating_sub(first));
            shard.csums[first..first + n].copy_from_slice(&r.csums[..n]);
            shard.extents.insert(
                r.offset,
                LExtent {
                    len: r.len,
                    phys: r.phys,
                },
            );
        }
        if !shard.extents.is_empty() {
            Arc::make_mut(&mut self.shards).insert(index, Arc::new(shard));
        }
    }

    /// A shard's value for its key (format.rs, `encode_shard`), encoded straight from memory.
    pub fn encode_shard(&self, index: u32) -> Vec<u8> {
        let start = index as u64 * self.span;
        let cb = self.csum_block;
        let empty = Shard {
            extents: BTreeMap::new(),
            csums: Vec::new(),
        };
        let shard = self.shards.get(&index).map_or(&empty, |s| &**s);
        super::format::encode_shard_with(
            start,
            shard.extents.len(),
            shard.extents.iter().map(|(o, e)| {
                let first = ((o - start) / cb) as usize;
                (
                    *o,
                    e.len,
                    e.phys,
                    &shard.csums[first..first + (e.len as u64 / cb) as usize],
                )
            }),
        )
    }

    /// The shards that differ from `before`: (written: present here and new or changed,
    /// deleted: present in `before` only).
    pub fn changed_shards(&self, before: &ExtentMap) -> (Vec<u32>, Vec<u32>) {
        if Arc::ptr_eq(&self.shards, &before.shards) {
            return (Vec::new(), Vec::new());
        }
        let mut written = Vec::new();
        for (i, s) in self.shards.iter() {
            match before.shards.get(i) {
                Some(b) if Arc::ptr_eq(b, s) => {}
                _ => written.push(*i),
            }
        }
        let deleted = before
            .shards
            .keys()
            .filter(|i| !self.shards.contains_key(i))
            .copied()
            .collect();
        (written, deleted)
    }

    /// Every shard index in use.
    pub fn shard_indexes(&self) -> Vec<u32> {
        self.shards.keys().copied().collect()
    }

    /// The pieces of `offset..offset + len`, in order, covering it exactly.
    pub fn pieces(&self, offset: u64, len: u64) -> Vec<Piece> {
        let end = offset + len;
        let cb = self.csum_block;
        let mut out = Vec::new();
        let mut at = offset;
        let first = self.shard_of(offset);
        let last = self.shard_of(end.saturating_sub(1).max(offset));
        for (index, shard) in self.shards.range(first, last) {
            let shard_start = *index as u64 * self.span;
            // The mapping that starts before `at` may reach into the range.
            let before = shard.extents.range(..at).next_back();
            for (&start, e) in before.into_iter().chain(shard.extents.range(at..end)) {
                let e_end = start + e.len as u64;
                if e_end <= at || start >= end {
                    continue;
                }
                if start > at {
                    out.push(Piece::Hole {
                        offset: at,
                        len: start - at,
                    });
                    at = start;
                }
                let piece_end = e_end.min(end);
                let first_block = ((at - shard_start) / cb) as usize;
                let last_block = (piece_end - shard_start).div_ceil(cb) as usize;
                out.push(Piece::Mapped {
                    offset: at,
                    len: piece_end - at,
                    phys: e.phys + (at - start),
                    csums: shard.csums[first_block..last_block].to_vec(),
                });
                at = piece_end;
            }
        }
        if at < end {
            out.push(Piece::Hole {
                offset: at,
                len: end - at,
            });
        }
        out
    }

    /// Unmaps `offset..offset + len` (unit-aligned), splitting mappings at its ends; the device
    /// ranges that were mapped there go to `released` as (physical offset, length).
    pub fn punch(&mut self, offset: u64, len: u64, released: &mut Vec<(u64, u64)>) {
        if len == 0 {
            return;
        }
        let end = offset + len;
        let first = self.shard_of(offset);
        let last = self.shard_of(end - 1);
        let touched: Vec<u32> = self
            .shards
            .range(first, last)
            .filter(|(_, shard)| {
                let before = shard.extents.range(..offset).next_back();
                before
                    .into_iter()
                    .chain(shard.extents.range(offset..end))
                    .any(|(s, e)| s + e.len as u64 > offset && *s < end)
            })
            .map(|(i, _)| *i)
            .collect();
        if touched.is_empty() {
            return;
        }
        let shards = Arc::make_mut(&mut self.shards);
        for index in touched {
            let shard = Arc::make_mut(shards.get_mut(&index).expect("listed"));
            let starts: Vec<u64> = {
                let before = shard.extents.range(..offset).next_back().map(|(s, _)| *s);
                before
                    .into_iter()
                    .chain(shard.extents.range(offset..end).map(|(s, _)| *s))
                    .collect()
            };
            for start in starts {
                let e = shard.extents.remove(&start).expect("listed");
                let e_end = start + e.len as u64;
                if e_end <= offset || start >= end {
                    shard.extents.insert(start, e);
                    continue;
                }
                let cut_from = offset.max(start);
                let cut_to = end.min(e_end);
                released.push((e.phys + (cut_from - start), cut_to - cut_from));
                if start < cut_from {
                    shard.extents.insert(
                        start,
                        LExtent {
                            len: (cut_from - start) as u32,
                            phys: e.phys,
                        },
                    );
                }
                if cut_to < e_end {
                    shard.extents.insert(
                        cut_to,
                        LExtent {
                            len: (e_end - cut_to) as u32,
                            phys: e.phys + (cut_to - start),
                        },
                    );
                }
            }
            if shard.extents.is_empty() {
                shards.remove(&index);
            }
        }
    }

    /// Maps `len` bytes at `offset` (which must be unmapped) to `phys`, splitting at shard
    /// boundaries and merging with a mapping that ends exactly where this one starts, on the
    /// device too.
    pub fn insert(&mut self, offset: u64, len: u64, phys: u64, csums: &[u32]) {
        let cb = self.csum_block;
        let mut at = offset;
        let end = offset + len;
        let fresh = self.new_shard();
        let shards = Arc::make_mut(&mut self.shards);
        while at < end {
            let index = (at / self.span) as u32;
            let shard_start = index as u64 * self.span;
            let piece_end = end.min(shard_start + self.span);
            let piece_phys = phys + (at - offset);
            let shard = Arc::make_mut(shards.get_or_insert_with(index, || Arc::new(fresh.clone())));
            let from = ((at - offset) / cb) as usize;
            let to = ((piece_end - offset) / cb) as usize;
            let first = ((at - shard_start) / cb) as usize;
            shard.csums[first..first + (to - from)].copy_from_slice(&csums[from..to]);
            let merged = match shard.extents.range_mut(..at).next_back() {
                Some((s, prev))
                    if s + prev.len as u64 == at && prev.phys + prev.len as u64 == piece_phys =>
                {
                    prev.len += (piece_end - at) as u32;
                    true
                }
                _ => false,
            };
            if !merged {
                shard.extents.insert(
                    at,
                    LExtent {
                        len: (piece_end - at) as u32,
                        phys: piece_phys,
                    },
                );
            }
            at = piece_end;
        }
    }

    /// Replaces the checksums of the checksum blocks of `offset..` (mapped, block-aligned) after
    /// an overwrite in place.
    pub fn set_csums(&mut self, offset: u64, csums: &[u32]) {
        let cb = self.csum_block;
        let shards = Arc::make_mut(&mut self.shards);
        let mut at = offset;
        let mut remaining = csums;
        while !remaining.is_empty() {
            let index = (at / self.span) as u32;
            let shard_start = index as u64 * self.span;
            let Some(shard) = shards.get_mut(&index) else {
                debug_assert!(false, "set_csums on an unmapped range");
                return;
            };
            let shard = Arc::make_mut(shard);
            let first = ((at - shard_start) / cb) as usize;
            let n = (shard.csums.len() - first).min(remaining.len());
            shard.csums[first..first + n].copy_from_slice(&remaining[..n]);
            remaining = &remaining[n..];
            at += n as u64 * cb;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAN: u64 = 64 << 10;
    const CB: u64 = 4096;

    fn csums(n: u64, base: u32) -> Vec<u32> {
        (0..n as u32).map(|i| base + i).collect()
    }

    #[test]
    fn insert_merges_contiguous_writes_and_splits_at_shards() {
        let mut m = ExtentMap::new(SPAN, CB);
        m.insert(0, 8192, 1 << 20, &csums(2, 0));
        m.insert(8192, 8192, (1 << 20) + 8192, &csums(2, 2));
        assert_eq!(m.iter().count(), 1, "contiguous on both sides: one mapping");
        m.insert(SPAN - 4096, 8192, 5 << 20, &csums(2, 100));
        assert_eq!(m.shard_indexes(), vec![0, 1]);
        let p = m.pieces(0, SPAN + 8192);
        assert_eq!(
            p,
            vec![
                Piece::Mapped {
                    offset: 0,
                    len: 16384,
                    phys: 1 << 20,
                    csums: csums(4, 0)
                },
                Piece::Hole {
                    offset: 16384,
                    len: SPAN - 4096 - 16384
                },
                Piece::Mapped {
                    offset: SPAN - 4096,
                    len: 4096,
                    phys: 5 << 20,
                    csums: vec![100]
                },
                Piece::Mapped {
                    offset: SPAN,
                    len: 4096,
                    phys: (5 << 20) + 4096,
                    csums: vec![101]
                },
                Piece::Hole {
                    offset: SPAN + 4096,
                    len: 4096
                },
            ]
        );
    }

    #[test]
    fn punch_splits_and_releases_exactly_the_range() {
        let mut m = ExtentMap::new(SPAN, CB);
        m.insert(0, 32768, 1 << 20, &csums(8, 0));
        let before = m.clone();
        let mut released = Vec::new();
        m.punch(8192, 8192, &mut released);
        assert_eq!(released, vec![((1 << 20) + 8192, 8192)]);
        let p = m.pieces(0, 32768);
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[2],
            Piece::Mapped {
                offset: 16384,
                len: 16384,
                phys: (1 << 20) + 16384,
                csums: csums(4, 4)
            }
        );
        // The clone taken before is untouched (shards are copied on write).
        assert_eq!(before.iter().count(), 1);
        assert_eq!(m.changed_shards(&before), (vec![0], vec![]));
        released.clear();
        m.punch(0, SPAN, &mut released);
        assert!(m.is_empty());
        assert_eq!(m.changed_shards(&before), (vec![], vec![0]));
        assert_eq!(released.iter().map(|r| r.1).sum::<u64>(), 24576);
    }

    #[test]
    fn set_csums_updates_in_place_across_shards() {
        let mut m = ExtentMap::new(SPAN, CB);
        m.insert(SPAN - 8192, 16384, 1 << 20, &csums(4, 0));
        m.set_csums(SPAN - 4096, &[70, 71]);
        let all: Vec<u32> = m
            .pieces(SPAN - 8192, 16384)
            .into_iter()
            .flat_map(|p| match p {
                Piece::Mapped { csums, .. } => csums,
                Piece::Hole { .. } => vec![],
            })
            .collect();
        assert_eq!(all, vec![0, 70, 71, 3]);
    }

    /// The map against a byte-per-unit model under random inserts and punches.
    #[test]
    fn random_operations_match_a_unit_model() {
        let mut rng = bluepoll_base::rand::Rng::new(5);
        let units = 64u64;
        let mut model: Vec<Option<u64>> = vec![None; units as usize];
        let mut m = ExtentMap::new(16384, CB);
        let mut next_phys = 1u64 << 30;
        for _ in 0..2000 {
            let a = rng.below(units);
            let n = 1 + rng.below((units - a).min(9));
            let mut released = Vec::new();
            m.punch(a * CB, n * CB, &mut released);
            let freed: u64 = released.iter().map(|r| r.1).sum();
            let expect_freed = (a..a + n).filter(|u| model[*u as usize].is_some()).count() as u64;
            assert_eq!(freed, expect_freed * CB);
            for u in a..a + n {
                model[u as usize] = None;
            }
            if rng.below(3) > 0 {
                let phys = next_phys;
                next_phys += n * CB + if rng.below(2) == 0 { 0 } else { CB };
                let unit_csums: Vec<u32> = (0..n).map(|i| ((phys + i * CB) / CB) as u32).collect();
                m.insert(a * CB, n * CB, phys, &unit_csums);
                for u in a..a + n {
                    model[u as usize] = Some(phys + (u - a) * CB);
                }
            }
            for p in m.pieces(0, units * CB) {
                let first = p.offset() / CB;
                for k in 0..p.len() / CB {
                    let want = model[(first + k) as usize];
                    match &p {
                        Piece::Hole { .. } => assert_eq!(want, None),
                        Piece::Mapped { phys, csums, .. } => {
                            assert_eq!(want, Some(phys + k * CB));
                            assert_eq!(csums[k as usize], ((phys + k * CB) / CB) as u32, "csum");
                        }
                    }
                }
            }
        }
    }
}
