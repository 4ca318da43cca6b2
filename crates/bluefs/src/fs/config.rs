//! What a filesystem is made of and how it behaves: its devices and its tunables.

use bluepoll_nvme::Device;

use crate::error::{BlueFsError, Result};
use crate::format::{self, BLOCK_SIZE, DeviceId};

/// Devices a filesystem is made of.
#[derive(Clone)]
pub struct Devices {
    /// The WAL device, if any: the log and RocksDB's WAL files (`*.log`) go there first.
    pub wal: Option<Device>,
    /// The DB device, always needed: the superblock slots, RocksDB's other files, and the log
    /// when there is no WAL device.
    pub db: Device,
    /// The SLOW device, if any: files of `.slow` directories, and what no longer fits the
    /// faster devices. With shared space (`shared_slow` at mkfs and mount) another owner
    /// manages its space and BlueFS writes no label there.
    pub slow: Option<Device>,
}

impl Devices {
    /// A filesystem on one device, which serves as the DB device.
    pub fn only(db: Device) -> Devices {
        Devices {
            wal: None,
            db,
            slow: None,
        }
    }

    pub(super) fn get(&self, id: DeviceId) -> Option<&Device> {
        match id {
            DeviceId::Wal => self.wal.as_ref(),
            DeviceId::Db => Some(&self.db),
            DeviceId::Slow => self.slow.as_ref(),
        }
    }
}

/// How a filesystem is laid out (allocation units, fixed at mkfs) and how it behaves: the log's
/// reserve and growth, when it is compacted, inline appends, the read cache. mkfs and mount
/// refuse an inconsistent one with `InvalidConfig`. All sizes are in bytes.
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
    pub(super) fn validate(&self) -> Result<()> {
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
