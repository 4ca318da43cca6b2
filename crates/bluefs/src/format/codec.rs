//! Shared pieces: fixed-position access, the variable-length writer and the checked reader.

use bluepoll_base::codec;

use super::{BLOCK, DeviceId, Extent, Fnode, FormatError, FormatVersion, MAX_NAME_LEN};

/// The leading fields every structure shares.
pub(super) const OFF_MAGIC: usize = 0;
pub(super) const OFF_VERSION: usize = OFF_MAGIC + 8;

pub(super) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(super) fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

pub(super) fn set(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

/// crc32c of `b` with the 4-byte field at `crc_at` skipped.
pub(super) fn crc_skipping(b: &[u8], crc_at: usize) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[..crc_at]), &b[crc_at + 4..])
}

pub(super) fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

pub(super) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A count prefix. Panics past u32::MAX items (no in-memory list gets there by accident).
pub(super) fn put_count(out: &mut Vec<u8>, n: usize, what: &str) {
    let n = u32::try_from(n).unwrap_or_else(|_| panic!("{what}: {n} items, more than u32::MAX"));
    put_u32(out, n);
}

/// Name: u16 length, then that many bytes of UTF-8.
pub(super) fn put_name(out: &mut Vec<u8>, name: &str) {
    assert!(
        name.len() <= MAX_NAME_LEN,
        "BlueFS name of {} bytes is longer than MAX_NAME_LEN ({MAX_NAME_LEN})",
        name.len()
    );
    put_u16(out, name.len() as u16);
    out.extend_from_slice(name.as_bytes());
}

/// Extent: device u8, offset u64, length u64 (17 bytes).
pub(super) const EXTENT_LEN: usize = 1 + 8 + 8;

pub(super) fn put_extent(out: &mut Vec<u8>, e: &Extent) {
    put_u8(out, e.device as u8);
    put_u64(out, e.offset);
    put_u64(out, e.length);
}

pub(super) fn put_extents(out: &mut Vec<u8>, extents: &[Extent]) {
    put_count(out, extents.len(), "extent list");
    for e in extents {
        put_extent(out, e);
    }
}

/// Fnode: ino u64, size u64, mtime_ns u64, extent count u32, extents.
pub(super) const FNODE_FIXED_LEN: usize = 8 + 8 + 8 + 4;

pub(super) fn put_fnode(out: &mut Vec<u8>, f: &Fnode) {
    put_u64(out, f.ino);
    put_u64(out, f.size);
    put_u64(out, f.mtime_ns);
    put_extents(out, &f.extents);
}

/// What makes an extent valid, besides its device byte.
pub(super) fn check_extent(offset: u64, length: u64) -> Result<(), String> {
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
pub(super) fn add_extent_length(total: u64, length: u64) -> Result<u64, String> {
    total
        .checked_add(length)
        .ok_or_else(|| "extents total more than u64::MAX bytes".to_string())
}

/// Reads variable-length fields from untrusted bytes: [`bluepoll_base::codec::Reader`], with
/// its errors as text (callers wrap them with where it was) and BlueFS's own structures on top.
pub(super) struct Reader<'a> {
    fields: codec::Reader<'a>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader {
            fields: codec::Reader::new(buf),
        }
    }

    pub(super) fn remaining(&self) -> usize {
        self.fields.remaining()
    }

    pub(super) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], String> {
        self.fields.take(n, field).map_err(|e| e.to_string())
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, String> {
        self.fields.u8(field).map_err(|e| e.to_string())
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, String> {
        self.fields.u16(field).map_err(|e| e.to_string())
    }

    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, String> {
        self.fields.u32(field).map_err(|e| e.to_string())
    }

    pub(super) fn u64(&mut self, field: &'static str) -> Result<u64, String> {
        self.fields.u64(field).map_err(|e| e.to_string())
    }

    /// A u32 count of items each at least `min_item_len` bytes, checked against what is left
    /// before anyone allocates for it.
    pub(super) fn count(
        &mut self,
        field: &'static str,
        min_item_len: usize,
    ) -> Result<usize, String> {
        self.fields
            .count32(field, min_item_len)
            .map_err(|e| e.to_string())
    }

    pub(super) fn name(&mut self, field: &'static str) -> Result<String, String> {
        let len = self.u16(field)? as usize;
        if len > MAX_NAME_LEN {
            return Err(format!(
                "{field}: length {len} is over the {MAX_NAME_LEN}-byte limit"
            ));
        }
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("{field}: not valid UTF-8 ({e})"))
    }

    pub(super) fn extent(&mut self) -> Result<Extent, String> {
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
    pub(super) fn extents(&mut self) -> Result<Vec<Extent>, String> {
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

    pub(super) fn fnode(&mut self) -> Result<Fnode, String> {
        Ok(Fnode {
            ino: self.u64("ino")?,
            size: self.u64("size")?,
            mtime_ns: self.u64("mtime")?,
            extents: self.extents()?,
        })
    }
}

/// Magic first (so zeroed or foreign blocks say so), then length, then version.
pub(super) fn check_magic_version(
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

pub(super) fn short_block(what: &'static str, len: usize) -> FormatError {
    FormatError::Invalid {
        what,
        reason: format!("{len} bytes given, a {what} is one {BLOCK}-byte block"),
    }
}

pub(super) fn check_crc(
    block: &[u8],
    crc_at: usize,
    what: &'static str,
) -> Result<(), FormatError> {
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
