//! The superblock: where the log starts, in one of two slots on the DB device.

use super::codec::{
    EXTENT_LEN, FNODE_FIXED_LEN, OFF_MAGIC, OFF_VERSION, Reader, add_extent_length, check_crc,
    check_extent, check_magic_version, crc_skipping, get_u32, get_u64, put_fnode, set,
};
use super::{BLOCK, BLOCK_SIZE, DeviceId, Fnode, FormatError, FormatVersion, Uuid};

/// Where the log starts. Lives in one of the two [`SUPERBLOCK_OFFSETS`](super::SUPERBLOCK_OFFSETS)
/// slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The filesystem's uuid (the labels'): mount ignores a slot holding another one.
    pub uuid: Uuid,
    /// Bumped at every write; the valid slot with the highest generation wins.
    pub generation: u64,
    /// [`BLOCK_SIZE`]; the decoder refuses anything else.
    pub block_size: u32,
    /// Allocation unit per [`DeviceId::index`], in bytes: 0 (device not used) or a multiple of
    /// `block_size`.
    pub alloc_units: [u64; 3],
    /// The log file (ino 1): where it starts. Its later growth is recorded in the log itself.
    /// At most [`MAX_SUPERBLOCK_LOG_EXTENTS`] extents.
    pub log_fnode: Fnode,
    /// Sequence number of the log's first transaction.
    pub log_first_seq: u64,
}

/// The first 8 bytes of a superblock slot.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"BPFSSUPR";

//  offset  size  field
//       0     8  magic          "BPFSSUPR"
//       8     2  version        1
//      10     2  reserved       0
//      12     4  crc32c         over bytes 0..12 and 16..4096
//      16    16  uuid
//      32     8  generation
//      40     4  block size     4096
//      44     4  reserved       0
//      48     8  alloc unit     wal  (0 = device not used)
//      56     8  alloc unit     db
//      64     8  alloc unit     slow
//      72     8  log first seq
//      80    28  log fnode      ino u64, size u64, mtime_ns u64, extent count u32
//     108  17×n  log extents    device u8, offset u64, length u64 each (n ≤ 234)
//       …     …  zero up to 4096
pub(super) const SB_OFF_RESERVED: usize = OFF_VERSION + 2;
pub(super) const SB_OFF_CRC: usize = SB_OFF_RESERVED + 2;
pub(super) const SB_OFF_UUID: usize = SB_OFF_CRC + 4;
pub(super) const SB_OFF_GENERATION: usize = SB_OFF_UUID + 16;
pub(super) const SB_OFF_BLOCK_SIZE: usize = SB_OFF_GENERATION + 8;
pub(super) const SB_OFF_RESERVED2: usize = SB_OFF_BLOCK_SIZE + 4;
pub(super) const SB_OFF_ALLOC_UNITS: usize = SB_OFF_RESERVED2 + 4;
pub(super) const SB_OFF_LOG_FIRST_SEQ: usize = SB_OFF_ALLOC_UNITS + 3 * 8;
pub(super) const SB_OFF_LOG_FNODE: usize = SB_OFF_LOG_FIRST_SEQ + 8;
const _: () = assert!(SB_OFF_LOG_FNODE == 80);

/// Most extents the log fnode may have in the superblock (what fits in one block). Give the
/// initial log few extents; once mounted, its growth is recorded in the log itself.
pub const MAX_SUPERBLOCK_LOG_EXTENTS: usize =
    (BLOCK - SB_OFF_LOG_FNODE - FNODE_FIXED_LEN) / EXTENT_LEN;
const _: () = assert!(MAX_SUPERBLOCK_LOG_EXTENTS == 234);

/// The superblock: exactly [`BLOCK_SIZE`] bytes (diagram in docs/format.md, "Superblock").
///
/// Refuses (`FormatError::Invalid`) what the decoder would refuse: more than
/// [`MAX_SUPERBLOCK_LOG_EXTENTS`] log extents, a block size other than [`BLOCK_SIZE`], an
/// allocation unit that is not a multiple of it, an invalid log extent. Nothing is written then,
/// so the slots on disk keep what they had.
pub fn encode_superblock(s: &Superblock) -> Result<Vec<u8>, FormatError> {
    const WHAT: &str = "superblock";
    let invalid = |reason: String| FormatError::Invalid { what: WHAT, reason };
    let extents = &s.log_fnode.extents;
    if extents.len() > MAX_SUPERBLOCK_LOG_EXTENTS {
        return Err(invalid(format!(
            "log fnode has {} extents, at most {MAX_SUPERBLOCK_LOG_EXTENTS} fit",
            extents.len()
        )));
    }
    if u64::from(s.block_size) != BLOCK_SIZE {
        return Err(invalid(format!(
            "block size {} is not supported (this build uses {BLOCK_SIZE})",
            s.block_size
        )));
    }
    for device in DeviceId::ALL {
        let unit = s.alloc_units[device.index()];
        if unit % BLOCK_SIZE != 0 {
            return Err(invalid(format!(
                "{} allocation unit {unit} is not a multiple of the block size {BLOCK_SIZE}",
                device.name()
            )));
        }
    }
    let mut total = 0u64;
    for (i, e) in extents.iter().enumerate() {
        let checked =
            check_extent(e.offset, e.length).and_then(|()| add_extent_length(total, e.length));
        total = checked.map_err(|reason| invalid(format!("log fnode: extent {i}: {reason}")))?;
    }
    let mut b = vec![0u8; BLOCK];
    set(&mut b, OFF_MAGIC, &SUPERBLOCK_MAGIC);
    set(
        &mut b,
        OFF_VERSION,
        &FormatVersion::CURRENT.as_u16().to_le_bytes(),
    );
    set(&mut b, SB_OFF_UUID, &s.uuid);
    set(&mut b, SB_OFF_GENERATION, &s.generation.to_le_bytes());
    set(&mut b, SB_OFF_BLOCK_SIZE, &s.block_size.to_le_bytes());
    for device in DeviceId::ALL {
        let unit = s.alloc_units[device.index()];
        set(
            &mut b,
            SB_OFF_ALLOC_UNITS + 8 * device.index(),
            &unit.to_le_bytes(),
        );
    }
    set(&mut b, SB_OFF_LOG_FIRST_SEQ, &s.log_first_seq.to_le_bytes());
    let mut fnode = Vec::with_capacity(BLOCK - SB_OFF_LOG_FNODE);
    put_fnode(&mut fnode, &s.log_fnode);
    set(&mut b, SB_OFF_LOG_FNODE, &fnode);
    let crc = crc_skipping(&b, SB_OFF_CRC);
    set(&mut b, SB_OFF_CRC, &crc.to_le_bytes());
    Ok(b)
}

/// Decodes a superblock from the first [`BLOCK_SIZE`] bytes of `block` (bytes past it are
/// ignored). Checks, in order: magic, length, version, crc32c, block size, allocation units,
/// the log fnode (extent count, each extent).
pub fn decode_superblock(block: &[u8]) -> Result<Superblock, FormatError> {
    const WHAT: &str = "superblock";
    let invalid = |reason: String| FormatError::Invalid { what: WHAT, reason };
    check_magic_version(block, WHAT, &SUPERBLOCK_MAGIC)?;
    let b = &block[..BLOCK];
    check_crc(b, SB_OFF_CRC, WHAT)?;
    let block_size = get_u32(b, SB_OFF_BLOCK_SIZE);
    if u64::from(block_size) != BLOCK_SIZE {
        return Err(invalid(format!(
            "block size {block_size} is not supported (this build uses {BLOCK_SIZE})"
        )));
    }
    let mut alloc_units = [0u64; 3];
    for device in DeviceId::ALL {
        let unit = get_u64(b, SB_OFF_ALLOC_UNITS + 8 * device.index());
        if unit % BLOCK_SIZE != 0 {
            return Err(invalid(format!(
                "{} allocation unit {unit} is not a multiple of the block size {BLOCK_SIZE}",
                device.name()
            )));
        }
        alloc_units[device.index()] = unit;
    }
    let mut r = Reader::new(&b[SB_OFF_LOG_FNODE..]);
    let log_fnode = r.fnode().map_err(|e| invalid(format!("log fnode: {e}")))?;
    if log_fnode.extents.len() > MAX_SUPERBLOCK_LOG_EXTENTS {
        // Cannot happen: more do not fit in the block. Kept so the limit is stated once here.
        return Err(invalid(format!(
            "log fnode has {} extents, at most {MAX_SUPERBLOCK_LOG_EXTENTS} fit",
            log_fnode.extents.len()
        )));
    }
    let mut uuid = Uuid::default();
    uuid.copy_from_slice(&b[SB_OFF_UUID..SB_OFF_GENERATION]);
    Ok(Superblock {
        uuid,
        generation: get_u64(b, SB_OFF_GENERATION),
        block_size,
        alloc_units,
        log_fnode,
        log_first_seq: get_u64(b, SB_OFF_LOG_FIRST_SEQ),
    })
}
