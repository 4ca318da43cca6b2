//! DMA buffers: memory a device reads and writes directly.
//!
//! A pool maps one region (hugepage-backed when the system has hugepages reserved, plain 4 KiB
//! pages otherwise), pre-faults it on the thread that creates it — so a per-core pool lands in
//! that core's memory — and carves it into equal buffers aligned to 4 KiB. A [`DmaBuf`] is the
//! unique owner of its slice of the region: while a command holds it, no one else can reach its
//! bytes, and a backend registers the whole region once (io_uring fixed buffers, an IOMMU mapping)
//! instead of every buffer.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

use super::error::NvmeError;

/// Alignment of every DMA buffer: one 4 KiB page, what NVMe PRP entries and O_DIRECT on any
/// logical block size need.
pub const DMA_ALIGN: usize = 4096;

/// Size of the hugepages we ask for with `MAP_HUGETLB` (the x86-64 default).
const HUGEPAGE_SIZE: usize = 2 << 20;

/// Whether a pool should be backed by hugepages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HugePages {
    /// Use reserved hugepages when enough are free; plain pages otherwise.
    #[default]
    Auto,
    /// Always plain pages.
    Never,
    /// Fail if hugepages cannot be had.
    Require,
}

/// The shape of a pool, for [`DmaPool::with_config`]; [`DmaPool::new`] is the common case
/// with [`HugePages::Auto`].
#[derive(Clone, Copy, Debug)]
pub struct DmaPoolConfig {
    /// Bytes per buffer; rounded up to a multiple of [`DMA_ALIGN`].
    pub buf_size: usize,
    /// Number of buffers.
    pub count: usize,
    /// Whether the region is backed by 2 MiB hugepages (fewer TLB misses and IOMMU entries
    /// for a large pool).
    pub hugepages: HugePages,
}

static NEXT_REGION_ID: AtomicU64 = AtomicU64::new(1);

/// One anonymous mapping.
struct Region {
    ptr: NonNull<u8>,
    len: usize,
    hugepages: bool,
    id: u64,
}

// SAFETY: a Region is a plain private mapping with no thread affinity: munmap in Drop is valid on
// any thread. Its bytes are only reached through DmaBufs, each the unique owner of a disjoint
// slice, so moving the Region itself to another thread creates no aliasing access.
unsafe impl Send for Region {}
// SAFETY: &Region exposes only the address, length, id and hugepage flag, all immutable after
// `new`; no method of Region reads or writes the mapped bytes, so shared references on several
// threads cannot race on them.
unsafe impl Sync for Region {}

impl Region {
    fn map(len: usize, hugepages: HugePages) -> Result<Region, NvmeError> {
        let want_huge = match hugepages {
            HugePages::Never => false,
            HugePages::Auto => free_hugepage_bytes() >= round_up(len, HUGEPAGE_SIZE),
            HugePages::Require => true,
        };
        if want_huge {
            let huge_len = round_up(len, HUGEPAGE_SIZE);
            match map_anonymous(huge_len, libc::MAP_HUGETLB) {
                Ok(ptr) => return Ok(Region::new(ptr, huge_len, true)),
                Err(source) if hugepages == HugePages::Require => {
                    return Err(NvmeError::Os {
                        what: "mmap of hugepage DMA memory",
                        source,
                    });
                }
                Err(_) => {} // fall back to plain pages
            }
        }
        let len = round_up(len, DMA_ALIGN);
        let ptr = map_anonymous(len, 0).map_err(|source| NvmeError::Os {
            what: "mmap of DMA memory",
            source,
        })?;
        Ok(Region::new(ptr, len, false))
    }

    fn new(ptr: NonNull<u8>, len: usize, hugepages: bool) -> Region {
        Region {
            ptr,
            len,
            hugepages,
            id: NEXT_REGION_ID.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, and every DmaBuf into this region holds
        // an Arc to the pool that owns it, so no buffer outlives the mapping; a command in flight
        // holds its DmaBuf, so the region cannot go while a device is working on it. A
        // registration that outlives the pool (an IOMMU mapping not yet released) keeps its pages
        // pinned in the kernel, so they are not reused while a device could still reach them.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

fn map_anonymous(len: usize, extra_flags: libc::c_int) -> std::io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory; the result is checked before use. MAP_POPULATE pre-faults the pages on this
    // thread so the first I/O does not take page faults and the memory is local to this core.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | extra_flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap returned null"))
}

/// Bytes of hugepages the kernel has free, from /proc/meminfo.
fn free_hugepage_bytes() -> usize {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    let field = |name: &str| -> usize {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let page_kib = field("Hugepagesize:");
    if page_kib * 1024 != HUGEPAGE_SIZE {
        return 0;
    }
    field("HugePages_Free:") * HUGEPAGE_SIZE
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

struct PoolShared {
    region: Region,
    buf_size: usize,
    count: usize,
    free: ArrayQueue<u32>,
}

/// A set of equal DMA buffers carved from one region. Cloning shares the pool.
#[derive(Clone)]
pub struct DmaPool {
    shared: Arc<PoolShared>,
}

impl DmaPool {
    /// A pool of `count` buffers of `buf_size` bytes, hugepage-backed when possible.
    pub fn new(buf_size: usize, count: usize) -> Result<DmaPool, NvmeError> {
        DmaPool::with_config(DmaPoolConfig {
            buf_size,
            count,
            hugepages: HugePages::Auto,
        })
    }

    /// A pool shaped by `config`, mapped and pre-faulted on the calling thread.
    ///
    /// Fails with [`NvmeError::InvalidPool`] when `buf_size` or `count` is 0, `count` exceeds
    /// `u32::MAX`, or the total size overflows; with [`NvmeError::Os`] when the mapping fails
    /// (with [`HugePages::Require`], also when hugepages cannot be had).
    pub fn with_config(config: DmaPoolConfig) -> Result<DmaPool, NvmeError> {
        if config.buf_size == 0 || config.count == 0 {
            return Err(NvmeError::InvalidPool {
                reason: format!(
                    "{} buffers of {} bytes: both must be at least 1",
                    config.count, config.buf_size
                ),
            });
        }
        if config.count > u32::MAX as usize {
            return Err(NvmeError::InvalidPool {
                reason: format!("{} buffers is too many", config.count),
            });
        }
        let buf_size = round_up(config.buf_size, DMA_ALIGN);
        let total = buf_size
            .checked_mul(config.count)
            .ok_or_else(|| NvmeError::InvalidPool {
                reason: format!("{} x {} bytes overflows", config.count, buf_size),
            })?;
        let region = Region::map(total, config.hugepages)?;
        let free = ArrayQueue::new(config.count);
        for index in 0..config.count as u32 {
            // Capacity equals count, so this cannot fail.
            let _ = free.push(index);
        }
        Ok(DmaPool {
            shared: Arc::new(PoolShared {
                region,
                buf_size,
                count: config.count,
                free,
            }),
        })
    }

    /// Takes a free buffer. Its contents are whatever its previous owner left there.
    #[inline]
    pub fn alloc(&self) -> Result<DmaBuf, NvmeError> {
        let index = self.shared.free.pop().ok_or(NvmeError::PoolExhausted {
            count: self.shared.count,
            buf_size: self.shared.buf_size,
        })?;
        let offset = index as usize * self.shared.buf_size;
        // SAFETY: indices in the free queue are < count, so offset + buf_size <= count * buf_size
        // <= region.len: `add` stays inside the one mapping, and a non-null base plus an
        // in-bounds offset cannot be null.
        let ptr = unsafe { NonNull::new_unchecked(self.shared.region.ptr.as_ptr().add(offset)) };
        Ok(DmaBuf {
            ptr,
            len: self.shared.buf_size,
            index,
            pool: Arc::clone(&self.shared),
        })
    }

    /// Bytes in each buffer: the requested size rounded up to a multiple of [`DMA_ALIGN`].
    pub fn buf_size(&self) -> usize {
        self.shared.buf_size
    }

    /// Number of buffers in the pool, handed out or not.
    pub fn count(&self) -> usize {
        self.shared.count
    }

    /// Buffers not currently handed out.
    pub fn available(&self) -> usize {
        self.shared.free.len()
    }

    /// Whether the region is backed by hugepages: always false with [`HugePages::Never`], and
    /// with [`HugePages::Auto`] false when too few were free or mapping them failed.
    pub fn uses_hugepages(&self) -> bool {
        self.shared.region.hugepages
    }

    /// The whole region, for registering it with a device once.
    pub fn region(&self) -> DmaRegionInfo {
        DmaRegionInfo {
            id: self.shared.region.id,
            addr: self.shared.region.ptr.as_ptr() as usize,
            len: self.shared.region.len,
        }
    }
}

impl DmaPool {
    /// A handle that tells whether the pool (and so its region) still exists, without keeping it
    /// alive: a backend that mapped the region releases the mapping once the pool is gone.
    pub(crate) fn liveness(&self) -> PoolLiveness {
        PoolLiveness(Arc::downgrade(&self.shared))
    }
}

/// See [`DmaPool::liveness`].
#[derive(Clone)]
pub(crate) struct PoolLiveness(std::sync::Weak<PoolShared>);

impl PoolLiveness {
    pub fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// Where a pool's memory lives; what a backend needs to register it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRegionInfo {
    /// Unique per region for the life of the process (never reused), so a backend can tell
    /// whether it has registered this region already.
    pub id: u64,
    /// Virtual address of the region's first byte; 4 KiB aligned (2 MiB with hugepages).
    pub addr: usize,
    /// Length of the region in bytes, at least `buf_size * count` (rounded up to whole pages).
    pub len: usize,
}

/// One DMA buffer, 4 KiB aligned, owned exclusively.
///
/// Dropping it returns it to its pool. It moves into a command on submission and comes back in
/// the completion; only then can its bytes be read again.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    index: u32,
    pool: Arc<PoolShared>,
}

// SAFETY: a DmaBuf is the only handle to its slice of the region (pool indices are handed out once
// until returned), so moving it to another thread moves exclusive access with it; the pool state
// it touches on drop (an Arc and a lock-free ArrayQueue) is thread-safe.
unsafe impl Send for DmaBuf {}
// SAFETY: through &DmaBuf the bytes can only be read (Deref), and writing needs &mut DmaBuf, so
// shared references on several threads only ever read concurrently, as with &[u8].
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// A standalone buffer of at least `len` bytes (a pool of one).
    pub fn new(len: usize) -> Result<DmaBuf, NvmeError> {
        DmaPool::with_config(DmaPoolConfig {
            buf_size: len,
            count: 1,
            hugepages: HugePages::Never,
        })?
        .alloc()
    }

    /// Size of the buffer in bytes: its pool's `buf_size`, a multiple of [`DMA_ALIGN`].
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes; never true, since a pool refuses a size of 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's virtual address (also its I/O virtual address where the IOMMU maps 1:1).
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Raw pointer for handing the buffer to a device. Only backends use it, while they own `self`.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Identity of the region this buffer lies in (see [`DmaPool::region`]).
    pub fn region_id(&self) -> u64 {
        self.pool.region.id
    }

    /// Whether the buffer lies in hugepage-backed memory (see [`DmaPool::uses_hugepages`]).
    pub fn uses_hugepages(&self) -> bool {
        self.pool.region.hugepages
    }
}

impl Deref for DmaBuf {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len lies inside the live region (the Arc keeps it mapped) and is owned
        // by this DmaBuf alone. No device writes it now: a device only reaches a buffer while a
        // backend holds the DmaBuf inside an in-flight command, and backends never view such a
        // buffer as a slice (they pass `as_mut_ptr`/`addr` to the device) until its completion
        // hands it back; so whoever can call this, the device is not writing these bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for DmaBuf {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr..ptr+len lies inside the live region (the Arc keeps it mapped), belongs to
        // this DmaBuf alone, and no device is writing it (a buffer a device may write is held
        // inside an in-flight command and never dereferenced until it completes); &mut self
        // rules out any other reference to these bytes for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // The queue holds every index at most once, so it always has room.
        let _ = self.pool.free.push(self.index);
    }
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_distinct_and_recycled() {
        let pool = DmaPool::new(1000, 3).unwrap();
        assert_eq!(pool.buf_size(), 4096);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        let c = pool.alloc().unwrap();
        for buf in [&a, &b, &c] {
            assert_eq!(buf.addr() % DMA_ALIGN, 0);
            assert_eq!(buf.len(), 4096);
            assert_eq!(buf.region_id(), pool.region().id);
        }
        assert_ne!(a.addr(), b.addr());
        assert!(matches!(
            pool.alloc(),
            Err(NvmeError::PoolExhausted { count: 3, .. })
        ));
        drop(b);
        assert_eq!(pool.available(), 1);
        let again = pool.alloc().unwrap();
        assert_eq!(again.len(), 4096);
        drop((a, c, again));
        assert_eq!(pool.available(), 3);
    }

    #[test]
    fn buffers_keep_their_region_alive() {
        let mut buf = {
            let pool = DmaPool::new(8192, 2).unwrap();
            pool.alloc().unwrap()
        };
        buf.fill(0xab);
        assert!(buf.iter().all(|&b| b == 0xab));
    }

    #[test]
    fn empty_pools_are_refused() {
        assert!(matches!(
            DmaPool::new(0, 4),
            Err(NvmeError::InvalidPool { .. })
        ));
        assert!(matches!(
            DmaPool::new(4096, 0),
            Err(NvmeError::InvalidPool { .. })
        ));
    }

    #[test]
    fn standalone_buffers_work() {
        let mut buf = DmaBuf::new(512).unwrap();
        assert_eq!(buf.len(), 4096);
        buf[..4].copy_from_slice(b"abcd");
        assert_eq!(&buf[..4], b"abcd");
    }
}
