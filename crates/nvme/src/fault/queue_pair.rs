//! The command path of a `fault:` queue pair: each command executes against the cache or is
//! forwarded to the inner device, and inner completions are fixed up before they are handed back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bluepoll_base::sync::lock;

use super::cache::{Content, Extent, apply_overlay};
use super::control::bump;
use super::namespace::FaultShared;
use super::random::{SALT_BIT, SALT_CORRUPT, SALT_DROP, draw};
use super::writeback::{WRITEBACK_TAG, build_runs, write_back};
use crate::command::{Completion, IoCmd, Opcode, Status};
use crate::device::{PollResult, QueueFull, QueuePair, QueuePairBackend, QueuePairStats};
use crate::dma::{DmaBuf, DmaPool};
use crate::error::NvmeError;

/// A command's data window in its buffer; `None` only if validation was bypassed.
fn data_window(cmd: &mut IoCmd, block_size: usize) -> Option<&mut [u8]> {
    let start = cmd.buf_offset as usize;
    let len = cmd.blocks as usize * block_size;
    cmd.buf.as_mut()?.get_mut(start..start + len)
}

/// What to do with a forwarded command's completion before handing it back.
enum Fixup {
    None,
    /// Cached blocks as they were when the read was forwarded.
    Overlay {
        lba: u64,
        blocks: u32,
        buf_offset: u32,
        extents: Vec<(u64, Extent)>,
    },
    /// Undo the bit flipped for `corrupt_writes` in the caller's buffer.
    RestoreBit {
        byte: usize,
        mask: u8,
    },
}

pub(super) struct Forwarded {
    caller_tag: u64,
    opcode: Opcode,
    fixup: Fixup,
}

pub(super) struct FaultQueuePair {
    pub(super) shared: Arc<FaultShared>,
    pub(super) inner: QueuePair,
    /// The power generation this queue pair was made in.
    pub(super) generation: u64,
    pub(super) queued: Vec<IoCmd>,
    pub(super) completed: VecDeque<Completion>,
    /// By inner tag.
    pub(super) forwarded: HashMap<u64, Forwarded>,
    pub(super) next_inner_tag: u64,
    /// Inner completions not yet matched to their forwarded command.
    pub(super) reaped: Vec<Completion>,
}

impl FaultQueuePair {
    fn is_dead(&self) -> bool {
        self.shared.generation.load(Ordering::SeqCst) != self.generation
    }

    fn block_size(&self) -> usize {
        self.shared.limits.block_size
    }

    fn complete(&mut self, cmd: IoCmd, status: Status) {
        self.completed.push_back(cmd.complete(status));
    }

    fn execute(&mut self, mut cmd: IoCmd) -> Result<(), NvmeError> {
        if self.is_dead() {
            self.complete(cmd, Status::ABORTED_POWER_LOSS);
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        bump(&shared.counters.commands);
        if let Some(status) = shared.injected_error(&cmd) {
            bump(&shared.counters.injected_errors);
            self.complete(cmd, status);
            return Ok(());
        }
        if cmd.opcode.modifies() && shared.chance(&shared.odds.drop_writes, SALT_DROP, seq) {
            bump(&shared.counters.dropped_writes);
            self.complete(cmd, Status::SUCCESS);
            return Ok(());
        }
        let corrupt_bit = (cmd.opcode == Opcode::Write
            && shared.chance(&shared.odds.corrupt_writes, SALT_CORRUPT, seq))
        .then(|| {
            let bits = cmd.blocks as u64 * self.block_size() as u64 * 8;
            draw(shared.seed, SALT_BIT, seq, 0) % bits
        });
        if corrupt_bit.is_some() {
            bump(&shared.counters.corrupted_writes);
        }
        if shared.volatile_cache {
            match cmd.opcode {
                Opcode::Read => self.read_through_cache(cmd),
                Opcode::Write => self.write_to_cache(cmd, seq, corrupt_bit),
                Opcode::WriteZeroes => self.cache_content(cmd, seq, Content::Zeroes),
                Opcode::Trim => self.cache_content(cmd, seq, Content::Trimmed),
                Opcode::Flush => self.flush_cache(cmd)?,
            }
        } else {
            let fixup = match corrupt_bit {
                Some(bit) => {
                    let byte = cmd.buf_offset as usize + (bit / 8) as usize;
                    let mask = 1u8 << (bit % 8);
                    match cmd.buf.as_mut().and_then(|buf| buf.get_mut(byte)) {
                        Some(target) => {
                            *target ^= mask;
                            Fixup::RestoreBit { byte, mask }
                        }
                        None => Fixup::None,
                    }
                }
                None => Fixup::None,
            };
            self.forward(cmd, fixup);
        }
        Ok(())
    }

    fn read_through_cache(&mut self, mut cmd: IoCmd) {
        let end = cmd.lba + cmd.blocks as u64;
        let overlay = {
            let cache = lock(&self.shared.cache);
            if self.is_dead() {
                drop(cache);
                self.complete(cmd, Status::ABORTED_POWER_LOSS);
                return;
            }
            cache.overlapping(cmd.lba, end)
        };
        let covered: u64 = overlay.iter().map(|(_, e)| e.blocks).sum();
        if covered == cmd.blocks as u64 {
            let bs = self.block_size();
            let lba = cmd.lba;
            let status = match data_window(&mut cmd, bs) {
                Some(window) => match apply_overlay(window, lba, bs, &overlay) {
                    Ok(()) => Status::SUCCESS,
                    Err(status) => status,
                },
                None => Status::INVALID_FIELD,
            };
            self.complete(cmd, status);
        } else {
            let fixup = Fixup::Overlay {
                lba: cmd.lba,
                blocks: cmd.blocks,
                buf_offset: cmd.buf_offset,
                extents: overlay,
            };
            self.forward(cmd, fixup);
        }
    }

    fn write_to_cache(&mut self, mut cmd: IoCmd, seq: u64, corrupt_bit: Option<u64>) {
        let bs = self.block_size();
        let Some(window) = data_window(&mut cmd, bs) else {
            self.complete(cmd, Status::INVALID_FIELD);
            return;
        };
        let mut data = window.to_vec();
        if let Some(bit) = corrupt_bit
            && let Some(byte) = data.get_mut((bit / 8) as usize)
        {
            *byte ^= 1 << (bit % 8);
        }
        let content = Content::Data {
            bytes: Arc::from(data),
            first: 0,
        };
        self.cache_content(cmd, seq, content);
    }

    fn cache_content(&mut self, cmd: IoCmd, seq: u64, content: Content) {
        let status = {
            let mut cache = lock(&self.shared.cache);
            if self.is_dead() {
                Status::ABORTED_POWER_LOSS
            } else {
                let extent = Extent {
                    blocks: cmd.blocks as u64,
                    write_seq: seq,
                    content,
                };
                cache.insert(cmd.lba, extent);
                Status::SUCCESS
            }
        };
        self.complete(cmd, status);
    }

    fn flush_cache(&mut self, cmd: IoCmd) -> Result<(), NvmeError> {
        let shared = Arc::clone(&self.shared);
        let _writeback = lock(&shared.writeback);
        let snapshot = {
            let cache = lock(&shared.cache);
            if self.is_dead() {
                drop(cache);
                self.complete(cmd, Status::ABORTED_POWER_LOSS);
                return Ok(());
            }
            (cache.snapshot(), cache.older.len())
        };
        let (snapshot, older_then) = snapshot;
        let ops = build_runs(&snapshot, shared.limits);
        let mut stray = std::mem::take(&mut self.reaped);
        let result = write_back(&mut self.inner, ops, shared.limits, &mut stray);
        self.reaped = stray;
        if let Some(failed) = result? {
            self.complete(cmd, failed.status);
            return Ok(());
        }
        {
            let mut cache = lock(&shared.cache);
            for (lba, extent) in &snapshot {
                cache.retire(*lba, extent);
            }
            cache.forget_older(older_then);
        }
        bump(&shared.counters.flushes);
        self.complete(cmd, Status::SUCCESS);
        Ok(())
    }

    fn forward(&mut self, mut cmd: IoCmd, fixup: Fixup) {
        let tag = self.next_inner_tag;
        self.next_inner_tag = (tag + 1) % WRITEBACK_TAG;
        let caller_tag = std::mem::replace(&mut cmd.tag, tag);
        let opcode = cmd.opcode;
        match self.inner.submit(cmd) {
            Ok(()) => {
                self.forwarded.insert(
                    tag,
                    Forwarded {
                        caller_tag,
                        opcode,
                        fixup,
                    },
                );
            }
            Err(QueueFull(mut cmd)) => {
                // Cannot happen (the inner queue pair is at least as deep as this one), but if
                // it did, the caller gets its command back failed rather than lost.
                cmd.tag = caller_tag;
                restore_bit(&mut cmd.buf, &fixup);
                self.complete(cmd, Status::INTERNAL_ERROR);
            }
        }
    }

    fn finish_forwarded(&mut self, completion: Completion, dead: bool) {
        let Some(forwarded) = self.forwarded.remove(&completion.tag) else {
            // Every inner command this queue pair submits is either forwarded (recorded) or a
            // write-back command that run_on_inner consumes, so this cannot happen.
            return;
        };
        let Completion {
            mut status,
            mut buf,
            ..
        } = completion;
        restore_bit(&mut buf, &forwarded.fixup);
        if let Fixup::Overlay {
            lba,
            blocks,
            buf_offset,
            extents,
        } = &forwarded.fixup
            && status.is_success()
            && !dead
            && !extents.is_empty()
        {
            let bs = self.block_size();
            let start = *buf_offset as usize;
            let window = buf
                .as_mut()
                .and_then(|buf| buf.get_mut(start..start + *blocks as usize * bs));
            status = match window {
                Some(window) => match apply_overlay(window, *lba, bs, extents) {
                    Ok(()) => Status::SUCCESS,
                    Err(status) => status,
                },
                None => Status::INTERNAL_ERROR,
            };
        }
        if dead {
            status = Status::ABORTED_POWER_LOSS;
        }
        if forwarded.opcode == Opcode::Flush && status.is_success() {
            bump(&self.shared.counters.flushes);
        }
        self.completed.push_back(Completion {
            tag: forwarded.caller_tag,
            status,
            buf,
        });
    }

    fn reap_inner(&mut self) -> Result<(), NvmeError> {
        if self.inner.outstanding() > 0 {
            self.inner.poll(usize::MAX, &mut self.reaped)?;
        }
        if self.reaped.is_empty() {
            return Ok(());
        }
        let dead = self.is_dead();
        let mut reaped = std::mem::take(&mut self.reaped);
        for completion in reaped.drain(..) {
            self.finish_forwarded(completion, dead);
        }
        self.reaped = reaped;
        Ok(())
    }
}

fn restore_bit(buf: &mut Option<DmaBuf>, fixup: &Fixup) {
    if let Fixup::RestoreBit { byte, mask } = *fixup
        && let Some(target) = buf.as_mut().and_then(|buf| buf.get_mut(byte))
    {
        *target ^= mask;
    }
}

impl QueuePairBackend for FaultQueuePair {
    fn queue(&mut self, cmd: IoCmd) {
        self.queued.push(cmd);
    }

    /// Waiting on this device is waiting on the inner one, when commands went there.
    fn wait(&mut self, _stats: &mut QueuePairStats) {
        if self.forwarded.is_empty() {
            std::thread::yield_now();
        } else {
            self.inner.wait();
        }
    }

    fn poll(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
        stats: &mut QueuePairStats,
    ) -> PollResult {
        let syscalls_before = self.inner.stats().syscalls;
        if !self.queued.is_empty() {
            stats.record_doorbell(self.queued.len());
            let mut batch = std::mem::take(&mut self.queued);
            for cmd in batch.drain(..) {
                self.execute(cmd)?;
            }
            self.queued = batch;
        }
        self.reap_inner()?;
        stats.syscalls += self.inner.stats().syscalls - syscalls_before;
        let n = max.min(self.completed.len());
        out.extend(self.completed.drain(..n));
        Ok(n)
    }

    fn register_pool(&mut self, pool: &DmaPool) -> Result<bool, NvmeError> {
        self.inner.register_pool(pool)
    }
}
