//! Power cuts: the fate of each unflushed write (persists, tears, or is lost), and the cut itself,
//! which writes the blocks that persist to the inner device and kills the old queue pairs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bluepoll_base::sync::lock;

use super::cache::{Cache, Extent, UnflushedWrite};
use super::control::{PowerCutReport, bump};
use super::namespace::FaultShared;
use super::random::{SALT_FATE, SALT_TEAR_BLOCK, SALT_TEAR_KEEP, SALT_TEAR_LOSE, draw, unit};
use super::writeback::{WRITEBACK_SLOTS, build_runs, write_back};
use crate::error::NvmeError;

/// A write tears into at most this many independently decided pieces: single blocks for every
/// write of up to this many blocks (any data write within a 4 MiB transfer limit), equal
/// segments beyond, so tearing a cached multi-GiB Trim costs thousands of draws, not billions.
const MAX_TEAR_SEGMENTS: u64 = 4096;

/// A power-cut decision about one unflushed write.
#[derive(Clone, Copy)]
enum Fate {
    Persist,
    /// The write's blocks fall into `segments` equal segments; segment `kept` persists and
    /// segment `lost` does not (so the subset is non-empty and strict), the rest are coin flips.
    Tear {
        first_lba: u64,
        blocks: u64,
        segments: u64,
        kept: u64,
        lost: u64,
    },
    Lose,
}

impl Fate {
    fn segment_of(self, lba: u64) -> u64 {
        match self {
            Fate::Tear {
                first_lba,
                blocks,
                segments,
                ..
            } => ((lba - first_lba) as u128 * segments as u128 / blocks as u128) as u64,
            Fate::Persist | Fate::Lose => 0,
        }
    }

    /// The first LBA after `lba` in a different segment.
    fn segment_end(self, lba: u64) -> u64 {
        match self {
            Fate::Tear {
                first_lba,
                blocks,
                segments,
                ..
            } => {
                let next = self.segment_of(lba) as u128 + 1;
                first_lba + (next * blocks as u128).div_ceil(segments as u128) as u64
            }
            Fate::Persist | Fate::Lose => u64::MAX,
        }
    }
}

impl FaultShared {
    fn fate(&self, write_seq: u64, write: &UnflushedWrite) -> Fate {
        let u = unit(draw(self.seed, SALT_FATE, write_seq, 0));
        let survive = self.odds.survive.get();
        if u < survive {
            return Fate::Persist;
        }
        if write.blocks >= 2 && u < survive + self.odds.torn.get() {
            let segments = write.blocks.min(MAX_TEAR_SEGMENTS);
            let kept = draw(self.seed, SALT_TEAR_KEEP, write_seq, 0) % segments;
            let mut lost = draw(self.seed, SALT_TEAR_LOSE, write_seq, 0) % (segments - 1);
            if lost >= kept {
                lost += 1;
            }
            return Fate::Tear {
                first_lba: write.lba,
                blocks: write.blocks,
                segments,
                kept,
                lost,
            };
        }
        Fate::Lose
    }

    fn segment_persists(&self, write_seq: u64, fate: Fate, segment: u64) -> bool {
        match fate {
            Fate::Persist => true,
            Fate::Lose => false,
            Fate::Tear { kept, lost, .. } => {
                if segment == kept {
                    true
                } else if segment == lost {
                    false
                } else {
                    draw(self.seed, SALT_TEAR_BLOCK, write_seq, segment) & 1 == 1
                }
            }
        }
    }

    /// The parts of a torn write's cached extent that persist, merged into runs.
    fn torn_parts(&self, lba: u64, extent: &Extent, fate: Fate, out: &mut Vec<(u64, Extent)>) {
        let end = lba + extent.blocks;
        let mut at = lba;
        let mut run_start: Option<u64> = None;
        while at < end {
            let next = fate.segment_end(at).min(end);
            let persists = self.segment_persists(extent.write_seq, fate, fate.segment_of(at));
            match (persists, run_start) {
                (true, None) => run_start = Some(at),
                (false, Some(start)) => {
                    out.push((start, extent.slice(start - lba, at - start)));
                    run_start = None;
                }
                _ => {}
            }
            at = next;
        }
        if let Some(start) = run_start {
            out.push((start, extent.slice(start - lba, end - start)));
        }
    }

    pub(super) fn power_cut(&self) -> Result<PowerCutReport, NvmeError> {
        let _writeback = lock(&self.writeback);
        // Held until the persisting blocks are on the inner device, so every command that looks
        // at the cache — all of them with the cache on — waits for the durable state.
        let mut cache = lock(&self.cache);
        self.generation.fetch_add(1, Ordering::SeqCst);
        bump(&self.counters.power_cuts);
        let lost = std::mem::take(&mut *cache);

        let mut report = PowerCutReport::default();
        let mut fates = HashMap::with_capacity(lost.writes.len());
        let issued = lost
            .writes
            .iter()
            .map(|(&seq, write)| (seq, write))
            .chain(lost.older.iter().map(|(_, e, write)| (e.write_seq, write)));
        for (seq, write) in issued {
            if fates.contains_key(&seq) {
                continue;
            }
            let fate = self.fate(seq, write);
            match fate {
                Fate::Persist => report.writes_persisted += 1,
                Fate::Tear { .. } => report.writes_torn += 1,
                Fate::Lose => report.writes_lost += 1,
            }
            fates.insert(seq, fate);
        }
        // Every unflushed version, newest last: the media holds, per block, the newest version
        // whose write reached it (or the last flushed one if none did).
        let mut versions: Vec<(u64, &Extent)> = lost
            .older
            .iter()
            .map(|(lba, e, _)| (*lba, e))
            .chain(lost.extents.iter().map(|(&lba, e)| (lba, e)))
            .collect();
        versions.sort_by_key(|(_, e)| e.write_seq);
        let mut landed = Cache::default();
        for (lba, extent) in versions {
            let fate = fates.get(&extent.write_seq).copied().unwrap_or(Fate::Lose);
            let mut parts = Vec::new();
            match fate {
                Fate::Persist => parts.push((lba, extent.clone())),
                Fate::Lose => {}
                Fate::Tear { .. } => self.torn_parts(lba, extent, fate, &mut parts),
            }
            for (at, part) in parts {
                landed.insert_plain(at, part);
            }
        }
        let persisting = landed.snapshot();
        report.blocks_persisted = persisting.iter().map(|(_, e)| e.blocks).sum();
        report.blocks_lost = lost.blocks.saturating_sub(report.blocks_persisted);

        if !persisting.is_empty() {
            let depth = self.inner.info().max_queue_depth.min(WRITEBACK_SLOTS);
            let mut qp = self.inner.queue_pair(depth)?;
            let ops = build_runs(&persisting, self.limits);
            let mut stray = Vec::new();
            if let Some(failed) = write_back(&mut qp, ops, self.limits, &mut stray)? {
                return Err(failed.into_error());
            }
        }
        drop(cache);
        Ok(report)
    }
}
