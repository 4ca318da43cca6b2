//! One NVMe controller owned through VFIO: bring-up, the admin queue, I/O queue creation, the
//! IOVA space, and shutdown (NVMe Base 2.0 §3.5 "Controller Initialization" and §3.6
//! "Shutdown Processing").

use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Mutex, MutexGuard};

use bluepoll_base::sync::lock;
use std::time::{Duration, Instant};

use super::vfio::{DeviceMemory, VfioDevice};
use super::wire::{
    Capabilities, CompletionEntry, IdentifyController, IdentifyControllerNvm, IdentifyNamespace,
    SubmissionEntry, Wire, admin, admin_queue_attributes, cc, csts, reg,
};
use crate::command::Status;
use crate::dma::{DmaPool, DmaRegionInfo, PoolLiveness};
use crate::error::NvmeError;

/// The memory page size the driver configures (CC.MPS = 0) and builds PRPs for.
pub const PAGE_SIZE: usize = 4096;

/// Entries in the admin queues; admin commands run one at a time, so a few suffice.
const ADMIN_QUEUE_ENTRIES: u32 = 16;

/// Bounds on the wait for a normal shutdown, whatever RTD3E says (Linux waits at least 5 s too).
const MIN_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an admin command may take before the controller is declared unresponsive.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// I/O queue pairs asked for in Set Features (Number of Queues); the controller may grant fewer.
const IO_QUEUES_WANTED: u32 = 64;

/// First IOVA handed out. Below 4 GiB lies the x86 interrupt window (0xfee00000), which the
/// IOMMU reserves; everything here stays under 2^39, the narrowest address width Intel IOMMUs
/// (and QEMU's by default) translate.
const IOVA_BASE: u64 = 1 << 32;
const IOVA_LIMIT: u64 = 1 << 39;

/// What Identify told us about the controller.
#[derive(Clone, Debug)]
pub struct ControllerFacts {
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Largest transfer of one command in bytes; None when the controller sets no limit.
    pub max_transfer_bytes: Option<u64>,
    pub namespaces: u32,
    pub optional_commands: u16,
    pub volatile_write_cache: bool,
    pub version: u32,
    /// Largest Write Zeroes (WZSL), in bytes; None when unlimited or not reported.
    pub write_zeroes_limit_bytes: Option<u64>,
    /// Largest single Dataset Management range (DMRSL), and all ranges of one command (DMSL),
    /// in logical blocks; None when unlimited or not reported.
    pub dsm_range_limit_blocks: Option<u64>,
    pub dsm_total_limit_blocks: Option<u64>,
    /// How long a normal shutdown may take.
    pub shutdown_timeout: Duration,
}

/// An IOMMU mapping of a caller's DMA pool.
#[derive(Clone)]
pub struct PoolMapping {
    pub region: DmaRegionInfo,
    pub iova: u64,
    liveness: PoolLiveness,
}

struct IovaSpace {
    next: u64,
    /// Ranges given back, reused first-fit (every range is a multiple of IOVA_GRANULE).
    free: Vec<(u64, u64)>,
    pools: Vec<PoolMapping>,
}

/// IOVA ranges are whole multiples of 2 MiB, so hugepage-backed regions can use large IOMMU
/// pages and freed ranges can be reused without fragments of odd sizes.
const IOVA_GRANULE: u64 = 2 << 20;

struct AdminQueue {
    sq: DeviceMemory,
    cq: DeviceMemory,
    sq_iova: u64,
    cq_iova: u64,
    tail: u32,
    head: u32,
    phase: bool,
    next_command_id: u16,
    /// A page for Identify data.
    data: DeviceMemory,
    data_iova: u64,
}

/// Memory and doorbells of one I/O queue pair, created on the controller.
pub struct IoQueueResources {
    pub qid: u16,
    pub sq: DeviceMemory,
    pub cq: DeviceMemory,
    pub sq_iova: u64,
    pub cq_iova: u64,
    pub sq_doorbell: usize,
    pub cq_doorbell: usize,
}

pub struct Controller {
    addr: String,
    vfio: VfioDevice,
    cap: Capabilities,
    admin: Mutex<Option<AdminQueue>>,
    iova: Mutex<IovaSpace>,
    free_queue_ids: Mutex<Vec<u16>>,
    io_queues: u16,
    facts: ControllerFacts,
    /// Set once the controller is known to be broken (fatal status, a command timed out, a reset
    /// failed): every queue pair fails fast instead of waiting on it.
    failed: AtomicBool,
}

impl Controller {
    /// Opens the function at `addr` (bound to vfio-pci), resets the controller whatever state a
    /// previous owner left it in, and brings it up with an admin queue.
    pub fn open(addr: &str) -> Result<Controller, NvmeError> {
        let vfio = VfioDevice::open(addr)?;
        // A function-level reset first, when the device has one: it also stops DMA a crashed
        // previous owner left running. The controller reset below is what we rely on.
        vfio.reset();
        vfio.enable_bus_master()?;
        let cap = Capabilities(vfio.bar0().read64(reg::CAP));
        if cap.0 == u64::MAX {
            return Err(controller_error(
                addr,
                "does not respond (CAP reads all ones)",
            ));
        }
        if !cap.supports_nvm_command_set() {
            return Err(controller_error(
                addr,
                "does not support the NVM command set",
            ));
        }
        if cap.max_queue_entries() < 2 {
            return Err(controller_error(
                addr,
                "reports queues of one entry (CAP.MQES = 0), which cannot hold a command",
            ));
        }
        if cap.min_page_shift() > 12 || cap.max_page_shift() < 12 {
            return Err(controller_error(
                addr,
                format!(
                    "does not support 4 KiB memory pages (MPSMIN 2^{}, MPSMAX 2^{})",
                    cap.min_page_shift(),
                    cap.max_page_shift()
                ),
            ));
        }
        // Queue y's doorbells end at DOORBELLS + (2y + 2) * stride: the BAR bounds how many
        // queues (the admin queue is y = 0) we can ring.
        let doorbell_pairs =
            vfio.bar0().len().saturating_sub(reg::DOORBELLS) / cap.doorbell_stride() / 2;
        if doorbell_pairs < 2 {
            return Err(controller_error(
                addr,
                format!(
                    "BAR0 of {} bytes has no room for an I/O queue's doorbells (stride {})",
                    vfio.bar0().len(),
                    cap.doorbell_stride()
                ),
            ));
        }
        let io_queues_by_bar = (doorbell_pairs - 1).min(IO_QUEUES_WANTED as usize) as u32;
        let mut controller = Controller {
            addr: addr.to_string(),
            vfio,
            cap,
            admin: Mutex::new(None),
            iova: Mutex::new(IovaSpace {
                next: IOVA_BASE,
                free: Vec::new(),
                pools: Vec::new(),
            }),
            free_queue_ids: Mutex::new(Vec::new()),
            io_queues: 0,
            facts: ControllerFacts {
                serial: String::new(),
                model: String::new(),
                firmware: String::new(),
                max_transfer_bytes: None,
                namespaces: 0,
                optional_commands: 0,
                volatile_write_cache: false,
                version: 0,
                write_zeroes_limit_bytes: None,
                dsm_range_limit_blocks: None,
                dsm_total_limit_blocks: None,
                shutdown_timeout: MIN_SHUTDOWN_TIMEOUT,
            },
            failed: AtomicBool::new(false),
        };
        controller.disable()?;
        controller.enable()?;
        let ctrl = controller.identify_controller()?;
        let nvm = controller.identify_controller_nvm()?;
        let page = 1u64 << cap.min_page_shift();
        controller.facts = ControllerFacts {
            serial: ctrl.serial(),
            model: ctrl.model(),
            firmware: ctrl.firmware(),
            max_transfer_bytes: (ctrl.mdts != 0)
                .then(|| (1u64 << cap.min_page_shift()) << ctrl.mdts.min(40)),
            namespaces: ctrl.nn,
            optional_commands: ctrl.oncs,
            volatile_write_cache: ctrl.vwc & 1 == 1,
            version: controller.vfio.bar0().read32(reg::VS),
            write_zeroes_limit_bytes: nvm
                .as_ref()
                .filter(|n| n.wzsl != 0)
                .map(|n| page << n.wzsl.min(40)),
            dsm_range_limit_blocks: nvm
                .as_ref()
                .filter(|n| n.dmrsl != 0)
                .map(|n| n.dmrsl as u64),
            dsm_total_limit_blocks: nvm.as_ref().filter(|n| n.dmsl != 0).map(|n| n.dmsl),
            shutdown_timeout: Duration::from_micros(ctrl.rtd3e as u64)
                .clamp(MIN_SHUTDOWN_TIMEOUT, MAX_SHUTDOWN_TIMEOUT),
        };
        let granted = controller.set_number_of_queues(io_queues_by_bar.max(1))?;
        controller.io_queues = granted;
        *controller.free_queue_ids.get_mut().expect("fresh mutex") = (1..=granted).rev().collect();
        Ok(controller)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn facts(&self) -> &ControllerFacts {
        &self.facts
    }

    pub fn capabilities(&self) -> Capabilities {
        self.cap
    }

    pub fn io_queue_limit(&self) -> u16 {
        self.io_queues
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Controller Status, for fatal-error checks.
    pub fn status(&self) -> u32 {
        self.vfio.bar0().read32(reg::CSTS)
    }

    /// Why the controller is unusable, if its status says so.
    pub fn fatal_reason(&self) -> Option<String> {
        match self.status() {
            csts::GONE => Some("stopped responding (CSTS reads all ones)".into()),
            s if s & csts::FATAL != 0 => Some("reported a fatal error (CSTS.CFS)".into()),
            _ => None,
        }
    }

    #[inline]
    pub fn ring_doorbell(&self, offset: usize, value: u32) {
        // Entries written to queue memory must be visible to the device before it learns of them.
        fence(Ordering::SeqCst);
        self.vfio.bar0().write32(offset, value);
    }

    fn ready_timeout(&self) -> Duration {
        // CAP.TO may be 0 on a sloppy model; never wait less than a second.
        Duration::from_millis(self.cap.ready_timeout_ms().max(1000))
    }

    fn wait_status(&self, what: &str, done: impl Fn(u32) -> bool) -> Result<(), NvmeError> {
        self.wait_status_for(self.ready_timeout(), what, done)
    }

    fn wait_status_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(u32) -> bool,
    ) -> Result<(), NvmeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if status == csts::GONE {
                return Err(controller_error(
                    &self.addr,
                    format!("stopped responding while waiting to {what}"),
                ));
            }
            if done(status) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(controller_error(
                    &self.addr,
                    format!(
                        "did not {what} within {} ms; CSTS = {status:#x}",
                        timeout.as_millis()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// CC.EN = 0 and wait for CSTS.RDY = 0: the controller reset that aborts everything a previous
    /// owner left running (§3.5.2 step 1; §3.7.2 Controller Reset).
    fn disable(&self) -> Result<(), NvmeError> {
        let bar = self.vfio.bar0();
        let config = bar.read32(reg::CC);
        if config & cc::ENABLE != 0 {
            bar.write32(reg::CC, config & !cc::ENABLE);
        }
        self.wait_status("become not ready after reset", |s| s & csts::READY == 0)
    }

    /// §3.5.1 steps 3–6: admin queues, CC, wait for CSTS.RDY.
    fn enable(&mut self) -> Result<(), NvmeError> {
        let sq = DeviceMemory::new(ADMIN_QUEUE_ENTRIES as usize * 64)?;
        let cq = DeviceMemory::new(ADMIN_QUEUE_ENTRIES as usize * 16)?;
        let data = DeviceMemory::new(PAGE_SIZE)?;
        let sq_iova = self.map_device_memory(&sq)?;
        let cq_iova = self.map_device_memory(&cq)?;
        let data_iova = self.map_device_memory(&data)?;
        let bar = self.vfio.bar0();
        bar.write32(
            reg::AQA,
            admin_queue_attributes(ADMIN_QUEUE_ENTRIES, ADMIN_QUEUE_ENTRIES),
        );
        bar.write64(reg::ASQ, sq_iova);
        bar.write64(reg::ACQ, cq_iova);
        *self.admin.get_mut().expect("fresh mutex") = Some(AdminQueue {
            sq,
            cq,
            sq_iova,
            cq_iova,
            tail: 0,
            head: 0,
            phase: true,
            next_command_id: 0,
            data,
            data_iova,
        });
        let config = cc::ENABLE
            | cc::CSS_NVM
            | cc::mps(12)
            | cc::AMS_ROUND_ROBIN
            | cc::IOSQES_64
            | cc::IOCQES_16;
        bar.write32(reg::CC, config);
        self.wait_status("become ready after enable", |s| {
            s & csts::READY != 0 || s & csts::FATAL != 0
        })?;
        if let Some(reason) = self.fatal_reason() {
            return Err(controller_error(&self.addr, reason));
        }
        Ok(())
    }

    fn admin_queue(&self) -> MutexGuard<'_, Option<AdminQueue>> {
        // A panic while holding the lock cannot leave the queue half-updated in a way a later
        // command trips over worse than a timeout would, so a poisoned lock is still used.
        lock(&self.admin)
    }

    /// Runs one admin command to completion and returns its completion entry.
    fn admin_command(
        &self,
        command: &'static str,
        sqe: SubmissionEntry,
    ) -> Result<CompletionEntry, NvmeError> {
        self.admin_command_with_page(command, sqe, None)
    }

    /// As `admin_command`; with `page`, the command's data pointer is the admin data page, which
    /// is copied into `page` once the command succeeds (under the same lock, so no other admin
    /// command can overwrite it first).
    fn admin_command_with_page(
        &self,
        command: &'static str,
        mut sqe: SubmissionEntry,
        page: Option<&mut [u8]>,
    ) -> Result<CompletionEntry, NvmeError> {
        if self.is_failed() {
            return Err(controller_error(
                &self.addr,
                format!("is marked failed; {command} not sent"),
            ));
        }
        let mut guard = self.admin_queue();
        let Some(q) = guard.as_mut() else {
            return Err(controller_error(&self.addr, "has no admin queue"));
        };
        if page.is_some() {
            sqe.prp1 = q.data_iova;
        }
        let command_id = q.next_command_id;
        q.next_command_id = q.next_command_id.wrapping_add(1);
        sqe.cdw0 = (sqe.cdw0 & 0xffff) | (command_id as u32) << 16;
        q.sq.write_sqe(q.tail as usize * 64, &sqe);
        q.tail = (q.tail + 1) % ADMIN_QUEUE_ENTRIES;
        self.ring_doorbell(reg::DOORBELLS, q.tail);

        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let mut spins = 0u32;
        loop {
            let offset = q.head as usize * 16;
            if (q.cq.read_u32(offset + 12) >> 16 & 1 == 1) == q.phase {
                fence(Ordering::Acquire);
                let cqe = q.cq.read_cqe(offset);
                q.head = (q.head + 1) % ADMIN_QUEUE_ENTRIES;
                if q.head == 0 {
                    q.phase = !q.phase;
                }
                self.ring_doorbell(reg::DOORBELLS + self.cap.doorbell_stride(), q.head);
                if cqe.command_id != command_id {
                    continue; // a stale completion of a command that timed out earlier
                }
                let status = Status::from_cqe_status(cqe.status_phase);
                if !status.is_success() {
                    return Err(NvmeError::AdminCommand {
                        device: self.addr.clone(),
                        command,
                        status,
                    });
                }
                if let Some(page) = page {
                    q.data.copy_out(0, page);
                }
                return Ok(cqe);
            }
            spins += 1;
            if spins % 64 == 0 {
                if let Some(reason) = self.fatal_reason() {
                    self.mark_failed();
                    return Err(controller_error(
                        &self.addr,
                        format!("{reason} during {command}"),
                    ));
                }
                if Instant::now() > deadline {
                    self.mark_failed();
                    return Err(controller_error(
                        &self.addr,
                        format!(
                            "did not complete {command} within {} s",
                            ADMIN_TIMEOUT.as_secs()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Runs an Identify command and copies the page it returned.
    fn identify(&self, what: &'static str, cns: u32, nsid: u32) -> Result<Vec<u8>, NvmeError> {
        let mut sqe = SubmissionEntry::new(admin::IDENTIFY, 0, nsid);
        sqe.cdw10 = cns;
        let mut page = vec![0u8; PAGE_SIZE];
        self.admin_command_with_page(what, sqe, Some(&mut page))?;
        Ok(page)
    }

    fn identify_controller(&self) -> Result<IdentifyController, NvmeError> {
        let page = self.identify("Identify Controller", admin::CNS_CONTROLLER, 0)?;
        IdentifyController::from_bytes(&page)
            .ok_or_else(|| controller_error(&self.addr, "returned a short Identify page"))
    }

    /// The NVM command set's size limits, or None from a controller that predates them (it
    /// answers Invalid Field).
    fn identify_controller_nvm(&self) -> Result<Option<IdentifyControllerNvm>, NvmeError> {
        let mut sqe = SubmissionEntry::new(admin::IDENTIFY, 0, 0);
        sqe.cdw10 = admin::CNS_CONTROLLER_COMMAND_SET;
        sqe.cdw11 = 0; // CSI 0: the NVM command set
        let mut page = vec![0u8; PAGE_SIZE];
        match self.admin_command_with_page("Identify Controller (NVM)", sqe, Some(&mut page)) {
            Ok(_) => Ok(IdentifyControllerNvm::from_bytes(&page)),
            Err(NvmeError::AdminCommand { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace, NvmeError> {
        let page = self.identify("Identify Namespace", admin::CNS_NAMESPACE, nsid)?;
        IdentifyNamespace::from_bytes(&page)
            .ok_or_else(|| controller_error(&self.addr, "returned a short Identify page"))
    }

    /// Set Features – Number of Queues (§5.27.1.5): returns how many I/O queue pairs we may use.
    fn set_number_of_queues(&self, wanted: u32) -> Result<u16, NvmeError> {
        let mut sqe = SubmissionEntry::new(admin::SET_FEATURES, 0, 0);
        sqe.cdw10 = admin::FEATURE_NUMBER_OF_QUEUES;
        sqe.cdw11 = (wanted - 1) | (wanted - 1) << 16;
        let cqe = self.admin_command("Set Features (Number of Queues)", sqe)?;
        let submission = (cqe.result & 0xffff) + 1;
        let completion = (cqe.result >> 16) + 1;
        Ok(wanted
            .min(submission)
            .min(completion)
            .min(u16::MAX as u32 - 1) as u16)
    }

    /// Creates an I/O completion queue and its submission queue (§5.4, §5.5) with `entries`
    /// entries each, polled (no interrupts).
    pub fn create_io_queue(&self, entries: u32) -> Result<IoQueueResources, NvmeError> {
        let qid = lock(&self.free_queue_ids).pop().ok_or_else(|| {
            controller_error(
                &self.addr,
                format!(
                    "has no free I/O queue: it granted {} queue pairs and all are in use",
                    self.io_queues
                ),
            )
        })?;
        let result = self.create_io_queue_with_id(qid, entries);
        if result.is_err() {
            self.release_queue_id(qid);
        }
        result
    }

    fn create_io_queue_with_id(
        &self,
        qid: u16,
        entries: u32,
    ) -> Result<IoQueueResources, NvmeError> {
        let sq = DeviceMemory::new(entries as usize * 64)?;
        let cq = DeviceMemory::new(entries as usize * 16)?;
        let sq_iova = self.map_device_memory(&sq)?;
        let cq_iova = self.map_device_memory(&cq)?;
        let size_and_id = (entries - 1) << 16 | qid as u32;

        let mut create_cq = SubmissionEntry::new(admin::CREATE_IO_CQ, 0, 0);
        create_cq.prp1 = cq_iova;
        create_cq.cdw10 = size_and_id;
        create_cq.cdw11 = 1; // PC: physically contiguous; IEN = 0: no interrupts
        if let Err(e) = self.admin_command("Create I/O Completion Queue", create_cq) {
            self.unmap_device_memory(sq_iova, &sq);
            self.unmap_device_memory(cq_iova, &cq);
            return Err(e);
        }
        let mut create_sq = SubmissionEntry::new(admin::CREATE_IO_SQ, 0, 0);
        create_sq.prp1 = sq_iova;
        create_sq.cdw10 = size_and_id;
        create_sq.cdw11 = (qid as u32) << 16 | 1; // CQID, PC
        if let Err(e) = self.admin_command("Create I/O Submission Queue", create_sq) {
            let _ =
                self.delete_io_queue_half(admin::DELETE_IO_CQ, "Delete I/O Completion Queue", qid);
            self.unmap_device_memory(sq_iova, &sq);
            self.unmap_device_memory(cq_iova, &cq);
            return Err(e);
        }
        let stride = self.cap.doorbell_stride();
        Ok(IoQueueResources {
            qid,
            sq,
            cq,
            sq_iova,
            cq_iova,
            sq_doorbell: reg::DOORBELLS + 2 * qid as usize * stride,
            cq_doorbell: reg::DOORBELLS + (2 * qid as usize + 1) * stride,
        })
    }

    fn delete_io_queue_half(
        &self,
        opcode: u8,
        command: &'static str,
        qid: u16,
    ) -> Result<(), NvmeError> {
        let mut sqe = SubmissionEntry::new(opcode, 0, 0);
        sqe.cdw10 = qid as u32;
        self.admin_command(command, sqe).map(|_| ())
    }

    /// Deletes a queue pair's SQ then CQ (§5.6, §5.7). On success the controller no longer
    /// touches the queues or any buffer their commands named, and the memory is released.
    pub fn delete_io_queue(&self, queue: IoQueueResources) -> Result<(), NvmeError> {
        self.delete_io_queue_half(
            admin::DELETE_IO_SQ,
            "Delete I/O Submission Queue",
            queue.qid,
        )?;
        self.delete_io_queue_half(
            admin::DELETE_IO_CQ,
            "Delete I/O Completion Queue",
            queue.qid,
        )?;
        self.unmap_device_memory(queue.sq_iova, &queue.sq);
        self.unmap_device_memory(queue.cq_iova, &queue.cq);
        self.release_queue_id(queue.qid);
        Ok(())
    }

    fn release_queue_id(&self, qid: u16) {
        lock(&self.free_queue_ids).push(qid);
    }

    /// Stops all device activity when a queue could not be deleted: a controller reset, or if the
    /// controller does not even do that, bus mastering off. Returns whether DMA is now
    /// known to have stopped (buffers may then be reused).
    pub fn quiesce(&self) -> bool {
        self.mark_failed();
        if self.disable().is_ok() {
            return true;
        }
        self.vfio.disable_bus_master().is_ok()
    }

    fn allocate_iova(&self, len: usize) -> Result<u64, NvmeError> {
        let size = (len as u64).next_multiple_of(IOVA_GRANULE);
        let mut space = lock(&self.iova);
        if let Some(i) = space.free.iter().position(|&(_, free)| free >= size) {
            let (iova, free) = space.free[i];
            if free == size {
                space.free.swap_remove(i);
            } else {
                space.free[i] = (iova + size, free - size);
            }
            return Ok(iova);
        }
        let iova = space.next;
        if iova + size > IOVA_LIMIT {
            return Err(controller_error(
                &self.addr,
                "has no I/O virtual address space left for another DMA mapping",
            ));
        }
        space.next = iova + size;
        Ok(iova)
    }

    /// Unmaps a range and makes its addresses available again (only once the unmap worked: a
    /// range still mapped must not be handed to anyone else).
    fn release_iova(&self, iova: u64, len: usize) {
        if self.vfio.unmap_dma(iova, len).is_ok() {
            let size = (len as u64).next_multiple_of(IOVA_GRANULE);
            lock(&self.iova).free.push((iova, size));
        }
    }

    pub fn map_device_memory(&self, memory: &DeviceMemory) -> Result<u64, NvmeError> {
        let iova = self.allocate_iova(memory.len())?;
        self.vfio.map_dma(memory.addr(), iova, memory.len())?;
        Ok(iova)
    }

    /// Removes the mapping before the memory is freed, so the device can no longer reach it.
    pub fn unmap_device_memory(&self, iova: u64, memory: &DeviceMemory) {
        // A failed unmap leaves the pages pinned by VFIO until the device closes; nothing else
        // can then be given that memory, so it is safe, just not returned early.
        self.release_iova(iova, memory.len());
    }

    /// Maps a caller's pool for DMA (once per pool; later calls return the same mapping), and
    /// releases the mappings of pools that no longer exist.
    pub fn map_pool(&self, pool: &DmaPool) -> Result<PoolMapping, NvmeError> {
        let region = pool.region();
        let mut space = lock(&self.iova);
        if let Some(found) = space.pools.iter().find(|m| m.region.id == region.id) {
            return Ok(found.clone());
        }
        let (alive, dead): (Vec<_>, Vec<_>) = std::mem::take(&mut space.pools)
            .into_iter()
            .partition(|m| m.liveness.is_alive());
        space.pools = alive;
        drop(space);
        for gone in dead {
            self.release_iova(gone.iova, gone.region.len);
        }
        let iova = self.allocate_iova(region.len)?;
        self.vfio.map_dma(region.addr, iova, region.len)?;
        let mapping = PoolMapping {
            region,
            iova,
            liveness: pool.liveness(),
        };
        lock(&self.iova).pools.push(mapping.clone());
        Ok(mapping)
    }

    /// The mapping of the region with this id, if some queue pair registered its pool.
    pub fn find_pool(&self, region_id: u64) -> Option<PoolMapping> {
        let space = lock(&self.iova);
        space
            .pools
            .iter()
            .find(|m| m.region.id == region_id)
            .cloned()
    }

    /// Normal shutdown (§3.6.1): CC.SHN = 01b, wait for CSTS.SHST = 10b, then disable.
    fn shutdown(&self) -> Result<(), NvmeError> {
        let bar = self.vfio.bar0();
        let config = bar.read32(reg::CC);
        bar.write32(reg::CC, (config & !cc::SHN_MASK) | cc::SHN_NORMAL);
        self.wait_status_for(
            self.facts.shutdown_timeout,
            "finish shutdown processing",
            |s| s & csts::SHST_MASK == csts::SHST_COMPLETE,
        )?;
        self.disable()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // Every queue pair holds an Arc to the controller, so all I/O queues are deleted by now.
        let stopped = !self.is_failed() && self.shutdown().is_ok();
        if !stopped && !self.quiesce() {
            // The device may still write the admin queue memory. Keep it: VFIO keeps those pages
            // pinned until the container closes, and leaking them is better than reusing them.
            if let Some(q) = self.admin.get_mut().ok().and_then(Option::take) {
                std::mem::forget(q);
            }
            return;
        }
        if let Some(q) = self.admin.get_mut().ok().and_then(Option::take) {
            self.unmap_device_memory(q.sq_iova, &q.sq);
            self.unmap_device_memory(q.cq_iova, &q.cq);
            self.unmap_device_memory(q.data_iova, &q.data);
        }
    }
}

fn controller_error(addr: &str, reason: impl Into<String>) -> NvmeError {
    NvmeError::Controller {
        device: addr.to_string(),
        reason: reason.into(),
    }
}
