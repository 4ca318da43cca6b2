//! The exclusive lock as an image's client sees it: taking it (asking the owner to hand it
//! over), handing it back, serving other clients' requests as the owner, and running a
//! maintenance operation here or by the owner.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::Image;
use crate::error::ImageError;
use crate::lock::{Acquire, LockEvent, LockRequest, LockWaiter, MaintenanceOp, OpUpdate};

/// How long a client waits, by default, for the owner to hand the lock over, or to start on an
/// operation it was asked to run.
pub(super) const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

impl Image {
    /// This client's id, as lock events name it.
    pub fn client_id(&self) -> u64 {
        self.client
    }

    /// Whether this client owns the exclusive lock (always false without the feature).
    pub fn is_lock_owner(&self) -> bool {
        self.owner
    }

    /// The client that holds the image's lock, if any.
    pub fn lock_owner(&self) -> Option<u64> {
        self.lock.as_ref().and_then(|c| c.owner())
    }

    /// How long to wait for the owner to hand the lock over or to start on a request.
    pub fn set_lock_timeout(&mut self, timeout: Duration) {
        self.lock_timeout = timeout;
    }

    /// Lock acquired/released notifications and requests, for every client of the image.
    pub fn watch(&self) -> Option<Receiver<LockEvent>> {
        self.lock.as_ref().map(|c| c.watch())
    }

    /// A handle a thread can wait on for requests this client, as the owner, should serve.
    pub fn lock_waiter(&self) -> Option<LockWaiter> {
        self.lock.as_ref().map(|c| LockWaiter {
            cell: Arc::clone(c),
        })
    }

    /// Takes the lock (asking its owner to hand it over, and waiting up to the lock timeout),
    /// then reloads what the previous owner changed. Images without the feature need none.
    pub fn acquire_lock(&mut self) -> Result<(), ImageError> {
        let Some(cell) = self.lock.clone() else {
            return Ok(());
        };
        if self.owner {
            return Ok(());
        }
        match cell.try_acquire(self.client) {
            Acquire::Acquired => {}
            Acquire::HeldBy(_) => cell
                .acquire_from_owner(self.client, Instant::now() + self.lock_timeout)
                .map_err(|owner| ImageError::LockBusy {
                    name: self.name.clone(),
                    owner,
                })?,
        }
        self.owner = true;
        if let Err(e) = self.refresh() {
            self.owner = false;
            cell.release(self.client);
            return Err(e);
        }
        Ok(())
    }

    /// Hands the lock back once every queued write has been answered.
    pub fn release_lock(&mut self) -> Result<(), ImageError> {
        let Some(cell) = self.lock.clone() else {
            return Ok(());
        };
        if !self.owner {
            return Ok(());
        }
        self.in_flight.wait_drained();
        let settled = self.settle_suspicion();
        self.owner = false;
        cell.release(self.client);
        settled
    }

    /// As the owner: answers what other clients asked (hand the lock over, run an operation);
    /// how many requests were served. A non-owner has nothing to serve.
    pub fn serve_lock_requests(&mut self) -> Result<usize, ImageError> {
        let Some(cell) = self.lock.clone() else {
            return Ok(0);
        };
        let mut served = 0;
        while self.owner {
            let Some(request) = cell.next_request(self.client) else {
                break;
            };
            served += 1;
            match request {
                LockRequest::Release => self.release_lock()?,
                LockRequest::Run { op, updates, .. } => {
                    let mut report = |done, total| {
                        let _ = updates.send(OpUpdate::Progress { done, total });
                    };
                    let result = self.run_local(&op, &mut report);
                    let _ = updates.send(OpUpdate::Finished(result.map_err(|e| e.to_string())));
                }
            }
        }
        Ok(served)
    }

    /// Runs a maintenance operation: here if this client owns the lock or nobody does (it
    /// then takes it), else by the owner, reporting its progress here.
    pub(super) fn run_maintenance(
        &mut self,
        op: MaintenanceOp,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        let Some(cell) = self.lock.clone() else {
            return self.run_local(&op, progress);
        };
        loop {
            if self.owner {
                return self.run_local(&op, progress);
            }
            let owner = match cell.try_acquire(self.client) {
                Acquire::Acquired => {
                    self.owner = true;
                    if let Err(e) = self.refresh() {
                        self.owner = false;
                        cell.release(self.client);
                        return Err(e);
                    }
                    continue;
                }
                Acquire::HeldBy(owner) => owner,
            };
            let (ticket, updates) = cell.ask_owner(self.client, op.clone());
            let mut heard = Instant::now();
            let answer = loop {
                match updates.recv_timeout(Duration::from_millis(20)) {
                    Ok(OpUpdate::Progress { done, total }) => {
                        heard = Instant::now();
                        progress(done, total);
                    }
                    Ok(OpUpdate::Finished(result)) => break Some(result),
                    Err(RecvTimeoutError::Disconnected) => break None,
                    Err(RecvTimeoutError::Timeout) => {
                        // The owner left without taking it: ask again (or take the lock).
                        if cell.owner() != Some(owner) && cell.withdraw(ticket) {
                            break None;
                        }
                        if heard.elapsed() > self.lock_timeout && cell.withdraw(ticket) {
                            return Err(ImageError::LockBusy {
                                name: self.name.clone(),
                                owner,
                            });
                        }
                    }
                }
            };
            if let Some(result) = answer {
                self.refresh()?;
                return result.map_err(|reason| ImageError::Proxied {
                    op: op.name(),
                    owner,
                    reason,
                });
            }
        }
    }

    fn run_local(
        &mut self,
        op: &MaintenanceOp,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), ImageError> {
        // Queued writes first: every operation below reads the state they leave.
        self.in_flight.wait_drained();
        self.settle_suspicion()?;
        match op {
            MaintenanceOp::Resize { size } => self.resize_local(*size, progress),
            MaintenanceOp::SnapCreate { name } => self.snap_create_local(name),
            MaintenanceOp::SnapRemove { name } => self.snap_remove_local(name, progress),
            MaintenanceOp::Rollback { snap } => self.rollback_local(snap, progress),
            MaintenanceOp::Flatten { objects_per_second } => {
                self.flatten_local(*objects_per_second, progress)
            }
        }
    }
}
