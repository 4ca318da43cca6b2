//! The filesystem: metadata, the log, files, compaction.
//!
//! One lock (`State`) guards metadata, allocators and the log writer; file data moves without
//! it. A metadata change is a list of [`LogOp`]s: `commit` writes them as one log transaction
//! (flushing the log's devices), and only then runs them through `apply`, the same function
//! replay uses. Space is taken from the allocators before a commit (and given back if it fails)
//! and released only after the commit that freed it is durable.
//!
//! A file's metadata has two parts: `fnode`, exactly what the log says (what replay would
//! rebuild), and `pending`: extents allocated and a size reached by data written since, which
//! become committed at the next fsync as one `FileUpdateDelta`.
//!
//! Layout, one concern per file: `config` (the devices and the tunables a mount is given),
//! `mount` (mkfs and mount: labels, superblock choice, allocators rebuilt from the replayed
//! metadata), `namespace` (directories, names, opening files), `maintenance` (usage, expand,
//! fsck), `apply` (the one function that turns a log op into a metadata change), `commit` (the
//! state lock's guard, writing log transactions and growing the log), `space` (placement and
//! allocation of file and log space, and when it goes back), `compaction` (rewriting the log
//! from a snapshot and switching the superblock to it), `replay` (reading the log at mount),
//! `data` (mapping file bytes to device ranges and moving them), `writer` and `reader` (the
//! open-file handles). The metadata itself (`State`, `FileMeta`) is defined here.

mod apply;
mod commit;
mod compaction;
mod config;
mod data;
mod maintenance;
mod mount;
mod namespace;
mod reader;
mod replay;
mod space;
mod writer;

use bluepoll_base::id::uuid_text;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::alloc::{ExtentAllocator, SharedSpace};
use crate::cache::ReadCache;
use crate::format::{BLOCK_SIZE, Extent, Fnode, LogOp, Uuid};
use crate::io::BlockDevice;

pub use self::config::{BlueFsConfig, Devices};
pub use self::maintenance::{DeviceUsage, FsckReport, Usage};
pub use self::mount::Mounted;
pub use self::namespace::FileStat;
pub use self::reader::FileReader;
pub use self::space::FileKind;
pub use self::writer::FileWriter;

/// The log is file 1; files are numbered from 2.
const LOG_INO: u64 = 1;
const FIRST_FILE_INO: u64 = 2;

/// Space the log always keeps ahead of its write position: enough for the transaction that
/// records the log's own growth.
const LOG_RUNWAY: u64 = 4 * BLOCK_SIZE;

struct FileMeta {
    /// Exactly what the log says.
    fnode: Fnode,
    nlink: u32,
    kind: FileKind,
    /// Extents allocated since the last commit, in file order after `fnode.extents`.
    pending_extents: Vec<Extent>,
    /// Size reached by data written since the last commit (≥ fnode.size when set).
    pending_size: Option<u64>,
    readers: u32,
    writer: bool,
    /// Space the file gave up (truncate, create over it) while readers were open: one of them
    /// may be reading it right now, so it is freed when the last reader closes.
    deferred_release: Vec<Extent>,
    /// Bytes whose durable copy is only in `FileAppendInline` log records, not yet on the
    /// file's extents: sorted, disjoint, each starting on a block boundary. Readers see them
    /// over what the device holds; compaction, close and mount write them out.
    log_only: Vec<LogOnlyBytes>,
    /// Changes whenever the file's bytes may change (a writer opens it, it is cut): the read
    /// cache's chunks of earlier generations are never used again.
    data_generation: u64,
}

#[derive(Debug)]
struct LogOnlyBytes {
    from: u64,
    bytes: Vec<u8>,
}

impl LogOnlyBytes {
    fn end(&self) -> u64 {
        self.from + self.bytes.len() as u64
    }
}

impl FileMeta {
    fn new(fnode: Fnode, kind: FileKind) -> FileMeta {
        FileMeta {
            fnode,
            nlink: 0,
            kind,
            pending_extents: Vec::new(),
            pending_size: None,
            readers: 0,
            writer: false,
            deferred_release: Vec::new(),
            log_only: Vec::new(),
            data_generation: 0,
        }
    }

    /// A writer takes the file: cached chunks of it stop counting.
    fn start_writer(&mut self) {
        self.writer = true;
        self.data_generation += 1;
    }

    /// An inline append's bytes: they replace whatever log-only bytes they overlap (the
    /// partial block they repeat) and everything after.
    fn add_log_only(&mut self, from: u64, data: &[u8]) {
        self.log_only.retain(|r| r.from < from);
        match self.log_only.last_mut() {
            Some(last) if last.end() >= from => {
                last.bytes.truncate((from - last.from) as usize);
                last.bytes.extend_from_slice(data);
            }
            _ => self.log_only.push(LogOnlyBytes {
                from,
                bytes: data.to_vec(),
            }),
        }
    }

    /// The file was cut to `size`: log-only bytes past it are gone.
    fn trim_log_only(&mut self, size: u64) {
        self.log_only.retain(|r| r.from < size);
        if let Some(last) = self.log_only.last_mut() {
            last.bytes.truncate((size - last.from) as usize);
        }
    }

    fn log_only_len(&self) -> u64 {
        self.log_only.iter().map(|r| r.bytes.len() as u64).sum()
    }

    fn size(&self) -> u64 {
        self.pending_size.unwrap_or(self.fnode.size)
    }

    fn allocated(&self) -> u64 {
        self.fnode.allocated() + self.pending_extents.iter().map(|e| e.length).sum::<u64>()
    }

    fn all_extents(&self) -> impl Iterator<Item = &Extent> {
        self.fnode.extents.iter().chain(&self.pending_extents)
    }
}

struct LogWriter {
    fnode: Fnode,
    /// Byte offset in the log of the next frame.
    position: u64,
    next_seq: u64,
}

/// An async compaction in progress: the new log being written from a snapshot, and the ops
/// committed to the old log since, which are replayed onto the new one at the switch.
struct Compaction {
    delta: Vec<Vec<LogOp>>,
}

struct State {
    dirs: BTreeMap<String, BTreeMap<String, u64>>,
    files: HashMap<u64, FileMeta>,
    /// Files removed while open: their space is released when the last handle closes.
    orphans: HashMap<u64, FileMeta>,
    next_ino: u64,
    allocators: [Option<ExtentAllocator>; 2],
    log: LogWriter,
    /// Generation of the superblock in use (the next one goes to the other slot).
    superblock_generation: u64,
    locks: BTreeSet<String>,
    read_only: Option<String>,
    compaction: Option<Compaction>,
    /// A commit crossed a compaction threshold; acted on when its lock is released.
    compact_wanted: bool,
    spillover_bytes: u64,
    spillover_warned: bool,
    compactions: u64,
}

impl State {
    /// No files, no directories, no allocators: what mount and replay fill in.
    fn new(log: LogWriter, superblock_generation: u64) -> State {
        State {
            dirs: BTreeMap::new(),
            files: HashMap::new(),
            orphans: HashMap::new(),
            next_ino: FIRST_FILE_INO,
            allocators: [None, None],
            log,
            superblock_generation,
            locks: BTreeSet::new(),
            read_only: None,
            compaction: None,
            compact_wanted: false,
            spillover_bytes: 0,
            spillover_warned: false,
            compactions: 0,
        }
    }

    /// A file by ino, linked or removed-but-open.
    fn file(&self, ino: u64) -> Option<&FileMeta> {
        self.files.get(&ino).or_else(|| self.orphans.get(&ino))
    }

    fn file_mut(&mut self, ino: u64) -> Option<&mut FileMeta> {
        match self.files.get_mut(&ino) {
            Some(f) => Some(f),
            None => self.orphans.get_mut(&ino),
        }
    }
}

struct Inner {
    uuid: Uuid,
    config: BlueFsConfig,
    devices: [Option<BlockDevice>; 3],
    slow: Option<Arc<dyn SharedSpace>>,
    /// Whether SLOW space belongs to another owner (then BlueFS writes no label there).
    slow_shared: bool,
    state: Mutex<State>,
    /// One compaction at a time.
    compacting: AtomicBool,
    read_cache: ReadCache,
}

/// A mounted filesystem; cheap to clone, safe to use from many threads.
#[derive(Clone)]
pub struct BlueFs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlueFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlueFs")
            .field("uuid", &uuid_text(&self.inner.uuid))
            .finish()
    }
}
