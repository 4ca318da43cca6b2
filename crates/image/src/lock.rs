//! The exclusive lock of an image (docs/image.md): at most one client owns an image at a time, and
//! only the owner writes it and keeps its object map. Another client that wants to write asks
//! the owner to hand the lock over; one that wants a maintenance operation (resize, snapshot
//! create/remove/rollback, flatten) asks the owner to run it and gets progress and the result.
//!
//! A store is mounted by one process (the device claims see to that), so every client of an
//! image lives in this process and the lock is a table in memory, keyed by store and image:
//! nothing of it is on disk, and a crash leaves no stale owner behind. An owner serves requests
//! when it calls [`crate::Image::serve_lock_requests`]; a server runs a thread that waits
//! for requests with [`LockWaiter::wait`] and then does that.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::object_map::ObjectState;
use bluepoll_base::id::Uuid;
use bluepoll_base::sync::lock;

/// What the owner of an image can be asked to run for another client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaintenanceOp {
    /// [`Image::resize`](crate::Image::resize): grow or shrink the image.
    Resize {
        /// The new size in bytes.
        size: u64,
    },
    /// [`Image::snap_create`](crate::Image::snap_create): take a snapshot.
    SnapCreate {
        /// The new snapshot's name.
        name: String,
    },
    /// [`Image::snap_remove`](crate::Image::snap_remove): remove a snapshot.
    SnapRemove {
        /// The snapshot to remove.
        name: String,
    },
    /// [`Image::rollback`](crate::Image::rollback): make the image what a snapshot saw.
    Rollback {
        /// The snapshot to roll back to.
        snap: String,
    },
    /// [`Image::flatten`](crate::Image::flatten): copy up what a clone still reads from its
    /// parent, then cut the link.
    Flatten {
        /// Objects copied per second at most; None for as fast as it goes.
        objects_per_second: Option<u64>,
    },
}

impl MaintenanceOp {
    /// The operation's name as a person would type it ("resize", "snap create", "snap rm",
    /// "rollback", "flatten"), for messages and [`LockEvent::OpRequested`].
    pub fn name(&self) -> &'static str {
        match self {
            MaintenanceOp::Resize { .. } => "resize",
            MaintenanceOp::SnapCreate { .. } => "snap create",
            MaintenanceOp::SnapRemove { .. } => "snap rm",
            MaintenanceOp::Rollback { .. } => "rollback",
            MaintenanceOp::Flatten { .. } => "flatten",
        }
    }
}

/// What a client that asked the owner to run an operation hears back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpUpdate {
    /// The owner has dealt with `done` of the `total` objects the operation goes through.
    Progress {
        /// Objects dealt with so far.
        done: u64,
        /// Objects the operation goes through in all.
        total: u64,
    },
    /// The owner finished the operation: Ok, or its error as text. The last update.
    Finished(Result<(), String>),
}

/// Notifications every client of an image receives ([`crate::Image::watch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockEvent {
    /// `client` took the lock (or was handed it).
    Acquired {
        /// The new owner's client id.
        client: u64,
    },
    /// `client` let go of the lock (an [`Acquired`](LockEvent::Acquired) for the next owner
    /// follows when a client was waiting).
    Released {
        /// The former owner's client id.
        client: u64,
    },
    /// `by` asked the owner to hand the lock over.
    ReleaseRequested {
        /// The client id of the client that wants the lock.
        by: u64,
    },
    /// `by` asked the owner to run an operation.
    OpRequested {
        /// The client id of the client that asked.
        by: u64,
        /// The operation, as [`MaintenanceOp::name`] names it.
        op: &'static str,
    },
}

pub(crate) enum LockRequest {
    /// Another client waits for the lock.
    Release,
    Run {
        /// Identifies the request so its sender can withdraw it.
        ticket: u64,
        op: MaintenanceOp,
        updates: Sender<OpUpdate>,
    },
}

#[derive(Default)]
struct LockState {
    owner: Option<u64>,
    /// Clients waiting for the lock, first come first served: a release hands the lock to the
    /// first directly, so a client that lets go and asks again cannot barge ahead of them.
    waiters: VecDeque<u64>,
    runs: VecDeque<LockRequest>,
    watchers: Vec<Sender<LockEvent>>,
}

impl LockState {
    fn has_request(&self) -> bool {
        !self.waiters.is_empty() || !self.runs.is_empty()
    }
}

/// The lock of one image: shared by every client of it.
#[derive(Default)]
pub(crate) struct LockCell {
    state: Mutex<LockState>,
    changed: Condvar,
}

/// Every image lock of the process, by store and image.
type LockTable = HashMap<(Uuid, String), Arc<LockCell>>;

static REGISTRY: OnceLock<Mutex<LockTable>> = OnceLock::new();
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);
static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);

/// A new client id, unique in this process.
pub(crate) fn new_client_id() -> u64 {
    NEXT_CLIENT.fetch_add(1, Ordering::Relaxed)
}

/// The lock of `image` in the store `fsid`.
pub(crate) fn cell(fsid: Uuid, image: &str) -> Arc<LockCell> {
    let registry = REGISTRY.get_or_init(Default::default);
    let mut table = lock(registry);
    Arc::clone(table.entry((fsid, image.to_string())).or_default())
}

/// Serialises, in the process (one process mounts a store, so every client is here), linking a
/// clone to a snapshot and a snapshot removal's check for such links: without it, a clone could
/// link to a snapshot whose removal has just found no clone.
pub(crate) fn catalog(fsid: Uuid) -> Arc<Mutex<()>> {
    static CATALOGS: OnceLock<Mutex<HashMap<Uuid, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut table = lock(CATALOGS.get_or_init(Default::default));
    Arc::clone(table.entry(fsid).or_default())
}

/// What [`LockCell::try_acquire`] found.
pub(crate) enum Acquire {
    Acquired,
    HeldBy(u64),
}

impl LockCell {
    /// Whether another client waits for the lock or an operation waits for its owner.
    pub fn has_request(&self) -> bool {
        lock(&self.state).has_request()
    }

    fn broadcast(state: &mut LockState, event: LockEvent) {
        state.watchers.retain(|w| w.send(event.clone()).is_ok());
    }

    fn wait<'a>(
        &self,
        state: std::sync::MutexGuard<'a, LockState>,
        timeout: Duration,
    ) -> std::sync::MutexGuard<'a, LockState> {
        self.changed
            .wait_timeout(state, timeout)
            .map(|(s, _)| s)
            .unwrap_or_else(|p| p.into_inner().0)
    }

    pub fn owner(&self) -> Option<u64> {
        lock(&self.state).owner
    }

    pub fn watch(&self) -> Receiver<LockEvent> {
        let (tx, rx) = channel();
        lock(&self.state).watchers.push(tx);
        rx
    }

    /// Takes the lock if nobody holds it or waits for it.
    pub fn try_acquire(&self, client: u64) -> Acquire {
        let mut state = lock(&self.state);
        match state.owner {
            Some(o) if o != client => Acquire::HeldBy(o),
            Some(_) => Acquire::Acquired,
            None if !state.waiters.is_empty() => {
                // Only between a waiter giving up and the next release: let it go round.
                Acquire::HeldBy(state.waiters[0])
            }
            None => {
                state.owner = Some(client);
                LockCell::broadcast(&mut state, LockEvent::Acquired { client });
                self.changed.notify_all();
                Acquire::Acquired
            }
        }
    }

    /// Queues for the lock, asking the owner to hand it over, and waits until it is handed to
    /// this client; gives up at `deadline` with the owner's id.
    pub fn acquire_from_owner(&self, client: u64, deadline: Instant) -> Result<(), u64> {
        let mut state = lock(&self.state);
        if state.owner.is_none() && state.waiters.is_empty() {
            state.owner = Some(client);
            LockCell::broadcast(&mut state, LockEvent::Acquired { client });
            self.changed.notify_all();
            return Ok(());
        }
        if state.owner == Some(client) {
            return Ok(());
        }
        state.waiters.push_back(client);
        LockCell::broadcast(&mut state, LockEvent::ReleaseRequested { by: client });
        self.changed.notify_all();
        loop {
            if state.owner == Some(client) {
                return Ok(());
            }
            if state.owner.is_none() && state.waiters.front() == Some(&client) {
                // Freed while nobody was first in line: take it.
                state.waiters.pop_front();
                state.owner = Some(client);
                LockCell::broadcast(&mut state, LockEvent::Acquired { client });
                self.changed.notify_all();
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                state.waiters.retain(|w| *w != client);
                let holder = state.owner.unwrap_or(0);
                self.changed.notify_all();
                return Err(holder);
            }
            state = self.wait(state, deadline - now);
        }
    }

    /// Lets go of the lock; the first waiting client gets it.
    pub fn release(&self, client: u64) {
        let mut state = lock(&self.state);
        if state.owner == Some(client) {
            state.owner = state.waiters.pop_front();
            LockCell::broadcast(&mut state, LockEvent::Released { client });
            if let Some(next) = state.owner {
                LockCell::broadcast(&mut state, LockEvent::Acquired { client: next });
            }
            self.changed.notify_all();
        }
    }

    /// Queues an operation for the owner; the ticket withdraws it.
    pub fn ask_owner(&self, by: u64, op: MaintenanceOp) -> (u64, Receiver<OpUpdate>) {
        let (updates, rx) = channel();
        let ticket = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
        let mut state = lock(&self.state);
        let name = op.name();
        state.runs.push_back(LockRequest::Run {
            ticket,
            op,
            updates,
        });
        LockCell::broadcast(&mut state, LockEvent::OpRequested { by, op: name });
        self.changed.notify_all();
        (ticket, rx)
    }

    /// Takes back a queued operation nobody started; false if the owner already took it.
    pub fn withdraw(&self, ticket: u64) -> bool {
        let mut state = lock(&self.state);
        let before = state.runs.len();
        state
            .runs
            .retain(|r| !matches!(r, LockRequest::Run { ticket: t, .. } if *t == ticket));
        state.runs.len() != before
    }

    /// The next request, for the owner only: operations first, then a waiting client.
    pub fn next_request(&self, owner: u64) -> Option<LockRequest> {
        let mut state = lock(&self.state);
        if state.owner != Some(owner) {
            return None;
        }
        if let Some(run) = state.runs.pop_front() {
            return Some(run);
        }
        (!state.waiters.is_empty()).then_some(LockRequest::Release)
    }

    /// Blocks until a request is queued or `timeout` passes; whether one is queued.
    fn wait_request(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        loop {
            if state.has_request() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.wait(state, deadline - now);
        }
    }
}

/// Lets a thread that does not hold the image wait for lock requests to serve.
#[derive(Clone)]
pub struct LockWaiter {
    pub(crate) cell: Arc<LockCell>,
}

impl LockWaiter {
    /// Blocks until another client asks the owner for something, or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.cell.wait_request(timeout)
    }
}

/// Writes queued on the store and not yet answered: a lock is handed over, and a flush
/// answered, only once they are. Remembers a failure until a flush reports it, and a lost
/// write (one acknowledged from the write cache that then failed) for good.
#[derive(Default)]
pub(crate) struct InFlight {
    count: Mutex<u64>,
    drained: Condvar,
    failed: std::sync::atomic::AtomicBool,
    lost: Mutex<Option<String>>,
}

impl InFlight {
    /// A write already acknowledged as accepted failed: every flush from now on fails, on every
    /// connection and for every later client of this open image, since none of them can tell
    /// which of their writes it was. (Only a store failure can do this, and a failed store
    /// accepts no change until remount, which reopens the image.)
    pub fn lost(&self, why: String) {
        lock(&self.lost).get_or_insert(why);
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Why acknowledged writes were lost, if they were.
    pub fn lost_reason(&self) -> Option<String> {
        lock(&self.lost).clone()
    }
}

/// An object's map state before and after a write: (object, before, after).
pub(crate) type StateChange = (u64, ObjectState, ObjectState);

/// What a write the store refused had changed in the map: the states it set, and the map
/// blocks its transaction carried.
pub(crate) struct RefusedWrite {
    pub states: Vec<StateChange>,
    pub blocks: Vec<u64>,
}

/// Map changes of queued writes the store refused at PREPARE (nothing of them applied): the
/// image puts the objects' states back before its next change, and rewrites the map blocks
/// the refused transaction carried (a later write may have carried the refused state in the
/// same block).
#[derive(Default)]
pub(crate) struct MapUndo {
    pending: std::sync::atomic::AtomicBool,
    undo: Mutex<Vec<RefusedWrite>>,
}

impl MapUndo {
    pub fn push(&self, refused: RefusedWrite) {
        lock(&self.undo).push(refused);
        self.pending.store(true, Ordering::SeqCst);
    }

    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// Everything pushed so far, oldest first.
    pub fn take(&self) -> Vec<RefusedWrite> {
        let mut undo = lock(&self.undo);
        self.pending.store(false, Ordering::SeqCst);
        std::mem::take(&mut *undo)
    }
}

impl InFlight {
    pub fn start(&self) {
        *lock(&self.count) += 1;
    }

    pub fn finish(&self, ok: bool) {
        if !ok {
            self.failed.store(true, Ordering::SeqCst);
        }
        let mut n = lock(&self.count);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.drained.notify_all();
        }
    }

    pub fn wait_drained(&self) {
        let mut n = lock(&self.count);
        while *n > 0 {
            n = self.drained.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether a write failed since the last call.
    pub fn take_failure(&self) -> bool {
        self.failed.swap(false, Ordering::SeqCst)
    }
}

impl InFlight {
    /// Writes queued and not yet finished.
    pub fn count(&self) -> u64 {
        *lock(&self.count)
    }
}

/// Objects whose map change rides on a queued write that has not finished. Until it has, the
/// map's word on them is only a promise: should the write fail, the object is not what the map
/// says (not preserved for the snapshot, not copied up from the parent), so a later change of
/// such an object waits for the write's outcome before it trusts the map.
#[derive(Default)]
pub(crate) struct Transitions {
    objects: Mutex<HashMap<u64, u32>>,
    settled: Condvar,
}

impl Transitions {
    pub fn begin(&self, objects: &[u64]) {
        let mut map = lock(&self.objects);
        for &o in objects {
            *map.entry(o).or_default() += 1;
        }
    }

    pub fn end(&self, objects: &[u64]) {
        let mut map = lock(&self.objects);
        for o in objects {
            if let Some(n) = map.get_mut(o) {
                *n -= 1;
                if *n == 0 {
                    map.remove(o);
                }
            }
        }
        drop(map);
        self.settled.notify_all();
    }

    /// Whether any of `objects` has a change in flight.
    pub fn any(&self, objects: impl IntoIterator<Item = u64>) -> bool {
        let map = lock(&self.objects);
        !map.is_empty() && objects.into_iter().any(|o| map.contains_key(&o))
    }

    /// Returns once none of `objects` has a change in flight.
    pub fn wait_settled(&self, objects: &[u64]) {
        let mut map = lock(&self.objects);
        while objects.iter().any(|o| map.contains_key(o)) {
            map = self.settled.wait(map).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Waits for an image's queued writes without holding the image (a server's flush).
#[derive(Clone)]
pub struct FlushWaiter {
    pub(crate) in_flight: Arc<InFlight>,
}

impl FlushWaiter {
    /// Returns once every write queued before the call is durable; false if one of the
    /// writes queued since the last flush failed.
    pub fn wait(&self) -> bool {
        self.in_flight.wait_drained();
        let failed = self.in_flight.take_failure();
        !failed && self.in_flight.lost_reason().is_none()
    }

    /// Why acknowledged writes of this image were lost (every flush fails from then on).
    pub fn lost_reason(&self) -> Option<String> {
        self.in_flight.lost_reason()
    }
}
