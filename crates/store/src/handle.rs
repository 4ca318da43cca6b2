//! What a [`StoreHandle`] does: transactions queued, reads and queries, each sent as a message
//! to the reactor of the shard that owns the collection; and the store-wide views (space,
//! counters, the RocksDB and BlueFS under it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::perf::KvSyncPerf as KvPerf;
use super::{
    Commit, Fullness, KvSyncPerf, ObjectExtent, ObjectStat, Op, Result, ShardPerf, StoreError,
    StoreHandle, Transaction, oneshot, shard, txc,
};
use bluepoll_base::id::Uuid;
use bluepoll_base::sync::lock;
use bluepoll_bluefs::BlueFs;
use bluepoll_nvme::Device;
use bluepoll_reactor::ReactorHandle;

impl StoreHandle {
    /// The store's uuid, made at mkfs (in the label and the kv superblock).
    pub fn fsid(&self) -> Uuid {
        self.shared.fsid
    }

    /// The shard (and reactor) a collection lives on.
    pub fn shard_of(&self, coll: &str) -> usize {
        (fnv1a(coll.as_bytes()) % self.shared.shards as u64) as usize
    }

    /// How many shards (and reactors) the store runs: one per CPU of `StoreConfig::cpus`.
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

    /// The object's size and space, as every transaction queued before this call leaves it.
    /// Fails with [`StoreError::NoSuchCollection`] or [`StoreError::NoSuchObject`].
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

    /// Whether the object exists, as every transaction queued before this call leaves it. Fails
    /// with [`StoreError::NoSuchCollection`] when the collection does not exist.
    pub fn exists(&self, coll: &str, obj: &str) -> Result<bool> {
        let (c, o) = (coll.to_string(), obj.to_string());
        self.call(coll, "exists", move |s| s.exists(&c, &o))
    }

    /// The value of the object's attribute `name`. Fails with [`StoreError::NoSuchAttr`] when
    /// the object has no such attribute, and with [`StoreError::NoSuchCollection`] or
    /// [`StoreError::NoSuchObject`].
    pub fn getattr(&self, coll: &str, obj: &str, name: &str) -> Result<Vec<u8>> {
        let (c, o, n) = (coll.to_string(), obj.to_string(), name.to_string());
        self.call(coll, "getattr", move |s| s.getattr(&c, &o, &n))
    }

    /// Every attribute of the object, by name. Fails with [`StoreError::NoSuchCollection`] or
    /// [`StoreError::NoSuchObject`].
    pub fn getattrs(&self, coll: &str, obj: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let (c, o) = (coll.to_string(), obj.to_string());
        self.call(coll, "getattrs", move |s| s.getattrs(&c, &o))
    }

    /// The object's omap header; None when it has none (or no omap). Fails with
    /// [`StoreError::NoSuchCollection`] or [`StoreError::NoSuchObject`].
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

    /// Whether the collection exists, as every transaction queued before this call leaves it.
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

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Space of the main device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statfs {
    /// Bytes of the main device, as its label records (the label and any DB area included).
    pub total: u64,
    /// What objects may still take (the BlueFS reserve excluded).
    pub free: u64,
    /// Bytes kept free for BlueFS (`bluefs_reserve`), which object data never takes.
    pub reserve: u64,
    /// Where usage stands against the nearfull and full ratios and the failsafe reserve.
    pub fullness: Fullness,
    /// Main-device bytes BlueFS holds.
    pub bluefs_main_bytes: u64,
}
