//! `mem:SIZE` — a namespace in RAM.
//!
//! Storage is thin: 1 MiB chunks allocated on first write, freed when trimmed or zeroed whole, so
//! `mem:1T` costs only what is written. Each chunk has its own lock, taken for one chunk at a
//! time, so queue pairs on different cores rarely meet (NVMe promises no atomicity across
//! blocks anyway). A command runs when its queue pair is polled, on the polling thread.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use super::command::{Completion, IoCmd, Opcode, Status};
use super::device::{
    DeviceClass, Namespace, NamespaceInfo, QueuePairBackend, QueuePairStats, SupportedOps,
};
use super::error::NvmeError;
use super::uri::{Params, parse_capacity};

const CHUNK_SHIFT: u32 = 20;
const CHUNK_BYTES: u64 = 1 << CHUNK_SHIFT;

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

/// One 1 MiB chunk: `None` until first written, and again after it is trimmed whole.
type Chunk = Mutex<Option<Box<[u8]>>>;

pub(crate) struct MemNamespace {
    info: NamespaceInfo,
    chunks: Box<[Chunk]>,
}

impl MemNamespace {
    pub fn open(uri: &str, rest: &str) -> Result<MemNamespace, NvmeError> {
        let params = SyntheticParams::parse(uri, rest)?;
        let info = params.info(uri, "RAM namespace");
        let chunk_count = info.capacity_bytes().div_ceil(CHUNK_BYTES);
        let chunks = (0..chunk_count).map(|_| Mutex::new(None)).collect();
        Ok(MemNamespace { info, chunks })
    }

    fn chunk(&self, index: usize) -> MutexGuard<'_, Option<Box<[u8]>>> {
        // A poisoned lock only means another thread panicked mid-copy; the bytes are still bytes.
        self.chunks[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f(chunk_index, offset_in_chunk, offset_in_request, len)` for each chunk the byte
    /// range touches.
    fn for_each_piece(start: u64, len: u64, mut f: impl FnMut(usize, usize, usize, usize)) {
        let mut done = 0u64;
        while done < len {
            let pos = start + done;
            let in_chunk = pos & (CHUNK_BYTES - 1);
            let n = (CHUNK_BYTES - in_chunk).min(len - done);
            f(
                (pos >> CHUNK_SHIFT) as usize,
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
        match cmd.opcode {
            Opcode::Read => {
                let off = cmd.buf_offset as usize;
                let Some(buf) = cmd.buf.as_mut() else {
                    return Status::INVALID_FIELD;
                };
                let dst = &mut buf[off..off + len as usize];
                Self::for_each_piece(start, len, |chunk, at, from, n| {
                    match self.chunk(chunk).as_deref() {
                        Some(data) => dst[from..from + n].copy_from_slice(&data[at..at + n]),
                        None => dst[from..from + n].fill(0),
                    }
                });
            }
            Opcode::Write => {
                let off = cmd.buf_offset as usize;
                let Some(buf) = cmd.buf.as_ref() else {
                    return Status::INVALID_FIELD;
                };
                let src = &buf[off..off + len as usize];
                Self::for_each_piece(start, len, |chunk, at, from, n| {
                    let mut guard = self.chunk(chunk);
                    let data = guard
                        .get_or_insert_with(|| vec![0u8; CHUNK_BYTES as usize].into_boxed_slice());
                    data[at..at + n].copy_from_slice(&src[from..from + n]);
                });
            }
            Opcode::WriteZeroes | Opcode::Trim => {
                Self::for_each_piece(start, len, |chunk, at, _, n| {
                    let mut guard = self.chunk(chunk);
                    if n as u64 == CHUNK_BYTES {
                        *guard = None;
                    } else if let Some(data) = guard.as_mut() {
                        data[at..at + n].fill(0);
                    }
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
    ) -> Result<usize, NvmeError> {
        if !self.queued.is_empty() {
            stats.doorbells += 1;
            stats.doorbell_commands += self.queued.len() as u64;
            for mut cmd in self.queued.drain(..) {
                let status = self.ns.execute(&mut cmd);
                self.completed.push_back(cmd.complete(status));
            }
        }
        let n = max.min(self.completed.len());
        out.extend(self.completed.drain(..n));
        Ok(n)
    }
}
