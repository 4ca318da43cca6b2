//! The metadata store the object store uses: RocksDB with its files in BlueFS.
//!
//! Placement follows BlueFS's directories: RocksDB's WAL goes to `db.wal` (its `*.log` files
//! land on the WAL device), tables to `db` (the DB device) and, with level-aware placement,
//! the levels that do not fit the DB device to `db.slow` (the SLOW device). RocksDB places a
//! level in the first of its `db_paths` whose target size holds it, so the DB path's target is
//! set to what the DB device can hold.
//!
//! `rocks_env` (with `rocks_env.cc`, compiled by build.rs against librocksdb-sys's headers) is
//! the FileSystem shim that lets RocksDB open, append, sync and read BlueFS files; this crate is
//! the only one that builds RocksDB.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod rocks_env;

use std::path::Path;

use thiserror::Error;

use bluepoll_bluefs::{BlueFs, BlueFsError, DeviceId};
use rocks_env::{rocksdb_env, set_error_retry_interval, verify_checksums};

/// RocksDB's directories in BlueFS. This one holds its tables, MANIFEST and OPTIONS files (on
/// the DB device, as BlueFS places them).
pub const DB_DIR: &str = "db";
/// The directory of RocksDB's WAL files (`*.log`), which BlueFS places on the WAL device.
pub const WAL_DIR: &str = "db.wal";
/// With level-aware placement, the directory of the levels the DB device cannot hold; BlueFS
/// places its files on the SLOW device.
pub const SLOW_DIR: &str = "db.slow";

/// The merge operator every bluepoll DB carries: a value is a vector of little-endian u64 lanes
/// (8 bytes each; a short last lane is zero-padded) and a merge adds operands lane by lane,
/// wrapping; lanes an operand or the existing value lacks count as 0. A one-lane value is a plain
/// counter. Wrapping addition is commutative, so operands from concurrent writers commit in any
/// order to the same result — the object store keeps its freelist bitmap (add 2^i to set a bit
/// that is clear, subtract it to clear a bit that is set: no carries) and its reference counts
/// this way.
pub const U64_ADD_MERGE: &str = "bluepoll.u64add";

/// Why a metadata store operation failed.
#[derive(Debug, Error)]
pub enum KvError {
    /// Making RocksDB's Env over BlueFS failed (at open).
    #[error(transparent)]
    BlueFs(#[from] BlueFsError),

    /// A device is full: nothing was written by the failing call; reads still work.
    #[error("no space: {op}: {message}")]
    NoSpace {
        /// The operation that failed: `"open"`, `"submit"`, `"flush"`, `"scan"`, …
        op: &'static str,
        /// RocksDB's message.
        message: String,
    },

    /// RocksDB found damaged data (a block or WAL record checksum, an inconsistent MANIFEST),
    /// or [`Kv::verify_checksums`] did.
    #[error("corruption: {op}: {message}")]
    Corruption {
        /// The operation that failed: `"open"`, `"submit"`, `"flush"`, `"scan"`, …
        op: &'static str,
        /// RocksDB's message.
        message: String,
    },

    /// Any other RocksDB error.
    #[error("{op}: {message}")]
    Rocks {
        /// The operation that failed: `"open"`, `"submit"`, `"flush"`, `"scan"`, …
        op: &'static str,
        /// RocksDB's status code, as `rocksdb::ErrorKind` prints it (`IOError`, `Busy`, …).
        kind: String,
        /// RocksDB's message.
        message: String,
    },
}

/// What metadata store operations return.
pub type Result<T> = std::result::Result<T, KvError>;

fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> KvError {
    move |e| {
        let message = e.to_string();
        match e.kind() {
            rocksdb::ErrorKind::Corruption => KvError::Corruption { op, message },
            _ if message.contains("No space") => KvError::NoSpace { op, message },
            kind => KvError::Rocks {
                op,
                kind: format!("{kind:?}"),
                message,
            },
        }
    }
}

/// How the DB is opened.
#[derive(Clone, Debug)]
pub struct KvConfig {
    /// Put levels that do not fit the DB device on the SLOW device (`db.slow`).
    pub level_aware: bool,
    /// With `level_aware`: how many bytes of tables the DB device should hold before levels go
    /// to SLOW (None: 90% of the DB device).
    pub db_target_bytes: Option<u64>,
    /// RocksDB's memtable size (`write_buffer_size`).
    pub write_buffer_size: usize,
    /// RocksDB's background flush and compaction threads.
    pub background_jobs: i32,
    /// Create the DB when missing.
    pub create: bool,
    /// Pause between RocksDB's attempts to resume after a retryable background error (a full
    /// device that gets space back); closing the DB waits out one pause.
    pub error_retry_interval: std::time::Duration,
}

impl Default for KvConfig {
    fn default() -> KvConfig {
        KvConfig {
            level_aware: true,
            db_target_bytes: None,
            write_buffer_size: 64 << 20,
            background_jobs: 2,
            create: true,
            error_retry_interval: std::time::Duration::from_secs(1),
        }
    }
}

/// RocksDB's options for a bluepoll DB whose directories are under `root` (`/` in BlueFS, see
/// `rocks_env`; a directory for a copy on a kernel filesystem, opened as `root/db`): the
/// same for both, so an exported copy opens like the original.
pub fn rocksdb_options(config: &KvConfig, root: &Path, db_bytes: Option<u64>) -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(config.create);
    opts.set_paranoid_checks(true);
    opts.set_write_buffer_size(config.write_buffer_size);
    opts.set_max_background_jobs(config.background_jobs);
    opts.set_level_compaction_dynamic_level_bytes(true);
    opts.set_merge_operator_associative(U64_ADD_MERGE, add_u64);
    set_error_retry_interval(&mut opts, config.error_retry_interval);
    opts.set_wal_dir(root.join(WAL_DIR));
    if config.level_aware {
        let db = root.join(DB_DIR);
        let slow = root.join(SLOW_DIR);
        let db_target = config.db_target_bytes.or(db_bytes).unwrap_or(u64::MAX / 4);
        if let (Ok(db), Ok(slow)) = (
            rocksdb::DBPath::new(&db, db_target),
            rocksdb::DBPath::new(&slow, u64::MAX / 4),
        ) {
            opts.set_db_paths(&[db, slow]);
        }
    }
    opts
}

fn add_u64(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let mut sum: Vec<u64> = Vec::new();
    for value in existing.into_iter().chain(operands) {
        add_lanes(&mut sum, value);
    }
    if sum.is_empty() {
        sum.push(0);
    }
    Some(sum.iter().flat_map(|lane| lane.to_le_bytes()).collect())
}

/// Adds the little-endian u64 lanes of `value` to `sum`, growing it as needed.
pub fn add_lanes(sum: &mut Vec<u64>, value: &[u8]) {
    let lanes = value.len().div_ceil(8);
    if sum.len() < lanes {
        sum.resize(lanes, 0);
    }
    for (lane, chunk) in sum.iter_mut().zip(value.chunks(8)) {
        let mut le = [0u8; 8];
        le[..chunk.len()].copy_from_slice(chunk);
        *lane = lane.wrapping_add(u64::from_le_bytes(le));
    }
}

/// A batch of changes committed atomically by [`Kv::submit`].
#[derive(Default)]
pub struct WriteBatch {
    inner: rocksdb::WriteBatch,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }
    /// Sets `key` to `value`, replacing any value it had.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.inner.put(key, value);
    }
    /// Removes `key` (nothing if it has no value).
    pub fn delete(&mut self, key: &[u8]) {
        self.inner.delete(key);
    }
    /// Deletes every key in `from..to`.
    pub fn delete_range(&mut self, from: &[u8], to: &[u8]) {
        self.inner.delete_range(from, to);
    }
    /// Adds `delta` to the u64 counter at `key` (see [`U64_ADD_MERGE`]).
    pub fn merge_add(&mut self, key: &[u8], delta: u64) {
        self.inner.merge(key, delta.to_le_bytes());
    }
    /// Adds `lanes` (little-endian u64s) lane by lane to the value at `key` (see
    /// [`U64_ADD_MERGE`]).
    pub fn merge_lanes(&mut self, key: &[u8], lanes: &[u8]) {
        self.inner.merge(key, lanes);
    }
    /// Changes in the batch (puts, deletes, range deletes and merges, one each).
    pub fn len(&self) -> usize {
        self.inner.len()
    }
    /// Whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// Bounds of an ordered scan: keys in `lower..upper`, all of them starting with `prefix`.
#[derive(Clone, Debug, Default)]
pub struct KeyRange {
    /// The first key included; None: from the first key (or the prefix).
    pub lower: Option<Vec<u8>>,
    /// The first key excluded; None: to the last key (or the prefix's end).
    pub upper: Option<Vec<u8>>,
    /// Only keys starting with these bytes; with `lower`/`upper` too, the tighter bound wins.
    pub prefix: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        KeyRange {
            prefix: Some(prefix.to_vec()),
            ..KeyRange::default()
        }
    }

    /// The tightest `lower..upper` that also honours the prefix.
    fn bounds(&self) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let Some(prefix) = &self.prefix else {
            return (self.lower.clone(), self.upper.clone());
        };
        let lower = match &self.lower {
            Some(l) if l > prefix => l.clone(),
            _ => prefix.clone(),
        };
        let prefix_end = prefix_successor(prefix);
        let upper = match (&self.upper, prefix_end) {
            (Some(u), Some(p)) => Some(u.clone().min(p)),
            (u, p) => u.clone().or(p),
        };
        (Some(lower), upper)
    }
}

/// The smallest key greater than every key starting with `prefix` (None: no such key).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The metadata store: RocksDB on BlueFS.
pub struct Kv {
    db: rocksdb::DB,
}

impl Kv {
    /// Opens (or creates) the DB in `fs`.
    pub fn open(fs: &BlueFs, config: &KvConfig) -> Result<Kv> {
        let env = rocksdb_env(fs)?;
        let db_bytes = fs.usage().devices[DeviceId::Db.index()]
            .as_ref()
            .map(|d| d.size / 10 * 9);
        let mut opts = rocksdb_options(config, Path::new("/"), db_bytes);
        opts.set_env(&env);
        // "/" is BlueFS's `db` directory to the Env (and exists on the host, where the rocksdb
        // crate insists on creating the DB's directory).
        let db = rocksdb::DB::open(&opts, "/").map_err(rocks("open"))?;
        Ok(Kv { db })
    }

    /// Opens the DB for reading only: nothing is written, not even the WAL's replay, so a DB
    /// whose devices are full (where a normal open needs space for a new WAL and a table)
    /// still opens; writes fail.
    pub fn open_read_only(fs: &BlueFs, config: &KvConfig) -> Result<Kv> {
        let env = rocksdb_env(fs)?;
        let mut opts = rocksdb_options(config, Path::new("/"), None);
        opts.set_env(&env);
        let db = rocksdb::DB::open_for_read_only(&opts, "/", false).map_err(rocks("open"))?;
        Ok(Kv { db })
    }

    /// The value of `key`; None if it has none.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(rocks("get"))
    }

    /// The values of `keys`, in their order (None where a key has no value): one RocksDB
    /// call, so faster than one `get` each. The first key that fails fails the call.
    pub fn multi_get<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        self.db
            .multi_get(keys)
            .into_iter()
            .map(|r| r.map_err(rocks("multi_get")))
            .collect()
    }

    /// Commits `batch` atomically; with `sync`, durably before returning.
    pub fn submit(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(sync);
        self.db
            .write_opt(batch.inner, &opts)
            .map_err(rocks("submit"))
    }

    /// Keys and values in `range`, in key order, starting at `seek` (or the range's start).
    pub fn scan(&self, range: &KeyRange, seek: Option<&[u8]>) -> KvIter<'_> {
        let (lower, upper) = range.bounds();
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(l) = &lower {
            opts.set_iterate_lower_bound(l.clone());
        }
        if let Some(u) = &upper {
            opts.set_iterate_upper_bound(u.clone());
        }
        let mut it = self.db.raw_iterator_opt(opts);
        match (seek, &lower) {
            (Some(k), _) => it.seek(k),
            (None, Some(l)) => it.seek(l),
            (None, None) => it.seek_to_first(),
        }
        KvIter { it, done: false }
    }

    /// Writes the memtable to a table file.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(rocks("flush"))
    }

    /// Compacts every level.
    pub fn compact(&self) {
        self.db.compact_range::<&[u8], &[u8]>(None, None);
    }

    /// A RocksDB property (`rocksdb.stats`, `rocksdb.levelstats`, ...).
    pub fn property(&self, name: &str) -> Result<Option<String>> {
        self.db.property_value(name).map_err(rocks("property"))
    }

    /// RocksDB's check of every table file's block checksums.
    pub fn verify_checksums(&self) -> Result<()> {
        verify_checksums(&self.db).map_err(|message| KvError::Corruption {
            op: "verify checksums",
            message,
        })
    }
}

/// An ordered scan; see [`Kv::scan`].
pub struct KvIter<'a> {
    it: rocksdb::DBRawIterator<'a>,
    done: bool,
}

impl Iterator for KvIter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if !self.it.valid() {
            self.done = true;
            return self.it.status().err().map(|e| Err(rocks("scan")(e)));
        }
        let item = (
            self.it.key().unwrap_or_default().to_vec(),
            self.it.value().unwrap_or_default().to_vec(),
        );
        self.it.next();
        Some(Ok(item))
    }
}

#[cfg(test)]
mod tests;
