//! BlueFS on-disk formats: the device label, the superblock and the log (journal) frames.
//!
//! Byte diagrams are in docs/format.md, "BlueFS", and repeated beside each encoder. Rules
//! for all of them: little-endian integers; an 8-byte magic and a u16 [`FormatVersion`] first; a
//! crc32c over every byte of the structure except the checksum field itself, zero padding
//! included, so any flipped byte is caught; offsets built as constants from the previous field.
//!
//! Decoders take untrusted bytes: they never panic, never allocate more than the input could
//! hold, and say what is wrong. The superblock encoder refuses, with an error, anything its
//! decoder would refuse (too many log extents among them). The transaction encoder trusts its
//! input: a name over [`MAX_NAME_LEN`] or a payload over u32::MAX bytes is a caller bug and
//! panics.
//!
//! The device layout:
//! ```text
//!  block 0 (offset 0)      label           every BlueFS-owned device (WAL, DB, SLOW)
//!  block 1 (offset 4096)   superblock A    DB device (or the only device)
//!  block 2 (offset 8192)   superblock B    DB device (or the only device)
//!  offset 12288 …          allocatable     (RESERVED_PREFIX; the same on every device)
//! ```
//!
//! Layout, one structure per file: `label` (block 0 of every device), `superblock` (the two
//! slots on the DB device), `frame` (a log frame: header and checksums around a transaction),
//! `op` (the log ops a frame's payload carries, and their tags), `extent` (device ids, extents
//! and fnodes, which the superblock and the ops embed), `codec` (what they all share:
//! fixed-position access, the variable-length writer and the checked reader). The format
//! version, the layout constants and the label/superblock error are here.

mod codec;
mod extent;
mod frame;
mod label;
mod op;
mod superblock;
#[cfg(test)]
mod tests;

pub use self::extent::{DeviceId, Extent, Fnode};
pub use self::frame::{
    FRAME_HEADER_LEN, FRAME_MAGIC, FrameEnd, Transaction, decode_transaction, encode_transaction,
    frame_len_from_header, peek_frame,
};
pub use self::label::{LABEL_MAGIC, Label, decode_label, encode_label};
pub use self::op::{LogOp, MAX_INLINE_DATA};
pub use self::superblock::{
    MAX_SUPERBLOCK_LOG_EXTENTS, SUPERBLOCK_MAGIC, Superblock, decode_superblock, encode_superblock,
};

/// The BlueFS block: every structure and every log frame is padded to a multiple of it.
pub const BLOCK_SIZE: u64 = 4096;
/// Where the label lives: block 0 of each BlueFS-owned device.
pub const LABEL_OFFSET: u64 = 0;
/// The two superblock slots, blocks 1 and 2 of the DB device (or the only device). Writes
/// alternate between them; at mount the valid one with the highest generation wins, so a torn
/// superblock write never loses the filesystem.
pub const SUPERBLOCK_OFFSETS: [u64; 2] = [BLOCK_SIZE, 2 * BLOCK_SIZE];
/// Bytes at the start of every device that are never allocated (label + superblock slots). WAL
/// and SLOW devices only use the label block but keep the same prefix, for simplicity.
pub const RESERVED_PREFIX: u64 = 3 * BLOCK_SIZE;
/// Longest directory or file name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 4096;

pub use bluepoll_base::id::Uuid;

const BLOCK: usize = BLOCK_SIZE as usize;

/// The BlueFS format version, shared by the label, the superblock and log frames. Any change to
/// the meaning or position of a field adds a version; a build reads only the versions listed
/// here and refuses the rest with `UnsupportedVersion` (never guesses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum FormatVersion {
    /// The label, superblock and frame layouts of docs/format.md, with all twelve log ops.
    V1 = 1,
}

impl FormatVersion {
    /// What this build writes.
    pub const CURRENT: FormatVersion = FormatVersion::V1;

    /// The version stored as `v`; None for a version this build does not read.
    pub const fn from_u16(v: u16) -> Option<FormatVersion> {
        match v {
            1 => Some(FormatVersion::V1),
            _ => None,
        }
    }

    /// The value stored on disk, in the u16 after each magic.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// Whether log frames may carry `FileUpdateDelta` (extents appended to a file) instead of
    /// rewriting the full fnode on every append.
    pub const fn has_file_update_delta(self) -> bool {
        match self {
            FormatVersion::V1 => true,
        }
    }

    /// How many superblock slots the DB device holds (the valid one with the highest generation
    /// wins).
    pub const fn superblock_slots(self) -> usize {
        match self {
            FormatVersion::V1 => SUPERBLOCK_OFFSETS.len(),
        }
    }
}

/// Why a label or superblock could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The block does not start with the structure's magic: it is not (or no longer) a BlueFS
    /// label or superblock, or was never written.
    #[error("{what}: bad magic (not a bluepoll BlueFS {what})")]
    BadMagic {
        /// The structure: `"label"` or `"superblock"`.
        what: &'static str,
    },
    /// The magic matched, but the block is of a format version this build does not read.
    #[error("{what}: format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// The structure: `"label"` or `"superblock"`.
        what: &'static str,
        /// The version the block carries.
        found: u16,
        /// The version this build writes ([`FormatVersion::CURRENT`]).
        supported: u16,
    },
    /// The crc32c stored in the block does not match its bytes: a torn or damaged write.
    #[error("{what}: checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    ChecksumMismatch {
        /// The structure: `"label"` or `"superblock"`.
        what: &'static str,
        /// The crc32c stored in the block.
        expected: u32,
        /// The crc32c of the block's bytes, the checksum field skipped.
        actual: u32,
    },
    /// The input is shorter than a block, or the block is intact but a field is out of range
    /// (device byte, block size, allocation unit, log extents). The superblock encoder returns
    /// it too, for what the decoder would refuse.
    #[error("{what}: {reason}")]
    Invalid {
        /// The structure: `"label"` or `"superblock"`.
        what: &'static str,
        /// What is wrong, naming the field.
        reason: String,
    },
}
