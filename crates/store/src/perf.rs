//! Counters and latency histograms of the store: per shard (kept by its reactor, gathered on
//! demand) and of the kv-sync thread. `Store::perf_dump` returns them as JSON.

use hdrhistogram::Histogram as Hdr;
use serde_json::{Value, json};

use super::txc::TxcState;

/// An HDR histogram of nanoseconds (or counts), 3 significant digits, saturating.
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
    pub fn record(&mut self, v: u64) {
        self.hdr.saturating_record(v.max(1));
    }
    pub fn merge(&mut self, other: &Histogram) {
        let _ = self.hdr.add(&other.hdr);
    }
    pub fn count(&self) -> u64 {
        self.hdr.len()
    }
    pub fn mean(&self) -> f64 {
        self.hdr.mean()
    }
    pub fn percentile(&self, p: f64) -> u64 {
        if self.hdr.is_empty() {
            0
        } else {
            self.hdr.value_at_quantile(p / 100.0)
        }
    }
    pub fn max(&self) -> u64 {
        self.hdr.max()
    }
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

/// What one shard counts.
#[derive(Clone, Debug, Default)]
pub struct ShardPerf {
    pub txcs: u64,
    pub txc_errors: u64,
    /// Transactions refused at PREPARE for want of space (counted in `txc_errors` too).
    pub txc_enospc: u64,
    pub ops: u64,
    pub cow_writes: u64,
    pub cow_bytes: u64,
    pub deferred_writes: u64,
    pub deferred_bytes: u64,
    pub deferred_batches: u64,
    pub rmw_reads: u64,
    pub reads: u64,
    pub read_bytes: u64,
    pub read_device_ios: u64,
    pub read_hole_bytes: u64,
    pub read_cache_bytes: u64,
    pub csum_errors: u64,
    pub io_errors: u64,
    pub onode_loads: u64,
    pub onode_hits: u64,
    pub cache_trims: u64,
    /// Gauges at the time of the snapshot: cache memory and onodes cached.
    pub cache_bytes: u64,
    pub cache_onodes: u64,
    /// Time spent in each TransContext state (index: `TxcState as usize`).
    pub state_ns: [Histogram; TxcState::COUNT],
    /// Queue to commit callback.
    pub commit_latency: Histogram,
    pub read_latency: Histogram,
}

impl ShardPerf {
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

/// What the kv-sync thread counts.
#[derive(Clone, Debug, Default)]
pub struct KvSyncPerf {
    pub batches: u64,
    pub txcs: u64,
    pub flushes: u64,
    /// Transactions per batch.
    pub batch_size: Histogram,
    /// Flush + synced RocksDB write, per batch.
    pub commit_latency: Histogram,
    /// Longest wait of a batch's items in the queue.
    pub wait_latency: Histogram,
}

impl KvSyncPerf {
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
