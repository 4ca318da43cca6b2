//! bluepoll — a userspace, polled-mode storage engine.
//!
//! Layers, bottom up (see ../shared/DESIGN.md and docs/architecture.md):
//! - [`nvme`]: devices and per-thread queue pairs (`submit` queues, `poll` rings and reaps);
//! - [`reactor`]: one pinned run-to-completion loop per core, lock-free queues between them;
//! - [`bluefs`]: the journaling filesystem RocksDB runs on, over up to three devices;
//! - [`kv`]: the metadata store, RocksDB on BlueFS;
//! - [`store`]: the object store: BlueStore's transaction pipeline on the reactors;
//! - [`image`]: RBD-style block images on the object store, with an object map;
//! - [`nbd`]: the NBD server that exports images to block clients;
//! - [`bench`]: the fio-style load harness that drives every layer.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod bluefs;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod kv;
pub mod nbd;
pub mod nvme;
pub mod rand;
pub mod reactor;
pub mod store;
pub mod sync;
pub mod sys;
pub mod units;
