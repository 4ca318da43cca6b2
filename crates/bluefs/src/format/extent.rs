//! Device ids, extents and fnodes: where a file's bytes are. The superblock (the log's fnode)
//! and the log ops embed them; their byte encoding is in `codec`.

/// A device BlueFS puts files on. The discriminant is the byte stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceId {
    /// The write-ahead-log device, the fastest and optional: RocksDB's WAL files (`*.log`) go
    /// here first, and so does the BlueFS log when the device is there.
    Wal = 0,
    /// The DB device, always there (the only one when there is one): RocksDB's tables and other
    /// files, the superblock slots, and the log when there is no WAL device.
    Db = 1,
    /// The slow (main) device, optional: files of directories ending in `.slow`, and what no
    /// longer fits the faster devices. Its space may belong to the object store, which lends it.
    Slow = 2,
}

impl DeviceId {
    /// Every device, in on-disk byte order (the order of per-device arrays).
    pub const ALL: [DeviceId; 3] = [DeviceId::Wal, DeviceId::Db, DeviceId::Slow];

    /// Index into per-device arrays (`Superblock::alloc_units`, …): the on-disk byte.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The device whose on-disk byte is `v`; None for anything but 0, 1 and 2.
    pub const fn from_u8(v: u8) -> Option<DeviceId> {
        match v {
            0 => Some(DeviceId::Wal),
            1 => Some(DeviceId::Db),
            2 => Some(DeviceId::Slow),
            _ => None,
        }
    }

    /// Lowercase name (`wal`, `db`, `slow`), as messages and tools print it.
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
    /// The device the bytes are on.
    pub device: DeviceId,
    /// Byte offset of the run's first byte on that device.
    pub offset: u64,
    /// Bytes in the run.
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
    /// Inode number, unique among the filesystem's files: 1 is the log itself, files are
    /// numbered from 2.
    pub ino: u64,
    /// File size in bytes; never more than [`Fnode::allocated`].
    pub size: u64,
    /// Last modification, in ns since the Unix epoch.
    pub mtime_ns: u64,
    /// Where the file's bytes are, in file order: its byte 0 is the first byte of the first
    /// extent, and each extent continues where the previous one ended.
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
