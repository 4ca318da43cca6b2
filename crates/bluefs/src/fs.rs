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

use bluepoll_base::id::{new_uuid, now_ns, uuid_text};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::alloc::{AllocError, ExtentAllocator, SharedAllocator, SharedSpace};
use super::cache::{CHUNK, ChunkKey, ReadCache};
use super::error::{BlueFsError, Result};
use super::format::{
    self, BLOCK_SIZE, DeviceId, Extent, Fnode, FrameEnd, Label, LogOp, RESERVED_PREFIX,
    SUPERBLOCK_OFFSETS, Superblock, Transaction, Uuid,
};
use super::io::BlockDevice;
use bluepoll_base::sync::lock;
use bluepoll_nvme::Device;

/// The log is file 1; files are numbered from 2.
const LOG_INO: u64 = 1;
const FIRST_FILE_INO: u64 = 2;

/// Space the log always keeps ahead of its write position: enough for the transaction that
/// records the log's own growth.
const LOG_RUNWAY: u64 = 4 * BLOCK_SIZE;

/// Devices a filesystem is made of.
#[derive(Clone)]
pub struct Devices {
    pub wal: Option<Device>,
    pub db: Device,
    pub slow: Option<Device>,
}

impl Devices {
    pub fn only(db: Device) -> Devices {
        Devices {
            wal: None,
            db,
            slow: None,
        }
    }

    fn get(&self, id: DeviceId) -> Option<&Device> {
        match id {
            DeviceId::Wal => self.wal.as_ref(),
            DeviceId::Db => Some(&self.db),
            DeviceId::Slow => self.slow.as_ref(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BlueFsConfig {
    /// Allocation unit per device (WAL, DB, SLOW): a power of two ≥ 4 KiB. Chosen at mkfs and
    /// recorded in the superblock; a mount uses the recorded units.
    pub alloc_units: [u64; 3],
    /// Bytes kept free on the WAL and DB devices for the log alone, so it can always commit
    /// and compact when data has filled everything else.
    pub log_reserve: u64,
    /// The log's first allocation and each later growth.
    pub log_grow: u64,
    /// Compact when the log exceeds this many bytes...
    pub compact_min_bytes: u64,
    /// ...and is this many times larger than the live metadata it describes.
    pub compact_ratio: u64,
    /// Compact without stopping appends (the log is copied, then switched under the lock).
    pub async_compaction: bool,
    /// An fsync of a pure append of at most this many bytes (counting the partial block before
    /// it) writes the bytes inside its log record: one device write and one flush instead of
    /// two writes. 0 turns this off. At most 16 MiB.
    pub inline_append_max: u64,
    /// Bytes a writer lets live only in log records before it writes them to the file's own
    /// extents (with its next data write, or at close).
    pub inline_backlog: u64,
    /// Memory for cached file chunks of files nobody is writing (0: no cache); see cache.rs.
    pub read_cache_bytes: u64,
}

impl Default for BlueFsConfig {
    fn default() -> BlueFsConfig {
        BlueFsConfig {
            alloc_units: [64 << 10; 3],
            log_reserve: 4 << 20,
            log_grow: 1 << 20,
            compact_min_bytes: 16 << 20,
            compact_ratio: 5,
            async_compaction: true,
            inline_append_max: 16 << 10,
            inline_backlog: 1 << 20,
            read_cache_bytes: 256 << 20,
        }
    }
}

impl BlueFsConfig {
    fn validate(&self) -> Result<()> {
        for (i, unit) in self.alloc_units.iter().enumerate() {
            if !unit.is_power_of_two() || *unit < BLOCK_SIZE {
                return Err(BlueFsError::InvalidConfig {
                    reason: format!(
                        "allocation unit {unit} of the {} device must be a power of two ≥ {BLOCK_SIZE}",
                        DeviceId::ALL[i].name()
                    ),
                });
            }
        }
        if self.log_reserve < 2 * self.log_grow {
            return Err(BlueFsError::InvalidConfig {
                reason: format!(
                    "log_reserve {} must be at least twice log_grow {}: compaction on full \
                     devices needs room for a new log beside the old one",
                    self.log_reserve, self.log_grow
                ),
            });
        }
        if self.log_grow < BLOCK_SIZE * 8 {
            return Err(BlueFsError::InvalidConfig {
                reason: format!("log_grow {} is below 32 KiB", self.log_grow),
            });
        }
        if self.inline_append_max > format::MAX_INLINE_DATA as u64
            || self.inline_append_max > self.log_grow / 2
        {
            return Err(BlueFsError::InvalidConfig {
                reason: format!(
                    "inline_append_max {} must be at most 16 MiB and half of log_grow {}",
                    self.inline_append_max, self.log_grow
                ),
            });
        }
        // A writer's log-only bytes travel as one record when compaction copies them.
        if self.inline_backlog > format::MAX_INLINE_DATA as u64 / 2 {
            return Err(BlueFsError::InvalidConfig {
                reason: format!("inline_backlog {} is over 8 MiB", self.inline_backlog),
            });
        }
        Ok(())
    }
}

/// Where a file's data goes, from its name (DESIGN §5 placement).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// `*.log` (RocksDB's WAL): WAL device first.
    Wal,
    /// Everything else: DB device first.
    Db,
    /// Files in a directory ending in `.slow`: SLOW device first.
    Slow,
}

impl FileKind {
    pub fn of(dir: &str, name: &str) -> FileKind {
        if dir.ends_with(".slow") {
            FileKind::Slow
        } else if name.ends_with(".log") {
            FileKind::Wal
        } else {
            FileKind::Db
        }
    }

    /// Devices to try, in order: the home device, then the fallbacks WAL → DB → SLOW.
    fn preference(self) -> &'static [DeviceId] {
        match self {
            FileKind::Wal => &[DeviceId::Wal, DeviceId::Db, DeviceId::Slow],
            FileKind::Db => &[DeviceId::Db, DeviceId::Slow],
            FileKind::Slow => &[DeviceId::Slow, DeviceId::Db],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FileKind::Wal => "wal",
            FileKind::Db => "db",
            FileKind::Slow => "slow",
        }
    }

    const ALL: [FileKind; 3] = [FileKind::Wal, FileKind::Db, FileKind::Slow];
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: u64,
    pub nlink: u32,
    pub allocated: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceUsage {
    pub size: u64,
    pub free: u64,
    /// Bytes allocated to files of each kind (WAL, DB, SLOW order) and to the log.
    pub by_kind: [u64; 3],
    pub log: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Indexed by DeviceId; None where the device is absent.
    pub devices: [Option<DeviceUsage>; 3],
    /// Bytes of WAL/DB files that had to go to the SLOW device.
    pub spillover_bytes: u64,
    pub files: u64,
    pub log_bytes: u64,
    pub log_position: u64,
    pub compactions: u64,
}

/// The result of a mount.
pub struct Mounted {
    pub fs: BlueFs,
    /// BlueFS's extents on the shared SLOW device: its owner marks them used.
    pub slow_extents: Vec<Extent>,
}

#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    pub files: u64,
    pub dirs: u64,
    pub errors: Vec<String>,
}

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

/// Appends `e` to `list`, merging it into the last extent when contiguous.
fn push_extent(list: &mut Vec<Extent>, e: Extent) {
    if let Some(last) = list.last_mut()
        && last.device == e.device
        && last.end() == e.offset
    {
        last.length += e.length;
        return;
    }
    list.push(e);
}

/// The device ranges behind bytes [offset, offset + len) of a file laid out on `extents`.
fn map_range<'a>(
    extents: impl IntoIterator<Item = &'a Extent>,
    offset: u64,
    len: u64,
) -> Option<Vec<Extent>> {
    let mut out = Vec::new();
    let mut file_pos = 0u64;
    let (mut want, end) = (offset, offset + len);
    for e in extents {
        let e_end = file_pos + e.length;
        if want < e_end && want < end {
            let start_in = want - file_pos;
            let take = (e.length - start_in).min(end - want);
            out.push(Extent {
                device: e.device,
                offset: e.offset + start_in,
                length: take,
            });
            want += take;
        }
        file_pos = e_end;
        if want >= end {
            break;
        }
    }
    (want >= end).then_some(out)
}

/// Splits `dir/name` (a leading `/` is ignored; the name is what follows the last `/`).
fn split_path(path: &str) -> Result<(&str, &str)> {
    let trimmed = path.trim_start_matches('/');
    let Some((dir, name)) = trimmed.rsplit_once('/') else {
        return Err(BlueFsError::InvalidPath {
            path: path.into(),
            reason: "expected DIR/NAME",
        });
    };
    check_name(path, dir)?;
    check_name(path, name)?;
    Ok((dir, name))
}

fn check_name(path: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(BlueFsError::InvalidPath {
            path: path.into(),
            reason: "empty directory or file name",
        });
    }
    if name.len() > 1024 {
        return Err(BlueFsError::InvalidPath {
            path: path.into(),
            reason: "name longer than 1024 bytes",
        });
    }
    Ok(())
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

fn block_devices(devices: &Devices) -> Result<[Option<BlockDevice>; 3]> {
    let mut out: [Option<BlockDevice>; 3] = [None, None, None];
    for id in DeviceId::ALL {
        if let Some(d) = devices.get(id) {
            out[id.index()] = Some(BlockDevice::new(id, d.clone())?);
        }
    }
    Ok(out)
}

fn device_too_small(id: DeviceId, size: u64, unit: u64) -> BlueFsError {
    BlueFsError::WrongDevice {
        device: id.name(),
        reason: format!(
            "{size} bytes is too small (needs more than {} bytes with a {unit}-byte unit)",
            RESERVED_PREFIX + unit
        ),
    }
}

impl BlueFs {
    /// Makes a new filesystem on `devices`: labels, an empty log, the superblock.
    /// `shared_slow` means the SLOW device's space belongs to another owner, who will hand
    /// BlueFS an allocator at mount: no label is written there.
    pub fn mkfs(devices: &Devices, config: &BlueFsConfig, shared_slow: bool) -> Result<Uuid> {
        config.validate()?;
        let blocks = block_devices(devices)?;
        let uuid = new_uuid();
        let created_ns = now_ns();
        for id in DeviceId::ALL {
            let Some(dev) = &blocks[id.index()] else {
                continue;
            };
            let unit = config.alloc_units[id.index()];
            if dev.size() <= RESERVED_PREFIX + unit {
                return Err(device_too_small(id, dev.size(), unit));
            }
            if id == DeviceId::Slow && shared_slow {
                continue;
            }
            let label = Label {
                uuid,
                device: id,
                device_size: dev.size(),
                created_ns,
            };
            dev.write(format::LABEL_OFFSET, &format::encode_label(&label))?;
        }
        // The first log: on WAL if present, else DB.
        let log_dev = if blocks[DeviceId::Wal.index()].is_some() {
            DeviceId::Wal
        } else {
            DeviceId::Db
        };
        let dev = blocks[log_dev.index()].as_ref().expect("checked above");
        let mut allocator = ExtentAllocator::new(
            log_dev,
            dev.size(),
            config.alloc_units[log_dev.index()],
            RESERVED_PREFIX,
        );
        let extents = allocator.allocate(config.log_grow)?;
        let log_fnode = Fnode {
            ino: LOG_INO,
            size: 0,
            mtime_ns: created_ns,
            extents,
        };
        let first = Transaction {
            uuid,
            seq: 1,
            ops: vec![LogOp::Init { created_ns }],
        };
        let frame = format::encode_transaction(&first);
        write_durable(&blocks, &log_fnode.extents, 0, &frame)?;
        let superblock = Superblock {
            uuid,
            generation: 1,
            block_size: BLOCK_SIZE as u32,
            alloc_units: config.alloc_units,
            log_fnode,
            log_first_seq: 1,
        };
        let db = blocks[DeviceId::Db.index()]
            .as_ref()
            .expect("DB is required");
        // Zero the second slot so a superblock of an earlier filesystem cannot win.
        db.write(SUPERBLOCK_OFFSETS[1], &vec![0u8; BLOCK_SIZE as usize])?;
        db.write(
            SUPERBLOCK_OFFSETS[0],
            &format::encode_superblock(&superblock)?,
        )?;
        for dev in blocks.iter().flatten() {
            dev.flush()?;
        }
        Ok(uuid)
    }

    /// Mounts: checks labels, picks the newest valid superblock, replays the log, rebuilds the
    /// allocators. With `shared_slow`, SLOW space comes from that allocator (its owner marks
    /// the returned extents used); without it, BlueFS manages the SLOW device itself.
    pub fn mount(
        devices: Devices,
        config: BlueFsConfig,
        shared_slow: Option<Arc<dyn SharedSpace>>,
    ) -> Result<Mounted> {
        config.validate()?;
        let blocks = block_devices(&devices)?;
        let db = blocks[DeviceId::Db.index()]
            .as_ref()
            .expect("DB is required");
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        db.read(format::LABEL_OFFSET, &mut block)?;
        let db_label = format::decode_label(&block)?;
        if db_label.device != DeviceId::Db {
            return Err(BlueFsError::WrongDevice {
                device: "db",
                reason: format!("its label says it is a {} device", db_label.device.name()),
            });
        }
        let uuid = db_label.uuid;
        // Allocators cover the size each label records: a device that grew since is taken into
        // use by `expand`, explicitly, which also records the new size.
        let mut recorded = [0u64; 3];
        recorded[DeviceId::Db.index()] = db_label.device_size;
        if db.size() < db_label.device_size {
            return Err(BlueFsError::WrongDevice {
                device: "db",
                reason: format!(
                    "shrank from {} to {} bytes",
                    db_label.device_size,
                    db.size()
                ),
            });
        }
        for id in [DeviceId::Wal, DeviceId::Slow] {
            let Some(dev) = &blocks[id.index()] else {
                continue;
            };
            if id == DeviceId::Slow && shared_slow.is_some() {
                continue;
            }
            dev.read(format::LABEL_OFFSET, &mut block)?;
            let label = format::decode_label(&block).map_err(|e| BlueFsError::WrongDevice {
                device: id.name(),
                reason: e.to_string(),
            })?;
            if label.uuid != uuid || label.device != id {
                return Err(BlueFsError::WrongDevice {
                    device: id.name(),
                    reason: format!(
                        "belongs to another filesystem or role ({} device of {})",
                        label.device.name(),
                        uuid_text(&label.uuid)
                    ),
                });
            }
            if dev.size() < label.device_size {
                return Err(BlueFsError::WrongDevice {
                    device: id.name(),
                    reason: format!("shrank from {} to {} bytes", label.device_size, dev.size()),
                });
            }
            recorded[id.index()] = label.device_size;
        }
        let superblock = read_superblock(db, &uuid)?;
        // Allocation units are the filesystem's, fixed at mkfs: extents are aligned to them, so
        // the superblock's win over whatever this mount was configured with.
        let mut config = config;
        for (unit, recorded) in config.alloc_units.iter_mut().zip(superblock.alloc_units) {
            if recorded != 0 {
                *unit = recorded;
            }
        }
        let mut replay = Replay::new(&superblock);
        // Inline appends come back as log-only bytes (whether or not they had reached their
        // files): readers see them, and they are written out by the next writer of the file
        // or the next compaction, as before the stop. Mount itself writes nothing.
        replay.run(&blocks)?;

        let slow_shared = shared_slow.is_some();
        let slow: Option<Arc<dyn SharedSpace>> =
            match (&blocks[DeviceId::Slow.index()], shared_slow) {
                (_, Some(shared)) => Some(shared),
                (Some(_), None) => Some(Arc::new(SharedAllocator::new(ExtentAllocator::new(
                    DeviceId::Slow,
                    recorded[DeviceId::Slow.index()],
                    config.alloc_units[DeviceId::Slow.index()],
                    RESERVED_PREFIX,
                )))),
                (None, None) => None,
            };
        let mut allocators: [Option<ExtentAllocator>; 2] = [None, None];
        for id in [DeviceId::Wal, DeviceId::Db] {
            if blocks[id.index()].is_some() {
                allocators[id.index()] = Some(ExtentAllocator::new(
                    id,
                    recorded[id.index()],
                    config.alloc_units[id.index()],
                    RESERVED_PREFIX,
                ));
            }
        }
        let mut slow_extents = Vec::new();
        let all_extents = replay
            .files
            .values()
            .flat_map(|f| f.fnode.extents.iter())
            .chain(&replay.log.extents);
        for e in all_extents {
            match e.device {
                DeviceId::Slow => slow_extents.push(*e),
                id => match allocators[id.index()].as_mut() {
                    Some(a) => a.mark_used(std::slice::from_ref(e)).map_err(|err| {
                        BlueFsError::Corrupt {
                            reason: format!("extent {e:?}: {err}"),
                        }
                    })?,
                    None => {
                        return Err(BlueFsError::WrongDevice {
                            device: id.name(),
                            reason: "holds BlueFS data but was not given".into(),
                        });
                    }
                },
            }
        }
        if !slow_extents.is_empty() {
            let Some(space) = &slow else {
                return Err(BlueFsError::WrongDevice {
                    device: "slow",
                    reason: "holds BlueFS data but was not given".into(),
                });
            };
            // A SLOW device BlueFS manages itself: mark its extents here. A shared one: the
            // owner does, from the list returned.
            if !slow_shared {
                space
                    .mark_used(&slow_extents)
                    .map_err(|err| BlueFsError::Corrupt {
                        reason: format!("SLOW extents: {err}"),
                    })?;
            }
        }
        let next_ino = replay
            .files
            .keys()
            .max()
            .map_or(FIRST_FILE_INO, |m| m + 1)
            .max(FIRST_FILE_INO);
        let mut state = State::new(
            LogWriter {
                fnode: replay.log,
                position: replay.position,
                next_seq: replay.next_seq,
            },
            superblock.generation,
        );
        state.dirs = replay.dirs;
        state.files = replay.files;
        state.next_ino = next_ino;
        state.allocators = allocators;
        let read_cache = ReadCache::new(config.read_cache_bytes);
        let fs = BlueFs {
            inner: Arc::new(Inner {
                uuid,
                config,
                devices: blocks,
                slow,
                slow_shared,
                state: Mutex::new(state),
                compacting: AtomicBool::new(false),
                read_cache,
            }),
        };
        Ok(Mounted { fs, slow_extents })
    }

    pub fn uuid(&self) -> Uuid {
        self.inner.uuid
    }

    /// Commits whatever open writers left pending and drops this handle. Other clones and open
    /// files keep the filesystem alive; the log needs no closing.
    pub fn umount(self) -> Result<()> {
        let st = lock(&self.inner.state);
        if let Some(reason) = &st.read_only {
            return Err(BlueFsError::ReadOnly {
                reason: reason.clone(),
            });
        }
        Ok(())
    }

    // ---- namespace ---------------------------------------------------------------------

    pub fn mkdir(&self, dir: &str) -> Result<()> {
        check_name(dir, dir)?;
        let mut st = self.inner.lock_writable()?;
        if st.dirs.contains_key(dir) {
            return Err(BlueFsError::Exists { path: dir.into() });
        }
        self.inner.commit(
            &mut st,
            vec![LogOp::DirCreate { name: dir.into() }],
            Vec::new(),
        )
    }

    pub fn rmdir(&self, dir: &str) -> Result<()> {
        let mut st = self.inner.lock_writable()?;
        match st.dirs.get(dir) {
            None => return Err(BlueFsError::NotFound { path: dir.into() }),
            Some(entries) if !entries.is_empty() => {
                return Err(BlueFsError::NotEmpty { path: dir.into() });
            }
            Some(_) => {}
        }
        self.inner.commit(
            &mut st,
            vec![LogOp::DirRemove { name: dir.into() }],
            Vec::new(),
        )
    }

    pub fn dir_exists(&self, dir: &str) -> bool {
        lock(&self.inner.state).dirs.contains_key(dir)
    }

    /// Directory names, sorted.
    pub fn list_dirs(&self) -> Vec<String> {
        lock(&self.inner.state).dirs.keys().cloned().collect()
    }

    /// File names in `dir`, sorted.
    pub fn readdir(&self, dir: &str) -> Result<Vec<String>> {
        let st = lock(&self.inner.state);
        st.dirs
            .get(dir)
            .map(|d| d.keys().cloned().collect())
            .ok_or_else(|| BlueFsError::NotFound { path: dir.into() })
    }

    pub fn exists(&self, path: &str) -> bool {
        self.stat(path).is_ok()
    }

    /// Where a file's bytes live, in file order (for inspection tools and the corruption
    /// drill; the extents may change as soon as the lock is dropped).
    pub fn extents_of(&self, path: &str) -> Result<Vec<Extent>> {
        let (dir, name) = split_path(path)?;
        let st = lock(&self.inner.state);
        let ino = st.lookup(path, dir, name)?;
        let f = &st.files[&ino];
        Ok(f.fnode
            .extents
            .iter()
            .chain(&f.pending_extents)
            .cloned()
            .collect())
    }

    /// The log's extents and the bytes of it in use (frames end there).
    pub fn log_extents(&self) -> (Vec<Extent>, u64) {
        let st = lock(&self.inner.state);
        (st.log.fnode.extents.clone(), st.log.position)
    }

    pub fn stat(&self, path: &str) -> Result<FileStat> {
        let (dir, name) = split_path(path)?;
        let st = lock(&self.inner.state);
        let ino = st.lookup(path, dir, name)?;
        let f = &st.files[&ino];
        Ok(FileStat {
            ino,
            size: f.size(),
            mtime_ns: f.fnode.mtime_ns,
            nlink: f.nlink,
            allocated: f.allocated(),
        })
    }

    /// Creates `path` (or truncates it to nothing if it exists) and opens it for writing.
    pub fn create(&self, path: &str) -> Result<FileWriter> {
        let (dir, name) = split_path(path)?;
        let mut st = self.inner.lock_writable()?;
        if !st.dirs.contains_key(dir) {
            return Err(BlueFsError::NotFound { path: dir.into() });
        }
        let ino = match st.dirs[dir].get(name).copied() {
            Some(ino) => {
                let f = &st.files[&ino];
                if f.writer {
                    return Err(BlueFsError::Busy {
                        path: path.into(),
                        reason: "already open for writing",
                    });
                }
                self.inner.shrink(&mut st, ino, 0)?;
                ino
            }
            None => {
                let ino = st.next_ino;
                let fnode = Fnode {
                    ino,
                    size: 0,
                    mtime_ns: now_ns(),
                    extents: Vec::new(),
                };
                self.inner.commit(
                    &mut st,
                    vec![
                        LogOp::FileUpdate(fnode),
                        LogOp::DirLink {
                            dir: dir.into(),
                            name: name.into(),
                            ino,
                        },
                    ],
                    Vec::new(),
                )?;
                st.next_ino += 1;
                ino
            }
        };
        st.files.get_mut(&ino).expect("just made").start_writer();
        Ok(FileWriter::new(
            self.clone(),
            path.into(),
            ino,
            0,
            Vec::new(),
        ))
    }

    /// Opens an existing file to append to it.
    pub fn open_append(&self, path: &str) -> Result<FileWriter> {
        let (dir, name) = split_path(path)?;
        let (ino, size, tail_extents) = {
            let mut st = self.inner.lock_writable()?;
            let ino = st.lookup(path, dir, name)?;
            let f = st.files.get_mut(&ino).expect("looked up");
            if f.writer {
                return Err(BlueFsError::Busy {
                    path: path.into(),
                    reason: "already open for writing",
                });
            }
            // The partial last block is read from the device below, and the writer rewrites
            // it: bytes the log alone holds must be there first.
            if !f.log_only.is_empty() {
                place_log_only(&self.inner.devices, f)?;
            }
            f.start_writer();
            let size = f.size();
            let tail_start = size / BLOCK_SIZE * BLOCK_SIZE;
            let tail = if size % BLOCK_SIZE != 0 {
                map_range(f.all_extents(), tail_start, BLOCK_SIZE)
            } else {
                None
            };
            (ino, size, tail)
        };
        let mut tail = Vec::new();
        if let Some(pieces) = tail_extents {
            let mut block = vec![0u8; BLOCK_SIZE as usize];
            if let Err(e) = read_into(&self.inner.devices, &pieces, &mut block) {
                self.inner.release_writer(ino);
                return Err(e);
            }
            tail = block[..(size % BLOCK_SIZE) as usize].to_vec();
        }
        Ok(FileWriter::new(self.clone(), path.into(), ino, size, tail))
    }

    /// Renames `old` to `new` (replacing it) and opens it for writing from size 0, keeping its
    /// allocated space (RocksDB recycles WAL files this way).
    pub fn reuse(&self, old: &str, new: &str) -> Result<FileWriter> {
        self.rename(old, new)?;
        let (dir, name) = split_path(new)?;
        let mut st = self.inner.lock_writable()?;
        let ino = st.lookup(new, dir, name)?;
        let f = &st.files[&ino];
        if f.writer {
            return Err(BlueFsError::Busy {
                path: new.into(),
                reason: "already open for writing",
            });
        }
        let mut fnode = f.fnode.clone();
        for e in &f.pending_extents {
            push_extent(&mut fnode.extents, *e);
        }
        fnode.size = 0;
        fnode.mtime_ns = now_ns();
        self.inner
            .commit(&mut st, vec![LogOp::FileUpdate(fnode)], Vec::new())?;
        let f = st.files.get_mut(&ino).expect("still there");
        f.pending_extents.clear();
        f.pending_size = None;
        f.start_writer();
        Ok(FileWriter::new(
            self.clone(),
            new.into(),
            ino,
            0,
            Vec::new(),
        ))
    }

    pub fn open_read(&self, path: &str) -> Result<FileReader> {
        let (dir, name) = split_path(path)?;
        let mut st = lock(&self.inner.state);
        let ino = st.lookup(path, dir, name)?;
        st.files.get_mut(&ino).expect("looked up").readers += 1;
        Ok(FileReader {
            fs: self.clone(),
            ino,
            position: 0,
        })
    }

    /// Renames atomically, replacing `to` if it exists.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (from_dir, from_name) = split_path(from)?;
        let (to_dir, to_name) = split_path(to)?;
        let mut st = self.inner.lock_writable()?;
        let ino = st.lookup(from, from_dir, from_name)?;
        if !st.dirs.contains_key(to_dir) {
            return Err(BlueFsError::NotFound {
                path: to_dir.into(),
            });
        }
        if from_dir == to_dir && from_name == to_name {
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut released = Vec::new();
        if let Some(&target) = st.dirs[to_dir].get(to_name) {
            if target == ino {
                // Two links to the same file: just drop the old name.
                ops.push(LogOp::DirUnlink {
                    dir: from_dir.into(),
                    name: from_name.into(),
                });
                return self.inner.commit(&mut st, ops, released);
            }
            ops.push(LogOp::DirUnlink {
                dir: to_dir.into(),
                name: to_name.into(),
            });
            st.unlink_ops(target, &mut ops, &mut released);
        }
        ops.push(LogOp::DirLink {
            dir: to_dir.into(),
            name: to_name.into(),
            ino,
        });
        ops.push(LogOp::DirUnlink {
            dir: from_dir.into(),
            name: from_name.into(),
        });
        self.inner.commit(&mut st, ops, released)
    }

    /// A second name for a file.
    pub fn link(&self, from: &str, to: &str) -> Result<()> {
        let (from_dir, from_name) = split_path(from)?;
        let (to_dir, to_name) = split_path(to)?;
        let mut st = self.inner.lock_writable()?;
        let ino = st.lookup(from, from_dir, from_name)?;
        match st.dirs.get(to_dir) {
            None => {
                return Err(BlueFsError::NotFound {
                    path: to_dir.into(),
                });
            }
            Some(d) if d.contains_key(to_name) => {
                return Err(BlueFsError::Exists { path: to.into() });
            }
            Some(_) => {}
        }
        self.inner.commit(
            &mut st,
            vec![LogOp::DirLink {
                dir: to_dir.into(),
                name: to_name.into(),
                ino,
            }],
            Vec::new(),
        )
    }

    pub fn unlink(&self, path: &str) -> Result<()> {
        let (dir, name) = split_path(path)?;
        let mut st = self.inner.lock_writable()?;
        let ino = st.lookup(path, dir, name)?;
        let mut ops = vec![LogOp::DirUnlink {
            dir: dir.into(),
            name: name.into(),
        }];
        let mut released = Vec::new();
        st.unlink_ops(ino, &mut ops, &mut released);
        self.inner.commit(&mut st, ops, released)
    }

    /// Sets a file's size: shrinking releases whole allocation units past the new end;
    /// growing writes zeroes.
    pub fn truncate(&self, path: &str, size: u64) -> Result<()> {
        let (dir, name) = split_path(path)?;
        let current = {
            let st = lock(&self.inner.state);
            let ino = st.lookup(path, dir, name)?;
            let f = &st.files[&ino];
            if f.writer {
                return Err(BlueFsError::Busy {
                    path: path.into(),
                    reason: "open for writing; truncate through the writer",
                });
            }
            f.size()
        };
        if size > current {
            let mut w = self.open_append(path)?;
            w.append_zeroes(size - current)?;
            return w.close();
        }
        let mut st = self.inner.lock_writable()?;
        let ino = st.lookup(path, dir, name)?;
        self.inner.shrink(&mut st, ino, size)
    }

    /// Takes the advisory lock on `path`, creating the file if needed (RocksDB's LOCK file).
    pub fn lock_file(&self, path: &str) -> Result<()> {
        if !self.exists(path) {
            self.create(path)?.close()?;
        }
        let mut st = lock(&self.inner.state);
        if !st.locks.insert(path.to_string()) {
            return Err(BlueFsError::Busy {
                path: path.into(),
                reason: "is locked",
            });
        }
        Ok(())
    }

    pub fn unlock_file(&self, path: &str) -> Result<()> {
        if lock(&self.inner.state).locks.remove(path) {
            Ok(())
        } else {
            Err(BlueFsError::NotFound { path: path.into() })
        }
    }

    // ---- maintenance -------------------------------------------------------------------

    pub fn usage(&self) -> Usage {
        let st = lock(&self.inner.state);
        let mut usage = Usage {
            spillover_bytes: st.spillover_bytes,
            files: st.files.len() as u64,
            log_bytes: st.log.fnode.allocated(),
            log_position: st.log.position,
            compactions: st.compactions,
            ..Usage::default()
        };
        for id in DeviceId::ALL {
            if self.inner.devices[id.index()].is_none() {
                continue;
            }
            // The size in use (what the label records), not a larger size the device may have
            // grown to before `expand`.
            let (size, free) = match id {
                DeviceId::Slow => self
                    .inner
                    .slow
                    .as_ref()
                    .map_or((0, 0), |s| (s.device_size(), s.free_bytes())),
                _ => st.allocators[id.index()]
                    .as_ref()
                    .map_or((0, 0), |a| (a.size(), a.free_bytes())),
            };
            usage.devices[id.index()] = Some(DeviceUsage {
                size,
                free,
                ..DeviceUsage::default()
            });
        }
        for f in st.files.values().chain(st.orphans.values()) {
            let kind = FileKind::ALL.iter().position(|k| *k == f.kind).unwrap_or(1);
            for e in f.all_extents() {
                if let Some(d) = usage.devices[e.device.index()].as_mut() {
                    d.by_kind[kind] += e.length;
                }
            }
        }
        for e in &st.log.fnode.extents {
            if let Some(d) = usage.devices[e.device.index()].as_mut() {
                d.log += e.length;
            }
        }
        usage
    }

    /// Rewrites the log from live metadata now (synchronously).
    pub fn compact(&self) -> Result<()> {
        self.inner.compact(false)
    }

    /// Compacts while other threads keep committing; the switch takes the lock briefly.
    pub fn compact_async(&self) -> Result<()> {
        self.inner.compact(true)
    }

    /// Takes the space of grown devices into use and records their new sizes in their labels.
    /// Returns (device, old size, new size) for each device that grew.
    pub fn expand(&self) -> Result<Vec<(DeviceId, u64, u64)>> {
        let mut grown = Vec::new();
        let mut st = self.inner.lock_writable()?;
        for id in DeviceId::ALL {
            let Some(dev) = &self.inner.devices[id.index()] else {
                continue;
            };
            let new_size = dev.size();
            let old_size = match id {
                DeviceId::Slow => match &self.inner.slow {
                    Some(s) => s.device_size(),
                    None => continue,
                },
                _ => st.allocators[id.index()].as_ref().map_or(0, |a| a.size()),
            };
            if new_size <= old_size {
                continue;
            }
            match id {
                DeviceId::Slow => {
                    if let Some(s) = &self.inner.slow {
                        s.grow(new_size)?;
                    }
                }
                _ => {
                    if let Some(a) = st.allocators[id.index()].as_mut() {
                        a.grow(new_size)?;
                    }
                }
            }
            if id != DeviceId::Slow || self.inner.owns_slow_label() {
                // Only the recorded size changes; the label keeps its creation time.
                let mut block = vec![0u8; BLOCK_SIZE as usize];
                dev.read(format::LABEL_OFFSET, &mut block)?;
                let label = Label {
                    device_size: new_size,
                    ..format::decode_label(&block)?
                };
                dev.write(format::LABEL_OFFSET, &format::encode_label(&label))?;
                dev.flush()?;
            }
            grown.push((id, old_size, new_size));
        }
        drop(st);
        Ok(grown)
    }

    /// Checks the metadata: every extent inside its device, no two extents overlapping, every
    /// directory entry naming a live file, link counts right.
    pub fn fsck(&self) -> FsckReport {
        let st = lock(&self.inner.state);
        let mut report = FsckReport {
            files: st.files.len() as u64,
            dirs: st.dirs.len() as u64,
            errors: Vec::new(),
        };
        let mut spans: Vec<(DeviceId, u64, u64, u64)> = Vec::new();
        for f in st.files.values().chain(st.orphans.values()) {
            for e in f.all_extents().chain(&f.deferred_release) {
                spans.push((e.device, e.offset, e.end(), f.fnode.ino));
            }
            if f.size() > f.allocated() {
                report.errors.push(format!(
                    "file {}: size {} exceeds its {} allocated bytes",
                    f.fnode.ino,
                    f.size(),
                    f.allocated()
                ));
            }
        }
        for e in &st.log.fnode.extents {
            spans.push((e.device, e.offset, e.end(), LOG_INO));
        }
        for (device, start, end, ino) in &spans {
            let size = self.inner.devices[device.index()]
                .as_ref()
                .map_or(0, |d| d.size());
            if *start < RESERVED_PREFIX || *end > size {
                report.errors.push(format!(
                    "file {ino}: extent {start}..{end} lies outside the {} device",
                    device.name()
                ));
            }
        }
        spans.sort();
        for pair in spans.windows(2) {
            if pair[0].0 == pair[1].0 && pair[0].2 > pair[1].1 {
                report.errors.push(format!(
                    "files {} and {} overlap on the {} device at {}",
                    pair[0].3,
                    pair[1].3,
                    pair[0].0.name(),
                    pair[1].1
                ));
            }
        }
        let mut links: HashMap<u64, u32> = HashMap::new();
        for (dir, entries) in &st.dirs {
            for (name, ino) in entries {
                if !st.files.contains_key(ino) {
                    report
                        .errors
                        .push(format!("{dir}/{name} names missing file {ino}"));
                }
                *links.entry(*ino).or_default() += 1;
            }
        }
        for (ino, f) in &st.files {
            let counted = links.get(ino).copied().unwrap_or(0);
            if counted != f.nlink || counted == 0 {
                report.errors.push(format!(
                    "file {ino}: {counted} directory entries, link count {}",
                    f.nlink
                ));
            }
        }
        // Allocated (per the allocators) must equal referenced, device by device.
        for id in [DeviceId::Wal, DeviceId::Db] {
            let Some(a) = &st.allocators[id.index()] else {
                continue;
            };
            let referenced: u64 = spans.iter().filter(|s| s.0 == id).map(|s| s.2 - s.1).sum();
            let usable = a.size() / a.unit() * a.unit()
                - RESERVED_PREFIX.next_multiple_of(a.unit()).min(a.size());
            if usable - a.free_bytes() != referenced {
                report.errors.push(format!(
                    "{} device: {} bytes allocated but {referenced} referenced",
                    id.name(),
                    usable - a.free_bytes()
                ));
            }
        }
        report
    }

    /// Every file as `dir/name`, sorted.
    pub fn list_files(&self) -> Vec<String> {
        let st = lock(&self.inner.state);
        st.dirs
            .iter()
            .flat_map(|(d, entries)| entries.keys().map(move |n| format!("{d}/{n}")))
            .collect()
    }

    /// Reads a whole file.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let r = self.open_read(path)?;
        let mut data = vec![0u8; r.size() as usize];
        let n = r.read_at(0, &mut data)?;
        data.truncate(n);
        Ok(data)
    }

    /// Drops pooled queue pairs; after a power cut of a fault device they are dead.
    pub fn reset_queue_pairs(&self) {
        for d in self.inner.devices.iter().flatten() {
            d.reset_queue_pairs();
        }
    }
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

    fn lookup(&self, path: &str, dir: &str, name: &str) -> Result<u64> {
        self.dirs
            .get(dir)
            .and_then(|d| d.get(name))
            .copied()
            .ok_or_else(|| BlueFsError::NotFound { path: path.into() })
    }

    /// Ops (and space to free) for dropping one link of `ino`: when it was the last, the file
    /// goes, and its space with it unless it is open (then when the last handle closes).
    fn unlink_ops(&self, ino: u64, ops: &mut Vec<LogOp>, released: &mut Vec<Extent>) {
        let f = &self.files[&ino];
        if f.nlink <= 1 {
            ops.push(LogOp::FileRemove { ino });
            if f.readers == 0 && !f.writer {
                released.extend(f.all_extents().copied());
            }
        }
    }

    /// Makes every state change an op describes; replay uses the same function.
    fn apply(&mut self, op: &LogOp) -> std::result::Result<(), String> {
        match op {
            LogOp::Init { .. } | LogOp::Jump { .. } | LogOp::JumpSeq { .. } => {}
            LogOp::DirCreate { name } => {
                if self.dirs.insert(name.clone(), BTreeMap::new()).is_some() {
                    return Err(format!("directory {name} created twice"));
                }
            }
            LogOp::DirRemove { name } => match self.dirs.remove(name) {
                Some(d) if d.is_empty() => {}
                Some(_) => return Err(format!("directory {name} removed while not empty")),
                None => return Err(format!("directory {name} removed but never created")),
            },
            LogOp::DirLink { dir, name, ino } => {
                let Some(f) = self.files.get_mut(ino) else {
                    return Err(format!("{dir}/{name} links to missing file {ino}"));
                };
                let Some(d) = self.dirs.get_mut(dir) else {
                    return Err(format!("{dir}/{name} linked in a missing directory"));
                };
                if d.insert(name.clone(), *ino).is_some() {
                    return Err(format!("{dir}/{name} linked twice"));
                }
                f.nlink += 1;
                f.kind = FileKind::of(dir, name);
            }
            LogOp::DirUnlink { dir, name } => {
                let Some(ino) = self.dirs.get_mut(dir).and_then(|d| d.remove(name)) else {
                    return Err(format!("{dir}/{name} unlinked but not linked"));
                };
                if let Some(f) = self.files.get_mut(&ino) {
                    f.nlink = f.nlink.saturating_sub(1);
                }
            }
            LogOp::FileUpdate(fnode) => {
                if fnode.ino == LOG_INO {
                    self.log.fnode = fnode.clone();
                } else if let Some(f) = self.files.get_mut(&fnode.ino) {
                    f.fnode = fnode.clone();
                    f.trim_log_only(fnode.size);
                } else {
                    self.files
                        .insert(fnode.ino, FileMeta::new(fnode.clone(), FileKind::Db));
                }
            }
            LogOp::FileUpdateDelta {
                ino,
                size,
                mtime_ns,
                appended,
            }
            | LogOp::FileAppendChecked {
                ino,
                size,
                mtime_ns,
                appended,
                ..
            } => {
                self.grow_file(*ino, *size, *mtime_ns, appended)?;
            }
            LogOp::FileAppendInline {
                ino,
                size,
                mtime_ns,
                appended,
                data_from,
                data,
            } => {
                let f = self.grow_file(*ino, *size, *mtime_ns, appended)?;
                if f.fnode.allocated() < *size {
                    return Err(format!(
                        "inline append to file {ino} ends at {size}, past its allocation {}",
                        f.fnode.allocated()
                    ));
                }
                f.add_log_only(*data_from, data);
            }
            LogOp::FileRemove { ino } => match self.files.remove(ino) {
                Some(f) if f.readers > 0 || f.writer => {
                    self.orphans.insert(*ino, f);
                }
                Some(_) => {}
                None => return Err(format!("removal of missing file {ino}")),
            },
        }
        Ok(())
    }

    /// An append's metadata: new extents, size, mtime.
    fn grow_file(
        &mut self,
        ino: u64,
        size: u64,
        mtime_ns: u64,
        appended: &[Extent],
    ) -> std::result::Result<&mut FileMeta, String> {
        let Some(f) = self.files.get_mut(&ino) else {
            return Err(format!("append to missing file {ino}"));
        };
        for e in appended {
            push_extent(&mut f.fnode.extents, *e);
        }
        f.fnode.size = size;
        f.fnode.mtime_ns = mtime_ns;
        Ok(f)
    }

    /// Gives space back to the allocators (after the commit that freed it is durable).
    fn release(&mut self, slow: Option<&Arc<dyn SharedSpace>>, extents: &[Extent]) {
        for e in extents {
            let result = match e.device {
                DeviceId::Slow => slow.map_or(Ok(()), |s| s.release(std::slice::from_ref(e))),
                id => self.allocators[id.index()]
                    .as_mut()
                    .map_or(Ok(()), |a| a.release(std::slice::from_ref(e))),
            };
            // A failed release means the space was already free: leaking it is safe, so it is
            // left for fsck to report rather than turning into an error here.
            let _ = result;
        }
    }
}

/// The state lock for code that may commit. When a commit asked for compaction (it cannot run
/// under the lock the committer holds), dropping the guard releases the lock and then compacts,
/// on the committing thread — there is no compaction thread.
struct StateGuard<'a> {
    guard: Option<MutexGuard<'a, State>>,
    inner: &'a Inner,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().expect("held until drop")
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        let Some(mut st) = self.guard.take() else {
            return;
        };
        let wanted = std::mem::take(&mut st.compact_wanted);
        drop(st);
        if wanted && !std::thread::panicking() {
            // A failed compaction leaves the current log in use; the next commit asks again.
            let _ = self.inner.compact(self.inner.config.async_compaction);
        }
    }
}

impl Inner {
    fn guard<'a>(&'a self, st: MutexGuard<'a, State>) -> StateGuard<'a> {
        StateGuard {
            guard: Some(st),
            inner: self,
        }
    }

    fn lock_writable(&self) -> Result<StateGuard<'_>> {
        let st = lock(&self.state);
        match &st.read_only {
            Some(reason) => Err(BlueFsError::ReadOnly {
                reason: reason.clone(),
            }),
            None => Ok(self.guard(st)),
        }
    }

    fn owns_slow_label(&self) -> bool {
        !self.slow_shared
    }

    fn device(&self, id: DeviceId) -> Result<&BlockDevice> {
        device_of(&self.devices, id)
    }

    /// Takes `want` bytes for a file of `kind`, trying its devices in order. WAL and DB keep
    /// the log's reserve free.
    fn allocate(&self, st: &mut State, kind: FileKind, want: u64) -> Result<Vec<Extent>> {
        let (device, extents) = self
            .allocate_from(st, kind.preference(), want, self.config.log_reserve)
            .map_err(|detail| BlueFsError::NoSpace {
                what: format!("{want} bytes of {} data", kind.name()),
                detail,
            })??;
        if device == DeviceId::Slow && kind != FileKind::Slow {
            st.spillover_bytes += extents.iter().map(|e| e.length).sum::<u64>();
            if !st.spillover_warned {
                st.spillover_warned = true;
                log::warn!(
                    "bluefs: {} data spilled over to the SLOW device (faster devices full)",
                    kind.name()
                );
            }
        }
        Ok(extents)
    }

    /// Space for the log: WAL, then DB, then SLOW, its reserve included.
    fn allocate_log(&self, st: &mut State, want: u64) -> Result<Vec<Extent>> {
        let (_, extents) =
            self.allocate_from(st, &DeviceId::ALL, want, 0)
                .map_err(|detail| BlueFsError::NoSpace {
                    what: format!("{want} bytes of log"),
                    detail,
                })??;
        Ok(extents)
    }

    /// Tries `devices` in order, leaving `keep_free` bytes on WAL and DB. The outer error lists
    /// what each device had when all were full; the inner one is any other allocator failure.
    fn allocate_from(
        &self,
        st: &mut State,
        devices: &[DeviceId],
        want: u64,
        keep_free: u64,
    ) -> std::result::Result<Result<(DeviceId, Vec<Extent>)>, String> {
        let mut tried = Vec::new();
        for &id in devices {
            if self.devices[id.index()].is_none() {
                continue;
            }
            let result = match (id, &self.slow, st.allocators.get_mut(id.index())) {
                (DeviceId::Slow, Some(s), _) => s.allocate(want),
                (DeviceId::Slow, None, _) => continue,
                (_, _, Some(Some(a))) => a.allocate_keeping(want, keep_free),
                _ => continue,
            };
            match result {
                Ok(extents) => return Ok(Ok((id, extents))),
                Err(AllocError::NoSpace { free, .. }) => {
                    tried.push(format!("{} {free} bytes free", id.name()))
                }
                Err(e) => return Ok(Err(e.into())),
            }
        }
        Err(if tried.is_empty() {
            "no device may hold it".into()
        } else {
            tried.join(", ")
        })
    }

    fn release_now(&self, st: &mut State, extents: &[Extent]) {
        st.release(self.slow.as_ref(), extents);
    }

    /// Writes `ops` as one log transaction, makes it durable, applies it, then releases
    /// `released`. On failure nothing is applied and nothing released; a failure of the log
    /// write itself makes the filesystem read-only (what reached the disk is unknown).
    fn commit(&self, st: &mut State, ops: Vec<LogOp>, released: Vec<Extent>) -> Result<()> {
        self.commit_inner(st, ops, released, &[], &[])
    }

    /// `commit`, also writing `also_write` together with the frame and flushing `also_flush`
    /// with the log (a checked append).
    fn commit_with_writes(
        &self,
        st: &mut State,
        ops: Vec<LogOp>,
        also_flush: &[DeviceId],
        also_write: &[(Extent, &[u8])],
    ) -> Result<()> {
        self.commit_inner(st, ops, Vec::new(), also_flush, also_write)
    }

    fn commit_inner(
        &self,
        st: &mut State,
        ops: Vec<LogOp>,
        released: Vec<Extent>,
        also_flush: &[DeviceId],
        also_write: &[(Extent, &[u8])],
    ) -> Result<()> {
        if ops.is_empty() {
            self.release_now(st, &released);
            return Ok(());
        }
        let mut txn = Transaction {
            uuid: self.uuid,
            seq: st.log.next_seq,
            ops,
        };
        let mut frame = format::encode_transaction(&txn);
        let mut grown_by = Vec::new();
        if let Some((grown, extents)) = self.log_growth(st, frame.len() as u64)? {
            // The growth rides in this frame when the frame still fits the current allocation:
            // one write and one flush instead of two of each every `log_grow` bytes.
            txn.ops.insert(0, LogOp::FileUpdate(grown.clone()));
            let with_growth = format::encode_transaction(&txn);
            if st.log.position + with_growth.len() as u64 <= st.log.fnode.allocated() {
                frame = with_growth;
                grown_by = extents;
            } else {
                txn.ops.remove(0);
                self.commit_log_growth(st, grown, &extents)?;
                // The growth record took this sequence number: seal the frame with the next.
                txn.seq = st.log.next_seq;
                frame = format::encode_transaction(&txn);
            }
        }
        if let Err(e) = self.write_log_frame(st, &frame, also_flush, also_write) {
            self.release_now(st, &grown_by);
            return Err(e);
        }
        let ops = txn.ops;
        for op in &ops {
            if let Err(reason) = st.apply(op) {
                // The log now holds an op the live state refuses: replay would refuse it too.
                st.read_only = Some(format!("applying a committed op failed: {reason}"));
                return Err(BlueFsError::Corrupt { reason });
            }
        }
        if let Some(c) = st.compaction.as_mut() {
            c.delta.push(ops);
        }
        self.release_now(st, &released);
        self.maybe_compact(st);
        Ok(())
    }

    /// When a frame of `frame_len` bytes would not leave the runway free in the log, allocates
    /// more log space and returns the log's fnode with it (not yet committed) and the new extents.
    fn log_growth(&self, st: &mut State, frame_len: u64) -> Result<Option<(Fnode, Vec<Extent>)>> {
        if st.log.position + frame_len + LOG_RUNWAY <= st.log.fnode.allocated() {
            return Ok(None);
        }
        let want = (frame_len + LOG_RUNWAY).max(self.config.log_grow);
        let extents = self.allocate_log(st, want)?;
        let mut fnode = st.log.fnode.clone();
        for e in &extents {
            push_extent(&mut fnode.extents, *e);
        }
        Ok(Some((fnode, extents)))
    }

    /// Commits a log growth as a transaction of its own (it always fits in the runway), for a
    /// frame too large to carry it.
    fn commit_log_growth(&self, st: &mut State, grown: Fnode, extents: &[Extent]) -> Result<()> {
        let grow = Transaction {
            uuid: self.uuid,
            seq: st.log.next_seq,
            ops: vec![LogOp::FileUpdate(grown)],
        };
        if let Err(e) = self.write_log_frame(st, &format::encode_transaction(&grow), &[], &[]) {
            self.release_now(st, extents);
            return Err(e);
        }
        for op in &grow.ops {
            let _ = st.apply(op);
        }
        Ok(())
    }

    /// Writes and flushes one encoded frame (sealed with `st.log.next_seq`); `also_write` goes
    /// out with it and `also_flush` under the same flush (the data of a checked append).
    fn write_log_frame(
        &self,
        st: &mut State,
        frame: &[u8],
        also_flush: &[DeviceId],
        also_write: &[(Extent, &[u8])],
    ) -> Result<()> {
        let len = frame.len() as u64;
        if st.log.position + len > st.log.fnode.allocated() {
            return Err(BlueFsError::NoSpace {
                what: "a log transaction".into(),
                detail: format!(
                    "{len} bytes at log offset {} of {}",
                    st.log.position,
                    st.log.fnode.allocated()
                ),
            });
        }
        let devices = &self.devices;
        let result = map_range(&st.log.fnode.extents, st.log.position, len)
            .ok_or_else(|| BlueFsError::Corrupt {
                reason: format!("log frame at {} past the log's allocation", st.log.position),
            })
            .and_then(|pieces| {
                let mut writes: Vec<(Extent, &[u8])> = also_write.to_vec();
                writes.extend(with_data(&pieces, frame));
                write_pieces(devices, &writes)
            })
            .and_then(|touched| {
                let mut flush: Vec<DeviceId> = also_flush.to_vec();
                flush.extend(touched.into_iter().filter(|id| !also_flush.contains(id)));
                for id in flush {
                    self.device(id)?.flush()?;
                }
                Ok(())
            });
        if let Err(e) = result {
            st.read_only = Some(format!("a log write failed: {e}"));
            return Err(e);
        }
        st.log.position += len;
        st.log.next_seq += 1;
        Ok(())
    }

    fn release_writer(&self, ino: u64) {
        let mut st = lock(&self.state);
        if let Some(f) = st.files.get_mut(&ino) {
            f.writer = false;
        } else if let Some(mut f) = st.orphans.remove(&ino) {
            f.writer = false;
            self.close_orphan(&mut st, ino, f);
        }
    }

    fn release_reader(&self, ino: u64) {
        let mut st = lock(&self.state);
        if let Some(f) = st.files.get_mut(&ino) {
            f.readers = f.readers.saturating_sub(1);
            if f.readers == 0 && !f.deferred_release.is_empty() {
                let deferred = std::mem::take(&mut f.deferred_release);
                self.release_now(&mut st, &deferred);
            }
        } else if let Some(mut f) = st.orphans.remove(&ino) {
            f.readers = f.readers.saturating_sub(1);
            self.close_orphan(&mut st, ino, f);
        }
    }

    /// A removed file lost a handle: put it back until the last one, then free its space (its
    /// removal is already in the log).
    fn close_orphan(&self, st: &mut State, ino: u64, f: FileMeta) {
        if f.readers > 0 || f.writer {
            st.orphans.insert(ino, f);
        } else {
            let extents: Vec<Extent> = f
                .all_extents()
                .chain(&f.deferred_release)
                .copied()
                .collect();
            self.release_now(st, &extents);
        }
    }

    /// Shrinks `ino` to `size`: whole allocation units past the end are released.
    fn shrink(&self, st: &mut State, ino: u64, size: u64) -> Result<()> {
        let f = &st.files[&ino];
        let mut kept = Vec::new();
        let mut released = Vec::new();
        let mut pos = 0u64;
        for e in f.all_extents() {
            let unit = self.unit_of(e.device);
            let keep = size
                .saturating_sub(pos)
                .next_multiple_of(unit)
                .min(e.length);
            if keep > 0 {
                kept.push(Extent { length: keep, ..*e });
            }
            if keep < e.length {
                released.push(Extent {
                    device: e.device,
                    offset: e.offset + keep,
                    length: e.length - keep,
                });
            }
            pos += e.length;
        }
        let fnode = Fnode {
            ino,
            size: size.min(f.size()),
            mtime_ns: now_ns(),
            extents: kept,
        };
        let readers = f.readers > 0;
        let now = if readers {
            Vec::new()
        } else {
            released.clone()
        };
        self.commit(st, vec![LogOp::FileUpdate(fnode)], now)?;
        let f = st.files.get_mut(&ino).expect("still there");
        f.pending_extents.clear();
        f.pending_size = None;
        f.data_generation += 1;
        if readers {
            f.deferred_release.extend(released);
        }
        Ok(())
    }

    fn unit_of(&self, id: DeviceId) -> u64 {
        match id {
            DeviceId::Slow => self
                .slow
                .as_ref()
                .map_or(self.config.alloc_units[id.index()], |s| s.unit()),
            _ => self.config.alloc_units[id.index()],
        }
    }

    /// Writes the log-only bytes of every file not open for writing to its extents (the
    /// snapshot carried the others' into the new log), then flushes every device. Removed
    /// files' bytes stay in memory for their last readers.
    fn place_all_log_only(&self, st: &mut State) -> Result<()> {
        for f in st.files.values_mut() {
            if !f.writer && !f.log_only.is_empty() {
                place_log_only(&self.devices, f)?;
            }
        }
        for device in self.devices.iter().flatten() {
            device.flush()?;
        }
        Ok(())
    }

    /// Asks for a compaction (run when the committer's guard drops) when the log is large and
    /// mostly history, or when it is eating into its reserve because the devices are full.
    fn maybe_compact(&self, st: &mut State) {
        if st.compaction.is_some() {
            return;
        }
        let position = st.log.position;
        let large = position >= self.config.compact_min_bytes
            && position >= live_metadata_estimate(st).saturating_mul(self.config.compact_ratio);
        let log_devices_free: u64 = st.allocators.iter().flatten().map(|a| a.free_bytes()).sum();
        let squeezed = log_devices_free < self.config.log_reserve / 2
            && position > 2 * live_metadata_estimate(st) + LOG_RUNWAY;
        if large || squeezed {
            st.compact_wanted = true;
        }
    }

    /// Rewrites the log from a snapshot of live metadata and switches the superblock to it.
    fn compact(&self, concurrent: bool) -> Result<()> {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return Ok(()); // someone else is at it
        }
        let result = self.compact_inner(concurrent);
        self.compacting.store(false, Ordering::Release);
        result
    }

    fn compact_inner(&self, concurrent: bool) -> Result<()> {
        let mut st = self.lock_writable()?;
        let snapshot = snapshot_ops(&st);
        let first_seq = st.log.next_seq;
        let frame = format::encode_transaction(&Transaction {
            uuid: self.uuid,
            seq: first_seq,
            ops: snapshot,
        });
        let want = frame.len() as u64 + LOG_RUNWAY + self.config.log_grow;
        let extents = self.allocate_log(&mut st, want)?;
        let mut new_log = Fnode {
            ino: LOG_INO,
            size: 0,
            mtime_ns: now_ns(),
            extents,
        };
        let mut held = Some(st);
        if concurrent && let Some(mut st) = held.take() {
            st.compaction = Some(Compaction { delta: Vec::new() });
        }
        // The expensive part: write the snapshot (without the lock when concurrent).
        let written = write_durable(&self.devices, &new_log.extents, 0, &frame);
        let mut st = match held {
            Some(st) => st,
            None => self.guard(lock(&self.state)),
        };
        let delta = st.compaction.take().map(|c| c.delta).unwrap_or_default();
        if let Err(e) = written {
            self.release_now(&mut st, &new_log.extents);
            return Err(compaction_io_failed(&mut st, e));
        }
        if st.read_only.is_some() {
            self.release_now(&mut st, &new_log.extents);
            return Err(BlueFsError::ReadOnly {
                reason: st.read_only.clone().unwrap_or_default(),
            });
        }
        // Ops committed to the old log meanwhile go onto the new one, in order (minus the old
        // log's own growth records).
        let mut position = frame.len() as u64;
        let mut seq = first_seq + 1;
        let mut tail = Vec::new();
        for ops in delta {
            let ops: Vec<LogOp> = ops
                .into_iter()
                .filter(|op| !matches!(op, LogOp::FileUpdate(f) if f.ino == LOG_INO))
                .collect();
            if ops.is_empty() {
                continue;
            }
            let bytes = format::encode_transaction(&Transaction {
                uuid: self.uuid,
                seq,
                ops,
            });
            seq += 1;
            tail.extend_from_slice(&bytes);
        }
        // What others committed meanwhile may not fit: the new log is not referenced by
        // anything durable yet, so it can simply be given more space.
        let needed = position + tail.len() as u64 + LOG_RUNWAY;
        if needed > new_log.allocated() {
            let more = (needed - new_log.allocated()).max(self.config.log_grow);
            match self.allocate_log(&mut st, more) {
                Ok(extents) => {
                    for e in extents {
                        push_extent(&mut new_log.extents, e);
                    }
                }
                Err(e) => {
                    self.release_now(&mut st, &new_log.extents);
                    return Err(e);
                }
            }
        }
        if !tail.is_empty() {
            if let Err(e) = write_durable(&self.devices, &new_log.extents, position, &tail) {
                self.release_now(&mut st, &new_log.extents);
                return Err(compaction_io_failed(&mut st, e));
            }
            position += tail.len() as u64;
        }
        // The old log is about to stop counting: bytes only it holds go to their files (those
        // of files open for writing are in the new log), and every device is flushed (bytes
        // written out earlier without a flush, at a writer's close, relied on the old log too).
        if let Err(e) = self.place_all_log_only(&mut st) {
            self.release_now(&mut st, &new_log.extents);
            return Err(compaction_io_failed(&mut st, e));
        }
        let superblock = Superblock {
            uuid: self.uuid,
            generation: st.superblock_generation + 1,
            block_size: BLOCK_SIZE as u32,
            alloc_units: self.config.alloc_units,
            log_fnode: new_log.clone(),
            log_first_seq: first_seq,
        };
        // Alternate slots (mkfs wrote generation 1 to the first), so the previous superblock
        // survives a torn write of this one.
        let slot = SUPERBLOCK_OFFSETS[((superblock.generation - 1) % 2) as usize];
        let db = self.device(DeviceId::Db)?;
        let encoded = format::encode_superblock(&superblock)?;
        if let Err(e) = db.write(slot, &encoded).and_then(|()| db.flush()) {
            // Unknown whether the new superblock landed: both logs stay valid for what they
            // hold, but the next commit must not go to the old one if the new one won.
            st.read_only = Some(format!("a superblock write failed: {e}"));
            return Err(e);
        }
        // The other slot now describes a log about to be freed: invalidate it, so a damaged
        // current superblock fails the mount instead of silently rolling back to it. (The next
        // switch writes that slot while this one stays valid, so a torn write still has a
        // fallback.)
        let stale = SUPERBLOCK_OFFSETS[(superblock.generation % 2) as usize];
        if let Err(e) = db
            .write(stale, &vec![0u8; BLOCK_SIZE as usize])
            .and_then(|()| db.flush())
        {
            st.read_only = Some(format!("invalidating the old superblock failed: {e}"));
            return Err(e);
        }
        let old_log = std::mem::replace(
            &mut st.log,
            LogWriter {
                fnode: new_log,
                position,
                next_seq: seq,
            },
        );
        st.superblock_generation = superblock.generation;
        st.compactions += 1;
        self.release_now(&mut st, &old_log.fnode.extents);
        Ok(())
    }
}

/// About how many log bytes the live metadata needs.
/// A write or flush of compaction failed. Bytes written out earlier without a flush (log-only
/// bytes placed at a writer's close) rely on the next flush succeeding; after a failed one,
/// no later flush proves they landed, so the filesystem stops taking changes.
fn compaction_io_failed(st: &mut State, e: BlueFsError) -> BlueFsError {
    if !e.is_no_space() && st.read_only.is_none() {
        st.read_only = Some(format!("an I/O of log compaction failed: {e}"));
    }
    e
}

fn live_metadata_estimate(st: &State) -> u64 {
    // Log-only bytes of open files are copied into the new log, so they count as live.
    let files: u64 = st
        .files
        .values()
        .map(|f| 64 + 17 * f.fnode.extents.len() as u64 + f.log_only_len())
        .sum();
    let names: u64 = st
        .dirs
        .iter()
        .map(|(d, e)| {
            d.len() as u64
                + e.keys()
                    .map(|n| 24 + n.len() as u64 + d.len() as u64)
                    .sum::<u64>()
        })
        .sum();
    (files + names).max(BLOCK_SIZE)
}

/// The ops that rebuild the live metadata from nothing.
fn snapshot_ops(st: &State) -> Vec<LogOp> {
    let mut ops = Vec::new();
    for dir in st.dirs.keys() {
        ops.push(LogOp::DirCreate { name: dir.clone() });
    }
    let mut inos: Vec<&u64> = st.files.keys().collect();
    inos.sort();
    for ino in inos {
        let f = &st.files[ino];
        ops.push(LogOp::FileUpdate(f.fnode.clone()));
        // A file open for writing keeps its log-only bytes in the new log: its writer may be
        // writing that very block outside the lock, so compaction must not write it too.
        if f.writer && !f.log_only.is_empty() {
            for r in &f.log_only {
                ops.push(LogOp::FileAppendInline {
                    ino: *ino,
                    size: r.end(),
                    mtime_ns: f.fnode.mtime_ns,
                    appended: Vec::new(),
                    data_from: r.from,
                    data: r.bytes.clone(),
                });
            }
            if f.log_only.last().map(LogOnlyBytes::end) != Some(f.fnode.size) {
                ops.push(LogOp::FileUpdate(f.fnode.clone()));
            }
        }
    }
    for (dir, entries) in &st.dirs {
        for (name, ino) in entries {
            ops.push(LogOp::DirLink {
                dir: dir.clone(),
                name: name.clone(),
                ino: *ino,
            });
        }
    }
    ops
}

/// Writes `data` at byte `offset` of a file laid out on `extents` and flushes the devices it
/// went to.
fn write_durable(
    devices: &[Option<BlockDevice>; 3],
    extents: &[Extent],
    offset: u64,
    data: &[u8],
) -> Result<()> {
    let pieces =
        map_range(extents, offset, data.len() as u64).ok_or_else(|| BlueFsError::Corrupt {
            reason: format!(
                "write of {} bytes at {offset} past the file's allocation",
                data.len()
            ),
        })?;
    for id in write_pieces(devices, &with_data(&pieces, data))? {
        device_of(devices, id)?.flush()?;
    }
    Ok(())
}

/// Pairs each device range with its consecutive part of `data`.
fn with_data<'d>(pieces: &[Extent], data: &'d [u8]) -> Vec<(Extent, &'d [u8])> {
    let mut at = 0usize;
    pieces
        .iter()
        .map(|p| {
            let bytes = &data[at..at + p.length as usize];
            at += p.length as usize;
            (*p, bytes)
        })
        .collect()
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

/// Writes a file's log-only bytes to its own extents (without a flush: the log still holds
/// them) and forgets them. Returns the devices written. A partial last block that the file
/// continues past (bytes written in place by a later, ordinary append) is read first and only
/// patched, so the padding does not overwrite them.
fn place_log_only(devices: &[Option<BlockDevice>; 3], f: &mut FileMeta) -> Result<Vec<DeviceId>> {
    let mut touched = Vec::new();
    for r in &f.log_only {
        let padded = (r.bytes.len() as u64).next_multiple_of(BLOCK_SIZE);
        let pieces =
            map_range(f.all_extents(), r.from, padded).ok_or_else(|| BlueFsError::Corrupt {
                reason: format!(
                    "file {}: log-only bytes {}..{} past its allocation",
                    f.fnode.ino,
                    r.from,
                    r.end()
                ),
            })?;
        let mut data = vec![0u8; padded as usize];
        let last_block = r.end() / BLOCK_SIZE * BLOCK_SIZE;
        if r.end() % BLOCK_SIZE != 0 && f.size() > r.end() {
            let block = map_range(f.all_extents(), last_block, BLOCK_SIZE)
                .expect("inside the range mapped above");
            read_into(devices, &block, &mut data[(last_block - r.from) as usize..])?;
        }
        data[..r.bytes.len()].copy_from_slice(&r.bytes);
        for id in write_pieces(devices, &with_data(&pieces, &data))? {
            if !touched.contains(&id) {
                touched.push(id);
            }
        }
    }
    f.log_only.clear();
    Ok(touched)
}

/// Writes device ranges, all of one device's in flight together; returns the devices written.
fn write_pieces(
    devices: &[Option<BlockDevice>; 3],
    writes: &[(Extent, &[u8])],
) -> Result<Vec<DeviceId>> {
    let mut touched = Vec::new();
    for id in DeviceId::ALL {
        let ranges: Vec<(u64, &[u8])> = writes
            .iter()
            .filter(|(p, _)| p.device == id)
            .map(|(p, bytes)| (p.offset, *bytes))
            .collect();
        if ranges.is_empty() {
            continue;
        }
        device_of(devices, id)?.write_many(&ranges)?;
        touched.push(id);
    }
    Ok(touched)
}

fn read_superblock(db: &BlockDevice, uuid: &Uuid) -> Result<Superblock> {
    let mut best: Option<Superblock> = None;
    let mut errors = Vec::new();
    for offset in SUPERBLOCK_OFFSETS {
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        db.read(offset, &mut block)?;
        match format::decode_superblock(&block) {
            Ok(sb) if &sb.uuid == uuid => {
                if best.as_ref().is_none_or(|b| sb.generation > b.generation) {
                    best = Some(sb);
                }
            }
            Ok(_) => errors.push(format!("slot at {offset}: another filesystem's superblock")),
            Err(e) => errors.push(format!("slot at {offset}: {e}")),
        }
    }
    best.ok_or_else(|| BlueFsError::Corrupt {
        reason: format!("no valid superblock ({})", errors.join("; ")),
    })
}

/// Bytes `from..to` of file `ino` must have crc32c `crc` (a checked append).
struct AppendCheck {
    ino: u64,
    from: u64,
    to: u64,
    crc: u32,
}

/// Mount-time log replay.
struct Replay {
    uuid: Uuid,
    dirs: BTreeMap<String, BTreeMap<String, u64>>,
    files: HashMap<u64, FileMeta>,
    log: Fnode,
    position: u64,
    next_seq: u64,
}

impl Replay {
    fn new(sb: &Superblock) -> Replay {
        Replay {
            uuid: sb.uuid,
            dirs: BTreeMap::new(),
            files: HashMap::new(),
            log: sb.log_fnode.clone(),
            position: 0,
            next_seq: sb.log_first_seq,
        }
    }

    /// Applies transactions until the first frame that fails a check (the torn tail).
    fn run(&mut self, devices: &[Option<BlockDevice>; 3]) -> Result<()> {
        let start = (self.log.clone(), self.next_seq);
        if let Some(bad_seq) = self.run_until(devices, None)? {
            // The last frame committed appended data under the same flush, and the data did not
            // all land: that fsync never returned, so the log ends before its frame.
            self.dirs.clear();
            self.files.clear();
            (self.log, self.next_seq) = start;
            self.run_until(devices, Some(bad_seq))?;
        }
        Ok(())
    }

    /// Replays frames (all, or up to `stop_before`); returns the sequence number of the last
    /// frame if it holds a checked append whose data does not match.
    fn run_until(
        &mut self,
        devices: &[Option<BlockDevice>; 3],
        stop_before: Option<u64>,
    ) -> Result<Option<u64>> {
        // Replay reuses State::apply through a scratch State holding only what apply touches.
        let mut st = State::new(
            LogWriter {
                fnode: self.log.clone(),
                position: 0,
                next_seq: self.next_seq,
            },
            0,
        );
        st.dirs = std::mem::take(&mut self.dirs);
        st.files = std::mem::take(&mut self.files);
        let mut header = vec![0u8; BLOCK_SIZE as usize];
        // Checked appends of the last frame applied, with that frame's sequence number.
        let mut last_checks: Option<(u64, Vec<AppendCheck>)> = None;
        loop {
            if stop_before == Some(st.log.next_seq) {
                break;
            }
            let position = st.log.position;
            if position + BLOCK_SIZE > st.log.fnode.allocated() {
                break;
            }
            let Some(pieces) = map_range(&st.log.fnode.extents, position, BLOCK_SIZE) else {
                break;
            };
            read_into(devices, &pieces, &mut header)?;
            let Some(len) = format::frame_len_from_header(&header) else {
                break;
            };
            if position + len as u64 > st.log.fnode.allocated() {
                break;
            }
            let mut frame = vec![0u8; len];
            let pieces = map_range(&st.log.fnode.extents, position, len as u64)
                .expect("checked against the allocation");
            read_into(devices, &pieces, &mut frame)?;
            let (txn, used) = match format::decode_transaction(&frame, &self.uuid, st.log.next_seq)
            {
                Ok(decoded) => decoded,
                Err(FrameEnd::SeqMismatch { .. })
                | Err(FrameEnd::UuidMismatch)
                | Err(FrameEnd::BadMagic)
                | Err(FrameEnd::HeaderChecksum)
                | Err(FrameEnd::PayloadChecksum { .. })
                | Err(FrameEnd::Truncated)
                | Err(FrameEnd::UnsupportedVersion(_))
                | Err(FrameEnd::BadPayload(_)) => break,
            };
            let mut next_position = position + used as u64;
            let mut next_seq = st.log.next_seq + 1;
            let checks: Vec<AppendCheck> = txn
                .ops
                .iter()
                .filter_map(|op| match op {
                    LogOp::FileAppendChecked {
                        ino,
                        size,
                        data_from,
                        data_crc,
                        ..
                    } => Some(AppendCheck {
                        ino: *ino,
                        from: *data_from,
                        to: *size,
                        crc: *data_crc,
                    }),
                    _ => None,
                })
                .collect();
            last_checks = (!checks.is_empty()).then_some((txn.seq, checks));
            for op in &txn.ops {
                match op {
                    LogOp::Jump { offset } => next_position = *offset,
                    LogOp::JumpSeq { seq } => next_seq = *seq,
                    other => st.apply(other).map_err(|reason| BlueFsError::Corrupt {
                        reason: format!("log transaction {}: {reason}", txn.seq),
                    })?,
                }
            }
            st.log.position = next_position;
            st.log.next_seq = next_seq;
        }
        if let Some((seq, checks)) = last_checks
            && stop_before.is_none()
        {
            for AppendCheck { ino, from, to, crc } in checks {
                let Some(f) = st.files.get(&ino) else {
                    continue;
                };
                if from >= to {
                    continue;
                }
                let start = from / BLOCK_SIZE * BLOCK_SIZE;
                let end = to.next_multiple_of(BLOCK_SIZE);
                let Some(pieces) = map_range(&f.fnode.extents, start, end - start) else {
                    return Ok(Some(seq));
                };
                let mut data = vec![0u8; (end - start) as usize];
                read_into(devices, &pieces, &mut data)?;
                let bytes = &data[(from - start) as usize..(to - start) as usize];
                if crc32c::crc32c(bytes) != crc {
                    return Ok(Some(seq));
                }
            }
        }
        check_no_later_frames(
            devices,
            &st.log.fnode,
            st.log.position,
            &self.uuid,
            st.log.next_seq,
        )?;
        self.dirs = st.dirs;
        self.files = st.files;
        self.log = st.log.fnode;
        self.position = st.log.position;
        self.next_seq = st.log.next_seq;
        Ok(None)
    }
}

/// Replay stopped at `position` expecting frame `next_seq`. A torn tail ends the log there; but a
/// valid later frame of this filesystem means a frame in the middle was damaged (frames are
/// written one at a time, each flushed before the next), and mounting would silently drop
/// committed metadata. Stale frames of earlier logs carry lower sequence numbers.
fn check_no_later_frames(
    devices: &[Option<BlockDevice>; 3],
    log: &Fnode,
    position: u64,
    uuid: &Uuid,
    next_seq: u64,
) -> Result<()> {
    const SCAN_CHUNK: u64 = 1 << 20;
    let allocated = log.allocated();
    let mut at = position;
    while at < allocated {
        let len = (allocated - at).min(SCAN_CHUNK);
        let Some(pieces) = map_range(&log.extents, at, len) else {
            break;
        };
        let mut chunk = vec![0u8; len as usize];
        read_into(devices, &pieces, &mut chunk)?;
        for (i, block) in chunk.chunks(BLOCK_SIZE as usize).enumerate() {
            if let Some((frame_uuid, seq)) = format::peek_frame(block)
                && &frame_uuid == uuid
                && seq > next_seq
            {
                return Err(BlueFsError::Corrupt {
                    reason: format!(
                        "log frame {next_seq} at log offset {position} is damaged, yet frame \
                         {seq} follows at offset {}: committed metadata would be lost",
                        at + (i as u64) * BLOCK_SIZE
                    ),
                });
            }
        }
        at += len;
    }
    Ok(())
}

/// Reads device ranges, one after the other, into consecutive parts of `out`.
fn read_into(devices: &[Option<BlockDevice>; 3], pieces: &[Extent], out: &mut [u8]) -> Result<()> {
    let mut at = 0usize;
    for p in pieces {
        let len = p.length as usize;
        device_of(devices, p.device)?.read(p.offset, &mut out[at..at + len])?;
        at += len;
    }
    Ok(())
}

/// The device an extent names; an error when the filesystem references a device that was not
/// given at mount.
fn device_of(devices: &[Option<BlockDevice>; 3], id: DeviceId) -> Result<&BlockDevice> {
    devices[id.index()]
        .as_ref()
        .ok_or(BlueFsError::WrongDevice {
            device: id.name(),
            reason: "is referenced but was not given".into(),
        })
}

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
    fn new(fs: BlueFs, path: String, ino: u64, size: u64, tail: Vec<u8>) -> FileWriter {
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

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The size including buffered bytes.
    pub fn size(&self) -> u64 {
        self.flushed + self.buffer.len() as u64
    }

    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn append_zeroes(&mut self, mut len: u64) -> Result<()> {
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

/// A file open for reading.
pub struct FileReader {
    fs: BlueFs,
    ino: u64,
    position: u64,
}

impl FileReader {
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

    pub fn skip(&mut self, n: u64) {
        self.position = self.position.saturating_add(n);
    }

    pub fn position(&self) -> u64 {
        self.position
    }
}

impl Drop for FileReader {
    fn drop(&mut self) {
        self.fs.inner.release_reader(self.ino);
    }
}

impl std::fmt::Debug for BlueFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlueFs")
            .field("uuid", &uuid_text(&self.inner.uuid))
            .finish()
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

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("ino", &self.ino)
            .field("position", &self.position)
            .finish()
    }
}
