//! Space on the main device: one allocator shared by the object store and BlueFS, the extra
//! references of allocation units that clones share, and the freelist changes a transaction
//! commits.
//!
//! - **One allocator, two users.** BlueFS takes main-device space through [`SharedSpace`] when
//!   its own devices are full and records it only in its own log; the store marks those extents
//!   used at mount. The store's own allocations stop short of `reserve` free bytes, so object
//!   data can never take the space RocksDB needs to keep committing: a full store answers
//!   NoSpace while its metadata store stays writable (Ceph's "bluefs enospc" outage, designed out).
//! - **The freelist** is a bitmap in the kv, one bit per allocation unit, 1024 units per key,
//!   changed only by the `bluepoll.u64add` merge: adding 2^i sets bit i (it was clear: the unit
//!   was free in memory), subtracting clears it. Additions commute, so shards commit their
//!   changes in any order with no read-modify-write. BlueFS's extents are not in it.
//! - **References.** A unit mapped by one object has no record. Each further mapping (a clone)
//!   adds one to `R unit`; unmapping takes one off, and the unit is freed only when no mapping
//!   is left. Clones stay inside a collection, so all changes to a unit's count come from one
//!   shard, in order; the counts live in memory in one map for every shard.
//! - **Free after commit.** Units a transaction frees go back to the allocator only after that
//!   transaction is durable and every transaction before it in its collection is done (so a
//!   deferred write still to be applied there cannot land on space given to someone else), and
//!   after every read that might still be reading them (`shard.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::error::StoreError;
use super::format::{FREELIST_LANES, FREELIST_UNITS_PER_KEY, freelist_key, refs_key};
use super::kv_sync::KvOps;
use bluepoll_base::sync::lock;
use bluepoll_bluefs::{AllocError, DeviceId, Extent, ExtentAllocator, SharedSpace};

pub(crate) struct StoreSpace {
    alloc: Mutex<ExtentAllocator>,
    unit: u64,
    reserve: u64,
    /// Extra references per shared unit (absent: one mapping or free).
    refs: Mutex<HashMap<u64, u32>>,
    /// Whether `refs` has any entry, so the common case (no clones) takes no lock.
    any_refs: std::sync::atomic::AtomicBool,
    /// Bytes in use past which a warning is given, and past which growth is refused.
    nearfull: u64,
    full: u64,
    full_ratio: f64,
    /// Whether usage is past `nearfull` (the warning is given on each crossing).
    warned: std::sync::atomic::AtomicBool,
}

/// Free bytes beyond the BlueFS reserve below which the store counts as at its failsafe.
const FAILSAFE_SLACK: u64 = 1 << 20;

/// How full the main device is, as the ratios see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fullness {
    /// Below the nearfull ratio.
    Ok,
    /// Past the nearfull ratio: a warning, nothing refused.
    Nearfull,
    /// Past the full ratio: transactions that would use more space are refused.
    Full,
    /// Less than 1 MiB is left beyond the BlueFS reserve, which object data never takes (the
    /// failsafe; RocksDB can still commit deletes).
    Failsafe,
}

impl StoreSpace {
    pub fn with_ratios(
        device_size: u64,
        unit: u64,
        data_start: u64,
        reserve: u64,
        nearfull_ratio: f64,
        full_ratio: f64,
    ) -> StoreSpace {
        StoreSpace {
            alloc: Mutex::new(ExtentAllocator::new(
                DeviceId::Slow,
                device_size,
                unit,
                data_start,
            )),
            unit,
            reserve,
            refs: Mutex::new(HashMap::new()),
            any_refs: std::sync::atomic::AtomicBool::new(false),
            // Of the space after the store's own areas (what objects and BlueFS share).
            nearfull: data_start + ((device_size - data_start) as f64 * nearfull_ratio) as u64,
            full: data_start + ((device_size - data_start) as f64 * full_ratio) as u64,
            full_ratio,
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn fullness(&self) -> Fullness {
        let a = lock(&self.alloc);
        let free = a.free_bytes();
        let used = a.size() - free;
        if free < self.reserve + FAILSAFE_SLACK.max(self.unit) {
            Fullness::Failsafe
        } else if used > self.full {
            Fullness::Full
        } else if used > self.nearfull {
            Fullness::Nearfull
        } else {
            Fullness::Ok
        }
    }

    /// After a transaction took `grown` (> 0) bytes more than it frees: refused past the full
    /// ratio (its allocation is already counted in use). Warns once when usage crosses
    /// nearfull.
    pub fn check_growth(&self, grown: u64) -> Result<(), StoreError> {
        let (used, total) = {
            let a = lock(&self.alloc);
            (a.size() - a.free_bytes(), a.size())
        };
        let near = used > self.nearfull;
        if near != self.warned.swap(near, std::sync::atomic::Ordering::Relaxed) && near {
            log::warn!(
                "bluepoll store: nearfull: {used} of {total} bytes of the main device in use (full at {})",
                self.full
            );
        }
        if used > self.full {
            return Err(StoreError::Full {
                used: used - grown,
                total,
                limit: self.full,
                ratio: self.full_ratio,
            });
        }
        Ok(())
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    pub fn free_bytes(&self) -> u64 {
        lock(&self.alloc).free_bytes()
    }

    pub fn size(&self) -> u64 {
        lock(&self.alloc).size()
    }

    /// `want` bytes (a multiple of the unit) for object data, leaving the reserve free.
    pub fn allocate(&self, want: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut a = lock(&self.alloc);
        match a.allocate_keeping(want, self.reserve) {
            Ok(extents) => Ok(extents.iter().map(|e| (e.offset, e.length)).collect()),
            Err(AllocError::NoSpace { free, .. }) => Err(StoreError::NoSpace {
                wanted: want,
                free,
                reserve: self.reserve,
            }),
            Err(e) => Err(StoreError::Corrupt {
                reason: format!("allocator: {e}"),
            }),
        }
    }

    /// Returns device ranges to free space. A failure means the caller's bookkeeping is wrong
    /// (a double free): reported, never a panic.
    pub fn release(&self, ranges: &[(u64, u64)]) -> Result<(), StoreError> {
        if ranges.is_empty() {
            return Ok(());
        }
        let extents: Vec<Extent> = ranges.iter().map(|&(o, l)| slow(o, l)).collect();
        lock(&self.alloc)
            .release(&extents)
            .map_err(|e| StoreError::Corrupt {
                reason: format!("releasing data space: {e}"),
            })
    }

    pub fn mark_used(&self, ranges: &[(u64, u64)]) -> Result<(), StoreError> {
        let extents: Vec<Extent> = ranges.iter().map(|&(o, l)| slow(o, l)).collect();
        lock(&self.alloc)
            .mark_used(&extents)
            .map_err(|e| StoreError::Corrupt {
                reason: format!("marking used space: {e}"),
            })
    }

    /// Extra references of `unit` (device offset / unit).
    pub fn extra_refs(&self, unit: u64) -> u32 {
        if !self.any_refs.load(std::sync::atomic::Ordering::Acquire) {
            return 0;
        }
        lock(&self.refs).get(&unit).copied().unwrap_or(0)
    }

    pub fn any_shared(&self, first_unit: u64, units: u64) -> bool {
        if !self.any_refs.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let refs = lock(&self.refs);
        !refs.is_empty() && (first_unit..first_unit + units).any(|u| refs.contains_key(&u))
    }

    /// Applies a committed-to-be transaction's reference changes.
    pub fn apply_refs(&self, delta: &BTreeMap<u64, i64>) {
        if delta.is_empty() {
            return;
        }
        let mut refs = lock(&self.refs);
        for (&unit, &d) in delta {
            let now = refs.get(&unit).copied().unwrap_or(0) as i64 + d;
            if now <= 0 {
                refs.remove(&unit);
            } else {
                refs.insert(unit, now as u32);
            }
        }
        self.any_refs
            .store(!refs.is_empty(), std::sync::atomic::Ordering::Release);
    }

    pub fn load_refs(&self, refs: HashMap<u64, u32>) {
        self.any_refs
            .store(!refs.is_empty(), std::sync::atomic::Ordering::Release);
        *lock(&self.refs) = refs;
    }
}

fn slow(offset: u64, length: u64) -> Extent {
    Extent {
        device: DeviceId::Slow,
        offset,
        length,
    }
}

/// BlueFS's view: the same allocator, no reserve (the reserve is there for it).
pub(crate) struct BlueFsSpace(pub std::sync::Arc<StoreSpace>);

impl SharedSpace for BlueFsSpace {
    fn device_size(&self) -> u64 {
        self.0.size()
    }
    fn unit(&self) -> u64 {
        self.0.unit
    }
    fn free_bytes(&self) -> u64 {
        self.0.free_bytes()
    }
    fn allocate(&self, want: u64) -> Result<Vec<Extent>, AllocError> {
        lock(&self.0.alloc).allocate(want)
    }
    fn release(&self, extents: &[Extent]) -> Result<(), AllocError> {
        lock(&self.0.alloc).release(extents)
    }
    fn mark_used(&self, extents: &[Extent]) -> Result<(), AllocError> {
        lock(&self.0.alloc).mark_used(extents)
    }
    fn grow(&self, new_size: u64) -> Result<(), AllocError> {
        lock(&self.0.alloc).grow(new_size)
    }
}

/// Freelist bits and reference counts a transaction changes, as merge operands.
#[derive(Default, Debug)]
pub(crate) struct SpaceDelta {
    groups: BTreeMap<u64, [u64; FREELIST_LANES]>,
    /// Reference-count changes per unit.
    pub refs: BTreeMap<u64, i64>,
}

impl SpaceDelta {
    fn each_unit(&mut self, offset: u64, len: u64, unit: u64, set: bool) {
        let first = offset / unit;
        for u in first..first + len / unit {
            let group = u / FREELIST_UNITS_PER_KEY;
            let bit = u % FREELIST_UNITS_PER_KEY;
            let lanes = self.groups.entry(group).or_default();
            let lane = &mut lanes[(bit / 64) as usize];
            let value = 1u64 << (bit % 64);
            *lane = if set {
                lane.wrapping_add(value)
            } else {
                lane.wrapping_sub(value)
            };
        }
    }

    /// Units newly allocated: their bits go from 0 to 1.
    pub fn allocated(&mut self, offset: u64, len: u64, unit: u64) {
        self.each_unit(offset, len, unit, true);
    }

    /// Units freed: their bits go from 1 to 0.
    pub fn freed(&mut self, offset: u64, len: u64, unit: u64) {
        self.each_unit(offset, len, unit, false);
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.refs.is_empty()
    }

    /// Adds the merge operands to `ops`.
    pub fn emit(&self, ops: &mut KvOps) {
        for (group, lanes) in &self.groups {
            let used = lanes.iter().rposition(|&l| l != 0).map_or(0, |i| i + 1);
            if used == 0 {
                continue;
            }
            let bytes: Vec<u8> = lanes[..used].iter().flat_map(|l| l.to_le_bytes()).collect();
            ops.merge(freelist_key(*group).to_vec(), bytes);
        }
        for (unit, d) in &self.refs {
            if *d != 0 {
                ops.merge(refs_key(*unit).to_vec(), (*d as u64).to_le_bytes().to_vec());
            }
        }
    }
}

/// The allocated ranges a freelist value describes: (first unit, units) runs of set bits.
pub(crate) fn runs_of_group(group: u64, lanes: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (l, &bits) in lanes.iter().enumerate() {
        if bits == 0 {
            continue;
        }
        for b in 0..64 {
            if bits & (1 << b) != 0 {
                let u = group * FREELIST_UNITS_PER_KEY + l as u64 * 64 + b;
                match runs.last_mut() {
                    Some((start, n)) if *start + *n == u => *n += 1,
                    _ => runs.push((u, 1)),
                }
            }
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_then_clear_sums_to_nothing_and_runs_decode() {
        let mut d = SpaceDelta::default();
        d.allocated(4096 * 1020, 4096 * 8, 4096);
        let mut lanes: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut ops = KvOps::default();
        d.emit(&mut ops);
        for (key, value) in ops.merges() {
            let group = super::super::format::key_number(key).unwrap();
            bluepoll_kv::add_lanes(lanes.entry(group).or_default(), value);
        }
        let runs: Vec<(u64, u64)> = lanes
            .iter()
            .flat_map(|(g, l)| runs_of_group(*g, l))
            .collect();
        assert_eq!(runs, vec![(1020, 4), (1024, 4)]);
        let mut d2 = SpaceDelta::default();
        d2.freed(4096 * 1020, 4096 * 8, 4096);
        let mut ops = KvOps::default();
        d2.emit(&mut ops);
        for (key, value) in ops.merges() {
            let group = super::super::format::key_number(key).unwrap();
            bluepoll_kv::add_lanes(lanes.entry(group).or_default(), value);
        }
        assert!(lanes.values().all(|l| l.iter().all(|&x| x == 0)));
    }

    #[test]
    fn the_reserve_is_kept_from_object_data_but_not_from_bluefs() {
        let space = std::sync::Arc::new(StoreSpace::with_ratios(
            1 << 20,
            4096,
            65536,
            256 << 10,
            1.0,
            1.0,
        ));
        let free = space.free_bytes();
        assert!(matches!(
            space.allocate(free - (128 << 10)),
            Err(StoreError::NoSpace { .. })
        ));
        let got = space.allocate(free - (256 << 10)).unwrap();
        assert_eq!(got.iter().map(|r| r.1).sum::<u64>(), free - (256 << 10));
        let bluefs = BlueFsSpace(std::sync::Arc::clone(&space));
        assert!(bluefs.allocate(128 << 10).is_ok());
        assert!(space.release(&got).is_ok());
        assert!(space.release(&got).is_err(), "double free is an error");
    }
}
