//! Commits: the state lock's guard, writing a list of ops as one durable log transaction and
//! applying it, and growing the log as it fills.

use bluepoll_base::sync::lock;
use std::sync::MutexGuard;

use super::data::{map_range, push_extent, with_data, write_pieces};
use super::{Inner, LOG_RUNWAY, State};
use crate::error::{BlueFsError, Result};
use crate::format::{self, DeviceId, Extent, Fnode, LogOp, Transaction};

/// The state lock for code that may commit. When a commit asked for compaction (it cannot run
/// under the lock the committer holds), dropping the guard releases the lock and then compacts,
/// on the committing thread — there is no compaction thread.
pub(super) struct StateGuard<'a> {
    guard: Option<MutexGuard<'a, State>>,
    inner: &'a Inner,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().expect("held until drop")
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        let Some(mut st) = self.guard.take() else {
            return;
        };
        let wanted = std::mem::take(&mut st.compact_wanted);
        drop(st);
        if wanted && !std::thread::panicking() {
            // A failed compaction leaves the current log in use; the next commit asks again.
            let _ = self.inner.compact(self.inner.config.async_compaction);
        }
    }
}

impl Inner {
    pub(super) fn guard<'a>(&'a self, st: MutexGuard<'a, State>) -> StateGuard<'a> {
        StateGuard {
            guard: Some(st),
            inner: self,
        }
    }

    pub(super) fn lock_writable(&self) -> Result<StateGuard<'_>> {
        let st = lock(&self.state);
        match &st.read_only {
            Some(reason) => Err(BlueFsError::ReadOnly {
                reason: reason.clone(),
            }),
            None => Ok(self.guard(st)),
        }
    }

    /// Writes `ops` as one log transaction, makes it durable, applies it, then releases
    /// `released`. On failure nothing is applied and nothing released; a failure of the log
    /// write itself makes the filesystem read-only (what reached the disk is unknown).
    pub(super) fn commit(
        &self,
        st: &mut State,
        ops: Vec<LogOp>,
        released: Vec<Extent>,
    ) -> Result<()> {
        self.commit_inner(st, ops, released, &[], &[])
    }

    /// `commit`, also writing `also_write` together with the frame and flushing `also_flush`
    /// with the log (a checked append).
    pub(super) fn commit_with_writes(
        &self,
        st: &mut State,
        ops: Vec<LogOp>,
        also_flush: &[DeviceId],
        also_write: &[(Extent, &[u8])],
    ) -> Result<()> {
        self.commit_inner(st, ops, Vec::new(), also_flush, also_write)
    }

    fn commit_inner(
        &self,
        st: &mut State,
        ops: Vec<LogOp>,
        released: Vec<Extent>,
        also_flush: &[DeviceId],
        also_write: &[(Extent, &[u8])],
    ) -> Result<()> {
        if ops.is_empty() {
            self.release_now(st, &released);
            return Ok(());
        }
        let mut txn = Transaction {
            uuid: self.uuid,
            seq: st.log.next_seq,
            ops,
        };
        let mut frame = format::encode_transaction(&txn);
        let mut grown_by = Vec::new();
        if let Some((grown, extents)) = self.log_growth(st, frame.len() as u64)? {
            // The growth rides in this frame when the frame still fits the current allocation:
            // one write and one flush instead of two of each every `log_grow` bytes.
            txn.ops.insert(0, LogOp::FileUpdate(grown.clone()));
            let with_growth = format::encode_transaction(&txn);
            if st.log.position + with_growth.len() as u64 <= st.log.fnode.allocated() {
                frame = with_growth;
                grown_by = extents;
            } else {
                txn.ops.remove(0);
                self.commit_log_growth(st, grown, &extents)?;
                // The growth record took this sequence number: seal the frame with the next.
                txn.seq = st.log.next_seq;
                frame = format::encode_transaction(&txn);
            }
        }
        if let Err(e) = self.write_log_frame(st, &frame, also_flush, also_write) {
            self.release_now(st, &grown_by);
            return Err(e);
        }
        let ops = txn.ops;
        for op in &ops {
            if let Err(reason) = st.apply(op) {
                // The log now holds an op the live state refuses: replay would refuse it too.
                st.read_only = Some(format!("applying a committed op failed: {reason}"));
                return Err(BlueFsError::Corrupt { reason });
            }
        }
        if let Some(c) = st.compaction.as_mut() {
            c.delta.push(ops);
        }
        self.release_now(st, &released);
        self.maybe_compact(st);
        Ok(())
    }

    /// When a frame of `frame_len` bytes would not leave the runway free in the log, allocates
    /// more log space and returns the log's fnode with it (not yet committed) and the new extents.
    fn log_growth(&self, st: &mut State, frame_len: u64) -> Result<Option<(Fnode, Vec<Extent>)>> {
        if st.log.position + frame_len + LOG_RUNWAY <= st.log.fnode.allocated() {
            return Ok(None);
        }
        let want = (frame_len + LOG_RUNWAY).max(self.config.log_grow);
        let extents = self.allocate_log(st, want)?;
        let mut fnode = st.log.fnode.clone();
        for e in &extents {
            push_extent(&mut fnode.extents, *e);
        }
        Ok(Some((fnode, extents)))
    }

    /// Commits a log growth as a transaction of its own (it always fits in the runway), for a
    /// frame too large to carry it.
    fn commit_log_growth(&self, st: &mut State, grown: Fnode, extents: &[Extent]) -> Result<()> {
        let grow = Transaction {
            uuid: self.uuid,
            seq: st.log.next_seq,
            ops: vec![LogOp::FileUpdate(grown)],
        };
        if let Err(e) = self.write_log_frame(st, &format::encode_transaction(&grow), &[], &[]) {
            self.release_now(st, extents);
            return Err(e);
        }
        for op in &grow.ops {
            let _ = st.apply(op);
        }
        Ok(())
    }

    /// Writes and flushes one encoded frame (sealed with `st.log.next_seq`); `also_write` goes
    /// out with it and `also_flush` under the same flush (the data of a checked append).
    fn write_log_frame(
        &self,
        st: &mut State,
        frame: &[u8],
        also_flush: &[DeviceId],
        also_write: &[(Extent, &[u8])],
    ) -> Result<()> {
        let len = frame.len() as u64;
        if st.log.position + len > st.log.fnode.allocated() {
            return Err(BlueFsError::NoSpace {
                what: "a log transaction".into(),
                detail: format!(
                    "{len} bytes at log offset {} of {}",
                    st.log.position,
                    st.log.fnode.allocated()
                ),
            });
        }
        let devices = &self.devices;
        let result = map_range(&st.log.fnode.extents, st.log.position, len)
            .ok_or_else(|| BlueFsError::Corrupt {
                reason: format!("log frame at {} past the log's allocation", st.log.position),
            })
            .and_then(|pieces| {
                let mut writes: Vec<(Extent, &[u8])> = also_write.to_vec();
                writes.extend(with_data(&pieces, frame));
                write_pieces(devices, &writes)
            })
            .and_then(|touched| {
                let mut flush: Vec<DeviceId> = also_flush.to_vec();
                flush.extend(touched.into_iter().filter(|id| !also_flush.contains(id)));
                for id in flush {
                    self.device(id)?.flush()?;
                }
                Ok(())
            });
        if let Err(e) = result {
            st.read_only = Some(format!("a log write failed: {e}"));
            return Err(e);
        }
        st.log.position += len;
        st.log.next_seq += 1;
        Ok(())
    }
}
