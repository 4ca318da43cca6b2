//! mkfs and mount: labels, the superblock slots, and the state a mount rebuilds from the log.

use bluepoll_base::id::{new_uuid, now_ns, uuid_text};
use bluepoll_base::sync::lock;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::config::{BlueFsConfig, Devices};
use super::data::write_durable;
use super::replay::Replay;
use super::{BlueFs, FIRST_FILE_INO, Inner, LOG_INO, LogWriter, State};
use crate::alloc::{ExtentAllocator, SharedAllocator, SharedSpace};
use crate::cache::ReadCache;
use crate::error::{BlueFsError, Result};
use crate::format::{
    self, BLOCK_SIZE, DeviceId, Extent, Fnode, Label, LogOp, RESERVED_PREFIX, SUPERBLOCK_OFFSETS,
    Superblock, Transaction, Uuid,
};
use crate::io::BlockDevice;

/// The result of a mount.
pub struct Mounted {
    /// The mounted filesystem.
    pub fs: BlueFs,
    /// BlueFS's extents on the shared SLOW device: its owner marks them used.
    pub slow_extents: Vec<Extent>,
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

    /// The filesystem's uuid, chosen at mkfs and recorded in every label.
    pub fn uuid(&self) -> Uuid {
        self.inner.uuid
    }

    /// Drops this handle; an error says the filesystem turned read-only while mounted (the
    /// reason is in it), so changes since then were refused. It commits nothing: open writers
    /// commit at their own fsync or close, and other clones and open files keep the filesystem
    /// alive. The log needs no closing.
    pub fn umount(self) -> Result<()> {
        let st = lock(&self.inner.state);
        if let Some(reason) = &st.read_only {
            return Err(BlueFsError::ReadOnly {
                reason: reason.clone(),
            });
        }
        Ok(())
    }
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
