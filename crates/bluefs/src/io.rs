//! Block I/O on one BlueFS device through the device layer.
//!
//! Every caller — RocksDB's writer, flush and compaction threads, the mount path — drives its
//! own queue pair and polls inline until its I/O is done; nothing runs in the background. Queue
//! pairs are kept in a small per-device pool: a thread takes one for the length of an operation
//! and gives it back, so a thread never shares a queue pair while using it, and the pool (unlike
//! thread-locals) goes away with the filesystem.

use std::sync::Mutex;

use super::error::{BlueFsError, Result};
use super::format::{BLOCK_SIZE, DeviceId};
use bluepoll_base::sync::lock;
use bluepoll_nvme::{Completion, Device, DmaPool, IoCmd, Opcode, QueuePair};

/// Bytes one command moves at most (and the size of a bounce buffer).
const CHUNK: usize = 256 * 1024;
/// Commands in flight per operation (and bounce buffers per queue pair).
const DEPTH: u32 = 8;

/// A queue pair with its own bounce buffers, registered with it.
struct Lane {
    qp: QueuePair,
    pool: DmaPool,
}

pub(crate) struct BlockDevice {
    pub id: DeviceId,
    pub device: Device,
    lba_shift: u32,
    chunk: usize,
    lanes: Mutex<Vec<Lane>>,
}

impl BlockDevice {
    pub fn new(id: DeviceId, device: Device) -> Result<BlockDevice> {
        let info = device.info();
        if !info.block_size.is_power_of_two() || info.block_size as u64 > BLOCK_SIZE {
            return Err(BlueFsError::WrongDevice {
                device: id.name(),
                reason: format!(
                    "{}: block size {} does not divide BlueFS's {BLOCK_SIZE}-byte block",
                    info.uri, info.block_size
                ),
            });
        }
        let chunk = CHUNK
            .min(info.max_transfer_bytes as usize)
            .max(BLOCK_SIZE as usize)
            / BLOCK_SIZE as usize
            * BLOCK_SIZE as usize;
        Ok(BlockDevice {
            id,
            lba_shift: info.block_size.trailing_zeros(),
            chunk,
            device,
            lanes: Mutex::new(Vec::new()),
        })
    }

    pub fn size(&self) -> u64 {
        self.device.info().capacity_bytes()
    }

    /// Runs `f` on a queue pair of this device owned by the calling thread for the duration.
    fn with_queue_pair<R>(
        &self,
        f: impl FnOnce(&mut QueuePair, &DmaPool) -> Result<R>,
    ) -> Result<R> {
        let taken = lock(&self.lanes).pop();
        let mut lane = match taken {
            Some(lane) => lane,
            None => {
                let mut qp = self.device.queue_pair(DEPTH)?;
                let pool = DmaPool::new(self.chunk, DEPTH as usize)?;
                qp.register_pool(&pool)?;
                Lane { qp, pool }
            }
        };
        let result = f(&mut lane.qp, &lane.pool);
        // A queue pair that failed (or has commands left) is not reused.
        if result.is_ok() && lane.qp.outstanding() == 0 {
            lock(&self.lanes).push(lane);
        }
        result
    }

    fn check(&self, c: &Completion, op: Opcode, offset: u64, len: u64) -> Result<()> {
        if c.status.is_success() {
            Ok(())
        } else {
            Err(BlueFsError::Io {
                device: self.id.name(),
                op,
                offset,
                len,
                status: c.status,
            })
        }
    }

    /// Writes `data` (a whole number of BlueFS blocks) at byte `offset` (block-aligned).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_many(&[(offset, data)])
    }

    /// Writes several (offset, data) ranges with all their commands in flight together, so
    /// independent writes (a file's data and the log record describing it) cost one round trip.
    pub fn write_many(&self, ranges: &[(u64, &[u8])]) -> Result<()> {
        let mut chunks: Vec<(u64, &[u8])> = Vec::new();
        for &(offset, data) in ranges {
            debug_assert!(offset % BLOCK_SIZE == 0 && data.len() as u64 % BLOCK_SIZE == 0);
            chunks.extend(
                data.chunks(self.chunk)
                    .enumerate()
                    .map(|(i, c)| (offset + (i * self.chunk) as u64, c)),
            );
        }
        self.with_queue_pair(|qp, pool| {
            let mut next = 0;
            let mut done = 0;
            let mut out = Vec::with_capacity(DEPTH as usize);
            let mut first_error = None;
            while done < chunks.len() {
                while next < chunks.len() && qp.outstanding() < DEPTH && first_error.is_none() {
                    let (at, bytes) = chunks[next];
                    let mut buf = pool.alloc()?;
                    buf[..bytes.len()].copy_from_slice(bytes);
                    let blocks = (bytes.len() >> self.lba_shift) as u32;
                    let cmd = IoCmd::write(at >> self.lba_shift, blocks, buf, next as u64);
                    if let Err(full) = qp.submit(cmd) {
                        drop(full);
                        break;
                    }
                    next += 1;
                }
                if first_error.is_some() && qp.outstanding() == 0 {
                    break;
                }
                qp.poll_waiting(usize::MAX, &mut out)?;
                // Draining drops each buffer back into the pool before the next submission.
                for c in out.drain(..) {
                    let (at, bytes) = chunks[c.tag as usize];
                    if let Err(e) = self.check(&c, Opcode::Write, at, bytes.len() as u64) {
                        first_error.get_or_insert(e);
                    }
                    done += 1;
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    /// Reads `out.len()` bytes (a whole number of blocks) at byte `offset` (block-aligned).
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        debug_assert!(offset % BLOCK_SIZE == 0 && out.len() as u64 % BLOCK_SIZE == 0);
        let mut pieces: Vec<(u64, &mut [u8])> = out
            .chunks_mut(self.chunk)
            .enumerate()
            .map(|(i, c)| (offset + (i * self.chunk) as u64, c))
            .collect();
        self.with_queue_pair(|qp, pool| {
            let mut next = 0;
            let mut done = 0;
            let mut completions = Vec::with_capacity(DEPTH as usize);
            let mut first_error = None;
            while done < pieces.len() {
                while next < pieces.len() && qp.outstanding() < DEPTH && first_error.is_none() {
                    let (at, ref piece) = pieces[next];
                    let buf = pool.alloc()?;
                    let blocks = (piece.len() >> self.lba_shift) as u32;
                    if let Err(full) =
                        qp.submit(IoCmd::read(at >> self.lba_shift, blocks, buf, next as u64))
                    {
                        drop(full);
                        break;
                    }
                    next += 1;
                }
                if first_error.is_some() && qp.outstanding() == 0 {
                    break;
                }
                qp.poll_waiting(usize::MAX, &mut completions)?;
                for c in completions.drain(..) {
                    let (at, ref mut piece) = pieces[c.tag as usize];
                    match self.check(&c, Opcode::Read, at, piece.len() as u64) {
                        Ok(()) => {
                            if let Some(buf) = &c.buf {
                                let n = piece.len();
                                piece.copy_from_slice(&buf[..n]);
                            }
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                    done += 1;
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> Result<()> {
        if !self.device.info().ops.flush {
            return Ok(());
        }
        self.with_queue_pair(|qp, _| {
            let c = qp.execute(IoCmd::flush(0))?;
            self.check(&c, Opcode::Flush, 0, 0)
        })
    }

    /// Drops pooled queue pairs (after a power cut they are dead).
    pub fn reset_queue_pairs(&self) {
        lock(&self.lanes).clear();
    }
}
