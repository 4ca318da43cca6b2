//! The `uring:` queue pair: commands recorded by `queue`, handed to the rings in one batch per
//! poll, reaped from the completion rings, and never freed while the kernel may write them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fixed::FixedBuffers;
use super::namespace::UringNamespace;
use super::ring::Ring;
use super::slab::{InFlight, Slab};
use super::sqe::{Outcome, prepare, settle};
use crate::command::{Completion, IoCmd, Opcode, Status};
use crate::device::{PollResult, QueuePairBackend, QueuePairStats};
use crate::dma::DmaPool;
use crate::error::NvmeError;

/// How long dropping a queue pair waits for the kernel to give back buffers before leaking them.
const DROP_WAIT_LIMIT: Duration = Duration::from_secs(30);

/// Moves up to `max` finished commands from `ring`'s completion queue into `out`; CQEs beyond
/// that stay in the ring for the next poll.
fn reap(
    ring: &mut Ring,
    slab: &mut Slab,
    unsent: &mut VecDeque<u32>,
    max: usize,
    out: &mut Vec<Completion>,
) -> usize {
    let mut produced = 0;
    let mut cq = ring.uring.completion();
    while produced < max {
        let Some(cqe) = cq.next() else { break };
        let Ok(slot) = u32::try_from(cqe.user_data()) else {
            continue;
        };
        let Some(entry) = slab.get_mut(slot) else {
            // Not one of ours (no command uses that slot); nothing to hand back.
            continue;
        };
        ring.in_flight = ring.in_flight.saturating_sub(1);
        match settle(entry, cqe.result()) {
            Outcome::Resubmit => unsent.push_back(slot),
            Outcome::Done(status) => {
                if let Some(entry) = slab.remove(slot) {
                    out.push(entry.cmd.complete(status));
                    produced += 1;
                }
            }
        }
    }
    produced
}

pub(super) struct UringQueuePair {
    /// Commands waiting for an SQE: new ones, short transfers and EAGAINs to resubmit, and any
    /// the SQ had no room for.
    pub(super) unsent: VecDeque<u32>,
    /// Commands completed without reaching the kernel.
    pub(super) ready: VecDeque<Completion>,
    pub(super) slab: Slab,
    /// Once set, every poll fails with it.
    pub(super) broken: Option<String>,
    // Field order matters on drop: the rings close before `fixed` lets go of the pools they have
    // registered.
    pub(super) data: Ring,
    /// The plain ring beside an IOPOLL `data` ring, for flush, write-zeroes and trim.
    pub(super) sync: Option<Ring>,
    pub(super) fixed: FixedBuffers,
    pub(super) ns: Arc<UringNamespace>,
}

impl UringQueuePair {
    fn failure(&self, reason: &str) -> NvmeError {
        NvmeError::QueuePairFailed {
            uri: self.ns.info.uri.clone(),
            reason: reason.to_string(),
        }
    }

    /// Writes an SQE for every unsent command into its ring and publishes each ring's tail once.
    fn hand_over(&mut self, stats: &mut QueuePairStats) {
        if self.unsent.is_empty() {
            return;
        }
        let UringQueuePair {
            unsent,
            ready,
            slab,
            data,
            sync,
            fixed,
            ns,
            ..
        } = self;
        let zeroes_mode = ns.zeroes_mode;
        let data_file = data.file;
        let sync_file = sync.as_ref().map(|ring| ring.file);
        let mut data_sq = data.uring.submission();
        let mut sync_sq = sync.as_mut().map(|ring| ring.uring.submission());
        let mut data_pushed = 0u32;
        let mut sync_pushed = 0u32;
        for _ in 0..unsent.len() {
            let Some(slot) = unsent.pop_front() else {
                break;
            };
            let Some(entry) = slab.get_mut(slot) else {
                continue;
            };
            if ns.flush_inline && entry.cmd.opcode == Opcode::Flush {
                stats.syscalls += 1;
                let status = match ns.file.sync_data() {
                    Ok(()) => Status::SUCCESS,
                    Err(_) => Status::WRITE_FAULT,
                };
                if let Some(entry) = slab.remove(slot) {
                    ready.push_back(entry.cmd.complete(status));
                }
                continue;
            }
            let on_sync_ring = sync_sq.is_some() && !entry.cmd.opcode.transfers_data();
            let file = match sync_file {
                Some(file) if on_sync_ring => file,
                _ => data_file,
            };
            let Some(sqe) = prepare(entry, slot, file, fixed, zeroes_mode) else {
                if let Some(entry) = slab.remove(slot) {
                    ready.push_back(entry.cmd.complete(Status::INVALID_FIELD));
                }
                continue;
            };
            let sq = match sync_sq.as_mut() {
                Some(sq) if on_sync_ring => sq,
                _ => &mut data_sq,
            };
            // SAFETY: the SQE points only at the command's own DmaBuf (or at nothing), within the
            // data window check_command validated, and for ReadFixed/WriteFixed at a registered
            // buffer that covers it (`index_for`). The DmaBuf stays in the slab, never viewed as a
            // slice, until this slot's CQE is reaped; if the queue pair is dropped first, Drop
            // waits for the CQE or leaks the buffer. Its pool mapping lives as long as the
            // DmaBuf, so the kernel never writes memory that has been freed or reused.
            if unsafe { sq.push(&sqe) }.is_err() {
                unsent.push_back(slot);
                continue;
            }
            if on_sync_ring {
                sync_pushed += 1;
            } else {
                data_pushed += 1;
            }
        }
        // Dropping the queues publishes their tails: one doorbell per ring for the whole batch.
        drop(data_sq);
        drop(sync_sq);
        for (ring, pushed) in [(Some(data), data_pushed), (sync.as_mut(), sync_pushed)] {
            if let Some(ring) = ring
                && pushed > 0
            {
                ring.in_flight += pushed;
                stats.record_doorbell(pushed as usize);
            }
        }
    }
}

impl QueuePairBackend for UringQueuePair {
    /// Sleeps on a ring with commands in flight, unless a polled ring has some (those complete
    /// only when polled).
    fn wait(&mut self, stats: &mut QueuePairStats) {
        if self.broken.is_some() || !self.unsent.is_empty() || !self.ready.is_empty() {
            return;
        }
        if self.data.polled && self.data.in_flight > 0 {
            std::thread::yield_now();
            return;
        }
        let rings = std::iter::once(&mut self.data).chain(self.sync.as_mut());
        for ring in rings {
            if ring.wait_for_completion(Duration::from_millis(1), stats) {
                return;
            }
        }
        std::thread::yield_now();
    }

    #[inline]
    fn queue(&mut self, cmd: IoCmd) {
        let block_size = self.ns.info.block_size;
        let entry = InFlight {
            offset: cmd.lba.saturating_mul(block_size as u64),
            len: cmd.blocks as u64 * block_size as u64,
            done: 0,
            eagain_resubmits: 0,
            cmd,
        };
        let slot = self.slab.insert(entry);
        self.unsent.push_back(slot);
    }

    fn poll(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
        stats: &mut QueuePairStats,
    ) -> PollResult {
        if let Some(reason) = &self.broken {
            return Err(self.failure(reason).into());
        }
        self.hand_over(stats);
        let rings = std::iter::once(&mut self.data).chain(self.sync.as_mut());
        for ring in rings {
            if let Err(e) = ring.enter_if_needed(stats) {
                let reason = format!("io_uring_enter failed: {e}");
                let error = self.failure(&reason);
                self.broken = Some(reason);
                return Err(error.into());
            }
        }
        let mut produced = 0;
        while produced < max {
            let Some(completion) = self.ready.pop_front() else {
                break;
            };
            out.push(completion);
            produced += 1;
        }
        if produced < max {
            produced += reap(
                &mut self.data,
                &mut self.slab,
                &mut self.unsent,
                max - produced,
                out,
            );
        }
        if let Some(sync) = self.sync.as_mut()
            && produced < max
        {
            produced += reap(sync, &mut self.slab, &mut self.unsent, max - produced, out);
        }
        Ok(produced)
    }

    fn register_pool(&mut self, pool: &DmaPool) -> Result<bool, NvmeError> {
        if self.broken.is_some() {
            return Ok(false);
        }
        Ok(self.fixed.register(&self.data.uring, pool))
    }
}

impl Drop for UringQueuePair {
    /// Never frees a buffer the kernel may still write: waits for every submitted command's CQE,
    /// and if the kernel does not give them all back in time, leaks their buffers instead.
    fn drop(&mut self) {
        let mut discarded = Vec::new();
        let deadline = Instant::now() + DROP_WAIT_LIMIT;
        loop {
            // Commands the kernel never saw, or has finished with but which wanted resubmitting,
            // go back to their pools: there is nobody left to complete them to.
            while let Some(slot) = self.unsent.pop_front() {
                drop(self.slab.remove(slot));
            }
            self.ready.clear();
            if self.slab.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                std::mem::forget(std::mem::take(&mut self.slab));
                return;
            }
            let rings = std::iter::once(&mut self.data).chain(self.sync.as_mut());
            for ring in rings {
                if ring.in_flight > 0 || !ring.uring.submission().is_empty() {
                    ring.wait_briefly();
                }
                reap(
                    ring,
                    &mut self.slab,
                    &mut self.unsent,
                    usize::MAX,
                    &mut discarded,
                );
                discarded.clear();
            }
        }
    }
}
