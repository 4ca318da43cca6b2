//! The TransContext: one transaction on its way through BlueStore's states, on its shard.
//!
//! ```text
//!  PREPARE ─ ops applied to the shard's in-memory objects, data writes built ─┐
//!  AIO_WAIT ─ copy-on-write data in flight on the main device                 │ (skipped
//!  IO_DONE ─ its data landed; waits for earlier transactions of its collection │  without I/O)
//!  KV_QUEUED ─ handed to the kv-sync thread
//!  KV_SUBMITTED ─ in the batch being flushed and committed
//!  KV_DONE ─ durable: the commit callback runs, the kv throttle is released
//!  DEFERRED_QUEUED ─ small overwrites wait to be applied in place, in batches
//!  DEFERRED_CLEANUP ─ applied; their journal records are deleted in a later commit
//!  DEFERRED_DONE
//!  FINISHING ─ freed space goes back (in collection order, after reads that may use it)
//!  DONE
//! ```

use std::sync::Arc;
use std::time::Instant;

use super::cache::OnodeRef;
use super::error::{Result, StoreError};
use super::format::CollId;
use super::kv_sync::KvOps;
use super::perf::ShardPerf;

/// A state of a transaction on its way through its shard (BlueStore's TransContext states),
/// in the order they come; [`ShardPerf::state_ns`](crate::ShardPerf::state_ns) times each.
/// Which states a transaction passes through depends on what it does: one without data writes
/// skips `AioWait`, one without deferred writes the three `Deferred*` states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TxcState {
    /// Its operations are being applied to the shard's in-memory objects and its data writes
    /// and metadata changes built (from the moment it was queued).
    Prepare,
    /// Its copy-on-write data writes are in flight on the main device.
    AioWait,
    /// Its data has landed (or it had none); it waits for the earlier transactions of its
    /// collection to reach this point, so they commit in order.
    IoDone,
    /// Handed to the kv-sync thread, waiting for a batch to take it.
    KvQueued,
    /// In the batch being committed: the main-device flush and the synced RocksDB write.
    KvSubmitted,
    /// Durable (or failed): its commit callback has run, its throttle budget is returned.
    KvDone,
    /// Its deferred writes wait to be applied in place with a batch, then are in flight.
    DeferredQueued,
    /// Its deferred writes are on the device; the deletion of their journal record waits for
    /// a commit.
    DeferredCleanup,
    /// The journal record is deleted.
    DeferredDone,
    /// Waiting for the earlier transactions of its collection to finish, after which the space
    /// it freed goes back to the allocator (once no read that started before may still use
    /// it).
    Finishing,
    /// Finished; the shard forgets it.
    Done,
}

impl TxcState {
    /// How many states there are.
    pub const COUNT: usize = 11;
    /// Every state, in order (`ALL[s as usize] == s`).
    pub const ALL: [TxcState; TxcState::COUNT] = [
        TxcState::Prepare,
        TxcState::AioWait,
        TxcState::IoDone,
        TxcState::KvQueued,
        TxcState::KvSubmitted,
        TxcState::KvDone,
        TxcState::DeferredQueued,
        TxcState::DeferredCleanup,
        TxcState::DeferredDone,
        TxcState::Finishing,
        TxcState::Done,
    ];

    /// The state's name in snake case (`"aio_wait"`, `"kv_done"`, ...), as `perf dump` shows
    /// it.
    pub fn name(self) -> &'static str {
        match self {
            TxcState::Prepare => "prepare",
            TxcState::AioWait => "aio_wait",
            TxcState::IoDone => "io_done",
            TxcState::KvQueued => "kv_queued",
            TxcState::KvSubmitted => "kv_submitted",
            TxcState::KvDone => "kv_done",
            TxcState::DeferredQueued => "deferred_queued",
            TxcState::DeferredCleanup => "deferred_cleanup",
            TxcState::DeferredDone => "deferred_done",
            TxcState::Finishing => "finishing",
            TxcState::Done => "done",
        }
    }
}

/// Called once with the transaction's outcome, on the shard's reactor.
pub type OnCommit = Box<dyn FnOnce(Result<()>) + Send>;

/// A deferred write: `len` bytes of `data` from `data_offset` go to `phys` after commit.
#[derive(Clone, Debug)]
pub(crate) struct DeferredWrite {
    pub phys: u64,
    pub data: Arc<Vec<u8>>,
    pub data_offset: usize,
    pub len: usize,
}

impl DeferredWrite {
    pub fn bytes(&self) -> &[u8] {
        &self.data[self.data_offset..self.data_offset + self.len]
    }
}

pub(crate) struct Txc {
    pub id: u64,
    pub coll: CollId,
    pub state: TxcState,
    pub state_since: Instant,
    pub queued_at: Instant,
    /// Data commands in flight (AIO_WAIT, or DEFERRED_QUEUED while being applied).
    pub ios: u32,
    pub kv: KvOps,
    pub flush_data: bool,
    /// Objects this transaction changed, pinned in the cache until KV_DONE.
    pub onodes: Vec<OnodeRef>,
    /// Omap overlays this transaction added to, released at KV_DONE.
    pub omaps: Vec<u64>,
    /// Objects holding buffers that wait for this transaction's data to land.
    pub buffer_onodes: Vec<(OnodeRef, Vec<(u64, u64)>)>,
    pub deferred: Vec<DeferredWrite>,
    /// The `D` key of the deferred writes.
    pub deferred_seq: Option<u64>,
    /// Device ranges to free at FINISHING.
    pub released: Vec<(u64, u64)>,
    pub cost: u64,
    pub deferred_cost: u64,
    pub on_commit: Option<OnCommit>,
    /// A data write failed.
    pub error: Option<StoreError>,
}

impl Txc {
    /// Moves to `to`, recording the time spent in the state it leaves.
    pub fn enter(&mut self, to: TxcState, now: Instant, perf: &mut ShardPerf) {
        let ns = now.saturating_duration_since(self.state_since).as_nanos() as u64;
        perf.state_ns[self.state as usize].record(ns);
        self.state = to;
        self.state_since = now;
    }
}

/// Hashes the store's own u64 ids (transactions, commands, reads, omaps) with one multiply:
/// they are sequential numbers nobody outside chooses, so SipHash's flood resistance buys
/// nothing on a per-I/O path.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by the store's own ids.
pub(crate) type IdMap<V> =
    std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;
