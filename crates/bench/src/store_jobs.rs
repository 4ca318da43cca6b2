//! The jobs that run on an object store (`ioengine=store`, `image`) or on RocksDB over the
//! kernel filesystem (`ioengine=kstore`): opening and laying out their stores before a phase,
//! starting them, and the stores' summaries and unmount after the run. This module exists only
//! with the `store` feature; store_jobs_absent.rs is its stand-in without it.

use std::collections::HashMap;
use std::sync::{Arc, mpsc};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::engine::{JobProgress, JobResult, RunControl};
use crate::options::{IoEngine, JobSpec, RunOptions};
use crate::{Instance, choose_cpus, image_engine, kstore_engine, spawn_job_thread, store_engine};

/// Checks a store, kstore or image job's options.
pub(crate) fn validate(spec: &JobSpec) -> Result<()> {
    match spec.ioengine {
        IoEngine::Store => store_engine::validate(spec),
        IoEngine::Kstore => kstore_engine::validate(spec),
        IoEngine::Image => image_engine::validate(spec),
        IoEngine::Dev | IoEngine::Bluefs => Ok(()),
    }
}

/// The run's object stores (one per distinct `filename` of store and image jobs) and where each
/// store job clone's collection is.
pub(crate) struct StoreJobs {
    stores: Vec<(String, bluepoll_store::Store)>,
    /// Job number → (shard, collection).
    placements: HashMap<usize, (usize, String)>,
}

impl StoreJobs {
    /// Opens the stores the jobs name, each with a reactor per CPU, and lays out every job's
    /// objects or image; counters are reset afterwards so they describe the jobs alone.
    pub(crate) fn open(
        instances: &[Instance],
        run: &RunOptions,
        notes: &mut Vec<String>,
    ) -> Result<StoreJobs> {
        let on_store = |e: IoEngine| matches!(e, IoEngine::Store | IoEngine::Image);
        let mut stores: Vec<(String, bluepoll_store::Store)> = Vec::new();
        for i in instances.iter().filter(|i| on_store(i.spec.ioengine)) {
            if stores.iter().any(|(u, _)| *u == i.device_uri) {
                continue;
            }
            let same: Vec<&Instance> = instances
                .iter()
                .filter(|j| j.device_uri == i.device_uri && on_store(j.spec.ioengine))
                .collect();
            let cpus = choose_cpus(&run.cpus, &same)?;
            let store = store_engine::open(&i.spec, cpus)
                .with_context(|| format!("job '{}'", i.spec.name))?;
            let info = store.main_device().info();
            if info.is_simulated() {
                notes.push(format!(
                    "{}: the main device is a simulation ({})",
                    i.device_uri, info.model
                ));
            }
            stores.push((i.device_uri.clone(), store));
        }
        // Each store job clone gets a collection on a shard (round robin), laid out before the run.
        let mut placements: HashMap<usize, (usize, String)> = HashMap::new();
        for (uri, store) in &stores {
            let handle = store.handle();
            let members = instances
                .iter()
                .filter(|i| i.spec.ioengine == IoEngine::Store && i.device_uri == *uri);
            for (k, m) in members.enumerate() {
                let shard = k % handle.shard_count();
                let coll = store_engine::collection_for(&handle, &m.spec, m.clone, shard);
                store_engine::lay_out(&handle, &m.spec, &coll, m.seed)?;
                placements.insert(m.number, (shard, coll));
            }
            for m in instances
                .iter()
                .filter(|i| i.spec.ioengine == IoEngine::Image && i.device_uri == *uri)
            {
                image_engine::lay_out(&handle, &m.spec, m.clone, m.seed)
                    .with_context(|| format!("job '{}'", m.spec.name))?;
            }
            // The counters describe the jobs, not the layout.
            handle.reset_perf()?;
        }
        Ok(StoreJobs { stores, placements })
    }

    /// Starts `m` if it is a store, image or kstore job (true), else leaves it to the caller.
    pub(crate) fn start(
        &self,
        m: &Instance,
        progress: &Arc<JobProgress>,
        control: &Arc<RunControl>,
        fs_tx: &mpsc::Sender<Result<JobResult, String>>,
    ) -> Result<bool> {
        if m.spec.ioengine == IoEngine::Kstore {
            let job = kstore_engine::KstoreJob {
                spec: Arc::clone(&m.spec),
                number: m.number,
                group: m.group,
                clone: m.clone,
                seed: m.seed,
                progress: Arc::clone(progress),
                control: Arc::clone(control),
            };
            let name = format!("kstore-{}.{}", m.spec.name, m.clone);
            spawn_job_thread(name, fs_tx.clone(), move || kstore_engine::run(job))?;
            return Ok(true);
        }
        if m.spec.ioengine == IoEngine::Image {
            let store = self.store_for(&m.device_uri);
            let job = image_engine::ImageJob {
                spec: Arc::clone(&m.spec),
                number: m.number,
                group: m.group,
                clone: m.clone,
                seed: m.seed,
                store: store.handle(),
                progress: Arc::clone(progress),
                control: Arc::clone(control),
            };
            let name = format!("image-{}.{}", m.spec.name, m.clone);
            spawn_job_thread(name, fs_tx.clone(), move || image_engine::run(job))?;
            return Ok(true);
        }
        if m.spec.ioengine == IoEngine::Store {
            let (shard, coll) = self.placements[&m.number].clone();
            let store = self.store_for(&m.device_uri);
            store_engine::start(store_engine::StoreJobPlan {
                spec: Arc::clone(&m.spec),
                number: m.number,
                group: m.group,
                clone: m.clone,
                seed: m.seed,
                store: store.handle(),
                shard,
                coll,
                progress: Arc::clone(progress),
                control: Arc::clone(control),
                results: fs_tx.clone(),
            })?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The store opened for `uri` (every store and image job's device has one, by `open`).
    fn store_for(&self, uri: &str) -> &bluepoll_store::Store {
        let (_, store) = self
            .stores
            .iter()
            .find(|(u, _)| u == uri)
            .expect("opened above");
        store
    }

    /// Each store's summary (devices, `perf dump` JSON, text), then unmounts it.
    pub(crate) fn finish(self) -> Result<Vec<(String, Value, String)>> {
        let mut store_summaries = Vec::new();
        for (uri, store) in self.stores {
            store_summaries.push(store_engine::summary(&uri, &store.handle())?);
            store
                .umount()
                .with_context(|| format!("unmounting the store on '{uri}'"))?;
        }
        Ok(store_summaries)
    }
}
