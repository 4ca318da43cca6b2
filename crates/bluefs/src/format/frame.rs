//! Log frames: one transaction's ops behind a checksummed header, padded to whole blocks.

use super::codec::{OFF_MAGIC, OFF_VERSION, get_u16, get_u32, get_u64, put_count, set};
use super::op::{put_op, read_ops};
use super::{BLOCK, FormatVersion, LogOp, Uuid};

/// One log frame's content: the filesystem it belongs to, its sequence number, its ops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The filesystem the frame belongs to (its labels' uuid): a frame of another filesystem
    /// ends replay.
    pub uuid: Uuid,
    /// Sequence number: the log's first frame carries the superblock's `log_first_seq`, each
    /// next frame one more (unless a [`LogOp::JumpSeq`] says otherwise).
    pub seq: u64,
    /// The changes, applied in order; a frame is applied whole or not at all.
    pub ops: Vec<LogOp>,
}

/// Why replay stops at a frame. Every variant means "end of the log" (a torn or never-written
/// frame), not corruption of committed data: committed frames were flushed before the next one
/// was written.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameEnd {
    /// The block does not start with [`FRAME_MAGIC`]: nothing (or something else) was written
    /// there. The usual end of the log.
    #[error("bad frame magic (nothing written here)")]
    BadMagic,
    #[error("frame format version {0} is not supported (this build reads {supported})", supported = FormatVersion::CURRENT.as_u16())]
    /// The header carries this format version, which this build does not read.
    UnsupportedVersion(u16),
    /// The header's crc32c (over its bytes 0..44) does not match: a torn header.
    #[error("frame header checksum mismatch")]
    HeaderChecksum,
    #[error("frame payload checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    /// The payload's crc32c does not match: a frame cut short after its header landed.
    PayloadChecksum {
        /// The crc32c the header stores.
        expected: u32,
        /// The crc32c of the payload and its padding as read.
        actual: u32,
    },
    /// A valid header of another filesystem: a stale frame left in space this log reuses.
    #[error("frame belongs to another filesystem (uuid mismatch)")]
    UuidMismatch,
    #[error("frame sequence {found}, expected {expected}")]
    /// A valid header of this filesystem with another sequence number: a stale frame of an
    /// earlier log whose space this one reuses.
    SeqMismatch {
        /// The sequence number replay expected next.
        expected: u64,
        /// The one the header carries.
        found: u64,
    },
    /// Fewer bytes were given than the header (or the frame it announces) needs.
    #[error("frame truncated (fewer bytes than its header says)")]
    Truncated,
    #[error("frame payload: {0}")]
    /// The payload passed its crc32c but does not decode (only a writer bug does this); the
    /// message names the op and the field.
    BadPayload(String),
}

/// The first 8 bytes of every log frame.
pub const FRAME_MAGIC: [u8; 8] = *b"BPFSJRNL";

//  offset  size  field
//       0     8  magic            "BPFSJRNL"
//       8     2  version          1
//      10     2  reserved         0
//      12     4  payload length   bytes of encoded ops (padding not counted)
//      16    16  uuid             the filesystem's
//      32     8  seq              this transaction's sequence number
//      40     4  payload crc32c   over bytes 48..frame length (the ops and their zero padding)
//      44     4  header crc32c    over bytes 0..44
//      48     …  payload, then zeros up to the frame length
//                frame length = payload length + 48 rounded up to a multiple of 4096
pub(super) const FRAME_OFF_RESERVED: usize = OFF_VERSION + 2;
pub(super) const FRAME_OFF_PAYLOAD_LEN: usize = FRAME_OFF_RESERVED + 2;
pub(super) const FRAME_OFF_UUID: usize = FRAME_OFF_PAYLOAD_LEN + 4;
pub(super) const FRAME_OFF_SEQ: usize = FRAME_OFF_UUID + 16;
pub(super) const FRAME_OFF_PAYLOAD_CRC: usize = FRAME_OFF_SEQ + 8;
pub(super) const FRAME_OFF_HEADER_CRC: usize = FRAME_OFF_PAYLOAD_CRC + 4;
/// Bytes of a log frame's fixed header; the payload follows.
pub const FRAME_HEADER_LEN: usize = FRAME_OFF_HEADER_CRC + 4;
const _: () = assert!(FRAME_HEADER_LEN == 48);
pub(super) fn round_up_to_block(n: usize) -> Option<usize> {
    n.checked_next_multiple_of(BLOCK)
}
/// Encodes `t` as one log frame: header, ops, zeros up to a multiple of [`BLOCK_SIZE`]
/// (diagram in docs/format.md, "Log frame").
///
/// Panics on a name longer than [`MAX_NAME_LEN`] or a payload over u32::MAX bytes: caller bugs.
///
/// [`BLOCK_SIZE`]: super::BLOCK_SIZE
/// [`MAX_NAME_LEN`]: super::MAX_NAME_LEN
pub fn encode_transaction(t: &Transaction) -> Vec<u8> {
    let mut frame = vec![0u8; FRAME_HEADER_LEN];
    put_count(&mut frame, t.ops.len(), "transaction ops");
    for op in &t.ops {
        put_op(&mut frame, op);
    }
    let payload_len = u32::try_from(frame.len() - FRAME_HEADER_LEN)
        .expect("transaction payload is over u32::MAX bytes");
    let frame_len = round_up_to_block(frame.len()).expect("frame length overflows usize");
    frame.resize(frame_len, 0);
    set(&mut frame, OFF_MAGIC, &FRAME_MAGIC);
    set(
        &mut frame,
        OFF_VERSION,
        &FormatVersion::CURRENT.as_u16().to_le_bytes(),
    );
    set(
        &mut frame,
        FRAME_OFF_PAYLOAD_LEN,
        &payload_len.to_le_bytes(),
    );
    set(&mut frame, FRAME_OFF_UUID, &t.uuid);
    set(&mut frame, FRAME_OFF_SEQ, &t.seq.to_le_bytes());
    let payload_crc = crc32c::crc32c(&frame[FRAME_HEADER_LEN..]);
    set(
        &mut frame,
        FRAME_OFF_PAYLOAD_CRC,
        &payload_crc.to_le_bytes(),
    );
    let header_crc = crc32c::crc32c(&frame[..FRAME_OFF_HEADER_CRC]);
    set(&mut frame, FRAME_OFF_HEADER_CRC, &header_crc.to_le_bytes());
    frame
}

/// What a valid frame header says.
struct FrameHeader {
    payload_len: usize,
    frame_len: usize,
    uuid: Uuid,
    seq: u64,
    payload_crc: u32,
}

/// Checks magic, version and header crc, in that order.
fn read_frame_header(b: &[u8]) -> Result<FrameHeader, FrameEnd> {
    if b.len() < OFF_VERSION {
        return Err(FrameEnd::Truncated);
    }
    if b[OFF_MAGIC..OFF_VERSION] != FRAME_MAGIC {
        return Err(FrameEnd::BadMagic);
    }
    if b.len() < FRAME_HEADER_LEN {
        return Err(FrameEnd::Truncated);
    }
    let version = get_u16(b, OFF_VERSION);
    if FormatVersion::from_u16(version).is_none() {
        return Err(FrameEnd::UnsupportedVersion(version));
    }
    if get_u32(b, FRAME_OFF_HEADER_CRC) != crc32c::crc32c(&b[..FRAME_OFF_HEADER_CRC]) {
        return Err(FrameEnd::HeaderChecksum);
    }
    let payload_len = get_u32(b, FRAME_OFF_PAYLOAD_LEN) as usize;
    let frame_len = FRAME_HEADER_LEN
        .checked_add(payload_len)
        .and_then(round_up_to_block)
        .ok_or(FrameEnd::Truncated)?;
    let mut uuid = Uuid::default();
    uuid.copy_from_slice(&b[FRAME_OFF_UUID..FRAME_OFF_SEQ]);
    Ok(FrameHeader {
        payload_len,
        frame_len,
        uuid,
        seq: get_u64(b, FRAME_OFF_SEQ),
        payload_crc: get_u32(b, FRAME_OFF_PAYLOAD_CRC),
    })
}

/// The whole frame's length (a multiple of [`BLOCK_SIZE`]) if `header` starts with a valid frame
/// header (magic, version, header crc); None otherwise, or if it is shorter than
/// [`FRAME_HEADER_LEN`]. Replay reads one block, asks this, then reads the rest of the frame.
///
/// [`BLOCK_SIZE`]: super::BLOCK_SIZE
pub fn frame_len_from_header(header: &[u8]) -> Option<usize> {
    read_frame_header(header).ok().map(|h| h.frame_len)
}

/// The uuid and sequence number of a valid frame header (magic, version, header crc), without
/// the payload: what mount uses to tell a torn log tail from damage in the middle of the log.
pub fn peek_frame(header: &[u8]) -> Option<(Uuid, u64)> {
    read_frame_header(header).ok().map(|h| (h.uuid, h.seq))
}

/// Decodes the frame at the start of `frame`, which must belong to filesystem `uuid` and carry
/// sequence number `expected_seq`. Returns the transaction and the frame's length (where the
/// next frame starts, unless a Jump says otherwise). Bytes past the frame are ignored.
///
/// Checks, in order: magic, header length, version, header crc, uuid, seq, frame length,
/// payload crc, ops. Any failure is where the log ends.
pub fn decode_transaction(
    frame: &[u8],
    uuid: &Uuid,
    expected_seq: u64,
) -> Result<(Transaction, usize), FrameEnd> {
    let h = read_frame_header(frame)?;
    if h.uuid != *uuid {
        return Err(FrameEnd::UuidMismatch);
    }
    if h.seq != expected_seq {
        return Err(FrameEnd::SeqMismatch {
            expected: expected_seq,
            found: h.seq,
        });
    }
    if frame.len() < h.frame_len {
        return Err(FrameEnd::Truncated);
    }
    let actual = crc32c::crc32c(&frame[FRAME_HEADER_LEN..h.frame_len]);
    if actual != h.payload_crc {
        return Err(FrameEnd::PayloadChecksum {
            expected: h.payload_crc,
            actual,
        });
    }
    let payload = &frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.payload_len];
    let ops = read_ops(payload).map_err(FrameEnd::BadPayload)?;
    Ok((
        Transaction {
            uuid: h.uuid,
            seq: h.seq,
            ops,
        },
        h.frame_len,
    ))
}
