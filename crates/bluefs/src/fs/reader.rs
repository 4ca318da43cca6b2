//! A file open for reading: positioned and sequential reads, through the read cache for small
//! reads of files nobody writes.

use bluepoll_base::sync::lock;
use std::sync::Arc;

use super::data::{map_range, read_into};
use super::{BlueFs, FileMeta};
use crate::cache::{CHUNK, ChunkKey, ReadCache};
use crate::error::{BlueFsError, Result};
use crate::format::{BLOCK_SIZE, Extent};

/// A file open for reading.
pub struct FileReader {
    pub(super) fs: BlueFs,
    pub(super) ino: u64,
    pub(super) position: u64,
}

/// One read-cache chunk a read needs: cached, or where on the devices to read it from.
enum ChunkSource {
    Cached(Arc<Vec<u8>>),
    /// The device pieces of the chunk's bytes, rounded up to whole blocks.
    Device(Vec<Extent>),
}

/// The read cache's chunks covering `offset..offset + len` of `f`: (key, bytes of the file in
/// that chunk, source). Only misses are mapped to the devices.
fn plan_cached_read(
    f: &FileMeta,
    cache: &ReadCache,
    offset: u64,
    len: u64,
) -> Result<Vec<(ChunkKey, u64, ChunkSource)>> {
    let size = f.size();
    (offset / CHUNK..=(offset + len - 1) / CHUNK)
        .map(|index| {
            let key = ChunkKey {
                ino: f.fnode.ino,
                generation: f.data_generation,
                index,
            };
            let start = index * CHUNK;
            let chunk_len = CHUNK.min(size - start);
            // A chunk of another length would be from another version of the file: the
            // generation rules out that one is found, the length check makes sure.
            if let Some(c) = cache.get(&key).filter(|c| c.len() as u64 == chunk_len) {
                return Ok((key, chunk_len, ChunkSource::Cached(c)));
            }
            let pieces = map_range(
                f.all_extents(),
                start,
                chunk_len.next_multiple_of(BLOCK_SIZE),
            )
            .ok_or_else(|| BlueFsError::Corrupt {
                reason: format!("file {}: size {size} beyond its allocation", f.fnode.ino),
            })?;
            Ok((key, chunk_len, ChunkSource::Device(pieces)))
        })
        .collect()
}

impl FileReader {
    /// The file's size now, in bytes: it grows as a writer flushes and shrinks when the file
    /// is cut.
    pub fn size(&self) -> u64 {
        lock(&self.fs.inner.state)
            .file(self.ino)
            .map_or(0, |f| f.size())
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer at the end of the file.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        // Under the lock: only the device ranges this read needs.
        let (len, start, end, pieces, log_only) = {
            let st = lock(&self.fs.inner.state);
            let Some(f) = st.file(self.ino) else {
                return Ok(0);
            };
            let size = f.size();
            if offset >= size || buf.is_empty() {
                return Ok(0);
            }
            let len = (buf.len() as u64).min(size - offset);
            // Small reads of a file nobody writes go through the read cache (large ones, such
            // as compaction's readahead, would only push out what is read again).
            if !f.writer
                && f.log_only.is_empty()
                && len <= 4 * CHUNK
                && self.fs.inner.read_cache.enabled()
            {
                let chunks = plan_cached_read(f, &self.fs.inner.read_cache, offset, len)?;
                drop(st);
                return self.read_through_cache(offset, &mut buf[..len as usize], chunks);
            }
            let start = offset / BLOCK_SIZE * BLOCK_SIZE;
            let end = (offset + len).next_multiple_of(BLOCK_SIZE);
            let pieces = map_range(f.all_extents(), start, end - start).ok_or_else(|| {
                BlueFsError::Corrupt {
                    reason: format!("file {}: size {size} beyond its allocation", self.ino),
                }
            })?;
            // Bytes still only in the log: copied now, since they may be written out and
            // forgotten while this read is at the device.
            let log_only: Vec<(u64, Vec<u8>)> = f
                .log_only
                .iter()
                .filter_map(|r| {
                    let from = r.from.max(offset);
                    let to = r.end().min(offset + len);
                    (from < to).then(|| {
                        let at = (from - r.from) as usize;
                        (from, r.bytes[at..at + (to - from) as usize].to_vec())
                    })
                })
                .collect();
            (len, start, end, pieces, log_only)
        };
        let mut data = vec![0u8; (end - start) as usize];
        read_into(&self.fs.inner.devices, &pieces, &mut data)?;
        let from = (offset - start) as usize;
        buf[..len as usize].copy_from_slice(&data[from..from + len as usize]);
        for (at, bytes) in log_only {
            let at = (at - offset) as usize;
            buf[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(len as usize)
    }

    /// Fills `out` (the file's bytes at `offset`) from cached chunks, reading and caching the
    /// missing ones whole.
    fn read_through_cache(
        &self,
        offset: u64,
        out: &mut [u8],
        chunks: Vec<(ChunkKey, u64, ChunkSource)>,
    ) -> Result<usize> {
        for (key, chunk_len, source) in chunks {
            let chunk = match source {
                ChunkSource::Cached(c) => c,
                ChunkSource::Device(pieces) => {
                    let mut data = vec![0u8; chunk_len.next_multiple_of(BLOCK_SIZE) as usize];
                    read_into(&self.fs.inner.devices, &pieces, &mut data)?;
                    data.truncate(chunk_len as usize);
                    let data = Arc::new(data);
                    self.fs.inner.read_cache.insert(key, data.clone());
                    data
                }
            };
            let chunk_start = key.index * CHUNK;
            let from = offset.max(chunk_start);
            let to = (offset + out.len() as u64).min(chunk_start + chunk_len);
            out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                &chunk[(from - chunk_start) as usize..(to - chunk_start) as usize],
            );
        }
        Ok(out.len())
    }

    /// Sequential read from the current position.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = self.read_at(self.position, buf)?;
        self.position += n as u64;
        Ok(n)
    }

    /// Moves the position `n` bytes forward (saturating); reads past the end return 0 bytes.
    pub fn skip(&mut self, n: u64) {
        self.position = self.position.saturating_add(n);
    }

    /// The byte offset the next [`read`](Self::read) starts at.
    pub fn position(&self) -> u64 {
        self.position
    }
}

impl Drop for FileReader {
    fn drop(&mut self) {
        self.fs.inner.release_reader(self.ino);
    }
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("ino", &self.ino)
            .field("position", &self.position)
            .finish()
    }
}
