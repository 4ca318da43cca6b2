//! The device layer: namespaces and per-thread queue pairs, polled by the thread that submits.
//!
//! Backends: `mem:` (RAM), `null:` (no data), `uring:` (files and block devices through
//! io_uring), `pcie:` (bluepoll's own NVMe driver over VFIO); wrappers over any of them: `fault:`,
//! which every crash test builds on, and `sim:`, a latency model for studying tier placement on
//! one machine. [`Device::slice`] carves a device into smaller ones. docs/devices.md lists their
//! URIs and parameters.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod command;
pub mod device;
pub mod dma;
pub mod error;
pub mod fault;
mod mem;
mod null;
pub mod pcie;
mod read_mostly;
pub mod sim;
mod slice;
#[cfg(feature = "spdk")]
mod spdk;
pub mod uri;
mod uring;

pub mod conformance;

pub use command::{Completion, IoCmd, Opcode, Status};
pub use device::{
    Device, DeviceClaim, DeviceClass, NamespaceInfo, QueueFull, QueuePair, QueuePairStats,
    SupportedOps,
};
pub use dma::{DMA_ALIGN, DmaBuf, DmaPool, DmaPoolConfig, DmaRegionInfo, HugePages};
pub use error::NvmeError;
pub use fault::{
    EioRule, EioTrigger, FaultConfig, FaultControl, FaultOps, FaultStats, PowerCutReport,
};
pub use sim::{FlashModel, HddModel, SimConfig, is_simulated};
