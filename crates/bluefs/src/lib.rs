//! BlueFS: a small journaling filesystem for RocksDB on bluepoll devices (docs/bluefs.md).
//!
//! Up to three devices: WAL (fastest), DB and SLOW (the main device, whose space BlueFS may take
//! from the object store on demand). All metadata lives in one log of checksummed transactions;
//! mounting replays it. The rules that keep data safe:
//!
//! - **Commit rule**: file data is written and the data devices flushed before the log
//!   transaction that makes it reachable is written and flushed.
//! - **Free after durable**: space a transaction frees goes back to the allocator only once that
//!   transaction is on disk, so a crash can never leave a committed file pointing at space that
//!   was reused.
//! - **One apply function**: the live filesystem and replay change metadata through the same
//!   `apply` of the same ops, so what mount rebuilds is what was running.
//! - **Running out of space is an error**: the log keeps a reserve on its devices so it can
//!   always commit and compact, and a full filesystem stays mountable.
//!
//! Layout: `format` (every on-disk structure, a file per structure), `alloc` (space), `io`
//! (block I/O through queue pairs polled by the calling thread), `cache` (the read cache), `fs`
//! (metadata, files, log, compaction, a file per concern). RocksDB runs on it through the
//! FileSystem shim of the `bluepoll-kv` crate, which needs only the public API here.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod alloc;
mod cache;
pub mod error;
pub mod format;
mod fs;
mod io;

pub use alloc::{AllocError, ExtentAllocator, SharedAllocator, SharedSpace};
pub use error::{BlueFsError, Result};
pub use format::{DeviceId, Extent, Uuid};
pub use fs::{
    BlueFs, BlueFsConfig, DeviceUsage, Devices, FileKind, FileReader, FileStat, FileWriter,
    FsckReport, Mounted, Usage,
};
#[cfg(test)]
mod tests;
