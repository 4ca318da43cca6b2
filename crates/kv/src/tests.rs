//! The metadata store on BlueFS: round trips, ordering, reopen, and an exported copy opened by
//! stock RocksDB.

use super::*;
use bluepoll_bluefs::{BlueFsConfig, Devices};
use bluepoll_nvme::Device;

fn mem_devices() -> Devices {
    Devices {
        wal: Some(Device::open("mem:256M").unwrap()),
        db: Device::open("mem:1G").unwrap(),
        slow: None,
    }
}

fn mount(devices: &Devices, mkfs: bool) -> BlueFs {
    let config = BlueFsConfig::default();
    if mkfs {
        BlueFs::mkfs(devices, &config, false).unwrap();
    }
    BlueFs::mount(devices.clone(), config, None).unwrap().fs
}

#[test]
fn put_get_merge_delete_range_and_ordered_scans() {
    let devices = mem_devices();
    let fs = mount(&devices, true);
    let kv = Kv::open(&fs, &KvConfig::default()).unwrap();
    let mut batch = WriteBatch::new();
    for i in 0..100u32 {
        batch.put(format!("a/{i:03}").as_bytes(), &i.to_le_bytes());
        batch.put(format!("b/{i:03}").as_bytes(), b"x");
    }
    batch.merge_add(b"counter", 5);
    kv.submit(batch, true).unwrap();
    let mut batch = WriteBatch::new();
    batch.merge_add(b"counter", 7);
    // Lanes: bit 3 of lane 0 and bit 0 of lane 2 set, then bit 3 cleared by a wrapping add.
    batch.merge_lanes(b"lanes", &8u64.to_le_bytes());
    let mut wide = vec![0u8; 24];
    wide[16] = 1;
    batch.merge_lanes(b"lanes", &wide);
    batch.merge_lanes(b"lanes", &8u64.wrapping_neg().to_le_bytes());
    batch.delete(b"a/050");
    batch.delete_range(b"b/010", b"b/090");
    kv.submit(batch, false).unwrap();

    assert_eq!(kv.get(b"a/007").unwrap(), Some(7u32.to_le_bytes().to_vec()));
    assert_eq!(kv.get(b"a/050").unwrap(), None);
    assert_eq!(
        kv.get(b"counter").unwrap(),
        Some(12u64.to_le_bytes().to_vec())
    );
    let mut lanes = vec![0u8; 24];
    lanes[16] = 1;
    assert_eq!(kv.get(b"lanes").unwrap(), Some(lanes));
    let got = kv.multi_get([&b"a/001"[..], b"b/050", b"b/095"]).unwrap();
    assert_eq!(
        got,
        vec![Some(1u32.to_le_bytes().to_vec()), None, Some(b"x".to_vec())]
    );

    let a: Vec<Vec<u8>> = kv
        .scan(&KeyRange::prefix(b"a/"), None)
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(a.len(), 99);
    assert!(a.windows(2).all(|w| w[0] < w[1]));
    let b: Vec<Vec<u8>> = kv
        .scan(&KeyRange::prefix(b"b/"), Some(b"b/005"))
        .map(|r| r.unwrap().0)
        .collect();
    let expect: Vec<Vec<u8>> = (5..10)
        .chain(90..100)
        .map(|i| format!("b/{i:03}").into_bytes())
        .collect();
    assert_eq!(b, expect);
    let bounded = KeyRange {
        lower: Some(b"a/010".to_vec()),
        upper: Some(b"a/013".to_vec()),
        prefix: None,
    };
    assert_eq!(kv.scan(&bounded, None).count(), 3);
}

#[test]
fn a_million_random_keys_survive_reopen_in_order() {
    let devices = mem_devices();
    let fs = mount(&devices, true);
    let config = KvConfig {
        write_buffer_size: 8 << 20,
        ..KvConfig::default()
    };
    let count = 1_000_000u64;
    let key_of = |i: u64| {
        // A bijection of 0..2^64 scatters the keys; the value names the index.
        (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995).to_be_bytes()
    };
    {
        let kv = Kv::open(&fs, &config).unwrap();
        let mut batch = WriteBatch::new();
        for i in 0..count {
            batch.put(&key_of(i), &i.to_le_bytes());
            if batch.len() == 1000 {
                kv.submit(std::mem::take(&mut batch), false).unwrap();
            }
        }
        kv.submit(batch, true).unwrap();
    }
    drop(fs);
    let fs = mount(&devices, false);
    let kv = Kv::open(&fs, &config).unwrap();
    for i in (0..count).step_by(997) {
        assert_eq!(
            kv.get(&key_of(i)).unwrap(),
            Some(i.to_le_bytes().to_vec()),
            "key {i}"
        );
    }
    let mut seen = 0u64;
    let mut last: Option<Vec<u8>> = None;
    for item in kv.scan(&KeyRange::default(), None) {
        let (key, value) = item.unwrap();
        let i = u64::from_le_bytes(value.try_into().unwrap());
        assert_eq!(key, key_of(i));
        assert!(
            last.as_ref().is_none_or(|l| *l < key),
            "out of order at {i}"
        );
        last = Some(key);
        seen += 1;
    }
    assert_eq!(seen, count);
    kv.verify_checksums().unwrap();
}

#[test]
fn level_aware_placement_keeps_the_wal_on_wal_and_old_levels_on_slow() {
    let devices = Devices {
        wal: Some(Device::open("mem:256M").unwrap()),
        db: Device::open("mem:256M").unwrap(),
        slow: Some(Device::open("mem:1G").unwrap()),
    };
    let fs = mount(&devices, true);
    let config = KvConfig {
        write_buffer_size: 1 << 20,
        db_target_bytes: Some(4 << 20),
        ..KvConfig::default()
    };
    let kv = Kv::open(&fs, &config).unwrap();
    let mut rng = bluepoll_base::rand::Rng::new(3);
    let mut value = vec![0u8; 1000];
    for b in 0..64u64 {
        let mut batch = WriteBatch::new();
        for j in 0..512u64 {
            rng.fill_bytes(&mut value);
            batch.put(&(b * 512 + j).to_be_bytes(), &value);
        }
        kv.submit(batch, b % 8 == 0).unwrap();
    }
    let mut batch = WriteBatch::new();
    batch.put(b"last", b"synced");
    kv.submit(batch, true).unwrap();
    let usage = fs.usage();
    let wal = usage.devices[DeviceId::Wal.index()].as_ref().unwrap();
    assert!(
        wal.by_kind[0] > 0,
        "the WAL files are not on the WAL device: {usage:?}"
    );
    kv.flush().unwrap();
    kv.compact();
    let names = |dir: &str| fs.readdir(dir).unwrap_or_default();
    assert!(
        names(WAL_DIR).iter().all(|n| n.ends_with(".log")),
        "{:?}",
        names(WAL_DIR)
    );
    assert!(!names(WAL_DIR).is_empty());
    let slow_tables = names(SLOW_DIR)
        .iter()
        .filter(|n| n.ends_with(".sst"))
        .count();
    assert!(
        slow_tables > 0,
        "no table went to SLOW: db {:?}",
        names(DB_DIR)
    );
    assert!(names(DB_DIR).iter().any(|n| n == "CURRENT"));
    let usage = fs.usage();
    let slow = usage.devices[DeviceId::Slow.index()].as_ref().unwrap();
    // 32 MB of values against a 4 MiB DB target: how much lands on SLOW depends on when
    // compactions ran, but it is more than the DB target.
    assert!(slow.size - slow.free > 4 << 20, "{usage:?}");
    for k in (0..64 * 512u64).step_by(101) {
        assert_eq!(
            kv.get(&k.to_be_bytes()).unwrap().map(|v| v.len()),
            Some(1000),
            "key {k}"
        );
    }
}

/// A write workload with memtable flushes and compactions on `fault:` devices — three batches
/// in four synced, the rest not — power-cut at the `cut_at`-th device flush. After remount and
/// reopen: no batch is there in part, every value is whole, what is there is a prefix of the
/// batches written, and it reaches at least the last batch whose synced write returned; every
/// table's checksums verify. Returns whether the cut came, and how many unflushed device
/// writes it lost or tore.
fn kv_crash_run(seed: u64, cut_at: u64) -> (bool, u64) {
    let faults = format!("seed={seed},torn=0.5,survive=0.3");
    let open = |size: &str| Device::open(&format!("fault:{faults}+mem:{size}")).unwrap();
    let devices = Devices {
        wal: Some(open("64M")),
        db: open("256M"),
        slow: None,
    };
    let fs = mount(&devices, true);
    let config = KvConfig {
        write_buffer_size: 64 << 10, // a memtable flush every few batches, compactions soon
        error_retry_interval: std::time::Duration::from_millis(5),
        ..KvConfig::default()
    };
    let kv = Kv::open(&fs, &config).unwrap();
    let controls = fail_flush_at(&devices, cut_at);
    let mut rng = bluepoll_base::rand::Rng::new(seed);
    // Batches whose synced write returned (with every one before them), and batches written.
    let mut durable = 0u64;
    let mut attempted = 0u64;
    let mut cut = false;
    for b in 0..400u64 {
        let mut batch = WriteBatch::new();
        for j in 0..KEYS_PER_BATCH {
            batch.put(&batch_key(b, j), &batch_value(seed, b, j));
        }
        let sync = rng.below(4) != 0;
        attempted = b + 1;
        if kv.submit(batch, sync).is_err() {
            cut = true;
            break;
        }
        if sync {
            durable = b + 1;
        }
    }
    drop(kv);
    drop(fs);
    let mut damaged = 0;
    for c in &controls {
        c.disarm_all();
        let report = c.power_cut().unwrap();
        damaged += report.writes_lost + report.writes_torn;
    }
    let fs = BlueFs::mount(devices, BlueFsConfig::default(), None)
        .unwrap_or_else(|e| panic!("seed {seed} cut {cut_at}: BlueFS mount failed: {e}"))
        .fs;
    let kv = Kv::open(&fs, &config)
        .unwrap_or_else(|e| panic!("seed {seed} cut {cut_at}: RocksDB open failed: {e}"));
    let mut present_batches = Vec::new();
    for b in 0..attempted {
        let keys: Vec<[u8; 16]> = (0..KEYS_PER_BATCH).map(|j| batch_key(b, j)).collect();
        let found = kv.multi_get(keys.iter().map(|k| &k[..])).unwrap();
        let present = found.iter().filter(|v| v.is_some()).count() as u64;
        assert!(
            present == 0 || present == KEYS_PER_BATCH,
            "seed {seed} cut {cut_at}: batch {b} is there in part ({present} of {KEYS_PER_BATCH})"
        );
        if present > 0 {
            present_batches.push(b);
        }
        for (j, v) in found.iter().enumerate() {
            if let Some(v) = v {
                assert!(
                    *v == batch_value(seed, b, j as u64),
                    "seed {seed} cut {cut_at}: batch {b} key {j}: the value is not what was written"
                );
            }
        }
    }
    let prefix = present_batches.len() as u64;
    assert!(
        present_batches.iter().copied().eq(0..prefix),
        "seed {seed} cut {cut_at}: the batches there are not a prefix of those written: {present_batches:?}"
    );
    assert!(
        prefix >= durable,
        "seed {seed} cut {cut_at}: synced batches lost: {prefix} there, {durable} synced"
    );
    kv.verify_checksums()
        .unwrap_or_else(|e| panic!("seed {seed} cut {cut_at}: {e}"));
    assert!(
        fs.fsck().errors.is_empty(),
        "seed {seed} cut {cut_at}: BlueFS fsck"
    );
    (cut, damaged)
}

/// The value of key `j` of batch `b` in run `seed`: 100 to 999 bytes, all derived from the
/// three numbers, so a check compares every byte.
fn batch_value(seed: u64, b: u64, j: u64) -> Vec<u8> {
    let mut rng = bluepoll_base::rand::Rng::new(seed.wrapping_mul(0x9e37_79b9) ^ (b * 1000 + j));
    let mut value = vec![0u8; 100 + rng.below(900) as usize];
    rng.fill_bytes(&mut value);
    value
}

const KEYS_PER_BATCH: u64 = 8;

fn batch_key(b: u64, j: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&b.to_be_bytes());
    k[8..].copy_from_slice(&j.to_be_bytes());
    k
}

/// 200 runs (`BLUEPOLL_KV_CRASH_RUNS` for more).
#[test]
fn power_cuts_under_rocksdb_lose_no_synced_batch_and_tear_none() {
    let runs: u64 = std::env::var("BLUEPOLL_KV_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    assert!(runs > 0, "BLUEPOLL_KV_CRASH_RUNS=0 runs nothing");
    let (mut cuts, mut damaged) = (0, 0);
    for seed in 0..runs {
        // Alternate devices: the WAL device flushes once per synced batch, the DB device only
        // when a memtable flush or a compaction syncs a table (a few dozen times per run).
        let device = seed % 2;
        let nth = if device == 0 {
            (seed * 7) % 100
        } else {
            (seed * 7) % 20
        };
        let (cut, lost_or_torn) = kv_crash_run(seed, 2 * nth + device);
        cuts += u64::from(cut);
        damaged += lost_or_torn;
    }
    assert!(
        cuts * 100 >= runs * 95,
        "only {cuts} power cuts in {runs} runs"
    );
    assert!(
        runs < 20 || damaged > 0,
        "{runs} power cuts lost or tore no unflushed device write"
    );
    eprintln!(
        "kv crash test: {runs} runs, {cuts} power cuts ({damaged} unflushed device writes lost \
         or torn), 0 lost, 0 torn, checksums clean"
    );
}

#[test]
fn lanes_add_wrapping_and_pad_short_values() {
    let mut sum = Vec::new();
    add_lanes(&mut sum, &[1, 0, 0, 0, 0, 0, 0, 0, 2]);
    add_lanes(&mut sum, &u64::MAX.to_le_bytes());
    assert_eq!(sum, vec![0, 2]);
}

/// Arms the `cut_at`-th flush point, spread over the devices, to fail; returns every device's
/// fault control (to cut the power afterwards).
fn fail_flush_at(devices: &Devices, cut_at: u64) -> Vec<bluepoll_nvme::FaultControl> {
    let controls: Vec<_> = [devices.wal.as_ref(), Some(&devices.db)]
        .into_iter()
        .flatten()
        .map(|d| d.fault_control().unwrap())
        .collect();
    controls[(cut_at % controls.len() as u64) as usize].arm(bluepoll_nvme::EioRule {
        ops: bluepoll_nvme::FaultOps::Flush,
        trigger: bluepoll_nvme::EioTrigger::Nth(1 + cut_at / controls.len() as u64),
    });
    controls
}
