//! Verifiable blocks: what a job with `verify=crc32c` writes, and how reads check it.
//!
//! Every write of `bs` bytes carries a 32-byte header at its start (layout in docs/format.md,
//! "Bench verify block"): magic, version, length, crc32c, the device offset it was written to, and
//! a generation. The payload is a pseudo-random stream seeded by offset and generation. A read
//! then catches lost writes (old or never-written data), corrupted bytes (crc), misdirected writes
//! (offset) and stale data (generation, when this run knows what it last wrote there).
//!
//! ```text
//!  0       4       6       8          12         16                  24                  32
//!  | magic | vers. | hdrlen| length   | crc32c   | device offset     | generation        | payload…
//!  | u32   | u16   | u16   | u32      | u32      | u64               | u64               |
//! ```
//! All integers little-endian. The crc covers bytes 0..12 and 16..length (the crc field skipped).
//!
//! With fio's other checksums (`verify=md5`, `sha1`, `sha256`, `sha512`, `crc64`, `xxhash`) the
//! header is version 2: the same 32 bytes, then the algorithm, the digest's length and the digest
//! of the payload (docs/format.md). The crc32c still covers every byte, so the header itself is
//! protected whatever the algorithm. `verify=pattern` writes no header: the unit holds
//! `verify_pattern` repeated, and a read must find exactly that.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use super::offsets::splitmix;

/// The first four bytes of every verify header: `BPVF` (little-endian).
pub const MAGIC: u32 = u32::from_le_bytes(*b"BPVF");
/// The header with the crc32c as its only checksum (`verify=crc32c`, `meta`).
pub const VERSION: u16 = 1;
/// The header with a payload digest after the base fields.
pub const VERSION_DIGEST: u16 = 2;
/// Bytes of the base header (version 1); version 2 headers are longer
/// ([`Digest::header_len`]).
pub const HEADER_LEN: usize = 32;
/// Where a version 2 header keeps the algorithm, the digest length and the digest.
const OFF_ALGORITHM: usize = HEADER_LEN;
const OFF_DIGEST_LEN: usize = HEADER_LEN + 1;
const OFF_DIGEST: usize = HEADER_LEN + 8;
/// The longest digest (sha512).
pub const MAX_DIGEST: usize = 64;

/// The payload checksum of a verify block, by fio's `verify=` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    /// Version 1: the header's crc32c is the only checksum.
    Crc32c,
    /// `md5`: a 16-byte MD5 of the payload.
    Md5,
    /// `sha1`: a 20-byte SHA-1 of the payload.
    Sha1,
    /// `sha256`: a 32-byte SHA-256 of the payload.
    Sha256,
    /// `sha512`: a 64-byte SHA-512 of the payload.
    Sha512,
    /// `crc64`: the CRC-64/ECMA-182 of the payload, 8 bytes little-endian.
    Crc64,
    /// `xxhash`: the 64-bit xxHash (XXH64, seed 0) of the payload, 8 bytes little-endian.
    Xxhash,
}

impl Digest {
    /// The digests a version 2 header may carry.
    pub const WITH_DIGEST: [Digest; 6] = [
        Digest::Md5,
        Digest::Sha1,
        Digest::Sha256,
        Digest::Sha512,
        Digest::Crc64,
        Digest::Xxhash,
    ];

    /// The digest's name as fio's `verify=` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Digest::Crc32c => "crc32c",
            Digest::Md5 => "md5",
            Digest::Sha1 => "sha1",
            Digest::Sha256 => "sha256",
            Digest::Sha512 => "sha512",
            Digest::Crc64 => "crc64",
            Digest::Xxhash => "xxhash",
        }
    }

    /// The number stored in a version 2 header (docs/format.md).
    fn code(self) -> u8 {
        match self {
            Digest::Crc32c => 0,
            Digest::Md5 => 1,
            Digest::Sha1 => 2,
            Digest::Sha256 => 3,
            Digest::Sha512 => 4,
            Digest::Crc64 => 5,
            Digest::Xxhash => 6,
        }
    }

    fn len(self) -> usize {
        match self {
            Digest::Crc32c => 0,
            Digest::Md5 => 16,
            Digest::Sha1 => 20,
            Digest::Sha256 => 32,
            Digest::Sha512 => 64,
            Digest::Crc64 | Digest::Xxhash => 8,
        }
    }

    /// Bytes of header before the payload: 32, or 40 + the digest rounded up to 8.
    pub fn header_len(self) -> usize {
        match self {
            Digest::Crc32c => HEADER_LEN,
            d => OFF_DIGEST + d.len().div_ceil(8) * 8,
        }
    }

    fn compute(self, payload: &[u8], out: &mut [u8; MAX_DIGEST]) {
        use sha2::Digest as _;
        match self {
            Digest::Crc32c => {}
            Digest::Md5 => out[..16].copy_from_slice(&md5::Md5::digest(payload)),
            Digest::Sha1 => out[..20].copy_from_slice(&sha1::Sha1::digest(payload)),
            Digest::Sha256 => out[..32].copy_from_slice(&sha2::Sha256::digest(payload)),
            Digest::Sha512 => out[..64].copy_from_slice(&sha2::Sha512::digest(payload)),
            Digest::Crc64 => {
                let crc = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);
                out[..8].copy_from_slice(&crc.checksum(payload).to_le_bytes());
            }
            Digest::Xxhash => {
                out[..8].copy_from_slice(&xxhash_rust::xxh64::xxh64(payload, 0).to_le_bytes())
            }
        }
    }
}

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = OFF_MAGIC + 4;
const OFF_HEADER_LEN: usize = OFF_VERSION + 2;
const OFF_LENGTH: usize = OFF_HEADER_LEN + 2;
const OFF_CRC: usize = OFF_LENGTH + 4;
const OFF_DEVICE_OFFSET: usize = OFF_CRC + 4;
const OFF_GENERATION: usize = OFF_DEVICE_OFFSET + 8;
const _: () = assert!(OFF_GENERATION + 8 == HEADER_LEN);

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn checksum(block: &[u8]) -> u32 {
    crc32c::crc32c_append(
        crc32c::crc32c(&block[..OFF_CRC]),
        &block[OFF_DEVICE_OFFSET..],
    )
}

/// Fills `block` (one unit, at least HEADER_LEN bytes) for `device_offset` and `generation`.
pub fn fill(block: &mut [u8], device_offset: u64, generation: u64) {
    fill_with(block, device_offset, generation, Digest::Crc32c);
}

/// Fills `block` with a header carrying `digest` (version 2 unless crc32c).
pub fn fill_with(block: &mut [u8], device_offset: u64, generation: u64, digest: Digest) {
    let header_len = digest.header_len().min(block.len());
    let mut x = splitmix(device_offset ^ generation.rotate_left(32)) | 1;
    for chunk in block[header_len..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    block[OFF_MAGIC..OFF_VERSION].copy_from_slice(&MAGIC.to_le_bytes());
    let version = if digest == Digest::Crc32c {
        VERSION
    } else {
        VERSION_DIGEST
    };
    block[OFF_VERSION..OFF_HEADER_LEN].copy_from_slice(&version.to_le_bytes());
    block[OFF_HEADER_LEN..OFF_LENGTH].copy_from_slice(&(header_len as u16).to_le_bytes());
    if digest != Digest::Crc32c && header_len == digest.header_len() {
        block[OFF_ALGORITHM] = digest.code();
        block[OFF_DIGEST_LEN] = digest.len() as u8;
        block[OFF_DIGEST_LEN + 1..OFF_DIGEST].fill(0);
        let mut out = [0u8; MAX_DIGEST];
        digest.compute(&block[header_len..], &mut out);
        block[OFF_DIGEST..header_len].fill(0);
        block[OFF_DIGEST..OFF_DIGEST + digest.len()].copy_from_slice(&out[..digest.len()]);
    }
    let length = block.len() as u32;
    block[OFF_LENGTH..OFF_CRC].copy_from_slice(&length.to_le_bytes());
    block[OFF_DEVICE_OFFSET..OFF_GENERATION].copy_from_slice(&device_offset.to_le_bytes());
    block[OFF_GENERATION..HEADER_LEN].copy_from_slice(&generation.to_le_bytes());
    let crc = checksum(block);
    block[OFF_CRC..OFF_DEVICE_OFFSET].copy_from_slice(&crc.to_le_bytes());
}

/// Why a block failed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyFailure {
    /// No verify header: the unit was never written (in this or an earlier run), or a write
    /// to it was lost.
    BadMagic {
        /// The first four bytes, little-endian.
        found: u32,
    },
    /// A header of a version this code does not know.
    BadVersion {
        /// The version field.
        found: u16,
    },
    /// The header's length is not the unit's (written with another `bs` or
    /// `verify_interval`).
    BadLength {
        /// The length the header records.
        found: u32,
        /// The length of the unit read.
        expected: u32,
    },
    /// The crc32c over the unit does not match the header's: corrupted bytes.
    ChecksumMismatch {
        /// The crc32c the header records.
        expected: u32,
        /// The crc32c the bytes read give.
        actual: u32,
    },
    /// The payload digest (version 2) does not match.
    DigestMismatch {
        /// The digest's name ([`Digest::name`]).
        algorithm: &'static str,
    },
    /// `verify=pattern`: the first byte that differs from the pattern.
    PatternMismatch {
        /// The byte's index in the unit.
        at: usize,
        /// The byte read.
        found: u8,
        /// The pattern's byte there.
        expected: u8,
    },
    /// A valid block written for another offset: a misdirected write (or read).
    WrongOffset {
        /// The device offset the header records.
        found: u64,
    },
    /// A valid block of an older generation than this run last wrote there: a lost write.
    Stale {
        /// The generation the header records.
        found: u64,
        /// The generation this run last wrote to the unit.
        expected: u64,
    },
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyFailure::BadMagic { found } => {
                write!(f, "bad magic {found:#010x} (never written, or lost)")
            }
            VerifyFailure::BadVersion { found } => write!(f, "unknown header version {found}"),
            VerifyFailure::BadLength { found, expected } => {
                write!(
                    f,
                    "header length {found}, expected {expected} (written with another bs?)"
                )
            }
            VerifyFailure::ChecksumMismatch { expected, actual } => {
                write!(
                    f,
                    "crc32c mismatch: header says {expected:#010x}, data gives {actual:#010x}"
                )
            }
            VerifyFailure::DigestMismatch { algorithm } => {
                write!(f, "{algorithm} of the payload does not match the header's")
            }
            VerifyFailure::PatternMismatch {
                at,
                found,
                expected,
            } => write!(
                f,
                "byte {at} is {found:#04x}, the pattern has {expected:#04x} there"
            ),
            VerifyFailure::WrongOffset { found } => {
                write!(f, "block belongs at offset {found} (misdirected)")
            }
            VerifyFailure::Stale { found, expected } => {
                write!(
                    f,
                    "stale data: generation {found}, expected {expected} (a write was lost)"
                )
            }
        }
    }
}

/// Checks one unit read from `device_offset`. `expected_generation` is 0 when unknown.
pub fn check(
    block: &[u8],
    device_offset: u64,
    expected_generation: u64,
) -> Result<(), VerifyFailure> {
    let magic = u32_at(block, OFF_MAGIC);
    if magic != MAGIC {
        return Err(VerifyFailure::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([block[OFF_VERSION], block[OFF_VERSION + 1]]);
    if version != VERSION && version != VERSION_DIGEST {
        return Err(VerifyFailure::BadVersion { found: version });
    }
    let length = u32_at(block, OFF_LENGTH);
    if length as usize != block.len() {
        return Err(VerifyFailure::BadLength {
            found: length,
            expected: block.len() as u32,
        });
    }
    let expected = u32_at(block, OFF_CRC);
    let actual = checksum(block);
    if expected != actual {
        return Err(VerifyFailure::ChecksumMismatch { expected, actual });
    }
    if version == VERSION_DIGEST {
        check_digest(block)?;
    }
    let found = u64_at(block, OFF_DEVICE_OFFSET);
    if found != device_offset {
        return Err(VerifyFailure::WrongOffset { found });
    }
    let generation = u64_at(block, OFF_GENERATION);
    if expected_generation != 0 && fold(generation) != fold(expected_generation) {
        return Err(VerifyFailure::Stale {
            found: generation,
            expected: expected_generation,
        });
    }
    Ok(())
}

/// A version 2 header's payload digest (the crc32c already vouched for the header's bytes).
fn check_digest(block: &[u8]) -> Result<(), VerifyFailure> {
    let digest = Digest::WITH_DIGEST
        .into_iter()
        .find(|d| block.get(OFF_ALGORITHM) == Some(&d.code()))
        .ok_or(VerifyFailure::BadVersion {
            found: VERSION_DIGEST,
        })?;
    let header_len = digest.header_len();
    if block.len() < header_len || block[OFF_DIGEST_LEN] as usize != digest.len() {
        return Err(VerifyFailure::DigestMismatch {
            algorithm: digest.name(),
        });
    }
    let mut out = [0u8; MAX_DIGEST];
    digest.compute(&block[header_len..], &mut out);
    if block[OFF_DIGEST..OFF_DIGEST + digest.len()] != out[..digest.len()] {
        return Err(VerifyFailure::DigestMismatch {
            algorithm: digest.name(),
        });
    }
    Ok(())
}

/// `verify=pattern`: fills a unit with the pattern repeated from its first byte.
pub fn fill_pattern(block: &mut [u8], pattern: &[u8]) {
    if pattern.is_empty() {
        return;
    }
    for (i, b) in block.iter_mut().enumerate() {
        *b = pattern[i % pattern.len()];
    }
}

/// `verify=pattern`: the unit must hold exactly the pattern repeated.
pub fn check_pattern(block: &[u8], pattern: &[u8]) -> Result<(), VerifyFailure> {
    if pattern.is_empty() {
        return Ok(());
    }
    match block
        .iter()
        .enumerate()
        .find(|(i, b)| **b != pattern[i % pattern.len()])
    {
        None => Ok(()),
        Some((at, &found)) => Err(VerifyFailure::PatternMismatch {
            at,
            found,
            expected: pattern[at % pattern.len()],
        }),
    }
}

/// The generation this run last wrote to each unit of a device range, shared by every job on
/// the device (on any reactor), so a read job verifies what an earlier write job wrote.
///
/// It is also how jobs keep out of each other's way: a command must [`claim`](Self::claim) its
/// unit, which fails while another command (of any job) holds it, and
/// [`release`](Self::release) it when it completes. Two commands to one unit at once would race
/// (which one lands last?) and make correct data look stale. Generations are read at claim time,
/// so a read checks against what was durable when it was issued.
#[derive(Debug)]
pub struct Generations {
    /// Bytes per unit tracked (the job's block size).
    pub unit: u64,
    /// Device offset of the first unit.
    pub first_offset: u64,
    /// One unit in `stride` is tracked (1 unless the range has more than `MAX_UNITS` units).
    stride: u64,
    table: Box<[AtomicU32]>,
}

/// Set in a table entry while a command holds the unit.
const BUSY: u32 = 1 << 31;
/// Set for good once a job that does not write verify blocks (or a trim) changed the unit: its
/// contents are unknown for the rest of the run and reads of it are not checked.
const FOREIGN: u32 = 1 << 30;

/// A generation as the table keeps it, in 30 bits and never 0 for a written unit (0 means "not
/// written in this run"): generations past 2^30 − 1 wrap to 1, not to 0, so a stale unit is
/// still told from a fresh one after any number of writes.
pub fn fold(generation: u64) -> u64 {
    match generation {
        0 => 0,
        g => (g - 1) % (FOREIGN as u64 - 1) + 1,
    }
}

/// What [`Generations::claim`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The unit is ours until released; its last generation (0 = not written in this run).
    Claimed(u64),
    /// Another command holds it.
    Busy,
    /// Not tracked here (outside the table, or not aligned to its units).
    Untracked,
}

impl Generations {
    /// Most units the table holds (256 MiB of it); a larger range is sampled: one unit in
    /// [`stride`](Self::stride) is tracked, the others get the header and crc checks only.
    pub const MAX_UNITS: u64 = 1 << 26;

    /// A table over `bytes` from `first_offset`, or None if that is not one whole unit.
    pub fn new(first_offset: u64, bytes: u64, unit: u64) -> Option<Generations> {
        let units = bytes / unit;
        if units == 0 {
            return None;
        }
        let stride = units.div_ceil(Self::MAX_UNITS);
        Some(Generations {
            unit,
            first_offset,
            stride,
            table: (0..units.div_ceil(stride))
                .map(|_| AtomicU32::new(0))
                .collect(),
        })
    }

    /// Tracked units are one in this many (1: every unit).
    pub fn stride(&self) -> u64 {
        self.stride
    }

    fn slot(&self, device_offset: u64) -> Option<&AtomicU32> {
        let rel = device_offset.checked_sub(self.first_offset)?;
        if rel % self.unit != 0 || (rel / self.unit) % self.stride != 0 {
            return None;
        }
        self.table.get((rel / self.unit / self.stride) as usize)
    }

    /// Takes the unit at `device_offset` for one command, returning the generation it last
    /// held; [`Claim::Busy`] while another command holds it, [`Claim::Untracked`] for an
    /// offset the table does not track. A claimed unit must be [`release`](Self::release)d.
    pub fn claim(&self, device_offset: u64) -> Claim {
        let Some(slot) = self.slot(device_offset) else {
            return Claim::Untracked;
        };
        let current = slot.load(Ordering::Acquire);
        if current & BUSY != 0 {
            return Claim::Busy;
        }
        match slot.compare_exchange(current, current | BUSY, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => Claim::Claimed((current & !FOREIGN) as u64),
            Err(_) => Claim::Busy,
        }
    }

    /// Ends a claim, recording `generation` as what the unit now holds (0 = unknown, after a
    /// failed write).
    pub fn release(&self, device_offset: u64, generation: u64) {
        if let Some(slot) = self.slot(device_offset) {
            let folded = fold(generation) as u32;
            // A foreign write may have marked the unit meanwhile; the mark stays.
            let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                Some(folded | (current & FOREIGN))
            });
        }
    }

    /// Marks every tracked unit that `[device_offset, +len)` touches as changed by something that
    /// writes no verify blocks (a job without verify, or a trim).
    pub fn forget(&self, device_offset: u64, len: u64) {
        let rel = device_offset.saturating_sub(self.first_offset);
        let first = rel / self.unit;
        let end = (rel + len).div_ceil(self.unit);
        for unit in first..end {
            if unit % self.stride == 0
                && let Some(slot) = self.table.get((unit / self.stride) as usize)
            {
                slot.fetch_or(FOREIGN, Ordering::AcqRel);
            }
        }
    }

    /// Whether the unit was changed by something that writes no verify blocks.
    pub fn foreign(&self, device_offset: u64) -> bool {
        let rel = device_offset.saturating_sub(self.first_offset);
        let unit = rel / self.unit;
        unit % self.stride == 0
            && self
                .table
                .get((unit / self.stride) as usize)
                .is_some_and(|s| s.load(Ordering::Acquire) & FOREIGN != 0)
    }

    /// Records a generation outside any claim (laying out a device before jobs start).
    pub fn set(&self, device_offset: u64, generation: u64) {
        self.release(device_offset, generation);
    }

    /// Generation last recorded at `device_offset`, 0 if unknown.
    pub fn get(&self, device_offset: u64) -> u64 {
        self.slot(device_offset).map_or(0, |s| {
            (s.load(Ordering::Acquire) & !(BUSY | FOREIGN)) as u64
        })
    }
}

/// Which units of a job's range the job itself wrote, for its verify pass.
#[derive(Debug, Default)]
pub struct WrittenUnits {
    bits: Vec<u64>,
}

impl WrittenUnits {
    /// A set over units `0..units`, none marked.
    pub fn new(units: u64) -> WrittenUnits {
        WrittenUnits {
            bits: vec![0; units.div_ceil(64) as usize],
        }
    }

    /// Marks `unit` as written by the job (units past the end are ignored).
    pub fn mark(&mut self, unit: u64) {
        if let Some(word) = self.bits.get_mut((unit / 64) as usize) {
            *word |= 1 << (unit % 64);
        }
    }

    /// Whether the job wrote `unit`.
    pub fn contains(&self, unit: u64) -> bool {
        self.bits
            .get((unit / 64) as usize)
            .is_some_and(|w| w & (1 << (unit % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_digest_catches_a_flipped_payload_bit_and_keeps_the_header_checks() {
        for digest in std::iter::once(Digest::Crc32c).chain(Digest::WITH_DIGEST) {
            let mut block = vec![0u8; 4096];
            fill_with(&mut block, 8192, 3, digest);
            assert_eq!(check(&block, 8192, 3), Ok(()), "{digest:?}");
            assert!(matches!(
                check(&block, 4096, 3),
                Err(VerifyFailure::WrongOffset { .. })
            ));
            assert!(matches!(
                check(&block, 8192, 4),
                Err(VerifyFailure::Stale { .. })
            ));
            block[4000] ^= 1;
            assert!(check(&block, 8192, 3).is_err(), "{digest:?}");
        }
        // A digest that no longer matches its payload, under a consistent crc, is named.
        let mut block = vec![0u8; 4096];
        fill_with(&mut block, 0, 1, Digest::Md5);
        block[OFF_DIGEST] ^= 0xff;
        let crc = checksum(&block);
        block[OFF_CRC..OFF_DEVICE_OFFSET].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            check(&block, 0, 1),
            Err(VerifyFailure::DigestMismatch { algorithm: "md5" })
        );
    }

    #[test]
    fn patterns_repeat_and_mismatches_name_the_byte() {
        let mut block = vec![0u8; 10];
        fill_pattern(&mut block, &[0xaa, 0x55, 0x5a]);
        assert_eq!(block[..4], [0xaa, 0x55, 0x5a, 0xaa]);
        assert_eq!(check_pattern(&block, &[0xaa, 0x55, 0x5a]), Ok(()));
        block[5] = 0;
        assert_eq!(
            check_pattern(&block, &[0xaa, 0x55, 0x5a]),
            Err(VerifyFailure::PatternMismatch {
                at: 5,
                found: 0,
                expected: 0x5a
            })
        );
    }

    #[test]
    fn round_trip_and_every_failure() {
        let mut block = vec![0u8; 4096];
        fill(&mut block, 8192, 3);
        assert_eq!(check(&block, 8192, 3), Ok(()));
        assert_eq!(check(&block, 8192, 0), Ok(()));
        assert_eq!(
            check(&block, 4096, 0),
            Err(VerifyFailure::WrongOffset { found: 8192 })
        );
        assert_eq!(
            check(&block, 8192, 4),
            Err(VerifyFailure::Stale {
                found: 3,
                expected: 4
            })
        );
        assert!(matches!(
            check(&block[..2048], 8192, 0),
            Err(VerifyFailure::BadLength { .. })
        ));
        let mut flipped = block.clone();
        flipped[1000] ^= 0x10;
        assert!(matches!(
            check(&flipped, 8192, 3),
            Err(VerifyFailure::ChecksumMismatch { .. })
        ));
        let zeros = vec![0u8; 4096];
        assert_eq!(
            check(&zeros, 0, 0),
            Err(VerifyFailure::BadMagic { found: 0 })
        );
    }

    #[test]
    fn header_layout_is_stable() {
        let mut block = vec![0u8; 512];
        fill(&mut block, 0x1122, 7);
        assert_eq!(&block[0..4], b"BPVF");
        assert_eq!(&block[4..8], &[1, 0, 32, 0]);
        assert_eq!(u32_at(&block, 8), 512);
        assert_eq!(u64_at(&block, 16), 0x1122);
        assert_eq!(u64_at(&block, 24), 7);
    }

    #[test]
    fn generation_table_claims_are_exclusive() {
        let g = Generations::new(4096, 4096 * 10, 4096).unwrap();
        assert_eq!(g.claim(8192), Claim::Claimed(0));
        assert_eq!(g.claim(8192), Claim::Busy, "one command per unit");
        g.release(8192, 5);
        assert_eq!(g.get(8192), 5);
        assert_eq!(g.claim(8192), Claim::Claimed(5));
        g.release(8192, 5);
        assert_eq!(g.claim(0), Claim::Untracked, "outside the range");
        assert_eq!(g.claim(8193), Claim::Untracked, "not aligned to units");
        assert!(Generations::new(0, 100, 4096).is_none(), "less than a unit");
    }

    /// A range of more units than the table holds is sampled, not left unchecked: a lost
    /// overwrite of a tracked unit is still found.
    #[test]
    fn a_huge_range_is_sampled() {
        let unit = 4096;
        let g = Generations::new(0, (Generations::MAX_UNITS * 3 + 5) * unit, unit).unwrap();
        assert_eq!(g.stride(), 4);
        let far = (Generations::MAX_UNITS * 3) * unit;
        assert_eq!(g.claim(far), Claim::Claimed(0));
        g.release(far, 7);
        assert_eq!(g.get(far), 7);
        assert_eq!(g.claim(far + unit), Claim::Untracked, "between samples");
        let mut block = vec![0u8; unit as usize];
        fill(&mut block, far, 6);
        assert!(matches!(
            check(&block, far, g.get(far)),
            Err(VerifyFailure::Stale { .. })
        ));
    }

    /// Generations never fold to 0 ("unknown"), so a lost overwrite is found at any count.
    #[test]
    fn generations_past_31_bits_are_still_checked() {
        let g = Generations::new(0, 4096 * 4, 4096).unwrap();
        let wrapped = (1u64 << 31) - 1;
        g.release(0, wrapped);
        assert_ne!(g.get(0), 0, "a written unit must not look unwritten");
        let mut block = vec![0u8; 4096];
        fill(&mut block, 0, wrapped - 1);
        assert!(matches!(
            check(&block, 0, g.get(0)),
            Err(VerifyFailure::Stale { .. })
        ));
        fill(&mut block, 0, wrapped);
        assert!(check(&block, 0, g.get(0)).is_ok());
    }

    #[test]
    fn written_units() {
        let mut w = WrittenUnits::new(130);
        assert!(!w.contains(129));
        w.mark(129);
        w.mark(0);
        assert!(w.contains(129) && w.contains(0) && !w.contains(64));
        w.mark(1000);
        assert!(!w.contains(1000), "out of range is ignored");
    }
}
