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
        /// The allocator's device.
        device: DeviceId,
        /// Bytes requested, rounded up to the unit.
        wanted: u64,
        /// Bytes free beyond any reserve the caller keeps.
        free: u64,
    },
    /// `mark_used` of space that is already used, reserved, or named twice in the same call.
    #[error("extent {extent:?} is not free on the {} device", extent.device.name())]
    NotFree {
        /// The first extent, in the order given, that is not entirely free.
        extent: Extent,
    },
    /// `release` of space that is (even partly) free, reserved, or named twice in the same call.
    #[error("extent {extent:?} is not allocated on the {} device (double free?)", extent.device.name())]
    NotAllocated {
        /// The first extent, in the order given, that is not entirely allocated.
        extent: Extent,
    },
    /// An extent of another device, past the end, overflowing, or not unit-aligned. `size` and
    /// `unit` are this allocator's, even when the extent names another device.
    #[error("extent {extent:?} is outside the {} device's {size} bytes or not aligned to its {unit}-byte unit", extent.device.name())]
    OutOfRange {
        /// The offending extent, as given.
        extent: Extent,
        /// This allocator's device size in bytes.
        size: u64,
        /// This allocator's unit in bytes.
        unit: u64,
    },
    /// `grow` to a smaller size; devices only grow.
    #[error("cannot shrink the {} device from {from} to {to} bytes", device.name())]
    Shrink {
        /// The allocator's device.
        device: DeviceId,
        /// The current size in bytes.
        from: u64,
        /// The smaller size asked for, in bytes.
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

    /// The device whose space this is: every extent given or returned names it.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The allocation unit in bytes (a power of two ≥ 4096; see [`new`](Self::new)): every
    /// extent's offset and length are multiples of it.
    pub fn unit(&self) -> u64 {
        self.unit
    }

    /// The device size in bytes as given to `new` or `grow`, not rounded to the unit.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes free in the managed range, reserve included (what `allocate` could hand out).
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
    /// The device's size in bytes as the owner knows it (what BlueFS reports and grows from).
    fn device_size(&self) -> u64;
    /// The allocation unit in bytes: extents handed out are aligned to it and sized in it.
    fn unit(&self) -> u64;
    /// Bytes still free for either owner.
    fn free_bytes(&self) -> u64;
    /// Takes `want` bytes (rounded up to the unit), all or nothing, as extents in offset order;
    /// `NoSpace` when there is not that much.
    fn allocate(&self, want: u64) -> Result<Vec<Extent>, AllocError>;
    /// Gives back extents that `allocate` handed out, all or nothing (nothing changes on error).
    fn release(&self, extents: &[Extent]) -> Result<(), AllocError>;
    /// Marks free extents used, all or nothing: at mount, the extents BlueFS's files hold.
    fn mark_used(&self, extents: &[Extent]) -> Result<(), AllocError>;
    /// The device grew to `new_size` bytes: the new space becomes free. `Shrink` for a smaller
    /// size.
    fn grow(&self, new_size: u64) -> Result<(), AllocError>;
}

/// The standard [`SharedSpace`]: one [`ExtentAllocator`] behind a mutex; clones share it, so the
/// store and BlueFS hold the same allocator.
#[derive(Clone, Debug)]
pub struct SharedAllocator {
    inner: Arc<Mutex<ExtentAllocator>>,
}

impl SharedAllocator {
    /// Shares `allocator`: the store and BlueFS each keep a clone of the result.
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
mod tests;
