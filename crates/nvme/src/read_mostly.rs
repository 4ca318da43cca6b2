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

use std::cell::UnsafeCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

/// Counts of padding (two cache lines of u32) before and after a slot's counts, so that no two
/// slots' arrays share a cache line or an adjacent-line prefetch pair.
const PAD: usize = 32;

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
    value: UnsafeCell<T>,
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
                    value: UnsafeCell::new(init()),
                })
                .collect(),
            slots: (0..slots.max(1))
                .map(|_| SlotCounts((0..cells + 2 * PAD).map(|_| AtomicU32::new(0)).collect()))
                .collect(),
        }
    }

    /// Runs `f` with shared access to cell `index`.
    pub fn read<R>(&self, index: usize, f: impl FnOnce(&T) -> R) -> R {
        let cell = &self.cells[index];
        let slot = THREAD_SLOT.with(|s| *s) % self.slots.len();
        let count = self.slots[slot].of(index);
        loop {
            count.fetch_add(1, Ordering::SeqCst);
            if !cell.writing.load(Ordering::SeqCst) {
                break;
            }
            count.fetch_sub(1, Ordering::SeqCst);
            while cell.writing.load(Ordering::Relaxed) {
                std::hint::spin_loop();
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
        f(unsafe { &*cell.value.get() })
    }

    /// Runs `f` with exclusive access to cell `index`.
    pub fn write<R>(&self, index: usize, f: impl FnOnce(&mut T) -> R) -> R {
        let cell = &self.cells[index];
        // A poisoned writer lock only means a writer panicked; the flag is reset below regardless.
        let _writer = bluepoll_base::sync::lock(&cell.writer);
        cell.writing.store(true, Ordering::SeqCst);
        for slot in self.slots.iter() {
            while slot.of(index).load(Ordering::SeqCst) != 0 {
                std::hint::spin_loop();
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
        f(unsafe { &mut *cell.value.get() })
    }
}

#[cfg(test)]
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
