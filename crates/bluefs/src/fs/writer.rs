//! A file open for writing: buffered appends, flush, fsync (plain, checked or inline), truncate,
//! close.

use bluepoll_base::id::now_ns;
use bluepoll_base::sync::lock;

use super::data::{map_range, place_log_only, push_extent, read_into, with_data, write_pieces};
use super::{BlueFs, State};
use crate::error::{BlueFsError, Result};
use crate::format::{BLOCK_SIZE, DeviceId, Extent, LogOp};

/// A file open for writing. Appends are buffered and reach the device at `flush`; `fsync` makes
/// them durable and commits the file's new size and extents.
pub struct FileWriter {
    fs: BlueFs,
    path: String,
    ino: u64,
    /// Bytes that reached the device.
    flushed: u64,
    /// The flushed bytes of the last, partial block (rewritten whole with the next flush).
    tail: Vec<u8>,
    buffer: Vec<u8>,
    /// Devices written since the last fsync.
    dirty: Vec<DeviceId>,
    /// The committed size this writer last made durable, and the crc32c of the bytes appended
    /// since: what lets an fsync commit data and log under one flush (a checked append).
    synced_size: u64,
    unsynced_crc: u32,
    /// How many of the file's bytes live only in the log (as of this writer's last fsync).
    log_only_len: u64,
    closed: bool,
}

/// A writer's buffered bytes laid out on the device, not yet written.
struct PreparedData {
    pieces: Vec<Extent>,
    /// Bytes from `start` (block-aligned: the tail block whole) to the end, zero-padded.
    data: Vec<u8>,
    start: u64,
    /// The file's size once written.
    end: u64,
    /// Whether `data` also carries the file's log-only bytes (forgotten once written).
    covers_log_only: bool,
}

impl PreparedData {
    fn writes(&self) -> Vec<(Extent, &[u8])> {
        with_data(&self.pieces, &self.data)
    }
}

/// Appends are pushed to the device once this much is buffered.
const WRITE_BUFFER: usize = 1 << 20;

impl FileWriter {
    pub(super) fn new(fs: BlueFs, path: String, ino: u64, size: u64, tail: Vec<u8>) -> FileWriter {
        FileWriter {
            fs,
            path,
            ino,
            flushed: size,
            tail,
            buffer: Vec::new(),
            dirty: Vec::new(),
            synced_size: size,
            unsynced_crc: 0,
            log_only_len: 0,
            closed: false,
        }
    }

    /// The path the writer was opened with (a later rename does not change it).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The size including buffered bytes.
    pub fn size(&self) -> u64 {
        self.flushed + self.buffer.len() as u64
    }

    /// Appends `data` to the writer's buffer, which goes to the device (as by
    /// [`flush`](Self::flush), whose errors are returned here) once 1 MiB has collected.
    /// Nothing is durable before [`fsync`](Self::fsync).
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    pub(super) fn append_zeroes(&mut self, mut len: u64) -> Result<()> {
        let zeroes = vec![0u8; 64 << 10];
        while len > 0 {
            let n = len.min(zeroes.len() as u64) as usize;
            self.append(&zeroes[..n])?;
            len -= n as u64;
        }
        Ok(())
    }

    /// Writes buffered bytes to the device (not yet durable, not yet in the log).
    pub fn flush(&mut self) -> Result<()> {
        let Some(prepared) = self.prepare_flush(true)? else {
            return Ok(());
        };
        write_pieces(&self.fs.inner.devices, &prepared.writes())?;
        let fs = self.fs.clone();
        self.finish_flush(prepared, &mut lock(&fs.inner.state));
        Ok(())
    }

    /// Allocates space for the buffered bytes and lays them out as device writes (the tail
    /// block rewritten whole), without writing.
    /// With `with_log_only`, the writes begin where the file's log-only bytes do, so they
    /// reach the file's extents too.
    fn prepare_flush(&mut self, with_log_only: bool) -> Result<Option<PreparedData>> {
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let inner = &self.fs.inner;
        let mut start = self.flushed - self.tail.len() as u64; // block-aligned
        let mut prefix = Vec::new();
        let end = self.flushed + self.buffer.len() as u64;
        let padded_end = end.next_multiple_of(BLOCK_SIZE);
        // Space: under the lock, extend the file's allocation to cover the new end.
        let pieces = {
            let mut st = inner.lock_writable()?;
            let Some(f) = st.file(self.ino) else {
                return Err(BlueFsError::NotFound {
                    path: self.path.clone(),
                });
            };
            let (allocated, kind) = (f.allocated(), f.kind);
            if padded_end > allocated {
                let unit = inner.unit_of(kind.preference()[0]);
                let want = (padded_end - allocated).next_multiple_of(unit);
                let extents = inner.allocate(&mut st, kind, want)?;
                let f = st.file_mut(self.ino).expect("seen above");
                for e in extents {
                    push_extent(&mut f.pending_extents, e);
                }
            }
            let f = st.file_mut(self.ino).expect("seen above");
            if with_log_only && !f.log_only.is_empty() {
                match f.log_only.as_slice() {
                    // The usual case: this writer's own inline appends, ending where it is.
                    [r] if r.end() == self.flushed && r.from <= start => {
                        prefix = r.bytes[..(start - r.from) as usize].to_vec();
                        start = r.from;
                    }
                    _ => {
                        place_log_only(&inner.devices, f)?;
                    }
                }
            }
            let f = st.file(self.ino).expect("seen above");
            map_range(f.all_extents(), start, padded_end - start).expect("allocation covers it")
        };
        let mut data = Vec::with_capacity((padded_end - start) as usize);
        data.extend_from_slice(&prefix);
        data.extend_from_slice(&self.tail);
        data.extend_from_slice(&self.buffer);
        data.resize((padded_end - start) as usize, 0);
        Ok(Some(PreparedData {
            pieces,
            data,
            start,
            end,
            covers_log_only: with_log_only,
        }))
    }

    /// The prepared bytes reached the device: the writer and the file move on to them.
    fn finish_flush(&mut self, prepared: PreparedData, st: &mut State) {
        let PreparedData {
            pieces,
            data,
            start,
            end,
            covers_log_only,
        } = prepared;
        for p in &pieces {
            if !self.dirty.contains(&p.device) {
                self.dirty.push(p.device);
            }
        }
        self.unsynced_crc = crc32c::crc32c_append(self.unsynced_crc, &self.buffer);
        let last_block_start = end / BLOCK_SIZE * BLOCK_SIZE;
        self.tail = data[(last_block_start - start) as usize..(end - start) as usize].to_vec();
        self.flushed = end;
        self.buffer.clear();
        if let Some(f) = st.file_mut(self.ino) {
            f.pending_size = Some(end);
            if covers_log_only {
                f.log_only.clear();
            }
        }
    }

    /// Writes this file's log-only bytes to its extents (close and truncate need them there).
    fn place_log_only(&mut self) -> Result<()> {
        let inner = &self.fs.inner;
        let mut st = lock(&inner.state);
        match st.file_mut(self.ino) {
            Some(f) if !f.log_only.is_empty() => {
                place_log_only(&inner.devices, f)?;
                self.log_only_len = 0;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Makes everything appended durable and commits the file's size and new extents.
    pub fn fsync(&mut self) -> Result<()> {
        let fs = self.fs.clone();
        let inner = &fs.inner;
        // A small append with nothing written since the last fsync may travel inside its log
        // record (below); anything else takes the file's log-only bytes along to its extents.
        let carried = (self.tail.len() + self.buffer.len()) as u64;
        let inline_wanted = !self.buffer.is_empty()
            && self.dirty.is_empty()
            && carried <= inner.config.inline_append_max
            && self.log_only_len + carried <= inner.config.inline_backlog;
        let prepared = self.prepare_flush(!inline_wanted)?;
        let mut st = inner.lock_writable()?;
        let Some(f) = st.files.get(&self.ino) else {
            drop(st);
            // Removed: its bytes still go to its space (it may be open elsewhere), nothing more.
            return match prepared {
                Some(p) => {
                    write_pieces(&inner.devices, &p.writes())?;
                    self.finish_flush(p, &mut lock(&inner.state));
                    Ok(())
                }
                None => Ok(()),
            };
        };
        let size = prepared.as_ref().map_or(f.size(), |p| p.end);
        // A pure append since this writer's last fsync: the data and the log record are written
        // together and made durable by one flush, the record carrying the crc32c of the
        // appended bytes so replay can tell whether they landed (only the last frame can be cut
        // short). Otherwise: data, flush, then log.
        let checked = f.fnode.size == self.synced_size && size > self.synced_size;
        if let (true, Some(p)) = (checked && inline_wanted, &prepared) {
            let op = LogOp::FileAppendInline {
                ino: self.ino,
                size,
                mtime_ns: now_ns(),
                appended: f.pending_extents.clone(),
                data_from: p.start,
                data: p.data[..(p.end - p.start) as usize].to_vec(),
            };
            inner.commit(&mut st, vec![op], Vec::new())?;
            if let Some(p) = prepared {
                self.finish_flush(p, &mut st);
            }
            // Nothing reached the device: no flush is owed for it.
            self.dirty.clear();
        } else if !checked {
            if inline_wanted {
                // The data goes out alone, so the log-only bytes go first.
                let f = st.file_mut(self.ino).expect("seen above");
                if !f.log_only.is_empty() {
                    for id in place_log_only(&inner.devices, f)? {
                        if !self.dirty.contains(&id) {
                            self.dirty.push(id);
                        }
                    }
                }
            }
            if let Some(p) = prepared {
                drop(st);
                write_pieces(&inner.devices, &p.writes())?;
                st = inner.lock_writable()?;
                self.finish_flush(p, &mut st);
            }
            for id in std::mem::take(&mut self.dirty) {
                if let Err(e) = inner.device(id)?.flush() {
                    // After a failed flush nothing written since the last good one can be
                    // trusted to be on disk — a later flush succeeding proves nothing about it
                    // ("fsyncgate"). Committing any size past it could expose garbage.
                    st.read_only = Some(format!("a flush of the {} device failed: {e}", id.name()));
                    return Err(e);
                }
            }
            let Some(f) = st.files.get(&self.ino) else {
                return Ok(());
            };
            if f.pending_extents.is_empty() && f.size() == f.fnode.size {
                return Ok(());
            }
            let op = LogOp::FileUpdateDelta {
                ino: self.ino,
                size: f.size(),
                mtime_ns: now_ns(),
                appended: f.pending_extents.clone(),
            };
            inner.commit(&mut st, vec![op], Vec::new())?;
        } else {
            let crc = crc32c::crc32c_append(self.unsynced_crc, &self.buffer);
            let op = LogOp::FileAppendChecked {
                ino: self.ino,
                size,
                mtime_ns: now_ns(),
                appended: f.pending_extents.clone(),
                data_from: self.synced_size,
                data_crc: crc,
            };
            let writes = prepared.as_ref().map(|p| p.writes()).unwrap_or_default();
            // The frame's flush covers the devices these writes go to, and those written by
            // earlier flushes. On failure nothing was committed; the data (and its flush) come
            // again next time.
            inner.commit_with_writes(&mut st, vec![op], &self.dirty, &writes)?;
            drop(writes);
            if let Some(p) = prepared {
                self.finish_flush(p, &mut st);
            }
            self.dirty.clear();
        }
        if let Some(f) = st.files.get_mut(&self.ino) {
            f.pending_extents.clear();
            f.pending_size = None;
            self.log_only_len = f.log_only_len();
        }
        self.synced_size = size.max(self.flushed);
        self.unsynced_crc = 0;
        Ok(())
    }

    /// Shrinks or grows the file through this writer.
    pub fn truncate(&mut self, size: u64) -> Result<()> {
        self.fsync()?;
        self.place_log_only()?;
        if size >= self.flushed {
            return self.append_zeroes(size - self.flushed);
        }
        {
            let mut st = self.fs.inner.lock_writable()?;
            self.fs.inner.shrink(&mut st, self.ino, size)?;
        }
        // Reload the tail block of the new end.
        self.flushed = size;
        self.synced_size = size;
        self.unsynced_crc = 0;
        self.tail.clear();
        if size % BLOCK_SIZE != 0 {
            let pieces = {
                let st = lock(&self.fs.inner.state);
                let f = &st.files[&self.ino];
                map_range(f.all_extents(), size / BLOCK_SIZE * BLOCK_SIZE, BLOCK_SIZE)
            };
            if let Some(pieces) = pieces {
                let mut block = vec![0u8; BLOCK_SIZE as usize];
                read_into(&self.fs.inner.devices, &pieces, &mut block)?;
                self.tail = block[..(size % BLOCK_SIZE) as usize].to_vec();
            }
        }
        Ok(())
    }

    /// fsync, then release the file for other writers.
    pub fn close(mut self) -> Result<()> {
        let result = self.fsync().and_then(|()| self.place_log_only());
        self.closed = true;
        self.fs.inner.release_writer(self.ino);
        result
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if !self.closed {
            // Best effort: what was appended is made durable, as close would.
            let _ = self.fsync().and_then(|()| self.place_log_only());
            self.fs.inner.release_writer(self.ino);
        }
    }
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("path", &self.path)
            .field("size", &self.size())
            .finish()
    }
}
