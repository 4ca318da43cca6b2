//! Read-mostly storage whose readers on different cores never write a shared cache line.
//!
//! `ReadMostly<T>` is a table of cells, each a reader-writer lock built for the RAM namespace's
//! access pattern: random reads from every core, rarer writes. An ordinary lock (mutex or rwlock)
//! is written by every reader, so its cache line migrates between cores on about half of all
//! reads even when they never collide; on this machine that capped two cores at 1.5x one.
//!
//! Here each reader *slot* (one per thread, assigned round-robin) has its own array of per-cell
//! reader counts, so a reader increments a counter on a line only its own core writes. A writer
//! raises the cell's flag and waits until every slot's count for that cell is zero. The two sides
//! meet Dekker-style: the reader increments then checks the flag, the writer sets the flag then
//! checks the counts, all SeqCst, so at least one of them sees the other. Two threads sharing a
//! slot (more threads than slots) is still correct; it only shares a line again.
//!
//! The protocol is model-checked with loom (`RUSTFLAGS="--cfg loom" cargo test -p bluepoll-nvme
//! --lib read_mostly`, run by scripts/test-all.sh): under `cfg(loom)` the atomics, the writer
//! mutex and the value cell are loom's, and loom explores every interleaving of the tests in
//! `loom_model` below, reporting any access to a value that a write could overlap.

use std::sync::atomic::AtomicUsize;

#[cfg(loom)]
use loom::sync::Mutex;
#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering};
#[cfg(not(loom))]
use std::sync::Mutex;
#[cfg(not(loom))]
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Counts of padding (two cache lines of u32) before and after a slot's counts, so that no two
/// slots' arrays share a cache line or an adjacent-line prefetch pair.
#[cfg(not(loom))]
const PAD: usize = 32;
/// No padding in the model: it only adds objects loom would track for nothing.
#[cfg(loom)]
const PAD: usize = 0;

/// Waits a moment in a spin loop (under loom: lets the model schedule another thread, which a
/// spinning thread needs to make progress there).
fn spin() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Where the reader's increment meets the writer's flag (and the writer's flag meets the
/// counts). In the real build the SeqCst accesses on both sides are in one total order, which
/// is all the Dekker-style handshake needs, so this is nothing. loom models SeqCst accesses as
/// acquire/release only (tokio-rs/loom issue 180) but models SeqCst fences fully, so in the model
/// a fence stands in for the total order the real build has.
fn handshake_fence() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

/// The value of a cell, reached only under the protocol.
struct ValueCell<T>(
    #[cfg(not(loom))] std::cell::UnsafeCell<T>,
    #[cfg(loom)] loom::cell::UnsafeCell<T>,
);

impl<T> ValueCell<T> {
    fn new(value: T) -> ValueCell<T> {
        #[cfg(not(loom))]
        return ValueCell(std::cell::UnsafeCell::new(value));
        #[cfg(loom)]
        return ValueCell(loom::cell::UnsafeCell::new(value));
    }

    /// Runs `f` on a shared reference to the value.
    ///
    /// # Safety
    /// No `&mut` to the value may exist while `f` runs: the caller is a reader admitted by the
    /// protocol (its count raised and no writer in the cell).
    unsafe fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        #[cfg(not(loom))]
        // SAFETY: by this function's contract no mutable reference exists while `f` runs.
        return f(unsafe { &*self.0.get() });
        #[cfg(loom)]
        // SAFETY: as above; loom also checks it, reporting any overlap with a `with_mut`.
        return self.0.with(|p| f(unsafe { &*p }));
    }

    /// Runs `f` on the only reference to the value.
    ///
    /// # Safety
    /// No other reference to the value may exist while `f` runs: the caller is the cell's
    /// writer, admitted by the protocol (writer mutex held, flag raised, every count zero).
    unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        #[cfg(not(loom))]
        // SAFETY: by this function's contract this is the only reference while `f` runs.
        return f(unsafe { &mut *self.0.get() });
        #[cfg(loom)]
        // SAFETY: as above; loom also checks it, reporting any overlap with another access.
        return self.0.with_mut(|p| f(unsafe { &mut *p }));
    }
}

/// One reader slot's counts, one per cell, at `PAD..PAD + cells`.
struct SlotCounts(Box<[AtomicU32]>);

impl SlotCounts {
    fn of(&self, cell: usize) -> &AtomicU32 {
        &self.0[PAD + cell]
    }
}

struct Cell<T> {
    writing: AtomicBool,
    /// Serialises writers of this cell.
    writer: Mutex<()>,
    value: ValueCell<T>,
}

pub(crate) struct ReadMostly<T> {
    cells: Box<[Cell<T>]>,
    /// `slots[s][cell]`: readers of `cell` currently in slot `s`.
    slots: Box<[SlotCounts]>,
}

// SAFETY: a cell's value is only reached through `read` (shared access, while no writer is in
// the cell) and `write` (exclusive access, while no reader or other writer is); the protocol below
// enforces both, so sharing the table between threads is as sound as sharing an RwLock<T>.
unsafe impl<T: Send + Sync> Sync for ReadMostly<T> {}
// SAFETY: moving the table moves the values; nothing in it is tied to a thread.
unsafe impl<T: Send> Send for ReadMostly<T> {}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
}

impl<T> ReadMostly<T> {
    /// `cells` cells made by `init`, with `slots` reader slots (at least one).
    pub fn new(cells: usize, slots: usize, init: impl Fn() -> T) -> ReadMostly<T> {
        ReadMostly {
            cells: (0..cells)
                .map(|_| Cell {
                    writing: AtomicBool::new(false),
                    writer: Mutex::new(()),
                    value: ValueCell::new(init()),
                })
                .collect(),
            slots: (0..slots.max(1))
                .map(|_| SlotCounts((0..cells + 2 * PAD).map(|_| AtomicU32::new(0)).collect()))
                .collect(),
        }
    }

    /// Runs `f` with shared access to cell `index`.
    pub fn read<R>(&self, index: usize, f: impl FnOnce(&T) -> R) -> R {
        let slot = THREAD_SLOT.with(|s| *s);
        self.read_in_slot(slot, index, f)
    }

    /// [`read`](Self::read) counted in reader slot `slot` (modulo the number of slots): the
    /// thread's own in `read`, any one in the model check.
    fn read_in_slot<R>(&self, slot: usize, index: usize, f: impl FnOnce(&T) -> R) -> R {
        let cell = &self.cells[index];
        let count = self.slots[slot % self.slots.len()].of(index);
        loop {
            count.fetch_add(1, Ordering::SeqCst);
            handshake_fence();
            if !cell.writing.load(Ordering::SeqCst) {
                break;
            }
            count.fetch_sub(1, Ordering::SeqCst);
            while cell.writing.load(Ordering::Relaxed) {
                spin();
            }
        }
        // Lowers the count even if `f` panics; a raised count would make writers wait forever.
        struct Leave<'a>(&'a AtomicU32);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Release);
            }
        }
        let _leave = Leave(count);
        // SAFETY: our count is raised and no writer was in the cell after we raised it; a writer
        // arriving now waits for the count to drop, so only shared access happens until then.
        unsafe { cell.value.with(f) }
    }

    /// Runs `f` with exclusive access to cell `index`.
    pub fn write<R>(&self, index: usize, f: impl FnOnce(&mut T) -> R) -> R {
        let cell = &self.cells[index];
        // A poisoned writer lock only means a writer panicked; the flag is reset below regardless.
        #[cfg(not(loom))]
        let _writer = bluepoll_base::sync::lock(&cell.writer);
        #[cfg(loom)]
        let _writer = cell.writer.lock().unwrap_or_else(|p| p.into_inner());
        cell.writing.store(true, Ordering::SeqCst);
        handshake_fence();
        for slot in self.slots.iter() {
            while slot.of(index).load(Ordering::SeqCst) != 0 {
                spin();
            }
        }
        struct Lower<'a>(&'a AtomicBool);
        impl Drop for Lower<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _lower = Lower(&cell.writing);
        // SAFETY: we hold the cell's writer mutex (no other writer), the flag is raised and every
        // reader count was zero after raising it (no reader is inside, and new ones back off until
        // the flag drops when `_lower` is dropped), so this is the only reference.
        unsafe { cell.value.with_mut(f) }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn readers_never_see_a_half_written_cell() {
        // Writers fill a cell with one repeated byte; readers check every byte agrees.
        let table = Arc::new(ReadMostly::new(4, 2, || vec![0u8; 4096]));
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        let cell = (i % 4) as usize;
                        if t < 2 && i % 3 == 0 {
                            table.write(cell, |v| v.fill((i as u8).wrapping_add(t)));
                        } else {
                            table
                                .read(cell, |v| assert!(v.iter().all(|&b| b == v[0]), "torn read"));
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_panicking_reader_does_not_block_writers() {
        let table = Arc::new(ReadMostly::new(1, 1, || 0u64));
        let t = Arc::clone(&table);
        let panicked = std::thread::spawn(move || t.read(0, |_| panic!("reader fails"))).join();
        assert!(panicked.is_err());
        table.write(0, |v| *v = 7);
        table.read(0, |v| assert_eq!(*v, 7));
    }

    #[test]
    fn more_threads_than_slots_is_still_exclusive() {
        let table = Arc::new(ReadMostly::new(1, 1, || 0u64));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        table.write(0, |v| *v += 1);
                        table.read(0, |v| assert!(*v > 0));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        table.read(0, |v| assert_eq!(*v, 40_000));
    }
}

/// The model check: loom runs each closure under every interleaving (up to its preemption
/// bound) of the threads it spawns, with the memory model's reorderings, and fails on any
/// access to a cell value that a write may overlap, or on a torn value.
#[cfg(all(test, loom))]
mod loom_model {
    use loom::sync::Arc;
    use loom::thread;

    use super::ReadMostly;

    /// A writer sets both halves of the value together; a reader must see them equal.
    fn check_pair(v: &(u64, u64)) -> u64 {
        assert_eq!(v.0, v.1, "a reader saw a half-written value");
        v.0
    }

    #[test]
    fn a_reader_in_its_own_slot_never_overlaps_a_writer() {
        loom::model(|| {
            let table = Arc::new(ReadMostly::new(1, 2, || (0u64, 0u64)));
            let writer = {
                let table = Arc::clone(&table);
                thread::spawn(move || table.write(0, |v| *v = (v.0 + 1, v.1 + 1)))
            };
            let seen = table.read_in_slot(1, 0, check_pair);
            writer.join().unwrap();
            assert!(seen <= 1);
            assert_eq!(table.read_in_slot(0, 0, check_pair), 1);
        });
    }

    #[test]
    fn two_readers_sharing_a_slot_and_a_writer() {
        let mut model = loom::model::Builder::new();
        // Three threads with spinning waiters: bounded so the check ends in seconds, as loom's
        // documentation advises (most concurrency bugs show within a preemption or two).
        model.preemption_bound = Some(1);
        model.max_branches = 100_000;
        model.check(|| {
            let table = Arc::new(ReadMostly::new(1, 1, || (0u64, 0u64)));
            let reader = {
                let table = Arc::clone(&table);
                thread::spawn(move || table.read_in_slot(0, 0, check_pair))
            };
            let writer = {
                let table = Arc::clone(&table);
                thread::spawn(move || table.write(0, |v| *v = (v.0 + 1, v.1 + 1)))
            };
            let seen = table.read_in_slot(0, 0, check_pair);
            assert!(seen <= 1 && reader.join().unwrap() <= 1);
            writer.join().unwrap();
        });
    }

    #[test]
    fn two_writers_are_exclusive() {
        let mut model = loom::model::Builder::new();
        // Three threads with spinning waiters: bounded so the check ends in seconds, as loom's
        // documentation advises (most concurrency bugs show within a preemption or two).
        model.preemption_bound = Some(1);
        model.max_branches = 100_000;
        model.check(|| {
            let table = Arc::new(ReadMostly::new(1, 1, || (0u64, 0u64)));
            let other = {
                let table = Arc::clone(&table);
                thread::spawn(move || table.write(0, |v| *v = (v.0 + 1, v.1 + 1)))
            };
            table.write(0, |v| *v = (v.0 + 1, v.1 + 1));
            other.join().unwrap();
            assert_eq!(table.read_in_slot(0, 0, check_pair), 2);
        });
    }
}
