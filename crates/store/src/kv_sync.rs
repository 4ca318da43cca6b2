//! The kv-sync thread: BlueStore's `kv_sync_thread`. It takes the transactions every shard has
//! brought to KV_QUEUED, flushes the main device once if any of them wrote data there (their
//! data must be durable before the metadata that points at it), commits all their metadata as
//! one synced RocksDB write, and sends each shard the list of its transactions that committed.
//! Deferred-write cleanups ride in the same batches: their in-place writes completed before they
//! were queued, so the same flush makes them durable before their journal records go.
//!
//! Shards hand work over through one bounded lock-free queue each (a full queue is
//! backpressure: the shard keeps the item and retries), and wake the thread only when it
//! sleeps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::Shared;
use super::perf::KvSyncPerf;
use bluepoll_base::sync::lock;
use bluepoll_kv::WriteBatch;
use bluepoll_nvme::{Device, IoCmd};

/// One change to the kv.
#[derive(Clone, Debug)]
pub(crate) enum KvOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteRange(Vec<u8>, Vec<u8>),
    /// `bluepoll.u64add` lanes.
    Merge(Vec<u8>, Vec<u8>),
}

/// The kv changes of one transaction, kept as data until the kv-sync thread puts many
/// transactions' changes into one RocksDB batch.
#[derive(Clone, Debug, Default)]
pub(crate) struct KvOps {
    ops: Vec<KvOp>,
}

impl KvOps {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(KvOp::Put(key, value));
    }
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(KvOp::Delete(key));
    }
    pub fn delete_range(&mut self, from: Vec<u8>, to: Vec<u8>) {
        self.ops.push(KvOp::DeleteRange(from, to));
    }
    pub fn merge(&mut self, key: Vec<u8>, lanes: Vec<u8>) {
        self.ops.push(KvOp::Merge(key, lanes));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn extend(&mut self, other: KvOps) {
        self.ops.extend(other.ops);
    }
    #[cfg(test)]
    pub fn merges(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.ops.iter().filter_map(|op| match op {
            KvOp::Merge(k, v) => Some((k.as_slice(), v.as_slice())),
            _ => None,
        })
    }

    /// Adds these changes to `batch` as they are.
    pub fn apply_to(self, batch: &mut WriteBatch) {
        for op in self.ops {
            match op {
                KvOp::Put(k, v) => batch.put(&k, &v),
                KvOp::Delete(k) => batch.delete(&k),
                KvOp::DeleteRange(a, b) => batch.delete_range(&a, &b),
                KvOp::Merge(k, v) => batch.merge_lanes(&k, &v),
            }
        }
    }

    /// Adds these changes to `batch`; merge operands go to `merges` instead, summed per key, so
    /// a batch carries one operand per freelist key however many transactions touched it.
    fn add_to(self, batch: &mut WriteBatch, merges: &mut BTreeMap<Vec<u8>, Vec<u64>>) {
        for op in self.ops {
            match op {
                KvOp::Put(k, v) => batch.put(&k, &v),
                KvOp::Delete(k) => batch.delete(&k),
                KvOp::DeleteRange(a, b) => batch.delete_range(&a, &b),
                KvOp::Merge(k, v) => bluepoll_kv::add_lanes(merges.entry(k).or_default(), &v),
            }
        }
    }
}

/// What a shard asks the kv-sync thread to commit.
pub(crate) struct KvItem {
    pub txc: u64,
    pub ops: KvOps,
    /// The transaction wrote to the main device (or applied deferred writes there).
    pub flush_data: bool,
    pub queued_at: Instant,
}

/// The queues into the kv-sync thread.
pub(crate) struct KvQueue {
    queues: Vec<ArrayQueue<KvItem>>,
    sleeping: AtomicBool,
    thread: std::sync::OnceLock<Thread>,
    pub stop: AtomicBool,
}

impl KvQueue {
    pub fn new(shards: usize, capacity: usize) -> KvQueue {
        KvQueue {
            queues: (0..shards).map(|_| ArrayQueue::new(capacity)).collect(),
            sleeping: AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
            stop: AtomicBool::new(false),
        }
    }

    /// Queues an item from shard `shard`; a full queue hands it back.
    pub fn push(&self, shard: usize, item: KvItem) -> Result<(), KvItem> {
        self.queues[shard].push(item)?;
        if self.sleeping.load(Ordering::SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
        Ok(())
    }

    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn is_empty(&self) -> bool {
        self.queues.iter().all(|q| q.is_empty())
    }
}

/// What the thread tells a shard after a commit.
pub(crate) struct KvDone {
    pub txcs: Vec<u64>,
    pub result: Result<(), String>,
    /// When the thread took the batch, and when it was durable.
    pub picked_at: Instant,
    pub committed_at: Instant,
}

/// Most items one batch takes from each shard's queue.
const BATCH_PER_SHARD: usize = 1024;

/// The thread's body; returns when `stop` is set and every queue is empty.
pub(crate) fn run(shared: Arc<Shared>, omap_max: u64) {
    let mut omap_written = omap_max;
    let queue = &shared.kv_queue;
    let _ = queue.thread.set(std::thread::current());
    // The thread's own queue pair for the data-device flush that precedes each commit.
    let mut flusher = Flusher::new(&shared.main);
    loop {
        let mut taken: Vec<Vec<KvItem>> = (0..queue.queues.len()).map(|_| Vec::new()).collect();
        let mut count = 0;
        for (shard, q) in queue.queues.iter().enumerate() {
            while taken[shard].len() < BATCH_PER_SHARD {
                match q.pop() {
                    Some(item) => taken[shard].push(item),
                    None => break,
                }
            }
            count += taken[shard].len();
        }
        if count == 0 {
            if queue.stop.load(Ordering::SeqCst) && queue.is_empty() {
                return;
            }
            queue.sleeping.store(true, Ordering::SeqCst);
            if queue.is_empty() && !queue.stop.load(Ordering::SeqCst) {
                std::thread::park_timeout(Duration::from_millis(50));
            }
            queue.sleeping.store(false, Ordering::SeqCst);
            continue;
        }
        let picked_at = Instant::now();
        let flush = taken.iter().flatten().any(|i| i.flush_data);
        let queued_ns: u64 = taken
            .iter()
            .flatten()
            .map(|i| picked_at.duration_since(i.queued_at).as_nanos() as u64)
            .max()
            .unwrap_or(0);
        let mut batch = WriteBatch::new();
        let mut merges = BTreeMap::new();
        let mut ids: Vec<Vec<u64>> = Vec::with_capacity(taken.len());
        for items in taken {
            let mut shard_ids = Vec::with_capacity(items.len());
            for item in items {
                shard_ids.push(item.txc);
                item.ops.add_to(&mut batch, &mut merges);
            }
            ids.push(shard_ids);
        }
        // Omap ids handed out are recorded before (or with) the first commit that uses them.
        let omap_needed = shared.omap_needed();
        if omap_needed > omap_written {
            omap_written = omap_needed.next_multiple_of(1024);
            batch.put(
                super::format::OMAP_MAX_KEY,
                &super::format::encode_u64_record(omap_written),
            );
        }
        for (key, lanes) in &merges {
            let bytes: Vec<u8> = lanes.iter().flat_map(|l| l.to_le_bytes()).collect();
            batch.merge_lanes(key, &bytes);
        }
        let result = commit(&shared, &mut flusher, flush, batch);
        let committed_at = Instant::now();
        {
            let mut perf = lock(&shared.kv_perf);
            perf.record(
                count as u64,
                queued_ns,
                committed_at.duration_since(picked_at).as_nanos() as u64,
                flush,
            );
        }
        if let Err(reason) = &result {
            shared.fail(format!("metadata commit failed: {reason}"));
        }
        for (shard, txcs) in ids.into_iter().enumerate() {
            if txcs.is_empty() {
                continue;
            }
            let done = KvDone {
                txcs,
                result: result.clone(),
                picked_at,
                committed_at,
            };
            super::deliver_kv_done(&shared, shard, done);
        }
    }
}

fn commit(
    shared: &Shared,
    flusher: &mut Flusher,
    flush: bool,
    batch: WriteBatch,
) -> Result<(), String> {
    if let Some(reason) = shared.failure() {
        return Err(reason);
    }
    if flush {
        flusher.flush(&shared.main)?;
    }
    shared
        .kv
        .submit(batch, true)
        .map_err(|e| format!("RocksDB write: {e}"))
}

/// Flushes the main device's volatile write cache, where it has one.
struct Flusher {
    qp: Option<bluepoll_nvme::QueuePair>,
    needed: bool,
}

impl Flusher {
    fn new(main: &Device) -> Flusher {
        let info = main.info();
        Flusher {
            qp: None,
            needed: info.volatile_write_cache && info.ops.flush,
        }
    }

    fn flush(&mut self, main: &Device) -> Result<(), String> {
        if !self.needed {
            return Ok(());
        }
        if self.qp.is_none() {
            self.qp = Some(
                main.queue_pair(1)
                    .map_err(|e| format!("data device queue pair: {e}"))?,
            );
        }
        let qp = self.qp.as_mut().expect("made above");
        let done = qp.execute(IoCmd::flush(0)).map_err(|e| {
            self.qp = None;
            format!("data device flush: {e}")
        });
        let done = done?;
        if done.status.is_success() {
            Ok(())
        } else {
            Err(format!("data device flush: {}", done.status))
        }
    }
}

impl KvSyncPerf {
    fn record(&mut self, txcs: u64, queued_ns: u64, commit_ns: u64, flushed: bool) {
        self.batches += 1;
        self.txcs += txcs;
        self.flushes += u64::from(flushed);
        self.batch_size.record(txcs);
        self.commit_latency.record(commit_ns);
        self.wait_latency.record(queued_ns);
    }
}
