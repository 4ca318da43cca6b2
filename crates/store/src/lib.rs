//! The object store (DESIGN §4): collections of objects with data, attributes and omap,
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
//! use bluepoll::store::{Store, StoreConfig, Transaction};
//! let mut config = StoreConfig::default();
//! config.devices.slow = "mem:1G".into();
//! Store::mkfs(&config).unwrap();
//! let store = Store::mount(config).unwrap();
//! let mut t = Transaction::new("pool");
//! t.create_collection().write("obj", 0, b"hello".to_vec());
//! store.apply(t).unwrap();
//! assert_eq!(store.read("pool", "obj", 0, 5).unwrap(), b"hello");
//! store.umount().unwrap();
//! ```

#![deny(unsafe_op_in_unsafe_fn)]

mod apply;
mod cache;
pub mod config;
pub mod error;
mod extents;
pub mod format;
mod fsck;
mod kv_sync;
mod oneshot;
pub mod perf;
mod read;
mod shard;
mod space;
mod throttle;
pub mod transaction;
mod txc;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use config::{DeviceUris, StoreConfig};
pub use error::{Result, StoreError};
pub use fsck::{FsckReport, fsck};
pub use oneshot::Commit;
pub use perf::{Histogram, KvSyncPerf, ShardPerf};
pub use read::{ObjectExtent, ObjectStat, OnRead};
pub use space::Fullness;
pub use transaction::{Op, Transaction};
pub use txc::{OnCommit, TxcState};

use bluepoll_base::id::{Uuid, new_uuid, now_ns, uuid_text};
use bluepoll_base::sync::lock;
use bluepoll_bluefs::{BlueFs, Devices};
use bluepoll_kv::{KeyRange, Kv, WriteBatch};
use bluepoll_nvme::{Device, DeviceClaim, IoCmd};
use bluepoll_reactor::{ReactorConfig, ReactorHandle, Reactors};
use format::{
    FREELIST_LANES, Label, OMAP_MAX_KEY, PREFIX_COLL, PREFIX_DEFERRED, PREFIX_FREELIST,
    PREFIX_REFS, SUPER_KEY, Superblock,
};
use kv_sync::{KvDone, KvQueue};
use perf::KvSyncPerf as KvPerf;
use space::{BlueFsSpace, StoreSpace};
use throttle::Throttle;

/// Where BlueFS's DB area starts on a main device that holds it.
const DB_AREA_OFFSET: u64 = 1 << 20;
/// Bytes before the first allocatable byte on a main device with a DB device of its own.
const LABEL_AREA: u64 = 64 << 10;

/// The opened devices of a store.
#[derive(Clone, Debug)]
pub struct StoreDevices {
    /// The main device: object data (and BlueFS's spillover, and its DB area when `db` is None).
    pub slow: Device,
    pub db: Option<Device>,
    pub wal: Option<Device>,
}

impl StoreDevices {
    pub fn open(uris: &DeviceUris) -> Result<StoreDevices> {
        if uris.slow.is_empty() {
            return Err(StoreError::Config {
                reason: "no main (slow) device given".into(),
            });
        }
        let open = |uri: &String| Device::open(uri).map_err(StoreError::from);
        Ok(StoreDevices {
            slow: open(&uris.slow)?,
            db: uris.db.as_ref().map(open).transpose()?,
            wal: uris.wal.as_ref().map(open).transpose()?,
        })
    }

    /// Claims every device for `owner` (see [`Device::claim`]): a mounted store, mkfs and fsck
    /// hold their devices, so a second one — in this process or another — fails with EBUSY.
    pub fn claim(&self, owner: &str) -> Result<Vec<DeviceClaim>> {
        let mut claims = vec![self.slow.claim(owner)?];
        for device in [&self.db, &self.wal].into_iter().flatten() {
            claims.push(device.claim(owner)?);
        }
        Ok(claims)
    }

    /// Only a main device.
    pub fn only(slow: Device) -> StoreDevices {
        StoreDevices {
            slow,
            db: None,
            wal: None,
        }
    }
}

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

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

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

impl StoreHandle {
    pub fn fsid(&self) -> Uuid {
        self.shared.fsid
    }

    /// The shard (and reactor) a collection lives on.
    pub fn shard_of(&self, coll: &str) -> usize {
        (fnv1a(coll.as_bytes()) % self.shared.shards as u64) as usize
    }

    pub fn shard_count(&self) -> usize {
        self.shared.shards
    }

    /// Sends work to the store's reactors (to run pollers beside the shards, as the bench does).
    pub fn reactor_handle(&self) -> ReactorHandle {
        self.shared.reactors.clone()
    }

    /// The main device.
    pub fn main_device(&self) -> &Device {
        &self.shared.main
    }

    /// Why the store stopped taking changes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// How many commit or read callbacks panicked (each was caught and reported on stderr).
    pub fn callback_panics(&self) -> u64 {
        self.shared.callback_panics()
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.unmounting.load(Ordering::Relaxed) {
            return Err(StoreError::Unmounting);
        }
        if let Some(reason) = self.shared.failure() {
            return Err(StoreError::Failed { reason });
        }
        Ok(())
    }

    /// Runs `f` on the shard of `coll`'s reactor.
    fn on_shard(
        &self,
        coll: &str,
        f: impl FnOnce(&mut shard::Shard) + Send + 'static,
    ) -> Result<()> {
        let index = self.shard_of(coll);
        let id = self.shared.id;
        let mut message: bluepoll_reactor::Message = Box::new(move |_cx| {
            shard::with_current(id, f);
        });
        loop {
            match self.shared.reactors.send_boxed(index, message) {
                Ok(()) => return Ok(()),
                Err((bluepoll_reactor::ReactorError::MailboxFull { .. }, m)) => {
                    message = m;
                    std::thread::yield_now();
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Runs `f` on the shard of `coll` and waits for its answer.
    fn call<R: Send + 'static>(
        &self,
        coll: &str,
        call: &'static str,
        f: impl FnOnce(&mut shard::Shard) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        if shard::on_reactor_of(self.shared.id) {
            return Err(StoreError::WouldBlock { call });
        }
        let (tx, rx) = oneshot::channel();
        self.on_shard(coll, move |s| tx.send(f(s)))?;
        rx.wait().unwrap_or(Err(StoreError::Unmounting))
    }

    /// Queues a transaction. `on_commit` runs once, on the collection's reactor, when the
    /// transaction is durable (Ok) or failed (nothing of it applied, or the store stopped);
    /// it must not block. An Err here means it was not queued (and `on_commit` is not called).
    ///
    /// Off the store's reactors this waits while the throttle is full (backpressure).
    pub fn queue_transaction(
        &self,
        txn: Transaction,
        on_commit: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        self.queue(txn, None, self.shared.shielded("commit", on_commit))
    }

    /// [`queue_transaction`](Self::queue_transaction) with a second callback, `on_prepared`,
    /// run once on the collection's reactor when PREPARE ends, before `on_commit`:
    /// - `Ok`: the transaction's space is allocated and every later read sees it. Only a device
    ///   or metadata failure can still stop it from committing, and such a failure stops the
    ///   whole store (no further change is accepted until remount), so this is the point at
    ///   which a write cache may acknowledge a write.
    /// - `Err`: it was refused (`NoSpace` when the store cannot hold it, or a bad request) with
    ///   nothing of it applied; `on_commit` then gets the same error.
    pub fn queue_transaction_staged(
        &self,
        txn: Transaction,
        on_prepared: impl FnOnce(Result<()>) + Send + 'static,
        on_commit: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        let on_prepared = self.shared.shielded("prepare", on_prepared);
        self.queue(
            txn,
            Some(on_prepared),
            self.shared.shielded("commit", on_commit),
        )
    }

    fn queue(
        &self,
        txn: Transaction,
        on_prepared: Option<txc::OnCommit>,
        on_commit: txc::OnCommit,
    ) -> Result<()> {
        self.check_open()?;
        let ios = txn
            .ops()
            .iter()
            .filter(|op| matches!(op, Op::Write { .. } | Op::Zero { .. }))
            .count() as u64
            + 1;
        let cost = txn.data_bytes() + ios * self.shared.params.cost_per_io;
        let wait = !shard::on_reactor_of(self.shared.id);
        let shared = Arc::clone(&self.shared);
        if !self.shared.throttle.get(cost, wait, || {
            shared.failure().is_some() || shared.unmounting.load(Ordering::Relaxed)
        }) {
            self.check_open()?;
        }
        let queued_at = Instant::now();
        let (coll, ops) = txn.into_parts();
        let target = coll.clone();
        let sent = self.on_shard(&target, move |s| {
            s.queue_transaction(coll, ops, cost, queued_at, on_prepared, on_commit);
        });
        if sent.is_err() {
            self.shared.throttle.put(cost);
        }
        sent
    }

    /// Queues a transaction; the returned future (or its `wait`) completes at commit.
    pub fn submit(&self, txn: Transaction) -> Commit {
        let (tx, rx) = oneshot::channel();
        let commit = Commit::new(rx);
        let (tx2, rx2) = oneshot::channel::<Result<()>>();
        // Route the immediate error through the same channel.
        match self.queue_transaction(txn, move |r| tx.send(r)) {
            Ok(()) => {
                drop(tx2);
                drop(rx2);
                commit
            }
            Err(e) => {
                tx2.send(Err(e));
                Commit::new(rx2)
            }
        }
    }

    /// Queues a transaction and waits until it is durable. Space the transaction frees returns
    /// to the allocator when it reaches DONE, a moment later (as in BlueStore, where the commit
    /// callback also runs before `_txc_release_alloc`); `statfs` shows when.
    pub fn apply(&self, txn: Transaction) -> Result<()> {
        if shard::on_reactor_of(self.shared.id) {
            return Err(StoreError::WouldBlock { call: "apply" });
        }
        self.submit(txn).wait()
    }

    /// Reads up to `len` bytes at `offset` (fewer at the object's end).
    pub fn read(&self, coll: &str, obj: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        if shard::on_reactor_of(self.shared.id) {
            return Err(StoreError::WouldBlock { call: "read" });
        }
        let (tx, rx) = oneshot::channel();
        self.read_async(coll, obj, offset, len, move |r| tx.send(r))?;
        rx.wait().unwrap_or(Err(StoreError::Unmounting))
    }

    /// Starts a read; `done` runs on the collection's reactor with the bytes (it must not
    /// block).
    pub fn read_async(
        &self,
        coll: &str,
        obj: &str,
        offset: u64,
        len: u64,
        done: impl FnOnce(Result<Vec<u8>>) + Send + 'static,
    ) -> Result<()> {
        if self.shared.unmounting.load(Ordering::Relaxed) {
            return Err(StoreError::Unmounting);
        }
        let (c, o) = (coll.to_string(), obj.to_string());
        let done = self.shared.shielded("read", done);
        self.on_shard(coll, move |s| s.read(&c, &o, offset, len, done))
    }

    pub fn stat(&self, coll: &str, obj: &str) -> Result<ObjectStat> {
        let (c, o) = (coll.to_string(), obj.to_string());
        self.call(coll, "stat", move |s| s.stat(&c, &o))
    }

    /// A property of the store's RocksDB (`rocksdb.stats`, `rocksdb.num-running-compactions`,
    /// ...), for inspection.
    pub fn kv_property(&self, name: &str) -> Result<Option<String>> {
        Ok(self.shared.kv.property(name)?)
    }

    /// The BlueFS the store's RocksDB lives in (for inspection: files, extents, usage).
    pub fn bluefs(&self) -> &BlueFs {
        &self.shared.fs
    }

    /// Where the object's data lives on the main device, by object offset (committed and
    /// queued transactions included; holes read as zeros). For inspection and drills.
    pub fn object_extents(&self, coll: &str, obj: &str) -> Result<Vec<ObjectExtent>> {
        let (c, o) = (coll.to_string(), obj.to_string());
        self.call(coll, "object_extents", move |s| s.object_extents(&c, &o))
    }

    pub fn exists(&self, coll: &str, obj: &str) -> Result<bool> {
        let (c, o) = (coll.to_string(), obj.to_string());
        self.call(coll, "exists", move |s| s.exists(&c, &o))
    }

    pub fn getattr(&self, coll: &str, obj: &str, name: &str) -> Result<Vec<u8>> {
        let (c, o, n) = (coll.to_string(), obj.to_string(), name.to_string());
        self.call(coll, "getattr", move |s| s.getattr(&c, &o, &n))
    }

    pub fn getattrs(&self, coll: &str, obj: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let (c, o) = (coll.to_string(), obj.to_string());
        self.call(coll, "getattrs", move |s| s.getattrs(&c, &o))
    }

    pub fn omap_get_header(&self, coll: &str, obj: &str) -> Result<Option<Vec<u8>>> {
        let (c, o) = (coll.to_string(), obj.to_string());
        self.call(coll, "omap_get_header", move |s| s.omap_header(&c, &o))
    }

    /// The values of `keys` that exist.
    pub fn omap_get_values(
        &self,
        coll: &str,
        obj: &str,
        keys: &[Vec<u8>],
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let (c, o, k) = (coll.to_string(), obj.to_string(), keys.to_vec());
        self.call(coll, "omap_get_values", move |s| {
            s.omap_get_values(&c, &o, &k)
        })
    }

    /// Up to `max` entries after `after` (from the first if None), in key order.
    pub fn omap_iterate(
        &self,
        coll: &str,
        obj: &str,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (c, o, a) = (coll.to_string(), obj.to_string(), after.map(<[u8]>::to_vec));
        self.call(coll, "omap_iterate", move |s| {
            s.omap_iterate(&c, &o, a.as_deref(), max)
        })
    }

    /// Every omap entry.
    pub fn omap_get(&self, coll: &str, obj: &str) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.omap_iterate(coll, obj, after.as_deref(), 1024)?;
            let done = page.len() < 1024;
            after = page.last().map(|(k, _)| k.clone());
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// Up to `max` object names after `after` (from the first if None), sorted by name.
    pub fn list_objects(&self, coll: &str, after: Option<&str>, max: usize) -> Result<Vec<String>> {
        let (c, a) = (coll.to_string(), after.map(str::to_string));
        self.call(coll, "list_objects", move |s| {
            s.list_objects(&c, a.as_deref(), max)
        })
    }

    pub fn collection_exists(&self, coll: &str) -> Result<bool> {
        let c = coll.to_string();
        self.call(coll, "collection_exists", move |s| {
            Ok(s.coll_id(&c).is_ok())
        })
    }

    /// Every collection, sorted.
    pub fn list_collections(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for index in 0..self.shared.shards {
            out.extend(self.call_shard(index, "list_collections", |s| Ok(s.collections()))?);
        }
        out.sort();
        Ok(out)
    }

    fn call_shard<R: Send + 'static>(
        &self,
        index: usize,
        call: &'static str,
        f: impl FnOnce(&mut shard::Shard) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        if shard::on_reactor_of(self.shared.id) {
            return Err(StoreError::WouldBlock { call });
        }
        let (tx, rx) = oneshot::channel();
        let id = self.shared.id;
        self.shared.reactors.send(index, move |_cx| {
            shard::with_current(id, |s| tx.send(f(s)));
        })?;
        rx.wait().unwrap_or(Err(StoreError::Unmounting))
    }

    /// Space on the main device.
    pub fn statfs(&self) -> Statfs {
        let free = self.shared.space.free_bytes();
        let reserve = self.shared.space.reserve();
        let bluefs = self.shared.fs.usage();
        Statfs {
            total: self.shared.space.size(),
            free: free.saturating_sub(reserve),
            reserve,
            fullness: self.shared.space.fullness(),
            bluefs_main_bytes: bluefs.devices[bluepoll_bluefs::DeviceId::Slow.index()]
                .as_ref()
                .map_or(0, |d| d.by_kind.iter().sum::<u64>() + d.log),
        }
    }

    /// Counters and latency histograms of every shard (merged) and of the kv-sync thread.
    pub fn perf(&self) -> Result<(ShardPerf, KvSyncPerf)> {
        let mut total = ShardPerf::default();
        for index in 0..self.shared.shards {
            total.merge(&self.call_shard(index, "perf", |s| Ok(s.perf_snapshot()))?);
        }
        Ok((total, lock(&self.shared.kv_perf).clone()))
    }

    /// Starts every counter and histogram afresh (the bench does, after laying objects out).
    pub fn reset_perf(&self) -> Result<()> {
        for index in 0..self.shared.shards {
            self.call_shard(index, "reset_perf", |s| {
                s.perf = ShardPerf::default();
                Ok(())
            })?;
        }
        *lock(&self.shared.kv_perf) = KvPerf::default();
        Ok(())
    }

    /// `bluepoll perf dump`: the counters as JSON.
    pub fn perf_dump(&self) -> Result<serde_json::Value> {
        let (shards, kv) = self.perf()?;
        let statfs = self.statfs();
        let info = self.shared.main.info();
        Ok(serde_json::json!({
            "store": shards.json(),
            "kv_sync": kv.json(),
            "throttle": {
                "bytes": self.shared.throttle.used(),
                "max": self.shared.throttle.max(),
                "deferred_bytes": self.shared.deferred_throttle.used(),
                "deferred_max": self.shared.deferred_throttle.max(),
            },
            "space": {
                "total": statfs.total,
                "free": statfs.free,
                "bluefs_reserve": statfs.reserve,
                "fullness": format!("{:?}", statfs.fullness).to_lowercase(),
                "bluefs_main_bytes": statfs.bluefs_main_bytes,
            },
            "main_device": {
                "uri": info.uri,
                "model": info.model,
                "simulated": info.is_simulated(),
            },
            "deferred_size": self.shared.params.deferred_size,
            "min_alloc_size": self.shared.params.au,
            "callback_panics": self.shared.callback_panics(),
        }))
    }
}

/// Who holds a device, as another claimant is told.
pub(crate) fn owner_name(what: &str) -> String {
    format!("bluepoll {what} (pid {})", std::process::id())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Reads or writes one block-aligned range of a device through a short-lived queue pair
/// (mkfs, mount and fsck, before the reactors run).
pub(crate) fn device_io(device: &Device, write: bool, offset: u64, data: &mut [u8]) -> Result<()> {
    let info = device.info();
    let bs = info.block_size as u64;
    let mut qp = device.queue_pair(1)?;
    let chunk = (info.max_transfer_bytes as usize).min(1 << 20) / bs as usize * bs as usize;
    let mut done = 0usize;
    while done < data.len() {
        let n = (data.len() - done).min(chunk);
        let mut buf = bluepoll_nvme::DmaBuf::new(n)?;
        let lba = (offset + done as u64) / bs;
        let blocks = (n as u64 / bs) as u32;
        let cmd = if write {
            buf.copy_from_slice(&data[done..done + n]);
            IoCmd::write(lba, blocks, buf, 0)
        } else {
            IoCmd::read(lba, blocks, buf, 0)
        };
        let c = qp.execute(cmd)?;
        if !c.status.is_success() {
            return Err(StoreError::WrongDevice {
                device: "main",
                reason: format!(
                    "{} of {n} bytes at byte {} failed: {}",
                    if write { "write" } else { "read" },
                    offset + done as u64,
                    c.status
                ),
            });
        }
        if !write && let Some(buf) = c.buf {
            data[done..done + n].copy_from_slice(&buf[..n]);
        }
        done += n;
    }
    Ok(())
}

pub(crate) fn flush_device(device: &Device) -> Result<()> {
    if !device.info().ops.flush {
        return Ok(());
    }
    let mut qp = device.queue_pair(1)?;
    let c = qp.execute(IoCmd::flush(0))?;
    if c.status.is_success() {
        Ok(())
    } else {
        Err(StoreError::WrongDevice {
            device: "main",
            reason: format!("flush failed: {}", c.status),
        })
    }
}

/// The label block of a main device.
/// The store label in block 0 of a main device.
pub fn read_label(main: &Device) -> Result<Label> {
    let bs = main.info().block_size as usize;
    let mut block = vec![0u8; format::LABEL_SIZE.max(bs)];
    device_io(main, false, 0, &mut block)?;
    format::decode_label(&block).map_err(|e| StoreError::WrongDevice {
        device: "main",
        reason: format!("no bluepoll store label ({e})"),
    })
}

/// What mount and fsck open before any shard runs.
pub(crate) struct Opened {
    pub label: Label,
    pub fs: BlueFs,
    pub space: Arc<StoreSpace>,
    /// BlueFS's extents on the main device.
    pub bluefs_extents: Vec<(u64, u64)>,
}

/// Label, BlueFS (with the shared allocator), BlueFS's space marked used.
pub(crate) fn open_bluefs(devices: &StoreDevices, config: &StoreConfig) -> Result<Opened> {
    let main = &devices.slow;
    let label = read_label(main)?;
    let size = main.info().capacity_bytes();
    if size < label.device_size {
        return Err(StoreError::WrongDevice {
            device: "main",
            reason: format!("shrank from {} to {size} bytes", label.device_size),
        });
    }
    let db = if label.db_len > 0 {
        if devices.db.is_some() {
            return Err(StoreError::WrongDevice {
                device: "db",
                reason:
                    "this store keeps its DB inside the main device; no DB device was made for it"
                        .into(),
            });
        }
        main.slice(label.db_offset, label.db_len)?
    } else {
        devices.db.clone().ok_or_else(|| StoreError::WrongDevice {
            device: "db",
            reason: "this store was made with a DB device of its own; give it".into(),
        })?
    };
    let reserve = config.bluefs_reserve_for(label.device_size);
    let space = Arc::new(StoreSpace::with_ratios(
        label.device_size,
        label.min_alloc_size as u64,
        label.data_start,
        reserve,
        config.nearfull_ratio,
        config.full_ratio,
    ));
    let mounted = BlueFs::mount(
        Devices {
            wal: devices.wal.clone(),
            db,
            slow: Some(main.clone()),
        },
        config.bluefs.clone(),
        Some(Arc::new(BlueFsSpace(Arc::clone(&space)))),
    )?;
    let bluefs_extents: Vec<(u64, u64)> = mounted
        .slow_extents
        .iter()
        .map(|e| (e.offset, e.length))
        .collect();
    space.mark_used(&bluefs_extents)?;
    Ok(Opened {
        label,
        fs: mounted.fs,
        space,
        bluefs_extents,
    })
}

/// RocksDB on a mounted BlueFS, opened read-write only once nothing stale can land in space
/// it may take. A read-only open comes first (BlueStore's order) to read the freelist, since
/// RocksDB's own writes at a read-write open (a new WAL, the MANIFEST, a flush of the
/// recovered memtable) may take main-device space from the same allocator; and to apply the
/// deferred writes a crash left in the journal — one of them may target space a committed
/// later transaction freed, so it must land before that space can be handed to anyone. Their
/// records are deleted once RocksDB is open read-write. Returns the deferred writes applied.
pub(crate) fn open_kv(
    fs: &BlueFs,
    space: &StoreSpace,
    label: &Label,
    config: &StoreConfig,
    main: &Device,
) -> Result<(Kv, Loaded, u64)> {
    let (loaded, (applied, journal)) = {
        let kv = Kv::open_read_only(fs, &config.kv)?;
        (load_records(&kv, label)?, apply_deferred(&kv, main)?)
    };
    space
        .mark_used(&loaded.allocated)
        .map_err(|e| StoreError::Corrupt {
            reason: format!("freelist overlaps BlueFS's space: {e}"),
        })?;
    let kv = Kv::open(fs, &config.kv)?;
    if !journal.is_empty() {
        let mut batch = WriteBatch::new();
        for key in journal {
            batch.delete(&key);
        }
        kv.submit(batch, true)?;
    }
    Ok((kv, loaded, applied))
}

/// The store's records read before anything writes: superblock, freelist, references.
pub(crate) struct Loaded {
    pub superblock: Superblock,
    /// Allocated runs per the freelist, as (offset, length).
    pub allocated: Vec<(u64, u64)>,
    pub refs: HashMap<u64, u32>,
}

pub(crate) fn load_records(kv: &Kv, label: &Label) -> Result<Loaded> {
    let value = kv.get(SUPER_KEY)?.ok_or_else(|| StoreError::Corrupt {
        reason: "the metadata store has no store superblock (not a bluepoll store, or mkfs did not finish)"
            .into(),
    })?;
    let superblock = format::decode_superblock(&value)?;
    if superblock.fsid != label.fsid {
        return Err(StoreError::WrongDevice {
            device: "db",
            reason: format!(
                "its metadata belongs to store {}, the main device to {}",
                uuid_text(&superblock.fsid),
                uuid_text(&label.fsid)
            ),
        });
    }
    // Both records carry the units every extent and checksum is counted in; were they to
    // disagree, one of them is damaged and every offset derived from it would be wrong.
    if (superblock.min_alloc_size, superblock.csum_block)
        != (label.min_alloc_size, label.csum_block)
    {
        return Err(StoreError::Corrupt {
            reason: format!(
                "the label says allocation unit {} and checksum block {}, the store superblock {} and {}",
                label.min_alloc_size,
                label.csum_block,
                superblock.min_alloc_size,
                superblock.csum_block
            ),
        });
    }
    let au = label.min_alloc_size as u64;
    let mut allocated: Vec<(u64, u64)> = Vec::new();
    for item in kv.scan(&KeyRange::prefix(&[PREFIX_FREELIST]), None) {
        let (key, value) = item?;
        let group = format::key_number(&key)?;
        let lanes = format::lanes_of(&value, FREELIST_LANES);
        if lanes.len() > FREELIST_LANES {
            return Err(StoreError::Corrupt {
                reason: format!("freelist key {group} has {} lanes", lanes.len()),
            });
        }
        for (unit, n) in space::runs_of_group(group, &lanes) {
            match allocated.last_mut() {
                Some((o, l)) if *o + *l == unit * au => *l += n * au,
                _ => allocated.push((unit * au, n * au)),
            }
        }
    }
    let mut refs = HashMap::new();
    for item in kv.scan(&KeyRange::prefix(&[PREFIX_REFS]), None) {
        let (key, value) = item?;
        let unit = format::key_number(&key)?;
        let count = format::lanes_of(&value, 1)[0];
        if count > 0 && count < u32::MAX as u64 {
            refs.insert(unit, count as u32);
        }
    }
    Ok(Loaded {
        superblock,
        allocated,
        refs,
    })
}

/// Applies the deferred writes a crash left in the journal, then deletes them.
/// Applies (and flushes) the deferred writes in the journal; returns how many, and the
/// journal's keys for the caller to delete. Idempotent: a crash before the deletion applies
/// them again at the next mount.
fn apply_deferred(kv: &Kv, main: &Device) -> Result<(u64, Vec<Vec<u8>>)> {
    let mut keys = Vec::new();
    let mut writes = 0;
    for item in kv.scan(&KeyRange::prefix(&[PREFIX_DEFERRED]), None) {
        let (key, value) = item?;
        for (phys, mut data) in format::decode_deferred(&value)? {
            device_io(main, true, phys, &mut data)?;
            writes += 1;
        }
        keys.push(key);
    }
    if !keys.is_empty() {
        flush_device(main)?;
    }
    Ok((writes, keys))
}

impl Store {
    /// Makes a new store on the devices `config.devices` names.
    pub fn mkfs(config: &StoreConfig) -> Result<Uuid> {
        let devices = StoreDevices::open(&config.devices)?;
        Store::mkfs_on(&devices, config)
    }

    /// Makes a new store: the main device's label, BlueFS (its DB area inside the main device
    /// when there is no DB device), and the store's records in a new RocksDB.
    pub fn mkfs_on(devices: &StoreDevices, config: &StoreConfig) -> Result<Uuid> {
        config.validate()?;
        let _claims = devices.claim(&owner_name("mkfs"))?;
        let main = &devices.slow;
        let info = main.info();
        if info.block_size as u64 > config.csum_block {
            return Err(StoreError::WrongDevice {
                device: "main",
                reason: format!(
                    "block size {} is larger than the checksum block {}",
                    info.block_size, config.csum_block
                ),
            });
        }
        let size = info.capacity_bytes();
        let au = config.min_alloc_size;
        let (db, db_offset, db_len) = match &devices.db {
            Some(d) => (d.clone(), 0, 0),
            None => {
                let len = config.db_size_for(size);
                if DB_AREA_OFFSET + len >= size {
                    return Err(StoreError::WrongDevice {
                        device: "main",
                        reason: format!(
                            "{size} bytes cannot hold a {len}-byte DB area and data (give a DB device or db_size)"
                        ),
                    });
                }
                (main.slice(DB_AREA_OFFSET, len)?, DB_AREA_OFFSET, len)
            }
        };
        let data_start = (if db_len > 0 {
            db_offset + db_len
        } else {
            LABEL_AREA
        })
        .next_multiple_of(au);
        let reserve = config.bluefs_reserve_for(size);
        if size < data_start + reserve + 64 * au {
            return Err(StoreError::WrongDevice {
                device: "main",
                reason: format!(
                    "{size} bytes is too small: data starts at {data_start}, and {reserve} bytes stay free for BlueFS"
                ),
            });
        }
        let fsid = new_uuid();
        let created_ns = now_ns();
        let label = Label {
            fsid,
            device_size: size,
            created_ns,
            db_offset,
            db_len,
            data_start,
            min_alloc_size: au as u32,
            csum_block: config.csum_block as u32,
        };
        let mut block = format::encode_label(&label);
        block.resize(format::LABEL_SIZE.max(info.block_size as usize), 0);
        device_io(main, true, 0, &mut block)?;
        let bluefs_devices = Devices {
            wal: devices.wal.clone(),
            db,
            slow: Some(main.clone()),
        };
        BlueFs::mkfs(&bluefs_devices, &config.bluefs, true)?;
        flush_device(main)?;
        let opened = open_bluefs(devices, config)?;
        let kv = Kv::open(&opened.fs, &config.kv)?;
        let mut batch = WriteBatch::new();
        batch.put(
            SUPER_KEY,
            &format::encode_superblock(&Superblock {
                fsid,
                min_alloc_size: au as u32,
                csum_block: config.csum_block as u32,
                shard_span: config.extent_shard_span as u32,
                created_ns,
            }),
        );
        batch.put(OMAP_MAX_KEY, &format::encode_u64_record(1));
        kv.submit(batch, true)?;
        drop(kv);
        opened.fs.umount()?;
        Ok(fsid)
    }

    /// Grows the store onto a main device that became larger (a grown file, volume or
    /// partition; the store must not be mounted): the label takes the device's new size, and
    /// the new space is free, since the freelist records only allocated space. One label
    /// write: a crash leaves the old size or the new one. Returns (old size, new size).
    pub fn expand_on(devices: &StoreDevices) -> Result<(u64, u64)> {
        let _claims = devices.claim(&owner_name("expand"))?;
        let main = &devices.slow;
        let mut label = read_label(main)?;
        let size = main.info().capacity_bytes();
        let old = label.device_size;
        if size < old {
            return Err(StoreError::WrongDevice {
                device: "main",
                reason: format!("shrank from {old} to {size} bytes"),
            });
        }
        if size == old {
            return Ok((old, size));
        }
        label.device_size = size;
        let mut block = format::encode_label(&label);
        block.resize(format::LABEL_SIZE.max(main.info().block_size as usize), 0);
        device_io(main, true, 0, &mut block)?;
        flush_device(main)?;
        Ok((old, size))
    }

    /// Mounts the store on the devices `config.devices` names.
    pub fn mount(config: StoreConfig) -> Result<Store> {
        let devices = StoreDevices::open(&config.devices)?;
        Store::mount_on(devices, config)
    }

    /// Mounts: label, BlueFS, the freelist (read from a read-only open of RocksDB before
    /// anything may allocate — BlueStore's order, because RocksDB's own writes may take main
    /// device space from the same allocator), RocksDB, the deferred-write journal replayed,
    /// then one reactor and shard per CPU and the kv-sync thread.
    pub fn mount_on(devices: StoreDevices, config: StoreConfig) -> Result<Store> {
        config.validate()?;
        let claims = devices.claim(&owner_name("a mounted store"))?;
        let opened = open_bluefs(&devices, &config)?;
        let Opened {
            label, fs, space, ..
        } = opened;
        let (kv, loaded, _) = open_kv(&fs, &space, &label, &config, &devices.slow)?;
        space.load_refs(loaded.refs);
        let omap_max = match kv.get(OMAP_MAX_KEY)? {
            Some(v) => format::decode_u64_record("omap id record", &v)?,
            None => 1,
        };
        let mut colls: Vec<(String, u32)> = Vec::new();
        for item in kv.scan(&KeyRange::prefix(&[PREFIX_COLL]), None) {
            let (key, value) = item?;
            let name = String::from_utf8(key[1..].to_vec()).map_err(|_| StoreError::Corrupt {
                reason: "a collection name is not UTF-8".into(),
            })?;
            colls.push((name, format::decode_coll(&value)?));
        }
        let next_cid = colls.iter().map(|c| c.1).max().map_or(1, |m| m + 1);
        let class = devices.slow.info().class;
        let params = Params {
            au: label.min_alloc_size as u64,
            csum_block: label.csum_block as u64,
            shard_span: loaded.superblock.shard_span as u64,
            deferred_size: config.deferred_size_for(class),
            cost_per_io: config.cost_per_io_for(class),
        };
        let shards = config.cpus.len();
        let mut reactor_config = ReactorConfig::new(config.cpus.clone());
        reactor_config.pin = config.pin;
        reactor_config.idle.spin = config.idle_spin;
        reactor_config.mailbox_capacity = 4096;
        let reactors = Reactors::start(reactor_config)?;
        let shared = Arc::new(Shared {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            params,
            fsid: label.fsid,
            main: devices.slow.clone(),
            kv,
            fs,
            space,
            kv_queue: KvQueue::new(shards, 8192),
            kv_perf: Mutex::new(KvPerf::default()),
            reactors: reactors.handle(),
            shards,
            throttle: Throttle::new(config.throttle_bytes),
            deferred_throttle: Throttle::new(config.throttle_deferred_bytes),
            next_cid: AtomicU32::new(next_cid),
            next_omap: AtomicU64::new(omap_max),
            omap_needed: AtomicU64::new(omap_max),
            deferred_seq: AtomicU64::new(1),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            callback_panics: AtomicU64::new(0),
            unmounting: AtomicBool::new(false),
            stopped_shards: Mutex::new(0),
            shard_stopped: Condvar::new(),
            config,
            _claims: claims,
        });
        let kv_thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("bluepoll-kv-sync".into())
                .spawn(move || kv_sync::run(shared, omap_max))
                .map_err(|e| StoreError::Failed {
                    reason: format!("cannot start the kv-sync thread: {e}"),
                })?
        };
        let store = Store {
            handle: StoreHandle {
                shared: Arc::clone(&shared),
            },
            reactors: Mutex::new(Some(reactors)),
            kv_thread: Mutex::new(Some(kv_thread)),
        };
        let mut per_shard: Vec<Vec<(String, u32)>> = vec![Vec::new(); shards];
        for c in colls {
            per_shard[store.shard_of(&c.0)].push(c);
        }
        let mut waits = Vec::new();
        for (index, colls) in per_shard.into_iter().enumerate() {
            let (tx, rx) = oneshot::channel::<Result<()>>();
            let shared = Arc::clone(&shared);
            store.shared.reactors.send(index, move |cx| {
                tx.send(shard::Shard::start(cx, index, shared, colls));
            })?;
            waits.push(rx);
        }
        for rx in waits {
            rx.wait().unwrap_or(Err(StoreError::Unmounting))?;
        }
        Ok(store)
    }

    /// A handle for other threads (and for code on the store's reactors).
    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// Waits for everything in flight (deferred writes applied and their records gone), stops
    /// the reactors and the kv-sync thread, closes RocksDB and BlueFS. An error says the store
    /// had stopped taking changes (the last committed state is what a mount will find).
    pub fn umount(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        let Some(reactors) = lock(&self.reactors).take() else {
            return Ok(());
        };
        self.handle.shared.unmounting.store(true, Ordering::SeqCst);
        let id = self.handle.shared.id;
        for index in 0..self.handle.shared.shards {
            let shared = Arc::clone(&self.handle.shared);
            let sent = self.handle.shared.reactors.send(index, move |_cx| {
                let found = shard::with_current(id, |s| s.stopping = true);
                if found.is_none() {
                    shared.shard_stopped();
                }
            });
            if sent.is_err() {
                self.handle.shared.shard_stopped();
            }
        }
        {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut stopped = lock(&self.handle.shared.stopped_shards);
            while *stopped < self.handle.shared.shards && Instant::now() < deadline {
                stopped = self
                    .shared
                    .shard_stopped
                    .wait_timeout(stopped, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        self.handle.shared.kv_queue.shutdown();
        if let Some(t) = lock(&self.kv_thread).take() {
            let _ = t.join();
        }
        drop(reactors.shutdown());
        match self.handle.shared.failure() {
            Some(reason) => Err(StoreError::Failed { reason }),
            None => Ok(()),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Space of the main device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statfs {
    pub total: u64,
    /// What objects may still take (the BlueFS reserve excluded).
    pub free: u64,
    pub reserve: u64,
    /// Where usage stands against the nearfull and full ratios and the failsafe reserve.
    pub fullness: Fullness,
    /// Main-device bytes BlueFS holds.
    pub bluefs_main_bytes: u64,
}
