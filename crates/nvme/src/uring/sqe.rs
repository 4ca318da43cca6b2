//! The translation between commands and the kernel: the SQE that carries (what is left of) a
//! command, and what each CQE result means for it.

use io_uring::{opcode, squeue, types};

use super::fixed::FixedBuffers;
use super::ring::FileRef;
use super::slab::InFlight;
use crate::command::{Opcode, Status};

/// EAGAIN completions tolerated per command before it fails; a device that keeps refusing is
/// not going to accept it by being asked faster.
pub(super) const MAX_EAGAIN_RESUBMITS: u16 = 1000;

/// Builds an SQE with whichever of `types::Fixed` / `types::Fd` the file reference is.
macro_rules! with_file {
    ($file:expr, |$fd:ident| $build:expr) => {
        match $file {
            FileRef::Registered(slot) => {
                let $fd = types::Fixed(slot);
                $build
            }
            FileRef::Raw(raw) => {
                let $fd = types::Fd(raw);
                $build
            }
        }
    };
}

/// What one CQE means for its command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Done(Status),
    /// Not finished: submit (the rest of) it again at the next poll.
    Resubmit,
}

/// Applies one CQE result to its command. Pure, so every errno and short-transfer path is unit
/// tested without a device.
pub(super) fn settle(entry: &mut InFlight, res: i32) -> Outcome {
    let opcode = entry.cmd.opcode;
    if res < 0 {
        let errno = res.saturating_neg();
        if errno == libc::EAGAIN {
            if entry.eagain_resubmits < MAX_EAGAIN_RESUBMITS {
                entry.eagain_resubmits += 1;
                return Outcome::Resubmit;
            }
            // NVMe's "try again later"; the caller may resubmit when the device has calmed down.
            return Outcome::Done(Status::NAMESPACE_NOT_READY);
        }
        return Outcome::Done(status_for_errno(errno, opcode));
    }
    if !opcode.transfers_data() {
        return Outcome::Done(Status::SUCCESS);
    }
    let remaining = entry.len.saturating_sub(entry.done);
    let moved = res as u64;
    if moved == 0 && remaining > 0 {
        // End of file inside the namespace: the file was truncated under us.
        return Outcome::Done(Status::DATA_TRANSFER_ERROR);
    }
    if moved >= remaining {
        return Outcome::Done(Status::SUCCESS);
    }
    entry.done += moved;
    Outcome::Resubmit
}

/// The NVMe status a failed operation reports, from its errno.
fn status_for_errno(errno: i32, opcode: Opcode) -> Status {
    match errno {
        libc::EIO if opcode == Opcode::Read => Status::UNRECOVERED_READ_ERROR,
        libc::EIO => Status::WRITE_FAULT,
        libc::ENOSPC | libc::EFBIG => Status::CAPACITY_EXCEEDED,
        libc::EINVAL => Status::INVALID_FIELD,
        libc::EOPNOTSUPP => Status::INVALID_OPCODE,
        libc::ECANCELED | libc::EINTR => Status::ABORT_REQUESTED,
        _ => Status::INTERNAL_ERROR,
    }
}

/// The SQE for (what is left of) a command, or None for a data command without a buffer.
#[inline]
pub(super) fn prepare(
    entry: &mut InFlight,
    slot: u32,
    file: FileRef,
    fixed: &FixedBuffers,
    zeroes_mode: i32,
) -> Option<squeue::Entry> {
    let offset = entry.offset.saturating_add(entry.done);
    let len = entry.len.saturating_sub(entry.done);
    let sqe = match entry.cmd.opcode {
        op @ (Opcode::Read | Opcode::Write) => {
            let buf = entry.cmd.buf.as_mut()?;
            // check_command capped data transfers at max_transfer_bytes.
            let len = u32::try_from(len).ok()?;
            let region_id = buf.region_id();
            // wrapping_add keeps this a plain address computation; check_command guaranteed
            // buf_offset + len <= buf.len(), so it stays inside the buffer.
            let addr = buf
                .as_mut_ptr()
                .wrapping_add(entry.cmd.buf_offset as usize + entry.done as usize);
            match (op, fixed.index_for(region_id, addr as usize, len)) {
                (Opcode::Read, Some(index)) => with_file!(file, |fd| {
                    opcode::ReadFixed::new(fd, addr, len, index)
                        .offset(offset)
                        .build()
                }),
                (Opcode::Read, None) => with_file!(file, |fd| {
                    opcode::Read::new(fd, addr, len).offset(offset).build()
                }),
                (_, Some(index)) => with_file!(file, |fd| {
                    opcode::WriteFixed::new(fd, addr, len, index)
                        .offset(offset)
                        .build()
                }),
                (_, None) => with_file!(file, |fd| {
                    opcode::Write::new(fd, addr, len).offset(offset).build()
                }),
            }
        }
        Opcode::Flush => with_file!(file, |fd| {
            opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
        }),
        Opcode::WriteZeroes => with_file!(file, |fd| {
            opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(zeroes_mode)
                .build()
        }),
        Opcode::Trim => with_file!(file, |fd| {
            opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build()
        }),
    };
    Some(sqe.user_data(slot as u64))
}
