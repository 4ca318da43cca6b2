//! The little-endian field codec every on-disk record of bluepoll is written and read with, and
//! the crc32c seal that ends most of them.
//!
//! Records differ in their headers (a version byte, reserved bytes, a magic), which each format
//! module keeps and docs/format.md documents; what they share is here: fixed-width integers in
//! little-endian order, length-prefixed byte strings, and a crc32c (Castagnoli) of everything
//! before it in the last four bytes. Reading is from untrusted bytes: every read checks that the
//! bytes are there before it looks, a length is checked against what is left before anything is
//! allocated for it, and an error names the field and the offset where it failed. Nothing here
//! panics on any input.

use std::fmt;

/// Why a record could not be read. The layers wrap it in their own error with the record's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// `field` needs `needed` bytes at `offset` and only `left` remain.
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Its offset in the record, in bytes.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the record at `offset`.
        left: usize,
    },
    /// A count of `value` items cannot fit in the `left` bytes that follow.
    TooLong {
        /// The count field.
        field: &'static str,
        /// What it says.
        value: u64,
        /// Bytes left after it.
        left: usize,
        /// The most items of the smallest size that would fit there.
        fits: usize,
    },
    /// `bytes` bytes follow the record's last field.
    Trailing {
        /// How many.
        bytes: usize,
    },
    /// A text field is not UTF-8.
    NotUtf8 {
        /// The field.
        field: &'static str,
    },
    /// The record's stored crc32c is not the crc32c of its contents.
    Checksum {
        /// The checksum in the record.
        stored: u32,
        /// The checksum of the bytes it covers.
        computed: u32,
    },
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Truncated {
                field,
                offset,
                needed,
                left,
            } => write!(
                f,
                "{field}: needs {needed} bytes at offset {offset}, only {left} left"
            ),
            CodecError::TooLong {
                field,
                value,
                left,
                fits,
            } => write!(
                f,
                "{field}: count {value} cannot fit in the {left} bytes left (at most {fits})"
            ),
            CodecError::Trailing { bytes } => write!(f, "{bytes} trailing bytes"),
            CodecError::NotUtf8 { field } => write!(f, "{field} is not UTF-8"),
            CodecError::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

impl std::error::Error for CodecError {}

/// Appends fields to a record in little-endian order.
#[derive(Clone, Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty record with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Writer {
        self.buf.push(v);
        self
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self, v: u16) -> &mut Writer {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self, v: u32) -> &mut Writer {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self, v: u64) -> &mut Writer {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Bytes as they are, with no length before them (the reader must know how many).
    pub fn raw(&mut self, v: &[u8]) -> &mut Writer {
        self.buf.extend_from_slice(v);
        self
    }

    /// A u32 length, then the bytes. Lengths past `u32::MAX` are a caller's bug the formats rule
    /// out long before (records are at most a few MiB).
    pub fn bytes32(&mut self, v: &[u8]) -> &mut Writer {
        self.u32(v.len() as u32).raw(v)
    }

    /// A u16 length, then the UTF-8 bytes (names, which the layers limit to far less).
    pub fn str16(&mut self, v: &str) -> &mut Writer {
        self.u16(v.len() as u16).raw(v.as_bytes())
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The record without a seal.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// The record with the crc32c of all of it appended (see [`seal`]).
    pub fn seal(mut self) -> Vec<u8> {
        seal(&mut self.buf);
        self.buf
    }
}

/// Appends the crc32c of `record` to it, little-endian.
pub fn seal(record: &mut Vec<u8>) {
    let crc = crc32c::crc32c(record);
    record.extend_from_slice(&crc.to_le_bytes());
}

/// Checks the crc32c in the last four bytes of `sealed` and returns what it covers. Shorter than
/// four bytes is [`CodecError::Truncated`].
pub fn unseal(sealed: &[u8]) -> Result<&[u8], CodecError> {
    let Some(split) = sealed.len().checked_sub(4) else {
        return Err(CodecError::Truncated {
            field: "crc32c",
            offset: 0,
            needed: 4,
            left: sealed.len(),
        });
    };
    let (content, crc) = sealed.split_at(split);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32c::crc32c(content);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok(content)
}

/// Reads fields from untrusted bytes, in order.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its first byte.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Offset of the next field.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CodecError> {
        if self.remaining() < n {
            return Err(CodecError::Truncated {
                field,
                offset: self.pos,
                needed: n,
                left: self.remaining(),
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, field)?[0])
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, CodecError> {
        self.array(field).map(u16::from_le_bytes)
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        self.array(field).map(u32::from_le_bytes)
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        self.array(field).map(u64::from_le_bytes)
    }

    /// A u32 length, then that many bytes.
    pub fn bytes32(&mut self, field: &'static str) -> Result<&'a [u8], CodecError> {
        let n = self.u32(field)? as usize;
        self.take(n, field)
    }

    /// A u16 length, then that many bytes of UTF-8.
    pub fn str16(&mut self, field: &'static str) -> Result<&'a str, CodecError> {
        let n = self.u16(field)? as usize;
        std::str::from_utf8(self.take(n, field)?).map_err(|_| CodecError::NotUtf8 { field })
    }

    /// A u32 count of items, each at least `min_item_len` bytes (at least 1 is assumed),
    /// checked against what is left before anyone allocates for it.
    pub fn count32(
        &mut self,
        field: &'static str,
        min_item_len: usize,
    ) -> Result<usize, CodecError> {
        let n = self.u32(field)?;
        let left = self.remaining();
        let fits = left / min_item_len.max(1);
        if n as usize > fits {
            return Err(CodecError::TooLong {
                field,
                value: n.into(),
                left,
                fits,
            });
        }
        Ok(n as usize)
    }

    /// Checks that every byte was read.
    pub fn end(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            bytes => Err(CodecError::Trailing { bytes }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_the_seal_catches_any_flipped_bit() {
        let mut w = Writer::with_capacity(64);
        w.u8(1).u16(0x0203).u32(0x0405_0607).u64(u64::MAX - 1);
        w.bytes32(b"payload").str16("name").raw(&[9, 9]);
        let sealed = w.seal();
        let body = unseal(&sealed).unwrap();
        let mut r = Reader::new(body);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16("b").unwrap(), 0x0203);
        assert_eq!(r.u32("c").unwrap(), 0x0405_0607);
        assert_eq!(r.u64("d").unwrap(), u64::MAX - 1);
        assert_eq!(r.bytes32("e").unwrap(), b"payload");
        assert_eq!(r.str16("f").unwrap(), "name");
        assert_eq!(r.take(2, "g").unwrap(), &[9, 9]);
        r.end().unwrap();
        // Little-endian on disk whatever the host.
        assert_eq!(&body[1..3], &[0x03, 0x02]);
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(unseal(&bad), Err(CodecError::Checksum { .. })),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn short_long_and_trailing_input_are_errors_naming_the_field() {
        let mut r = Reader::new(&[1, 0, 0]);
        let e = r.u32("size").unwrap_err();
        assert_eq!(
            e.to_string(),
            "size: needs 4 bytes at offset 0, only 3 left"
        );
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert!(matches!(
            r.count32("extents", 16),
            Err(CodecError::TooLong {
                value: 0xffff_ffff,
                left: 1,
                ..
            })
        ));
        let mut r = Reader::new(&[2, 0, 0xc3, 0x28]);
        assert_eq!(r.str16("name"), Err(CodecError::NotUtf8 { field: "name" }));
        let r = Reader::new(&[0]);
        assert_eq!(r.end(), Err(CodecError::Trailing { bytes: 1 }));
        assert!(matches!(unseal(&[1, 2]), Err(CodecError::Truncated { .. })));
    }
}
