//! Registered (fixed) buffers: DMA pools registered with a ring so reads and writes skip the
//! kernel's per-I/O page pinning.

use io_uring::IoUring;

use crate::dma::{DmaPool, DmaRegionInfo};

/// Size of the sparse fixed-buffer table each data ring gets on first registration.
const FIXED_BUFFER_SLOTS: u32 = 64;
/// The kernel refuses to register one buffer larger than this, so bigger pools take one slot
/// per GiB.
pub(super) const MAX_FIXED_BUFFER_BYTES: usize = 1 << 30;

/// One pool registered as fixed buffers, one slot per GiB of its region.
pub(super) struct RegisteredPool {
    pub(super) region: DmaRegionInfo,
    pub(super) first_slot: u32,
    /// Keeps the region mapped for as long as the kernel has it registered.
    pub(super) _pool: DmaPool,
}

#[derive(Default)]
pub(super) struct FixedBuffers {
    pub(super) table: FixedTable,
    pub(super) pools: Vec<RegisteredPool>,
    pub(super) next_slot: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum FixedTable {
    #[default]
    NotCreated,
    /// A sparse table that pools are added to one by one (5.13+).
    Sparse,
    /// Sparse tables are unsupported: one pool registered the old way, no more.
    Single,
}

impl FixedBuffers {
    /// The fixed-buffer index covering `len` bytes at `addr` of region `region_id`, if that
    /// region is registered and the bytes do not straddle two of its slots.
    #[inline]
    pub(super) fn index_for(&self, region_id: u64, addr: usize, len: u32) -> Option<u16> {
        let pool = self.pools.iter().find(|p| p.region.id == region_id)?;
        let start = addr.checked_sub(pool.region.addr)?;
        let last = start.checked_add((len as usize).checked_sub(1)?)?;
        if last >= pool.region.len {
            return None;
        }
        let chunk = start / MAX_FIXED_BUFFER_BYTES;
        if last / MAX_FIXED_BUFFER_BYTES != chunk {
            return None;
        }
        u16::try_from(pool.first_slot as usize + chunk).ok()
    }

    /// Registers `pool` with `ring`. Any failure (ENOMEM from RLIMIT_MEMLOCK, a full table, an
    /// old kernel) leaves the pool unregistered and its buffers working through plain reads and
    /// writes, so it is reported as `false`, never as an error.
    pub(super) fn register(&mut self, ring: &IoUring, pool: &DmaPool) -> bool {
        let region = pool.region();
        if self.pools.iter().any(|p| p.region.id == region.id) {
            return true;
        }
        let iovecs: Vec<libc::iovec> = (0..region.len.div_ceil(MAX_FIXED_BUFFER_BYTES))
            .map(|chunk| {
                let start = chunk * MAX_FIXED_BUFFER_BYTES;
                libc::iovec {
                    iov_base: (region.addr + start) as *mut libc::c_void,
                    iov_len: (region.len - start).min(MAX_FIXED_BUFFER_BYTES),
                }
            })
            .collect();
        let Ok(slots) = u32::try_from(iovecs.len()) else {
            return false;
        };
        if self.table == FixedTable::NotCreated {
            self.table = match ring.submitter().register_buffers_sparse(FIXED_BUFFER_SLOTS) {
                Ok(()) => FixedTable::Sparse,
                Err(_) => FixedTable::Single,
            };
        }
        let registered = match self.table {
            FixedTable::Sparse
                if self
                    .next_slot
                    .checked_add(slots)
                    .is_some_and(|end| end <= FIXED_BUFFER_SLOTS) =>
            {
                // SAFETY: every iovec lies inside the pool's mapping (chunks of `region`), which
                // the pool clone stored below keeps mapped until after the ring is closed (the
                // queue pair drops its rings before `fixed`), and the kernel pins the pages for
                // as long as they are registered. The kernel writes these pages only for a
                // ReadFixed naming a buffer a command owns, never viewed as a slice until its CQE.
                unsafe {
                    ring.submitter()
                        .register_buffers_update(self.next_slot, &iovecs, None)
                }
                .is_ok()
            }
            FixedTable::Single if self.pools.is_empty() => {
                // SAFETY: every iovec lies inside the pool's mapping (chunks of `region`), which
                // the pool clone stored below keeps mapped until after the ring is closed (the
                // queue pair drops its rings before `fixed`), and the kernel pins the pages for
                // as long as they are registered; the same rules for device writes hold as for
                // the sparse table above.
                unsafe { ring.submitter().register_buffers(&iovecs) }.is_ok()
            }
            _ => false,
        };
        if registered {
            self.pools.push(RegisteredPool {
                region,
                first_slot: self.next_slot,
                _pool: pool.clone(),
            });
            self.next_slot += slots;
        }
        registered
    }
}
