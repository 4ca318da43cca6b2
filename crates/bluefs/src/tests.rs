//! BlueFS tests, modelled on Ceph's test_bluefs.cc, plus crash consistency through `fault:`
//! devices.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::format::BLOCK_SIZE;
use bluepoll_base::rand::Rng;
use bluepoll_nvme::Device;

fn mem(size: &str) -> Device {
    Device::open(&format!("mem:{size}")).unwrap()
}

fn small_config() -> BlueFsConfig {
    BlueFsConfig {
        alloc_units: [64 << 10; 3],
        log_reserve: 1 << 20,
        log_grow: 256 << 10,
        compact_min_bytes: 1 << 20,
        compact_ratio: 5,
        async_compaction: true,
        inline_append_max: 16 << 10,
        // Small, so tests often write log-only bytes out with later data.
        inline_backlog: 64 << 10,
        // Small, so tests evict.
        read_cache_bytes: 4 << 20,
    }
}

fn fresh(devices: &Devices, config: &BlueFsConfig) -> BlueFs {
    BlueFs::mkfs(devices, config, false).unwrap();
    BlueFs::mount(devices.clone(), config.clone(), None)
        .unwrap()
        .fs
}

fn remount(fs: BlueFs, devices: &Devices, config: &BlueFsConfig) -> BlueFs {
    drop(fs);
    BlueFs::mount(devices.clone(), config.clone(), None)
        .unwrap()
        .fs
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn write_file(fs: &BlueFs, path: &str, data: &[u8]) {
    let mut w = fs.create(path).unwrap();
    w.append(data).unwrap();
    w.close().unwrap();
}

fn assert_clean(fs: &BlueFs) {
    let report = fs.fsck();
    assert!(report.errors.is_empty(), "fsck: {:?}", report.errors);
}

#[test]
fn write_and_read_from_one_byte_to_64_mib() {
    let devices = Devices::only(mem("256M"));
    let config = small_config();
    let fs = fresh(&devices, &config);
    fs.mkdir("db").unwrap();
    let sizes = [
        1usize,
        511,
        4096,
        4097,
        65536 + 3,
        1 << 20,
        (8 << 20) + 17,
        64 << 20,
    ];
    for (i, size) in sizes.iter().enumerate() {
        write_file(&fs, &format!("db/f{i}"), &pattern(i as u64, *size));
    }
    let fs = remount(fs, &devices, &config);
    for (i, size) in sizes.iter().enumerate() {
        let data = fs.read_file(&format!("db/f{i}")).unwrap();
        assert_eq!(data.len(), *size);
        assert!(data == pattern(i as u64, *size), "file {i} differs");
    }
    // Positional reads at odd offsets.
    let r = fs.open_read("db/f6").unwrap();
    let whole = pattern(6, sizes[6]);
    for offset in [0u64, 1, 4095, 4096, 100_000, sizes[6] as u64 - 5] {
        let mut buf = vec![0u8; 10_000];
        let n = r.read_at(offset, &mut buf).unwrap();
        let expect = &whole[offset as usize..(offset as usize + 10_000).min(whole.len())];
        assert_eq!(&buf[..n], expect, "at {offset}");
    }
    assert_clean(&fs);
}

#[test]
fn small_appends_with_fsync_survive_remount() {
    let devices = Devices::only(mem("64M"));
    let config = small_config();
    let fs = fresh(&devices, &config);
    fs.mkdir("wal").unwrap();
    let mut w = fs.create("wal/000001.log").unwrap();
    let mut expect = Vec::new();
    for i in 0..600u64 {
        let chunk = pattern(i, 1 + (i as usize * 37) % 300);
        w.append(&chunk).unwrap();
        expect.extend_from_slice(&chunk);
        w.fsync().unwrap();
    }
    drop(w);
    let usage = fs.usage();
    assert!(
        usage.compactions > 0,
        "600 fsyncs should have compacted the log"
    );
    let fs = remount(fs, &devices, &config);
    assert_eq!(fs.read_file("wal/000001.log").unwrap(), expect);
    assert_clean(&fs);
}

#[test]
fn every_kind_of_op_replays() {
    let devices = Devices::only(mem("64M"));
    let config = small_config();
    let fs = fresh(&devices, &config);
    fs.mkdir("a").unwrap();
    fs.mkdir("b").unwrap();
    fs.mkdir("gone").unwrap();
    write_file(&fs, "a/one", b"first");
    write_file(&fs, "a/two", &pattern(2, 100_000));
    write_file(&fs, "a/three", &pattern(3, 70_000));
    fs.rename("a/one", "b/uno").unwrap();
    fs.link("a/two", "b/dos").unwrap();
    fs.unlink("a/two").unwrap();
    fs.truncate("a/three", 5000).unwrap();
    fs.rmdir("gone").unwrap();
    let mut w = fs.open_append("b/uno").unwrap();
    w.append(b" and more").unwrap();
    w.close().unwrap();
    let before = (fs.list_dirs(), fs.list_files());
    let fs = remount(fs, &devices, &config);
    assert_eq!((fs.list_dirs(), fs.list_files()), before);
    assert_eq!(fs.read_file("b/uno").unwrap(), b"first and more");
    assert_eq!(fs.read_file("b/dos").unwrap(), pattern(2, 100_000));
    assert_eq!(fs.read_file("a/three").unwrap(), pattern(3, 70_000)[..5000]);
    assert_eq!(fs.stat("b/dos").unwrap().nlink, 1);
    assert!(fs.stat("a/two").unwrap_err().is_not_found());
    assert_clean(&fs);
}

#[test]
fn truncate_releases_and_keeps_the_right_extents() {
    let devices = Devices::only(mem("64M"));
    let config = small_config();
    let fs = fresh(&devices, &config);
    fs.mkdir("d").unwrap();
    let data = pattern(9, 1 << 20);
    write_file(&fs, "d/f", &data);
    let free_before = fs.usage().devices[1].clone().unwrap().free;
    fs.truncate("d/f", 100_000).unwrap();
    let stat = fs.stat("d/f").unwrap();
    assert_eq!(stat.size, 100_000);
    assert_eq!(stat.allocated, 128 << 10, "two 64 KiB units kept");
    let free_after = fs.usage().devices[1].clone().unwrap().free;
    assert_eq!(free_after - free_before, (1 << 20) - (128 << 10));
    fs.truncate("d/f", 300_000).unwrap();
    let grown = fs.read_file("d/f").unwrap();
    assert_eq!(&grown[..100_000], &data[..100_000]);
    assert!(
        grown[100_000..].iter().all(|&b| b == 0),
        "growth reads as zeroes"
    );
    let fs = remount(fs, &devices, &config);
    assert_eq!(fs.read_file("d/f").unwrap(), grown);
    assert_clean(&fs);
}

/// Space a file gives up while a reader has it open is freed only when that reader closes: an
/// in-flight read must never see the space reused.
#[test]
fn space_given_up_under_an_open_reader_is_freed_when_it_closes() {
    let devices = Devices::only(mem("64M"));
    let config = small_config();
    let fs = fresh(&devices, &config);
    fs.mkdir("d").unwrap();
    write_file(&fs, "d/f", &pattern(4, 1 << 20));
    let free = || fs.usage().devices[1].clone().unwrap().free;
    let reader = fs.open_read("d/f").unwrap();
    let before = free();
    fs.truncate("d/f", 4096).unwrap();
    assert_eq!(free(), before, "nothing freed while the reader is open");
    assert_clean(&fs);
    fs.create("d/f").unwrap().close().unwrap();
    assert_eq!(free(), before);
    drop(reader);
    assert_eq!(free() - before, 1 << 20, "all of it freed at close");
    assert_clean(&fs);
    let fs = remount(fs, &devices, &config);
    assert_eq!(fs.stat("d/f").unwrap().size, 0);
    assert_clean(&fs);
}

#[test]
fn rename_replaces_an_existing_file_and_frees_its_space() {
    let devices = Devices::only(mem("64M"));
    let config = small_config();
    let fs = fresh(&devices, &config);
    fs.mkdir("d").unwrap();
    write_file(&fs, "d/new", b"new contents");
    write_file(&fs, "d/CURRENT", &pattern(1, 1 << 20));
    let free_before = fs.usage().devices[1].clone().unwrap().free;
    fs.rename("d/new", "d/CURRENT").unwrap();
    assert_eq!(fs.read_file("d/CURRENT").unwrap(), b"new contents");
    assert!(!fs.exists("d/new"));
    let free_after = fs.usage().devices[1].clone().unwrap().free;
    assert_eq!(free_after - free_before, 1 << 20);
    let fs = remount(fs, &devices, &config);
    assert_eq!(fs.read_file("d/CURRENT").unwrap(), b"new contents");
    assert_eq!(fs.list_files(), vec!["d/CURRENT".to_string()]);
    assert_clean(&fs);
}

#[test]
fn compaction_while_other_threads_append_and_link() {
    let devices = Devices::only(mem("128M"));
    let config = small_config();
    let fs = fresh(&devices, &config);
    fs.mkdir("db").unwrap();
    fs.mkdir("links").unwrap();
    let writers: Vec<_> = (0..3u64)
        .map(|t| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                let path = format!("db/t{t}.log");
                let mut w = fs.create(&path).unwrap();
                let mut expect = Vec::new();
                for i in 0..200u64 {
                    let chunk = pattern(t * 1000 + i, 700);
                    w.append(&chunk).unwrap();
                    expect.extend_from_slice(&chunk);
                    w.fsync().unwrap();
                    if i % 50 == 0 {
                        fs.link(&path, &format!("links/t{t}-{i}")).unwrap();
                    }
                }
                w.close().unwrap();
                (path, expect)
            })
        })
        .collect();
    for i in 0..20 {
        if i % 2 == 0 {
            fs.compact().unwrap();
        } else {
            fs.compact_async().unwrap();
        }
    }
    let expected: Vec<(String, Vec<u8>)> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(fs.usage().compactions >= 20);
    let fs = remount(fs, &devices, &config);
    for (path, data) in &expected {
        assert_eq!(&fs.read_file(path).unwrap(), data, "{path}");
    }
    assert_eq!(fs.readdir("links").unwrap().len(), 12);
    assert_clean(&fs);
}

#[test]
fn the_log_grows_its_runway_many_times() {
    let devices = Devices::only(mem("64M"));
    let config = BlueFsConfig {
        log_grow: 64 << 10,
        compact_min_bytes: u64::MAX, // no compaction: the log must grow
        ..small_config()
    };
    let fs = fresh(&devices, &config);
    fs.mkdir("d").unwrap();
    for i in 0..300 {
        write_file(&fs, &format!("d/f{i}"), &pattern(i, 10));
    }
    assert!(fs.usage().log_bytes > 1 << 20, "{:?}", fs.usage());
    let fs = remount(fs, &devices, &config);
    assert_eq!(fs.readdir("d").unwrap().len(), 300);
    assert_eq!(fs.read_file("d/f299").unwrap(), pattern(299, 10));
    assert_clean(&fs);
}

#[test]
fn log_growth_rides_in_the_frame_that_needs_it() {
    let devices = Devices::only(mem("64M"));
    let config = BlueFsConfig {
        log_grow: 64 << 10,
        compact_min_bytes: u64::MAX,
        inline_append_max: 0, // one block per frame
        ..small_config()
    };
    let fs = fresh(&devices, &config);
    fs.mkdir("db.wal").unwrap();
    let mut w = fs.create("db.wal/000001.log").unwrap();
    let before = fs.usage();
    let syncs = 100u64;
    for i in 0..syncs {
        w.append(&pattern(i, 4096)).unwrap();
        w.fsync().unwrap();
    }
    let after = fs.usage();
    // Each small fsync is one block-sized frame; a growth costs no frame of its own.
    assert!(after.log_bytes >= before.log_bytes + (4 << 16), "{after:?}");
    assert_eq!(after.log_position - before.log_position, syncs * BLOCK_SIZE);
    w.close().unwrap();
    let fs = remount(fs, &devices, &config);
    let data = fs.read_file("db.wal/000001.log").unwrap();
    for i in 0..syncs {
        let at = i as usize * 4096;
        assert_eq!(data[at..at + 4096], pattern(i, 4096)[..], "block {i}");
    }
    assert_clean(&fs);
}

#[test]
fn small_synced_appends_travel_in_the_log_record_alone() {
    let devices = Devices::only(mem("64M"));
    let config = BlueFsConfig {
        compact_min_bytes: u64::MAX,
        ..small_config()
    };
    let fs = fresh(&devices, &config);
    fs.mkdir("db.wal").unwrap();
    let mut w = fs.create("db.wal/000001.log").unwrap();
    let mut expected = Vec::new();
    let before = fs.usage().log_position;
    for i in 0..8 {
        let chunk = pattern(i, 4096);
        w.append(&chunk).unwrap();
        w.fsync().unwrap();
        expected.extend_from_slice(&chunk);
        // Readers see bytes that so far exist only in the log.
        assert_eq!(fs.read_file("db.wal/000001.log").unwrap(), expected);
    }
    // One 8 KiB frame (header, record, the 4 KiB) per fsync: nothing else was written to
    // the log, and the file's own extents were not written at all yet.
    assert_eq!(fs.usage().log_position - before, 8 * 2 * BLOCK_SIZE);
    let mut block = vec![0u8; 4096];
    let r = fs.open_read("db.wal/000001.log").unwrap();
    r.read_at(4096, &mut block).unwrap();
    assert_eq!(block, pattern(1, 4096));
    drop(r);
    // Leak the writer: its bytes are never written out by close; replay brings them back.
    std::mem::forget(w);
    let fs = BlueFs::mount(devices.clone(), config.clone(), None)
        .unwrap()
        .fs;
    assert_eq!(fs.read_file("db.wal/000001.log").unwrap(), expected);
    assert_clean(&fs);
    // A compaction writes them to the file's extents before it drops the log that held them:
    // after it, the file reads the same with no inline record left to replay.
    fs.compact().unwrap();
    assert_eq!(fs.usage().compactions, 1);
    let fs = remount(fs, &devices, &config);
    assert_eq!(fs.read_file("db.wal/000001.log").unwrap(), expected);
}

#[test]
fn cached_reads_follow_every_change_of_a_file() {
    let devices = Devices::only(mem("64M"));
    let config = small_config();
    let fs = fresh(&devices, &config);
    fs.mkdir("db").unwrap();
    let read_all = |path: &str| {
        // Small reads, so they go through the cache.
        let r = fs.open_read(path).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 5000];
        loop {
            let n = r.read_at(out.len() as u64, &mut buf).unwrap();
            if n == 0 {
                break out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    };
    let mut model = pattern(1, 150_000);
    write_file(&fs, "db/a.sst", &model);
    assert_eq!(read_all("db/a.sst"), model);
    assert_eq!(read_all("db/a.sst"), model, "from the cache");

    let mut w = fs.open_append("db/a.sst").unwrap();
    let more = pattern(2, 30_000);
    w.append(&more).unwrap();
    w.close().unwrap();
    model.extend_from_slice(&more);
    assert_eq!(read_all("db/a.sst"), model, "after an append");

    fs.truncate("db/a.sst", 70_000).unwrap();
    model.truncate(70_000);
    assert_eq!(read_all("db/a.sst"), model, "after a truncate");
    let mut w = fs.open_append("db/a.sst").unwrap();
    let regrown = pattern(3, 90_000);
    w.append(&regrown).unwrap();
    w.close().unwrap();
    model.extend_from_slice(&regrown);
    assert_eq!(
        read_all("db/a.sst"),
        model,
        "after a regrowth over cut space"
    );

    let fresh_bytes = pattern(4, 120_000);
    write_file(&fs, "db/a.sst", &fresh_bytes);
    assert_eq!(read_all("db/a.sst"), fresh_bytes, "after create over it");

    write_file(&fs, "db/old.log", &pattern(5, 80_000));
    assert_eq!(read_all("db/old.log").len(), 80_000);
    let mut w = fs.reuse("db/old.log", "db/new.log").unwrap();
    let reused = pattern(6, 10_000);
    w.append(&reused).unwrap();
    w.close().unwrap();
    assert_eq!(read_all("db/new.log"), reused, "after reuse");
}

#[test]
fn inline_settings_are_checked() {
    let devices = Devices::only(mem("64M"));
    for bad in [
        BlueFsConfig {
            inline_backlog: 9 << 20,
            ..small_config()
        },
        BlueFsConfig {
            inline_append_max: 17 << 20,
            log_grow: 64 << 20,
            log_reserve: 128 << 20,
            ..small_config()
        },
    ] {
        let e = BlueFs::mkfs(&devices, &bad, false).unwrap_err();
        assert!(matches!(e, BlueFsError::InvalidConfig { .. }), "{e}");
    }
}

#[test]
fn a_failed_flush_in_compaction_stops_all_changes() {
    let devices = Devices::only(Device::open("fault:seed=1+mem:64M").unwrap());
    let config = BlueFsConfig {
        compact_min_bytes: u64::MAX,
        ..small_config()
    };
    let fs = fresh(&devices, &config);
    fs.mkdir("db.wal").unwrap();
    let mut w = fs.create("db.wal/000001.log").unwrap();
    w.append(b"inline").unwrap();
    w.fsync().unwrap();
    // Close writes the bytes to the file without a flush: from here the log's copy counts
    // until a flush succeeds.
    w.close().unwrap();
    devices
        .db
        .fault_control()
        .unwrap()
        .arm(bluepoll_nvme::EioRule {
            ops: bluepoll_nvme::FaultOps::Flush,
            trigger: bluepoll_nvme::EioTrigger::Nth(1),
        });
    assert!(fs.compact().is_err());
    devices.db.fault_control().unwrap().disarm_all();
    assert!(matches!(
        fs.mkdir("other"),
        Err(BlueFsError::ReadOnly { .. })
    ));
    assert!(fs.compact().is_err(), "the old log must stay");
}

#[test]
fn log_only_bytes_survive_large_appends_truncation_compaction_and_remount() {
    let devices = Devices::only(mem("64M"));
    let config = small_config(); // 64 KiB backlog, async compaction
    let fs = fresh(&devices, &config);
    fs.mkdir("db").unwrap();
    let mut w = fs.create("db/MANIFEST-000001").unwrap();
    let mut expected: Vec<u8> = Vec::new();
    let mut rng = Rng::new(7);
    for step in 0..400u64 {
        match rng.below(20) {
            // Mostly small unaligned records, each synced, as RocksDB's WAL writes them.
            0..=14 => {
                let chunk = pattern(step, 1 + rng.below(300) as usize);
                w.append(&chunk).unwrap();
                w.fsync().unwrap();
                expected.extend_from_slice(&chunk);
            }
            15 | 16 => {
                let chunk = pattern(step, 20_000 + rng.below(50_000) as usize);
                w.append(&chunk).unwrap();
                w.fsync().unwrap();
                expected.extend_from_slice(&chunk);
            }
            17 => {
                let size = expected.len() as u64 - rng.below(600).min(expected.len() as u64);
                w.truncate(size).unwrap();
                expected.truncate(size as usize);
            }
            18 => fs.compact().unwrap(),
            _ => {
                let at = rng.below(expected.len() as u64 + 1);
                let mut buf = vec![0u8; 5000];
                let n = fs
                    .open_read("db/MANIFEST-000001")
                    .unwrap()
                    .read_at(at, &mut buf)
                    .unwrap();
                let end = (at as usize + 5000).min(expected.len());
                assert_eq!(
                    &buf[..n],
                    &expected[at as usize..end],
                    "step {step}: read at {at}"
                );
            }
        }
    }
    assert_eq!(fs.read_file("db/MANIFEST-000001").unwrap(), expected);
    std::mem::forget(w);
    let fs = BlueFs::mount(devices.clone(), config.clone(), None)
        .unwrap()
        .fs;
    assert_eq!(fs.read_file("db/MANIFEST-000001").unwrap(), expected);
    // Appending after the stop rewrites the last partial block, which may exist only in the
    // log.
    let mut w = fs.open_append("db/MANIFEST-000001").unwrap();
    for step in 0..3 {
        let chunk = pattern(1000 + step, 777);
        w.append(&chunk).unwrap();
        w.fsync().unwrap();
        expected.extend_from_slice(&chunk);
    }
    w.close().unwrap();
    fs.compact().unwrap();
    let fs = remount(fs, &devices, &config);
    assert_eq!(fs.read_file("db/MANIFEST-000001").unwrap(), expected);
    assert_clean(&fs);
}

#[test]
fn data_spills_to_the_shared_slow_device_on_demand() {
    let devices = Devices {
        wal: Some(mem("8M")),
        db: mem("8M"),
        slow: Some(mem("256M")),
    };
    let config = small_config();
    BlueFs::mkfs(&devices, &config, true).unwrap();
    let owner = SharedAllocator::new(ExtentAllocator::new(
        DeviceId::Slow,
        256 << 20,
        64 << 10,
        format::RESERVED_PREFIX,
    ));
    let shared: Arc<dyn SharedSpace> = Arc::new(owner.clone());
    let fs = BlueFs::mount(devices.clone(), config.clone(), Some(shared.clone()))
        .unwrap()
        .fs;
    fs.mkdir("db").unwrap();
    fs.mkdir("db.slow").unwrap();
    write_file(&fs, "db/000010.sst", &pattern(10, 20 << 20));
    write_file(&fs, "db.slow/000011.sst", &pattern(11, 1 << 20));
    let usage = fs.usage();
    assert!(usage.spillover_bytes >= 12 << 20, "{usage:?}");
    let slow_used_by_fs =
        (256 << 20) - format::RESERVED_PREFIX.next_multiple_of(64 << 10) - owner.free_bytes();
    drop(fs);
    // A fresh owner (as after a restart) learns BlueFS's extents from mount, and nothing else.
    let owner = SharedAllocator::new(ExtentAllocator::new(
        DeviceId::Slow,
        256 << 20,
        64 << 10,
        format::RESERVED_PREFIX,
    ));
    let mounted = BlueFs::mount(devices, config, Some(Arc::new(owner.clone()))).unwrap();
    let listed: u64 = mounted.slow_extents.iter().map(|e| e.length).sum();
    assert_eq!(listed, slow_used_by_fs);
    owner.mark_used(&mounted.slow_extents).unwrap();
    assert_eq!(
        mounted.fs.read_file("db/000010.sst").unwrap(),
        pattern(10, 20 << 20)
    );
    assert_clean(&mounted.fs);
}

#[test]
fn full_devices_answer_no_space_and_recover() {
    let devices = Devices {
        wal: Some(mem("8M")),
        db: mem("16M"),
        slow: None,
    };
    let config = small_config();
    let fs = fresh(&devices, &config);
    fs.mkdir("db").unwrap();
    let chunk = pattern(1, 1 << 20);
    let mut written = 0;
    let error = loop {
        let path = format!("db/fill{written}");
        let mut w = match fs.create(&path) {
            Ok(w) => w,
            Err(e) => break e,
        };
        let result = w.append(&chunk).and_then(|()| w.fsync());
        drop(w);
        match result {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
    };
    assert!(error.is_no_space(), "{error}");
    assert!(written >= 10, "only {written} MiB fitted");
    // The log still commits (its reserve): metadata ops work while data cannot be written.
    fs.mkdir("still-works").unwrap();
    for i in 0..written / 2 {
        fs.unlink(&format!("db/fill{i}")).unwrap();
    }
    write_file(&fs, "db/after", &chunk);
    let fs = remount(fs, &devices, &config);
    assert_eq!(fs.read_file("db/after").unwrap(), chunk);
    assert!(fs.dir_exists("still-works"));
    assert_clean(&fs);
}

fn overwrite_block(device: &Device, offset: u64, byte: u8) {
    let mut qp = device.queue_pair(1).unwrap();
    let mut buf = bluepoll_nvme::DmaBuf::new(4096).unwrap();
    buf.fill(byte);
    let bs = device.info().block_size;
    let cmd = bluepoll_nvme::IoCmd::write(offset / bs as u64, 4096 / bs, buf, 0);
    assert!(qp.execute(cmd).unwrap().status.is_success());
}

#[test]
fn superblock_slots_alternate_and_damage_is_reported_not_rolled_back() {
    let devices = Devices::only(mem("64M"));
    let config = small_config();
    let fs = fresh(&devices, &config);
    fs.mkdir("d").unwrap();
    write_file(&fs, "d/f", b"kept");
    fs.compact().unwrap(); // generation 2, second slot; the first is invalidated
    write_file(&fs, "d/g", b"also kept");
    drop(fs);
    // The stale slot holds nothing a mount could fall back to: damaging it changes nothing.
    overwrite_block(&devices.db, format::SUPERBLOCK_OFFSETS[0], 0xa5);
    let fs = BlueFs::mount(devices.clone(), config.clone(), None)
        .unwrap()
        .fs;
    assert_eq!(fs.read_file("d/g").unwrap(), b"also kept");
    fs.compact().unwrap(); // generation 3, back in the first slot
    drop(fs);
    // Damage the current superblock: the mount fails naming it, rather than mounting the
    // filesystem as it was two compactions ago.
    overwrite_block(&devices.db, format::SUPERBLOCK_OFFSETS[0], 0x5a);
    let e = BlueFs::mount(devices, config, None).err().unwrap();
    let text = e.to_string();
    assert!(matches!(e, BlueFsError::Corrupt { .. }), "{text}");
    assert!(text.contains("superblock"), "{text}");
}

/// Where the log's frames are, from the device (test-only view of the first log extent).
fn first_log_extent(devices: &Devices) -> (u64, u64) {
    let db = &devices.db;
    let mut qp = db.queue_pair(1).unwrap();
    let bs = db.info().block_size;
    let buf = bluepoll_nvme::DmaBuf::new(4096).unwrap();
    let cmd =
        bluepoll_nvme::IoCmd::read(format::SUPERBLOCK_OFFSETS[0] / bs as u64, 4096 / bs, buf, 0);
    let done = qp.execute(cmd).unwrap();
    let sb = format::decode_superblock(&done.buf.unwrap()).unwrap();
    let e = sb.log_fnode.extents[0];
    (e.offset, e.length)
}

#[test]
fn damage_in_the_middle_of_the_log_fails_the_mount_a_torn_tail_does_not() {
    let devices = Devices::only(mem("64M"));
    let config = BlueFsConfig {
        compact_min_bytes: u64::MAX,
        ..small_config()
    };
    let fs = fresh(&devices, &config);
    fs.mkdir("d").unwrap();
    for i in 0..6 {
        write_file(&fs, &format!("d/f{i}"), &pattern(i, 100));
    }
    let tail = fs.usage().log_position;
    drop(fs);
    let (log_start, _) = first_log_extent(&devices);
    // Garbage just past the last frame: a torn tail. Mount works, nothing is lost.
    overwrite_block(&devices.db, log_start + tail, 0x77);
    let fs = BlueFs::mount(devices.clone(), config.clone(), None)
        .unwrap()
        .fs;
    assert_eq!(fs.readdir("d").unwrap().len(), 6);
    drop(fs);
    // Damage the third frame: later frames exist, so the mount refuses and says where.
    overwrite_block(&devices.db, log_start + 2 * 4096, 0x66);
    let e = BlueFs::mount(devices, config, None).err().unwrap();
    assert!(matches!(e, BlueFsError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("is damaged, yet frame"), "{e}");
}

/// The units mkfs chose are the filesystem's: a mount with another configuration keeps them.
#[test]
fn allocation_units_come_from_the_superblock() {
    let devices = Devices::only(mem("64M"));
    let made = BlueFsConfig {
        alloc_units: [4096; 3],
        ..small_config()
    };
    let fs = fresh(&devices, &made);
    fs.mkdir("d").unwrap();
    write_file(&fs, "d/f", &pattern(1, 5000));
    drop(fs);
    let other = small_config(); // 64 KiB units
    let fs = BlueFs::mount(devices.clone(), other.clone(), None)
        .unwrap()
        .fs;
    assert_eq!(fs.stat("d/f").unwrap().allocated, 8192);
    write_file(&fs, "d/g", &pattern(2, 5000));
    assert_eq!(fs.stat("d/g").unwrap().allocated, 8192);
    assert_clean(&fs);
    let fs = remount(fs, &devices, &other);
    assert_eq!(fs.read_file("d/f").unwrap(), pattern(1, 5000));
    assert_clean(&fs);
}

#[test]
fn paths_and_names_are_checked() {
    let devices = Devices::only(mem("16M"));
    let fs = fresh(&devices, &small_config());
    for bad in ["noslash", "d/", "/x", ""] {
        assert!(
            matches!(fs.create(bad), Err(BlueFsError::InvalidPath { .. })),
            "{bad}"
        );
    }
    assert!(fs.create("missing/f").unwrap_err().is_not_found());
    fs.mkdir("d").unwrap();
    assert!(matches!(fs.mkdir("d"), Err(BlueFsError::Exists { .. })));
    write_file(&fs, "d/f", b"x");
    assert!(matches!(fs.rmdir("d"), Err(BlueFsError::NotEmpty { .. })));
    let _w = fs.open_append("d/f").unwrap();
    assert!(matches!(
        fs.open_append("d/f"),
        Err(BlueFsError::Busy { .. })
    ));
    fs.lock_file("d/LOCK").unwrap();
    assert!(matches!(
        fs.lock_file("d/LOCK"),
        Err(BlueFsError::Busy { .. })
    ));
    fs.unlock_file("d/LOCK").unwrap();
    fs.lock_file("d/LOCK").unwrap();
}

/// With data filling every device, the log lives on its reserve: thousands of metadata commits
/// (far more than the reserve holds without compaction) keep working, and the filesystem mounts.
#[test]
fn the_log_keeps_committing_and_compacting_on_full_devices() {
    let devices = Devices::only(mem("24M"));
    let config = small_config();
    let fs = fresh(&devices, &config);
    fs.mkdir("db").unwrap();
    let chunk = pattern(3, 256 << 10);
    let mut i = 0;
    loop {
        let mut w = fs.create(&format!("db/fill{i}")).unwrap();
        let result = w.append(&chunk).and_then(|()| w.fsync());
        drop(w);
        if let Err(e) = result {
            assert!(e.is_no_space(), "{e}");
            break;
        }
        i += 1;
    }
    let free = fs.usage().devices[1].clone().unwrap().free;
    assert!(
        free < config.log_reserve + chunk.len() as u64,
        "data stopped with {free} bytes free"
    );
    for n in 0..3000 {
        fs.mkdir(&format!("m{n}")).unwrap();
        fs.rmdir(&format!("m{n}")).unwrap();
    }
    assert!(fs.usage().compactions > 0);
    let fs = remount(fs, &devices, &config);
    assert_eq!(fs.list_dirs(), vec!["db".to_string()]);
    assert_eq!(fs.read_file("db/fill0").unwrap(), chunk);
    assert_clean(&fs);
}

#[test]
fn a_device_of_another_filesystem_is_refused() {
    let a = Devices {
        wal: Some(mem("16M")),
        db: mem("16M"),
        slow: None,
    };
    let b = Devices {
        wal: Some(mem("16M")),
        db: mem("16M"),
        slow: None,
    };
    let config = small_config();
    BlueFs::mkfs(&a, &config, false).unwrap();
    BlueFs::mkfs(&b, &config, false).unwrap();
    let mixed = Devices {
        wal: b.wal.clone(),
        db: a.db.clone(),
        slow: None,
    };
    let e = BlueFs::mount(mixed, config.clone(), None).err().unwrap();
    assert!(
        matches!(e, BlueFsError::WrongDevice { device: "wal", .. }),
        "{e}"
    );
    let blank = Devices::only(mem("16M"));
    let e = BlueFs::mount(blank, config, None).err().unwrap();
    assert!(matches!(e, BlueFsError::Format(_)), "{e}");
}

// ---- crash consistency ------------------------------------------------------------------

/// What a crash may leave: the state before the interrupted step or after it.
type Model = BTreeMap<String, Vec<u8>>;

fn snapshot(fs: &BlueFs) -> Model {
    fs.list_files()
        .into_iter()
        .map(|p| {
            let data = fs.read_file(&p).unwrap();
            (p, data)
        })
        .collect()
}

/// One step of the workload, each ending in a commit; returns the model after it.
fn crash_step(fs: &BlueFs, rng: &mut Rng, model: &Model, step: u64) -> Result<Model> {
    let mut next = model.clone();
    let names: Vec<String> = model.keys().cloned().collect();
    let pick = |rng: &mut Rng| names[rng.below(names.len() as u64) as usize].clone();
    match rng.below(10) {
        0..=4 if !names.is_empty() => {
            let path = pick(rng);
            let data = pattern(step, 1 + rng.below(40_000) as usize);
            let mut w = fs.open_append(&path)?;
            w.append(&data)?;
            let result = w.fsync();
            w.close().ok();
            result?;
            next.get_mut(&path).unwrap().extend_from_slice(&data);
        }
        5 if !names.is_empty() => {
            let from = pick(rng);
            let to = format!("{}/r{step}", if rng.below(2) == 0 { "a" } else { "b.log" });
            fs.rename(&from, &to)?;
            let data = next.remove(&from).unwrap();
            next.insert(to, data);
        }
        6 if names.len() > 2 => {
            let path = pick(rng);
            fs.unlink(&path)?;
            next.remove(&path);
        }
        7 if !names.is_empty() => {
            let path = pick(rng);
            let len = model[&path].len() as u64;
            let size = rng.below(len + 1);
            fs.truncate(&path, size)?;
            next.get_mut(&path).unwrap().truncate(size as usize);
        }
        _ => {
            let path = format!("a/n{step}");
            let data = pattern(step, rng.below(9000) as usize);
            let mut w = fs.create(&path)?;
            w.append(&data)?;
            let result = w.fsync();
            w.close().ok();
            result?;
            next.insert(path, data);
        }
    }
    Ok(next)
}

/// A 32 MiB DB and (with `with_wal`) an 8 MiB WAL device on RAM, behind seeded `fault:` layers
/// that tear half and keep 30% of unflushed writes at a power cut.
fn fault_devices(seed: u64, with_wal: bool) -> Devices {
    let faults = format!("seed={seed},torn=0.5,survive=0.3");
    let open = |size: &str| Device::open(&format!("fault:{faults}+mem:{size}")).unwrap();
    Devices {
        wal: with_wal.then(|| open("8M")),
        db: open("32M"),
        slow: None,
    }
}

/// Arms the `cut_at`-th flush point, spread over the devices, to fail; returns every device's
/// fault control (to cut the power afterwards).
pub(crate) fn fail_flush_at(devices: &Devices, cut_at: u64) -> Vec<bluepoll_nvme::FaultControl> {
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

/// The crash workload's long-lived writer, which syncs only now and then.
const UNSYNCED_FILE: &str = "b.log/unsynced.log";

/// Runs a seeded workload on fault devices whose `cut_at`-th flush fails, cuts power there,
/// remounts and checks that the files are exactly as before or after the interrupted step.
/// Returns whether the cut happened (the workload may end first), and how many unflushed device
/// writes it lost or tore.
fn crash_run(seed: u64, cut_at: u64, with_wal: bool) -> (bool, u64) {
    let devices = fault_devices(seed, with_wal);
    let config = BlueFsConfig {
        compact_min_bytes: 256 << 10,
        log_grow: 64 << 10,
        ..small_config()
    };
    let fs = fresh(&devices, &config);
    fs.mkdir("a").unwrap();
    fs.mkdir("b.log").unwrap();
    // Beside the steps, a long-lived writer (a WAL) appends without syncing now and then and
    // syncs later: a cut must leave it every synced byte and then a prefix of the rest, whatever
    // the other steps' commits did meanwhile. It is not part of the model.
    let mut wal = fs.create(UNSYNCED_FILE).unwrap();
    wal.fsync().unwrap();
    let (mut wal_synced, mut wal_written) = (Vec::new(), Vec::new());
    let mut wal_rng = Rng::new(seed ^ 0x5a1);
    let controls = fail_flush_at(&devices, cut_at);
    let mut rng = Rng::new(seed);
    let mut model = Model::new();
    let mut cut = false;
    let mut interrupted: Vec<Model> = Vec::new();
    for step in 0..200 {
        let wal_step = match wal_rng.below(8) {
            0..=1 => {
                let data = pattern(step ^ 0x77, 1 + wal_rng.below(3000) as usize);
                wal_written.extend_from_slice(&data);
                wal.append(&data).map(|()| false)
            }
            2 => wal.fsync().map(|()| true),
            _ => Ok(false),
        };
        match wal_step {
            Ok(true) => wal_synced.clone_from(&wal_written),
            Ok(false) => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
        let before_step = rng.clone();
        match crash_step(&fs, &mut rng, &model, step) {
            Ok(next) => model = next,
            Err(_) => {
                // The step's outcome is unknown: before or after it are both correct.
                interrupted = plan_step(&mut before_step.clone(), &model, step);
                cut = true;
                break;
            }
        }
    }
    std::mem::forget(wal); // a power cut: nobody closes anything
    drop(fs);
    let mut damaged = 0;
    for c in &controls {
        c.disarm_all();
        let report = c.power_cut().unwrap();
        damaged += report.writes_lost + report.writes_torn;
    }
    let mounted = BlueFs::mount(devices, config, None)
        .unwrap_or_else(|e| panic!("seed {seed} cut {cut_at}: mount failed: {e}"));
    let mut found = snapshot(&mounted.fs);
    let wal_found = found.remove(UNSYNCED_FILE).unwrap_or_default();
    assert!(
        wal_found.len() >= wal_synced.len() && wal_written.starts_with(&wal_found),
        "seed {seed} cut {cut_at}: the unsynced writer's file has {} bytes ({} synced, {} \
         written; first difference at {:?})",
        wal_found.len(),
        wal_synced.len(),
        wal_written.len(),
        wal_written.iter().zip(&wal_found).position(|(a, b)| a != b)
    );
    let ok = found == model || interrupted.iter().any(|after| &found == after);
    assert!(
        ok,
        "seed {seed} cut {cut_at}: files after the power cut match neither the state before \
         nor after the interrupted step\nfound:  {:?}\nbefore: {:?}\nafter:  {:?}",
        summary(&found),
        summary(&model),
        interrupted.iter().map(summary).collect::<Vec<_>>()
    );
    let report = mounted.fs.fsck();
    assert!(
        report.errors.is_empty(),
        "seed {seed} cut {cut_at}: fsck: {:?}",
        report.errors
    );
    (cut, damaged)
}

/// The model-only twin of `crash_step`: the same random draws, no I/O. Returns every state the
/// step may leave when it is interrupted (besides the state before it): its result, and for a
/// new file, the file created but still empty (creation and the first fsync are two commits).
fn plan_step(rng: &mut Rng, model: &Model, step: u64) -> Vec<Model> {
    let mut next = model.clone();
    let names: Vec<String> = model.keys().cloned().collect();
    let pick = |rng: &mut Rng| names[rng.below(names.len() as u64) as usize].clone();
    match rng.below(10) {
        0..=4 if !names.is_empty() => {
            let path = pick(rng);
            let data = pattern(step, 1 + rng.below(40_000) as usize);
            next.get_mut(&path).unwrap().extend_from_slice(&data);
        }
        5 if !names.is_empty() => {
            let from = pick(rng);
            let to = format!("{}/r{step}", if rng.below(2) == 0 { "a" } else { "b.log" });
            let data = next.remove(&from).unwrap();
            next.insert(to, data);
        }
        6 if names.len() > 2 => {
            let path = pick(rng);
            next.remove(&path);
        }
        7 if !names.is_empty() => {
            let path = pick(rng);
            let len = model[&path].len() as u64;
            let size = rng.below(len + 1);
            next.get_mut(&path).unwrap().truncate(size as usize);
        }
        _ => {
            let path = format!("a/n{step}");
            let data = pattern(step, rng.below(9000) as usize);
            let mut empty = model.clone();
            empty.insert(path.clone(), Vec::new());
            next.insert(path, data);
            return vec![next, empty];
        }
    }
    vec![next]
}

fn summary(model: &Model) -> Vec<(String, usize)> {
    model.iter().map(|(k, v)| (k.clone(), v.len())).collect()
}

/// 520 runs in the normal suite; `BLUEPOLL_SOAK_SEEDS=N` (scripts/bluefs-soak.sh) runs 2N, from
/// `BLUEPOLL_SOAK_FIRST_SEED` on.
#[test]
fn power_cuts_at_flush_points_lose_nothing_that_was_synced() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seeds = env("BLUEPOLL_SOAK_SEEDS", 260);
    let first = env("BLUEPOLL_SOAK_FIRST_SEED", 0);
    assert!(seeds > 0, "BLUEPOLL_SOAK_SEEDS=0 runs nothing");
    let (mut cuts, mut runs, mut damaged) = (0, 0, 0);
    for seed in first..first + seeds {
        for (i, with_wal) in [false, true].into_iter().enumerate() {
            let cut_at = (seed * 7 + i as u64 * 3) % 120;
            runs += 1;
            let (cut, lost_or_torn) = crash_run(seed * 2 + i as u64, cut_at, with_wal);
            cuts += u64::from(cut);
            damaged += lost_or_torn;
        }
    }
    assert!(
        runs < 20 || damaged > 0,
        "{runs} power cuts lost or tore no unflushed device write"
    );
    assert!(
        cuts * 100 >= runs * 95,
        "only {cuts} power cuts in {runs} runs: the workload ends before most cut points"
    );
    if seeds >= 260 {
        assert!(cuts >= 500, "{cuts} power cuts in {runs} runs");
    }
    eprintln!(
        "bluefs crash test: {runs} runs, {cuts} power cuts ({damaged} unflushed device writes \
         lost or torn), 0 lost, 0 corrupt"
    );
}

/// A long-lived writer making small appends (RocksDB's WAL), most synced, some not, with
/// truncation and compaction on the way, power-cut at its `cut_at`-th flush: after remount the
/// file holds the bytes of every fsync that returned and then a prefix of what was appended
/// after it (or, cut in a truncation, the file before or after it) — nothing synced lost,
/// nothing unwritten, nothing out of order. Returns whether the cut came, and how many
/// unflushed device writes it lost or tore.
fn writer_crash_run(seed: u64, cut_at: u64, with_wal: bool) -> (bool, u64) {
    let devices = fault_devices(seed, with_wal);
    let config = BlueFsConfig {
        compact_min_bytes: 128 << 10,
        log_grow: 64 << 10,
        inline_backlog: 16 << 10,
        ..small_config()
    };
    let fs = fresh(&devices, &config);
    fs.mkdir("db.wal").unwrap();
    let path = "db.wal/000009.log";
    let mut w = fs.create(path).unwrap();
    let controls = fail_flush_at(&devices, cut_at);
    let mut rng = Rng::new(seed);
    // What the last fsync that returned covers, and everything appended since.
    let mut synced: Vec<u8> = Vec::new();
    let mut written: Vec<u8> = Vec::new();
    let mut cut_in_truncate: Option<Vec<u8>> = None;
    let mut cut = false;
    for step in 0..300u64 {
        // Compaction rewrites BlueFS's log, not the file's data: it syncs nothing appended.
        let mut syncs = true;
        let result = match rng.below(16) {
            0..=9 => {
                let chunk = pattern(seed ^ step, 1 + rng.below(500) as usize);
                written.extend_from_slice(&chunk);
                w.append(&chunk).and_then(|()| w.fsync())
            }
            10..=12 => {
                // Not synced: may be lost, in order from its end.
                let chunk = pattern(seed ^ step, 1 + rng.below(2000) as usize);
                written.extend_from_slice(&chunk);
                match w.append(&chunk) {
                    Ok(()) => continue,
                    Err(e) => Err(e),
                }
            }
            13 => {
                let chunk = pattern(seed ^ step, 10_000 + rng.below(30_000) as usize);
                written.extend_from_slice(&chunk);
                w.append(&chunk).and_then(|()| w.fsync())
            }
            14 if written == synced => {
                let size = synced.len() - rng.below(800).min(synced.len() as u64) as usize;
                let mut after = synced.clone();
                after.truncate(size);
                let result = w.truncate(size as u64);
                match result {
                    Ok(()) => written.clone_from(&after),
                    Err(_) => cut_in_truncate = Some(after),
                }
                result
            }
            _ => {
                syncs = false;
                fs.compact()
            }
        };
        match result {
            Ok(()) if syncs => synced.clone_from(&written),
            Ok(()) => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    std::mem::forget(w); // a power cut: nobody closes anything
    std::mem::forget(fs);
    let mut damaged = 0;
    for c in &controls {
        c.disarm_all();
        let report = c.power_cut().unwrap();
        damaged += report.writes_lost + report.writes_torn;
    }
    let mounted = BlueFs::mount(devices, config, None)
        .unwrap_or_else(|e| panic!("seed {seed} cut {cut_at}: mount failed: {e}"));
    let found = mounted.fs.read_file(path).unwrap();
    let ok = match &cut_in_truncate {
        Some(after) => found == synced || found == *after,
        None => found.len() >= synced.len() && written.starts_with(&found),
    };
    assert!(
        ok,
        "seed {seed} cut {cut_at}: {} bytes found; {} synced, {} written (first difference \
         from what was written at {:?})",
        found.len(),
        synced.len(),
        written.len(),
        written.iter().zip(&found).position(|(a, b)| a != b)
    );
    let report = mounted.fs.fsck();
    assert!(
        report.errors.is_empty(),
        "seed {seed} cut {cut_at}: fsck: {:?}",
        report.errors
    );
    (cut, damaged)
}

#[test]
fn power_cuts_under_a_long_lived_writer_lose_no_synced_byte() {
    let (mut cuts, mut runs, mut damaged) = (0, 0, 0);
    for seed in 0..60u64 {
        for (i, with_wal) in [false, true].into_iter().enumerate() {
            runs += 1;
            let (cut, lost_or_torn) = writer_crash_run(
                seed * 2 + i as u64,
                (seed * 11 + i as u64 * 5) % 200,
                with_wal,
            );
            cuts += u64::from(cut);
            damaged += lost_or_torn;
        }
    }
    assert!(
        cuts * 100 >= runs * 90,
        "only {cuts} power cuts in {runs} runs"
    );
    assert!(
        damaged > 0,
        "{runs} power cuts lost or tore no device write"
    );
    eprintln!(
        "bluefs writer crash test: {runs} runs, {cuts} power cuts ({damaged} unflushed device \
         writes lost or torn), 0 lost, 0 corrupt"
    );
}

mod damaged_devices {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Damage anywhere in the metadata area never panics the mount; a refusal names what
        /// is damaged.
        #[test]
        fn mounting_damaged_metadata_fails_cleanly(
            flips in proptest::collection::vec((0u64..(512 << 10), any::<u8>()), 1..6)
        ) {
            let devices = Devices::only(mem("16M"));
            let config = BlueFsConfig { compact_min_bytes: u64::MAX, ..small_config() };
            let fs = fresh(&devices, &config);
            fs.mkdir("d").unwrap();
            for i in 0..4 {
                write_file(&fs, &format!("d/f{i}"), &pattern(i, 5000));
            }
            drop(fs);
            let db = &devices.db;
            let bs = db.info().block_size as u64;
            let mut qp = db.queue_pair(1).unwrap();
            for (offset, xor) in flips {
                let block = offset / 4096 * 4096;
                let read = qp
                    .execute(bluepoll_nvme::IoCmd::read(
                        block / bs,
                        (4096 / bs) as u32,
                        bluepoll_nvme::DmaBuf::new(4096).unwrap(),
                        0,
                    ))
                    .unwrap();
                let mut buf = read.buf.unwrap();
                buf[(offset % 4096) as usize] ^= xor.max(1);
                qp.execute(bluepoll_nvme::IoCmd::write(block / bs, (4096 / bs) as u32, buf, 0))
                    .unwrap();
            }
            drop(qp);
            match BlueFs::mount(devices, config, None) {
                Ok(m) => {
                    // Whatever mounted is internally consistent.
                    let report = m.fs.fsck();
                    prop_assert!(report.errors.is_empty(), "{:?}", report.errors);
                }
                Err(e) => {
                    let text = e.to_string();
                    prop_assert!(
                        ["label", "superblock", "log", "extent", "file", "directory", "device"]
                            .iter()
                            .any(|w| text.contains(w)),
                        "unhelpful error: {text}"
                    );
                }
            }
        }
    }
}
