//! One I/O queue pair on the controller, driven by the thread that owns it.
//!
//! `queue` only records a command. `poll` writes every recorded command's entries into the
//! submission queue and rings its tail doorbell once, then reaps the completion queue by phase
//! tag and writes its head doorbell once. A command larger than the controller's transfer limit
//! becomes several NVMe commands; its completion is returned when the last of them completes,
//! carrying the first error any of them got.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use super::controller::{Controller, IoQueueResources, PAGE_SIZE, PoolMapping};
use super::vfio::DeviceMemory;
use super::wire::{DsmRange, SubmissionEntry, io};
use crate::command::{Completion, IoCmd, Opcode, Status};
use crate::device::{PollResult, QueuePairBackend, QueuePairStats};
use crate::dma::{DmaBuf, DmaPool};
use crate::error::NvmeError;

/// PRP entries in one list page; one page is all a command gets, which caps a command at
/// 512 pages past its first (2 MiB and a bit).
const PRP_ENTRIES_PER_PAGE: usize = PAGE_SIZE / 8;

/// Idle polls between checks of the controller's health (an MMIO read is not free).
const HEALTH_CHECK_INTERVAL: u32 = 4096;

/// What the queue pair needs to know about its namespace.
#[derive(Clone, Copy, Debug)]
pub struct NamespaceParams {
    pub nsid: u32,
    pub block_size: u32,
    /// Largest Read/Write one NVMe command carries, in blocks (MDTS, PRP list and NLB limits).
    pub max_data_blocks: u32,
    /// Largest Write Zeroes (NLB, WZSL) and trim (DMRSL, DMSL) of one command, in blocks.
    pub max_zeroes_blocks: u32,
    pub max_trim_blocks: u32,
    /// How long outstanding commands may go without any completion before the queue pair gives up.
    pub command_timeout: Duration,
}

struct Request {
    cmd: IoCmd,
    /// IOVA of the first data byte (Read/Write).
    data_iova: u64,
    /// Blocks already turned into NVMe commands.
    issued_blocks: u32,
    /// NVMe commands issued and not yet completed.
    in_flight: u32,
    status: Status,
}

impl Request {
    fn fully_issued(&self) -> bool {
        self.issued_blocks >= self.cmd.blocks || self.cmd.opcode == Opcode::Flush
    }
}

/// A request slot; `free` chains unused ones.
enum RequestSlot {
    Used(Request),
    Free(Option<u32>),
}

/// A region's mapping, cached per queue pair so the hot path needs no lock.
#[derive(Clone, Copy)]
struct RegionMapping {
    id: u64,
    addr: usize,
    len: usize,
    iova: u64,
}

impl From<&PoolMapping> for RegionMapping {
    fn from(m: &PoolMapping) -> RegionMapping {
        RegionMapping {
            id: m.region.id,
            addr: m.region.addr,
            len: m.region.len,
            iova: m.iova,
        }
    }
}

pub(crate) struct PcieQueuePair {
    ctrl: Arc<Controller>,
    ns: NamespaceParams,
    queue: Option<IoQueueResources>,
    entries: u32,
    sq_tail: u32,
    cq_head: u32,
    phase: bool,
    /// One PRP list / DSM range page per command identifier.
    command_pages: DeviceMemory,
    command_pages_iova: u64,
    /// Request index for each command identifier in use.
    command_owner: Vec<Option<u32>>,
    free_command_ids: Vec<u16>,
    requests: Vec<RequestSlot>,
    free_request: Option<u32>,
    outstanding_requests: usize,
    /// Requests with NVMe commands still to issue, oldest first.
    pending: VecDeque<u32>,
    /// Commands refused before reaching the device, returned at the next poll.
    refused: VecDeque<Completion>,
    regions: Vec<RegionMapping>,
    broken: Option<String>,
    /// Polls in a row that reaped nothing while requests were outstanding.
    idle_polls: u32,
    /// When a health check first saw the queue pair stuck (no completion since): the clock is
    /// read only there, never per I/O.
    stuck_since: Option<Instant>,
}

impl PcieQueuePair {
    /// Creates the queue pair on the controller with room for `depth` requests.
    pub fn create(
        ctrl: Arc<Controller>,
        ns: NamespaceParams,
        depth: u32,
    ) -> Result<PcieQueuePair, NvmeError> {
        // A queue of N entries holds N - 1 commands. Leave room for split commands without making
        // tiny queues: at least 32 entries, at most what the controller allows.
        let entries = (depth + 1)
            .next_power_of_two()
            .clamp(32, 1024)
            .min(ctrl.capabilities().max_queue_entries());
        let command_ids = entries - 1;
        let command_pages = DeviceMemory::new(command_ids as usize * PAGE_SIZE)?;
        let command_pages_iova = ctrl.map_device_memory(&command_pages)?;
        let queue = match ctrl.create_io_queue(entries) {
            Ok(queue) => queue,
            Err(e) => {
                ctrl.unmap_device_memory(command_pages_iova, &command_pages);
                return Err(e);
            }
        };
        Ok(PcieQueuePair {
            ctrl,
            ns,
            queue: Some(queue),
            entries,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            command_pages,
            command_pages_iova,
            command_owner: vec![None; command_ids as usize],
            free_command_ids: (0..command_ids as u16).rev().collect(),
            requests: Vec::with_capacity(depth as usize),
            free_request: None,
            outstanding_requests: 0,
            pending: VecDeque::with_capacity(depth as usize),
            refused: VecDeque::new(),
            regions: Vec::new(),
            broken: None,
            idle_polls: 0,
            stuck_since: None,
        })
    }

    /// The IOVA of `len` bytes at `offset` into `buf`, if its pool is mapped.
    fn data_iova(&mut self, buf: &DmaBuf, offset: usize, len: usize) -> Option<u64> {
        let id = buf.region_id();
        let mapping = match self.regions.iter().find(|r| r.id == id) {
            Some(m) => *m,
            None => {
                let found = RegionMapping::from(&self.ctrl.find_pool(id)?);
                self.regions.push(found);
                found
            }
        };
        let start = buf.addr() + offset;
        (start >= mapping.addr && start + len <= mapping.addr + mapping.len)
            .then(|| mapping.iova + (start - mapping.addr) as u64)
    }

    /// Checks what the device layer's validation cannot know (the buffer's IOMMU mapping) and
    /// what the controller must never see (a transfer past the buffer's end).
    fn admit(&mut self, cmd: &IoCmd) -> Result<u64, Status> {
        if cmd.opcode == Opcode::Flush {
            return Ok(0);
        }
        if cmd.blocks == 0 {
            return Err(Status::INVALID_FIELD);
        }
        if !cmd.opcode.transfers_data() {
            return Ok(0);
        }
        let Some(buf) = cmd.buf.as_ref() else {
            return Err(Status::INVALID_FIELD);
        };
        let bytes = cmd.blocks as usize * self.ns.block_size as usize;
        let offset = cmd.buf_offset as usize;
        if offset.saturating_add(bytes) > buf.len() {
            return Err(Status::INVALID_FIELD);
        }
        if (buf.addr() + offset) % 4 != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        // A buffer from a pool nobody registered is not mapped in the IOMMU: the device could not
        // reach it, so it never sees the command.
        self.data_iova(buf, offset, bytes)
            .ok_or(Status::DATA_TRANSFER_ERROR)
    }

    fn store_request(&mut self, request: Request) -> u32 {
        self.outstanding_requests += 1;
        match self.free_request {
            Some(index) => {
                let slot = &mut self.requests[index as usize];
                self.free_request = match slot {
                    RequestSlot::Free(next) => *next,
                    RequestSlot::Used(_) => unreachable!("free list points at a used slot"),
                };
                *slot = RequestSlot::Used(request);
                index
            }
            None => {
                self.requests.push(RequestSlot::Used(request));
                self.requests.len() as u32 - 1
            }
        }
    }

    fn take_request(&mut self, index: u32) -> Option<Request> {
        let slot = self.requests.get_mut(index as usize)?;
        match std::mem::replace(slot, RequestSlot::Free(self.free_request)) {
            RequestSlot::Used(request) => {
                self.free_request = Some(index);
                self.outstanding_requests -= 1;
                Some(request)
            }
            free => {
                *slot = free;
                None
            }
        }
    }

    fn request_mut(&mut self, index: u32) -> Option<&mut Request> {
        match self.requests.get_mut(index as usize)? {
            RequestSlot::Used(request) => Some(request),
            RequestSlot::Free(_) => None,
        }
    }

    /// Builds the NVMe command for the next piece of request `index` under command id `cid`.
    fn build_entry(&mut self, index: u32, cid: u16) -> SubmissionEntry {
        let ns = self.ns;
        let page_offset = cid as usize * PAGE_SIZE;
        let page_iova = self.command_pages_iova + page_offset as u64;
        let Some(request) = self.request_mut(index) else {
            unreachable!("pending requests are stored")
        };
        let opcode = request.cmd.opcode;
        let remaining = request.cmd.blocks - request.issued_blocks;
        let first_block = request.issued_blocks;
        let blocks = match opcode {
            Opcode::Read | Opcode::Write => remaining.min(ns.max_data_blocks),
            Opcode::WriteZeroes => remaining.min(ns.max_zeroes_blocks),
            Opcode::Trim => remaining.min(ns.max_trim_blocks),
            Opcode::Flush => 0,
        };
        request.issued_blocks += blocks;
        request.in_flight += 1;
        let lba = request.cmd.lba + first_block as u64;
        let data_iova = request.data_iova + first_block as u64 * ns.block_size as u64;

        let mut sqe = SubmissionEntry::new(opcode.nvme_opcode(), cid, ns.nsid);
        match opcode {
            Opcode::Read | Opcode::Write => {
                sqe.set_lba_range(lba, blocks);
                let bytes = blocks as usize * ns.block_size as usize;
                let (prp1, prp2) = self.prps(data_iova, bytes, page_offset, page_iova);
                sqe.prp1 = prp1;
                sqe.prp2 = prp2;
            }
            Opcode::WriteZeroes => sqe.set_lba_range(lba, blocks),
            Opcode::Trim => {
                let range = DsmRange {
                    attributes: 0,
                    blocks,
                    lba,
                };
                self.command_pages.write_u64(
                    page_offset,
                    range.attributes as u64 | (range.blocks as u64) << 32,
                );
                self.command_pages.write_u64(page_offset + 8, range.lba);
                sqe.prp1 = page_iova;
                sqe.cdw10 = 0; // NR: one range (0-based)
                sqe.cdw11 = io::DSM_DEALLOCATE;
            }
            Opcode::Flush => {}
        }
        sqe
    }

    /// PRP1/PRP2 for `bytes` at `iova` (Base 2.0 §4.1.1): PRP1 may start mid-page; PRP2 is the
    /// second page, or — when more pages follow — the address of a list of them, written into
    /// the command's own page.
    fn prps(&self, iova: u64, bytes: usize, list_offset: usize, list_iova: u64) -> (u64, u64) {
        let page = PAGE_SIZE as u64;
        let first_len = (page - iova % page).min(bytes as u64);
        let rest = bytes as u64 - first_len;
        if rest == 0 {
            return (iova, 0);
        }
        let second = iova - iova % page + page;
        if rest <= page {
            return (iova, second);
        }
        let pages = rest.div_ceil(page) as usize;
        debug_assert!(pages <= PRP_ENTRIES_PER_PAGE);
        for i in 0..pages {
            self.command_pages
                .write_u64(list_offset + i * 8, second + i as u64 * page);
        }
        (iova, list_iova)
    }

    /// Writes entries for pending requests while command ids last; rings the SQ doorbell once.
    fn submit_pending(&mut self, stats: &mut QueuePairStats) {
        let mut written = 0usize;
        while let Some(&index) = self.pending.front() {
            let Some(cid) = self.free_command_ids.pop() else {
                break;
            };
            self.command_owner[cid as usize] = Some(index);
            let sqe = self.build_entry(index, cid);
            let Some(queue) = self.queue.as_ref() else {
                break;
            };
            queue.sq.write_sqe(self.sq_tail as usize * 64, &sqe);
            self.sq_tail = (self.sq_tail + 1) % self.entries;
            written += 1;
            if self.request_mut(index).is_some_and(|r| r.fully_issued()) {
                self.pending.pop_front();
            }
        }
        if written > 0
            && let Some(queue) = self.queue.as_ref()
        {
            self.ctrl.ring_doorbell(queue.sq_doorbell, self.sq_tail);
            stats.record_doorbell(written);
        }
    }

    /// Reaps completion entries until the queue is empty or `max` requests finished; rings the
    /// CQ head doorbell once. Returns the number of requests completed into `out`.
    fn reap(&mut self, max: usize, out: &mut Vec<Completion>) -> Result<(usize, usize), String> {
        let Some(queue) = self.queue.as_ref() else {
            return Ok((0, 0));
        };
        let cq_doorbell = queue.cq_doorbell;
        let mut finished = 0;
        let mut entries = 0;
        while finished < max {
            let Some(queue) = self.queue.as_ref() else {
                break;
            };
            let offset = self.cq_head as usize * 16;
            if (queue.cq.read_u32(offset + 12) >> 16 & 1 == 1) != self.phase {
                break;
            }
            // Read the rest of the entry only after seeing its phase tag flip.
            fence(Ordering::Acquire);
            let cqe = queue.cq.read_cqe(offset);
            self.cq_head = (self.cq_head + 1) % self.entries;
            if self.cq_head == 0 {
                self.phase = !self.phase;
            }
            entries += 1;
            let cid = cqe.command_id as usize;
            let Some(index) = self.command_owner.get_mut(cid).and_then(Option::take) else {
                return Err(format!(
                    "controller completed command id {cid}, which is not outstanding"
                ));
            };
            self.free_command_ids.push(cid as u16);
            let status = Status::from_cqe_status(cqe.status_phase);
            let Some(request) = self.request_mut(index) else {
                return Err(format!("command id {cid} belongs to no request"));
            };
            request.in_flight -= 1;
            let mut stop_issuing = false;
            if !status.is_success() {
                if request.status.is_success() {
                    request.status = status;
                }
                // Do not issue the rest of a request that already failed.
                if !request.fully_issued() {
                    request.issued_blocks = request.cmd.blocks;
                    stop_issuing = true;
                }
            }
            let done = request.in_flight == 0 && request.fully_issued();
            if stop_issuing {
                self.pending.retain(|&i| i != index);
            }
            if done && let Some(request) = self.take_request(index) {
                out.push(request.cmd.complete(request.status));
                finished += 1;
            }
        }
        if entries > 0 {
            self.ctrl.ring_doorbell(cq_doorbell, self.cq_head);
        }
        Ok((finished, entries))
    }

    /// Called when a poll found nothing while requests are outstanding: every so often, checks
    /// that the controller is alive and that commands are still completing (a queue pair stuck
    /// for the command timeout, counted from the first check that found it stuck, fails).
    fn check_health(&mut self) -> Option<String> {
        self.idle_polls += 1;
        if self.idle_polls % HEALTH_CHECK_INTERVAL != 0 {
            return None;
        }
        if self.ctrl.is_failed() {
            return Some("the controller failed (see the first error it reported)".into());
        }
        if let Some(reason) = self.ctrl.fatal_reason() {
            self.ctrl.mark_failed();
            return Some(format!("controller {reason}"));
        }
        let waited = self.stuck_since.get_or_insert_with(Instant::now).elapsed();
        (waited > self.ns.command_timeout).then(|| {
            format!(
                "no completion for {} s with {} commands outstanding",
                waited.as_secs(),
                self.outstanding_requests
            )
        })
    }

    /// Test hook: submits a one-block read whose data pointer is an IOVA nothing maps, bypassing
    /// every check. Exists only to prove the harness notices a DMA the IOMMU blocks.
    pub(crate) fn submit_unmapped_read(&mut self, lba: u64, iova: u64) -> Result<(), NvmeError> {
        let Some(cid) = self.free_command_ids.pop() else {
            return Err(NvmeError::QueuePairFailed {
                uri: self.ctrl.addr().to_string(),
                reason: "no free command id".into(),
            });
        };
        let index = self.store_request(Request {
            cmd: IoCmd::trim(lba, 1, u64::MAX),
            data_iova: 0,
            issued_blocks: 1,
            in_flight: 1,
            status: Status::SUCCESS,
        });
        self.command_owner[cid as usize] = Some(index);
        let mut sqe = SubmissionEntry::new(Opcode::Read.nvme_opcode(), cid, self.ns.nsid);
        sqe.set_lba_range(lba, 1);
        sqe.prp1 = iova;
        if let Some(queue) = self.queue.as_ref() {
            queue.sq.write_sqe(self.sq_tail as usize * 64, &sqe);
            self.sq_tail = (self.sq_tail + 1) % self.entries;
            self.ctrl.ring_doorbell(queue.sq_doorbell, self.sq_tail);
        }
        Ok(())
    }

    /// Takes every pending request the device holds no piece of out of the queue pair,
    /// completing it with `status` (or the error one of its pieces already got), and stops
    /// issuing the rest of those it does hold. Returns the completions.
    fn abort_unissued(&mut self, status: Status) -> Vec<Completion> {
        let mut aborted = Vec::new();
        for index in std::mem::take(&mut self.pending) {
            let Some(request) = self.request_mut(index) else {
                continue;
            };
            request.issued_blocks = request.cmd.blocks;
            if request.in_flight == 0
                && let Some(request) = self.take_request(index)
            {
                let status = if request.status.is_success() {
                    status
                } else {
                    request.status
                };
                aborted.push(request.cmd.complete(status));
            }
        }
        aborted
    }

    fn fail(&mut self, reason: String) -> Box<NvmeError> {
        if self.broken.is_none() {
            // What never reached the device comes back now; the rest stays until the queue is
            // deleted (or is leaked, if the controller cannot be stopped).
            let aborted = self.abort_unissued(Status::ABORT_REQUESTED);
            self.refused.extend(aborted);
        }
        self.broken = Some(reason.clone());
        Box::new(NvmeError::QueuePairFailed {
            uri: format!("pcie:{}", self.ctrl.addr()),
            reason,
        })
    }
}

impl QueuePairBackend for PcieQueuePair {
    fn queue(&mut self, cmd: IoCmd) {
        if self.broken.is_some() {
            self.refused.push_back(cmd.complete(Status::INTERNAL_ERROR));
            return;
        }
        match self.admit(&cmd) {
            Ok(data_iova) => {
                let index = self.store_request(Request {
                    cmd,
                    data_iova,
                    issued_blocks: 0,
                    in_flight: 0,
                    status: Status::SUCCESS,
                });
                self.pending.push_back(index);
            }
            Err(status) => self.refused.push_back(cmd.complete(status)),
        }
    }

    fn poll(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
        stats: &mut QueuePairStats,
    ) -> PollResult {
        let start = out.len();
        while out.len() - start < max {
            match self.refused.pop_front() {
                Some(c) => out.push(c),
                None => break,
            }
        }
        if let Some(reason) = &self.broken {
            let reason = reason.clone();
            return Err(self.fail(reason));
        }
        if !self.pending.is_empty() {
            self.submit_pending(stats);
        }
        let want = max - (out.len() - start);
        if want == 0 {
            return Ok(out.len() - start);
        }
        match self.reap(want, out) {
            Ok((_, 0)) => {
                if self.outstanding_requests > 0
                    && let Some(reason) = self.check_health()
                {
                    return Err(self.fail(reason));
                }
            }
            Ok(_) => {
                self.idle_polls = 0;
                self.stuck_since = None;
                // Completions freed command ids: hand over what was waiting for them.
                if !self.pending.is_empty() {
                    self.submit_pending(stats);
                }
            }
            Err(reason) => {
                self.ctrl.mark_failed();
                return Err(self.fail(reason));
            }
        }
        Ok(out.len() - start)
    }

    fn register_pool(&mut self, pool: &DmaPool) -> Result<bool, NvmeError> {
        let mapping = self.ctrl.map_pool(pool)?;
        if !self.regions.iter().any(|r| r.id == mapping.region.id) {
            self.regions.push(RegionMapping::from(&mapping));
        }
        Ok(true)
    }
}

impl Drop for PcieQueuePair {
    /// Never lets a buffer go back to its pool while the device might still write it: deleting
    /// the submission queue aborts what it holds, and only a successful delete (or a controller
    /// that is known to have stopped) frees the outstanding requests' buffers.
    fn drop(&mut self) {
        // Commands queued but never polled were abandoned by their owner: do not start them.
        drop(self.abort_unissued(Status::ABORT_REQUESTED));
        let mut stats = QueuePairStats::default();
        let mut scratch = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.outstanding_requests > 0 && self.broken.is_none() && Instant::now() < deadline {
            scratch.clear();
            if self.poll(usize::MAX, &mut scratch, &mut stats).is_err() {
                break;
            }
        }
        let Some(queue) = self.queue.take() else {
            return;
        };
        let deleted = !self.ctrl.is_failed() && self.ctrl.delete_io_queue(queue).is_ok();
        if deleted || self.ctrl.quiesce() {
            self.ctrl
                .unmap_device_memory(self.command_pages_iova, &self.command_pages);
        } else {
            // The device may still write into these buffers; leaking them is the only safe
            // choice (VFIO keeps the pages pinned until the device is closed).
            std::mem::forget(std::mem::take(&mut self.requests));
        }
    }
}
