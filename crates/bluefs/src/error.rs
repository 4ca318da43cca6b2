//! Errors of the BlueFS layer.

use super::alloc::AllocError;
use super::format::FormatError;
use bluepoll_nvme::{NvmeError, Opcode, Status};

#[derive(Debug, thiserror::Error)]
pub enum BlueFsError {
    #[error(transparent)]
    Device(#[from] NvmeError),

    #[error("{op} of {len} bytes at byte {offset} of the {device} device failed: {status}")]
    Io {
        device: &'static str,
        op: Opcode,
        offset: u64,
        len: u64,
        status: Status,
    },

    #[error(transparent)]
    Format(#[from] FormatError),

    /// Making the RocksDB Env over BlueFS failed.
    #[error("RocksDB environment over BlueFS: {reason}")]
    RocksEnv { reason: String },

    /// Every device the data may go to is full (the log keeps its own reserve).
    #[error("no space left for {what}: {detail}")]
    NoSpace { what: String, detail: String },

    #[error("allocator: {0}")]
    Alloc(AllocError),

    #[error("{path}: no such file or directory")]
    NotFound { path: String },

    #[error("{path}: already exists")]
    Exists { path: String },

    #[error("{path}: directory not empty")]
    NotEmpty { path: String },

    #[error("{path}: {reason}")]
    Busy { path: String, reason: &'static str },

    #[error("invalid path '{path}': {reason}")]
    InvalidPath { path: String, reason: &'static str },

    #[error("invalid BlueFS configuration: {reason}")]
    InvalidConfig { reason: String },

    /// The devices do not belong together or to BlueFS.
    #[error("{device} device: {reason}")]
    WrongDevice {
        device: &'static str,
        reason: String,
    },

    /// Replay met metadata that contradicts itself: the log is damaged past what a torn tail
    /// explains.
    #[error("corrupt metadata: {reason}")]
    Corrupt { reason: String },

    /// A log write failed; what reached the device is unknown, so nothing more is written until
    /// the filesystem is mounted again.
    #[error("BlueFS is read-only until remounted: {reason}")]
    ReadOnly { reason: String },
}

impl From<AllocError> for BlueFsError {
    fn from(e: AllocError) -> BlueFsError {
        match e {
            AllocError::NoSpace { .. } => BlueFsError::NoSpace {
                what: "an allocation".into(),
                detail: e.to_string(),
            },
            other => BlueFsError::Alloc(other),
        }
    }
}

impl BlueFsError {
    pub fn is_no_space(&self) -> bool {
        matches!(self, BlueFsError::NoSpace { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, BlueFsError::NotFound { .. })
    }
}

pub type Result<T> = std::result::Result<T, BlueFsError>;
