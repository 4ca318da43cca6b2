//! bluepoll — a userspace, polled-mode storage engine.
//!
//! This crate is the `bluepoll` command and a facade over the layer crates, so a program can
//! depend on one crate and name every layer as a module. Layers, bottom up (each crate depends
//! only on those listed before it; docs/architecture.md draws them):
//! - [`units`], [`rand`], [`id`], [`sync`], [`sys`] (crate `bluepoll-base`): the shared small
//!   pieces;
//! - [`nvme`] (`bluepoll-nvme`): devices and per-thread queue pairs (`submit` queues, `poll`
//!   rings and reaps), DMA pools, the `sim:` and `fault:` wrappers;
//! - [`reactor`] (`bluepoll-reactor`): one pinned run-to-completion loop per core, lock-free
//!   queues between them;
//! - [`bluefs`] (`bluepoll-bluefs`): the journaling filesystem RocksDB runs on, over up to three
//!   devices;
//! - [`kv`] (`bluepoll-kv`, feature `store`): the metadata store, RocksDB on BlueFS;
//! - [`store`] (`bluepoll-store`, feature `store`): the object store, BlueStore's transaction
//!   pipeline on the reactors;
//! - [`image`] and [`nbd`] (`bluepoll-image`, feature `store`): RBD-style block images on the
//!   object store, and the NBD server that exports them;
//! - [`bench`](mod@bench) (`bluepoll-bench`): the fio-style load harness that drives every layer.
//!
//! Without the default `store` feature nothing here builds RocksDB: the device layer, the
//! reactors, BlueFS and the bench on devices and BlueFS are what remains.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub use bluepoll_base::{id, rand, sync, sys, units};
pub use bluepoll_bench as bench;
pub use bluepoll_bluefs as bluefs;
#[cfg(feature = "store")]
pub use bluepoll_image as image;
#[cfg(feature = "store")]
pub use bluepoll_image::nbd;
#[cfg(feature = "store")]
pub use bluepoll_kv as kv;
pub use bluepoll_nvme as nvme;
pub use bluepoll_reactor as reactor;
#[cfg(feature = "store")]
pub use bluepoll_store as store;

#[cfg(feature = "store")]
#[doc(hidden)]
pub mod fuzzing;
