//! Mount-time replay: the log read frame by frame into the metadata, up to its torn tail.

use std::collections::{BTreeMap, HashMap};

use super::data::{map_range, read_into};
use super::{FileMeta, LogWriter, State};
use crate::error::{BlueFsError, Result};
use crate::format::{self, BLOCK_SIZE, Fnode, FrameEnd, LogOp, Superblock, Uuid};
use crate::io::BlockDevice;

/// Bytes `from..to` of file `ino` must have crc32c `crc` (a checked append).
struct AppendCheck {
    ino: u64,
    from: u64,
    to: u64,
    crc: u32,
}

/// Mount-time log replay.
pub(super) struct Replay {
    pub(super) uuid: Uuid,
    pub(super) dirs: BTreeMap<String, BTreeMap<String, u64>>,
    pub(super) files: HashMap<u64, FileMeta>,
    pub(super) log: Fnode,
    pub(super) position: u64,
    pub(super) next_seq: u64,
}

impl Replay {
    pub(super) fn new(sb: &Superblock) -> Replay {
        Replay {
            uuid: sb.uuid,
            dirs: BTreeMap::new(),
            files: HashMap::new(),
            log: sb.log_fnode.clone(),
            position: 0,
            next_seq: sb.log_first_seq,
        }
    }

    /// Applies transactions until the first frame that fails a check (the torn tail).
    pub(super) fn run(&mut self, devices: &[Option<BlockDevice>; 3]) -> Result<()> {
        let start = (self.log.clone(), self.next_seq);
        if let Some(bad_seq) = self.run_until(devices, None)? {
            // The last frame committed appended data under the same flush, and the data did not
            // all land: that fsync never returned, so the log ends before its frame.
            self.dirs.clear();
            self.files.clear();
            (self.log, self.next_seq) = start;
            self.run_until(devices, Some(bad_seq))?;
        }
        Ok(())
    }

    /// Replays frames (all, or up to `stop_before`); returns the sequence number of the last
    /// frame if it holds a checked append whose data does not match.
    fn run_until(
        &mut self,
        devices: &[Option<BlockDevice>; 3],
        stop_before: Option<u64>,
    ) -> Result<Option<u64>> {
        // Replay reuses State::apply through a scratch State holding only what apply touches.
        let mut st = State::new(
            LogWriter {
                fnode: self.log.clone(),
                position: 0,
                next_seq: self.next_seq,
            },
            0,
        );
        st.dirs = std::mem::take(&mut self.dirs);
        st.files = std::mem::take(&mut self.files);
        let mut header = vec![0u8; BLOCK_SIZE as usize];
        // Checked appends of the last frame applied, with that frame's sequence number.
        let mut last_checks: Option<(u64, Vec<AppendCheck>)> = None;
        loop {
            if stop_before == Some(st.log.next_seq) {
                break;
            }
            let position = st.log.position;
            if position + BLOCK_SIZE > st.log.fnode.allocated() {
                break;
            }
            let Some(pieces) = map_range(&st.log.fnode.extents, position, BLOCK_SIZE) else {
                break;
            };
            read_into(devices, &pieces, &mut header)?;
            let Some(len) = format::frame_len_from_header(&header) else {
                break;
            };
            if position + len as u64 > st.log.fnode.allocated() {
                break;
            }
            let mut frame = vec![0u8; len];
            let pieces = map_range(&st.log.fnode.extents, position, len as u64)
                .expect("checked against the allocation");
            read_into(devices, &pieces, &mut frame)?;
            let (txn, used) = match format::decode_transaction(&frame, &self.uuid, st.log.next_seq)
            {
                Ok(decoded) => decoded,
                Err(FrameEnd::SeqMismatch { .. })
                | Err(FrameEnd::UuidMismatch)
                | Err(FrameEnd::BadMagic)
                | Err(FrameEnd::HeaderChecksum)
                | Err(FrameEnd::PayloadChecksum { .. })
                | Err(FrameEnd::Truncated)
                | Err(FrameEnd::UnsupportedVersion(_))
                | Err(FrameEnd::BadPayload(_)) => break,
            };
            let mut next_position = position + used as u64;
            let mut next_seq = st.log.next_seq + 1;
            let checks: Vec<AppendCheck> = txn
                .ops
                .iter()
                .filter_map(|op| match op {
                    LogOp::FileAppendChecked {
                        ino,
                        size,
                        data_from,
                        data_crc,
                        ..
                    } => Some(AppendCheck {
                        ino: *ino,
                        from: *data_from,
                        to: *size,
                        crc: *data_crc,
                    }),
                    _ => None,
                })
                .collect();
            last_checks = (!checks.is_empty()).then_some((txn.seq, checks));
            for op in &txn.ops {
                match op {
                    LogOp::Jump { offset } => next_position = *offset,
                    LogOp::JumpSeq { seq } => next_seq = *seq,
                    other => st.apply(other).map_err(|reason| BlueFsError::Corrupt {
                        reason: format!("log transaction {}: {reason}", txn.seq),
                    })?,
                }
            }
            st.log.position = next_position;
            st.log.next_seq = next_seq;
        }
        if let Some((seq, checks)) = last_checks
            && stop_before.is_none()
        {
            for AppendCheck { ino, from, to, crc } in checks {
                let Some(f) = st.files.get(&ino) else {
                    continue;
                };
                if from >= to {
                    continue;
                }
                let start = from / BLOCK_SIZE * BLOCK_SIZE;
                let end = to.next_multiple_of(BLOCK_SIZE);
                let Some(pieces) = map_range(&f.fnode.extents, start, end - start) else {
                    return Ok(Some(seq));
                };
                let mut data = vec![0u8; (end - start) as usize];
                read_into(devices, &pieces, &mut data)?;
                let bytes = &data[(from - start) as usize..(to - start) as usize];
                if crc32c::crc32c(bytes) != crc {
                    return Ok(Some(seq));
                }
            }
        }
        check_no_later_frames(
            devices,
            &st.log.fnode,
            st.log.position,
            &self.uuid,
            st.log.next_seq,
        )?;
        self.dirs = st.dirs;
        self.files = st.files;
        self.log = st.log.fnode;
        self.position = st.log.position;
        self.next_seq = st.log.next_seq;
        Ok(None)
    }
}

/// Replay stopped at `position` expecting frame `next_seq`. A torn tail ends the log there; but a
/// valid later frame of this filesystem means a frame in the middle was damaged (frames are
/// written one at a time, each flushed before the next), and mounting would silently drop
/// committed metadata. Stale frames of earlier logs carry lower sequence numbers.
fn check_no_later_frames(
    devices: &[Option<BlockDevice>; 3],
    log: &Fnode,
    position: u64,
    uuid: &Uuid,
    next_seq: u64,
) -> Result<()> {
    const SCAN_CHUNK: u64 = 1 << 20;
    let allocated = log.allocated();
    let mut at = position;
    while at < allocated {
        let len = (allocated - at).min(SCAN_CHUNK);
        let Some(pieces) = map_range(&log.extents, at, len) else {
            break;
        };
        let mut chunk = vec![0u8; len as usize];
        read_into(devices, &pieces, &mut chunk)?;
        for (i, block) in chunk.chunks(BLOCK_SIZE as usize).enumerate() {
            if let Some((frame_uuid, seq)) = format::peek_frame(block)
                && &frame_uuid == uuid
                && seq > next_seq
            {
                return Err(BlueFsError::Corrupt {
                    reason: format!(
                        "log frame {next_seq} at log offset {position} is damaged, yet frame \
                         {seq} follows at offset {}: committed metadata would be lost",
                        at + (i as u64) * BLOCK_SIZE
                    ),
                });
            }
        }
        at += len;
    }
    Ok(())
}
