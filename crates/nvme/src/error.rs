//! Errors of the device layer.
//!
//! A command that fails is not an error here: it completes with an NVMe [`Status`]. These are the
//! failures around commands — opening a device, creating queue pairs, a queue pair that broke.

use std::io;
use std::path::PathBuf;

use super::command::{Opcode, Status};

#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error("invalid device URI '{uri}': {reason}")]
    InvalidUri { uri: String, reason: String },

    #[error("unknown device scheme '{scheme}' in '{uri}' (expected one of: {expected})")]
    UnknownScheme {
        scheme: String,
        uri: String,
        expected: &'static str,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },

    #[error("{uri} is in use: {holder} holds it (one owner at a time)")]
    Busy { uri: String, holder: String },

    #[error("cannot slice bytes [{offset}+{len}] of {uri}: {reason}")]
    InvalidSlice {
        uri: String,
        offset: u64,
        len: u64,
        reason: String,
    },

    #[error("queue depth {requested} is outside 1..={max} for {uri}")]
    InvalidQueueDepth {
        uri: String,
        requested: u32,
        max: u32,
    },

    #[error("DMA buffer pool exhausted: all {count} buffers of {buf_size} bytes are in use")]
    PoolExhausted { count: usize, buf_size: usize },

    #[error("invalid DMA pool request: {reason}")]
    InvalidPool { reason: String },

    #[error("{op} of {blocks} blocks at LBA {lba} failed: {status}")]
    Command {
        op: Opcode,
        lba: u64,
        blocks: u32,
        status: Status,
    },

    #[error("queue pair on {uri} is unusable: {reason}")]
    QueuePairFailed { uri: String, reason: String },

    #[error("the device lost power; queue pairs created before the power cut are dead")]
    PowerLost,

    #[error("pcie:{device}: {reason}")]
    Vfio { device: String, reason: String },

    #[error("pcie:{device}: controller {reason}")]
    Controller { device: String, reason: String },

    /// The SPDK backend (or its absence from this build).
    #[error("spdk:{target}: {reason}")]
    Spdk { target: String, reason: String },

    #[error("pcie:{device}: admin command {command} failed: {status}")]
    AdminCommand {
        device: String,
        command: &'static str,
        status: Status,
    },
}

impl NvmeError {
    pub(crate) fn uri(uri: &str, reason: impl Into<String>) -> NvmeError {
        NvmeError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> NvmeError {
        NvmeError::Io {
            path: path.into(),
            source,
        }
    }
}
