//! `mem:SIZE` — a namespace in RAM.
//!
//! Storage is thin: 1 MiB chunks (larger beyond 64 GiB, so there are at most 65536), allocated on
//! first write and freed when trimmed or zeroed whole, so `mem:1T` costs only what is written.
//! Reads must scale across cores, so chunks live in a [`ReadMostly`] table: a reader marks
//! itself on a cache line only its own core writes, then copies with a plain memcpy; a writer
//! waits until no reader is in the chunk. (With a mutex per chunk, the lock's cache line moved
//! between cores on about half of all reads, and two cores reached only 1.5x one.)
//! NVMe promises no atomicity across blocks, so a command spanning chunks is split at their
//! boundaries. A command runs when its queue pair is polled, on the polling thread.

use std::collections::VecDeque;
use std::sync::Arc;

use super::command::{Completion, IoCmd, Opcode, Status};
use super::device::{
    DeviceClass, Namespace, NamespaceInfo, OwnerSlot, PollResult, QueuePairBackend, QueuePairStats,
    SupportedOps,
};
use super::error::NvmeError;
use super::read_mostly::ReadMostly;
use super::uri::{Params, parse_capacity};

/// Smallest chunk, and the most chunks a namespace gets.
const MIN_CHUNK_SHIFT: u32 = 20;
const MAX_CHUNKS: u64 = 1 << 16;

/// Parameters shared by the RAM-like backends (`mem:`, `null:`).
pub(crate) struct SyntheticParams {
    pub block_size: u32,
    pub capacity_blocks: u64,
    pub max_transfer_bytes: u32,
    pub class: DeviceClass,
}

impl SyntheticParams {
    pub fn parse(uri: &str, rest: &str) -> Result<SyntheticParams, NvmeError> {
        let (size, mut params) = Params::parse(uri, rest)?;
        let block_size = params.take_block_size(4096)?;
        let max_transfer = params.take_size("max_transfer")?.unwrap_or(4 << 20);
        if max_transfer < block_size as u64 || max_transfer > u32::MAX as u64 {
            return Err(NvmeError::uri(
                uri,
                format!("max_transfer {max_transfer} must be between the block size and 4 GiB"),
            ));
        }
        let class = params.take_class()?.unwrap_or(DeviceClass::Nvme);
        params.finish()?;
        Ok(SyntheticParams {
            block_size,
            capacity_blocks: parse_capacity(uri, size, block_size)?,
            max_transfer_bytes: max_transfer as u32,
            class,
        })
    }

    pub fn info(&self, uri: &str, model: &str) -> NamespaceInfo {
        NamespaceInfo {
            uri: uri.to_string(),
            model: model.to_string(),
            serial: String::new(),
            block_size: self.block_size,
            capacity_blocks: self.capacity_blocks,
            max_transfer_bytes: self.max_transfer_bytes,
            buffer_alignment: 4,
            max_queue_depth: 65536,
            class: self.class,
            ops: SupportedOps::ALL,
            trim_reads_zeroes: true,
            volatile_write_cache: false,
        }
    }
}

/// A chunk's bytes, `None` until first written and again after being trimmed whole.
type ChunkData = Option<Box<[u8]>>;

pub(crate) struct MemNamespace {
    info: NamespaceInfo,
    chunk_shift: u32,
    chunks: ReadMostly<ChunkData>,
    owner: OwnerSlot,
}

impl MemNamespace {
    pub fn open(uri: &str, rest: &str) -> Result<MemNamespace, NvmeError> {
        let params = SyntheticParams::parse(uri, rest)?;
        let info = params.info(uri, "RAM namespace");
        let bytes = info.capacity_bytes();
        let mut chunk_shift = MIN_CHUNK_SHIFT;
        while bytes.div_ceil(1 << chunk_shift) > MAX_CHUNKS {
            chunk_shift += 1;
        }
        // Enough reader slots that threads rarely share one (they are handed out round-robin).
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let slots = (4 * cpus).min(64);
        let chunks = ReadMostly::new(bytes.div_ceil(1 << chunk_shift) as usize, slots, || None);
        Ok(MemNamespace {
            info,
            chunk_shift,
            chunks,
            owner: OwnerSlot::default(),
        })
    }

    /// Calls `f(chunk_index, offset_in_chunk, offset_in_request, len)` for each chunk the byte
    /// range touches.
    fn for_each_piece(&self, start: u64, len: u64, mut f: impl FnMut(usize, usize, usize, usize)) {
        let chunk_bytes = 1u64 << self.chunk_shift;
        let mut done = 0u64;
        while done < len {
            let pos = start + done;
            let in_chunk = pos & (chunk_bytes - 1);
            let n = (chunk_bytes - in_chunk).min(len - done);
            f(
                (pos >> self.chunk_shift) as usize,
                in_chunk as usize,
                done as usize,
                n as usize,
            );
            done += n;
        }
    }

    fn execute(&self, cmd: &mut IoCmd) -> Status {
        let bs = self.info.block_size as u64;
        let start = cmd.lba * bs;
        let len = cmd.blocks as u64 * bs;
        let off = cmd.buf_offset as usize;
        let chunk_bytes = 1usize << self.chunk_shift;
        match cmd.opcode {
            Opcode::Read => {
                let Some(buf) = cmd.buf.as_mut() else {
                    return Status::INVALID_FIELD;
                };
                let dst = &mut buf[off..off + len as usize];
                self.for_each_piece(start, len, |chunk, at, from, n| {
                    self.chunks.read(chunk, |data| match data {
                        Some(data) => dst[from..from + n].copy_from_slice(&data[at..at + n]),
                        None => dst[from..from + n].fill(0),
                    })
                });
            }
            Opcode::Write => {
                let Some(buf) = cmd.buf.as_ref() else {
                    return Status::INVALID_FIELD;
                };
                let src = &buf[off..off + len as usize];
                self.for_each_piece(start, len, |chunk, at, from, n| {
                    self.chunks.write(chunk, |data| {
                        let data =
                            data.get_or_insert_with(|| vec![0u8; chunk_bytes].into_boxed_slice());
                        data[at..at + n].copy_from_slice(&src[from..from + n]);
                    })
                });
            }
            Opcode::WriteZeroes | Opcode::Trim => {
                self.for_each_piece(start, len, |chunk, at, _, n| {
                    self.chunks.write(chunk, |data| {
                        if n == chunk_bytes {
                            *data = None;
                        } else if let Some(data) = data.as_mut() {
                            data[at..at + n].fill(0);
                        }
                    })
                });
            }
            Opcode::Flush => {}
        }
        Status::SUCCESS
    }
}

impl Namespace for MemNamespace {
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
        Ok(Box::new(MemQueuePair {
            ns: self,
            queued: Vec::with_capacity(depth as usize),
            completed: VecDeque::with_capacity(depth as usize),
        }))
    }
}

struct MemQueuePair {
    ns: Arc<MemNamespace>,
    queued: Vec<IoCmd>,
    completed: VecDeque<Completion>,
}

impl QueuePairBackend for MemQueuePair {
    fn queue(&mut self, cmd: IoCmd) {
        self.queued.push(cmd);
    }

    fn poll(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
        stats: &mut QueuePairStats,
    ) -> PollResult {
        if !self.queued.is_empty() {
            stats.record_doorbell(self.queued.len());
            for mut cmd in self.queued.drain(..) {
                let status = self.ns.execute(&mut cmd);
                self.completed.push_back(cmd.complete(status));
            }
        }
        let n = max.min(self.completed.len());
        if n > 0 {
            out.extend(self.completed.drain(..n));
        }
        Ok(n)
    }
}
