//! Without the `store` feature there are no store, image or kstore jobs: validation refuses
//! them by name, so the run never has a store to open, start or unmount.

use std::sync::{Arc, mpsc};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::Instance;
use crate::engine::{JobProgress, JobResult, RunControl};
use crate::options::{IoEngine, JobSpec, RunOptions};

/// Refuses a store, kstore or image job: this build has no object store.
pub(crate) fn validate(spec: &JobSpec) -> Result<()> {
    match spec.ioengine {
        IoEngine::Dev | IoEngine::Bluefs => Ok(()),
        engine => bail!(
            "job '{}': ioengine={} needs the object store, which this build of bluepoll leaves \
             out (build with the `store` feature, the default)",
            spec.name,
            engine.name()
        ),
    }
}

/// No stores.
pub(crate) struct StoreJobs;

impl StoreJobs {
    pub(crate) fn open(_: &[Instance], _: &RunOptions, _: &mut Vec<String>) -> Result<StoreJobs> {
        Ok(StoreJobs)
    }

    pub(crate) fn start(
        &self,
        _: &Instance,
        _: &Arc<JobProgress>,
        _: &Arc<RunControl>,
        _: &mpsc::Sender<Result<JobResult, String>>,
    ) -> Result<bool> {
        Ok(false)
    }

    pub(crate) fn finish(self) -> Result<Vec<(String, Value, String)>> {
        Ok(Vec::new())
    }
}
