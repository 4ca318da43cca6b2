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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LExtent {
    pub len: u32,
    pub phys: u64,
    /// One crc32c per checksum block of the mapping.
    pub csums: Vec<u32>,
}

/// The mappings of one shard, by object offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shard {
    pub extents: BTreeMap<u64, LExtent>,
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentMap {
    span: u64,
    csum_block: u64,
    shards: BTreeMap<u32, Arc<Shard>>,
}

impl ExtentMap {
    pub fn new(span: u64, csum_block: u64) -> ExtentMap {
        debug_assert!(span.is_power_of_two() && csum_block.is_power_of_two() && span >= csum_block);
        ExtentMap {
            span,
            csum_block,
            shards: BTreeMap::new(),
        }
    }

    pub fn span(&self) -> u64 {
        self.span
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Number of mappings (for cache accounting).
    pub fn len(&self) -> usize {
        self.shards.values().map(|s| s.extents.len()).sum()
    }

    /// Bytes of memory the map holds, roughly.
    pub fn memory(&self) -> usize {
        self.shards
            .values()
            .map(|s| {
                64 + s
                    .extents
                    .values()
                    .map(|e| 48 + e.csums.len() * 4)
                    .sum::<usize>()
            })
            .sum()
    }

    fn shard_of(&self, offset: u64) -> u32 {
        (offset / self.span) as u32
    }

    /// Every mapping in object order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &LExtent)> + '_ {
        self.shards
            .values()
            .flat_map(|s| s.extents.iter().map(|(o, e)| (*o, e)))
    }

    /// Loads one shard's records (mount path).
    pub fn load_shard(&mut self, index: u32, records: Vec<ExtentRecord>) {
        let mut shard = Shard::default();
        for r in records {
            shard.extents.insert(
                r.offset,
                LExtent {
                    len: r.len,
                    phys: r.phys,
                    csums: r.csums,
                },
            );
        }
        if !shard.extents.is_empty() {
            self.shards.insert(index, Arc::new(shard));
        }
    }

    /// A shard's records for its key, and the object offset it starts at.
    pub fn shard_records(&self, index: u32) -> (u64, Vec<ExtentRecord>) {
        let start = index as u64 * self.span;
        let records = self.shards.get(&index).map_or_else(Vec::new, |s| {
            s.extents
                .iter()
                .map(|(o, e)| ExtentRecord {
                    offset: *o,
                    len: e.len,
                    phys: e.phys,
                    csums: e.csums.clone(),
                })
                .collect()
        });
        (start, records)
    }

    /// The shards that differ from `before`: (written: present here and new or changed,
    /// deleted: present in `before` only).
    pub fn changed_shards(&self, before: &ExtentMap) -> (Vec<u32>, Vec<u32>) {
        let mut written = Vec::new();
        for (i, s) in &self.shards {
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
        let mut out = Vec::new();
        let mut at = offset;
        let first = self.shard_of(offset);
        let last = self.shard_of(end.saturating_sub(1).max(offset));
        for shard in self.shards.range(first..=last).map(|(_, s)| s) {
            // The mapping that starts before `at` may reach into the range.
            let before = shard.extents.range(..at).next_back();
            let candidates = before.into_iter().chain(shard.extents.range(at..end));
            for (&start, e) in candidates {
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
                let skip = at - start;
                let first_block = (skip / self.csum_block) as usize;
                let last_block = (piece_end - start).div_ceil(self.csum_block) as usize;
                out.push(Piece::Mapped {
                    offset: at,
                    len: piece_end - at,
                    phys: e.phys + skip,
                    csums: e.csums[first_block..last_block.min(e.csums.len())].to_vec(),
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

    /// Whether every byte of the range is mapped.
    pub fn fully_mapped(&self, offset: u64, len: u64) -> bool {
        self.pieces(offset, len)
            .iter()
            .all(|p| matches!(p, Piece::Mapped { .. }))
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
        let indexes: Vec<u32> = self.shards.range(first..=last).map(|(i, _)| *i).collect();
        let cb = self.csum_block;
        for index in indexes {
            let touched = {
                let shard = &self.shards[&index];
                let before = shard.extents.range(..offset).next_back();
                before
                    .into_iter()
                    .chain(shard.extents.range(offset..end))
                    .any(|(s, e)| s + e.len as u64 > offset && *s < end)
            };
            if !touched {
                continue;
            }
            let shard = Arc::make_mut(self.shards.get_mut(&index).expect("listed"));
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
                    let keep = cut_from - start;
                    shard.extents.insert(
                        start,
                        LExtent {
                            len: keep as u32,
                            phys: e.phys,
                            csums: e.csums[..(keep / cb) as usize].to_vec(),
                        },
                    );
                }
                if cut_to < e_end {
                    let skip = cut_to - start;
                    shard.extents.insert(
                        cut_to,
                        LExtent {
                            len: (e_end - cut_to) as u32,
                            phys: e.phys + skip,
                            csums: e.csums[(skip / cb) as usize..].to_vec(),
                        },
                    );
                }
            }
            if shard.extents.is_empty() {
                self.shards.remove(&index);
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
        while at < end {
            let index = self.shard_of(at);
            let shard_end = (index as u64 + 1) * self.span;
            let piece_end = end.min(shard_end);
            let skip = at - offset;
            let piece_csums = &csums[(skip / cb) as usize..((piece_end - offset) / cb) as usize];
            let piece_phys = phys + skip;
            let shard = Arc::make_mut(self.shards.entry(index).or_default());
            let merged = match shard.extents.range_mut(..at).next_back() {
                Some((s, prev))
                    if s + prev.len as u64 == at && prev.phys + prev.len as u64 == piece_phys =>
                {
                    prev.len += (piece_end - at) as u32;
                    prev.csums.extend_from_slice(piece_csums);
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
                        csums: piece_csums.to_vec(),
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
        let mut at = offset;
        let mut remaining = csums;
        while !remaining.is_empty() {
            let index = self.shard_of(at);
            let Some(shard) = self.shards.get_mut(&index) else {
                debug_assert!(false, "set_csums on an unmapped range");
                return;
            };
            let shard = Arc::make_mut(shard);
            let Some((start, e)) = shard.extents.range_mut(..=at).next_back() else {
                debug_assert!(false, "set_csums on an unmapped range");
                return;
            };
            let first = ((at - start) / cb) as usize;
            let n = (e.csums.len() - first).min(remaining.len());
            e.csums[first..first + n].copy_from_slice(&remaining[..n]);
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
        assert_eq!(m.len(), 1, "contiguous on both sides: one mapping");
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
        assert_eq!(before.len(), 1);
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
        let mut rng = crate::rand::Rng::new(5);
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
