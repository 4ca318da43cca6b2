//! The commands a queue pair holds, from `queue` until their completion is handed back, indexed
//! by the `user_data` their SQEs carry.

use crate::command::IoCmd;

/// A command the queue pair holds, from `queue` until its completion is handed back.
pub(super) struct InFlight {
    pub(super) cmd: IoCmd,
    /// Byte offset in the file and byte length of the whole command. Trim and write-zeroes are
    /// not bounded by the transfer limit, so the length may exceed 4 GiB.
    pub(super) offset: u64,
    pub(super) len: u64,
    /// Bytes already moved by earlier, short completions.
    pub(super) done: u64,
    pub(super) eagain_resubmits: u16,
}

/// Commands indexed by the `user_data` their SQEs carry. A slot's `DmaBuf` stays here for as
/// long as the kernel may touch its memory; moving the handle (when the Vec grows) never moves
/// that memory.
#[derive(Default)]
pub(super) struct Slab {
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
}

impl Slab {
    pub(super) fn with_capacity(capacity: usize) -> Slab {
        Slab {
            slots: (0..capacity).map(|_| None).collect(),
            free: (0..capacity as u32).rev().collect(),
        }
    }

    pub(super) fn insert(&mut self, entry: InFlight) -> u32 {
        if let Some(slot) = self.free.pop()
            && let Some(vacant) = self.slots.get_mut(slot as usize)
        {
            *vacant = Some(entry);
            return slot;
        }
        self.slots.push(Some(entry));
        (self.slots.len() - 1) as u32
    }

    pub(super) fn get_mut(&mut self, slot: u32) -> Option<&mut InFlight> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    pub(super) fn remove(&mut self, slot: u32) -> Option<InFlight> {
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        Some(entry)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }
}
