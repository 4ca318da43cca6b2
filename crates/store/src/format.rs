//! The object store's on-disk formats: the label on block 0 of the main device, and the keys and
//! values the store keeps in RocksDB. docs/format.md has the same diagrams; every value is
//! versioned, little-endian and ends in a crc32c of everything before it, except the freelist
//! and reference-count lanes, which RocksDB adds up with the `bluepoll.u64add` merge operator (a
//! checksum of a sum of operands cannot be kept; RocksDB's block and WAL checksums cover them,
//! and fsck cross-checks them against the onodes).
//!
//! Key space (first byte is the prefix):
//!
//! ```text
//!  S name                          store records: "super", "omap_max"
//!  C name                          collection → its id
//!  O cid(be32) name                onode: size, attributes, omap id
//!  X cid(be32) esc(name) 00 idx(be32)   one shard of an onode's extent map
//!  M omap(be64) 00                 omap header
//!  M omap(be64) 01 key             omap entry
//!  F group(be64)                   freelist: 1024 allocation units, one bit each (16 lanes)
//!  R unit(be64)                    references to a shared allocation unit beyond the first
//!  D seq(be64)                     a deferred write: data to apply in place after commit
//! ```
//!
//! Object names sort as raw bytes: in `O` keys the name is the key's tail, so key order is name
//! order. In `X` keys a shard index follows the name, so the name is escaped (00 → 01 01,
//! 01 → 01 02) and ended by 00, which keeps the order and makes every name's shards one range.

use super::error::StoreError;
use bluepoll_base::codec::{self, CodecError, Reader, Writer};
use bluepoll_base::id::Uuid;

/// The format this code writes; it reads only this one so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatVersion {
    /// Version 1, the first: every structure in this file as described here.
    V1 = 1,
}

impl FormatVersion {
    /// The version this code writes.
    pub const CURRENT: FormatVersion = FormatVersion::V1;

    /// The version a value's first byte names; None for one this code does not know.
    pub fn from_u8(v: u8) -> Option<FormatVersion> {
        (v == 1).then_some(FormatVersion::V1)
    }
}

/// `S name`: the store's own records ([`SUPER_KEY`], [`OMAP_MAX_KEY`]).
pub const PREFIX_SUPER: u8 = b'S';
/// `C name`: a collection, its value its id ([`coll_key`]).
pub const PREFIX_COLL: u8 = b'C';
/// `O cid name`: an object's onode ([`onode_key`]).
pub const PREFIX_ONODE: u8 = b'O';
/// `X cid esc(name) 00 index`: one shard of an object's extent map ([`shard_key`]).
pub const PREFIX_SHARD: u8 = b'X';
/// `M omap 00` / `M omap 01 key`: an omap's header and entries ([`omap_header_key`],
/// [`omap_entry_key`]).
pub const PREFIX_OMAP: u8 = b'M';
/// `F group`: the freelist bits of 1024 allocation units ([`freelist_key`]).
pub const PREFIX_FREELIST: u8 = b'F';
/// `R unit`: the extra references of a shared allocation unit ([`refs_key`]).
pub const PREFIX_REFS: u8 = b'R';
/// `D seq`: a deferred write waiting to be applied in place ([`deferred_key`]).
pub const PREFIX_DEFERRED: u8 = b'D';

/// Allocation units one freelist key covers (16 lanes of 64 bits).
pub const FREELIST_UNITS_PER_KEY: u64 = 1024;
/// Little-endian u64 lanes in a freelist value: lane `i`, bit `b` is unit
/// `group * 1024 + 64 * i + b`.
pub const FREELIST_LANES: usize = 16;

/// A collection's id in keys.
pub type CollId = u32;

/// Why a stored structure could not be decoded. Every variant names the structure (`what`:
/// "store label", "onode", "extent shard", ...); as a [`StoreError`] it becomes
/// [`StoreError::Corrupt`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The stored crc32c does not match the bytes: the structure was damaged.
    #[error("{what}: checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    ChecksumMismatch {
        /// The structure.
        what: &'static str,
        /// The crc32c stored with the structure.
        expected: u32,
        /// The crc32c of the bytes read.
        actual: u32,
    },
    /// The structure ends before its fields do.
    #[error("{what}: {len} bytes is too short")]
    Truncated {
        /// The structure.
        what: &'static str,
        /// Bytes it has (the whole value or block, crc included).
        len: usize,
    },
    /// The structure is of a format version this code does not know.
    #[error("{what}: unknown format version {version}")]
    Version {
        /// The structure.
        what: &'static str,
        /// The version found (a label's 16-bit version capped at 255).
        version: u8,
    },
    /// The label block does not start with [`LABEL_MAGIC`]: not a store's main device.
    #[error("{what}: bad magic")]
    Magic {
        /// The structure.
        what: &'static str,
    },
    /// The structure checks out but a field in it cannot be right: bytes left over, a name that
    /// is not UTF-8, a size that is not a power of two, an extent length that is not a
    /// multiple of the checksum block, a key of the wrong shape.
    #[error("{what}: {reason}")]
    Invalid {
        /// The structure.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl From<FormatError> for StoreError {
    fn from(e: FormatError) -> StoreError {
        StoreError::Corrupt {
            reason: e.to_string(),
        }
    }
}

// ---- value codec -------------------------------------------------------------------------

/// Builds a value: a version byte, then little-endian fields, then (at [`finish`](Self::finish))
/// the crc32c of all of it. The field codec is [`bluepoll_base::codec`], shared with BlueFS and
/// the images.
pub struct Encoder {
    fields: Writer,
}

impl Encoder {
    /// A value of about `capacity` bytes of fields, starting with the current version byte.
    pub fn new(capacity: usize) -> Encoder {
        let mut fields = Writer::with_capacity(capacity + 5);
        fields.u8(FormatVersion::CURRENT as u8);
        Encoder { fields }
    }
    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.fields.u8(v);
        self
    }
    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.fields.u16(v);
        self
    }
    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.fields.u32(v);
        self
    }
    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.fields.u64(v);
        self
    }
    /// Appends bytes as they are, without a length (the reader must know it).
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.fields.raw(v);
        self
    }
    /// A u32 length, then the bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.fields.bytes32(v);
        self
    }
    /// Appends the crc32c (little-endian) of every byte so far and returns the value.
    pub fn finish(self) -> Vec<u8> {
        self.fields.seal()
    }
}

/// Reads a value built by [`Encoder`]: checks the crc and the version first.
pub struct Decoder<'a> {
    what: &'static str,
    /// Bytes of the whole value, crc included (what a truncation error reports).
    len: usize,
    fields: Reader<'a>,
}

impl<'a> Decoder<'a> {
    /// Checks `value` — at least a version byte and a crc ([`FormatError::Truncated`]), the
    /// crc32c of the rest ([`FormatError::ChecksumMismatch`]), a known version
    /// ([`FormatError::Version`]) — and starts reading after the version byte. `what` names the
    /// structure in errors.
    pub fn new(what: &'static str, value: &'a [u8]) -> Result<Decoder<'a>, FormatError> {
        let len = value.len();
        if len < 5 {
            return Err(FormatError::Truncated { what, len });
        }
        let body = codec::unseal(value).map_err(|e| match e {
            CodecError::Checksum { stored, computed } => FormatError::ChecksumMismatch {
                what,
                expected: stored,
                actual: computed,
            },
            _ => FormatError::Truncated { what, len },
        })?;
        let mut fields = Reader::new(body);
        let version = fields
            .u8("version")
            .map_err(|_| FormatError::Truncated { what, len })?;
        if FormatVersion::from_u8(version).is_none() {
            return Err(FormatError::Version { what, version });
        }
        Ok(Decoder { what, len, fields })
    }

    /// Maps the codec's error for a read past the fields.
    fn truncated(&self, _: CodecError) -> FormatError {
        FormatError::Truncated {
            what: self.what,
            len: self.len,
        }
    }
    /// The next byte ([`FormatError::Truncated`] past the fields, here and below).
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        self.fields.u8(self.what).map_err(|e| self.truncated(e))
    }
    /// The next little-endian u16.
    pub fn u16(&mut self) -> Result<u16, FormatError> {
        self.fields.u16(self.what).map_err(|e| self.truncated(e))
    }
    /// The next little-endian u32.
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        self.fields.u32(self.what).map_err(|e| self.truncated(e))
    }
    /// The next little-endian u64.
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        self.fields.u64(self.what).map_err(|e| self.truncated(e))
    }
    /// The next `n` bytes.
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        self.fields
            .take(n, self.what)
            .map_err(|e| self.truncated(e))
    }
    /// A u32 length, then that many bytes (what [`Encoder::bytes`] wrote).
    pub fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        self.fields
            .bytes32(self.what)
            .map_err(|e| self.truncated(e))
    }
    /// A [`FormatError::Invalid`] naming this decoder's structure, for a field that decoded but
    /// cannot be right.
    pub fn invalid(&self, reason: impl Into<String>) -> FormatError {
        FormatError::Invalid {
            what: self.what,
            reason: reason.into(),
        }
    }
    /// Fails unless every byte was read.
    pub fn end(self) -> Result<(), FormatError> {
        match self.fields.remaining() {
            0 => Ok(()),
            left => Err(self.invalid(format!("{left} bytes left over"))),
        }
    }
}

// ---- the main device's label -------------------------------------------------------------

/// The first 8 bytes of a store label.
pub const LABEL_MAGIC: &[u8; 8] = b"BPSTLABL";
/// Bytes of the label; mkfs writes it padded with zeroes to the device's block size when that
/// is larger.
pub const LABEL_SIZE: usize = 4096;

/// Block 0 of the main device: who it belongs to and where things are on it.
///
/// ```text
///  offset  size  field
///       0     8  magic            "BPSTLABL"
///       8     2  version          1
///      10     2  reserved         0
///      12     4  crc32c           over bytes 0..12 and 16..4096 (this field skipped)
///      16    16  fsid             the store's uuid (also in the kv superblock)
///      32     8  device size      bytes, at mkfs
///      40     8  created          ns since the Unix epoch
///      48     8  db offset        BlueFS's DB area inside this device (0: a DB device of its own)
///      56     8  db length        bytes of that area (0 with a DB device of its own)
///      64     8  data start       first byte the store allocates
///      72     4  min_alloc_size   allocation unit, bytes
///      76     4  csum block       bytes per data checksum
///      80     …  zero up to 4096
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// The store's uuid (the kv superblock's must match).
    pub fsid: Uuid,
    /// Bytes of the main device the store uses: its size at mkfs, or at the last expand.
    pub device_size: u64,
    /// When mkfs made the store, in nanoseconds since the Unix epoch.
    pub created_ns: u64,
    /// Byte offset of BlueFS's DB area inside this device; 0 when the store has a DB device of
    /// its own.
    pub db_offset: u64,
    /// Bytes of that DB area; 0 when the store has a DB device of its own.
    pub db_len: u64,
    /// The first byte the store allocates (after the label, and the DB area if any), a
    /// multiple of `min_alloc_size`.
    pub data_start: u64,
    /// The allocation unit, in bytes: a power of two.
    pub min_alloc_size: u32,
    /// Bytes per data checksum: a power of two, at most `min_alloc_size`.
    pub csum_block: u32,
}

const L_MAGIC: usize = 0;
const L_VERSION: usize = L_MAGIC + 8;
const L_RESERVED: usize = L_VERSION + 2;
const L_CRC: usize = L_RESERVED + 2;
const L_FSID: usize = L_CRC + 4;
const L_SIZE: usize = L_FSID + 16;
const L_CREATED: usize = L_SIZE + 8;
const L_DB_OFFSET: usize = L_CREATED + 8;
const L_DB_LEN: usize = L_DB_OFFSET + 8;
const L_DATA_START: usize = L_DB_LEN + 8;
const L_MIN_ALLOC: usize = L_DATA_START + 8;
const L_CSUM_BLOCK: usize = L_MIN_ALLOC + 4;
const L_END: usize = L_CSUM_BLOCK + 4;

fn label_crc(block: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&block[..L_CRC]);
    crc32c::crc32c_append(crc, &block[L_FSID..])
}

/// The label's 4096-byte block (the diagram on [`Label`]), crc filled in.
pub fn encode_label(l: &Label) -> Vec<u8> {
    let mut b = vec![0u8; LABEL_SIZE];
    b[L_MAGIC..L_VERSION].copy_from_slice(LABEL_MAGIC);
    b[L_VERSION..L_RESERVED].copy_from_slice(&(FormatVersion::CURRENT as u16).to_le_bytes());
    b[L_FSID..L_SIZE].copy_from_slice(&l.fsid);
    b[L_SIZE..L_CREATED].copy_from_slice(&l.device_size.to_le_bytes());
    b[L_CREATED..L_DB_OFFSET].copy_from_slice(&l.created_ns.to_le_bytes());
    b[L_DB_OFFSET..L_DB_LEN].copy_from_slice(&l.db_offset.to_le_bytes());
    b[L_DB_LEN..L_DATA_START].copy_from_slice(&l.db_len.to_le_bytes());
    b[L_DATA_START..L_MIN_ALLOC].copy_from_slice(&l.data_start.to_le_bytes());
    b[L_MIN_ALLOC..L_CSUM_BLOCK].copy_from_slice(&l.min_alloc_size.to_le_bytes());
    b[L_CSUM_BLOCK..L_END].copy_from_slice(&l.csum_block.to_le_bytes());
    let crc = label_crc(&b);
    b[L_CRC..L_FSID].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a label from a block read at offset 0 (its first 4096 bytes). Checks, in order, the
/// length ([`FormatError::Truncated`]), the magic ([`FormatError::Magic`]), the crc
/// ([`FormatError::ChecksumMismatch`]), the version ([`FormatError::Version`]), and that the
/// checksum block and allocation unit are powers of two with the checksum block no larger
/// ([`FormatError::Invalid`]).
pub fn decode_label(b: &[u8]) -> Result<Label, FormatError> {
    let what = "store label";
    if b.len() < LABEL_SIZE {
        return Err(FormatError::Truncated { what, len: b.len() });
    }
    if &b[L_MAGIC..L_VERSION] != LABEL_MAGIC {
        return Err(FormatError::Magic { what });
    }
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
    let expected = u32_at(L_CRC);
    let actual = label_crc(&b[..LABEL_SIZE]);
    if expected != actual {
        return Err(FormatError::ChecksumMismatch {
            what,
            expected,
            actual,
        });
    }
    let version = u16::from_le_bytes([b[L_VERSION], b[L_VERSION + 1]]);
    if version != FormatVersion::CURRENT as u16 {
        return Err(FormatError::Version {
            what,
            version: version.min(255) as u8,
        });
    }
    let min_alloc_size = u32_at(L_MIN_ALLOC);
    let csum_block = u32_at(L_CSUM_BLOCK);
    check_sizes(
        what,
        &[
            ("checksum block", csum_block),
            ("allocation unit", min_alloc_size),
        ],
    )?;
    Ok(Label {
        fsid: b[L_FSID..L_SIZE].try_into().expect("16"),
        device_size: u64_at(L_SIZE),
        created_ns: u64_at(L_CREATED),
        db_offset: u64_at(L_DB_OFFSET),
        db_len: u64_at(L_DB_LEN),
        data_start: u64_at(L_DATA_START),
        min_alloc_size,
        csum_block,
    })
}

/// Sizes readers divide by and step through (checksum block, allocation unit, extent-shard span):
/// powers of two, each no larger than the next, as mkfs writes them. A label or superblock that
/// passes its crc but breaks this is refused here rather than divided by later.
fn check_sizes(what: &'static str, sizes: &[(&str, u32)]) -> Result<(), FormatError> {
    let invalid = |reason| FormatError::Invalid { what, reason };
    if let Some((name, size)) = sizes.iter().find(|(_, size)| !size.is_power_of_two()) {
        return Err(invalid(format!("{name} {size} is not a power of two")));
    }
    for pair in sizes.windows(2) {
        let ((smaller, a), (larger, b)) = (pair[0], pair[1]);
        if a > b {
            return Err(invalid(format!(
                "{smaller} {a} is larger than the {larger} {b}"
            )));
        }
    }
    Ok(())
}

// ---- store records ------------------------------------------------------------------------

/// The key of the store's [`Superblock`], written by mkfs.
pub const SUPER_KEY: &[u8] = b"Ssuper";
/// The key of the omap-id high-water mark: omap ids below its value may be in use, so the
/// next mount hands out ids from there ([`encode_u64_record`]).
pub const OMAP_MAX_KEY: &[u8] = b"Somap_max";

/// The store's record in the kv (`S super`): must agree with the label.
///
/// ```text
///  version u8 · fsid [16] · min_alloc_size u32 · csum_block u32 · extent shard span u32 ·
///  created u64 · crc32c u32
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The store's uuid: the label's.
    pub fsid: Uuid,
    /// The allocation unit in bytes: the label's.
    pub min_alloc_size: u32,
    /// Bytes per data checksum: the label's.
    pub csum_block: u32,
    /// Object bytes one extent-map shard covers (`extent_shard_span` at mkfs): a power of two,
    /// at least `min_alloc_size`.
    pub shard_span: u32,
    /// When mkfs made the store, in nanoseconds since the Unix epoch: the label's.
    pub created_ns: u64,
}

/// The value of [`SUPER_KEY`].
pub fn encode_superblock(s: &Superblock) -> Vec<u8> {
    let mut e = Encoder::new(40);
    e.raw(&s.fsid)
        .u32(s.min_alloc_size)
        .u32(s.csum_block)
        .u32(s.shard_span)
        .u64(s.created_ns);
    e.finish()
}

/// Decodes the value of [`SUPER_KEY`], and checks that checksum block, allocation unit and
/// extent shard span are powers of two, each no larger than the next
/// ([`FormatError::Invalid`]). Agreement with the label is mount's to check.
pub fn decode_superblock(v: &[u8]) -> Result<Superblock, FormatError> {
    let mut d = Decoder::new("store superblock", v)?;
    let s = Superblock {
        fsid: d.raw(16)?.try_into().expect("16"),
        min_alloc_size: d.u32()?,
        csum_block: d.u32()?,
        shard_span: d.u32()?,
        created_ns: d.u64()?,
    };
    d.end()?;
    check_sizes(
        "store superblock",
        &[
            ("checksum block", s.csum_block),
            ("allocation unit", s.min_alloc_size),
            ("extent shard span", s.shard_span),
        ],
    )?;
    Ok(s)
}

/// `S omap_max`: omap ids below this may have been handed out (version · u64 · crc32c).
pub fn encode_u64_record(v: u64) -> Vec<u8> {
    let mut e = Encoder::new(8);
    e.u64(v);
    e.finish()
}

/// Decodes a value [`encode_u64_record`] made; `what` names the record in errors.
pub fn decode_u64_record(what: &'static str, v: &[u8]) -> Result<u64, FormatError> {
    let mut d = Decoder::new(what, v)?;
    let x = d.u64()?;
    d.end()?;
    Ok(x)
}

// ---- collections ----------------------------------------------------------------------------

/// `C name`: the key of collection `name`'s record.
pub fn coll_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(PREFIX_COLL);
    k.extend_from_slice(name.as_bytes());
    k
}

/// `C name` → version · cid u32 · crc32c.
pub fn encode_coll(cid: CollId) -> Vec<u8> {
    let mut e = Encoder::new(4);
    e.u32(cid);
    e.finish()
}

/// Decodes a collection record: the collection's id.
pub fn decode_coll(v: &[u8]) -> Result<CollId, FormatError> {
    let mut d = Decoder::new("collection", v)?;
    let cid = d.u32()?;
    d.end()?;
    Ok(cid)
}

// ---- onodes ---------------------------------------------------------------------------------

/// `O cid`: the start of every onode key of collection `cid`, so its objects are one key range
/// in name order.
pub fn onode_prefix(cid: CollId) -> [u8; 5] {
    let mut p = [PREFIX_ONODE, 0, 0, 0, 0];
    p[1..].copy_from_slice(&cid.to_be_bytes());
    p
}

/// `O cid name`: the key of object `name`'s onode in collection `cid`.
pub fn onode_key(cid: CollId, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + name.len());
    k.extend_from_slice(&onode_prefix(cid));
    k.extend_from_slice(name.as_bytes());
    k
}

/// The object name of an `O` key.
pub fn name_of_onode_key(key: &[u8]) -> Result<String, FormatError> {
    if key.len() < 5 || key[0] != PREFIX_ONODE {
        return Err(FormatError::Invalid {
            what: "onode key",
            reason: format!("{key:02x?} is not an onode key"),
        });
    }
    String::from_utf8(key[5..].to_vec()).map_err(|_| FormatError::Invalid {
        what: "onode key",
        reason: "object name is not UTF-8".into(),
    })
}

fn escape_into(out: &mut Vec<u8>, name: &[u8]) {
    for &b in name {
        match b {
            0 => out.extend_from_slice(&[1, 1]),
            1 => out.extend_from_slice(&[1, 2]),
            b => out.push(b),
        }
    }
    out.push(0);
}

/// Every extent-shard key of one object lies in `shard_prefix..shard_prefix_end`.
pub fn shard_prefix(cid: CollId, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + name.len());
    k.push(PREFIX_SHARD);
    k.extend_from_slice(&cid.to_be_bytes());
    escape_into(&mut k, name.as_bytes());
    k
}

/// The key of extent-map shard `index` (object bytes `index * span ..`) of the object whose
/// [`shard_prefix`] is `prefix`: the prefix, then the index big-endian, so shards sort by
/// index.
pub fn shard_key(prefix: &[u8], index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 4);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The end of a prefix's range: the prefix with its last byte incremented (escaped names end
/// in 00, so this never overflows for shard prefixes).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// Object metadata kept in its `O` key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OnodeRecord {
    /// The object's size in bytes.
    pub size: u64,
    /// The id of the object's omap (its keys are `M omap_id ...`); 0: it has none.
    pub omap_id: u64,
    /// The object's attributes, by name.
    pub attrs: std::collections::BTreeMap<String, Vec<u8>>,
}

/// `O cid name` →
///
/// ```text
///  version u8 · flags u8 (0) · size u64 · omap id u64 (0: none) · attr count u32 ·
///  per attribute: name length u16 · name · value length u32 · value ·
///  crc32c u32
/// ```
pub fn encode_onode(o: &OnodeRecord) -> Vec<u8> {
    let attr_bytes: usize = o.attrs.iter().map(|(k, v)| 6 + k.len() + v.len()).sum();
    let mut e = Encoder::new(24 + attr_bytes);
    e.u8(0).u64(o.size).u64(o.omap_id).u32(o.attrs.len() as u32);
    for (k, v) in &o.attrs {
        e.u16(k.len() as u16).raw(k.as_bytes()).bytes(v);
    }
    e.finish()
}

/// Decodes an onode value ([`encode_onode`]).
pub fn decode_onode(v: &[u8]) -> Result<OnodeRecord, FormatError> {
    let mut d = Decoder::new("onode", v)?;
    let _flags = d.u8()?;
    let size = d.u64()?;
    let omap_id = d.u64()?;
    let count = d.u32()?;
    let mut attrs = std::collections::BTreeMap::new();
    for _ in 0..count {
        let n = d.u16()? as usize;
        let name = String::from_utf8(d.raw(n)?.to_vec())
            .map_err(|_| d.invalid("attribute name is not UTF-8"))?;
        let value = d.bytes()?.to_vec();
        attrs.insert(name, value);
    }
    d.end()?;
    Ok(OnodeRecord {
        size,
        omap_id,
        attrs,
    })
}

// ---- extent-map shards ----------------------------------------------------------------------

/// One mapping of an extent-map shard: `len` bytes of the object at `offset` live at `phys` on
/// the main device; `csums` holds one crc32c per checksum block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentRecord {
    /// Object offset of the mapping's first byte (stored relative to the shard's start).
    pub offset: u64,
    /// Bytes mapped: whole allocation units, never crossing the shard's end.
    pub len: u32,
    /// Byte offset on the main device where the mapping's bytes are.
    pub phys: u64,
    /// One crc32c per checksum block of the mapping, in order (`len / csum_block` of them).
    pub csums: Vec<u32>,
}

/// `X cid esc(name) 00 index` →
///
/// ```text
///  version u8 · count u32 ·
///  per extent: offset within the shard u32 · length u32 · physical offset u64 ·
///              crc32c u32 × (length / csum block) ·
///  crc32c u32
/// ```
pub fn encode_shard(shard_start: u64, extents: &[ExtentRecord]) -> Vec<u8> {
    encode_shard_with(
        shard_start,
        extents.len(),
        extents
            .iter()
            .map(|x| (x.offset, x.len, x.phys, x.csums.as_slice())),
    )
}

/// [`encode_shard`] from (offset, length, physical offset, checksums) of `count` extents.
pub fn encode_shard_with<'a>(
    shard_start: u64,
    count: usize,
    extents: impl Iterator<Item = (u64, u32, u64, &'a [u32])>,
) -> Vec<u8> {
    let mut e = Encoder::new(8 + count * 20);
    e.u32(count as u32);
    for (offset, len, phys, csums) in extents {
        e.u32((offset - shard_start) as u32).u32(len).u64(phys);
        for c in csums {
            e.u32(*c);
        }
    }
    e.finish()
}

/// Decodes an extent-shard value ([`encode_shard`]) of the shard starting at object offset
/// `shard_start`; every length must be a positive multiple of `csum_block`
/// ([`FormatError::Invalid`]).
pub fn decode_shard(
    v: &[u8],
    shard_start: u64,
    csum_block: u32,
) -> Result<Vec<ExtentRecord>, FormatError> {
    let mut d = Decoder::new("extent shard", v)?;
    let count = d.u32()?;
    let mut out = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        let offset = shard_start + d.u32()? as u64;
        let len = d.u32()?;
        let phys = d.u64()?;
        if len == 0 || len.checked_rem(csum_block) != Some(0) {
            return Err(d.invalid(format!(
                "extent length {len} is not a positive multiple of the {csum_block}-byte checksum block"
            )));
        }
        // Taken as bytes first, so a corrupt length fails on the bytes that are there instead
        // of sizing a list from it.
        let csums = d
            .raw((len / csum_block) as usize * 4)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect();
        out.push(ExtentRecord {
            offset,
            len,
            phys,
            csums,
        });
    }
    d.end()?;
    Ok(out)
}

// ---- omap -----------------------------------------------------------------------------------

/// `M omap 00`: the key of an omap's header (its value the header's bytes as given).
pub fn omap_header_key(omap_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(PREFIX_OMAP);
    k.extend_from_slice(&omap_id.to_be_bytes());
    k.push(0);
    k
}

/// `M omap 01`: the start of every entry key of an omap.
pub fn omap_entry_prefix(omap_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(PREFIX_OMAP);
    k.extend_from_slice(&omap_id.to_be_bytes());
    k.push(1);
    k
}

/// `M omap 01 key`: the kv key of the omap entry `key` (its value the entry's bytes as given);
/// entries sort in key order.
pub fn omap_entry_key(omap_id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = omap_entry_prefix(omap_id);
    k.extend_from_slice(key);
    k
}

/// Everything of one omap (header and entries): `omap_all(id)..omap_all(id + 1)`.
pub fn omap_all(omap_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(PREFIX_OMAP);
    k.extend_from_slice(&omap_id.to_be_bytes());
    k
}

// ---- freelist and references ----------------------------------------------------------------

/// `F group`: the key of the freelist bits of allocation units `group * 1024` to
/// `group * 1024 + 1023`.
pub fn freelist_key(group: u64) -> [u8; 9] {
    let mut k = [PREFIX_FREELIST, 0, 0, 0, 0, 0, 0, 0, 0];
    k[1..].copy_from_slice(&group.to_be_bytes());
    k
}

/// `R unit`: the key of the extra-reference count of allocation unit `unit` (device offset /
/// allocation unit): one little-endian u64 lane, summed by the merge operator.
pub fn refs_key(unit: u64) -> [u8; 9] {
    let mut k = [PREFIX_REFS, 0, 0, 0, 0, 0, 0, 0, 0];
    k[1..].copy_from_slice(&unit.to_be_bytes());
    k
}

/// The number after a one-byte prefix in `F`, `R` and `D` keys.
pub fn key_number(key: &[u8]) -> Result<u64, FormatError> {
    if key.len() != 9 {
        return Err(FormatError::Invalid {
            what: "numbered key",
            reason: format!("{key:02x?} is not a prefix and 8 bytes"),
        });
    }
    Ok(u64::from_be_bytes(key[1..].try_into().expect("8")))
}

/// A merge-operator value as its lanes (short or missing lanes are 0).
pub fn lanes_of(value: &[u8], lanes: usize) -> Vec<u64> {
    let mut out = vec![0u64; lanes.max(value.len().div_ceil(8))];
    for (lane, chunk) in out.iter_mut().zip(value.chunks(8)) {
        let mut le = [0u8; 8];
        le[..chunk.len()].copy_from_slice(chunk);
        *lane = u64::from_le_bytes(le);
    }
    out
}

// ---- deferred writes ------------------------------------------------------------------------

/// `D seq`: the key of the deferred writes of one transaction, by the store-wide sequence
/// number it got when queued.
pub fn deferred_key(seq: u64) -> [u8; 9] {
    let mut k = [PREFIX_DEFERRED, 0, 0, 0, 0, 0, 0, 0, 0];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `D seq` → version · count u32 · per write: physical offset u64 · data (length u32 · bytes)
/// · crc32c u32. Offsets and lengths are multiples of the checksum block.
pub fn encode_deferred<'a>(writes: impl Iterator<Item = (u64, &'a [u8])> + Clone) -> Vec<u8> {
    let bytes: usize = writes.clone().map(|(_, d)| 12 + d.len()).sum();
    let mut e = Encoder::new(4 + bytes);
    e.u32(writes.clone().count() as u32);
    for (phys, data) in writes {
        e.u64(phys).bytes(data);
    }
    e.finish()
}

/// Decodes a deferred-write value ([`encode_deferred`]): (device offset, bytes) per write.
pub fn decode_deferred(v: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, FormatError> {
    let mut d = Decoder::new("deferred write", v)?;
    let count = d.u32()?;
    let mut out = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        let phys = d.u64()?;
        let data = d.bytes()?.to_vec();
        out.push((phys, data));
    }
    d.end()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_round_trips_and_any_flipped_byte_is_caught() {
        let l = Label {
            fsid: [7; 16],
            device_size: 1 << 30,
            created_ns: 12345,
            db_offset: 1 << 20,
            db_len: 64 << 20,
            data_start: 65 << 20,
            min_alloc_size: 4096,
            csum_block: 4096,
        };
        let b = encode_label(&l);
        assert_eq!(decode_label(&b).unwrap(), l);
        for at in [0, 9, 12, 20, 70, 4095] {
            let mut bad = b.clone();
            bad[at] ^= 0x10;
            assert!(decode_label(&bad).is_err(), "byte {at}");
        }
    }

    #[test]
    fn values_round_trip_and_reject_damage() {
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert("a".to_string(), vec![1, 2, 3]);
        attrs.insert("_".to_string(), Vec::new());
        let o = OnodeRecord {
            size: 99,
            omap_id: 5,
            attrs,
        };
        let v = encode_onode(&o);
        assert_eq!(decode_onode(&v).unwrap(), o);
        let mut bad = v.clone();
        bad[3] ^= 1;
        assert!(matches!(
            decode_onode(&bad),
            Err(FormatError::ChecksumMismatch { .. })
        ));
        assert!(decode_onode(&v[..3]).is_err());

        let x = vec![
            ExtentRecord {
                offset: 1 << 17,
                len: 8192,
                phys: 1 << 20,
                csums: vec![1, 2],
            },
            ExtentRecord {
                offset: (1 << 17) + 65536,
                len: 4096,
                phys: 3 << 20,
                csums: vec![9],
            },
        ];
        let v = encode_shard(1 << 17, &x);
        assert_eq!(decode_shard(&v, 1 << 17, 4096).unwrap(), x);
        assert!(decode_shard(&v, 1 << 17, 8192).is_err());

        let d = encode_deferred([(4096u64, &[1u8; 4096][..]), (0, &[2u8; 8192][..])].into_iter());
        let back = decode_deferred(&d).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!((back[1].0, back[1].1.len()), (0, 8192));
        assert_eq!(decode_coll(&encode_coll(77)).unwrap(), 77);
        let s = Superblock {
            fsid: [1; 16],
            min_alloc_size: 4096,
            csum_block: 4096,
            shard_span: 1 << 17,
            created_ns: 3,
        };
        assert_eq!(decode_superblock(&encode_superblock(&s)).unwrap(), s);
    }

    #[test]
    fn escaped_names_keep_their_order_and_separate_their_shards() {
        let names = ["", "a", "a\0", "a\0b", "a\x01", "a\x01\x01", "ab", "b"];
        let prefixes: Vec<Vec<u8>> = names.iter().map(|n| shard_prefix(3, n)).collect();
        for w in prefixes.windows(2) {
            assert!(w[0] < w[1], "{w:?}");
        }
        // No object's shard range contains another object's shard keys.
        for (i, p) in prefixes.iter().enumerate() {
            let end = prefix_end(p);
            for (j, q) in prefixes.iter().enumerate() {
                let k = shard_key(q, 7);
                assert_eq!(i == j, k >= *p && k < end, "{:?} {:?}", names[i], names[j]);
            }
        }
        let k = onode_key(9, "obj/1");
        assert_eq!(name_of_onode_key(&k).unwrap(), "obj/1");
    }
}
