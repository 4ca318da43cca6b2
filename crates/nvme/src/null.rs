//! `null:SIZE` — a namespace that completes every valid command at the next poll without moving
//! data, like SPDK's null bdev. What a benchmark measures on it is the engine's own per-I/O cost.

use std::collections::VecDeque;
use std::sync::Arc;

use super::command::{Completion, IoCmd, Status};
use super::device::{Namespace, NamespaceInfo, PollResult, QueuePairBackend, QueuePairStats};
use super::error::NvmeError;
use super::mem::SyntheticParams;

pub(crate) struct NullNamespace {
    info: NamespaceInfo,
}

impl NullNamespace {
    pub fn open(uri: &str, rest: &str) -> Result<NullNamespace, NvmeError> {
        let info = SyntheticParams::parse(uri, rest)?.info(uri, "null namespace (no data)");
        Ok(NullNamespace { info })
    }
}

impl Namespace for NullNamespace {
    fn info(&self) -> &NamespaceInfo {
        &self.info
    }

    fn create_queue_pair(
        self: Arc<Self>,
        depth: u32,
    ) -> Result<Box<dyn QueuePairBackend>, NvmeError> {
        Ok(Box::new(NullQueuePair {
            ring: VecDeque::with_capacity(depth as usize),
            rung: 0,
        }))
    }
}

/// Completions in submission order; the first `rung` have been handed to the "device" by a
/// doorbell and may be reaped, the rest wait for the next poll.
struct NullQueuePair {
    ring: VecDeque<Completion>,
    rung: usize,
}

impl QueuePairBackend for NullQueuePair {
    #[inline]
    fn queue(&mut self, cmd: IoCmd) {
        self.ring.push_back(cmd.complete(Status::SUCCESS));
    }

    #[inline]
    fn poll(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
        stats: &mut QueuePairStats,
    ) -> PollResult {
        let queued = self.ring.len() - self.rung;
        if queued > 0 {
            stats.record_doorbell(queued);
            self.rung = self.ring.len();
        }
        let n = max.min(self.rung);
        // poll(0) just rings the doorbell; skip building an empty drain on that hot path.
        if n > 0 {
            out.extend(self.ring.drain(..n));
            self.rung -= n;
        }
        Ok(n)
    }
}
