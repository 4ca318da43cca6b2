//! [`FaultControl`], the handle crash tests hold, and what it reports: [`FaultStats`] and
//! [`PowerCutReport`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bluepoll_base::sync::lock;

use super::namespace::FaultShared;
use super::rules::{ArmedRule, EioRule};
use crate::error::NvmeError;

/// Counters of a `fault:` device since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Commands this backend executed (not counting ones aborted by a power cut).
    pub commands: u64,
    /// Commands failed by an [`EioRule`].
    pub injected_errors: u64,
    /// Writes, WriteZeroes and Trims that reported success but were discarded (`drop_writes`).
    pub dropped_writes: u64,
    /// Writes stored with one bit flipped (`corrupt_writes`).
    pub corrupted_writes: u64,
    /// Flush commands that completed successfully.
    pub flushes: u64,
    /// Calls to [`FaultControl::power_cut`], including ones that then failed to write back.
    pub power_cuts: u64,
    /// Writes with at least one block still in the volatile cache.
    pub unflushed_writes: u64,
    /// Blocks in the volatile cache.
    pub unflushed_blocks: u64,
}

/// What one power cut did to the unflushed writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerCutReport {
    /// Unflushed writes none of whose blocks persisted.
    pub writes_lost: u64,
    /// Unflushed writes of two or more blocks of which a non-empty strict subset persisted.
    pub writes_torn: u64,
    /// Unflushed writes that persisted whole. A write that persisted may still read back
    /// overwritten where a newer unflushed write that also persisted covers it.
    pub writes_persisted: u64,
    /// Blocks written to the inner device by the cut.
    pub blocks_persisted: u64,
    /// Cached blocks that reverted to their durable contents.
    pub blocks_lost: u64,
}

/// The handle crash tests use to cut power and arm faults; shared by every clone of the device.
#[derive(Clone)]
pub struct FaultControl {
    pub(super) shared: Arc<FaultShared>,
}

impl fmt::Debug for FaultControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultControl")
            .field("inner", &self.shared.inner.info().uri)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FaultControl {
    /// Simulates power loss; see the module documentation for exactly what survives.
    ///
    /// Fails only if the inner device cannot take the persisting blocks; power is cut (old queue
    /// pairs dead, cache empty) either way.
    pub fn power_cut(&self) -> Result<PowerCutReport, NvmeError> {
        self.shared.power_cut()
    }

    /// Arms an error rule; its counter starts at zero now.
    pub fn arm(&self, rule: EioRule) {
        lock(&self.shared.rules).push(ArmedRule { rule, matched: 0 });
    }

    /// Removes every armed rule, those from the URI or [`FaultConfig`](super::FaultConfig)
    /// included; commands from now on fail only by chance (`drop_writes`, `corrupt_writes`).
    pub fn disarm_all(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Sets the chance that each Write, WriteZeroes or Trim executed from now on reports
    /// success but is discarded. Clamped to 0..=1 (NaN counts as 0).
    pub fn set_drop_writes(&self, probability: f64) {
        self.shared.odds.drop_writes.set(probability);
    }

    /// Sets the chance that each Write executed from now on is stored with one bit flipped.
    /// Clamped to 0..=1 (NaN counts as 0).
    pub fn set_corrupt_writes(&self, probability: f64) {
        self.shared.odds.corrupt_writes.set(probability);
    }

    /// Odds for the next power cuts, clamped to 0..=1 (NaN counts as 0).
    pub fn set_power_cut_odds(&self, survive: f64, torn: f64) {
        self.shared.odds.survive.set(survive);
        self.shared.odds.torn.set(torn);
    }

    /// The device's counters now, and what the volatile cache holds. Counters are read one by
    /// one while other threads may be executing commands, so they need not agree exactly.
    pub fn stats(&self) -> FaultStats {
        let counters = &self.shared.counters;
        let (unflushed_writes, unflushed_blocks) = {
            let cache = lock(&self.shared.cache);
            (cache.writes.len() as u64, cache.blocks)
        };
        FaultStats {
            commands: counters.commands.load(Ordering::Relaxed),
            injected_errors: counters.injected_errors.load(Ordering::Relaxed),
            dropped_writes: counters.dropped_writes.load(Ordering::Relaxed),
            corrupted_writes: counters.corrupted_writes.load(Ordering::Relaxed),
            flushes: counters.flushes.load(Ordering::Relaxed),
            power_cuts: counters.power_cuts.load(Ordering::Relaxed),
            unflushed_writes,
            unflushed_blocks,
        }
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) commands: AtomicU64,
    pub(super) injected_errors: AtomicU64,
    pub(super) dropped_writes: AtomicU64,
    pub(super) corrupted_writes: AtomicU64,
    pub(super) flushes: AtomicU64,
    pub(super) power_cuts: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
