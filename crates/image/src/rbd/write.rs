//! The write path: synchronous writes, writes queued on the store (answered when durable, or
//! when accepted for a volatile write cache), their non-blocking forms for a store reactor,
//! discard and write-zeroes, and flush.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::map::write_map_blocks;
use super::{Image, MAP_OBJECT, data_object};
use crate::error::ImageError;
use crate::lock::{FlushWaiter, RefusedWrite, StateChange};
use crate::object_map::{ObjectMap, ObjectState};
use crate::snapshot::preserved_object;
use bluepoll_store::{StoreError, Transaction};

/// When a write is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteAck {
    /// Once durable.
    Durable,
    /// Once the store has taken it (a volatile write cache; a flush makes it durable).
    Accepted,
}

impl Image {
    /// Before a request changes `offset..offset + len`: the lock (taken over from its owner if
    /// need be), the outcome of queued writes that changed the map's word on its objects, and
    /// the map's standing after a failed one.
    fn prepare_change(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.serve_lock_requests()?;
        self.acquire_lock()?;
        let objects: Vec<u64> = self.pieces(offset, len).iter().map(|p| p.0).collect();
        self.transitions.wait_settled(&objects);
        self.settle_suspicion()
    }

    /// Whether `write_async` of `offset..offset + len` runs without blocking, as on a store
    /// reactor: this client owns the lock and nobody asks for it, the map is trusted and says
    /// what each object needs (no store lookups, no copy-up), no earlier write's outcome is
    /// awaited, and the writes in flight are few (past that, a blocking caller waits on the
    /// store's throttle).
    pub fn writes_without_blocking(&self, offset: u64, len: u64) -> bool {
        const MAX_WRITES_IN_FLIGHT: u64 = 256;
        let lock_ready = match &self.lock {
            None => true,
            Some(cell) => self.owner && !cell.has_request(),
        };
        let Some(map) = self.object_map() else {
            return false;
        };
        let objects = self.objects_of(offset, len);
        lock_ready
            && self.parent.is_none()
            && !self.map_suspect.load(Ordering::Relaxed)
            && !self.map_undo.pending()
            && self.in_flight.count() < MAX_WRITES_IN_FLIGHT
            && objects
                .clone()
                .all(|index| map.get(index) != ObjectState::Pending)
            && !self.transitions.any(objects)
    }

    /// The transaction of a write, and the map after it.
    fn write_transaction(
        &mut self,
        offset: u64,
        data: &[u8],
    ) -> Result<(Transaction, Option<ObjectMap>), ImageError> {
        let mut t = Transaction::new(&self.coll);
        let pieces = self.pieces(offset, data.len() as u64);
        // Most writes land on objects the map already says were written since the last
        // snapshot: the map then stays as it is and is not copied (it can be megabytes).
        let current = self.map.take();
        let mut changed = current
            .as_ref()
            .filter(|m| {
                m.has_dirty()
                    || pieces
                        .iter()
                        .any(|&(index, ..)| m.get(index) != ObjectState::Exists)
            })
            .cloned();
        let mut build = || -> Result<(), ImageError> {
            for &(index, within, n, at) in &pieces {
                self.before_change(&mut t, changed.as_ref().or(current.as_ref()), index)?;
                t.write(
                    &data_object(index),
                    within,
                    data[at..at + n as usize].to_vec(),
                );
                if let Some(m) = changed.as_mut() {
                    m.set(index, ObjectState::Exists)?;
                }
            }
            Ok(())
        };
        let built = build();
        self.map = current;
        built?;
        Ok((t, changed))
    }

    /// Queues a write; `done` runs on a store reactor once it is durable (it must not block),
    /// or with the error that kept it from being stored: `NoSpace` (nothing of it applied,
    /// the map as before) when the store cannot hold it.
    pub fn write_async(
        &mut self,
        offset: u64,
        data: &[u8],
        done: impl FnOnce(Result<(), ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        self.check_range(offset, data.len() as u64)?;
        self.prepare_change(offset, data.len() as u64)?;
        self.queue_write(offset, data, WriteAck::Durable, done)
    }

    /// Queues a write for a volatile write cache (NBD without FUA): `accepted` runs on a store
    /// reactor once the store has taken it — its space allocated, every later read seeing it —
    /// or with the error that refused it (`NoSpace`, nothing applied). It is durable once a
    /// later [`flush`](Self::flush) succeeds. Should it fail after it was accepted (only a
    /// device or metadata failure, which stops the store), every flush of this open image
    /// fails from then on.
    pub fn write_cached(
        &mut self,
        offset: u64,
        data: &[u8],
        accepted: impl FnOnce(Result<(), ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        self.check_range(offset, data.len() as u64)?;
        self.prepare_change(offset, data.len() as u64)?;
        self.queue_write(offset, data, WriteAck::Accepted, accepted)
    }

    /// `write_async` for a caller that must not block, such as a store reactor: it serves no
    /// lock request (handing the lock over waits for the writes in flight, which the reactor
    /// itself finishes) and refuses (WouldBlock) unless [`Self::writes_without_blocking`] holds.
    /// Callbacks of this image's writes run on the reactor, so between that check and this call,
    /// under the same hold of the image, nothing it checked can change.
    pub fn write_async_now(
        &mut self,
        offset: u64,
        data: &[u8],
        done: impl FnOnce(Result<(), ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        self.check_write_now(offset, data.len() as u64)?;
        self.queue_write(offset, data, WriteAck::Durable, done)
    }

    /// [`write_cached`](Self::write_cached) under the rules of
    /// [`write_async_now`](Self::write_async_now).
    pub fn write_cached_now(
        &mut self,
        offset: u64,
        data: &[u8],
        accepted: impl FnOnce(Result<(), ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        self.check_write_now(offset, data.len() as u64)?;
        self.queue_write(offset, data, WriteAck::Accepted, accepted)
    }

    fn check_write_now(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check_range(offset, len)?;
        if !self.writes_without_blocking(offset, len) {
            return Err(StoreError::WouldBlock {
                call: "write_async_now",
            }
            .into());
        }
        Ok(())
    }

    fn queue_write(
        &mut self,
        offset: u64,
        data: &[u8],
        ack: WriteAck,
        answer: impl FnOnce(Result<(), ImageError>) + Send + 'static,
    ) -> Result<(), ImageError> {
        if let Some(why) = self.in_flight.lost_reason() {
            return Err(ImageError::WritesLost {
                name: self.name.clone(),
                reason: why,
            });
        }
        let (mut t, mut map) = self.write_transaction(offset, data)?;
        let mut blocks_written = Vec::new();
        if let Some(m) = map.as_mut() {
            blocks_written = write_map_blocks(&mut t, m, MAP_OBJECT);
            if !blocks_written.is_empty() {
                self.stats.map_updates += 1;
                self.stats.map_blocks_written += blocks_written.len() as u64;
            }
        }
        // The objects whose state in the map this write changes: until it finishes, later
        // changes of them wait for its outcome (`prepare_change`); if the store refuses it,
        // their states are put back.
        let changing: Vec<StateChange> = match (&map, self.map.as_ref()) {
            (Some(after), Some(before)) => self
                .objects_of(offset, data.len() as u64)
                .filter(|&i| before.get(i) != after.get(i))
                .map(|i| (i, before.get(i), after.get(i)))
                .collect(),
            _ => Vec::new(),
        };
        let settled: Vec<u64> = changing.iter().map(|c| c.0).collect();
        let suspect = Arc::clone(&self.map_suspect);
        let in_flight = Arc::clone(&self.in_flight);
        let transitions = Arc::clone(&self.transitions);
        let undo = Arc::clone(&self.map_undo);
        in_flight.start();
        transitions.begin(&settled);
        let begun = settled.clone();
        // PREPARE's outcome, read by the commit callback (both run on the shard's reactor,
        // this one first).
        let prepared = Arc::new(AtomicBool::new(false));
        let prepared_seen = Arc::clone(&prepared);
        let (accepted, done) = match ack {
            WriteAck::Accepted => (Some(answer), None),
            WriteAck::Durable => (None, Some(answer)),
        };
        let queued = self.store.queue_transaction_staged(
            t,
            move |r| {
                match &r {
                    Ok(()) => prepared.store(true, Ordering::Relaxed),
                    Err(_) => undo.push(RefusedWrite {
                        states: changing,
                        blocks: blocks_written,
                    }),
                }
                if let Some(accepted) = accepted {
                    accepted(r.map_err(ImageError::from));
                }
            },
            move |r| {
                // A write refused at PREPARE never happened (its caller is told, on the write
                // itself), so no flush covers it. One that failed after PREPARE was applied in
                // memory and then lost with the store: the map cannot be trusted, and no flush
                // of this image may succeed again.
                let lost = match &r {
                    Err(e) if prepared_seen.load(Ordering::Relaxed) => {
                        suspect.store(true, Ordering::Relaxed);
                        in_flight.lost(format!("a write failed after the store took it: {e}"));
                        true
                    }
                    _ => false,
                };
                transitions.end(&settled);
                // A caller's callback that panics must not leave the write counted in flight
                // (every later flush would wait for it forever): finish, then let the store
                // report the panic.
                let answered = done.map(|done| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        done(r.map_err(ImageError::from))
                    }))
                });
                in_flight.finish(!lost);
                if let Some(Err(panic)) = answered {
                    std::panic::resume_unwind(panic);
                }
            },
        );
        if let Err(e) = queued {
            self.transitions.end(&begun);
            // Not queued: the map stays as it was, its own changed blocks still to be written.
            self.in_flight.finish(true);
            return Err(e.into());
        }
        if map.is_some() {
            self.map = map;
        }
        Ok(())
    }

    /// Writes `data` at `offset` and returns once it is durable (one store transaction with the
    /// map blocks it changes), taking the lock first if another client owns it.
    /// [`ImageError::Beyond`] when the range reaches past the image's end,
    /// [`ImageError::LockBusy`] when the owner did not hand the lock over in time.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        self.check_range(offset, data.len() as u64)?;
        self.prepare_change(offset, data.len() as u64)?;
        let (t, map) = self.write_transaction(offset, data)?;
        self.commit(t, map)
    }

    /// Discards `offset..offset + len`: whole objects are removed (and read as zeros from the
    /// map), parts of objects zeroed. In a clone, where the parent shows through, an object is
    /// emptied rather than removed (so it hides the parent).
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check_range(offset, len)?;
        self.prepare_change(offset, len)?;
        let object_size = self.info.object_size();
        let mut t = Transaction::new(&self.coll);
        let mut map = self.map.clone();
        for (index, within, n, _) in self.pieces(offset, len) {
            // The object's bytes inside the image (the last one may be short).
            let object_end = (self.info.size - index * object_size).min(object_size);
            let head = data_object(index);
            if within == 0 && n >= object_end {
                let exists = self.exists(map.as_ref(), index)?;
                let preserve = exists && self.needs_preserve(map.as_ref(), index)?;
                if self.parent_covers(index) {
                    if preserve {
                        let latest = self.snaps.last().expect("preserve needs one").id;
                        t.clone_object(&head, &preserved_object(index, latest));
                        self.stats.preserved += 1;
                    } else if !exists {
                        t.touch(&head);
                    }
                    t.truncate(&head, 0);
                    if let Some(m) = map.as_mut() {
                        m.set(index, ObjectState::Exists)?;
                    }
                } else if exists {
                    self.remove_object(&mut t, index, preserve);
                    if let Some(m) = map.as_mut() {
                        m.set(index, ObjectState::Nonexistent)?;
                    }
                }
            } else if self.before_change(&mut t, map.as_ref(), index)? {
                t.zero(&head, within, n);
                if let Some(m) = map.as_mut() {
                    m.set(index, ObjectState::Exists)?;
                }
            }
        }
        self.commit(t, map)
    }

    /// Zeroes `offset..offset + len` (the same as a discard here: discarded space reads zeros).
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.discard(offset, len)
    }

    /// Waits until every write queued so far is durable; an error if a write the store had
    /// taken was lost (then every later flush fails too). A write the store refused (ENOSPC
    /// at PREPARE, nothing of it applied) was reported to its own callback and is not covered.
    pub fn flush(&mut self) -> Result<(), ImageError> {
        self.write_back_map()?;
        let waiter = self.flush_waiter();
        if waiter.wait() {
            Ok(())
        } else if let Some(reason) = waiter.lost_reason() {
            Err(ImageError::WritesLost {
                name: self.name.clone(),
                reason,
            })
        } else {
            Err(ImageError::WriteFailed {
                name: self.name.clone(),
            })
        }
    }

    /// A handle that waits for the queued writes without holding the image.
    pub fn flush_waiter(&self) -> FlushWaiter {
        FlushWaiter {
            in_flight: Arc::clone(&self.in_flight),
        }
    }
}
