//! BlueFS on-disk formats: the device label, the superblock and the log (journal) frames.
//!
//! Byte diagrams are in docs/format.md, "BlueFS", and repeated beside each encoder below. Rules
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
    V1 = 1,
}

impl FormatVersion {
    /// What this build writes.
    pub const CURRENT: FormatVersion = FormatVersion::V1;

    pub const fn from_u16(v: u16) -> Option<FormatVersion> {
        match v {
            1 => Some(FormatVersion::V1),
            _ => None,
        }
    }

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

/// A device BlueFS puts files on. The discriminant is the byte stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceId {
    Wal = 0,
    Db = 1,
    Slow = 2,
}

impl DeviceId {
    pub const ALL: [DeviceId; 3] = [DeviceId::Wal, DeviceId::Db, DeviceId::Slow];

    /// Index into per-device arrays (`Superblock::alloc_units`, …): the on-disk byte.
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn from_u8(v: u8) -> Option<DeviceId> {
        match v {
            0 => Some(DeviceId::Wal),
            1 => Some(DeviceId::Db),
            2 => Some(DeviceId::Slow),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DeviceId::Wal => "wal",
            DeviceId::Db => "db",
            DeviceId::Slow => "slow",
        }
    }
}

/// A run of bytes on one device. Decoded extents have `length > 0` and `offset + length` within
/// u64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    pub device: DeviceId,
    pub offset: u64,
    pub length: u64,
}

impl Extent {
    /// First byte past the extent.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// A file: inode number, size, modification time and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Fnode {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: u64,
    pub extents: Vec<Extent>,
}

impl Fnode {
    /// Bytes allocated to the file: the sum of its extent lengths (saturating).
    pub fn allocated(&self) -> u64 {
        self.extents
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.length))
    }
}

/// Block 0 of every BlueFS-owned device: which filesystem and which role the device has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub uuid: Uuid,
    pub device: DeviceId,
    pub device_size: u64,
    pub created_ns: u64,
}

/// Where the log starts. Lives in one of the two [`SUPERBLOCK_OFFSETS`] slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
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

/// One metadata change recorded in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOp {
    Init {
        created_ns: u64,
    },
    DirCreate {
        name: String,
    },
    DirRemove {
        name: String,
    },
    DirLink {
        dir: String,
        name: String,
        ino: u64,
    },
    DirUnlink {
        dir: String,
        name: String,
    },
    /// The full fnode, replacing any earlier one with the same ino.
    FileUpdate(Fnode),
    /// New size and mtime, and extents appended to the file's list.
    FileUpdateDelta {
        ino: u64,
        size: u64,
        mtime_ns: u64,
        appended: Vec<Extent>,
    },
    FileRemove {
        ino: u64,
    },
    /// Like `FileUpdateDelta`, for an fsync that wrote the appended bytes and this frame under
    /// one flush: bytes `data_from..size` of the file have crc32c `data_crc`. Replay checks
    /// them when this is in the log's last frame (only the last can have been cut short) and,
    /// if they do not match, ends the log before that frame.
    FileAppendChecked {
        ino: u64,
        size: u64,
        mtime_ns: u64,
        appended: Vec<Extent>,
        data_from: u64,
        data_crc: u32,
    },
    /// An append whose bytes travel in the log record itself: the file's bytes from
    /// `data_from` (block-aligned: the partial block before the append is repeated whole) to
    /// `size`, which is `data_from + data.len()`. The file's own extents get them later; until
    /// then (and at every replay) this record is their durable copy.
    FileAppendInline {
        ino: u64,
        size: u64,
        mtime_ns: u64,
        appended: Vec<Extent>,
        data_from: u64,
        data: Vec<u8>,
    },
    /// The next frame starts at this byte offset of the log file.
    Jump {
        offset: u64,
    },
    /// The next frame's sequence number.
    JumpSeq {
        seq: u64,
    },
}

/// One log frame's content: the filesystem it belongs to, its sequence number, its ops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub uuid: Uuid,
    pub seq: u64,
    pub ops: Vec<LogOp>,
}

/// Why replay stops at a frame. Every variant means "end of the log" (a torn or never-written
/// frame), not corruption of committed data: committed frames were flushed before the next one
/// was written.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameEnd {
    #[error("bad frame magic (nothing written here)")]
    BadMagic,
    #[error("frame format version {0} is not supported (this build reads {supported})", supported = FormatVersion::CURRENT.as_u16())]
    UnsupportedVersion(u16),
    #[error("frame header checksum mismatch")]
    HeaderChecksum,
    #[error("frame payload checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    PayloadChecksum { expected: u32, actual: u32 },
    #[error("frame belongs to another filesystem (uuid mismatch)")]
    UuidMismatch,
    #[error("frame sequence {found}, expected {expected}")]
    SeqMismatch { expected: u64, found: u64 },
    #[error("frame truncated (fewer bytes than its header says)")]
    Truncated,
    #[error("frame payload: {0}")]
    BadPayload(String),
}

/// Why a label or superblock could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("{what}: bad magic (not a bluepoll BlueFS {what})")]
    BadMagic { what: &'static str },
    #[error("{what}: format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        what: &'static str,
        found: u16,
        supported: u16,
    },
    #[error("{what}: checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    ChecksumMismatch {
        what: &'static str,
        expected: u32,
        actual: u32,
    },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

// ---------------------------------------------------------------------------------------------
// Shared pieces: fixed-position access, the variable-length writer and the checked reader.

/// The leading fields every structure shares.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = OFF_MAGIC + 8;

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn set(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

/// crc32c of `b` with the 4-byte field at `crc_at` skipped.
fn crc_skipping(b: &[u8], crc_at: usize) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[..crc_at]), &b[crc_at + 4..])
}

fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A count prefix. Panics past u32::MAX items (no in-memory list gets there by accident).
fn put_count(out: &mut Vec<u8>, n: usize, what: &str) {
    let n = u32::try_from(n).unwrap_or_else(|_| panic!("{what}: {n} items, more than u32::MAX"));
    put_u32(out, n);
}

/// Name: u16 length, then that many bytes of UTF-8.
fn put_name(out: &mut Vec<u8>, name: &str) {
    assert!(
        name.len() <= MAX_NAME_LEN,
        "BlueFS name of {} bytes is longer than MAX_NAME_LEN ({MAX_NAME_LEN})",
        name.len()
    );
    put_u16(out, name.len() as u16);
    out.extend_from_slice(name.as_bytes());
}

/// Extent: device u8, offset u64, length u64 (17 bytes).
const EXTENT_LEN: usize = 1 + 8 + 8;

fn put_extent(out: &mut Vec<u8>, e: &Extent) {
    put_u8(out, e.device as u8);
    put_u64(out, e.offset);
    put_u64(out, e.length);
}

fn put_extents(out: &mut Vec<u8>, extents: &[Extent]) {
    put_count(out, extents.len(), "extent list");
    for e in extents {
        put_extent(out, e);
    }
}

/// Fnode: ino u64, size u64, mtime_ns u64, extent count u32, extents.
const FNODE_FIXED_LEN: usize = 8 + 8 + 8 + 4;

fn put_fnode(out: &mut Vec<u8>, f: &Fnode) {
    put_u64(out, f.ino);
    put_u64(out, f.size);
    put_u64(out, f.mtime_ns);
    put_extents(out, &f.extents);
}

/// What makes an extent valid, besides its device byte.
fn check_extent(offset: u64, length: u64) -> Result<(), String> {
    if length == 0 {
        return Err("length is 0".to_string());
    }
    if offset.checked_add(length).is_none() {
        return Err(format!(
            "offset {offset:#x} + length {length:#x} overflows u64"
        ));
    }
    Ok(())
}

/// Running total of one extent list's lengths, which must fit in u64.
fn add_extent_length(total: u64, length: u64) -> Result<u64, String> {
    total
        .checked_add(length)
        .ok_or_else(|| "extents total more than u64::MAX bytes".to_string())
}

/// Reads variable-length fields from untrusted bytes. Every method checks the bytes are there
/// first; errors name the field and are wrapped by callers with where it was.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], String> {
        if self.remaining() < n {
            return Err(format!(
                "{field}: needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.remaining()
            ));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn u8(&mut self, field: &str) -> Result<u8, String> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16, String> {
        Ok(get_u16(self.take(2, field)?, 0))
    }

    fn u32(&mut self, field: &str) -> Result<u32, String> {
        Ok(get_u32(self.take(4, field)?, 0))
    }

    fn u64(&mut self, field: &str) -> Result<u64, String> {
        Ok(get_u64(self.take(8, field)?, 0))
    }

    /// A u32 count of items each at least `min_item_len` bytes, checked against what is left
    /// before anyone allocates for it.
    fn count(&mut self, field: &str, min_item_len: usize) -> Result<usize, String> {
        let n = self.u32(field)? as usize;
        let fits = self.remaining() / min_item_len;
        if n > fits {
            return Err(format!(
                "{field}: count {n} cannot fit in the {} bytes left (at most {fits})",
                self.remaining()
            ));
        }
        Ok(n)
    }

    fn name(&mut self, field: &str) -> Result<String, String> {
        let len = self.u16(field)? as usize;
        if len > MAX_NAME_LEN {
            return Err(format!(
                "{field}: length {len} is over the {MAX_NAME_LEN}-byte limit"
            ));
        }
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("{field}: not valid UTF-8 ({e})"))
    }

    fn extent(&mut self) -> Result<Extent, String> {
        let raw = self.u8("device")?;
        let device = DeviceId::from_u8(raw)
            .ok_or_else(|| format!("device byte {raw} is not 0 (wal), 1 (db) or 2 (slow)"))?;
        let offset = self.u64("offset")?;
        let length = self.u64("length")?;
        check_extent(offset, length)?;
        Ok(Extent {
            device,
            offset,
            length,
        })
    }

    /// Count-prefixed extents; their total length must fit in u64 too.
    fn extents(&mut self) -> Result<Vec<Extent>, String> {
        let n = self.count("extent count", EXTENT_LEN)?;
        let mut extents = Vec::with_capacity(n);
        let mut total = 0u64;
        for i in 0..n {
            let e = self.extent().map_err(|e| format!("extent {i}: {e}"))?;
            total = add_extent_length(total, e.length).map_err(|e| format!("extent {i}: {e}"))?;
            extents.push(e);
        }
        Ok(extents)
    }

    fn fnode(&mut self) -> Result<Fnode, String> {
        Ok(Fnode {
            ino: self.u64("ino")?,
            size: self.u64("size")?,
            mtime_ns: self.u64("mtime")?,
            extents: self.extents()?,
        })
    }
}

/// Magic first (so zeroed or foreign blocks say so), then length, then version.
fn check_magic_version(
    b: &[u8],
    what: &'static str,
    magic: &[u8; 8],
) -> Result<FormatVersion, FormatError> {
    if b.len() >= OFF_VERSION && b[OFF_MAGIC..OFF_VERSION] != magic[..] {
        return Err(FormatError::BadMagic { what });
    }
    if b.len() < BLOCK {
        return Err(short_block(what, b.len()));
    }
    let found = get_u16(b, OFF_VERSION);
    FormatVersion::from_u16(found).ok_or(FormatError::UnsupportedVersion {
        what,
        found,
        supported: FormatVersion::CURRENT.as_u16(),
    })
}

fn short_block(what: &'static str, len: usize) -> FormatError {
    FormatError::Invalid {
        what,
        reason: format!("{len} bytes given, a {what} is one {BLOCK}-byte block"),
    }
}

fn check_crc(block: &[u8], crc_at: usize, what: &'static str) -> Result<(), FormatError> {
    let expected = get_u32(block, crc_at);
    let actual = crc_skipping(block, crc_at);
    if expected != actual {
        return Err(FormatError::ChecksumMismatch {
            what,
            expected,
            actual,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Label.

pub const LABEL_MAGIC: [u8; 8] = *b"BPFSLABL";

//  offset  size  field
//       0     8  magic          "BPFSLABL"
//       8     2  version        1
//      10     1  device         0 wal, 1 db, 2 slow
//      11     1  reserved       0
//      12     4  crc32c         over bytes 0..12 and 16..4096
//      16    16  uuid
//      32     8  device size    bytes
//      40     8  created        ns since the Unix epoch
//      48     …  zero up to 4096
const LABEL_OFF_DEVICE: usize = OFF_VERSION + 2;
const LABEL_OFF_RESERVED: usize = LABEL_OFF_DEVICE + 1;
const LABEL_OFF_CRC: usize = LABEL_OFF_RESERVED + 1;
const LABEL_OFF_UUID: usize = LABEL_OFF_CRC + 4;
const LABEL_OFF_DEVICE_SIZE: usize = LABEL_OFF_UUID + 16;
const LABEL_OFF_CREATED: usize = LABEL_OFF_DEVICE_SIZE + 8;
const LABEL_END: usize = LABEL_OFF_CREATED + 8;
const _: () = assert!(LABEL_END == 48);

/// The label block: exactly [`BLOCK_SIZE`] bytes (diagram in docs/format.md, "Label").
pub fn encode_label(l: &Label) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    set(&mut b, OFF_MAGIC, &LABEL_MAGIC);
    set(
        &mut b,
        OFF_VERSION,
        &FormatVersion::CURRENT.as_u16().to_le_bytes(),
    );
    b[LABEL_OFF_DEVICE] = l.device as u8;
    set(&mut b, LABEL_OFF_UUID, &l.uuid);
    set(&mut b, LABEL_OFF_DEVICE_SIZE, &l.device_size.to_le_bytes());
    set(&mut b, LABEL_OFF_CREATED, &l.created_ns.to_le_bytes());
    let crc = crc_skipping(&b, LABEL_OFF_CRC);
    set(&mut b, LABEL_OFF_CRC, &crc.to_le_bytes());
    b
}

/// Decodes a label from the first [`BLOCK_SIZE`] bytes of `block` (bytes past it are ignored).
/// Checks, in order: magic, length, version, crc32c, device byte.
pub fn decode_label(block: &[u8]) -> Result<Label, FormatError> {
    const WHAT: &str = "label";
    check_magic_version(block, WHAT, &LABEL_MAGIC)?;
    let b = &block[..BLOCK];
    check_crc(b, LABEL_OFF_CRC, WHAT)?;
    let raw = b[LABEL_OFF_DEVICE];
    let device = DeviceId::from_u8(raw).ok_or_else(|| FormatError::Invalid {
        what: WHAT,
        reason: format!("device byte {raw} is not 0 (wal), 1 (db) or 2 (slow)"),
    })?;
    let mut uuid = Uuid::default();
    uuid.copy_from_slice(&b[LABEL_OFF_UUID..LABEL_OFF_DEVICE_SIZE]);
    Ok(Label {
        uuid,
        device,
        device_size: get_u64(b, LABEL_OFF_DEVICE_SIZE),
        created_ns: get_u64(b, LABEL_OFF_CREATED),
    })
}

// ---------------------------------------------------------------------------------------------
// Superblock.

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
const SB_OFF_RESERVED: usize = OFF_VERSION + 2;
const SB_OFF_CRC: usize = SB_OFF_RESERVED + 2;
const SB_OFF_UUID: usize = SB_OFF_CRC + 4;
const SB_OFF_GENERATION: usize = SB_OFF_UUID + 16;
const SB_OFF_BLOCK_SIZE: usize = SB_OFF_GENERATION + 8;
const SB_OFF_RESERVED2: usize = SB_OFF_BLOCK_SIZE + 4;
const SB_OFF_ALLOC_UNITS: usize = SB_OFF_RESERVED2 + 4;
const SB_OFF_LOG_FIRST_SEQ: usize = SB_OFF_ALLOC_UNITS + 3 * 8;
const SB_OFF_LOG_FNODE: usize = SB_OFF_LOG_FIRST_SEQ + 8;
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

// ---------------------------------------------------------------------------------------------
// Log frames.

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
const FRAME_OFF_RESERVED: usize = OFF_VERSION + 2;
const FRAME_OFF_PAYLOAD_LEN: usize = FRAME_OFF_RESERVED + 2;
const FRAME_OFF_UUID: usize = FRAME_OFF_PAYLOAD_LEN + 4;
const FRAME_OFF_SEQ: usize = FRAME_OFF_UUID + 16;
const FRAME_OFF_PAYLOAD_CRC: usize = FRAME_OFF_SEQ + 8;
const FRAME_OFF_HEADER_CRC: usize = FRAME_OFF_PAYLOAD_CRC + 4;
/// Bytes of a log frame's fixed header; the payload follows.
pub const FRAME_HEADER_LEN: usize = FRAME_OFF_HEADER_CRC + 4;
const _: () = assert!(FRAME_HEADER_LEN == 48);

// Payload: op count u32, then each op as a tag byte and its fields.
//
//  tag  op                 fields after the tag
//    1  Init               created_ns u64
//    2  DirCreate          name
//    3  DirRemove          name
//    4  DirLink            dir name, name, ino u64
//    5  DirUnlink          dir name, name
//    6  FileUpdate         fnode: ino u64, size u64, mtime_ns u64, extent count u32, extents
//    7  FileUpdateDelta    ino u64, size u64, mtime_ns u64, extent count u32, appended extents
//    8  FileRemove         ino u64
//    9  Jump               offset u64
//   10  JumpSeq            seq u64
//   11  FileAppendChecked  ino u64, size u64, mtime_ns u64, extent count u32, appended extents,
//                          data_from u64, data_crc u32 (crc32c of file bytes data_from..size)
//   12  FileAppendInline   ino u64, size u64, mtime_ns u64, extent count u32, appended extents,
//                          data_from u64 (a multiple of 4096), data length u32
//                          (= size - data_from, ≤ MAX_INLINE_DATA), data bytes
//  name   = length u16 (≤ 4096), then that many bytes of UTF-8
//  extent = device u8 (0 wal, 1 db, 2 slow), offset u64, length u64 (> 0, offset + length ≤ u64::MAX)
// Tag 0 is never an op, so zeroed bytes cannot pass for one.
const TAG_INIT: u8 = 1;
const TAG_DIR_CREATE: u8 = 2;
const TAG_DIR_REMOVE: u8 = 3;
const TAG_DIR_LINK: u8 = 4;
const TAG_DIR_UNLINK: u8 = 5;
const TAG_FILE_UPDATE: u8 = 6;
const TAG_FILE_UPDATE_DELTA: u8 = 7;
const TAG_FILE_REMOVE: u8 = 8;
const TAG_JUMP: u8 = 9;
const TAG_JUMP_SEQ: u8 = 10;
const TAG_FILE_APPEND_CHECKED: u8 = 11;
const TAG_FILE_APPEND_INLINE: u8 = 12;

/// Most bytes one inline append may carry (the writer's limit is far lower; this bounds what a
/// corrupt record can make the decoder allocate).
pub const MAX_INLINE_DATA: usize = 16 << 20;

/// Shortest encoded op (DirCreate of an empty name: tag + u16), bounding a corrupt op count.
const MIN_OP_LEN: usize = 1 + 2;

fn round_up_to_block(n: usize) -> Option<usize> {
    n.checked_next_multiple_of(BLOCK)
}

/// The fields every append op starts with.
fn put_append(out: &mut Vec<u8>, tag: u8, ino: u64, size: u64, mtime_ns: u64, appended: &[Extent]) {
    put_u8(out, tag);
    put_u64(out, ino);
    put_u64(out, size);
    put_u64(out, mtime_ns);
    put_extents(out, appended);
}

fn put_op(out: &mut Vec<u8>, op: &LogOp) {
    match op {
        LogOp::Init { created_ns } => {
            put_u8(out, TAG_INIT);
            put_u64(out, *created_ns);
        }
        LogOp::DirCreate { name } => {
            put_u8(out, TAG_DIR_CREATE);
            put_name(out, name);
        }
        LogOp::DirRemove { name } => {
            put_u8(out, TAG_DIR_REMOVE);
            put_name(out, name);
        }
        LogOp::DirLink { dir, name, ino } => {
            put_u8(out, TAG_DIR_LINK);
            put_name(out, dir);
            put_name(out, name);
            put_u64(out, *ino);
        }
        LogOp::DirUnlink { dir, name } => {
            put_u8(out, TAG_DIR_UNLINK);
            put_name(out, dir);
            put_name(out, name);
        }
        LogOp::FileUpdate(fnode) => {
            put_u8(out, TAG_FILE_UPDATE);
            put_fnode(out, fnode);
        }
        LogOp::FileUpdateDelta {
            ino,
            size,
            mtime_ns,
            appended,
        } => {
            put_append(out, TAG_FILE_UPDATE_DELTA, *ino, *size, *mtime_ns, appended);
        }
        LogOp::FileAppendChecked {
            ino,
            size,
            mtime_ns,
            appended,
            data_from,
            data_crc,
        } => {
            put_append(
                out,
                TAG_FILE_APPEND_CHECKED,
                *ino,
                *size,
                *mtime_ns,
                appended,
            );
            put_u64(out, *data_from);
            put_u32(out, *data_crc);
        }
        LogOp::FileAppendInline {
            ino,
            size,
            mtime_ns,
            appended,
            data_from,
            data,
        } => {
            put_append(
                out,
                TAG_FILE_APPEND_INLINE,
                *ino,
                *size,
                *mtime_ns,
                appended,
            );
            put_u64(out, *data_from);
            assert!(
                data.len() <= MAX_INLINE_DATA,
                "inline append over the limit"
            );
            put_u32(out, data.len() as u32);
            out.extend_from_slice(data);
        }
        LogOp::FileRemove { ino } => {
            put_u8(out, TAG_FILE_REMOVE);
            put_u64(out, *ino);
        }
        LogOp::Jump { offset } => {
            put_u8(out, TAG_JUMP);
            put_u64(out, *offset);
        }
        LogOp::JumpSeq { seq } => {
            put_u8(out, TAG_JUMP_SEQ);
            put_u64(out, *seq);
        }
    }
}

fn op_kind(tag: u8) -> Option<&'static str> {
    Some(match tag {
        TAG_INIT => "Init",
        TAG_DIR_CREATE => "DirCreate",
        TAG_DIR_REMOVE => "DirRemove",
        TAG_DIR_LINK => "DirLink",
        TAG_DIR_UNLINK => "DirUnlink",
        TAG_FILE_UPDATE => "FileUpdate",
        TAG_FILE_UPDATE_DELTA => "FileUpdateDelta",
        TAG_FILE_REMOVE => "FileRemove",
        TAG_JUMP => "Jump",
        TAG_JUMP_SEQ => "JumpSeq",
        TAG_FILE_APPEND_CHECKED => "FileAppendChecked",
        TAG_FILE_APPEND_INLINE => "FileAppendInline",
        _ => return None,
    })
}

fn read_op(r: &mut Reader<'_>) -> Result<LogOp, String> {
    let tag = r.u8("tag")?;
    let kind = op_kind(tag).ok_or_else(|| format!("unknown op tag {tag}"))?;
    read_op_fields(tag, r).map_err(|e| format!("{kind}: {e}"))
}

fn read_op_fields(tag: u8, r: &mut Reader<'_>) -> Result<LogOp, String> {
    Ok(match tag {
        TAG_INIT => LogOp::Init {
            created_ns: r.u64("created")?,
        },
        TAG_DIR_CREATE => LogOp::DirCreate {
            name: r.name("name")?,
        },
        TAG_DIR_REMOVE => LogOp::DirRemove {
            name: r.name("name")?,
        },
        TAG_DIR_LINK => LogOp::DirLink {
            dir: r.name("dir name")?,
            name: r.name("name")?,
            ino: r.u64("ino")?,
        },
        TAG_DIR_UNLINK => LogOp::DirUnlink {
            dir: r.name("dir name")?,
            name: r.name("name")?,
        },
        TAG_FILE_UPDATE => LogOp::FileUpdate(r.fnode()?),
        TAG_FILE_UPDATE_DELTA => LogOp::FileUpdateDelta {
            ino: r.u64("ino")?,
            size: r.u64("size")?,
            mtime_ns: r.u64("mtime")?,
            appended: r.extents()?,
        },
        TAG_FILE_REMOVE => LogOp::FileRemove { ino: r.u64("ino")? },
        TAG_JUMP => LogOp::Jump {
            offset: r.u64("offset")?,
        },
        TAG_JUMP_SEQ => LogOp::JumpSeq { seq: r.u64("seq")? },
        TAG_FILE_APPEND_CHECKED => LogOp::FileAppendChecked {
            ino: r.u64("ino")?,
            size: r.u64("size")?,
            mtime_ns: r.u64("mtime")?,
            appended: r.extents()?,
            data_from: r.u64("data from")?,
            data_crc: r.u32("data crc")?,
        },
        TAG_FILE_APPEND_INLINE => {
            let ino = r.u64("ino")?;
            let size = r.u64("size")?;
            let mtime_ns = r.u64("mtime")?;
            let appended = r.extents()?;
            let data_from = r.u64("data from")?;
            if data_from % BLOCK as u64 != 0 {
                return Err(format!("data from {data_from} is not block-aligned"));
            }
            let len = r.u32("data length")? as usize;
            if len > MAX_INLINE_DATA {
                return Err(format!("{len} bytes of data (at most {MAX_INLINE_DATA})"));
            }
            if data_from.checked_add(len as u64) != Some(size) {
                return Err(format!(
                    "{len} bytes from {data_from} do not end at size {size}"
                ));
            }
            let data = r.take(len, "data")?.to_vec();
            LogOp::FileAppendInline {
                ino,
                size,
                mtime_ns,
                appended,
                data_from,
                data,
            }
        }
        _ => return Err(format!("unknown op tag {tag}")),
    })
}

/// Encodes `t` as one log frame: header, ops, zeros up to a multiple of [`BLOCK_SIZE`]
/// (diagram in docs/format.md, "Log frame").
///
/// Panics on a name longer than [`MAX_NAME_LEN`] or a payload over u32::MAX bytes: caller bugs.
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

fn read_ops(payload: &[u8]) -> Result<Vec<LogOp>, String> {
    let mut r = Reader::new(payload);
    let n = r.count("op count", MIN_OP_LEN)?;
    let mut ops = Vec::with_capacity(n);
    for i in 0..n {
        ops.push(read_op(&mut r).map_err(|e| format!("op {i}: {e}"))?);
    }
    if r.remaining() != 0 {
        return Err(format!("{} stray bytes after the last op", r.remaining()));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UUID: Uuid = [
        0x5a, 0x17, 0x3c, 0x01, 0x9e, 0x42, 0x4b, 0x7d, 0x81, 0x0f, 0xc3, 0x66, 0x2e, 0xd4, 0x90,
        0x11,
    ];

    fn ext(device: DeviceId, offset: u64, length: u64) -> Extent {
        Extent {
            device,
            offset,
            length,
        }
    }

    fn label() -> Label {
        Label {
            uuid: UUID,
            device: DeviceId::Db,
            device_size: 10 << 30,
            created_ns: 1_700_000_000_123_456_789,
        }
    }

    fn superblock(extents: usize) -> Superblock {
        Superblock {
            uuid: UUID,
            generation: 7,
            block_size: BLOCK_SIZE as u32,
            alloc_units: [4096, 65536, 1 << 20],
            log_fnode: Fnode {
                ino: 1,
                size: 0,
                mtime_ns: 42,
                extents: (0..extents as u64)
                    .map(|i| {
                        ext(
                            DeviceId::ALL[i as usize % 3],
                            RESERVED_PREFIX + i * 8192,
                            4096,
                        )
                    })
                    .collect(),
            },
            log_first_seq: 1000,
        }
    }

    /// One of every op, with non-trivial field values.
    fn every_op() -> Vec<LogOp> {
        vec![
            LogOp::Init {
                created_ns: u64::MAX,
            },
            LogOp::DirCreate { name: "db".into() },
            LogOp::DirRemove {
                name: "db.slow".into(),
            },
            LogOp::DirLink {
                dir: "db".into(),
                name: "000012.sst".into(),
                ino: 12,
            },
            LogOp::DirUnlink {
                dir: "db.wal".into(),
                name: "000011.log".into(),
            },
            LogOp::FileUpdate(Fnode {
                ino: 12,
                size: 123_456,
                mtime_ns: 99,
                extents: vec![
                    ext(DeviceId::Db, RESERVED_PREFIX, 65536),
                    ext(DeviceId::Slow, 1 << 40, 65536),
                ],
            }),
            LogOp::FileUpdate(Fnode::default()),
            LogOp::FileUpdateDelta {
                ino: 11,
                size: 8192,
                mtime_ns: 100,
                appended: vec![ext(DeviceId::Wal, u64::MAX - 4096, 4096)],
            },
            LogOp::FileUpdateDelta {
                ino: 11,
                size: 8193,
                mtime_ns: 101,
                appended: vec![],
            },
            LogOp::FileRemove { ino: 12 },
            LogOp::Jump { offset: 1 << 22 },
            LogOp::JumpSeq { seq: 5000 },
            LogOp::FileAppendChecked {
                ino: 13,
                size: 12_288,
                mtime_ns: 102,
                appended: vec![Extent {
                    device: DeviceId::Db,
                    offset: 1 << 20,
                    length: 65536,
                }],
                data_from: 4096,
                data_crc: 0xdead_beef,
            },
            LogOp::FileAppendInline {
                ino: 13,
                size: 12_388,
                mtime_ns: 103,
                appended: vec![],
                data_from: 12_288,
                data: (0..100).collect(),
            },
        ]
    }

    fn txn(seq: u64, ops: Vec<LogOp>) -> Transaction {
        Transaction {
            uuid: UUID,
            seq,
            ops,
        }
    }

    /// A frame with a valid header and payload crc around arbitrary payload bytes.
    fn seal_frame(uuid: &Uuid, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; FRAME_HEADER_LEN];
        frame.extend_from_slice(payload);
        frame.resize(round_up_to_block(frame.len()).unwrap(), 0);
        set(&mut frame, OFF_MAGIC, &FRAME_MAGIC);
        set(&mut frame, OFF_VERSION, &1u16.to_le_bytes());
        set(
            &mut frame,
            FRAME_OFF_PAYLOAD_LEN,
            &(payload.len() as u32).to_le_bytes(),
        );
        set(&mut frame, FRAME_OFF_UUID, uuid);
        set(&mut frame, FRAME_OFF_SEQ, &seq.to_le_bytes());
        reseal_frame(&mut frame);
        frame
    }

    /// Recomputes both crcs of a frame after a test edited it.
    fn reseal_frame(frame: &mut [u8]) {
        let payload_crc = crc32c::crc32c(&frame[FRAME_HEADER_LEN..]);
        set(frame, FRAME_OFF_PAYLOAD_CRC, &payload_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&frame[..FRAME_OFF_HEADER_CRC]);
        set(frame, FRAME_OFF_HEADER_CRC, &header_crc.to_le_bytes());
    }

    /// Recomputes a label's or superblock's crc after a test edited it.
    fn reseal_block(block: &mut [u8], crc_at: usize) {
        let crc = crc_skipping(block, crc_at);
        set(block, crc_at, &crc.to_le_bytes());
    }

    fn payload_error(payload: &[u8]) -> String {
        match decode_transaction(&seal_frame(&UUID, 1, payload), &UUID, 1) {
            Err(FrameEnd::BadPayload(reason)) => reason,
            other => panic!("expected BadPayload, got {other:?}"),
        }
    }

    fn invalid_reason(r: Result<impl std::fmt::Debug, FormatError>) -> String {
        match r {
            Err(FormatError::Invalid { reason, .. }) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    // --- constants, ids, versions ---

    #[test]
    fn layout_constants_agree() {
        assert_eq!(SUPERBLOCK_OFFSETS, [4096, 8192]);
        assert_eq!(RESERVED_PREFIX, 3 * 4096);
        assert!(
            SUPERBLOCK_OFFSETS
                .iter()
                .all(|&o| o + BLOCK_SIZE <= RESERVED_PREFIX)
        );
        assert_eq!(LABEL_OFFSET + BLOCK_SIZE, SUPERBLOCK_OFFSETS[0]);
        let magics = [LABEL_MAGIC, SUPERBLOCK_MAGIC, FRAME_MAGIC];
        assert_ne!(magics[0], magics[1]);
        assert_ne!(magics[1], magics[2]);
        assert_ne!(magics[0], magics[2]);
    }

    #[test]
    fn device_ids() {
        for (i, d) in DeviceId::ALL.into_iter().enumerate() {
            assert_eq!(d.index(), i);
            assert_eq!(DeviceId::from_u8(i as u8), Some(d));
        }
        assert_eq!(DeviceId::from_u8(3), None);
        assert_eq!(DeviceId::from_u8(255), None);
        let names: Vec<_> = DeviceId::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names, ["wal", "db", "slow"]);
    }

    #[test]
    fn format_version() {
        assert_eq!(FormatVersion::CURRENT.as_u16(), 1);
        assert_eq!(FormatVersion::from_u16(1), Some(FormatVersion::V1));
        assert_eq!(FormatVersion::from_u16(0), None);
        assert_eq!(FormatVersion::from_u16(2), None);
        assert!(FormatVersion::V1.has_file_update_delta());
        assert_eq!(FormatVersion::V1.superblock_slots(), 2);
    }

    #[test]
    fn extent_end_and_fnode_allocated() {
        assert_eq!(ext(DeviceId::Db, 4096, 8192).end(), 12288);
        let f = Fnode {
            extents: vec![ext(DeviceId::Db, 0, 4096), ext(DeviceId::Slow, 0, 65536)],
            ..Fnode::default()
        };
        assert_eq!(f.allocated(), 69632);
        assert_eq!(Fnode::default().allocated(), 0);
        let huge = Fnode {
            extents: vec![ext(DeviceId::Db, 0, u64::MAX), ext(DeviceId::Slow, 0, 1)],
            ..Fnode::default()
        };
        assert_eq!(huge.allocated(), u64::MAX);
    }

    // --- label ---

    #[test]
    fn label_round_trips() {
        for device in DeviceId::ALL {
            let l = Label { device, ..label() };
            let b = encode_label(&l);
            assert_eq!(b.len(), BLOCK);
            assert_eq!(&b[..8], b"BPFSLABL");
            assert_eq!(decode_label(&b), Ok(l.clone()));
            // Bytes past the block are ignored (callers may read more than one block).
            let mut longer = b.clone();
            longer.extend_from_slice(&[0xff; 100]);
            assert_eq!(decode_label(&longer), Ok(l));
        }
    }

    #[test]
    fn label_every_bit_flip_is_detected() {
        let good = encode_label(&label());
        for byte in 0..BLOCK {
            for bit in 0..8 {
                let mut b = good.clone();
                b[byte] ^= 1 << bit;
                assert!(
                    decode_label(&b).is_err(),
                    "flip of byte {byte} bit {bit} not detected"
                );
            }
        }
    }

    #[test]
    fn label_errors_name_the_problem() {
        let what = "label";
        assert_eq!(
            decode_label(&[0u8; BLOCK]),
            Err(FormatError::BadMagic { what })
        );
        assert_eq!(
            decode_label(&encode_superblock(&superblock(1)).unwrap()),
            Err(FormatError::BadMagic { what })
        );
        let good = encode_label(&label());
        let reason = invalid_reason(decode_label(&good[..100]));
        assert!(reason.contains("100 bytes"), "{reason}");
        assert!(matches!(
            decode_label(&[]),
            Err(FormatError::Invalid { .. })
        ));

        let mut b = good.clone();
        set(&mut b, OFF_VERSION, &2u16.to_le_bytes());
        assert_eq!(
            decode_label(&b),
            Err(FormatError::UnsupportedVersion {
                what,
                found: 2,
                supported: 1
            })
        );

        let mut b = good.clone();
        b[LABEL_OFF_DEVICE_SIZE] ^= 1;
        let expected = get_u32(&b, LABEL_OFF_CRC);
        let actual = crc_skipping(&b, LABEL_OFF_CRC);
        let err = decode_label(&b).unwrap_err();
        assert_eq!(
            err,
            FormatError::ChecksumMismatch {
                what,
                expected,
                actual
            }
        );
        assert_eq!(
            err.to_string(),
            format!("label: checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")
        );

        let mut b = good.clone();
        b[LABEL_OFF_DEVICE] = 3;
        reseal_block(&mut b, LABEL_OFF_CRC);
        let reason = invalid_reason(decode_label(&b));
        assert!(reason.contains("device byte 3"), "{reason}");
    }

    // --- superblock ---

    #[test]
    fn superblock_round_trips() {
        for n in [0, 1, 2, 17, MAX_SUPERBLOCK_LOG_EXTENTS] {
            let s = superblock(n);
            let b = encode_superblock(&s).unwrap();
            assert_eq!(b.len(), BLOCK);
            assert_eq!(&b[..8], b"BPFSSUPR");
            assert_eq!(decode_superblock(&b), Ok(s));
        }
        let unused_wal = Superblock {
            alloc_units: [0, 4096, 65536],
            ..superblock(1)
        };
        assert_eq!(
            decode_superblock(&encode_superblock(&unused_wal).unwrap()),
            Ok(unused_wal)
        );
    }

    #[test]
    fn superblock_encoder_refuses_what_the_decoder_would() {
        let refused = |s: Superblock| invalid_reason(encode_superblock(&s));
        let r = refused(superblock(MAX_SUPERBLOCK_LOG_EXTENTS + 1));
        assert_eq!(r, "log fnode has 235 extents, at most 234 fit");
        let r = refused(Superblock {
            block_size: 512,
            ..superblock(1)
        });
        assert_eq!(r, "block size 512 is not supported (this build uses 4096)");
        let r = refused(Superblock {
            alloc_units: [4096, 4096, 1000],
            ..superblock(1)
        });
        assert_eq!(
            r,
            "slow allocation unit 1000 is not a multiple of the block size 4096"
        );
        let mut zero_length = superblock(2);
        zero_length.log_fnode.extents[1].length = 0;
        assert_eq!(refused(zero_length), "log fnode: extent 1: length is 0");
        let mut overflowing = superblock(1);
        overflowing.log_fnode.extents[0].offset = u64::MAX;
        assert_eq!(
            refused(overflowing),
            "log fnode: extent 0: offset 0xffffffffffffffff + length 0x1000 overflows u64"
        );
        let mut too_much = superblock(2);
        too_much.log_fnode.extents[0].length = u64::MAX;
        too_much.log_fnode.extents[0].offset = 0;
        assert_eq!(
            refused(too_much),
            "log fnode: extent 1: extents total more than u64::MAX bytes"
        );
    }

    #[test]
    fn superblock_every_bit_flip_is_detected() {
        let good = encode_superblock(&superblock(3)).unwrap();
        for byte in 0..BLOCK {
            for bit in 0..8 {
                let mut b = good.clone();
                b[byte] ^= 1 << bit;
                assert!(
                    decode_superblock(&b).is_err(),
                    "flip of byte {byte} bit {bit} not detected"
                );
            }
        }
    }

    #[test]
    fn superblock_errors_name_the_problem() {
        let what = "superblock";
        let good = encode_superblock(&superblock(2)).unwrap();
        assert_eq!(
            decode_superblock(&[0u8; BLOCK]),
            Err(FormatError::BadMagic { what })
        );
        assert_eq!(
            decode_superblock(&encode_label(&label())),
            Err(FormatError::BadMagic { what })
        );
        assert_eq!(
            FormatError::BadMagic { what }.to_string(),
            "superblock: bad magic (not a bluepoll BlueFS superblock)"
        );
        assert!(matches!(
            decode_superblock(&good[..BLOCK - 1]),
            Err(FormatError::Invalid { .. })
        ));
        let mut b = good.clone();
        set(&mut b, OFF_VERSION, &0u16.to_le_bytes());
        let err = decode_superblock(&b).unwrap_err();
        assert_eq!(
            err.to_string(),
            "superblock: format version 0 is not supported (this build reads 1)"
        );
        let mut b = good.clone();
        b[BLOCK - 1] = 1; // the zero tail is covered too
        assert!(matches!(
            decode_superblock(&b),
            Err(FormatError::ChecksumMismatch { .. })
        ));

        // Fields that are wrong though the checksum is right (a buggy writer).
        let edit = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            reseal_block(&mut b, SB_OFF_CRC);
            invalid_reason(decode_superblock(&b))
        };
        let r = edit(&|b| set(b, SB_OFF_BLOCK_SIZE, &512u32.to_le_bytes()));
        assert!(r.contains("block size 512"), "{r}");
        let r = edit(&|b| set(b, SB_OFF_ALLOC_UNITS + 8, &1000u64.to_le_bytes()));
        assert!(r.contains("db allocation unit 1000"), "{r}");
        let first_extent = SB_OFF_LOG_FNODE + FNODE_FIXED_LEN;
        let r = edit(&|b| b[first_extent] = 9);
        assert!(r.contains("log fnode: extent 0: device byte 9"), "{r}");
        let r = edit(&|b| set(b, first_extent + 9, &0u64.to_le_bytes()));
        assert!(r.contains("log fnode: extent 0: length is 0"), "{r}");
        let r = edit(&|b| set(b, first_extent + EXTENT_LEN + 1, &u64::MAX.to_le_bytes()));
        assert!(
            r.contains("extent 1: offset") && r.contains("overflows"),
            "{r}"
        );
        let count_at = SB_OFF_LOG_FNODE + FNODE_FIXED_LEN - 4;
        let r = edit(&|b| set(b, count_at, &u32::MAX.to_le_bytes()));
        assert!(
            r.contains("extent count: count 4294967295 cannot fit"),
            "{r}"
        );
        // 235 extents of zeros: the count fits the bytes only if it says 234 or fewer.
        let r = edit(&|b| set(b, count_at, &235u32.to_le_bytes()));
        assert!(r.contains("at most 234"), "{r}");
    }

    // --- log frames ---

    #[test]
    fn every_op_round_trips_alone_and_together() {
        for (i, op) in every_op().into_iter().enumerate() {
            let t = txn(i as u64, vec![op]);
            let frame = encode_transaction(&t);
            assert_eq!(frame.len(), BLOCK);
            assert_eq!(decode_transaction(&frame, &UUID, i as u64), Ok((t, BLOCK)));
        }
        let t = txn(77, every_op());
        let frame = encode_transaction(&t);
        assert_eq!(decode_transaction(&frame, &UUID, 77), Ok((t, frame.len())));
    }

    #[test]
    fn op_tags_are_as_documented() {
        let tags: Vec<u8> = every_op()
            .iter()
            .map(|op| {
                let mut out = Vec::new();
                put_op(&mut out, op);
                out[0]
            })
            .collect();
        assert_eq!(tags, [1, 2, 3, 4, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12]);
        let mut out = Vec::new();
        put_op(
            &mut out,
            &LogOp::DirCreate {
                name: String::new(),
            },
        );
        assert_eq!(out.len(), MIN_OP_LEN);
    }

    #[test]
    fn empty_transaction_round_trips() {
        let t = txn(1, vec![]);
        let frame = encode_transaction(&t);
        assert_eq!(frame.len(), BLOCK);
        assert_eq!(get_u32(&frame, FRAME_OFF_PAYLOAD_LEN), 4);
        assert_eq!(decode_transaction(&frame, &UUID, 1), Ok((t, BLOCK)));
    }

    #[test]
    fn longest_names_round_trip() {
        let long = "é".repeat(MAX_NAME_LEN / 2);
        assert_eq!(long.len(), MAX_NAME_LEN);
        let t = txn(
            3,
            vec![LogOp::DirLink {
                dir: long.clone(),
                name: long.clone(),
                ino: 5,
            }],
        );
        let frame = encode_transaction(&t);
        assert_eq!(frame.len(), 3 * BLOCK);
        assert_eq!(decode_transaction(&frame, &UUID, 3), Ok((t, 3 * BLOCK)));
    }

    #[test]
    #[should_panic(expected = "longer than MAX_NAME_LEN")]
    fn encoding_an_over_long_name_is_a_caller_bug() {
        encode_transaction(&txn(
            1,
            vec![LogOp::DirCreate {
                name: "x".repeat(MAX_NAME_LEN + 1),
            }],
        ));
    }

    #[test]
    fn multi_block_frames_and_frame_len_from_header() {
        let extents: Vec<Extent> = (0..1000)
            .map(|i| ext(DeviceId::Slow, i * 65536, 65536))
            .collect();
        let t = txn(
            9,
            vec![LogOp::FileUpdate(Fnode {
                ino: 40,
                size: 1000 * 65536,
                mtime_ns: 1,
                extents,
            })],
        );
        let frame = encode_transaction(&t);
        // 48 header + 4 count + 1 tag + 28 fnode + 17000 extents = 17081 → 5 blocks.
        assert_eq!(frame.len(), 5 * BLOCK);
        assert_eq!(frame_len_from_header(&frame[..BLOCK]), Some(5 * BLOCK));
        assert_eq!(
            frame_len_from_header(&frame[..FRAME_HEADER_LEN]),
            Some(5 * BLOCK)
        );
        assert_eq!(frame_len_from_header(&frame[..FRAME_HEADER_LEN - 1]), None);
        assert_eq!(frame_len_from_header(&[0u8; BLOCK]), None);
        assert_eq!(frame_len_from_header(&[]), None);
        let mut bad = frame.clone();
        bad[FRAME_OFF_SEQ] ^= 1;
        assert_eq!(frame_len_from_header(&bad), None);
        // Only the first block seen: the frame is truncated, and says so.
        assert_eq!(
            decode_transaction(&frame[..BLOCK], &UUID, 9),
            Err(FrameEnd::Truncated)
        );
        assert_eq!(decode_transaction(&frame, &UUID, 9), Ok((t, 5 * BLOCK)));
    }

    #[test]
    fn consecutive_frames_decode_in_turn() {
        let a = txn(10, every_op());
        let b = txn(11, vec![LogOp::FileRemove { ino: 3 }]);
        let mut log = encode_transaction(&a);
        log.extend(encode_transaction(&b));
        log.extend_from_slice(&[0u8; BLOCK]);
        let (got_a, used) = decode_transaction(&log, &UUID, 10).unwrap();
        assert_eq!(got_a, a);
        let (got_b, used_b) = decode_transaction(&log[used..], &UUID, 11).unwrap();
        assert_eq!(got_b, b);
        assert_eq!(
            decode_transaction(&log[used + used_b..], &UUID, 12),
            Err(FrameEnd::BadMagic)
        );
    }

    #[test]
    fn every_truncation_is_truncated() {
        let frame = encode_transaction(&txn(
            5,
            vec![LogOp::DirCreate {
                name: "d".repeat(MAX_NAME_LEN),
            }],
        ));
        assert_eq!(frame.len(), 2 * BLOCK);
        for len in 0..frame.len() {
            assert_eq!(
                decode_transaction(&frame[..len], &UUID, 5),
                Err(FrameEnd::Truncated),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn frame_end_variants() {
        let t = txn(20, vec![LogOp::Init { created_ns: 1 }]);
        let good = encode_transaction(&t);

        assert_eq!(
            decode_transaction(&[0u8; BLOCK], &UUID, 20),
            Err(FrameEnd::BadMagic)
        );
        assert_eq!(
            decode_transaction(&encode_label(&label()), &UUID, 20),
            Err(FrameEnd::BadMagic)
        );
        let mut other = UUID;
        other[15] ^= 0x80;
        assert_eq!(
            decode_transaction(&good, &other, 20),
            Err(FrameEnd::UuidMismatch)
        );
        assert_eq!(
            decode_transaction(&good, &UUID, 21),
            Err(FrameEnd::SeqMismatch {
                expected: 21,
                found: 20
            })
        );

        let mut b = good.clone();
        set(&mut b, OFF_VERSION, &9u16.to_le_bytes());
        assert_eq!(
            decode_transaction(&b, &UUID, 20),
            Err(FrameEnd::UnsupportedVersion(9))
        );
        assert_eq!(
            FrameEnd::UnsupportedVersion(9).to_string(),
            "frame format version 9 is not supported (this build reads 1)"
        );

        let mut b = good.clone();
        b[FRAME_OFF_PAYLOAD_LEN] ^= 4;
        assert_eq!(
            decode_transaction(&b, &UUID, 20),
            Err(FrameEnd::HeaderChecksum)
        );

        let mut b = good.clone();
        b[FRAME_HEADER_LEN + 5] ^= 1;
        let expected = get_u32(&b, FRAME_OFF_PAYLOAD_CRC);
        let actual = crc32c::crc32c(&b[FRAME_HEADER_LEN..]);
        assert_eq!(
            decode_transaction(&b, &UUID, 20),
            Err(FrameEnd::PayloadChecksum { expected, actual })
        );
        // The zero padding after the ops is covered by the payload crc as well.
        let mut b = good.clone();
        b[BLOCK - 1] = 1;
        assert!(matches!(
            decode_transaction(&b, &UUID, 20),
            Err(FrameEnd::PayloadChecksum { .. })
        ));

        assert_eq!(
            FrameEnd::SeqMismatch {
                expected: 3,
                found: 4
            }
            .to_string(),
            "frame sequence 4, expected 3"
        );
    }

    #[test]
    fn bad_payloads_name_the_problem() {
        // Builds a payload: op count, then raw op bytes.
        fn ops(count: u32, bytes: &[u8]) -> Vec<u8> {
            let mut p = count.to_le_bytes().to_vec();
            p.extend_from_slice(bytes);
            p
        }
        fn name(bytes: &[u8]) -> Vec<u8> {
            let mut n = (bytes.len() as u16).to_le_bytes().to_vec();
            n.extend_from_slice(bytes);
            n
        }
        fn extent_bytes(device: u8, offset: u64, length: u64) -> Vec<u8> {
            let mut e = vec![device];
            e.extend_from_slice(&offset.to_le_bytes());
            e.extend_from_slice(&length.to_le_bytes());
            e
        }
        fn fnode_with(extent: Vec<u8>) -> Vec<u8> {
            let mut f = vec![TAG_FILE_UPDATE];
            f.extend_from_slice(&[0u8; 24]);
            f.extend_from_slice(&1u32.to_le_bytes());
            f.extend(extent);
            f
        }

        let r = payload_error(&[]);
        assert!(r.contains("op count: needs 4 bytes"), "{r}");
        let r = payload_error(&ops(u32::MAX, &[]));
        assert!(r.contains("op count: count 4294967295 cannot fit"), "{r}");
        let r = payload_error(&ops(4, &[TAG_FILE_REMOVE, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(
            r.contains("count 4 cannot fit in the 9 bytes left (at most 3)"),
            "{r}"
        );
        let r = payload_error(&ops(2, &[TAG_FILE_REMOVE, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(r, "op 1: tag: needs 1 bytes at offset 13, only 0 left");
        let r = payload_error(&ops(1, &[0, 0, 0]));
        assert_eq!(r, "op 0: unknown op tag 0");
        let r = payload_error(&ops(1, &[13, 0, 0]));
        assert_eq!(r, "op 0: unknown op tag 13");

        let mut bad_utf8 = vec![TAG_DIR_CREATE];
        bad_utf8.extend(name(&[b'a', 0xff, b'b']));
        let r = payload_error(&ops(1, &bad_utf8));
        assert!(
            r.starts_with("op 0: DirCreate: name: not valid UTF-8"),
            "{r}"
        );

        let mut too_long = vec![TAG_DIR_REMOVE];
        too_long.extend(name(&vec![b'a'; MAX_NAME_LEN + 1]));
        let r = payload_error(&ops(1, &too_long));
        assert_eq!(
            r,
            "op 0: DirRemove: name: length 4097 is over the 4096-byte limit"
        );

        let mut short_name = vec![TAG_DIR_LINK];
        short_name.extend(name(b"db"));
        short_name.extend_from_slice(&50u16.to_le_bytes());
        short_name.extend_from_slice(b"abc");
        let r = payload_error(&ops(1, &short_name));
        assert!(r.starts_with("op 0: DirLink: name: needs 50 bytes"), "{r}");

        let mut two = vec![TAG_JUMP_SEQ];
        two.extend_from_slice(&1u64.to_le_bytes());
        two.extend(fnode_with(extent_bytes(3, 0, 4096)));
        let r = payload_error(&ops(2, &two));
        assert_eq!(
            r,
            "op 1: FileUpdate: extent 0: device byte 3 is not 0 (wal), 1 (db) or 2 (slow)"
        );
        let r = payload_error(&ops(1, &fnode_with(extent_bytes(1, 4096, 0))));
        assert_eq!(r, "op 0: FileUpdate: extent 0: length is 0");
        let r = payload_error(&ops(1, &fnode_with(extent_bytes(2, u64::MAX, 1))));
        assert!(r.contains("overflows u64"), "{r}");

        let mut delta = vec![TAG_FILE_UPDATE_DELTA];
        delta.extend_from_slice(&[0u8; 24]);
        delta.extend_from_slice(&2u32.to_le_bytes());
        delta.extend(extent_bytes(1, 0, u64::MAX));
        delta.extend(extent_bytes(1, 0, 1));
        let r = payload_error(&ops(1, &delta));
        assert!(
            r.starts_with("op 0: FileUpdateDelta: extent 1: extents total more than"),
            "{r}"
        );

        let mut huge_count = vec![TAG_FILE_UPDATE_DELTA];
        huge_count.extend_from_slice(&[0u8; 24]);
        huge_count.extend_from_slice(&0x1000_0000u32.to_le_bytes());
        let r = payload_error(&ops(1, &huge_count));
        assert!(
            r.contains("extent count: count 268435456 cannot fit"),
            "{r}"
        );

        let mut stray = vec![TAG_INIT];
        stray.extend_from_slice(&5u64.to_le_bytes());
        stray.push(0);
        let r = payload_error(&ops(1, &stray));
        assert_eq!(r, "1 stray bytes after the last op");
    }

    // --- properties ---

    fn arb_device() -> impl Strategy<Value = DeviceId> {
        prop::sample::select(DeviceId::ALL.to_vec())
    }

    fn arb_extent() -> impl Strategy<Value = Extent> {
        (arb_device(), any::<u64>(), 1u64..=u64::MAX).prop_map(|(device, offset, length)| {
            // Keep offset + length within u64, as a decoded extent must be.
            let offset = offset % (u64::MAX - length + 1);
            ext(device, offset, length)
        })
    }

    fn arb_extents() -> impl Strategy<Value = Vec<Extent>> {
        // Total length must fit in u64: use lengths below 2^48 for lists.
        prop::collection::vec(
            (arb_device(), 0u64..1 << 50, 1u64..1 << 48)
                .prop_map(|(device, offset, length)| ext(device, offset, length)),
            0..12,
        )
    }

    fn arb_fnode() -> impl Strategy<Value = Fnode> {
        (any::<u64>(), any::<u64>(), any::<u64>(), arb_extents()).prop_map(
            |(ino, size, mtime_ns, extents)| Fnode {
                ino,
                size,
                mtime_ns,
                extents,
            },
        )
    }

    fn arb_name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-zA-Z0-9._-]{0,24}",
            2 => any::<String>(),
            1 => (0usize..=MAX_NAME_LEN).prop_map(|n| "n".repeat(n)),
        ]
    }

    fn arb_op() -> impl Strategy<Value = LogOp> {
        prop_oneof![
            any::<u64>().prop_map(|created_ns| LogOp::Init { created_ns }),
            arb_name().prop_map(|name| LogOp::DirCreate { name }),
            arb_name().prop_map(|name| LogOp::DirRemove { name }),
            (arb_name(), arb_name(), any::<u64>()).prop_map(|(dir, name, ino)| LogOp::DirLink {
                dir,
                name,
                ino
            }),
            (arb_name(), arb_name()).prop_map(|(dir, name)| LogOp::DirUnlink { dir, name }),
            arb_fnode().prop_map(LogOp::FileUpdate),
            (any::<u64>(), any::<u64>(), any::<u64>(), arb_extents()).prop_map(
                |(ino, size, mtime_ns, appended)| LogOp::FileUpdateDelta {
                    ino,
                    size,
                    mtime_ns,
                    appended,
                }
            ),
            any::<u64>().prop_map(|ino| LogOp::FileRemove { ino }),
            any::<u64>().prop_map(|offset| LogOp::Jump { offset }),
            any::<u64>().prop_map(|seq| LogOp::JumpSeq { seq }),
        ]
    }

    fn arb_transaction() -> impl Strategy<Value = Transaction> {
        (
            any::<Uuid>(),
            any::<u64>(),
            prop::collection::vec(arb_op(), 0..16),
        )
            .prop_map(|(uuid, seq, ops)| Transaction { uuid, seq, ops })
    }

    /// Byte vectors of 0 to 3 blocks; some start with one of our magics so the checks past the
    /// magic get exercised too.
    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
        let raw = prop::collection::vec(any::<u8>(), 0..3 * BLOCK);
        let magic = prop::sample::select(vec![LABEL_MAGIC, SUPERBLOCK_MAGIC, FRAME_MAGIC]);
        prop_oneof![
            raw.clone(),
            (magic, any::<u16>(), raw).prop_map(|(magic, version, rest)| {
                let mut b = magic.to_vec();
                let version = if version % 2 == 0 { 1 } else { version };
                b.extend_from_slice(&version.to_le_bytes());
                b.extend(rest);
                b
            }),
        ]
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(bytes in arb_bytes(), seq in any::<u64>()) {
            let _ = decode_label(&bytes);
            let _ = decode_superblock(&bytes);
            let _ = frame_len_from_header(&bytes);
            let _ = decode_transaction(&bytes, &UUID, seq);
        }

        /// Valid checksums around garbage: exercises every field check behind them.
        #[test]
        fn decoders_never_panic_behind_valid_checksums(
            body in prop::collection::vec(any::<u8>(), 0..2 * BLOCK),
            small_count in 0u32..300,
        ) {
            let mut payload = small_count.to_le_bytes().to_vec();
            payload.extend_from_slice(&body);
            // The payload encoding is canonical: whatever decodes re-encodes to the same bytes.
            for payload in [payload, body.clone()] {
                let frame = seal_frame(&UUID, 4, &payload);
                if let Ok((t, used)) = decode_transaction(&frame, &UUID, 4) {
                    prop_assert_eq!(used, frame.len());
                    prop_assert_eq!(encode_transaction(&t), frame);
                }
            }

            let mut sb = encode_superblock(&superblock(0)).unwrap();
            let n = body.len().min(BLOCK - SB_OFF_LOG_FNODE);
            sb[SB_OFF_LOG_FNODE..SB_OFF_LOG_FNODE + n].copy_from_slice(&body[..n]);
            reseal_block(&mut sb, SB_OFF_CRC);
            let _ = decode_superblock(&sb);

            let mut lb = encode_label(&label());
            let n = body.len().min(BLOCK - LABEL_OFF_DEVICE);
            lb[LABEL_OFF_DEVICE..LABEL_OFF_DEVICE + n].copy_from_slice(&body[..n]);
            reseal_block(&mut lb, LABEL_OFF_CRC);
            let _ = decode_label(&lb);
        }

        #[test]
        fn transactions_round_trip(t in arb_transaction()) {
            let frame = encode_transaction(&t);
            prop_assert_eq!(frame.len() % BLOCK, 0);
            prop_assert_eq!(frame_len_from_header(&frame), Some(frame.len()));
            let got = decode_transaction(&frame, &t.uuid, t.seq);
            prop_assert_eq!(got, Ok((t.clone(), frame.len())));
        }

        #[test]
        fn any_flipped_frame_byte_fails(
            t in arb_transaction(),
            at in any::<prop::sample::Index>(),
            mask in 1u8..,
            anywhere in any::<bool>(),
        ) {
            let mut frame = encode_transaction(&t);
            let payload_end = FRAME_HEADER_LEN + get_u32(&frame, FRAME_OFF_PAYLOAD_LEN) as usize;
            // Half the time inside header + payload, else anywhere (padding included).
            let limit = if anywhere { frame.len() } else { payload_end };
            let i = at.index(limit);
            frame[i] ^= mask;
            let got = decode_transaction(&frame, &t.uuid, t.seq);
            prop_assert!(got.is_err(), "byte {} ^ {:#x} gave {:?}", i, mask, got);
        }

        #[test]
        fn truncated_frames_are_truncated(t in arb_transaction(), at in any::<prop::sample::Index>()) {
            let frame = encode_transaction(&t);
            let len = at.index(frame.len());
            prop_assert_eq!(decode_transaction(&frame[..len], &t.uuid, t.seq), Err(FrameEnd::Truncated));
        }

        #[test]
        fn labels_and_superblocks_round_trip(
            uuid in any::<Uuid>(),
            device in arb_device(),
            a in any::<u64>(),
            b in any::<u64>(),
            units in prop::array::uniform3(0u64..1 << 20),
            fnode in arb_fnode(),
        ) {
            let l = Label { uuid, device, device_size: a, created_ns: b };
            prop_assert_eq!(decode_label(&encode_label(&l)), Ok(l));
            let s = Superblock {
                uuid,
                generation: a,
                block_size: BLOCK_SIZE as u32,
                alloc_units: units.map(|u| u * BLOCK_SIZE),
                log_fnode: fnode,
                log_first_seq: b,
            };
            prop_assert_eq!(decode_superblock(&encode_superblock(&s).unwrap()), Ok(s));
        }

        #[test]
        fn single_extents_round_trip(e in arb_extent()) {
            let t = txn(1, vec![LogOp::FileUpdateDelta { ino: 2, size: 3, mtime_ns: 4, appended: vec![e] }]);
            prop_assert_eq!(decode_transaction(&encode_transaction(&t), &UUID, 1), Ok((t, BLOCK)));
        }
    }
}
