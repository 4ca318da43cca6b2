//! `fault:` — placeholder until the fault-injecting wrapper lands.

use std::sync::Arc;

use super::device::Namespace;
use super::error::NvmeError;

#[derive(Clone, Debug, Default)]
pub struct FaultConfig {}

#[derive(Clone)]
pub struct FaultControl {}

pub(crate) fn open(uri: &str, _rest: &str) -> Result<Arc<dyn Namespace>, NvmeError> {
    Err(NvmeError::uri(uri, "the fault backend is not built yet"))
}
