//! The volatile write cache (`cache=on`): cached extents, the unflushed writes they came from,
//! and the older versions of their blocks a power cut may still leave.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::command::Status;

/// What a cached block reads as.
#[derive(Clone)]
pub(super) enum Content {
    /// Block `i` of the extent is `bytes[(first + i) * block_size ..][.. block_size]`; slicing an
    /// extent shares the bytes instead of copying them.
    Data {
        bytes: Arc<[u8]>,
        first: u64,
    },
    Zeroes,
    Trimmed,
}

/// A run of cached blocks written by one command.
#[derive(Clone)]
pub(super) struct Extent {
    pub(super) blocks: u64,
    pub(super) write_seq: u64,
    pub(super) content: Content,
}

impl Extent {
    pub(super) fn slice(&self, skip: u64, blocks: u64) -> Extent {
        let content = match &self.content {
            Content::Data { bytes, first } => Content::Data {
                bytes: Arc::clone(bytes),
                first: first + skip,
            },
            other => other.clone(),
        };
        Extent {
            blocks,
            write_seq: self.write_seq,
            content,
        }
    }
}

/// A write that still owns blocks in the cache, as it was issued.
pub(super) struct UnflushedWrite {
    pub(super) lba: u64,
    pub(super) blocks: u64,
    pub(super) cached_blocks: u64,
}

/// The volatile write cache: non-overlapping extents keyed by first LBA, so a huge WriteZeroes or
/// Trim costs one entry rather than one per block.
#[derive(Default)]
pub(super) struct Cache {
    pub(super) extents: BTreeMap<u64, Extent>,
    /// By write sequence number.
    pub(super) writes: BTreeMap<u64, UnflushedWrite>,
    pub(super) blocks: u64,
    /// Unflushed versions a newer write replaced, oldest first, each with the write it came
    /// from (as issued: its fate at a power cut is that write's). A drive may have written an
    /// older version back before the newer one arrived, so a cut can leave it.
    pub(super) older: VecDeque<(u64, Extent, UnflushedWrite)>,
    older_blocks: u64,
}

/// Blocks of replaced unflushed versions the cache keeps at most; past this the oldest are
/// forgotten (a cut then reverts their blocks to the last flushed version instead).
const MAX_OLDER_BLOCKS: u64 = 1 << 16;

impl Cache {
    /// The cached parts of `first..end`, clipped to it, in LBA order.
    pub(super) fn overlapping(&self, first: u64, end: u64) -> Vec<(u64, Extent)> {
        let mut found = Vec::new();
        if first >= end {
            return found;
        }
        if let Some((&start, extent)) = self.extents.range(..first).next_back() {
            let extent_end = start + extent.blocks;
            if extent_end > first {
                found.push((
                    first,
                    extent.slice(first - start, extent_end.min(end) - first),
                ));
            }
        }
        for (&start, extent) in self.extents.range(first..end) {
            let clipped_end = (start + extent.blocks).min(end);
            found.push((start, extent.slice(0, clipped_end - start)));
        }
        found
    }

    /// Removes `first..end` from the cache, keeping the parts of extents outside it.
    pub(super) fn punch(&mut self, first: u64, end: u64) {
        if first >= end {
            return;
        }
        let mut starts = Vec::new();
        if let Some((&start, extent)) = self.extents.range(..first).next_back()
            && start + extent.blocks > first
        {
            starts.push(start);
        }
        starts.extend(self.extents.range(first..end).map(|(&start, _)| start));
        for start in starts {
            let Some(extent) = self.extents.remove(&start) else {
                continue;
            };
            let extent_end = start + extent.blocks;
            if start < first {
                self.extents.insert(start, extent.slice(0, first - start));
            }
            if extent_end > end {
                self.extents
                    .insert(end, extent.slice(end - start, extent_end - end));
            }
            let removed = extent_end.min(end) - start.max(first);
            self.forget(extent.write_seq, removed);
        }
    }

    fn forget(&mut self, write_seq: u64, blocks: u64) {
        self.blocks = self.blocks.saturating_sub(blocks);
        if let Some(write) = self.writes.get_mut(&write_seq) {
            write.cached_blocks = write.cached_blocks.saturating_sub(blocks);
            if write.cached_blocks == 0 {
                self.writes.remove(&write_seq);
            }
        }
    }

    pub(super) fn insert(&mut self, lba: u64, extent: Extent) {
        // What the new write replaces stays as an older unflushed version.
        for (start, replaced) in self.overlapping(lba, lba + extent.blocks) {
            let Some(write) = self.writes.get(&replaced.write_seq) else {
                continue;
            };
            let issued = UnflushedWrite {
                lba: write.lba,
                blocks: write.blocks,
                cached_blocks: 0,
            };
            self.older_blocks += replaced.blocks;
            self.older.push_back((start, replaced, issued));
        }
        while self.older_blocks > MAX_OLDER_BLOCKS {
            let Some((_, dropped, _)) = self.older.pop_front() else {
                break;
            };
            self.older_blocks -= dropped.blocks;
        }
        self.punch(lba, lba + extent.blocks);
        self.blocks += extent.blocks;
        self.writes.insert(
            extent.write_seq,
            UnflushedWrite {
                lba,
                blocks: extent.blocks,
                cached_blocks: extent.blocks,
            },
        );
        self.extents.insert(lba, extent);
    }

    /// `insert` without keeping what it replaces (building the media's state at a cut).
    pub(super) fn insert_plain(&mut self, lba: u64, extent: Extent) {
        self.punch(lba, lba + extent.blocks);
        self.blocks += extent.blocks;
        self.extents.insert(lba, extent);
    }

    /// Drops the blocks of a written-back extent that no later write replaced.
    pub(super) fn retire(&mut self, lba: u64, written_back: &Extent) {
        for (start, current) in self.overlapping(lba, lba + written_back.blocks) {
            if current.write_seq == written_back.write_seq {
                self.punch(start, start + current.blocks);
            }
        }
    }

    pub(super) fn snapshot(&self) -> Vec<(u64, Extent)> {
        self.extents
            .iter()
            .map(|(&lba, extent)| (lba, extent.clone()))
            .collect()
    }

    /// After a write-back of a snapshot taken when `older_then` older versions were kept: those
    /// are behind a durable newer version now, so no cut can bring them back.
    pub(super) fn forget_older(&mut self, older_then: usize) {
        for (_, extent, _) in self.older.drain(..older_then.min(self.older.len())) {
            self.older_blocks -= extent.blocks;
        }
    }
}

/// Copies cached blocks over a read's data window.
pub(super) fn apply_overlay(
    window: &mut [u8],
    read_lba: u64,
    block_size: usize,
    overlay: &[(u64, Extent)],
) -> Result<(), Status> {
    for (lba, extent) in overlay {
        let at = (lba - read_lba) as usize * block_size;
        let len = extent.blocks as usize * block_size;
        let dst = window.get_mut(at..at + len).ok_or(Status::INTERNAL_ERROR)?;
        match &extent.content {
            Content::Data { bytes, first } => {
                let start = *first as usize * block_size;
                let src = bytes
                    .get(start..start + len)
                    .ok_or(Status::INTERNAL_ERROR)?;
                dst.copy_from_slice(src);
            }
            Content::Zeroes | Content::Trimmed => dst.fill(0),
        }
    }
    Ok(())
}
