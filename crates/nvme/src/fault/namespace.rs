//! The `fault:` namespace, and the state it shares with its queue pairs and its
//! [`FaultControl`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::cache::Cache;
use super::control::{Counters, FaultControl};
use super::options::FaultConfig;
use super::queue_pair::FaultQueuePair;
use super::random::{Odds, Probability};
use super::rules::ArmedRule;
use super::writeback::{RunLimits, WRITEBACK_SLOTS};
use crate::device::{Device, Namespace, NamespaceInfo, QueuePairBackend};
use crate::error::NvmeError;

/// Everything the namespace and its queue pairs share.
pub(super) struct FaultShared {
    pub(super) inner: Device,
    pub(super) seed: u64,
    pub(super) volatile_cache: bool,
    pub(super) limits: RunLimits,
    pub(super) odds: Odds,
    pub(super) rules: Mutex<Vec<ArmedRule>>,
    pub(super) counters: Counters,
    pub(super) next_seq: AtomicU64,
    /// Bumped by each power cut; a queue pair made under an older value is dead.
    pub(super) generation: AtomicU64,
    /// Held by a Flush write-back and by a power cut. Lock order: `writeback`, then `cache`.
    pub(super) writeback: Mutex<()>,
    pub(super) cache: Mutex<Cache>,
}

pub(crate) struct FaultNamespace {
    info: NamespaceInfo,
    shared: Arc<FaultShared>,
}

impl FaultNamespace {
    pub(super) fn new(uri: String, inner: Device, config: &FaultConfig) -> FaultNamespace {
        let inner_info = inner.info();
        let mut info = inner_info.clone();
        info.uri = uri;
        info.model = format!("fault injector over {}", inner_info.model);
        if config.volatile_cache {
            info.ops.flush = true;
            info.volatile_write_cache = true;
        }
        let shared = FaultShared {
            limits: RunLimits::of(inner_info),
            seed: config.seed,
            volatile_cache: config.volatile_cache,
            odds: Odds {
                survive: Probability::new(config.survive),
                torn: Probability::new(config.torn),
                drop_writes: Probability::new(config.drop_writes),
                corrupt_writes: Probability::new(config.corrupt_writes),
            },
            rules: Mutex::new(
                config
                    .eio
                    .iter()
                    .map(|&rule| ArmedRule { rule, matched: 0 })
                    .collect(),
            ),
            counters: Counters::default(),
            next_seq: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            writeback: Mutex::new(()),
            cache: Mutex::new(Cache::default()),
            inner,
        };
        FaultNamespace {
            info,
            shared: Arc::new(shared),
        }
    }
}

impl Namespace for FaultNamespace {
    fn info(&self) -> &NamespaceInfo {
        &self.info
    }

    fn wrapped(&self) -> Option<&Device> {
        Some(&self.shared.inner)
    }

    fn create_queue_pair(
        self: Arc<Self>,
        depth: u32,
    ) -> Result<Box<dyn QueuePairBackend>, NvmeError> {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let inner_max = self.shared.inner.info().max_queue_depth;
        let inner_depth = depth
            .saturating_add(WRITEBACK_SLOTS)
            .min(inner_max)
            .max(depth);
        let inner = self.shared.inner.queue_pair(inner_depth)?;
        Ok(Box::new(FaultQueuePair {
            shared: Arc::clone(&self.shared),
            inner,
            generation,
            queued: Vec::with_capacity(depth as usize),
            completed: VecDeque::with_capacity(depth as usize),
            forwarded: HashMap::with_capacity(depth as usize),
            next_inner_tag: 0,
            reaped: Vec::new(),
        }))
    }

    fn fault_control(&self) -> Option<FaultControl> {
        Some(FaultControl {
            shared: Arc::clone(&self.shared),
        })
    }
}
