//! `uring:PATH` — placeholder until the io_uring backend lands.

use std::sync::Arc;

use super::device::{Namespace, NamespaceInfo, QueuePairBackend};
use super::error::NvmeError;

pub(crate) struct UringNamespace {
    info: NamespaceInfo,
}

impl UringNamespace {
    pub fn open(uri: &str, _rest: &str) -> Result<UringNamespace, NvmeError> {
        Err(NvmeError::uri(uri, "the io_uring backend is not built yet"))
    }
}

impl Namespace for UringNamespace {
    fn info(&self) -> &NamespaceInfo {
        &self.info
    }

    fn create_queue_pair(
        self: Arc<Self>,
        _depth: u32,
    ) -> Result<Box<dyn QueuePairBackend>, NvmeError> {
        Err(NvmeError::uri(
            &self.info.uri,
            "the io_uring backend is not built yet",
        ))
    }
}
