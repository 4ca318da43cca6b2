//! Counters and latency histograms of the store: per shard (kept by its reactor, gathered on
//! demand) and of the kv-sync thread. `Store::perf_dump` returns them as JSON.

use hdrhistogram::Histogram as Hdr;
use serde_json::{Value, json};

use super::txc::TxcState;

/// An HDR histogram of nanoseconds (or counts), 3 significant digits, saturating.
///
/// It tracks values from 1 to 3.6 × 10^12 (an hour in nanoseconds): 0 is recorded as 1, and a
/// value past the top as the top.
#[derive(Clone)]
pub struct Histogram {
    hdr: Hdr<u64>,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Histogram(n={})", self.hdr.len())
    }
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            hdr: Hdr::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds"),
        }
    }
}

impl Histogram {
    /// Adds one sample of `v`.
    pub fn record(&mut self, v: u64) {
        self.hdr.saturating_record(v.max(1));
    }
    /// Adds every sample of `other` (the per-shard histograms are merged this way).
    pub fn merge(&mut self, other: &Histogram) {
        let _ = self.hdr.add(&other.hdr);
    }
    /// How many samples were recorded.
    pub fn count(&self) -> u64 {
        self.hdr.len()
    }
    /// The mean of the samples, in the unit they were recorded in (0 with none).
    pub fn mean(&self) -> f64 {
        self.hdr.mean()
    }
    /// The value at percentile `p` (0 to 100: `99.9` is the 99.9th), to 3 significant digits;
    /// 0 with no samples.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.hdr.is_empty() {
            0
        } else {
            self.hdr.value_at_quantile(p / 100.0)
        }
    }
    /// The largest sample, to 3 significant digits.
    pub fn max(&self) -> u64 {
        self.hdr.max()
    }
    /// `{"count", "mean", "p50", "p99", "p99.9", "max"}`, the mean rounded to a tenth.
    pub fn json(&self) -> Value {
        json!({
            "count": self.count(),
            "mean": (self.mean() * 10.0).round() / 10.0,
            "p50": self.percentile(50.0),
            "p99": self.percentile(99.0),
            "p99.9": self.percentile(99.9),
            "max": self.max(),
        })
    }
}

/// What one shard counts (or, from [`StoreHandle::perf`](crate::StoreHandle::perf), every shard
/// added up). Counters count from the mount or the last
/// [`reset_perf`](crate::StoreHandle::reset_perf); histograms hold nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct ShardPerf {
    /// Transactions that passed PREPARE (every operation applied) and went on to commit.
    pub txcs: u64,
    /// Transactions refused at PREPARE because an operation failed (nothing of them applied).
    /// Those refused because the store had already stopped taking changes are not counted.
    pub txc_errors: u64,
    /// Transactions refused at PREPARE for want of space (counted in `txc_errors` too).
    pub txc_enospc: u64,
    /// Operations of the transactions counted in `txcs`.
    pub ops: u64,
    /// Copy-on-write data write commands sent to the main device (one per 128 KiB or less of
    /// newly allocated space).
    pub cow_writes: u64,
    /// Bytes those commands wrote (whole allocation units: a partial unit is completed with
    /// the object's bytes around the write).
    pub cow_bytes: u64,
    /// Deferred writes journaled in commits: one per mapped stretch of a short overwrite,
    /// applied in place after the commit.
    pub deferred_writes: u64,
    /// Bytes of those writes (whole checksum blocks).
    pub deferred_bytes: u64,
    /// Batches of deferred writes applied in place (each the waiting writes of several
    /// transactions, the newest write of each block winning).
    pub deferred_batches: u64,
    /// Reads PREPARE made and waited for: the old bytes that complete the partial blocks of a
    /// write, and data a clone copies (one per stretch not found in a buffer).
    pub rmw_reads: u64,
    /// Reads of existing objects (`read`, `read_async`).
    pub reads: u64,
    /// Bytes those reads returned.
    pub read_bytes: u64,
    /// Device read commands those reads sent (one per 128 KiB or less not found in a buffer).
    pub read_device_ios: u64,
    /// Bytes of reads that fell in holes (unmapped ranges, zeroes without I/O), in whole
    /// checksum blocks.
    pub read_hole_bytes: u64,
    /// Bytes of reads served from buffers in memory (cached data, and data of transactions not
    /// on the device yet).
    pub read_cache_bytes: u64,
    /// Checksum blocks whose data did not match their checksum (in reads and in PREPARE's
    /// reads).
    pub csum_errors: u64,
    /// Commands on the shard's main-device queue pair (data writes, deferred writes, reads)
    /// that completed with an error status.
    pub io_errors: u64,
    /// Onode lookups that missed the cache and read the object's records from the kv (a
    /// missing object included: it gets a negative entry).
    pub onode_loads: u64,
    /// Onode lookups answered by the cache.
    pub onode_hits: u64,
    /// Onodes evicted from the cache to bring it under `cache_bytes`.
    pub cache_trims: u64,
    /// Gauge at the time of the snapshot: bytes the shard's cache holds (onodes and buffers).
    pub cache_bytes: u64,
    /// Gauge at the time of the snapshot: onodes the shard's cache holds (negative entries
    /// included).
    pub cache_onodes: u64,
    /// Time spent in each TransContext state (index: `TxcState as usize`), one sample each
    /// time a transaction leaves the state. A transaction with deferred writes leaves
    /// `DeferredQueued` twice: once when its batch starts, once when the batch lands.
    pub state_ns: [Histogram; TxcState::COUNT],
    /// Queue to commit callback: from the moment a transaction was queued (after any throttle
    /// wait) to the moment its shard learned the outcome of its commit, failed commits
    /// included.
    pub commit_latency: Histogram,
    /// Reads of at least one byte inside an existing object, from their start on the shard to
    /// their answer (failed ones included).
    pub read_latency: Histogram,
}

impl ShardPerf {
    /// Adds `o`'s counters, gauges and histograms to these (the store-wide view is the sum of
    /// the shards').
    pub fn merge(&mut self, o: &ShardPerf) {
        self.txcs += o.txcs;
        self.txc_errors += o.txc_errors;
        self.txc_enospc += o.txc_enospc;
        self.ops += o.ops;
        self.cow_writes += o.cow_writes;
        self.cow_bytes += o.cow_bytes;
        self.deferred_writes += o.deferred_writes;
        self.deferred_bytes += o.deferred_bytes;
        self.deferred_batches += o.deferred_batches;
        self.rmw_reads += o.rmw_reads;
        self.reads += o.reads;
        self.read_bytes += o.read_bytes;
        self.read_device_ios += o.read_device_ios;
        self.read_hole_bytes += o.read_hole_bytes;
        self.read_cache_bytes += o.read_cache_bytes;
        self.csum_errors += o.csum_errors;
        self.io_errors += o.io_errors;
        self.onode_loads += o.onode_loads;
        self.onode_hits += o.onode_hits;
        self.cache_trims += o.cache_trims;
        self.cache_bytes += o.cache_bytes;
        self.cache_onodes += o.cache_onodes;
        for (a, b) in self.state_ns.iter_mut().zip(&o.state_ns) {
            a.merge(b);
        }
        self.commit_latency.merge(&o.commit_latency);
        self.read_latency.merge(&o.read_latency);
    }

    /// The counters as JSON for `perf dump`: every counter under its field name, and the
    /// histograms as `commit_latency_ns`, `read_latency_ns` and `state_latency_ns` (one per
    /// state, by [`TxcState::name`]).
    pub fn json(&self) -> Value {
        let states: serde_json::Map<String, Value> = TxcState::ALL
            .iter()
            .map(|s| (s.name().to_string(), self.state_ns[*s as usize].json()))
            .collect();
        json!({
            "txcs": self.txcs,
            "txc_errors": self.txc_errors,
            "txc_enospc": self.txc_enospc,
            "ops": self.ops,
            "cow_writes": self.cow_writes,
            "cow_bytes": self.cow_bytes,
            "deferred_writes": self.deferred_writes,
            "deferred_bytes": self.deferred_bytes,
            "deferred_batches": self.deferred_batches,
            "rmw_reads": self.rmw_reads,
            "reads": self.reads,
            "read_bytes": self.read_bytes,
            "read_device_ios": self.read_device_ios,
            "read_hole_bytes": self.read_hole_bytes,
            "read_cache_bytes": self.read_cache_bytes,
            "csum_errors": self.csum_errors,
            "io_errors": self.io_errors,
            "onode_loads": self.onode_loads,
            "onode_hits": self.onode_hits,
            "cache_trims": self.cache_trims,
            "cache_bytes": self.cache_bytes,
            "cache_onodes": self.cache_onodes,
            "commit_latency_ns": self.commit_latency.json(),
            "read_latency_ns": self.read_latency.json(),
            "state_latency_ns": Value::Object(states),
        })
    }
}

/// What the kv-sync thread counts: its batches (each one main-device flush, if needed, and one
/// synced RocksDB write). Histograms of time hold nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct KvSyncPerf {
    /// Batches committed (or whose commit failed).
    pub batches: u64,
    /// Items those batches carried: a transaction's metadata, or the cleanup of a
    /// transaction's applied deferred writes (so a transaction with deferred writes counts
    /// twice).
    pub txcs: u64,
    /// Batches in which an item had written to the main device, so the commit asked for a
    /// flush of it first (counted also where the device has no volatile cache and the flush
    /// is skipped). `data_flushes` in JSON.
    pub flushes: u64,
    /// Items (as counted in `txcs`) per batch.
    pub batch_size: Histogram,
    /// Flush + synced RocksDB write, per batch.
    pub commit_latency: Histogram,
    /// Longest wait of a batch's items in the queue.
    pub wait_latency: Histogram,
}

impl KvSyncPerf {
    /// The counters as JSON for `perf dump` (`batches`, `txcs`, `data_flushes`, and the
    /// histograms `txcs_per_batch`, `commit_latency_ns`, `queue_wait_ns`).
    pub fn json(&self) -> Value {
        json!({
            "batches": self.batches,
            "txcs": self.txcs,
            "data_flushes": self.flushes,
            "txcs_per_batch": self.batch_size.json(),
            "commit_latency_ns": self.commit_latency.json(),
            "queue_wait_ns": self.wait_latency.json(),
        })
    }
}
