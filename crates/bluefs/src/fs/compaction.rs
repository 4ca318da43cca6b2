//! Log compaction: the log rewritten from a snapshot of the live metadata (with or without
//! stopping commits meanwhile) and the superblock switched to it.

use bluepoll_base::id::now_ns;
use bluepoll_base::sync::lock;
use std::sync::atomic::Ordering;

use super::data::{place_log_only, push_extent, write_durable};
use super::{Compaction, Inner, LOG_INO, LOG_RUNWAY, LogOnlyBytes, LogWriter, State};
use crate::error::{BlueFsError, Result};
use crate::format::{
    self, BLOCK_SIZE, DeviceId, Fnode, LogOp, SUPERBLOCK_OFFSETS, Superblock, Transaction,
};

impl Inner {
    /// Writes the log-only bytes of every file not open for writing to its extents (the
    /// snapshot carried the others' into the new log), then flushes every device. Removed
    /// files' bytes stay in memory for their last readers.
    fn place_all_log_only(&self, st: &mut State) -> Result<()> {
        for f in st.files.values_mut() {
            if !f.writer && !f.log_only.is_empty() {
                place_log_only(&self.devices, f)?;
            }
        }
        for device in self.devices.iter().flatten() {
            device.flush()?;
        }
        Ok(())
    }

    /// Asks for a compaction (run when the committer's guard drops) when the log is large and
    /// mostly history, or when it is eating into its reserve because the devices are full.
    pub(super) fn maybe_compact(&self, st: &mut State) {
        if st.compaction.is_some() {
            return;
        }
        let position = st.log.position;
        let large = position >= self.config.compact_min_bytes
            && position >= live_metadata_estimate(st).saturating_mul(self.config.compact_ratio);
        let log_devices_free: u64 = st.allocators.iter().flatten().map(|a| a.free_bytes()).sum();
        let squeezed = log_devices_free < self.config.log_reserve / 2
            && position > 2 * live_metadata_estimate(st) + LOG_RUNWAY;
        if large || squeezed {
            st.compact_wanted = true;
        }
    }

    /// Rewrites the log from a snapshot of live metadata and switches the superblock to it.
    pub(super) fn compact(&self, concurrent: bool) -> Result<()> {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return Ok(()); // someone else is at it
        }
        let result = self.compact_inner(concurrent);
        self.compacting.store(false, Ordering::Release);
        result
    }

    fn compact_inner(&self, concurrent: bool) -> Result<()> {
        let mut st = self.lock_writable()?;
        let snapshot = snapshot_ops(&st);
        let first_seq = st.log.next_seq;
        let frame = format::encode_transaction(&Transaction {
            uuid: self.uuid,
            seq: first_seq,
            ops: snapshot,
        });
        let want = frame.len() as u64 + LOG_RUNWAY + self.config.log_grow;
        let extents = self.allocate_log(&mut st, want)?;
        let mut new_log = Fnode {
            ino: LOG_INO,
            size: 0,
            mtime_ns: now_ns(),
            extents,
        };
        let mut held = Some(st);
        if concurrent && let Some(mut st) = held.take() {
            st.compaction = Some(Compaction { delta: Vec::new() });
        }
        // The expensive part: write the snapshot (without the lock when concurrent).
        let written = write_durable(&self.devices, &new_log.extents, 0, &frame);
        let mut st = match held {
            Some(st) => st,
            None => self.guard(lock(&self.state)),
        };
        let delta = st.compaction.take().map(|c| c.delta).unwrap_or_default();
        if let Err(e) = written {
            self.release_now(&mut st, &new_log.extents);
            return Err(compaction_io_failed(&mut st, e));
        }
        if st.read_only.is_some() {
            self.release_now(&mut st, &new_log.extents);
            return Err(BlueFsError::ReadOnly {
                reason: st.read_only.clone().unwrap_or_default(),
            });
        }
        // Ops committed to the old log meanwhile go onto the new one, in order (minus the old
        // log's own growth records).
        let mut position = frame.len() as u64;
        let mut seq = first_seq + 1;
        let mut tail = Vec::new();
        for ops in delta {
            let ops: Vec<LogOp> = ops
                .into_iter()
                .filter(|op| !matches!(op, LogOp::FileUpdate(f) if f.ino == LOG_INO))
                .collect();
            if ops.is_empty() {
                continue;
            }
            let bytes = format::encode_transaction(&Transaction {
                uuid: self.uuid,
                seq,
                ops,
            });
            seq += 1;
            tail.extend_from_slice(&bytes);
        }
        // What others committed meanwhile may not fit: the new log is not referenced by
        // anything durable yet, so it can simply be given more space.
        let needed = position + tail.len() as u64 + LOG_RUNWAY;
        if needed > new_log.allocated() {
            let more = (needed - new_log.allocated()).max(self.config.log_grow);
            match self.allocate_log(&mut st, more) {
                Ok(extents) => {
                    for e in extents {
                        push_extent(&mut new_log.extents, e);
                    }
                }
                Err(e) => {
                    self.release_now(&mut st, &new_log.extents);
                    return Err(e);
                }
            }
        }
        if !tail.is_empty() {
            if let Err(e) = write_durable(&self.devices, &new_log.extents, position, &tail) {
                self.release_now(&mut st, &new_log.extents);
                return Err(compaction_io_failed(&mut st, e));
            }
            position += tail.len() as u64;
        }
        // The old log is about to stop counting: bytes only it holds go to their files (those
        // of files open for writing are in the new log), and every device is flushed (bytes
        // written out earlier without a flush, at a writer's close, relied on the old log too).
        if let Err(e) = self.place_all_log_only(&mut st) {
            self.release_now(&mut st, &new_log.extents);
            return Err(compaction_io_failed(&mut st, e));
        }
        let superblock = Superblock {
            uuid: self.uuid,
            generation: st.superblock_generation + 1,
            block_size: BLOCK_SIZE as u32,
            alloc_units: self.config.alloc_units,
            log_fnode: new_log.clone(),
            log_first_seq: first_seq,
        };
        // Alternate slots (mkfs wrote generation 1 to the first), so the previous superblock
        // survives a torn write of this one.
        let slot = SUPERBLOCK_OFFSETS[((superblock.generation - 1) % 2) as usize];
        let db = self.device(DeviceId::Db)?;
        let encoded = format::encode_superblock(&superblock)?;
        if let Err(e) = db.write(slot, &encoded).and_then(|()| db.flush()) {
            // Unknown whether the new superblock landed: both logs stay valid for what they
            // hold, but the next commit must not go to the old one if the new one won.
            st.read_only = Some(format!("a superblock write failed: {e}"));
            return Err(e);
        }
        // The other slot now describes a log about to be freed: invalidate it, so a damaged
        // current superblock fails the mount instead of silently rolling back to it. (The next
        // switch writes that slot while this one stays valid, so a torn write still has a
        // fallback.)
        let stale = SUPERBLOCK_OFFSETS[(superblock.generation % 2) as usize];
        if let Err(e) = db
            .write(stale, &vec![0u8; BLOCK_SIZE as usize])
            .and_then(|()| db.flush())
        {
            st.read_only = Some(format!("invalidating the old superblock failed: {e}"));
            return Err(e);
        }
        let old_log = std::mem::replace(
            &mut st.log,
            LogWriter {
                fnode: new_log,
                position,
                next_seq: seq,
            },
        );
        st.superblock_generation = superblock.generation;
        st.compactions += 1;
        self.release_now(&mut st, &old_log.fnode.extents);
        Ok(())
    }
}

/// A write or flush of compaction failed. Bytes written out earlier without a flush (log-only
/// bytes placed at a writer's close) rely on the next flush succeeding; after a failed one,
/// no later flush proves they landed, so the filesystem stops taking changes.
fn compaction_io_failed(st: &mut State, e: BlueFsError) -> BlueFsError {
    if !e.is_no_space() && st.read_only.is_none() {
        st.read_only = Some(format!("an I/O of log compaction failed: {e}"));
    }
    e
}

/// About how many log bytes the live metadata needs.
fn live_metadata_estimate(st: &State) -> u64 {
    // Log-only bytes of open files are copied into the new log, so they count as live.
    let files: u64 = st
        .files
        .values()
        .map(|f| 64 + 17 * f.fnode.extents.len() as u64 + f.log_only_len())
        .sum();
    let names: u64 = st
        .dirs
        .iter()
        .map(|(d, e)| {
            d.len() as u64
                + e.keys()
                    .map(|n| 24 + n.len() as u64 + d.len() as u64)
                    .sum::<u64>()
        })
        .sum();
    (files + names).max(BLOCK_SIZE)
}

/// The ops that rebuild the live metadata from nothing.
fn snapshot_ops(st: &State) -> Vec<LogOp> {
    let mut ops = Vec::new();
    for dir in st.dirs.keys() {
        ops.push(LogOp::DirCreate { name: dir.clone() });
    }
    let mut inos: Vec<&u64> = st.files.keys().collect();
    inos.sort();
    for ino in inos {
        let f = &st.files[ino];
        ops.push(LogOp::FileUpdate(f.fnode.clone()));
        // A file open for writing keeps its log-only bytes in the new log: its writer may be
        // writing that very block outside the lock, so compaction must not write it too.
        if f.writer && !f.log_only.is_empty() {
            for r in &f.log_only {
                ops.push(LogOp::FileAppendInline {
                    ino: *ino,
                    size: r.end(),
                    mtime_ns: f.fnode.mtime_ns,
                    appended: Vec::new(),
                    data_from: r.from,
                    data: r.bytes.clone(),
                });
            }
            if f.log_only.last().map(LogOnlyBytes::end) != Some(f.fnode.size) {
                ops.push(LogOp::FileUpdate(f.fnode.clone()));
            }
        }
    }
    for (dir, entries) in &st.dirs {
        for (name, ino) in entries {
            ops.push(LogOp::DirLink {
                dir: dir.clone(),
                name: name.clone(),
                ino: *ino,
            });
        }
    }
    ops
}
