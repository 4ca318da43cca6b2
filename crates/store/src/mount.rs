//! A store's life on its devices: mkfs, expand, mount (label, BlueFS, freelist, RocksDB, the
//! deferred-write journal, then the reactors, shards and kv-sync thread) and umount; and the
//! helpers mount shares with fsck.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::format::{
    self, FREELIST_LANES, Label, OMAP_MAX_KEY, PREFIX_COLL, PREFIX_DEFERRED, PREFIX_FREELIST,
    PREFIX_REFS, SUPER_KEY, Superblock,
};
use super::kv_sync::{self, KvQueue};
use super::perf::KvSyncPerf as KvPerf;
use super::space::{self, BlueFsSpace, StoreSpace};
use super::throttle::Throttle;
use super::{
    DeviceUris, Params, Result, Shared, Store, StoreConfig, StoreError, StoreHandle, oneshot, shard,
};
use bluepoll_base::id::{Uuid, new_uuid, now_ns, uuid_text};
use bluepoll_base::sync::lock;
use bluepoll_bluefs::{BlueFs, Devices};
use bluepoll_kv::{KeyRange, Kv, WriteBatch};
use bluepoll_nvme::{Device, DeviceClaim, IoCmd};
use bluepoll_reactor::{ReactorConfig, Reactors};

/// Where BlueFS's DB area starts on a main device that holds it.
const DB_AREA_OFFSET: u64 = 1 << 20;
/// Bytes before the first allocatable byte on a main device with a DB device of its own.
const LABEL_AREA: u64 = 64 << 10;

/// The opened devices of a store.
#[derive(Clone, Debug)]
pub struct StoreDevices {
    /// The main device: object data (and BlueFS's spillover, and its DB area when `db` is None).
    pub slow: Device,
    /// BlueFS's DB device (RocksDB's tables), when the store has one of its own.
    pub db: Option<Device>,
    /// BlueFS's WAL device (RocksDB's WAL and BlueFS's log), when the store has one.
    pub wal: Option<Device>,
}

impl StoreDevices {
    /// Opens the devices `uris` names. Fails with [`StoreError::Config`] when no main device is
    /// given, and with the device's error when one cannot be opened. Opening claims nothing:
    /// mkfs, mount and fsck claim the devices when they start.
    pub fn open(uris: &DeviceUris) -> Result<StoreDevices> {
        if uris.slow.is_empty() {
            return Err(StoreError::Config {
                reason: "no main (slow) device given".into(),
            });
        }
        let open = |uri: &String| Device::open(uri).map_err(StoreError::from);
        Ok(StoreDevices {
            slow: open(&uris.slow)?,
            db: uris.db.as_ref().map(open).transpose()?,
            wal: uris.wal.as_ref().map(open).transpose()?,
        })
    }

    /// Claims every device for `owner` (see [`Device::claim`]): a mounted store, mkfs and fsck
    /// hold their devices, so a second one — in this process or another — fails with EBUSY.
    pub fn claim(&self, owner: &str) -> Result<Vec<DeviceClaim>> {
        let mut claims = vec![self.slow.claim(owner)?];
        for device in [&self.db, &self.wal].into_iter().flatten() {
            claims.push(device.claim(owner)?);
        }
        Ok(claims)
    }

    /// Only a main device.
    pub fn only(slow: Device) -> StoreDevices {
        StoreDevices {
            slow,
            db: None,
            wal: None,
        }
    }
}

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// Who holds a device, as another claimant is told.
pub(crate) fn owner_name(what: &str) -> String {
    format!("bluepoll {what} (pid {})", std::process::id())
}

/// Reads or writes one block-aligned range of a device through a short-lived queue pair
/// (mkfs, mount and fsck, before the reactors run).
pub(crate) fn device_io(device: &Device, write: bool, offset: u64, data: &mut [u8]) -> Result<()> {
    let info = device.info();
    let bs = info.block_size as u64;
    let mut qp = device.queue_pair(1)?;
    let chunk = (info.max_transfer_bytes as usize).min(1 << 20) / bs as usize * bs as usize;
    let mut done = 0usize;
    while done < data.len() {
        let n = (data.len() - done).min(chunk);
        let mut buf = bluepoll_nvme::DmaBuf::new(n)?;
        let lba = (offset + done as u64) / bs;
        let blocks = (n as u64 / bs) as u32;
        let cmd = if write {
            buf.copy_from_slice(&data[done..done + n]);
            IoCmd::write(lba, blocks, buf, 0)
        } else {
            IoCmd::read(lba, blocks, buf, 0)
        };
        let c = qp.execute(cmd)?;
        if !c.status.is_success() {
            return Err(StoreError::WrongDevice {
                device: "main",
                reason: format!(
                    "{} of {n} bytes at byte {} failed: {}",
                    if write { "write" } else { "read" },
                    offset + done as u64,
                    c.status
                ),
            });
        }
        if !write && let Some(buf) = c.buf {
            data[done..done + n].copy_from_slice(&buf[..n]);
        }
        done += n;
    }
    Ok(())
}

pub(crate) fn flush_device(device: &Device) -> Result<()> {
    if !device.info().ops.flush {
        return Ok(());
    }
    let mut qp = device.queue_pair(1)?;
    let c = qp.execute(IoCmd::flush(0))?;
    if c.status.is_success() {
        Ok(())
    } else {
        Err(StoreError::WrongDevice {
            device: "main",
            reason: format!("flush failed: {}", c.status),
        })
    }
}

/// Reads the store label in block 0 of a main device. Fails with [`StoreError::WrongDevice`]
/// when the device cannot be read or block 0 holds no valid store label (damaged, or not a
/// store's main device).
pub fn read_label(main: &Device) -> Result<Label> {
    let bs = main.info().block_size as usize;
    let mut block = vec![0u8; format::LABEL_SIZE.max(bs)];
    device_io(main, false, 0, &mut block)?;
    format::decode_label(&block).map_err(|e| StoreError::WrongDevice {
        device: "main",
        reason: format!("no bluepoll store label ({e})"),
    })
}

/// What mount and fsck open before any shard runs.
pub(crate) struct Opened {
    pub label: Label,
    pub fs: BlueFs,
    pub space: Arc<StoreSpace>,
    /// BlueFS's extents on the main device.
    pub bluefs_extents: Vec<(u64, u64)>,
}

/// Label, BlueFS (with the shared allocator), BlueFS's space marked used.
pub(crate) fn open_bluefs(devices: &StoreDevices, config: &StoreConfig) -> Result<Opened> {
    let main = &devices.slow;
    let label = read_label(main)?;
    let size = main.info().capacity_bytes();
    if size < label.device_size {
        return Err(StoreError::WrongDevice {
            device: "main",
            reason: format!("shrank from {} to {size} bytes", label.device_size),
        });
    }
    let db = if label.db_len > 0 {
        if devices.db.is_some() {
            return Err(StoreError::WrongDevice {
                device: "db",
                reason:
                    "this store keeps its DB inside the main device; no DB device was made for it"
                        .into(),
            });
        }
        main.slice(label.db_offset, label.db_len)?
    } else {
        devices.db.clone().ok_or_else(|| StoreError::WrongDevice {
            device: "db",
            reason: "this store was made with a DB device of its own; give it".into(),
        })?
    };
    let reserve = config.bluefs_reserve_for(label.device_size);
    let space = Arc::new(StoreSpace::with_ratios(
        label.device_size,
        label.min_alloc_size as u64,
        label.data_start,
        reserve,
        config.nearfull_ratio,
        config.full_ratio,
    ));
    let mounted = BlueFs::mount(
        Devices {
            wal: devices.wal.clone(),
            db,
            slow: Some(main.clone()),
        },
        config.bluefs.clone(),
        Some(Arc::new(BlueFsSpace(Arc::clone(&space)))),
    )?;
    let bluefs_extents: Vec<(u64, u64)> = mounted
        .slow_extents
        .iter()
        .map(|e| (e.offset, e.length))
        .collect();
    space.mark_used(&bluefs_extents)?;
    Ok(Opened {
        label,
        fs: mounted.fs,
        space,
        bluefs_extents,
    })
}

/// RocksDB on a mounted BlueFS, opened read-write only once nothing stale can land in space
/// it may take. A read-only open comes first (BlueStore's order) to read the freelist, since
/// RocksDB's own writes at a read-write open (a new WAL, the MANIFEST, a flush of the
/// recovered memtable) may take main-device space from the same allocator; and to apply the
/// deferred writes a crash left in the journal — one of them may target space a committed
/// later transaction freed, so it must land before that space can be handed to anyone. Their
/// records are deleted once RocksDB is open read-write. Returns the deferred writes applied.
pub(crate) fn open_kv(
    fs: &BlueFs,
    space: &StoreSpace,
    label: &Label,
    config: &StoreConfig,
    main: &Device,
) -> Result<(Kv, Loaded, u64)> {
    let (loaded, (applied, journal)) = {
        let kv = Kv::open_read_only(fs, &config.kv)?;
        (load_records(&kv, label)?, apply_deferred(&kv, main)?)
    };
    space
        .mark_used(&loaded.allocated)
        .map_err(|e| StoreError::Corrupt {
            reason: format!("freelist overlaps BlueFS's space: {e}"),
        })?;
    let kv = Kv::open(fs, &config.kv)?;
    if !journal.is_empty() {
        let mut batch = WriteBatch::new();
        for key in journal {
            batch.delete(&key);
        }
        kv.submit(batch, true)?;
    }
    Ok((kv, loaded, applied))
}

/// The store's records read before anything writes: superblock, freelist, references.
pub(crate) struct Loaded {
    pub superblock: Superblock,
    /// Allocated runs per the freelist, as (offset, length).
    pub allocated: Vec<(u64, u64)>,
    pub refs: HashMap<u64, u32>,
}

pub(crate) fn load_records(kv: &Kv, label: &Label) -> Result<Loaded> {
    let value = kv.get(SUPER_KEY)?.ok_or_else(|| StoreError::Corrupt {
        reason: "the metadata store has no store superblock (not a bluepoll store, or mkfs did not finish)"
            .into(),
    })?;
    let superblock = format::decode_superblock(&value)?;
    if superblock.fsid != label.fsid {
        return Err(StoreError::WrongDevice {
            device: "db",
            reason: format!(
                "its metadata belongs to store {}, the main device to {}",
                uuid_text(&superblock.fsid),
                uuid_text(&label.fsid)
            ),
        });
    }
    // Both records carry the units every extent and checksum is counted in; were they to
    // disagree, one of them is damaged and every offset derived from it would be wrong.
    if (superblock.min_alloc_size, superblock.csum_block)
        != (label.min_alloc_size, label.csum_block)
    {
        return Err(StoreError::Corrupt {
            reason: format!(
                "the label says allocation unit {} and checksum block {}, the store superblock {} and {}",
                label.min_alloc_size,
                label.csum_block,
                superblock.min_alloc_size,
                superblock.csum_block
            ),
        });
    }
    let au = label.min_alloc_size as u64;
    let mut allocated: Vec<(u64, u64)> = Vec::new();
    for item in kv.scan(&KeyRange::prefix(&[PREFIX_FREELIST]), None) {
        let (key, value) = item?;
        let group = format::key_number(&key)?;
        let lanes = format::lanes_of(&value, FREELIST_LANES);
        if lanes.len() > FREELIST_LANES {
            return Err(StoreError::Corrupt {
                reason: format!("freelist key {group} has {} lanes", lanes.len()),
            });
        }
        for (unit, n) in space::runs_of_group(group, &lanes) {
            match allocated.last_mut() {
                Some((o, l)) if *o + *l == unit * au => *l += n * au,
                _ => allocated.push((unit * au, n * au)),
            }
        }
    }
    let mut refs = HashMap::new();
    for item in kv.scan(&KeyRange::prefix(&[PREFIX_REFS]), None) {
        let (key, value) = item?;
        let unit = format::key_number(&key)?;
        let count = format::lanes_of(&value, 1)[0];
        if count > 0 && count < u32::MAX as u64 {
            refs.insert(unit, count as u32);
        }
    }
    Ok(Loaded {
        superblock,
        allocated,
        refs,
    })
}

/// Applies (and flushes) the deferred writes in the journal; returns how many, and the
/// journal's keys for the caller to delete. Idempotent: a crash before the deletion applies
/// them again at the next mount.
fn apply_deferred(kv: &Kv, main: &Device) -> Result<(u64, Vec<Vec<u8>>)> {
    let mut keys = Vec::new();
    let mut writes = 0;
    for item in kv.scan(&KeyRange::prefix(&[PREFIX_DEFERRED]), None) {
        let (key, value) = item?;
        for (phys, mut data) in format::decode_deferred(&value)? {
            device_io(main, true, phys, &mut data)?;
            writes += 1;
        }
        keys.push(key);
    }
    if !keys.is_empty() {
        flush_device(main)?;
    }
    Ok((writes, keys))
}

impl Store {
    /// Makes a new store on the devices `config.devices` names.
    pub fn mkfs(config: &StoreConfig) -> Result<Uuid> {
        let devices = StoreDevices::open(&config.devices)?;
        Store::mkfs_on(&devices, config)
    }

    /// Makes a new store: the main device's label, BlueFS (its DB area inside the main device
    /// when there is no DB device), and the store's records in a new RocksDB.
    pub fn mkfs_on(devices: &StoreDevices, config: &StoreConfig) -> Result<Uuid> {
        config.validate()?;
        let _claims = devices.claim(&owner_name("mkfs"))?;
        let main = &devices.slow;
        let info = main.info();
        if info.block_size as u64 > config.csum_block {
            return Err(StoreError::WrongDevice {
                device: "main",
                reason: format!(
                    "block size {} is larger than the checksum block {}",
                    info.block_size, config.csum_block
                ),
            });
        }
        let size = info.capacity_bytes();
        let au = config.min_alloc_size;
        let (db, db_offset, db_len) = match &devices.db {
            Some(d) => (d.clone(), 0, 0),
            None => {
                let len = config.db_size_for(size);
                if DB_AREA_OFFSET + len >= size {
                    return Err(StoreError::WrongDevice {
                        device: "main",
                        reason: format!(
                            "{size} bytes cannot hold a {len}-byte DB area and data (give a DB device or db_size)"
                        ),
                    });
                }
                (main.slice(DB_AREA_OFFSET, len)?, DB_AREA_OFFSET, len)
            }
        };
        let data_start = (if db_len > 0 {
            db_offset + db_len
        } else {
            LABEL_AREA
        })
        .next_multiple_of(au);
        let reserve = config.bluefs_reserve_for(size);
        if size < data_start + reserve + 64 * au {
            return Err(StoreError::WrongDevice {
                device: "main",
                reason: format!(
                    "{size} bytes is too small: data starts at {data_start}, and {reserve} bytes stay free for BlueFS"
                ),
            });
        }
        let fsid = new_uuid();
        let created_ns = now_ns();
        let label = Label {
            fsid,
            device_size: size,
            created_ns,
            db_offset,
            db_len,
            data_start,
            min_alloc_size: au as u32,
            csum_block: config.csum_block as u32,
        };
        let mut block = format::encode_label(&label);
        block.resize(format::LABEL_SIZE.max(info.block_size as usize), 0);
        device_io(main, true, 0, &mut block)?;
        let bluefs_devices = Devices {
            wal: devices.wal.clone(),
            db,
            slow: Some(main.clone()),
        };
        BlueFs::mkfs(&bluefs_devices, &config.bluefs, true)?;
        flush_device(main)?;
        let opened = open_bluefs(devices, config)?;
        let kv = Kv::open(&opened.fs, &config.kv)?;
        let mut batch = WriteBatch::new();
        batch.put(
            SUPER_KEY,
            &format::encode_superblock(&Superblock {
                fsid,
                min_alloc_size: au as u32,
                csum_block: config.csum_block as u32,
                shard_span: config.extent_shard_span as u32,
                created_ns,
            }),
        );
        batch.put(OMAP_MAX_KEY, &format::encode_u64_record(1));
        kv.submit(batch, true)?;
        drop(kv);
        opened.fs.umount()?;
        Ok(fsid)
    }

    /// Grows the store onto a main device that became larger (a grown file, volume or
    /// partition; the store must not be mounted): the label takes the device's new size, and
    /// the new space is free, since the freelist records only allocated space. One label
    /// write: a crash leaves the old size or the new one. Returns (old size, new size).
    pub fn expand_on(devices: &StoreDevices) -> Result<(u64, u64)> {
        let _claims = devices.claim(&owner_name("expand"))?;
        let main = &devices.slow;
        let mut label = read_label(main)?;
        let size = main.info().capacity_bytes();
        let old = label.device_size;
        if size < old {
            return Err(StoreError::WrongDevice {
                device: "main",
                reason: format!("shrank from {old} to {size} bytes"),
            });
        }
        if size == old {
            return Ok((old, size));
        }
        label.device_size = size;
        let mut block = format::encode_label(&label);
        block.resize(format::LABEL_SIZE.max(main.info().block_size as usize), 0);
        device_io(main, true, 0, &mut block)?;
        flush_device(main)?;
        Ok((old, size))
    }

    /// Mounts the store on the devices `config.devices` names.
    pub fn mount(config: StoreConfig) -> Result<Store> {
        let devices = StoreDevices::open(&config.devices)?;
        Store::mount_on(devices, config)
    }

    /// Mounts: label, BlueFS, the freelist (read from a read-only open of RocksDB before
    /// anything may allocate — BlueStore's order, because RocksDB's own writes may take main
    /// device space from the same allocator), RocksDB, the deferred-write journal replayed,
    /// then one reactor and shard per CPU and the kv-sync thread.
    pub fn mount_on(devices: StoreDevices, config: StoreConfig) -> Result<Store> {
        config.validate()?;
        let claims = devices.claim(&owner_name("a mounted store"))?;
        let opened = open_bluefs(&devices, &config)?;
        let Opened {
            label, fs, space, ..
        } = opened;
        let (kv, loaded, _) = open_kv(&fs, &space, &label, &config, &devices.slow)?;
        space.load_refs(loaded.refs);
        let omap_max = match kv.get(OMAP_MAX_KEY)? {
            Some(v) => format::decode_u64_record("omap id record", &v)?,
            None => 1,
        };
        let mut colls: Vec<(String, u32)> = Vec::new();
        for item in kv.scan(&KeyRange::prefix(&[PREFIX_COLL]), None) {
            let (key, value) = item?;
            let name = String::from_utf8(key[1..].to_vec()).map_err(|_| StoreError::Corrupt {
                reason: "a collection name is not UTF-8".into(),
            })?;
            colls.push((name, format::decode_coll(&value)?));
        }
        let next_cid = colls.iter().map(|c| c.1).max().map_or(1, |m| m + 1);
        let class = devices.slow.info().class;
        let params = Params {
            au: label.min_alloc_size as u64,
            csum_block: label.csum_block as u64,
            shard_span: loaded.superblock.shard_span as u64,
            deferred_size: config.deferred_size_for(class),
            cost_per_io: config.cost_per_io_for(class),
        };
        let shards = config.cpus.len();
        let mut reactor_config = ReactorConfig::new(config.cpus.clone());
        reactor_config.pin = config.pin;
        reactor_config.idle.spin = config.idle_spin;
        reactor_config.mailbox_capacity = 4096;
        let reactors = Reactors::start(reactor_config)?;
        let shared = Arc::new(Shared {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            params,
            fsid: label.fsid,
            main: devices.slow.clone(),
            kv,
            fs,
            space,
            kv_queue: KvQueue::new(shards, 8192),
            kv_perf: Mutex::new(KvPerf::default()),
            reactors: reactors.handle(),
            shards,
            throttle: Throttle::new(config.throttle_bytes),
            deferred_throttle: Throttle::new(config.throttle_deferred_bytes),
            next_cid: AtomicU32::new(next_cid),
            next_omap: AtomicU64::new(omap_max),
            omap_needed: AtomicU64::new(omap_max),
            deferred_seq: AtomicU64::new(1),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            callback_panics: AtomicU64::new(0),
            unmounting: AtomicBool::new(false),
            stopped_shards: Mutex::new(0),
            shard_stopped: Condvar::new(),
            config,
            _claims: claims,
        });
        let kv_thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("bluepoll-kv-sync".into())
                .spawn(move || kv_sync::run(shared, omap_max))
                .map_err(|e| StoreError::Failed {
                    reason: format!("cannot start the kv-sync thread: {e}"),
                })?
        };
        let store = Store {
            handle: StoreHandle {
                shared: Arc::clone(&shared),
            },
            reactors: Mutex::new(Some(reactors)),
            kv_thread: Mutex::new(Some(kv_thread)),
        };
        let mut per_shard: Vec<Vec<(String, u32)>> = vec![Vec::new(); shards];
        for c in colls {
            per_shard[store.shard_of(&c.0)].push(c);
        }
        let mut waits = Vec::new();
        for (index, colls) in per_shard.into_iter().enumerate() {
            let (tx, rx) = oneshot::channel::<Result<()>>();
            let shared = Arc::clone(&shared);
            store.shared.reactors.send(index, move |cx| {
                tx.send(shard::Shard::start(cx, index, shared, colls));
            })?;
            waits.push(rx);
        }
        for rx in waits {
            rx.wait().unwrap_or(Err(StoreError::Unmounting))?;
        }
        Ok(store)
    }

    /// A handle for other threads (and for code on the store's reactors).
    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// Waits for everything in flight (deferred writes applied and their records gone), stops
    /// the reactors and the kv-sync thread, closes RocksDB and BlueFS. An error says the store
    /// had stopped taking changes (the last committed state is what a mount will find).
    pub fn umount(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        let Some(reactors) = lock(&self.reactors).take() else {
            return Ok(());
        };
        self.handle.shared.unmounting.store(true, Ordering::SeqCst);
        let id = self.handle.shared.id;
        for index in 0..self.handle.shared.shards {
            let shared = Arc::clone(&self.handle.shared);
            let sent = self.handle.shared.reactors.send(index, move |_cx| {
                let found = shard::with_current(id, |s| s.stopping = true);
                if found.is_none() {
                    shared.shard_stopped();
                }
            });
            if sent.is_err() {
                self.handle.shared.shard_stopped();
            }
        }
        {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut stopped = lock(&self.handle.shared.stopped_shards);
            while *stopped < self.handle.shared.shards && Instant::now() < deadline {
                stopped = self
                    .shared
                    .shard_stopped
                    .wait_timeout(stopped, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        self.handle.shared.kv_queue.shutdown();
        if let Some(t) = lock(&self.kv_thread).take() {
            let _ = t.join();
        }
        drop(reactors.shutdown());
        match self.handle.shared.failure() {
            Some(reason) => Err(StoreError::Failed { reason }),
            None => Ok(()),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
