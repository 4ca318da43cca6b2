//! Space allocation for BlueFS devices, and the handle through which BlueFS borrows space from the
//! object store's main device.
//!
//! # Design
//!
//! An [`ExtentAllocator`] records a device's *free* space as an extent map (offset → length, in
//! bytes, all multiples of the allocation unit). Free runs are kept maximal: two free runs never
//! touch, because every release merges with its neighbours. That makes the map small on a
//! healthy device (it grows with fragmentation, not with capacity) and makes the questions the
//! filesystem asks cheap: "is this extent entirely free?" is one lookup of the run starting at
//! or before it, "is it entirely allocated?" is one lookup of the run starting before its end.
//! A second index ordered by (length, offset) answers "the smallest free run of at least N
//! bytes" in O(log n), so allocation never scans the map.
//!
//! Everything is in multiples of a power-of-two *unit* (≥ 4 KiB, the device block size): BlueFS
//! asks for larger units on slow devices so that files are made of fewer, longer extents, and a
//! unit-granular map cannot fragment below what the device can address.
//!
//! Every operation is all-or-nothing. `allocate` checks the total before it takes anything;
//! `release` and `mark_used` validate the whole list (range, alignment, state, overlap between
//! the given extents) before changing anything. The callers depend on this: BlueFS returns freed
//! space only after the log that freed it is durable, and mount marks every file's extents used;
//! a half-applied list after an error would leave the in-memory map disagreeing with the log
//! with no way to tell which half happened. Bad input — an extent of another device, past the
//! end, misaligned, already free, already used — is an error value, never a panic, because it
//! usually comes from a log read off disk.
//!
//! # Shared space
//!
//! BlueFS does not own a fixed "gift" of the main (SLOW) device: a gift is either too small (the
//! database runs out of room while the store has plenty) or wastes space the store could use,
//! and moving the boundary needs yet another record that must agree with both sides. Instead
//! BlueFS allocates from the store's own allocator on demand, through [`SharedSpace`], and
//! records those extents only in its own log, like any other file extent. At mount the store
//! asks BlueFS for the extents of all its files and calls `mark_used` on them. So there is one
//! record of BlueFS's space (the BlueFS log) and no circular dependency: the store does not need
//! RocksDB (which lives on BlueFS) to learn what BlueFS owns. [`SharedAllocator`] is the
//! standard implementation: one [`ExtentAllocator`] behind a mutex that both sides hold.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use super::format::{DeviceId, Extent};

/// The smallest allocation unit: the block size every device supports.
const MIN_UNIT: u64 = 4096;

/// Why an allocator operation was refused; in every case the allocator is left unchanged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    /// `wanted` is the request rounded up to the unit (`u64::MAX` if even that overflows);
    /// `free` is what the request could have had, i.e. after any reserve was set aside.
    #[error("no space on the {} device: {wanted} bytes wanted, {free} free", device.name())]
    NoSpace {
        device: DeviceId,
        wanted: u64,
        free: u64,
    },
    /// `mark_used` of space that is already used, reserved, or named twice in the same call.
    #[error("extent {extent:?} is not free on the {} device", extent.device.name())]
    NotFree { extent: Extent },
    /// `release` of space that is (even partly) free, reserved, or named twice in the same call.
    #[error("extent {extent:?} is not allocated on the {} device (double free?)", extent.device.name())]
    NotAllocated { extent: Extent },
    /// An extent of another device, past the end, overflowing, or not unit-aligned. `size` and
    /// `unit` are this allocator's, even when the extent names another device.
    #[error("extent {extent:?} is outside the {} device's {size} bytes or not aligned to its {unit}-byte unit", extent.device.name())]
    OutOfRange {
        extent: Extent,
        size: u64,
        unit: u64,
    },
    /// `grow` to a smaller size; devices only grow.
    #[error("cannot shrink the {} device from {from} to {to} bytes", device.name())]
    Shrink {
        device: DeviceId,
        from: u64,
        to: u64,
    },
}

/// The free space of one device.
///
/// The device is divided into three parts: the reserved prefix (labels, superblocks; never free,
/// never allocated, so neither `mark_used` nor `release` accepts it), the managed range from
/// there up to the size rounded down to the unit, and a sub-unit tail that cannot be addressed
/// at all (extents reaching into it are out of range).
#[derive(Clone, Debug)]
pub struct ExtentAllocator {
    device: DeviceId,
    unit: u64,
    /// Device size in bytes as given (not rounded), so errors and `size()` report what the
    /// device really is.
    size: u64,
    /// First byte that can ever be free: the reserved prefix rounded up to the unit. It may lie
    /// past the end of a small device; then space appears only once `grow` passes it.
    reserved_end: u64,
    free: u64,
    /// Free runs, offset → length; maximal (no two touch) and non-empty.
    by_offset: BTreeMap<u64, u64>,
    /// The same runs as (length, offset), for best-fit and largest-first in O(log n).
    by_size: BTreeSet<(u64, u64)>,
}

impl ExtentAllocator {
    /// Everything in [reserved prefix rounded up to the unit, size rounded down to the unit)
    /// starts free.
    ///
    /// `new` cannot fail, so a unit that is not a power of two ≥ 4096 is clamped rather than
    /// rejected: raised to 4096, then rounded up to the next power of two (2^63 if there is
    /// none). Rounding up keeps every extent at least as aligned and as coarse as the caller
    /// expected; [`unit`](Self::unit) reports the unit actually used.
    pub fn new(device: DeviceId, size: u64, unit: u64, reserved_prefix: u64) -> ExtentAllocator {
        let unit = unit
            .max(MIN_UNIT)
            .checked_next_power_of_two()
            .unwrap_or(1 << 63);
        let reserved_end = reserved_prefix
            .checked_next_multiple_of(unit)
            .unwrap_or(!(unit - 1));
        let mut allocator = ExtentAllocator {
            device,
            unit,
            size,
            reserved_end,
            free: 0,
            by_offset: BTreeMap::new(),
            by_size: BTreeSet::new(),
        };
        let end = allocator.end();
        if end > reserved_end {
            allocator.insert_run(reserved_end, end - reserved_end);
        }
        allocator
    }

    pub fn device(&self) -> DeviceId {
        self.device
    }

    pub fn unit(&self) -> u64 {
        self.unit
    }

    /// The device size in bytes as given to `new` or `grow`, not rounded to the unit.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn free_bytes(&self) -> u64 {
        self.free
    }

    /// Takes `want` bytes rounded up to the unit, all or nothing.
    ///
    /// One extent if any free run is large enough: the smallest such run (lowest offset among
    /// equals), so large runs survive for large requests. Otherwise the fewest pieces: the
    /// largest runs first, the last piece again best fit. The extents come back in offset order
    /// so a file laid out across them reads forward on a spinning SLOW device.
    ///
    /// `NoSpace` leaves the allocator unchanged. `want == 0` always succeeds with no extents.
    pub fn allocate(&mut self, want: u64) -> Result<Vec<Extent>, AllocError> {
        self.allocate_keeping(want, 0)
    }

    /// Like [`allocate`](Self::allocate), but fails rather than leave less than `keep_free`
    /// bytes free, so that ordinary file growth can never eat the runway BlueFS keeps for
    /// growing and compacting its log on a full device.
    ///
    /// `NoSpace` reports as `free` only the bytes above the reserve, since that is what the
    /// request could have had.
    pub fn allocate_keeping(
        &mut self,
        want: u64,
        keep_free: u64,
    ) -> Result<Vec<Extent>, AllocError> {
        if want == 0 {
            return Ok(Vec::new());
        }
        let available = self.free.saturating_sub(keep_free);
        let device = self.device;
        let no_space = move |wanted| AllocError::NoSpace {
            device,
            wanted,
            free: available,
        };
        // A request that cannot even be rounded is larger than any device.
        let Some(wanted) = want.checked_next_multiple_of(self.unit) else {
            return Err(no_space(u64::MAX));
        };
        if wanted > available {
            return Err(no_space(wanted));
        }

        let mut pieces = Vec::new();
        let mut remaining = wanted;
        while remaining > 0 {
            let best_fit = self.by_size.range((remaining, 0)..).next().copied();
            let Some((length, offset)) = best_fit.or_else(|| self.largest_run()) else {
                // Unreachable while `free` matches the map (it is checked above); undo rather
                // than return a partial allocation.
                for piece in &pieces {
                    self.free_range(piece);
                }
                return Err(no_space(wanted));
            };
            let take = length.min(remaining);
            self.take(offset, length, offset, take);
            pieces.push(self.extent(offset, take));
            remaining -= take;
        }
        pieces.sort_by_key(|e| e.offset);
        Ok(pieces)
    }

    /// Returns extents to free space, merging with free neighbours.
    ///
    /// Each extent must be of this device, unit-aligned, inside the managed range and entirely
    /// allocated, and the extents must not overlap each other (releasing the same space twice in
    /// one call is a double free too). The first extent that fails, in the order given, is
    /// reported, and nothing changes. Empty extents are checked for range and alignment and
    /// otherwise ignored.
    pub fn release(&mut self, extents: &[Extent]) -> Result<(), AllocError> {
        let mut accepted = BTreeMap::new();
        for extent in extents {
            let end = self.check_range(extent)?;
            if extent.length == 0 {
                continue;
            }
            if extent.offset < self.reserved_end
                || self.overlaps_free(extent.offset, end)
                || overlaps(&accepted, extent.offset, end)
            {
                return Err(AllocError::NotAllocated { extent: *extent });
            }
            accepted.insert(extent.offset, end);
        }
        for (&offset, &end) in &accepted {
            self.free_range(&self.extent(offset, end - offset));
        }
        Ok(())
    }

    /// Marks extents used — at mount, every extent of every file, since the allocator itself is
    /// not persistent. Same rules as [`release`](Self::release), except that each extent must be
    /// entirely free (`NotFree` otherwise, including overlaps between the given extents).
    pub fn mark_used(&mut self, extents: &[Extent]) -> Result<(), AllocError> {
        let mut accepted = BTreeMap::new();
        for extent in extents {
            let end = self.check_range(extent)?;
            if extent.length == 0 {
                continue;
            }
            let inside_free_run = self
                .run_at_or_before(extent.offset)
                .is_some_and(|(start, length)| start + length >= end);
            if !inside_free_run || overlaps(&accepted, extent.offset, end) {
                return Err(AllocError::NotFree { extent: *extent });
            }
            accepted.insert(extent.offset, end);
        }
        for (&offset, &end) in &accepted {
            // Validation found a run containing each extent, and the extents are disjoint, so
            // taking one leaves the others inside what remains.
            if let Some((start, length)) = self.run_at_or_before(offset) {
                self.take(start, length, offset, end - offset);
            }
        }
        Ok(())
    }

    /// The device grew (`bluefs expand`, or the store's device was enlarged): the space between
    /// the old and the new size becomes free. A smaller size is refused, because space past the
    /// new end may hold file data the allocator cannot see.
    pub fn grow(&mut self, new_size: u64) -> Result<(), AllocError> {
        if new_size < self.size {
            return Err(AllocError::Shrink {
                device: self.device,
                from: self.size,
                to: new_size,
            });
        }
        let start = self.end().max(self.reserved_end);
        self.size = new_size;
        let end = self.end();
        if end > start {
            self.free_range(&self.extent(start, end - start));
        }
        Ok(())
    }

    /// Free runs in offset order, for fsck and tests.
    pub fn free_extents(&self) -> Vec<Extent> {
        self.by_offset
            .iter()
            .map(|(&offset, &length)| self.extent(offset, length))
            .collect()
    }

    /// End of the managed range: the size rounded down to the unit.
    fn end(&self) -> u64 {
        self.size & !(self.unit - 1)
    }

    fn extent(&self, offset: u64, length: u64) -> Extent {
        Extent {
            device: self.device,
            offset,
            length,
        }
    }

    /// Checks device, alignment and range without trusting `offset + length` not to overflow;
    /// returns the end.
    fn check_range(&self, extent: &Extent) -> Result<u64, AllocError> {
        let mask = self.unit - 1;
        extent
            .offset
            .checked_add(extent.length)
            .filter(|&end| {
                extent.device == self.device
                    && extent.offset & mask == 0
                    && extent.length & mask == 0
                    && end <= self.end()
            })
            .ok_or(AllocError::OutOfRange {
                extent: *extent,
                size: self.size,
                unit: self.unit,
            })
    }

    /// Whether [start, end) touches free space. Runs are disjoint, so only the one starting last
    /// before `end` can overlap: every earlier run ends before that one starts.
    fn overlaps_free(&self, start: u64, end: u64) -> bool {
        self.by_offset
            .range(..end)
            .next_back()
            .is_some_and(|(&run, &length)| run + length > start)
    }

    fn run_at_or_before(&self, offset: u64) -> Option<(u64, u64)> {
        self.by_offset
            .range(..=offset)
            .next_back()
            .map(|(&start, &length)| (start, length))
    }

    /// The largest free run, lowest offset among equals (a reverse walk of the size index would
    /// give the highest).
    fn largest_run(&self) -> Option<(u64, u64)> {
        let &(length, _) = self.by_size.last()?;
        self.by_size.range((length, 0)..).next().copied()
    }

    fn insert_run(&mut self, offset: u64, length: u64) {
        self.by_offset.insert(offset, length);
        self.by_size.insert((length, offset));
        self.free += length;
    }

    fn remove_run(&mut self, offset: u64, length: u64) {
        self.by_offset.remove(&offset);
        self.by_size.remove(&(length, offset));
        self.free -= length;
    }

    /// Takes [offset, offset + length) out of the free run [run, run + run_length) that
    /// contains it, keeping whatever is left on either side.
    fn take(&mut self, run: u64, run_length: u64, offset: u64, length: u64) {
        self.remove_run(run, run_length);
        if offset > run {
            self.insert_run(run, offset - run);
        }
        let (end, run_end) = (offset + length, run + run_length);
        if end < run_end {
            self.insert_run(end, run_end - end);
        }
    }

    /// Adds a range known to be allocated (or newly grown) to the free map, merging it with the
    /// runs that touch it so runs stay maximal.
    fn free_range(&mut self, extent: &Extent) {
        let (mut start, mut end) = (extent.offset, extent.offset + extent.length);
        if let Some((before, length)) = self.by_offset.range(..start).next_back()
            && before + length == start
        {
            let (before, length) = (*before, *length);
            self.remove_run(before, length);
            start = before;
        }
        if let Some(&length) = self.by_offset.get(&end) {
            self.remove_run(end, length);
            end += length;
        }
        self.insert_run(start, end - start);
    }
}

/// Whether [start, end) overlaps one of the disjoint ranges in `ranges` (start → end), by the
/// same argument as [`ExtentAllocator::overlaps_free`].
fn overlaps(ranges: &BTreeMap<u64, u64>, start: u64, end: u64) -> bool {
    ranges
        .range(..end)
        .next_back()
        .is_some_and(|(_, &range_end)| range_end > start)
}

/// Space on a device that another owner manages (the object store's main device).
///
/// BlueFS allocates from it on demand and records the extents only in its own log; the owner
/// learns about them at mount, by marking used the extents BlueFS lists. A trait rather than the
/// concrete [`SharedAllocator`] so the store can put its own allocator (with its own policy and
/// bookkeeping) behind it.
pub trait SharedSpace: Send + Sync {
    fn device_size(&self) -> u64;
    fn unit(&self) -> u64;
    fn free_bytes(&self) -> u64;
    fn allocate(&self, want: u64) -> Result<Vec<Extent>, AllocError>;
    fn release(&self, extents: &[Extent]) -> Result<(), AllocError>;
    fn mark_used(&self, extents: &[Extent]) -> Result<(), AllocError>;
    fn grow(&self, new_size: u64) -> Result<(), AllocError>;
}

/// The standard [`SharedSpace`]: one [`ExtentAllocator`] behind a mutex; clones share it, so the
/// store and BlueFS hold the same allocator.
#[derive(Clone, Debug)]
pub struct SharedAllocator {
    inner: Arc<Mutex<ExtentAllocator>>,
}

impl SharedAllocator {
    pub fn new(allocator: ExtentAllocator) -> SharedAllocator {
        SharedAllocator {
            inner: Arc::new(Mutex::new(allocator)),
        }
    }

    /// Runs `f` with the allocator locked, for the owner's bookkeeping and for several
    /// operations that must happen together.
    ///
    /// A poisoned lock is used anyway: a panic in `f` can only come between allocator
    /// operations, each of which leaves the map consistent, and refusing all further allocation
    /// would turn one bug into an outage.
    pub fn with<R>(&self, f: impl FnOnce(&mut ExtentAllocator) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }
}

impl SharedSpace for SharedAllocator {
    fn device_size(&self) -> u64 {
        self.with(|a| a.size())
    }

    fn unit(&self) -> u64 {
        self.with(|a| a.unit())
    }

    fn free_bytes(&self) -> u64 {
        self.with(|a| a.free_bytes())
    }

    fn allocate(&self, want: u64) -> Result<Vec<Extent>, AllocError> {
        self.with(|a| a.allocate(want))
    }

    fn release(&self, extents: &[Extent]) -> Result<(), AllocError> {
        self.with(|a| a.release(extents))
    }

    fn mark_used(&self, extents: &[Extent]) -> Result<(), AllocError> {
        self.with(|a| a.mark_used(extents))
    }

    fn grow(&self, new_size: u64) -> Result<(), AllocError> {
        self.with(|a| a.grow(new_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: u64 = 4096;

    fn ext(offset: u64, length: u64) -> Extent {
        Extent {
            device: DeviceId::Db,
            offset,
            length,
        }
    }

    /// Units → extent on the DB device, for allocators with a 4 KiB unit.
    fn u(offset: u64, length: u64) -> Extent {
        ext(offset * K, length * K)
    }

    /// The internal invariants every public operation must preserve.
    fn check_invariants(a: &ExtentAllocator) {
        let mut total = 0;
        let mut previous_end = None;
        for (&offset, &length) in &a.by_offset {
            assert!(length > 0, "empty run at {offset}");
            assert_eq!(offset % a.unit, 0);
            assert_eq!(length % a.unit, 0);
            assert!(offset >= a.reserved_end);
            assert!(offset + length <= a.end());
            if let Some(end) = previous_end {
                assert!(offset > end, "runs touch or overlap at {offset}");
            }
            previous_end = Some(offset + length);
            assert!(a.by_size.contains(&(length, offset)));
            total += length;
        }
        assert_eq!(a.by_size.len(), a.by_offset.len());
        assert_eq!(total, a.free);
    }

    fn db(units: u64) -> ExtentAllocator {
        ExtentAllocator::new(DeviceId::Db, units * K, K, 0)
    }

    /// An allocator whose free runs are exactly `runs` (in units), everything else used.
    fn with_free_runs(units: u64, runs: &[(u64, u64)]) -> ExtentAllocator {
        let mut a = db(units);
        a.mark_used(&[u(0, units)]).unwrap();
        let runs: Vec<Extent> = runs.iter().map(|&(o, l)| u(o, l)).collect();
        a.release(&runs).unwrap();
        check_invariants(&a);
        a
    }

    #[test]
    fn new_frees_everything_past_the_reserved_prefix() {
        let a = ExtentAllocator::new(DeviceId::Db, 256 * K + 100, K, 5000);
        assert_eq!(a.device(), DeviceId::Db);
        assert_eq!(a.unit(), K);
        assert_eq!(a.size(), 256 * K + 100);
        assert_eq!(a.free_extents(), vec![ext(2 * K, 254 * K)]);
        assert_eq!(a.free_bytes(), 254 * K);
        check_invariants(&a);
    }

    #[test]
    fn bad_units_are_clamped_up_to_a_power_of_two() {
        let unit = |unit| ExtentAllocator::new(DeviceId::Wal, 1 << 30, unit, 0).unit();
        assert_eq!(unit(0), 4096);
        assert_eq!(unit(1000), 4096);
        assert_eq!(unit(5000), 8192);
        assert_eq!(unit(65536), 65536);
        assert_eq!(unit(u64::MAX), 1 << 63);
    }

    #[test]
    fn tiny_and_huge_devices_do_not_panic() {
        // Smaller than the reserved prefix, smaller than a unit, empty.
        for (size, reserved) in [(8 * K, 16 * K), (100, 0), (0, 0), (0, u64::MAX)] {
            let mut a = ExtentAllocator::new(DeviceId::Wal, size, K, reserved);
            assert_eq!(a.free_bytes(), 0);
            assert!(matches!(a.allocate(1), Err(AllocError::NoSpace { .. })));
            check_invariants(&a);
        }
        let mut a = ExtentAllocator::new(DeviceId::Slow, u64::MAX, 1 << 20, u64::MAX - 5);
        assert_eq!(a.free_bytes(), 0);
        let mut a2 = ExtentAllocator::new(DeviceId::Slow, u64::MAX, 1 << 20, 0);
        assert_eq!(a2.free_bytes(), u64::MAX - ((1 << 20) - 1));
        assert_eq!(
            a2.allocate(u64::MAX),
            Err(AllocError::NoSpace {
                device: DeviceId::Slow,
                wanted: u64::MAX,
                free: a2.free_bytes()
            })
        );
        let big = a2.allocate(u64::MAX - (1 << 21)).unwrap();
        assert_eq!(big.len(), 1);
        let wild = Extent {
            device: DeviceId::Slow,
            offset: u64::MAX - ((1 << 20) - 1),
            length: 1 << 20,
        };
        assert!(matches!(
            a2.release(&[wild]),
            Err(AllocError::OutOfRange { .. })
        ));
        assert!(matches!(
            a.mark_used(&[wild]),
            Err(AllocError::OutOfRange { .. })
        ));
        a2.release(&big).unwrap();
        assert_eq!(a2.free_extents().len(), 1);
        assert!(a.grow(u64::MAX).is_ok());
        check_invariants(&a);
        check_invariants(&a2);
    }

    #[test]
    fn allocate_release_and_merge() {
        let mut a = db(16);
        let x = a.allocate(4 * K).unwrap();
        let y = a.allocate(4 * K).unwrap();
        let z = a.allocate(4 * K).unwrap();
        assert_eq!((x[0], y[0], z[0]), (u(0, 4), u(4, 4), u(8, 4)));
        assert_eq!(a.free_extents(), vec![u(12, 4)]);
        a.release(&y).unwrap();
        assert_eq!(a.free_extents(), vec![u(4, 4), u(12, 4)]);
        // Merges with the run after it...
        a.release(&z).unwrap();
        assert_eq!(a.free_extents(), vec![u(4, 12)]);
        // ...and the one before it.
        a.release(&x).unwrap();
        assert_eq!(a.free_extents(), vec![u(0, 16)]);
        assert_eq!(a.free_bytes(), 16 * K);
        check_invariants(&a);
    }

    #[test]
    fn requests_round_up_to_the_unit() {
        let mut a = db(16);
        assert_eq!(a.allocate(1).unwrap(), vec![u(0, 1)]);
        assert_eq!(a.allocate(K + 1).unwrap(), vec![u(1, 2)]);
        assert_eq!(a.free_bytes(), 13 * K);
        let mut big = ExtentAllocator::new(DeviceId::Slow, 1 << 30, 1 << 16, 0);
        let got = big.allocate((1 << 16) + 1).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].length, 1 << 17);
    }

    #[test]
    fn zero_bytes_is_no_extents() {
        let mut a = db(4);
        assert_eq!(a.allocate(0), Ok(vec![]));
        a.mark_used(&[u(0, 4)]).unwrap();
        assert_eq!(a.allocate(0), Ok(vec![]));
        assert_eq!(a.allocate_keeping(0, 1 << 40), Ok(vec![]));
    }

    #[test]
    fn reserved_prefix_is_never_handed_out_or_accepted() {
        let mut a = ExtentAllocator::new(DeviceId::Db, 64 * K, K, 2 * K + 1);
        assert_eq!(a.free_bytes(), 61 * K);
        let all = a.allocate(61 * K).unwrap();
        assert!(all.iter().all(|e| e.offset >= 3 * K));
        assert_eq!(
            a.allocate(1),
            Err(AllocError::NoSpace {
                device: DeviceId::Db,
                wanted: K,
                free: 0
            })
        );
        // The prefix is neither free nor allocated.
        assert_eq!(
            a.release(&[u(2, 1)]),
            Err(AllocError::NotAllocated { extent: u(2, 1) })
        );
        a.release(&all).unwrap();
        assert_eq!(
            a.mark_used(&[u(0, 1)]),
            Err(AllocError::NotFree { extent: u(0, 1) })
        );
        assert_eq!(
            a.mark_used(&[u(2, 2)]),
            Err(AllocError::NotFree { extent: u(2, 2) })
        );
        assert_eq!(a.free_extents(), vec![u(3, 61)]);
        check_invariants(&a);
    }

    #[test]
    fn no_space_leaves_the_allocator_unchanged() {
        let mut a = with_free_runs(32, &[(1, 2), (5, 3), (20, 4)]);
        let before = a.free_extents();
        assert_eq!(
            a.allocate(10 * K),
            Err(AllocError::NoSpace {
                device: DeviceId::Db,
                wanted: 10 * K,
                free: 9 * K
            })
        );
        assert_eq!(a.free_extents(), before);
        assert_eq!(a.free_bytes(), 9 * K);
        // Exactly all of it is fine, in three pieces.
        assert_eq!(a.allocate(9 * K).unwrap().len(), 3);
        assert_eq!(a.free_bytes(), 0);
    }

    #[test]
    fn single_extent_is_best_fit_lowest_offset() {
        let mut a = with_free_runs(64, &[(0, 5), (10, 2), (20, 3), (30, 2), (40, 8)]);
        assert_eq!(a.allocate(2 * K).unwrap(), vec![u(10, 2)]);
        assert_eq!(a.allocate(2 * K).unwrap(), vec![u(30, 2)]);
        assert_eq!(a.allocate(K).unwrap(), vec![u(20, 1)]);
        assert_eq!(a.allocate(4 * K).unwrap(), vec![u(0, 4)]);
        assert_eq!(a.allocate(6 * K).unwrap(), vec![u(40, 6)]);
        check_invariants(&a);
    }

    #[test]
    fn fragmented_space_gives_the_fewest_pieces() {
        let mut a = with_free_runs(64, &[(0, 1), (4, 3), (10, 4), (20, 2), (30, 4), (40, 1)]);
        // 10 units: the two 4-unit runs (largest first), then the best fit for the last 2.
        let got = a.allocate(10 * K).unwrap();
        assert_eq!(got, vec![u(10, 4), u(20, 2), u(30, 4)]);
        assert_eq!(a.free_extents(), vec![u(0, 1), u(4, 3), u(40, 1)]);
        // 4 units from runs of 1, 3, 1: two pieces, the 3 then a 1 (lowest offset).
        let got = a.allocate(4 * K).unwrap();
        assert_eq!(got, vec![u(0, 1), u(4, 3)]);
        assert_eq!(a.free_extents(), vec![u(40, 1)]);
        check_invariants(&a);
    }

    #[test]
    fn allocate_keeping_honours_the_reserve() {
        let mut a = db(16);
        let err = a.allocate_keeping(13 * K, 4 * K);
        assert_eq!(
            err,
            Err(AllocError::NoSpace {
                device: DeviceId::Db,
                wanted: 13 * K,
                free: 12 * K
            })
        );
        assert_eq!(a.free_bytes(), 16 * K);
        a.allocate_keeping(12 * K, 4 * K).unwrap();
        assert_eq!(a.free_bytes(), 4 * K);
        assert!(a.allocate_keeping(1, 4 * K).is_err());
        // A reserve larger than the free space refuses everything but nothing.
        assert!(a.allocate_keeping(1, 1 << 40).is_err());
        // The reserve is for the log: plain allocate may use it.
        a.allocate(4 * K).unwrap();
        assert_eq!(a.free_bytes(), 0);
    }

    #[test]
    fn grow_adds_space_and_merges_with_the_tail() {
        let mut a = ExtentAllocator::new(DeviceId::Db, 8 * K + 10, K, 0);
        let first = a.allocate(2 * K).unwrap();
        a.grow(16 * K).unwrap();
        assert_eq!(a.size(), 16 * K);
        assert_eq!(a.free_extents(), vec![u(2, 14)]);
        // Growing a full device.
        a.allocate(14 * K).unwrap();
        a.grow(20 * K + 5).unwrap();
        assert_eq!(a.free_extents(), vec![u(16, 4)]);
        // Growing within the same unit changes the size but adds nothing.
        a.grow(20 * K + 4000).unwrap();
        assert_eq!(a.free_bytes(), 4 * K);
        a.grow(a.size()).unwrap();
        a.release(&first).unwrap();
        assert_eq!(a.free_extents(), vec![u(0, 2), u(16, 4)]);
        check_invariants(&a);
    }

    #[test]
    fn grow_past_the_reserved_prefix() {
        let mut a = ExtentAllocator::new(DeviceId::Wal, 4 * K, K, 8 * K);
        assert_eq!(a.free_bytes(), 0);
        a.grow(6 * K).unwrap();
        assert_eq!(a.free_bytes(), 0);
        a.grow(12 * K).unwrap();
        assert_eq!(
            a.free_extents(),
            vec![Extent {
                device: DeviceId::Wal,
                offset: 8 * K,
                length: 4 * K
            }]
        );
        check_invariants(&a);
    }

    #[test]
    fn shrinking_is_refused() {
        let mut a = db(16);
        assert_eq!(
            a.grow(16 * K - 1),
            Err(AllocError::Shrink {
                device: DeviceId::Db,
                from: 16 * K,
                to: 16 * K - 1
            })
        );
        assert_eq!(a.size(), 16 * K);
        assert_eq!(a.free_bytes(), 16 * K);
    }

    #[test]
    fn double_free_is_detected() {
        let mut a = db(16);
        let x = a.allocate(4 * K).unwrap();
        a.release(&x).unwrap();
        assert_eq!(
            a.release(&x),
            Err(AllocError::NotAllocated { extent: x[0] })
        );
        // Partly free counts too.
        let y = a.allocate(2 * K).unwrap();
        assert_eq!(y, vec![u(0, 2)]);
        assert_eq!(
            a.release(&[u(1, 2)]),
            Err(AllocError::NotAllocated { extent: u(1, 2) })
        );
        assert_eq!(a.free_extents(), vec![u(2, 14)]);
        check_invariants(&a);
    }

    #[test]
    fn overlapping_release_is_all_or_nothing() {
        let mut a = db(16);
        a.allocate(8 * K).unwrap();
        let before = a.free_extents();
        for bad in [
            vec![u(0, 2), u(4, 2), u(5, 2)],
            vec![u(0, 2), u(0, 2)],
            vec![u(2, 4), u(0, 3)],
            vec![u(0, 1), u(7, 2)],
        ] {
            let culprit = *bad.last().unwrap();
            assert_eq!(
                a.release(&bad),
                Err(AllocError::NotAllocated { extent: culprit })
            );
            assert_eq!(a.free_extents(), before, "{bad:?} changed the map");
        }
        // Valid pieces in any order, touching each other: merged into one run.
        a.release(&[u(4, 4), u(0, 2), u(2, 2)]).unwrap();
        assert_eq!(a.free_extents(), vec![u(0, 16)]);
        check_invariants(&a);
    }

    #[test]
    fn mark_used_of_used_space_is_detected() {
        let mut a = db(16);
        a.mark_used(&[u(2, 2), u(8, 4)]).unwrap();
        assert_eq!(a.free_extents(), vec![u(0, 2), u(4, 4), u(12, 4)]);
        let before = a.free_extents();
        for bad in [
            vec![u(0, 1), u(3, 1)],
            vec![u(4, 1), u(1, 2)],
            vec![u(12, 2), u(13, 1)],
            vec![u(12, 2), u(12, 2)],
            vec![u(7, 2)],
        ] {
            let culprit = *bad.last().unwrap();
            assert_eq!(
                a.mark_used(&bad),
                Err(AllocError::NotFree { extent: culprit })
            );
            assert_eq!(a.free_extents(), before, "{bad:?} changed the map");
        }
        a.mark_used(&[u(13, 1), u(0, 2), u(12, 1)]).unwrap();
        assert_eq!(a.free_extents(), vec![u(4, 4), u(14, 2)]);
        check_invariants(&a);
    }

    #[test]
    fn out_of_range_and_misaligned_extents_are_rejected() {
        let mut a = ExtentAllocator::new(DeviceId::Db, 16 * K + 512, K, 0);
        a.allocate(16 * K).unwrap();
        let wal = Extent {
            device: DeviceId::Wal,
            offset: 0,
            length: K,
        };
        for bad in [
            ext(512, K),
            ext(0, 512),
            ext(0, K + 1),
            ext(15 * K, 2 * K),
            ext(16 * K, K),
            ext(u64::MAX - K + 1, K),
            ext(K, u64::MAX - K + 1),
            ext(20 * K, 0),
            wal,
        ] {
            let expected = Err(AllocError::OutOfRange {
                extent: bad,
                size: 16 * K + 512,
                unit: K,
            });
            // Reported even after a valid extent, which is then not released.
            assert_eq!(a.release(&[u(0, 1), bad]), expected);
            assert_eq!(a.mark_used(&[bad]), expected);
            assert_eq!(a.free_bytes(), 0);
        }
        // Empty but in range: ignored.
        a.release(&[u(3, 0), u(16, 0)]).unwrap();
        a.mark_used(&[u(3, 0)]).unwrap();
        assert_eq!(a.free_bytes(), 0);
        check_invariants(&a);
    }

    #[test]
    fn errors_name_the_device() {
        let e = AllocError::NoSpace {
            device: DeviceId::Slow,
            wanted: 8192,
            free: 4096,
        };
        assert_eq!(
            e.to_string(),
            "no space on the slow device: 8192 bytes wanted, 4096 free"
        );
        let e = AllocError::OutOfRange {
            extent: ext(1, 2),
            size: 3,
            unit: 4096,
        };
        assert!(e.to_string().contains("the db device's 3 bytes"));
    }

    #[test]
    fn shared_allocator_clones_share_one_map() {
        let shared = SharedAllocator::new(db(16));
        let store: Arc<dyn SharedSpace> = Arc::new(shared.clone());
        let got = store.allocate(4 * K).unwrap();
        assert_eq!(shared.free_bytes(), 12 * K);
        assert_eq!(shared.with(|a| a.free_extents()), vec![u(4, 12)]);
        assert_eq!(store.device_size(), 16 * K);
        assert_eq!(store.unit(), K);
        assert!(store.mark_used(&got).is_err());
        store.release(&got).unwrap();
        store.mark_used(&got).unwrap();
        store.grow(32 * K).unwrap();
        assert_eq!(shared.free_bytes(), 28 * K);
    }

    #[test]
    fn poisoned_lock_is_still_usable() {
        let shared = SharedAllocator::new(db(16));
        let clone = shared.clone();
        let result = std::thread::spawn(move || {
            clone.with(|a| {
                a.allocate(K).unwrap();
                panic!("poison the lock");
            })
        })
        .join();
        assert!(result.is_err());
        assert_eq!(shared.free_bytes(), 15 * K);
        assert_eq!(shared.allocate(K).unwrap(), vec![u(1, 1)]);
    }

    #[test]
    fn shared_allocator_from_several_threads() {
        const UNITS: u64 = 512;
        let shared = SharedAllocator::new(db(UNITS));
        // One owner flag per unit: taking a unit someone else holds means an overlap.
        let owned: Arc<Vec<std::sync::atomic::AtomicBool>> =
            Arc::new((0..UNITS).map(|_| Default::default()).collect());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let space: Arc<dyn SharedSpace> = Arc::new(shared.clone());
                let owned = Arc::clone(&owned);
                std::thread::spawn(move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                    let mut held: Vec<Vec<Extent>> = Vec::new();
                    for _ in 0..2000 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        if rng % 3 != 0 || held.is_empty() {
                            match space.allocate((rng >> 8) % (24 * K) + 1) {
                                Ok(extents) => {
                                    for e in &extents {
                                        assert_eq!(e.offset % K, 0);
                                        assert!(e.end() <= UNITS * K);
                                        for unit in e.offset / K..e.end() / K {
                                            let was = owned[unit as usize].swap(true, SeqCst);
                                            assert!(!was, "unit {unit} handed out twice");
                                        }
                                    }
                                    held.push(extents);
                                }
                                Err(AllocError::NoSpace { .. }) => {}
                                Err(e) => panic!("{e}"),
                            }
                        } else {
                            let extents = held.swap_remove((rng >> 8) as usize % held.len());
                            for e in &extents {
                                for unit in e.offset / K..e.end() / K {
                                    owned[unit as usize].store(false, SeqCst);
                                }
                            }
                            space.release(&extents).unwrap();
                        }
                    }
                    for extents in held {
                        for e in &extents {
                            for unit in e.offset / K..e.end() / K {
                                owned[unit as usize].store(false, SeqCst);
                            }
                        }
                        space.release(&extents).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(shared.free_bytes(), UNITS * K);
        assert_eq!(shared.with(|a| a.free_extents()), vec![u(0, UNITS)]);
        shared.with(|a| check_invariants(a));
    }

    // --- Model-based property test ---

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum State {
        Reserved,
        Free,
        Used,
    }

    /// One state per unit of the managed range: the obviously-correct allocator.
    #[derive(Clone, Debug)]
    struct Model {
        unit: u64,
        size: u64,
        reserved_units: u64,
        units: Vec<State>,
    }

    impl Model {
        fn new(size: u64, unit: u64, reserved: u64) -> Model {
            let mut m = Model {
                unit,
                size: 0,
                reserved_units: reserved.div_ceil(unit),
                units: Vec::new(),
            };
            m.grow_to(size);
            m
        }

        fn grow_to(&mut self, size: u64) {
            self.size = size;
            while (self.units.len() as u64) < size / self.unit {
                let state = if (self.units.len() as u64) < self.reserved_units {
                    State::Reserved
                } else {
                    State::Free
                };
                self.units.push(state);
            }
        }

        fn free_bytes(&self) -> u64 {
            self.units.iter().filter(|&&s| s == State::Free).count() as u64 * self.unit
        }

        /// Maximal runs of units in `state`, as (first unit, unit count).
        fn runs(&self, state: State) -> Vec<(u64, u64)> {
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for (i, &s) in self.units.iter().enumerate() {
                if s != state {
                    continue;
                }
                match runs.last_mut() {
                    Some((start, len)) if *start + *len == i as u64 => *len += 1,
                    _ => runs.push((i as u64, 1)),
                }
            }
            runs
        }

        fn free_extents(&self) -> Vec<Extent> {
            self.runs(State::Free)
                .into_iter()
                .map(|(o, l)| ext(o * self.unit, l * self.unit))
                .collect()
        }

        /// Applies the extents one by one on a copy; the first that fails is the error.
        fn apply(&self, extents: &[Extent], from: State, to: State) -> Result<Model, AllocError> {
            let mut m = self.clone();
            for e in extents {
                let aligned = e.offset % self.unit == 0 && e.length % self.unit == 0;
                let in_range = (e.offset as u128 + e.length as u128)
                    <= (self.units.len() as u64 * self.unit) as u128;
                if e.device != DeviceId::Db || !aligned || !in_range {
                    return Err(AllocError::OutOfRange {
                        extent: *e,
                        size: self.size,
                        unit: self.unit,
                    });
                }
                let first = e.offset / self.unit;
                for i in first..first + e.length / self.unit {
                    if m.units[i as usize] != from {
                        return Err(if from == State::Used {
                            AllocError::NotAllocated { extent: *e }
                        } else {
                            AllocError::NotFree { extent: *e }
                        });
                    }
                    m.units[i as usize] = to;
                }
            }
            Ok(m)
        }
    }

    #[derive(Clone, Debug)]
    struct RawExtent {
        offset_units: u64,
        length_units: u64,
        /// 0: aligned; 1: offset off by 512; 2: length off by 512; 3: another device.
        flaw: u8,
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate {
            units: u64,
            under: u64,
            keep_units: u64,
        },
        /// Pieces of currently used runs (possibly the same twice).
        ReleaseUsed(
            Vec<(
                prop::sample::Index,
                prop::sample::Index,
                prop::sample::Index,
            )>,
        ),
        /// Pieces of currently free runs (possibly the same twice).
        MarkFree(
            Vec<(
                prop::sample::Index,
                prop::sample::Index,
                prop::sample::Index,
            )>,
        ),
        Release(Vec<RawExtent>),
        MarkUsed(Vec<RawExtent>),
        Grow {
            units: u64,
            bytes: u64,
        },
        Shrink {
            bytes: u64,
        },
    }

    fn raw_extent() -> impl Strategy<Value = RawExtent> {
        (
            0u64..72,
            0u64..10,
            prop_oneof![12 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
        )
            .prop_map(|(offset_units, length_units, flaw)| RawExtent {
                offset_units,
                length_units,
                flaw,
            })
    }

    fn picks() -> impl Strategy<
        Value = Vec<(
            prop::sample::Index,
            prop::sample::Index,
            prop::sample::Index,
        )>,
    > {
        prop::collection::vec(
            any::<(
                prop::sample::Index,
                prop::sample::Index,
                prop::sample::Index,
            )>(),
            1..4,
        )
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u64..14, 0u64..4096, prop_oneof![3 => Just(0u64), 1 => 1u64..6])
                .prop_map(|(units, under, keep_units)| Op::Allocate { units, under, keep_units }),
            4 => picks().prop_map(Op::ReleaseUsed),
            2 => picks().prop_map(Op::MarkFree),
            1 => prop::collection::vec(raw_extent(), 1..4).prop_map(Op::Release),
            1 => prop::collection::vec(raw_extent(), 1..4).prop_map(Op::MarkUsed),
            1 => (0u64..12, 0u64..70_000).prop_map(|(units, bytes)| Op::Grow { units, bytes }),
            1 => (1u64..70_000).prop_map(|bytes| Op::Shrink { bytes }),
        ]
    }

    /// Chooses extents inside the runs of `state`: a run, a start in it, a length to its end.
    fn pick_extents(
        model: &Model,
        state: State,
        picks: &[(
            prop::sample::Index,
            prop::sample::Index,
            prop::sample::Index,
        )],
    ) -> Vec<Extent> {
        let runs = model.runs(state);
        if runs.is_empty() {
            return Vec::new();
        }
        picks
            .iter()
            .map(|(run, start, length)| {
                let (first, count) = *run.get(&runs);
                let skip = start.index(count as usize) as u64;
                let length = length.index((count - skip) as usize) as u64 + 1;
                ext((first + skip) * model.unit, length * model.unit)
            })
            .collect()
    }

    fn to_extent(raw: &RawExtent, unit: u64) -> Extent {
        let mut e = ext(raw.offset_units * unit, raw.length_units * unit);
        match raw.flaw {
            1 => e.offset += 512,
            2 => e.length += 512,
            3 => e.device = DeviceId::Wal,
            _ => {}
        }
        e
    }

    /// Releases (or marks used) `extents` in both the allocator and the model, checks that both
    /// agree on the outcome, and returns the model afterwards.
    fn check_change(
        a: &mut ExtentAllocator,
        model: &Model,
        extents: &[Extent],
        release: bool,
    ) -> Result<Model, TestCaseError> {
        let (result, expected) = if release {
            (
                a.release(extents),
                model.apply(extents, State::Used, State::Free),
            )
        } else {
            (
                a.mark_used(extents),
                model.apply(extents, State::Free, State::Used),
            )
        };
        match expected {
            Ok(after) => {
                prop_assert_eq!(result, Ok(()));
                Ok(after)
            }
            Err(error) => {
                prop_assert_eq!(result, Err(error));
                Ok(model.clone())
            }
        }
    }

    fn run_ops(unit: u64, size: u64, reserved: u64, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut a = ExtentAllocator::new(DeviceId::Db, size, unit, reserved);
        let mut model = Model::new(size, unit, reserved);
        for op in ops {
            match op {
                Op::Allocate {
                    units,
                    under,
                    keep_units,
                } => {
                    let want = (units * unit).saturating_sub(under % unit);
                    let wanted = want.div_ceil(unit) * unit;
                    let keep = keep_units * unit;
                    let free = model.free_bytes();
                    let runs = model.runs(State::Free);
                    let result = a.allocate_keeping(want, keep);
                    if want == 0 {
                        prop_assert_eq!(result, Ok(vec![]));
                    } else if wanted + keep > free {
                        prop_assert_eq!(
                            result,
                            Err(AllocError::NoSpace {
                                device: DeviceId::Db,
                                wanted,
                                free: free.saturating_sub(keep)
                            })
                        );
                    } else {
                        let extents = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(extents.iter().map(|e| e.length).sum::<u64>(), wanted);
                        prop_assert!(extents.windows(2).all(|w| w[0].end() <= w[1].offset));
                        // Policy: one best-fit extent when some run is big enough, otherwise
                        // as many pieces as the largest runs need.
                        let need = wanted / unit;
                        let best = runs
                            .iter()
                            .filter(|r| r.1 >= need)
                            .min_by_key(|r| (r.1, r.0));
                        if let Some(&(first, _)) = best {
                            prop_assert_eq!(&extents, &vec![ext(first * unit, wanted)]);
                        } else {
                            let mut lengths: Vec<u64> = runs.iter().map(|r| r.1).collect();
                            lengths.sort_unstable_by(|x, y| y.cmp(x));
                            let mut sum = 0;
                            let pieces = lengths
                                .iter()
                                .take_while(|&&l| {
                                    let more = sum < need;
                                    sum += l;
                                    more
                                })
                                .count();
                            prop_assert_eq!(extents.len(), pieces);
                        }
                        // Aligned, in range, and only space that was free: no overlap with
                        // anything live.
                        model = model
                            .apply(&extents, State::Free, State::Used)
                            .map_err(|e| TestCaseError::fail(format!("handed out {e}")))?;
                    }
                }
                Op::ReleaseUsed(picks) => {
                    let extents = pick_extents(&model, State::Used, picks);
                    model = check_change(&mut a, &model, &extents, true)?;
                }
                Op::MarkFree(picks) => {
                    let extents = pick_extents(&model, State::Free, picks);
                    model = check_change(&mut a, &model, &extents, false)?;
                }
                Op::Release(raw) => {
                    let extents: Vec<Extent> = raw.iter().map(|r| to_extent(r, unit)).collect();
                    model = check_change(&mut a, &model, &extents, true)?;
                }
                Op::MarkUsed(raw) => {
                    let extents: Vec<Extent> = raw.iter().map(|r| to_extent(r, unit)).collect();
                    model = check_change(&mut a, &model, &extents, false)?;
                }
                Op::Grow { units, bytes } => {
                    let new_size = model.size + units * unit + bytes;
                    prop_assert_eq!(a.grow(new_size), Ok(()));
                    model.grow_to(new_size);
                }
                Op::Shrink { bytes } => {
                    let to = model.size.saturating_sub(*bytes);
                    let expected = if to < model.size {
                        Err(AllocError::Shrink {
                            device: DeviceId::Db,
                            from: model.size,
                            to,
                        })
                    } else {
                        Ok(())
                    };
                    prop_assert_eq!(a.grow(to), expected);
                }
            }
            prop_assert_eq!(a.size(), model.size);
            prop_assert_eq!(a.free_bytes(), model.free_bytes());
            prop_assert_eq!(a.free_extents(), model.free_extents());
            check_invariants(&a);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn allocator_matches_a_unit_bitmap(
            unit in prop::sample::select(vec![4096u64, 8192, 65536]),
            units in 0u64..64,
            tail in 0u64..4096,
            reserved in prop_oneof![2 => Just(0u64), 3 => 0u64..300_000],
            ops in prop::collection::vec(op(), 1..60),
        ) {
            run_ops(unit, units * unit + tail, reserved, &ops)?;
        }
    }
}
