//! Write-back: coalescing cached extents into as few inner commands as the inner device allows,
//! and running them on an inner queue pair, at a Flush or a power cut.

use std::collections::HashMap;
use std::sync::Arc;

use super::cache::{Content, Extent};
use crate::command::{Completion, IoCmd, Opcode, Status};
use crate::device::{NamespaceInfo, QueueFull, QueuePair, SupportedOps};
use crate::dma::DmaBuf;
use crate::error::NvmeError;

/// One piece of a coalesced write-back Write.
pub(super) enum Piece {
    Bytes {
        data: Arc<[u8]>,
        start: usize,
        len: usize,
    },
    Zeroes(usize),
}

/// A command the device itself sends to the inner device, at a Flush or a power cut.
pub(super) enum InnerOp {
    Write {
        lba: u64,
        blocks: u32,
        pieces: Vec<Piece>,
    },
    Zeroes {
        lba: u64,
        blocks: u32,
    },
    Trim {
        lba: u64,
        blocks: u32,
    },
    Flush,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RunKind {
    Data,
    Zeroes,
    Trim,
}

/// A write-back command the inner device failed (or that could not be built).
#[derive(Clone, Copy, Debug)]
pub(super) struct FailedOp {
    opcode: Opcode,
    lba: u64,
    blocks: u32,
    pub(super) status: Status,
}

impl FailedOp {
    pub(super) fn into_error(self) -> NvmeError {
        NvmeError::Command {
            op: self.opcode,
            lba: self.lba,
            blocks: self.blocks,
            status: self.status,
        }
    }
}

impl InnerOp {
    fn kind_and_end(&self) -> Option<(RunKind, u64, u32)> {
        match self {
            InnerOp::Write { lba, blocks, .. } => {
                Some((RunKind::Data, lba + *blocks as u64, *blocks))
            }
            InnerOp::Zeroes { lba, blocks } => {
                Some((RunKind::Zeroes, lba + *blocks as u64, *blocks))
            }
            InnerOp::Trim { lba, blocks } => Some((RunKind::Trim, lba + *blocks as u64, *blocks)),
            InnerOp::Flush => None,
        }
    }

    fn describe(&self, status: Status) -> FailedOp {
        let (opcode, lba, blocks) = match self {
            InnerOp::Write { lba, blocks, .. } => (Opcode::Write, *lba, *blocks),
            InnerOp::Zeroes { lba, blocks } => (Opcode::WriteZeroes, *lba, *blocks),
            InnerOp::Trim { lba, blocks } => (Opcode::Trim, *lba, *blocks),
            InnerOp::Flush => (Opcode::Flush, 0, 0),
        };
        FailedOp {
            opcode,
            lba,
            blocks,
            status,
        }
    }

    fn into_cmd(self, tag: u64, block_size: usize) -> Result<IoCmd, Status> {
        Ok(match self {
            InnerOp::Write {
                lba,
                blocks,
                pieces,
            } => {
                // A fresh mapping per command keeps write-back memory bounded by the commands in
                // flight; this is a test tool, so the mmap per Flush run is affordable.
                let mut buf = DmaBuf::new(blocks as usize * block_size)
                    .map_err(|_| Status::INTERNAL_ERROR)?;
                let mut at = 0;
                for piece in pieces {
                    match piece {
                        Piece::Bytes { data, start, len } => {
                            let src = data.get(start..start + len);
                            let dst = buf.get_mut(at..at + len);
                            let (Some(src), Some(dst)) = (src, dst) else {
                                return Err(Status::INTERNAL_ERROR);
                            };
                            dst.copy_from_slice(src);
                            at += len;
                        }
                        Piece::Zeroes(len) => {
                            let dst = buf.get_mut(at..at + len).ok_or(Status::INTERNAL_ERROR)?;
                            dst.fill(0);
                            at += len;
                        }
                    }
                }
                IoCmd::write(lba, blocks, buf, tag)
            }
            InnerOp::Zeroes { lba, blocks } => IoCmd::write_zeroes(lba, blocks, tag),
            InnerOp::Trim { lba, blocks } => IoCmd::trim(lba, blocks, tag),
            InnerOp::Flush => IoCmd::flush(tag),
        })
    }
}

/// What the inner device can take, for turning cached extents into commands.
#[derive(Clone, Copy)]
pub(super) struct RunLimits {
    pub(super) block_size: usize,
    max_data_blocks: u32,
    ops: SupportedOps,
}

impl RunLimits {
    pub(super) fn of(info: &NamespaceInfo) -> RunLimits {
        RunLimits {
            block_size: info.block_size as usize,
            max_data_blocks: (info.max_transfer_bytes / info.block_size).max(1),
            ops: info.ops,
        }
    }

    fn kind_for(&self, content: &Content) -> RunKind {
        match content {
            Content::Data { .. } => RunKind::Data,
            Content::Trimmed if self.ops.trim => RunKind::Trim,
            Content::Zeroes | Content::Trimmed if self.ops.write_zeroes => RunKind::Zeroes,
            Content::Zeroes | Content::Trimmed => RunKind::Data,
        }
    }

    fn max_blocks(&self, kind: RunKind) -> u32 {
        match kind {
            RunKind::Data => self.max_data_blocks,
            RunKind::Zeroes | RunKind::Trim => u32::MAX,
        }
    }
}

/// Coalesces LBA-sorted extents into as few inner commands as the inner limits allow.
pub(super) fn build_runs(extents: &[(u64, Extent)], limits: RunLimits) -> Vec<InnerOp> {
    let bs = limits.block_size;
    let mut ops: Vec<InnerOp> = Vec::new();
    for (lba, extent) in extents {
        let kind = limits.kind_for(&extent.content);
        let cap = limits.max_blocks(kind);
        let mut done = 0u64;
        while done < extent.blocks {
            let at = lba + done;
            let room = match ops.last().and_then(InnerOp::kind_and_end) {
                Some((last_kind, end, blocks)) if last_kind == kind && end == at => cap - blocks,
                _ => 0,
            };
            if room == 0 {
                ops.push(match kind {
                    RunKind::Data => InnerOp::Write {
                        lba: at,
                        blocks: 0,
                        pieces: Vec::new(),
                    },
                    RunKind::Zeroes => InnerOp::Zeroes { lba: at, blocks: 0 },
                    RunKind::Trim => InnerOp::Trim { lba: at, blocks: 0 },
                });
            }
            let room = if room == 0 { cap } else { room };
            let take = (room as u64).min(extent.blocks - done) as u32;
            match ops.last_mut() {
                Some(InnerOp::Write { blocks, pieces, .. }) => {
                    *blocks += take;
                    pieces.push(match &extent.content {
                        Content::Data { bytes, first } => Piece::Bytes {
                            data: Arc::clone(bytes),
                            start: (first + done) as usize * bs,
                            len: take as usize * bs,
                        },
                        Content::Zeroes | Content::Trimmed => Piece::Zeroes(take as usize * bs),
                    });
                }
                Some(InnerOp::Zeroes { blocks, .. } | InnerOp::Trim { blocks, .. }) => {
                    *blocks += take;
                }
                Some(InnerOp::Flush) | None => {}
            }
            done += take as u64;
        }
    }
    ops
}

/// Tags of write-back commands on an inner queue pair; forwarded commands use tags below it.
pub(super) const WRITEBACK_TAG: u64 = 1 << 63;
/// Write-back commands in flight at once: bounds the memory a Flush maps.
const MAX_WRITEBACK_IN_FLIGHT: usize = 8;
/// Extra inner queue depth so a Flush has room beside the reads a queue pair keeps in flight.
pub(super) const WRITEBACK_SLOTS: u32 = MAX_WRITEBACK_IN_FLIGHT as u32;

/// Runs `ops` on `inner` to completion. Completions of other commands on the same queue pair go
/// to `stray`. After a failure nothing more is submitted; the first failure is returned once
/// everything submitted has completed. `Err` only when the inner queue pair itself broke.
fn run_on_inner(
    inner: &mut QueuePair,
    ops: Vec<InnerOp>,
    block_size: usize,
    stray: &mut Vec<Completion>,
) -> Result<Option<FailedOp>, NvmeError> {
    let mut pending = ops.into_iter();
    let mut in_flight: HashMap<u64, FailedOp> = HashMap::new();
    let mut failure: Option<FailedOp> = None;
    let mut next_tag = WRITEBACK_TAG;
    let mut reaped = Vec::new();
    loop {
        while failure.is_none()
            && in_flight.len() < MAX_WRITEBACK_IN_FLIGHT
            && inner.outstanding() < inner.depth()
        {
            let Some(op) = pending.next() else {
                break;
            };
            let description = op.describe(Status::SUCCESS);
            let tag = next_tag;
            next_tag += 1;
            match op.into_cmd(tag, block_size) {
                Ok(cmd) => match inner.submit(cmd) {
                    Ok(()) => {
                        in_flight.insert(tag, description);
                    }
                    Err(QueueFull(_)) => {
                        failure = Some(FailedOp {
                            status: Status::INTERNAL_ERROR,
                            ..description
                        })
                    }
                },
                Err(status) => {
                    failure = Some(FailedOp {
                        status,
                        ..description
                    })
                }
            }
        }
        if in_flight.is_empty() && (failure.is_some() || pending.len() == 0) {
            return Ok(failure);
        }
        inner.poll_waiting(usize::MAX, &mut reaped)?;
        for completion in reaped.drain(..) {
            match in_flight.remove(&completion.tag) {
                Some(op) => {
                    if !completion.status.is_success() && failure.is_none() {
                        failure = Some(FailedOp {
                            status: completion.status,
                            ..op
                        });
                    }
                }
                None => stray.push(completion),
            }
        }
    }
}

/// Writes `ops` back and then flushes the inner device if it can be flushed.
pub(super) fn write_back(
    inner: &mut QueuePair,
    ops: Vec<InnerOp>,
    limits: RunLimits,
    stray: &mut Vec<Completion>,
) -> Result<Option<FailedOp>, NvmeError> {
    if let Some(failed) = run_on_inner(inner, ops, limits.block_size, stray)? {
        return Ok(Some(failed));
    }
    if limits.ops.flush {
        // Only after every write completed: NVMe Flush covers completed writes only.
        return run_on_inner(inner, vec![InnerOp::Flush], limits.block_size, stray);
    }
    Ok(None)
}
