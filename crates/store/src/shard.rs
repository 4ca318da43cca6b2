//! A shard: the collections one reactor owns, with everything they need — cached onodes and
//! buffers, omap overlays, TransContexts and their OpSequencers, a queue pair on the main
//! device with its DMA buffers, deferred-write batches. Nothing here is shared with another
//! thread: requests arrive as reactor messages, the kv-sync thread's answers too, and the
//! shard's poller drives its queue pair (submit, then poll on the same thread).
//!
//! This file holds the state machine and the I/O; `apply.rs` the PREPARE step (applying a
//! transaction's ops), `read.rs` reads and queries.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::Shared;
use super::cache::{OmapOverlay, OnodeCache, OnodeRef};
use super::error::{Result, StoreError};
use super::format::{CollId, deferred_key, encode_deferred};
use super::kv_sync::{KvDone, KvItem, KvOps};
use super::perf::ShardPerf;
use super::read::ReadOp;
use super::txc::{IdMap, OnCommit, Txc, TxcState};
use bluepoll_nvme::{Completion, DmaBuf, DmaPool, IoCmd, Opcode, QueueFull, QueuePair, Status};
use bluepoll_reactor::{Context, Poll, Poller};

/// Bytes one data command moves at most (the large buffer size).
pub(crate) const MAX_IO: u64 = 128 << 10;
const SMALL_BUF: usize = 4096;
const SMALL_BUFS: usize = 1024;
const LARGE_BUFS: usize = 128;

/// A collection as its shard sees it.
pub(crate) struct Coll {
    pub cid: CollId,
    pub exists: bool,
    /// The OpSequencer: this collection's TransContexts in submission order.
    pub osr: VecDeque<u64>,
    /// How many at the front of `osr` were already handed to the kv-sync thread (so a
    /// completion does not walk past them again).
    pub handed: usize,
}

/// Who a data command belongs to.
#[derive(Clone, Copy, Debug)]
enum IoOwner {
    /// A copy-on-write data write of a transaction.
    TxcWrite { txc: u64 },
    /// A write of the deferred batch in flight.
    Deferred,
    /// A device read of a read request: its piece.
    Read { read: u64, piece: usize },
}

/// A data command waiting for a buffer or a queue slot.
struct IoRequest {
    owner: IoOwner,
    opcode: Opcode,
    phys: u64,
    len: u64,
    /// For writes: the bytes to write.
    data: Option<(Arc<Vec<u8>>, usize)>,
}

/// The shard's queue pair on the main device and its DMA buffers.
struct DataIo {
    qp: QueuePair,
    small: DmaPool,
    large: DmaPool,
    block_shift: u32,
    inflight: IdMap<(IoOwner, u64, u64)>,
    next_tag: u64,
    backlog: VecDeque<IoRequest>,
    completions: Vec<Completion>,
}

impl DataIo {
    fn buffer(&self, len: u64) -> Option<DmaBuf> {
        if len as usize <= SMALL_BUF {
            self.small.alloc().ok().or_else(|| self.large.alloc().ok())
        } else {
            self.large.alloc().ok()
        }
    }

    /// Hands the command to the queue pair, or keeps it for later (no buffer or queue full).
    fn submit(&mut self, req: IoRequest) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(req);
            return;
        }
        if let Err(req) = self.try_submit(req) {
            self.backlog.push_back(req);
        }
    }

    fn try_submit(&mut self, req: IoRequest) -> std::result::Result<(), IoRequest> {
        if self.qp.outstanding() >= self.qp.depth() {
            return Err(req);
        }
        let Some(mut buf) = self.buffer(req.len) else {
            return Err(req);
        };
        if let Some((data, offset)) = &req.data {
            buf[..req.len as usize].copy_from_slice(&data[*offset..*offset + req.len as usize]);
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let cmd = IoCmd {
            opcode: req.opcode,
            lba: req.phys >> self.block_shift,
            blocks: (req.len >> self.block_shift) as u32,
            buf: Some(buf),
            buf_offset: 0,
            tag,
        };
        match self.qp.submit(cmd) {
            Ok(()) => {
                self.inflight.insert(tag, (req.owner, req.phys, req.len));
                Ok(())
            }
            Err(QueueFull(_)) => Err(req),
        }
    }

    fn retry_backlog(&mut self) {
        while let Some(req) = self.backlog.pop_front() {
            if let Err(req) = self.try_submit(req) {
                self.backlog.push_front(req);
                break;
            }
        }
    }
}

/// A small queue pair with buffers of its own for the reads PREPARE makes and waits for
/// (read-modify-write of partial blocks, copies): those wait inline, as BlueStore's do, and
/// must not share buffers with the asynchronous I/O they would then wait behind.
pub(crate) struct SyncIo {
    qp: QueuePair,
    pool: DmaPool,
    block_shift: u32,
}

impl SyncIo {
    /// Reads `out.len()` bytes (block-aligned) at `phys`; the failing status on error.
    pub fn read(&mut self, phys: u64, out: &mut [u8]) -> std::result::Result<(), (u64, Status)> {
        let mut done = 0usize;
        while done < out.len() {
            let n = (out.len() - done).min(MAX_IO as usize);
            let at = phys + done as u64;
            let buf = self
                .pool
                .alloc()
                .map_err(|_| (at, Status::INTERNAL_ERROR))?;
            let cmd = IoCmd::read(
                at >> self.block_shift,
                (n >> self.block_shift) as u32,
                buf,
                0,
            );
            let c = self
                .qp
                .execute(cmd)
                .map_err(|_| (at, Status::INTERNAL_ERROR))?;
            if !c.status.is_success() {
                return Err((at, c.status));
            }
            let buf = c.buf.ok_or((at, Status::INTERNAL_ERROR))?;
            out[done..done + n].copy_from_slice(&buf[..n]);
            done += n;
        }
        Ok(())
    }
}

/// Deferred writes queued on this shard, and the batch being applied.
#[derive(Default)]
struct DeferredQueue {
    waiting: Vec<u64>,
    oldest: Option<Instant>,
    /// Reads started before the newest waiting transaction was prepared (see `flush_deferred`).
    read_fence: u64,
    in_flight: Option<DeferredBatch>,
}

struct DeferredBatch {
    txcs: Vec<u64>,
    ios: u32,
    error: Option<Status>,
}

pub(crate) struct Shard {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub colls: HashMap<String, Coll>,
    pub cid_names: HashMap<CollId, String>,
    pub cache: OnodeCache,
    pub omaps: IdMap<OmapOverlay>,
    pub txcs: IdMap<Txc>,
    next_txc: u64,
    io: DataIo,
    pub sync_io: SyncIo,
    pub reads: IdMap<ReadOp>,
    next_read: u64,
    /// Device reads in flight by sequence number, and how many were ever started.
    pub reads_in_flight: BTreeSet<u64>,
    pub reads_started: u64,
    /// Space to free once every read started before it was queued is done.
    releases: VecDeque<(u64, Vec<(u64, u64)>)>,
    deferred: DeferredQueue,
    kv_backlog: VecDeque<KvItem>,
    pub perf: ShardPerf,
    polls: u64,
    /// Set by umount: once nothing is left in flight, the poller ends.
    pub stopping: bool,
    pub stopped: bool,
}

thread_local! {
    /// The shard this reactor thread hosts (a store's reactors host one shard each).
    static CURRENT: RefCell<Option<Rc<RefCell<Shard>>>> = const { RefCell::new(None) };
}

/// Runs `f` on the shard of this thread; None when this thread hosts none (the message
/// reached a reactor of a store that is gone).
pub(crate) fn with_current<R>(store_id: u64, f: impl FnOnce(&mut Shard) -> R) -> Option<R> {
    let shard = CURRENT.with(|c| c.borrow().clone())?;
    let mut s = shard.borrow_mut();
    if s.shared.id != store_id {
        return None;
    }
    Some(f(&mut s))
}

/// Whether this thread is a reactor of store `store_id` (blocking calls would deadlock here).
pub(crate) fn on_reactor_of(store_id: u64) -> bool {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|s| s.try_borrow().map_or(true, |s| s.shared.id == store_id))
    })
}

/// The poller that drives a shard.
struct ShardPoller(Rc<RefCell<Shard>>);

impl Poller for ShardPoller {
    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll {
        let mut shard = self.0.borrow_mut();
        let busy = shard.poll();
        if shard.stopped {
            CURRENT.with(|c| *c.borrow_mut() = None);
            shard.shared.shard_stopped();
            return Poll::Done;
        }
        if busy { Poll::Busy } else { Poll::Idle }
    }
}

impl Shard {
    /// Builds the shard on its reactor and starts polling it.
    pub fn start(
        cx: &mut Context<'_>,
        index: usize,
        shared: Arc<Shared>,
        colls: Vec<(String, CollId)>,
    ) -> Result<()> {
        let main = &shared.main;
        let info = main.info();
        let block_shift = info.block_size.trailing_zeros();
        let depth = shared.config.queue_depth.min(info.max_queue_depth);
        let mut qp = main.queue_pair(depth)?;
        let large_size = MAX_IO.min(info.max_transfer_bytes as u64) as usize;
        let small = DmaPool::new(SMALL_BUF, SMALL_BUFS)?;
        let large = DmaPool::new(large_size, LARGE_BUFS)?;
        // Registration is an optimisation everywhere but the PCIe driver, which requires it.
        qp.register_pool(&small)?;
        qp.register_pool(&large)?;
        let mut sync_qp = main.queue_pair(2.min(info.max_queue_depth))?;
        let sync_pool = DmaPool::new(large_size, 2)?;
        sync_qp.register_pool(&sync_pool)?;
        let mut shard = Shard {
            index,
            colls: HashMap::new(),
            cid_names: HashMap::new(),
            cache: OnodeCache::new(shared.config.cache_bytes as usize),
            omaps: IdMap::default(),
            txcs: IdMap::default(),
            next_txc: 1,
            io: DataIo {
                qp,
                small,
                large,
                block_shift,
                inflight: IdMap::default(),
                next_tag: 1,
                backlog: VecDeque::new(),
                completions: Vec::with_capacity(256),
            },
            sync_io: SyncIo {
                qp: sync_qp,
                pool: sync_pool,
                block_shift,
            },
            reads: IdMap::default(),
            next_read: 1,
            reads_in_flight: BTreeSet::new(),
            reads_started: 0,
            releases: VecDeque::new(),
            deferred: DeferredQueue::default(),
            kv_backlog: VecDeque::new(),
            perf: ShardPerf::default(),
            polls: 0,
            stopping: false,
            stopped: false,
            shared,
        };
        for (name, cid) in colls {
            shard.cid_names.insert(cid, name.clone());
            shard.colls.insert(
                name,
                Coll {
                    cid,
                    exists: true,
                    osr: VecDeque::new(),
                    handed: 0,
                },
            );
        }
        let shard = Rc::new(RefCell::new(shard));
        CURRENT.with(|c| *c.borrow_mut() = Some(Rc::clone(&shard)));
        cx.add_poller(ShardPoller(shard));
        Ok(())
    }

    pub fn now(&self) -> Instant {
        Instant::now()
    }

    // ---- transactions in -------------------------------------------------------------------

    /// PREPARE: applies the transaction to the in-memory objects and builds its I/O and kv
    /// changes; then starts it on its way. Errors go to `on_commit` at once, with nothing of
    /// the transaction applied.
    pub fn queue_transaction(
        &mut self,
        coll: String,
        ops: Vec<super::transaction::Op>,
        cost: u64,
        queued_at: Instant,
        on_prepared: Option<OnCommit>,
        on_commit: OnCommit,
    ) {
        let refuse = |e: StoreError, on_prepared: Option<OnCommit>, on_commit: OnCommit| {
            if let Some(cb) = on_prepared {
                cb(Err(e.duplicate()));
            }
            on_commit(Err(e));
        };
        if let Some(reason) = self.shared.failure() {
            self.shared.throttle.put(cost);
            refuse(StoreError::Failed { reason }, on_prepared, on_commit);
            return;
        }
        let id = self.next_txc;
        self.next_txc += 1;
        let now = self.now();
        let nops = ops.len() as u64;
        match self.prepare(id, &coll, ops) {
            Ok(prepared) => {
                self.perf.txcs += 1;
                self.perf.ops += nops;
                // Before the transaction goes on its way, so `on_commit` can never come first.
                if let Some(cb) = on_prepared {
                    cb(Ok(()));
                }
                self.start_txc(id, coll, prepared, cost, queued_at, now, on_commit);
            }
            Err(e) => {
                self.perf.txc_errors += 1;
                if e.is_no_space() {
                    self.perf.txc_enospc += 1;
                }
                self.shared.throttle.put(cost);
                refuse(e, on_prepared, on_commit);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_txc(
        &mut self,
        id: u64,
        coll: String,
        p: super::apply::Prepared,
        cost: u64,
        queued_at: Instant,
        prepared_at: Instant,
        on_commit: OnCommit,
    ) {
        let now = self.now();
        let deferred_bytes: u64 = p.deferred.iter().map(|d| d.len as u64).sum();
        let mut kv = p.kv;
        let deferred_seq = if p.deferred.is_empty() {
            None
        } else {
            let seq = self
                .shared
                .deferred_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            kv.put(
                deferred_key(seq).to_vec(),
                encode_deferred(p.deferred.iter().map(|d| (d.phys, d.bytes()))),
            );
            Some(seq)
        };
        if deferred_bytes > 0 {
            let shared = Arc::clone(&self.shared);
            self.shared
                .deferred_throttle
                .get(deferred_bytes, false, || shared.failure().is_some());
        }
        let cid = p.cid;
        let mut txc = Txc {
            id,
            coll: cid,
            state: TxcState::Prepare,
            state_since: queued_at.min(prepared_at),
            queued_at,
            ios: 0,
            kv,
            flush_data: !p.writes.is_empty(),
            onodes: p.onodes,
            omaps: p.omaps,
            buffer_onodes: p.buffer_onodes,
            deferred: p.deferred,
            deferred_seq,
            released: p.released,
            cost,
            deferred_cost: deferred_bytes,
            on_commit: Some(on_commit),
            error: None,
        };
        let writes = p.writes;
        if writes.is_empty() {
            txc.enter(TxcState::IoDone, now, &mut self.perf);
        } else {
            txc.enter(TxcState::AioWait, now, &mut self.perf);
            for w in writes {
                let mut at = 0u64;
                while at < w.len {
                    let n = (w.len - at).min(MAX_IO);
                    txc.ios += 1;
                    self.perf.cow_writes += 1;
                    self.perf.cow_bytes += n;
                    self.io.submit(IoRequest {
                        owner: IoOwner::TxcWrite { txc: id },
                        opcode: Opcode::Write,
                        phys: w.phys + at,
                        len: n,
                        data: Some((Arc::clone(&w.data), w.data_offset + at as usize)),
                    });
                    at += n;
                }
            }
        }
        if !txc.deferred.is_empty() {
            self.perf.deferred_writes += txc.deferred.len() as u64;
            self.perf.deferred_bytes += deferred_bytes;
            self.deferred.read_fence = self.reads_started;
        }
        self.txcs.insert(id, txc);
        let c = self
            .colls
            .get_mut(&coll)
            .expect("prepare checked the collection");
        c.osr.push_back(id);
        if self.txcs[&id].state == TxcState::IoDone {
            self.advance_osr(&coll);
        }
    }

    // ---- the state machine -----------------------------------------------------------------

    /// Moves the collection's transactions that finished their I/O to the kv-sync thread, in
    /// submission order: one still writing holds back every later one.
    fn advance_osr(&mut self, coll: &str) {
        let Some(c) = self.colls.get(coll) else {
            return;
        };
        let now = self.now();
        for i in c.handed..c.osr.len() {
            let c = self.colls.get_mut(coll).expect("looked up above");
            let id = c.osr[i];
            let Some(txc) = self.txcs.get_mut(&id) else {
                c.handed = i + 1;
                continue;
            };
            match txc.state {
                TxcState::Prepare | TxcState::AioWait => break,
                TxcState::IoDone => {
                    if let Some(e) = txc.error.take() {
                        // Its data did not land: nothing after it in the collection may commit
                        // on top of it, and memory already shows it. Stop the store.
                        let reason = format!("data write failed: {e}");
                        self.shared.fail(reason);
                    }
                    txc.enter(TxcState::KvQueued, now, &mut self.perf);
                    let item = KvItem {
                        txc: id,
                        ops: std::mem::take(&mut txc.kv),
                        flush_data: txc.flush_data,
                        queued_at: now,
                    };
                    c.handed = i + 1;
                    self.push_kv(item);
                }
                _ => c.handed = i + 1,
            }
        }
    }

    fn push_kv(&mut self, item: KvItem) {
        if !self.kv_backlog.is_empty() {
            self.kv_backlog.push_back(item);
            return;
        }
        if let Err(item) = self.shared.kv_queue.push(self.index, item) {
            self.kv_backlog.push_back(item);
        }
    }

    fn retry_kv_backlog(&mut self) {
        while let Some(item) = self.kv_backlog.pop_front() {
            if let Err(item) = self.shared.kv_queue.push(self.index, item) {
                self.kv_backlog.push_front(item);
                break;
            }
        }
    }

    /// The kv-sync thread committed (or failed to commit) these transactions.
    pub fn kv_done(&mut self, done: KvDone) {
        let mut colls: Vec<String> = Vec::new();
        let now = self.now();
        for id in done.txcs {
            let Some(txc) = self.txcs.get_mut(&id) else {
                continue;
            };
            let coll = self.cid_names.get(&txc.coll).cloned();
            match txc.state {
                TxcState::KvQueued => {
                    txc.enter(TxcState::KvSubmitted, done.picked_at, &mut self.perf);
                    txc.enter(TxcState::KvDone, done.committed_at, &mut self.perf);
                    let result = done
                        .result
                        .clone()
                        .map_err(|reason| StoreError::Failed { reason });
                    let ok = result.is_ok();
                    if let Some(cb) = txc.on_commit.take() {
                        cb(result);
                    }
                    self.perf
                        .commit_latency
                        .record(now.saturating_duration_since(txc.queued_at).as_nanos() as u64);
                    self.shared.throttle.put(txc.cost);
                    if !ok {
                        // Memory shows this transaction; the kv does not hold it.
                        for o in &txc.onodes {
                            o.borrow_mut().lost_changes = true;
                        }
                    }
                    // Committed: the kv holds what the cache and overlays show.
                    let omaps = std::mem::take(&mut txc.omaps);
                    txc.onodes.clear();
                    let deferred = ok && !txc.deferred.is_empty();
                    if deferred {
                        txc.enter(TxcState::DeferredQueued, now, &mut self.perf);
                        self.deferred.waiting.push(id);
                        self.deferred.oldest.get_or_insert(now);
                    } else {
                        if !ok {
                            // Its deferred writes will never be applied by this mount.
                            self.shared.deferred_throttle.put(txc.deferred_cost);
                            txc.deferred_cost = 0;
                            // What it freed is still what the committed metadata points at
                            // (or, if RocksDB failed after the batch reached its log, may be):
                            // handing it out again would let a write in flight land on
                            // committed data. Remount rebuilds the free space from the kv.
                            txc.released.clear();
                        }
                        txc.enter(TxcState::Finishing, now, &mut self.perf);
                    }
                    for omap in omaps {
                        self.unpin_omap(omap);
                    }
                }
                TxcState::DeferredCleanup => {
                    txc.enter(TxcState::DeferredDone, done.committed_at, &mut self.perf);
                    self.shared.deferred_throttle.put(txc.deferred_cost);
                    txc.deferred_cost = 0;
                    txc.enter(TxcState::Finishing, now, &mut self.perf);
                }
                _ => {}
            }
            if let Some(c) = coll
                && !colls.contains(&c)
            {
                colls.push(c);
            }
        }
        for c in colls {
            self.finish_osr(&c);
        }
    }

    fn unpin_omap(&mut self, omap: u64) {
        if let Some(o) = self.omaps.get_mut(&omap) {
            o.pins = o.pins.saturating_sub(1);
            if o.pins == 0 {
                self.omaps.remove(&omap);
            }
        }
    }

    /// FINISHING → DONE in collection order: space a transaction freed goes back only after
    /// every earlier transaction of the collection is done (a deferred write of one of them
    /// may still target it).
    fn finish_osr(&mut self, coll: &str) {
        let now = self.now();
        loop {
            let Some(c) = self.colls.get_mut(coll) else {
                return;
            };
            let Some(&id) = c.osr.front() else {
                break;
            };
            if self
                .txcs
                .get(&id)
                .is_some_and(|t| t.state != TxcState::Finishing)
            {
                break;
            }
            c.osr.pop_front();
            c.handed = c.handed.saturating_sub(1);
            if let Some(mut txc) = self.txcs.remove(&id) {
                let released = std::mem::take(&mut txc.released);
                if !released.is_empty() {
                    self.releases.push_back((self.reads_started, released));
                }
                txc.enter(TxcState::Done, now, &mut self.perf);
            }
        }
        // A removed collection is forgotten once its last transaction is done.
        if let Some(c) = self.colls.get(coll)
            && !c.exists
            && c.osr.is_empty()
        {
            let cid = c.cid;
            self.colls.remove(coll);
            self.cid_names.remove(&cid);
        }
    }

    /// Frees space no read in flight can still be reading.
    fn release_space(&mut self) {
        if self.shared.failure().is_some() {
            // A failed store frees nothing more: after the failure, what is committed is no
            // longer known here (a failed RocksDB write may still have reached its log), so
            // no freed range is safe to reuse. Remount rebuilds the free space from the kv.
            self.releases.clear();
            return;
        }
        let oldest_read = self.reads_in_flight.first().copied();
        while let Some((started, _)) = self.releases.front() {
            // Reads numbered up to `started` were started before the space was freed.
            if oldest_read.is_some_and(|r| r <= *started) {
                break;
            }
            let (_, ranges) = self.releases.pop_front().expect("front");
            if let Err(e) = self.shared.space.release(&ranges) {
                self.shared.fail(format!("freeing space: {e}"));
            }
        }
    }

    // ---- deferred writes -------------------------------------------------------------------

    /// Applies the waiting deferred writes as one batch, sorted by device offset, the newest
    /// write of each block winning — once a batch is due and no earlier one is in flight, and
    /// once every read started before the newest of them was prepared has finished (such a
    /// read expects the data that was there before).
    fn flush_deferred(&mut self, force: bool) {
        if self.deferred.in_flight.is_some() || self.deferred.waiting.is_empty() {
            return;
        }
        let due = force
            || self.stopping
            || self.deferred.waiting.len() >= self.shared.config.deferred_batch_ops
            || self
                .deferred
                .oldest
                .is_some_and(|t| t.elapsed() >= self.shared.config.deferred_max_age)
            || self.shared.deferred_throttle.pressed();
        if !due || self.shared.failure().is_some() {
            return;
        }
        if self
            .reads_in_flight
            .first()
            .is_some_and(|&r| r <= self.deferred.read_fence)
        {
            return;
        }
        let txcs = std::mem::take(&mut self.deferred.waiting);
        self.deferred.oldest = None;
        let cb = self.shared.params.csum_block;
        // Newest write of each checksum block wins.
        let mut blocks: BTreeMap<u64, (Arc<Vec<u8>>, usize)> = BTreeMap::new();
        for id in &txcs {
            for d in &self.txcs[id].deferred {
                let mut at = 0;
                while at < d.len {
                    blocks.insert(
                        d.phys + at as u64,
                        (Arc::clone(&d.data), d.data_offset + at),
                    );
                    at += cb as usize;
                }
            }
        }
        // Runs of contiguous blocks become one command each (up to MAX_IO).
        let mut commands: Vec<(u64, Vec<u8>)> = Vec::new();
        for (phys, (data, offset)) in blocks {
            let block = &data[offset..offset + cb as usize];
            match commands.last_mut() {
                Some((start, bytes))
                    if *start + bytes.len() as u64 == phys && (bytes.len() as u64) < MAX_IO =>
                {
                    bytes.extend_from_slice(block)
                }
                _ => commands.push((phys, block.to_vec())),
            }
        }
        let now = self.now();
        for id in &txcs {
            if let Some(t) = self.txcs.get_mut(id) {
                t.enter(TxcState::DeferredQueued, now, &mut self.perf);
            }
        }
        self.perf.deferred_batches += 1;
        let ios = commands.len() as u32;
        for (phys, bytes) in commands {
            let len = bytes.len() as u64;
            self.io.submit(IoRequest {
                owner: IoOwner::Deferred,
                opcode: Opcode::Write,
                phys,
                len,
                data: Some((Arc::new(bytes), 0)),
            });
        }
        self.deferred.in_flight = Some(DeferredBatch {
            txcs,
            ios,
            error: None,
        });
    }

    /// The batch is on the device: its transactions' buffers are clean, and their journal
    /// records can go (in a commit that flushes the device first).
    fn deferred_batch_done(&mut self) {
        let Some(batch) = self.deferred.in_flight.take() else {
            return;
        };
        if let Some(status) = batch.error {
            self.shared
                .fail(format!("applying deferred writes failed: {status}"));
            return;
        }
        let now = self.now();
        for id in batch.txcs {
            let Some(txc) = self.txcs.get_mut(&id) else {
                continue;
            };
            let tag = super::apply::deferred_tag(id);
            for (o, ranges) in &txc.buffer_onodes {
                o.borrow_mut().buffers.landed(tag, ranges);
            }
            txc.enter(TxcState::DeferredCleanup, now, &mut self.perf);
            let mut ops = KvOps::default();
            if let Some(seq) = txc.deferred_seq {
                ops.delete(deferred_key(seq).to_vec());
            }
            txc.deferred.clear();
            let item = KvItem {
                txc: id,
                ops,
                flush_data: true,
                queued_at: now,
            };
            self.push_kv(item);
        }
    }

    // ---- I/O completions -------------------------------------------------------------------

    fn complete_io(&mut self, c: Completion) {
        let Some((owner, phys, len)) = self.io.inflight.remove(&c.tag) else {
            return;
        };
        if !c.status.is_success() {
            self.perf.io_errors += 1;
        }
        match owner {
            IoOwner::TxcWrite { txc } => {
                let coll = {
                    let Some(t) = self.txcs.get_mut(&txc) else {
                        return;
                    };
                    if !c.status.is_success() && t.error.is_none() {
                        t.error = Some(StoreError::Failed {
                            reason: format!(
                                "write of {len} bytes at device byte {phys}: {}",
                                c.status
                            ),
                        });
                    }
                    t.ios -= 1;
                    if t.ios > 0 {
                        return;
                    }
                    let tag = super::apply::cow_tag(t.id);
                    for (o, ranges) in &t.buffer_onodes {
                        o.borrow_mut().buffers.landed(tag, ranges);
                    }
                    t.enter(TxcState::IoDone, Instant::now(), &mut self.perf);
                    self.cid_names.get(&t.coll).cloned()
                };
                if let Some(coll) = coll {
                    self.advance_osr(&coll);
                }
            }
            IoOwner::Deferred => {
                let Some(batch) = self.deferred.in_flight.as_mut() else {
                    return;
                };
                if !c.status.is_success() {
                    batch.error = Some(c.status);
                }
                batch.ios -= 1;
                if batch.ios == 0 {
                    self.deferred_batch_done();
                }
            }
            IoOwner::Read { read, piece } => {
                self.read_piece_done(read, piece, c.status, c.buf, phys);
            }
        }
    }

    /// Queues a device read for a read request's piece.
    pub fn submit_read(&mut self, read: u64, piece: usize, phys: u64, len: u64) {
        self.perf.read_device_ios += 1;
        self.io.submit(IoRequest {
            owner: IoOwner::Read { read, piece },
            opcode: Opcode::Read,
            phys,
            len,
            data: None,
        });
    }

    pub fn next_read_id(&mut self) -> u64 {
        let id = self.next_read;
        self.next_read += 1;
        id
    }

    /// One pass of the poller; true when there was work.
    fn poll(&mut self) -> bool {
        self.polls += 1;
        let mut busy = false;
        let mut completions = std::mem::take(&mut self.io.completions);
        let polled = self.io.qp.poll(usize::MAX, &mut completions);
        busy |= !completions.is_empty();
        for c in completions.drain(..) {
            self.complete_io(c);
        }
        self.io.completions = completions;
        if let Err(e) = polled {
            self.shared
                .fail(format!("data device queue pair failed: {e}"));
            self.abandon_io();
        }
        self.io.retry_backlog();
        self.retry_kv_backlog();
        self.flush_deferred(false);
        if !self.releases.is_empty() {
            self.release_space();
        }
        if self.cache.over_target() {
            self.perf.cache_trims += self.cache.trim();
        }
        if self.stopping && self.idle() {
            self.stopped = true;
        }
        busy || self.io.qp.outstanding() > 0
            || !self.io.backlog.is_empty()
            || !self.kv_backlog.is_empty()
            || !self.deferred.waiting.is_empty()
    }

    /// Whether nothing is left in flight (umount waits for this).
    pub fn idle(&self) -> bool {
        if self.shared.failure().is_some() {
            // Nothing more will complete normally; what is in flight is abandoned.
            return self.io.qp.outstanding() == 0 || self.shared.failure().is_some();
        }
        self.txcs.is_empty()
            && self.io.inflight.is_empty()
            && self.io.backlog.is_empty()
            && self.reads.is_empty()
    }

    /// The queue pair broke: every command in flight is lost; fail their owners.
    fn abandon_io(&mut self) {
        let tags: Vec<u64> = self.io.inflight.keys().copied().collect();
        for tag in tags {
            self.complete_io(Completion {
                tag,
                status: Status::ABORT_REQUESTED,
                buf: None,
            });
        }
        while let Some(req) = self.io.backlog.pop_front() {
            let tag = self.io.next_tag;
            self.io.next_tag += 1;
            self.io.inflight.insert(tag, (req.owner, req.phys, req.len));
            self.complete_io(Completion {
                tag,
                status: Status::ABORT_REQUESTED,
                buf: None,
            });
        }
    }

    /// Counters so far.
    pub fn perf_snapshot(&self) -> ShardPerf {
        let mut p = self.perf.clone();
        p.cache_bytes = self.cache.bytes() as u64;
        p.cache_onodes = self.cache.len() as u64;
        p
    }

    /// The cached entry of an object, loading it from the kv on a miss (a missing object gets a
    /// negative entry).
    pub fn onode(&mut self, cid: CollId, name: &str) -> Result<OnodeRef> {
        if let Some(e) = self.cache.get(cid, name) {
            self.perf.onode_hits += 1;
            if e.borrow().lost_changes {
                return Err(StoreError::Failed {
                    reason: format!(
                        "object '{name}' has changes in memory that were never stored ({}); remount to read what was",
                        self.shared.failure().unwrap_or_default()
                    ),
                });
            }
            return Ok(e);
        }
        self.perf.onode_loads += 1;
        let onode = super::read::load_onode(&self.shared, cid, name)?;
        Ok(self.cache.insert(cid, name, onode))
    }

    /// The collection by name, if it exists now.
    pub fn coll_id(&self, coll: &str) -> Result<CollId> {
        match self.colls.get(coll) {
            Some(c) if c.exists => Ok(c.cid),
            _ => Err(StoreError::NoSuchCollection {
                coll: coll.to_string(),
            }),
        }
    }
}
