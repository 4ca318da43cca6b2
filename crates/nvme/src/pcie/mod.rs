//! `pcie:DOMAIN:BUS:DEV.FN` — bluepoll's own userspace NVMe driver over VFIO.
//!
//! The controller is owned from user space: its BAR0 is mapped into the process, DMA goes
//! through IOMMU mappings of the caller's buffer pools, and there are no interrupts. Each queue
//! pair is one NVMe I/O submission/completion queue pair, written and polled only by the thread
//! that owns it, so the data path takes no lock and makes no system call.
//!
//! Layout: `vfio` is the system interface (all of the module's `unsafe`), `wire` the spec's
//! structures, `controller` bring-up and admin commands, `queue` the I/O path, `selftest` the
//! checks the QEMU harness runs. docs/devices.md says how to bind a real device.

mod controller;
mod queue;
pub mod selftest;
mod vfio;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use self::controller::{Controller, PAGE_SIZE};
use self::queue::{NamespaceParams, PcieQueuePair};
use super::device::{
    DeviceClass, Namespace, NamespaceInfo, OwnerSlot, QueuePairBackend, SupportedOps,
};
use super::error::NvmeError;
use super::uri::Params;

pub use self::vfio::parse_pci_address;

/// What one device-layer command may carry; larger ones are refused, and the driver splits what
/// it accepts at the controller's own limit (MDTS).
const DEFAULT_MAX_TRANSFER: u64 = 4 << 20;

/// Commands outstanding this long with no completion at all break the queue pair.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// NLB is a 16-bit, 0-based field.
const MAX_BLOCKS_PER_COMMAND: u64 = 1 << 16;

pub(crate) struct PcieNamespace {
    info: NamespaceInfo,
    ctrl: Arc<Controller>,
    params: NamespaceParams,
    /// VFIO already keeps other processes out (a group is opened once); this keeps a second
    /// owner in this process out.
    owner: OwnerSlot,
}

impl PcieNamespace {
    /// `pcie:0000:00:04.0[?nsid=N&class=nvme|ssd|hdd&max_transfer=SIZE]`.
    pub fn open(uri: &str, rest: &str) -> Result<PcieNamespace, NvmeError> {
        let (body, mut params) = Params::parse(uri, rest)?;
        let addr = parse_pci_address(body).ok_or_else(|| {
            NvmeError::uri(
                uri,
                format!("'{body}' is not a PCI address; write it as DOMAIN:BUS:DEVICE.FUNCTION, e.g. pcie:0000:01:00.0"),
            )
        })?;
        let nsid = match params.take_str("nsid") {
            None => 1,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|&n| n != 0 && n != u32::MAX)
                .ok_or_else(|| {
                    NvmeError::uri(uri, format!("nsid '{text}' is not a namespace id"))
                })?,
        };
        let class = params.take_class()?.unwrap_or(DeviceClass::Nvme);
        let max_transfer = params
            .take_size("max_transfer")?
            .unwrap_or(DEFAULT_MAX_TRANSFER);
        params.finish()?;

        let ctrl = Controller::open(&addr)?;
        let facts = ctrl.facts().clone();
        if nsid > facts.namespaces {
            return Err(NvmeError::Controller {
                device: addr,
                reason: format!(
                    "has {} namespaces; nsid {nsid} does not exist",
                    facts.namespaces
                ),
            });
        }
        let ns = ctrl.identify_namespace(nsid)?;
        if ns.nsze == 0 {
            return Err(NvmeError::Controller {
                device: addr,
                reason: format!("namespace {nsid} is not active (size 0)"),
            });
        }
        let format = ns.current_format().ok_or_else(|| NvmeError::Controller {
            device: addr.clone(),
            reason: format!("namespace {nsid} uses an LBA format beyond the first 16"),
        })?;
        if format.ms != 0 {
            return Err(NvmeError::Unsupported {
                path: uri.into(),
                reason: format!(
                    "namespace {nsid} is formatted with {} bytes of metadata per block; \
                     bluepoll needs a format without metadata",
                    format.ms
                ),
            });
        }
        if !(9..=16).contains(&format.lbads) {
            return Err(NvmeError::Unsupported {
                path: uri.into(),
                reason: format!("block size 2^{} is outside 512..=64K", format.lbads),
            });
        }
        let block_size = 1u32 << format.lbads;
        if max_transfer < block_size as u64 || max_transfer > u32::MAX as u64 {
            return Err(NvmeError::uri(
                uri,
                format!("max_transfer {max_transfer} must lie in {block_size}..4G"),
            ));
        }
        // One command: at most MDTS, at most a first page plus one PRP list page, at most 2^16
        // blocks.
        let prp_limit = (PAGE_SIZE / 8 * PAGE_SIZE) as u64;
        let per_command = facts
            .max_transfer_bytes
            .unwrap_or(u64::MAX)
            .min(prp_limit)
            .min(MAX_BLOCKS_PER_COMMAND * block_size as u64);
        if per_command < block_size as u64 {
            return Err(NvmeError::Controller {
                device: addr,
                reason: format!(
                    "transfers at most {per_command} bytes per command (MDTS), less than one \
                     {block_size}-byte block"
                ),
            });
        }
        let max_data_blocks = (per_command / block_size as u64) as u32;
        // Write Zeroes: NLB is 16 bits, and WZSL may say less. Trim: one range per command, at
        // most DMRSL and DMSL blocks.
        let max_zeroes_blocks = facts
            .write_zeroes_limit_bytes
            .map_or(MAX_BLOCKS_PER_COMMAND, |bytes| bytes / block_size as u64)
            .clamp(1, MAX_BLOCKS_PER_COMMAND) as u32;
        let max_trim_blocks = facts
            .dsm_range_limit_blocks
            .into_iter()
            .chain(facts.dsm_total_limit_blocks)
            .fold(u32::MAX as u64, u64::min)
            .max(1) as u32;
        let oncs = facts.optional_commands;
        let trim = oncs & wire::IdentifyController::ONCS_DATASET_MANAGEMENT != 0;
        let queue_limit = ctrl.capabilities().max_queue_entries().min(1024) - 1;
        let info = NamespaceInfo {
            uri: uri.to_string(),
            model: format!(
                "{} (firmware {}, NVMe {}.{}), namespace {nsid}",
                facts.model,
                facts.firmware,
                facts.version >> 16,
                facts.version >> 8 & 0xff
            ),
            serial: facts.serial.clone(),
            block_size,
            capacity_blocks: ns.nsze,
            max_transfer_bytes: (max_transfer / block_size as u64 * block_size as u64) as u32,
            buffer_alignment: 4,
            max_queue_depth: queue_limit,
            class,
            ops: SupportedOps {
                flush: true,
                write_zeroes: oncs & wire::IdentifyController::ONCS_WRITE_ZEROES != 0,
                trim,
            },
            trim_reads_zeroes: trim && ns.deallocated_reads_zeroes(),
            volatile_write_cache: facts.volatile_write_cache,
        };
        Ok(PcieNamespace {
            info,
            ctrl: Arc::new(ctrl),
            owner: OwnerSlot::default(),
            params: NamespaceParams {
                nsid,
                block_size,
                max_data_blocks,
                max_zeroes_blocks,
                max_trim_blocks,
                command_timeout: DEFAULT_COMMAND_TIMEOUT,
            },
        })
    }

    /// The largest number of blocks one NVMe Read or Write carries (MDTS and PRP limits).
    pub fn max_blocks_per_command(&self) -> u32 {
        self.params.max_data_blocks
    }

    /// I/O queue pairs the controller granted.
    pub fn io_queue_limit(&self) -> u16 {
        self.ctrl.io_queue_limit()
    }

    pub(crate) fn raw_queue_pair(&self, depth: u32) -> Result<PcieQueuePair, NvmeError> {
        PcieQueuePair::create(Arc::clone(&self.ctrl), self.params, depth)
    }
}

impl Namespace for PcieNamespace {
    fn info(&self) -> &NamespaceInfo {
        &self.info
    }

    fn claim(&self, owner: &str) -> Result<(), NvmeError> {
        self.owner.take(&self.info.uri, owner)
    }

    fn release_claim(&self) {
        self.owner.clear();
    }

    fn create_queue_pair(
        self: Arc<Self>,
        depth: u32,
    ) -> Result<Box<dyn QueuePairBackend>, NvmeError> {
        Ok(Box::new(self.raw_queue_pair(depth)?))
    }
}
