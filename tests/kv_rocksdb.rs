//! RocksDB on BlueFS end to end, on file-backed devices: the field failure where a full
//! cluster's OSDs died on "bluefs enospc" and never started again (here: NoSpace is an error,
//! the DB stays readable, and after the device grows and `expand` it takes writes and reopens
//! cleanly), and `bluepoll bluefs export` output opened by stock RocksDB.

mod common;

use std::path::Path;

use bluepoll::bluefs::{BlueFs, BlueFsConfig, Devices};
use bluepoll::kv::{self, KeyRange, Kv, KvConfig, KvError, WriteBatch};
use bluepoll::nvme::Device;
use bluepoll::rand::Rng;
use common::{bluepoll, scratch_dir, sparse_image};

fn open_fs(image: &Path, mkfs: bool) -> BlueFs {
    let uri = format!("uring:{}", image.display());
    let devices = Devices::only(Device::open(&uri).unwrap());
    let config = BlueFsConfig {
        log_reserve: 1 << 20,
        log_grow: 256 << 10,
        ..BlueFsConfig::default()
    };
    if mkfs {
        BlueFs::mkfs(&devices, &config, false).unwrap();
    }
    BlueFs::mount(devices, config, None).unwrap().fs
}

fn small_memtables() -> KvConfig {
    KvConfig {
        write_buffer_size: 1 << 20,
        ..KvConfig::default()
    }
}

fn value_of(i: u64) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    Rng::new(i).fill_bytes(&mut v);
    v
}

#[test]
fn a_full_device_gives_no_space_then_expand_makes_the_db_writable_again() {
    let dir = scratch_dir();
    let image = sparse_image(dir.path(), "db.img", 48 << 20);
    let fs = open_fs(&image, true);
    let kv = Kv::open(&fs, &small_memtables()).unwrap();
    let mut acked = 0u64;
    let error = loop {
        let mut batch = WriteBatch::new();
        for j in 0..16 {
            let i = acked * 16 + j;
            batch.put(&i.to_be_bytes(), &value_of(i));
        }
        match kv.submit(batch, true) {
            Ok(()) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 100_000, "48 MiB never filled");
    };
    assert!(
        matches!(error, KvError::NoSpace { .. }),
        "a full device must surface as NoSpace, got: {error}"
    );
    assert!(acked > 100, "only {acked} batches fit");
    // Still readable: every acknowledged batch.
    for i in (0..acked * 16).step_by(7) {
        assert_eq!(
            kv.get(&i.to_be_bytes()).unwrap(),
            Some(value_of(i)),
            "key {i}"
        );
    }
    drop(kv);
    drop(fs);

    // After a restart, the full filesystem mounts and the DB opens read-only with every
    // acknowledged key; a read-write open, which needs space, fails with NoSpace (no crash).
    let fs = open_fs(&image, false);
    let kv = Kv::open_read_only(&fs, &small_memtables()).unwrap();
    for i in (0..acked * 16).step_by(5) {
        assert_eq!(
            kv.get(&i.to_be_bytes()).unwrap(),
            Some(value_of(i)),
            "key {i}"
        );
    }
    drop(kv);
    match Kv::open(&fs, &small_memtables()) {
        Ok(kv) => drop(kv),
        Err(e) => assert!(matches!(e, KvError::NoSpace { .. }), "{e}"),
    }
    drop(fs);
    std::fs::File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let fs = open_fs(&image, false);
    assert_eq!(fs.expand().unwrap().len(), 1);
    let kv = Kv::open(&fs, &small_memtables()).unwrap();
    for b in acked..acked + 200 {
        let mut batch = WriteBatch::new();
        for j in 0..16 {
            let i = b * 16 + j;
            batch.put(&i.to_be_bytes(), &value_of(i));
        }
        kv.submit(batch, true).unwrap();
    }
    kv.flush().unwrap();
    drop(kv);
    drop(fs);
    let fs = open_fs(&image, false);
    let kv = Kv::open(&fs, &small_memtables()).unwrap();
    let total = (acked + 200) * 16;
    assert_eq!(kv.scan(&KeyRange::default(), None).count() as u64, total);
    for i in (0..total).step_by(11) {
        assert_eq!(
            kv.get(&i.to_be_bytes()).unwrap(),
            Some(value_of(i)),
            "key {i}"
        );
    }
    kv.verify_checksums().unwrap();
    assert!(fs.fsck().errors.is_empty());
}

#[test]
fn the_cli_writes_and_stock_rocksdb_reads_the_export() {
    let dir = scratch_dir();
    let image = sparse_image(dir.path(), "db.img", 256 << 20);
    let db = format!("--db=uring:{}", image.display());
    assert!(bluepoll(&["bluefs", "mkfs", &db]).status.success());
    for (k, v) in [("alpha", "1"), ("beta", "two"), ("gamma", "3")] {
        let run = bluepoll(&["kv", "put", k, v, &db]);
        assert!(run.status.success(), "{}", run.stderr_text());
    }
    let run = bluepoll(&["kv", "delete", "gamma", &db]);
    assert!(run.status.success(), "{}", run.stderr_text());
    let run = bluepoll(&["kv", "get", "beta", &db]);
    assert_eq!(run.stdout_text().trim(), "two");
    assert_eq!(
        bluepoll(&["kv", "get", "gamma", &db]).status.code(),
        Some(1)
    );
    let run = bluepoll(&["kv", "scan", &db]);
    assert_eq!(run.stdout_text(), "alpha\t1\nbeta\ttwo\n");
    let run = bluepoll(&["kv", "stats", &db]);
    assert!(
        run.stdout_text().contains("BlueFS:"),
        "{}",
        run.stdout_text()
    );

    // More keys through the library, pushed into table files, then the export.
    {
        let devices = Devices::only(Device::open(&format!("uring:{}", image.display())).unwrap());
        let fs = BlueFs::mount(devices, BlueFsConfig::default(), None)
            .unwrap()
            .fs;
        let kv = Kv::open(&fs, &KvConfig::default()).unwrap();
        let mut batch = WriteBatch::new();
        for i in 0..5000u64 {
            batch.put(format!("key{i:05}").as_bytes(), &value_of(i)[..100]);
        }
        kv.submit(batch, true).unwrap();
        kv.flush().unwrap();
        let mut batch = WriteBatch::new();
        batch.put(b"in-the-wal-only", b"yes");
        kv.submit(batch, true).unwrap();
    }
    let out = dir.path().join("export");
    let run = bluepoll(&["bluefs", "export", out.to_str().unwrap(), &db]);
    assert!(run.status.success(), "{}", run.stderr_text());

    // Stock RocksDB, default Env, the same options rooted at the export.
    let opts = kv::rocksdb_options(
        &KvConfig {
            create: false,
            ..KvConfig::default()
        },
        &out,
        None,
    );
    let stock = rocksdb::DB::open(&opts, out.join(kv::DB_DIR)).unwrap();
    let mut found = Vec::new();
    for item in stock.iterator(rocksdb::IteratorMode::Start) {
        let (k, v) = item.unwrap();
        found.push((k.to_vec(), v.to_vec()));
    }
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"alpha".to_vec(), b"1".to_vec()),
        (b"beta".to_vec(), b"two".to_vec()),
        (b"in-the-wal-only".to_vec(), b"yes".to_vec()),
    ];
    for i in 0..5000u64 {
        expected.push((
            format!("key{i:05}").into_bytes(),
            value_of(i)[..100].to_vec(),
        ));
    }
    expected.sort();
    assert_eq!(found.len(), expected.len());
    assert!(found == expected, "the export's key/value set differs");
}

#[test]
fn kvbench_runs_every_workload_on_both_engines() {
    let dir = scratch_dir();
    let run = bluepoll(&[
        "kvbench",
        &format!("--dir={}", dir.path().display()),
        "--num=2000",
        "--rounds=1",
        "--image-size=64M",
    ]);
    assert!(run.status.success(), "{}", run.stderr_text());
    let out = run.stdout_text();
    for w in bluepoll::bench::kv_bench::WORKLOADS {
        let line = out
            .lines()
            .find(|l| l.starts_with(w))
            .unwrap_or_else(|| panic!("no {w} line in:\n{out}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ours: f64 = fields[1].parse().unwrap();
        let theirs: f64 = fields[2].parse().unwrap();
        assert!(ours > 0.0 && theirs > 0.0, "{line}");
    }
    let bad = bluepoll(&["kvbench", "--dir=/nonexistent/x", "--workloads=fillsnc"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        bad.stderr_text().contains("unknown workload 'fillsnc'"),
        "{}",
        bad.stderr_text()
    );
}
