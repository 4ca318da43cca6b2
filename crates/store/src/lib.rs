//! The object store (docs/store.md): collections of objects with data, attributes and omap,
//! changed by transactions that run through BlueStore's TransContext states on per-core
//! reactors, with object data on the main (SLOW) device and metadata in RocksDB on BlueFS.
//!
//! - **Shards.** A collection belongs to one shard (by a hash of its name), a shard to one
//!   reactor. Every request for a collection travels to its shard as a reactor message and runs
//!   there; the shard owns its cached onodes, buffers, TransContexts and OpSequencers, and its
//!   queue pair on the main device. Nothing of a shard is shared with another thread.
//! - **Commit.** Data is written copy-on-write before the commit (or journaled in the commit as
//!   a deferred write and applied in place after it); the kv-sync thread flushes the main device
//!   and commits the metadata of many transactions in one synced RocksDB write, then hands each
//!   shard its committed list; the shard runs the commit callbacks in submission order.
//! - **Space.** One allocator for the main device, shared with BlueFS (which takes space on
//!   demand and records it only in its own log); the store's freelist is a bitmap in the kv.
//!
//! ```no_run
//! use bluepoll_store::{Store, StoreConfig, Transaction};
//! let mut config = StoreConfig::default();
//! config.devices.slow = "uring:/var/lib/bluepoll/main.img?size=1G".into();
//! Store::mkfs(&config).unwrap();
//! let store = Store::mount(config).unwrap();
//! let mut t = Transaction::new("pool");
//! t.create_collection().write("obj", 0, b"hello".to_vec());
//! store.apply(t).unwrap();
//! assert_eq!(store.read("pool", "obj", 0, 5).unwrap(), b"hello");
//! store.umount().unwrap();
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod apply;
mod cache;
pub mod config;
pub mod error;
mod extents;
pub mod format;
mod fsck;
mod handle;
mod kv_sync;
mod mount;
mod oneshot;
pub mod perf;
mod read;
mod shard;
mod space;
mod throttle;
pub mod transaction;
mod txc;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

pub use config::{DeviceUris, StoreConfig};
pub use error::{Result, StoreError};
pub use fsck::{FsckReport, fsck};
pub use handle::Statfs;
pub use mount::{StoreDevices, read_label};
pub use oneshot::Commit;
pub use perf::{Histogram, KvSyncPerf, ShardPerf};
pub use read::{ObjectExtent, ObjectStat, OnRead};
pub use space::Fullness;
pub use transaction::{Op, Transaction};
pub use txc::{OnCommit, TxcState};

pub(crate) use mount::{device_io, open_bluefs, open_kv, owner_name};

use bluepoll_base::id::Uuid;
use bluepoll_base::sync::lock;
use bluepoll_bluefs::BlueFs;
use bluepoll_kv::Kv;
use bluepoll_nvme::{Device, DeviceClaim};
use bluepoll_reactor::{ReactorHandle, Reactors};
use kv_sync::{KvDone, KvQueue};
use perf::KvSyncPerf as KvPerf;
use space::StoreSpace;
use throttle::Throttle;

/// Sizes fixed at mkfs and derived from the devices.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    pub au: u64,
    pub csum_block: u64,
    pub shard_span: u64,
    pub deferred_size: u64,
    pub cost_per_io: u64,
}

/// What the shards, the kv-sync thread and the API share.
pub(crate) struct Shared {
    pub id: u64,
    pub config: StoreConfig,
    pub params: Params,
    pub fsid: Uuid,
    pub main: Device,
    // Declared before `fs`: RocksDB closes before the filesystem under it goes.
    pub kv: Kv,
    pub fs: BlueFs,
    pub space: Arc<StoreSpace>,
    pub kv_queue: KvQueue,
    pub kv_perf: Mutex<KvPerf>,
    pub reactors: ReactorHandle,
    pub shards: usize,
    pub throttle: Throttle,
    pub deferred_throttle: Throttle,
    next_cid: AtomicU32,
    next_omap: AtomicU64,
    /// Omap ids below this may be in use; the kv-sync thread records it before committing any.
    omap_needed: AtomicU64,
    pub deferred_seq: AtomicU64,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Caller callbacks that panicked (caught, so the reactor and the shard live on).
    callback_panics: AtomicU64,
    pub unmounting: AtomicBool,
    stopped_shards: Mutex<usize>,
    shard_stopped: Condvar,
    /// The devices held for this mount; last, so they are released after everything else.
    _claims: Vec<DeviceClaim>,
}

impl Shared {
    /// Stops the store taking changes (the first reason is kept).
    pub fn fail(&self, reason: String) {
        let mut f = lock(&self.failure);
        if f.is_none() {
            log::error!("bluepoll store: {reason}; no more changes are accepted until remount");
            *f = Some(reason);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Wraps a caller's callback so a panic in it stays in it: it is reported and counted,
    /// and the reactor goes on serving the shard (whose state the callback cannot touch).
    /// Unwinding out of a reactor would end its thread and leave every later submitter
    /// waiting on the throttle forever.
    pub fn shielded<T: 'static>(
        self: &Arc<Self>,
        what: &'static str,
        callback: impl FnOnce(T) + Send + 'static,
    ) -> Box<dyn FnOnce(T) + Send> {
        let shared = Arc::clone(self);
        Box::new(move |value| {
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || callback(value)));
            if outcome.is_err() {
                let n = shared.callback_panics.fetch_add(1, Ordering::Relaxed) + 1;
                log::error!(
                    "bluepoll store: a {what} callback panicked (caught; {n} so far); the store goes on"
                );
            }
        })
    }

    pub fn callback_panics(&self) -> u64 {
        self.callback_panics.load(Ordering::Relaxed)
    }

    pub fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Relaxed) {
            return None;
        }
        lock(&self.failure).clone()
    }

    pub fn alloc_cid(&self) -> u32 {
        self.next_cid.fetch_add(1, Ordering::Relaxed)
    }

    pub fn alloc_omap_id(&self) -> u64 {
        let id = self.next_omap.fetch_add(1, Ordering::Relaxed);
        self.omap_needed.fetch_max(id + 1, Ordering::SeqCst);
        id
    }

    pub fn omap_needed(&self) -> u64 {
        self.omap_needed.load(Ordering::SeqCst)
    }

    pub fn shard_stopped(&self) {
        *lock(&self.stopped_shards) += 1;
        self.shard_stopped.notify_all();
    }
}

/// Hands the kv-sync thread's answer to a shard's reactor (retrying while its inbox is full).
pub(crate) fn deliver_kv_done(shared: &Arc<Shared>, shard: usize, done: KvDone) {
    let id = shared.id;
    let mut message: bluepoll_reactor::Message = Box::new(move |_cx| {
        shard::with_current(id, |s| s.kv_done(done));
    });
    loop {
        match shared.reactors.send_boxed(shard, message) {
            Ok(()) => return,
            Err((bluepoll_reactor::ReactorError::MailboxFull { .. }, m)) => {
                message = m;
                std::thread::yield_now();
            }
            Err(_) => return,
        }
    }
}

/// A mounted object store: its methods are [`StoreHandle`]'s (through `Deref`), plus
/// [`umount`](Store::umount). Dropping it unmounts.
pub struct Store {
    handle: StoreHandle,
    reactors: Mutex<Option<Reactors>>,
    kv_thread: Mutex<Option<JoinHandle<()>>>,
}

/// Everything but unmounting, for any thread: cheap to clone, and dropping one never
/// unmounts (so code on the store's own reactors holds these, not the [`Store`]). Calls after
/// the store unmounted fail with [`StoreError::Unmounting`]. The blocking calls (`apply`,
/// `read`, `stat`, ...) refuse to run on the store's reactors, where they would wait for
/// themselves; code there uses the callback forms (`queue_transaction`, `read_async`).
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
}

impl std::ops::Deref for Store {
    type Target = StoreHandle;

    fn deref(&self) -> &StoreHandle {
        &self.handle
    }
}
