//! Snapshots, clones, fast-diff and the exclusive lock of images (issue 8): random requests,
//! snapshots, snapshot removals, rollbacks and resizes against a byte model of the head and of
//! every snapshot; clones with copy-up and flatten; diff of a 1 TiB thin image from the maps
//! alone; lock handover between two writers with writes in flight; a proxied resize.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bluepoll::image::{self, Image, ImageError, LockEvent, features};
use bluepoll::nvme::Device;
use bluepoll::rand::Rng;
use bluepoll::store::{Store, StoreConfig, StoreDevices};

fn devices_and_config() -> (StoreDevices, StoreConfig) {
    let devices = StoreDevices::only(Device::open("mem:1G").unwrap());
    let config = StoreConfig {
        pin: false,
        cpus: vec![0],
        ..StoreConfig::default()
    };
    Store::mkfs_on(&devices, &config).unwrap();
    (devices, config)
}

fn store() -> Store {
    let (devices, config) = devices_and_config();
    Store::mount_on(devices, config).unwrap()
}

/// The outcomes of async writes, gathered for the test: a callback that panicked would only be
/// caught and counted by the store, so the callbacks record here and the test checks, after the
/// flush that waited for them, that every one ran and none failed.
#[derive(Clone, Default)]
struct Answers {
    issued: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Answers {
    fn expect_ok(&self) -> impl FnOnce(Result<(), ImageError>) + Send + 'static {
        self.issued.fetch_add(1, Ordering::SeqCst);
        let (answered, failures) = (Arc::clone(&self.answered), Arc::clone(&self.failures));
        move |r| {
            if let Err(e) = r {
                failures.lock().unwrap().push(e.to_string());
            }
            answered.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn check(&self) {
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "async writes failed: {failures:?}");
        assert_eq!(
            self.answered.load(Ordering::SeqCst),
            self.issued.load(Ordering::SeqCst),
            "async writes left unanswered by a flush"
        );
    }
}

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rng.fill_bytes(&mut b);
    b
}

/// Object `o`'s bytes of `content` (zero-extended to the object's end).
fn object_bytes(content: &[u8], o: u64, object_size: u64) -> Vec<u8> {
    let start = (o * object_size) as usize;
    let mut b = vec![0u8; object_size as usize];
    if start < content.len() {
        let end = content.len().min(start + object_size as usize);
        b[..end - start].copy_from_slice(&content[start..end]);
    }
    b
}

fn check_map_agrees(store: &Store, img: &Image, what: &str) {
    let map = img.object_map().expect("the owner keeps a valid map");
    let coll = format!("img.{}", img.name());
    for i in 0..img.info().objects() {
        let exists = store.exists(&coll, &format!("data.{i:016x}")).unwrap();
        assert_eq!(
            map.get(i).may_exist(),
            exists,
            "{what}: object {i} is {:?} in the map, exists={exists}",
            map.get(i)
        );
    }
}

#[test]
fn snapshots_rollbacks_and_diffs_match_a_model() {
    let (devices, config) = devices_and_config();
    let mut store = Store::mount_on(devices.clone(), config.clone()).unwrap();
    let mut rng = Rng::new(23);
    // 4 KiB objects and small requests: many objects, many snapshot boundaries.
    let object_size = 4096u64;
    image::create(&store, "m", 64 << 10, 12, features::DEFAULT).unwrap();
    let mut img = Image::open(&store, "m").unwrap();
    let mut head = vec![0u8; 64 << 10];
    let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
    let mut next_snap = 0;
    let (mut rollbacks, mut removals, mut preserved_seen) = (0, 0, 0);
    for step in 0..500 {
        let what = format!("step {step}");
        let size = head.len() as u64;
        match rng.below(20) {
            0..=8 => {
                let off = rng.below(size);
                let len = 1 + rng.below((size - off).min(10_000));
                let data = random_bytes(&mut rng, len as usize);
                img.write(off, &data).unwrap();
                head[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            9..=11 => {
                let off = rng.below(size);
                let len = 1 + rng.below((size - off).min(20_000));
                img.discard(off, len).unwrap();
                head[off as usize..(off + len) as usize].fill(0);
            }
            12..=13 if snaps.len() < 5 => {
                let name = format!("s{next_snap}");
                next_snap += 1;
                img.snap_create(&name).unwrap();
                snaps.push((name, head.clone()));
            }
            14 if !snaps.is_empty() => {
                let k = rng.below(snaps.len() as u64) as usize;
                let (name, _) = snaps.remove(k);
                img.snap_remove(&name, |_, _| {}).unwrap();
                removals += 1;
            }
            15 if !snaps.is_empty() => {
                let k = rng.below(snaps.len() as u64) as usize;
                let mut seen = Vec::new();
                img.rollback(&snaps[k].0, |d, t| seen.push((d, t))).unwrap();
                assert!(seen.last().is_none_or(|(d, t)| d == t), "{what}: {seen:?}");
                head = snaps[k].1.clone();
                rollbacks += 1;
            }
            16 => {
                let new = (8 << 10) + rng.below(72 << 10);
                img.resize(new, |_, _| {}).unwrap();
                head.resize(new as usize, 0);
            }
            17 => {
                // A remount: everything comes back from the store.
                drop(img);
                store.umount().unwrap();
                store = Store::mount_on(devices.clone(), config.clone()).unwrap();
                img = Image::open(&store, "m").unwrap();
            }
            _ => {
                // fast-diff against the model: every object whose bytes differ is reported.
                let from = if snaps.is_empty() || rng.below(3) == 0 {
                    None
                } else {
                    Some(rng.below(snaps.len() as u64) as usize)
                };
                let report = img.diff(from.map(|k| snaps[k].0.as_str()), None).unwrap();
                assert_eq!(report.data_objects_read, 0, "{what}");
                let reported: BTreeSet<u64> = report
                    .extents
                    .iter()
                    .flat_map(|e| e.offset / object_size..(e.offset + e.len).div_ceil(object_size))
                    .collect();
                let empty = Vec::new();
                let old = from.map_or(&empty, |k| &snaps[k].1);
                for o in 0..(head.len() as u64).div_ceil(object_size) {
                    let now = object_bytes(&head, o, object_size);
                    if object_bytes(old, o, object_size) != now {
                        assert!(
                            reported.contains(&o),
                            "{what}: object {o} changed since {:?} but diff missed it",
                            from.map(|k| &snaps[k].0)
                        );
                        let e = report
                            .extents
                            .iter()
                            .find(|e| {
                                e.offset <= o * object_size && o * object_size < e.offset + e.len
                            })
                            .unwrap();
                        if now.iter().any(|&b| b != 0) {
                            assert!(e.exists, "{what}: object {o} has data, diff says zero");
                        }
                    }
                }
            }
        }
        assert_eq!(img.info().size, head.len() as u64, "{what}");
        assert_eq!(
            img.read(0, head.len() as u64).unwrap(),
            head,
            "{what}: head"
        );
        for (name, content) in &snaps {
            let view = img.snapshot(name).unwrap();
            assert_eq!(view.info().size, content.len() as u64, "{what}: {name}");
            assert_eq!(
                &view.read(0, content.len() as u64).unwrap(),
                content,
                "{what}: snapshot {name}"
            );
        }
        check_map_agrees(&store, &img, &what);
        preserved_seen = preserved_seen.max(img.stats().preserved);
    }
    assert!(
        rollbacks > 5 && removals > 5,
        "{rollbacks} rollbacks, {removals} removals"
    );
    assert!(preserved_seen > 0);
    // An image with snapshots is not removed; without them it is, with every object.
    drop(img);
    if !snaps.is_empty() {
        let e = image::remove(&store, "m").unwrap_err();
        assert!(e.to_string().contains("snapshot"), "{e}");
        let mut img = Image::open(&store, "m").unwrap();
        for (name, _) in &snaps {
            img.snap_remove(name, |_, _| {}).unwrap();
        }
    }
    image::remove(&store, "m").unwrap();
    assert!(store.list_collections().unwrap().is_empty());
    store.umount().unwrap();
}

#[test]
fn clones_copy_up_on_first_write_and_flatten_cuts_the_link() {
    let store = store();
    let mut rng = Rng::new(5);
    image::create(&store, "golden", 1 << 20, 14, features::DEFAULT).unwrap();
    let mut parent = Image::open(&store, "golden").unwrap();
    let base = random_bytes(&mut rng, 600 << 10);
    parent.write(0, &base).unwrap();
    parent.snap_create("v1").unwrap();
    // The parent goes on changing; the clone sees the snapshot.
    parent.write(0, &[0xee; 70_000]).unwrap();
    drop(parent);
    let e = image::clone_image(&store, "golden", "v1", "vm1", features::SHARED).unwrap_err();
    assert!(matches!(e, ImageError::InvalidArgument { .. }), "{e}");
    image::clone_image(&store, "golden", "v1", "vm1", features::DEFAULT).unwrap();
    let mut clone = Image::open(&store, "vm1").unwrap();
    let mut model = vec![0u8; 1 << 20];
    model[..base.len()].copy_from_slice(&base);
    assert_eq!(clone.read(0, 1 << 20).unwrap(), model);
    assert!(clone.stats().parent_reads > 0);
    // A small write copies its whole object up first; a whole-object discard hides the parent.
    clone.write(20_000, b"clone was here").unwrap();
    model[20_000..20_014].copy_from_slice(b"clone was here");
    assert_eq!(clone.stats().copy_ups, 1);
    clone.discard(32 << 10, 16 << 10).unwrap();
    model[32 << 10..48 << 10].fill(0);
    assert_eq!(clone.read(0, 1 << 20).unwrap(), model);
    // The snapshot cannot go while the clone needs it.
    {
        let mut parent = Image::open(&store, "golden").unwrap();
        let e = parent.snap_remove("v1", |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("vm1"), "{e}");
    }
    // Flatten, throttled, with progress.
    let mut seen = Vec::new();
    clone
        .flatten(Some(10_000), |d, t| seen.push((d, t)))
        .unwrap();
    assert!(!seen.is_empty() && seen.last().unwrap().0 == seen.last().unwrap().1);
    assert!(clone.parent().is_none());
    assert_eq!(clone.read(0, 1 << 20).unwrap(), model);
    drop(clone);
    let mut parent = Image::open(&store, "golden").unwrap();
    parent.snap_remove("v1", |_, _| {}).unwrap();
    drop(parent);
    let clone = Image::open(&store, "vm1").unwrap();
    assert!(clone.parent().is_none());
    drop(clone);
    let mut clone = Image::open(&store, "vm1").unwrap();
    assert_eq!(clone.read(0, 1 << 20).unwrap(), model);
    drop(clone);
    image::remove(&store, "vm1").unwrap();
    image::remove(&store, "golden").unwrap();
    store.umount().unwrap();
}

/// A 1 TiB thin image with 1% of its objects written, a snapshot, 1% more: the diff comes from
/// the maps alone (no data object read) and names exactly the objects written since.
#[test]
fn diff_of_a_1_tib_thin_image_reads_no_data_object() {
    let answers = Answers::default();
    let store = store();
    image::create(&store, "thin", 1 << 40, 22, features::DEFAULT).unwrap();
    let mut img = Image::open(&store, "thin").unwrap();
    let objects = img.info().objects();
    let mut rng = Rng::new(9);
    let mut write_percent = |img: &mut Image| {
        let mut set = BTreeSet::new();
        while set.len() < (objects / 100) as usize {
            set.insert(rng.below(objects));
        }
        for &o in &set {
            img.write_async(o << 22, &[1u8; 4096], answers.expect_ok())
                .unwrap();
        }
        img.flush().unwrap();
        answers.check();
        set
    };
    let first = write_percent(&mut img);
    img.snap_create("base").unwrap();
    let second = write_percent(&mut img);
    let reads = img.stats().object_reads;
    let started = Instant::now();
    let report = img.diff(Some("base"), None).unwrap();
    let elapsed = started.elapsed();
    let changed: BTreeSet<u64> = report
        .extents
        .iter()
        .flat_map(|e| e.offset >> 22..(e.offset + e.len) >> 22)
        .collect();
    assert_eq!(changed, second);
    assert!(
        report
            .extents
            .iter()
            .all(|e| e.exists && e.len % (4 << 20) == 0)
    );
    assert_eq!(report.data_objects_read, 0);
    assert_eq!(img.stats().object_reads, reads);
    let whole = img.diff(None, Some("base")).unwrap();
    assert_eq!(whole.objects_changed, first.len() as u64);
    println!(
        "diff of a 1 TiB image ({objects} objects, {} written since the snapshot): {:.1} ms, \
         {} maps read, {} data objects read",
        second.len(),
        elapsed.as_secs_f64() * 1e3,
        report.maps_read,
        report.data_objects_read
    );
    drop(img);
    store.umount().unwrap();
}

/// Serves `img`'s lock requests until `stop`.
fn lock_server(img: Arc<Mutex<Image>>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let waiter = img.lock().unwrap().lock_waiter().unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if waiter.wait(Duration::from_millis(20)) {
                img.lock().unwrap().serve_lock_requests().unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
}

#[test]
fn the_lock_changes_hands_with_writes_in_flight_and_loses_none() {
    let store = store();
    let region = 64u64 << 10;
    image::create(&store, "vm", 64 * region, 16, features::DEFAULT).unwrap();
    let a = Arc::new(Mutex::new(Image::open(&store, "vm").unwrap()));
    let b = Arc::new(Mutex::new(Image::open(&store, "vm").unwrap()));
    assert!(a.lock().unwrap().is_lock_owner());
    assert!(!b.lock().unwrap().is_lock_owner());
    let events = b.lock().unwrap().watch().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let servers = [
        lock_server(Arc::clone(&a), Arc::clone(&stop)),
        lock_server(Arc::clone(&b), Arc::clone(&stop)),
    ];
    // A writes even regions asynchronously (many in flight), B odd ones synchronously; each
    // remembers the last bytes acknowledged per region.
    let acked: Arc<Mutex<Vec<Option<Vec<u8>>>>> = Arc::new(Mutex::new(vec![None; 64]));
    let failures = Arc::new(AtomicU64::new(0));
    let writer_a = {
        let (a, acked, failures) = (Arc::clone(&a), Arc::clone(&acked), Arc::clone(&failures));
        std::thread::spawn(move || {
            let mut rng = Rng::new(1);
            for i in 0..400u64 {
                let r = 2 * rng.below(32);
                let mut data = random_bytes(&mut rng, 8192);
                data[..8].copy_from_slice(&i.to_le_bytes());
                let (acked, failures, copy) =
                    (Arc::clone(&acked), Arc::clone(&failures), data.clone());
                // Regions of A are written one request at a time each (the ack order per
                // region is then the queue order).
                a.lock()
                    .unwrap()
                    .write_async(r * region, &data, move |res| match res {
                        Ok(()) => {
                            let mut acked = acked.lock().unwrap();
                            let newer = acked[r as usize].as_ref().is_none_or(|old| {
                                u64::from_le_bytes(old[..8].try_into().unwrap()) < i
                            });
                            if newer {
                                acked[r as usize] = Some(copy);
                            }
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                    .unwrap();
            }
            a.lock().unwrap().flush().unwrap();
        })
    };
    let writer_b = {
        let (b, acked) = (Arc::clone(&b), Arc::clone(&acked));
        std::thread::spawn(move || {
            let mut rng = Rng::new(2);
            for _ in 0..60 {
                let r = 2 * rng.below(32) + 1;
                let data = random_bytes(&mut rng, 8192);
                b.lock().unwrap().write(r * region, &data).unwrap();
                acked.lock().unwrap()[r as usize] = Some(data);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    writer_a.join().unwrap();
    writer_b.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    let handovers = events
        .try_iter()
        .filter(|e| matches!(e, LockEvent::Acquired { .. }))
        .count();
    assert!(handovers >= 2, "the lock changed hands {handovers} times");
    drop(a);
    drop(b);
    let mut reader = Image::open(&store, "vm").unwrap();
    let acked = acked.lock().unwrap();
    for (r, bytes) in acked.iter().enumerate() {
        let got = reader.read(r as u64 * region, 8192).unwrap();
        match bytes {
            Some(b) => assert_eq!(&got, b, "region {r}"),
            None => assert_eq!(got, vec![0u8; 8192], "region {r}"),
        }
    }
    drop(reader);
    store.umount().unwrap();
}

#[test]
fn a_resize_and_a_snapshot_asked_of_the_owner_run_there_with_progress() {
    let answers = Answers::default();
    let store = store();
    image::create(&store, "vm", 32 << 20, 16, features::DEFAULT).unwrap();
    let owner = Arc::new(Mutex::new(Image::open(&store, "vm").unwrap()));
    {
        let mut o = owner.lock().unwrap();
        for i in 0..300u64 {
            o.write_async(i << 16, &[7u8; 512], answers.expect_ok())
                .unwrap();
        }
        o.flush().unwrap();
        answers.check();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let server = lock_server(Arc::clone(&owner), Arc::clone(&stop));
    let mut other = Image::open(&store, "vm").unwrap();
    let owner_id = owner.lock().unwrap().client_id();
    assert_eq!(other.lock_owner(), Some(owner_id));
    let mut seen = Vec::new();
    other.resize(4 << 20, |d, t| seen.push((d, t))).unwrap();
    // 300 objects written, 64 stay: 236 removed in batches, each reported here.
    assert!(seen.len() >= 2, "{seen:?}");
    assert_eq!(seen.last(), Some(&(236, 236)));
    assert_eq!(other.info().size, 4 << 20);
    assert!(!other.is_lock_owner());
    let snap = other.snap_create("after-shrink").unwrap();
    assert_eq!(snap.size, 4 << 20);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    let o = owner.lock().unwrap();
    assert!(o.is_lock_owner());
    assert_eq!(o.info().size, 4 << 20);
    assert_eq!(o.snapshots().len(), 1);
    drop(o);
    // Without anybody serving, a request times out naming the owner.
    other.set_lock_timeout(Duration::from_millis(200));
    let e = other.write(0, b"x").unwrap_err();
    assert!(
        matches!(e, ImageError::LockBusy { owner, .. } if owner == owner_id),
        "{e}"
    );
    drop(other);
    drop(owner);
    store.umount().unwrap();
}

mod common;

#[test]
fn snapshot_clone_diff_and_flatten_commands() {
    let dir = common::scratch_dir();
    let dev = format!(
        "--slow=uring:{}?size=512M",
        dir.path().join("main.img").display()
    );
    let run = |args: &[&str]| common::bluepoll_on(&dev, args);
    let ok = |args: &[&str]| common::bluepoll_ok(&dev, args);
    ok(&["mkfs"]);
    ok(&["image", "create", "base", "--size=8M", "--order=20"]);
    let made = ok(&["image", "snap", "create", "base@s1"]);
    assert!(made.contains("created snapshot base@s1 (id 1)"), "{made}");
    ok(&["image", "snap", "create", "base@s2"]);
    let listed = ok(&["image", "snap", "ls", "base"]);
    assert!(listed.contains("s1") && listed.contains("s2"), "{listed}");
    // Nothing was written: nothing changed between the snapshots, or since.
    assert_eq!(ok(&["image", "diff", "base", "--from-snap=s1"]), "");
    assert_eq!(ok(&["image", "diff", "base@s2", "--from-snap=s1"]), "");
    let backwards = run(&["image", "diff", "base@s1", "--from-snap=s2"]);
    assert_eq!(backwards.status.code(), Some(1));
    assert!(backwards.stderr_text().contains("not older"));
    ok(&["image", "clone", "base@s1", "child"]);
    let info = ok(&["image", "info", "child"]);
    assert!(info.contains("parent:      base snapshot #1"), "{info}");
    let refused = run(&["image", "snap", "rm", "base@s1"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        refused.stderr_text().contains("child"),
        "{}",
        refused.stderr_text()
    );
    ok(&["image", "flatten", "child", "--objects-per-second=1000"]);
    assert!(!ok(&["image", "info", "child"]).contains("parent:"));
    ok(&["image", "snap", "rm", "base@s1"]);
    ok(&["image", "snap", "rollback", "base@s2"]);
    assert!(
        run(&["image", "rm", "base"])
            .stderr_text()
            .contains("snapshot")
    );
    ok(&["image", "snap", "rm", "base@s2"]);
    ok(&["image", "rm", "base"]);
    assert_eq!(ok(&["image", "ls"]), "child\n");
    let bad = run(&["image", "snap", "create", "child"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stderr_text().contains("NAME@SNAP"));
}

#[test]
fn bench_ioengine_image_runs_mixed_io_on_laid_out_images() {
    let out = common::bluepoll(&[
        "bench",
        "--ioengine=image",
        "--filename=mem:512M",
        "--rw=randrw",
        "--bs=4k",
        "--size=8M",
        "--iodepth=8",
        "--numjobs=2",
        "--image_order=20",
        "--name=vm",
        "--output-format=json",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let doc = common::json_of(&out.stdout);
    let jobs = doc["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    for job in jobs {
        assert_eq!(job["error"], 0);
        let ios = job["read"]["total_ios"].as_u64().unwrap()
            + job["write"]["total_ios"].as_u64().unwrap();
        assert_eq!(ios, 2048, "size / bs requests per clone");
        assert!(job["read"]["total_ios"].as_u64().unwrap() > 0);
        assert_eq!(job["bluepoll"]["ioengine"], "image");
        assert!(job["bluepoll"]["reactor"].is_null());
    }
    // Bad options are refused before anything runs.
    let bad = common::bluepoll(&[
        "bench",
        "--ioengine=image",
        "--filename=mem:512M",
        "--size=8M",
        "--image_order=30",
        "--name=x",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        bad.stderr_text().contains("image_order"),
        "{}",
        bad.stderr_text()
    );
}

/// Power cuts under image requests (`fault:` devices: unflushed writes lost, kept or torn):
/// after remount the image is what its acknowledged requests made it plus a prefix of those in
/// flight — each whole or not at all — its map agrees with its objects, every snapshot reads as
/// it was taken, and a deep fsck is clean.
#[test]
fn power_cuts_leave_images_at_an_acknowledged_state() {
    use bluepoll::nvme::{EioRule, EioTrigger, FaultOps};
    let runs: u64 = std::env::var("BLUEPOLL_IMAGE_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let (mut in_flight_at_cut, mut cut_short, mut acknowledged_at_cut) = (0, 0, 0u64);
    let (mut torn, mut lost) = (0u64, 0u64);
    for seed in 0..runs {
        let mut rng = Rng::new(seed ^ 0x1a6e);
        let device =
            Device::open(&format!("fault:seed={seed},torn=0.5,survive=0.3+mem:512M")).unwrap();
        let control = device.fault_control().unwrap();
        let devices = StoreDevices::only(device);
        let config = StoreConfig {
            pin: false,
            cpus: vec![0],
            ..StoreConfig::default()
        };
        Store::mkfs_on(&devices, &config).unwrap();
        let store = Store::mount_on(devices.clone(), config.clone()).unwrap();
        let size = 256u64 << 10;
        image::create(&store, "vm", size, 14, features::DEFAULT).unwrap();
        let mut img = Image::open(&store, "vm").unwrap();
        let mut head = vec![0u8; size as usize];
        let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
        // Acknowledged requests, one at a time.
        for step in 0..rng.below(40) {
            let off = rng.below(size);
            let len = 1 + rng.below((size - off).min(40_000));
            match rng.below(8) {
                0 => {
                    img.discard(off, len).unwrap();
                    head[off as usize..(off + len) as usize].fill(0);
                }
                1 if snaps.len() < 3 => {
                    let name = format!("s{step}");
                    img.snap_create(&name).unwrap();
                    snaps.push((name, head.clone()));
                }
                2 if !snaps.is_empty() => {
                    let (name, _) = snaps.remove(rng.below(snaps.len() as u64) as usize);
                    img.snap_remove(&name, |_, _| {}).unwrap();
                }
                _ => {
                    let data = random_bytes(&mut rng, len as usize);
                    img.write(off, &data).unwrap();
                    head[off as usize..(off + len) as usize].copy_from_slice(&data);
                }
            }
        }
        // Then writes in flight when the power goes: the candidates are each prefix of them.
        // Some are answered when durable (`write_async`), some when taken (`write_cached`, the
        // NBD write cache); a durable answer before the cut makes that write, and every one
        // before it, part of every acceptable state.
        let mut candidates = vec![head.clone()];
        let (acks, acked) = std::sync::mpsc::channel::<(usize, bool)>();
        for k in 1..=rng.below(40) as usize {
            let off = rng.below(size);
            let len = 1 + rng.below((size - off).min(40_000));
            let data = random_bytes(&mut rng, len as usize);
            let ack = acks.clone();
            if rng.below(3) == 0 {
                img.write_cached(off, &data, |_| {}).unwrap();
            } else {
                img.write_async(off, &data, move |r| {
                    let _ = ack.send((k, r.is_ok()));
                })
                .unwrap();
            }
            let mut next = candidates.last().unwrap().clone();
            next[off as usize..(off + len) as usize].copy_from_slice(&data);
            candidates.push(next);
        }
        drop(acks);
        in_flight_at_cut += candidates.len() as u64 - 1;
        std::thread::sleep(Duration::from_micros(rng.below(400)));
        // From now on nothing reaches the media; then the power goes.
        control.arm(EioRule {
            ops: FaultOps::Any,
            trigger: EioTrigger::Every(1),
        });
        drop(img);
        let _ = store.umount();
        control.disarm_all();
        let report = control.power_cut().unwrap();
        torn += report.writes_torn;
        lost += report.writes_lost;
        // Every callback has run (the store is unmounted): the newest write answered durable.
        let durable = acked
            .iter()
            .filter(|&(_, ok)| ok)
            .map(|(k, _)| k)
            .max()
            .unwrap_or(0);
        acknowledged_at_cut += durable as u64;

        let store = Store::mount_on(devices.clone(), config.clone())
            .unwrap_or_else(|e| panic!("seed {seed}: mount after the cut: {e}"));
        let mut img = Image::open(&store, "vm").unwrap();
        let found = img.read(0, size).unwrap();
        let state = candidates.iter().rposition(|c| *c == found);
        assert!(
            state.is_some_and(|k| k >= durable),
            "seed {seed}: the image after the cut is none of the states from its acknowledged \
             requests (writes answered durable: up to {durable} of {}) to those in flight (found: \
             state {state:?})",
            candidates.len() - 1
        );
        cut_short += u64::from(candidates.last() != Some(&found));
        check_map_agrees(&store, &img, &format!("seed {seed}"));
        for (name, content) in &snaps {
            let view = img.snapshot(name).unwrap();
            assert_eq!(
                &view.read(0, size).unwrap(),
                content,
                "seed {seed}: snapshot {name}"
            );
        }
        drop(img);
        store.umount().unwrap();
        let report = bluepoll::store::fsck(&devices, &config, true, false).unwrap();
        assert!(report.is_clean(), "seed {seed}: fsck: {:?}", report.errors);
    }
    println!(
        "{runs} power cuts, {in_flight_at_cut} writes in flight, {acknowledged_at_cut} of them (up to \
         the newest each run) \
         answered durable before the cut, {cut_short} cuts lost some of them (each time whole \
         writes, in order); the cuts tore {torn} and lost {lost} unflushed device writes"
    );
    // The test proves nothing unless the cuts really met writes in flight, acknowledged ones
    // among them, and lost or tore some.
    assert!(runs > 0, "BLUEPOLL_IMAGE_CRASH_RUNS=0 runs nothing");
    assert!(
        in_flight_at_cut > runs,
        "the cuts should find writes in flight ({in_flight_at_cut} over {runs} runs)"
    );
    if runs >= 20 {
        assert!(
            acknowledged_at_cut > 0,
            "no write was answered before a cut"
        );
        assert!(cut_short > 0, "no cut lost a write in flight");
        assert!(torn + lost > 0, "no cut tore or lost a device write");
    }
}

/// A shrink cut short leaves PENDING objects: a later change of one must still preserve it for
/// the snapshot that saw it (PENDING no longer says whether it changed since).
#[test]
fn a_shrink_cut_short_still_preserves_for_snapshots() {
    let answers = Answers::default();
    let store = store();
    image::create(&store, "s", 100 << 12, 12, features::DEFAULT).unwrap();
    let mut img = Image::open(&store, "s").unwrap();
    for i in 0..100u64 {
        img.write_async(i << 12, &[0xab; 4096], answers.expect_ok())
            .unwrap();
    }
    img.flush().unwrap();
    answers.check();
    img.snap_create("s").unwrap();
    let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        img.resize(2 << 12, |done, _| {
            assert!(done == 0, "cut short after the first batch");
        })
    }));
    assert!(cut.is_err());
    img.write(90 << 12, &[0xcd; 4096]).unwrap();
    let view = img.snapshot("s").unwrap();
    assert_eq!(view.read(90 << 12, 4096).unwrap(), vec![0xab; 4096]);
    // Finishing the shrink keeps what the snapshot needs too.
    img.resize(2 << 12, |_, _| {}).unwrap();
    let view = img.snapshot("s").unwrap();
    assert_eq!(view.read(80 << 12, 4096).unwrap(), vec![0xab; 4096]);
    assert_eq!(view.read(90 << 12, 4096).unwrap(), vec![0xab; 4096]);
    drop(img);
    store.umount().unwrap();
}

/// A queued write that changes an object's state in the map (here: preserving it for a
/// snapshot) and then fails must not let a write queued right behind it trust the map's new word:
/// that write would overwrite, unpreserved, what the snapshot still reads.
#[test]
fn a_failed_queued_write_does_not_let_the_next_skip_preserving() {
    let answers = Answers::default();
    use bluepoll::nvme::{EioRule, EioTrigger, FaultOps};
    let device = Device::open("fault:cache=off+mem:512M").unwrap();
    let control = device.fault_control().unwrap();
    let devices = StoreDevices::only(device);
    // No data cache: the partial write below must read the old block from the device.
    let config = StoreConfig {
        pin: false,
        cpus: vec![0],
        cache_bytes: 0,
        ..StoreConfig::default()
    };
    Store::mkfs_on(&devices, &config).unwrap();
    let store = Store::mount_on(devices, config).unwrap();
    image::create(&store, "p", 16 << 12, 12, features::DEFAULT).unwrap();
    let mut img = Image::open(&store, "p").unwrap();
    img.write(0, &[0x11; 4096]).unwrap();
    img.snap_create("s").unwrap();
    // Reads of object 0's data block fail.
    let extent = store
        .object_extents("img.p", &format!("data.{:016x}", 0))
        .unwrap()[0];
    let block = store.main_device().info().block_size as u64;
    control.arm(EioRule {
        ops: FaultOps::Read,
        trigger: EioTrigger::Lbas {
            first: extent.device_offset / block,
            last: (extent.device_offset + 4095) / block,
        },
    });
    let failed = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&failed);
    // Needs the old block (a read, which fails): rejected with nothing applied.
    img.write_async(100, &[0x22; 512], move |r| {
        f.store(r.is_err(), Ordering::SeqCst)
    })
    .unwrap();
    // A whole block: no read; queued before the first one's failure is known.
    img.write_async(0, &[0x33; 4096], answers.expect_ok())
        .unwrap();
    // The first write was refused with nothing applied and its callback told so; a flush
    // covers only the writes the store took.
    img.flush().unwrap();
    answers.check();
    control.disarm_all();
    assert!(
        failed.load(Ordering::SeqCst),
        "the injected read error fired"
    );
    assert!(img.read(0, 4096).unwrap() == vec![0x33; 4096]);
    let view = img.snapshot("s").unwrap();
    assert!(
        view.read(0, 4096).unwrap() == vec![0x11; 4096],
        "the snapshot reads what it saw, not the write made after it"
    );
    drop(img);
    store.umount().unwrap();
}

/// A snapshot removal cut short (a crash, here a panic after the first batch) has removed some
/// of the snapshot's copies: the snapshot must not read as taken any more (it would read the
/// head where a copy went), nor be cloned; `snap rm` again finishes it, across a remount too.
#[test]
fn a_removal_cut_short_leaves_the_snapshot_refused_until_finished() {
    let answers = Answers::default();
    let (devices, config) = devices_and_config();
    let store = Store::mount_on(devices.clone(), config.clone()).unwrap();
    let objects = 200u64;
    image::create(&store, "r", objects << 12, 12, features::DEFAULT).unwrap();
    let mut img = Image::open(&store, "r").unwrap();
    for i in 0..objects {
        img.write_async(i << 12, &[0x11; 4096], answers.expect_ok())
            .unwrap();
    }
    img.flush().unwrap();
    answers.check();
    img.snap_create("s").unwrap();
    for i in 0..objects {
        img.write_async(i << 12, &[0x22; 4096], answers.expect_ok())
            .unwrap();
    }
    img.flush().unwrap();
    answers.check();
    let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        img.snap_remove("s", |done, total| {
            assert!(done >= total, "cut short after the first batch");
        })
    }));
    assert!(cut.is_err(), "the removal was cut short");
    let refused = |img: &Image| match img.snapshot("s") {
        Err(e) => assert!(e.to_string().contains("being removed"), "{e}"),
        Ok(view) => panic!(
            "a half-removed snapshot opened; its last object reads {:?}",
            &view.read((objects - 1) << 12, 4).unwrap()
        ),
    };
    refused(&img);
    let clone = image::clone_image(&store, "r", "s", "c", features::DEFAULT);
    assert!(clone.is_err(), "no clone of a half-removed snapshot");
    drop(img);
    store.umount().unwrap();

    let store = Store::mount_on(devices, config).unwrap();
    let mut img = Image::open(&store, "r").unwrap();
    assert!(img.snapshots()[0].removing, "the mark survives a remount");
    refused(&img);
    img.snap_remove("s", |_, _| {}).unwrap();
    assert!(img.snapshots().is_empty());
    let copies = store
        .list_objects("img.r", None, 10_000)
        .unwrap()
        .into_iter()
        .filter(|o| o.contains('@'))
        .count();
    assert_eq!(copies, 0, "every copy went");
    assert!(
        img.read(0, objects << 12)
            .unwrap()
            .iter()
            .all(|&b| b == 0x22)
    );
    drop(img);
    store.umount().unwrap();
}

/// A clone of a snapshot racing that snapshot's removal: exactly one of them wins, never a clone
/// linked to a removed snapshot (whose copies are gone).
#[test]
fn a_clone_and_the_removal_of_its_snapshot_race_to_one_outcome() {
    let answers = Answers::default();
    let store = store();
    image::create(&store, "base", 64 << 12, 12, features::DEFAULT).unwrap();
    let mut img = Image::open(&store, "base").unwrap();
    for i in 0..64u64 {
        img.write_async(i << 12, &[7; 4096], answers.expect_ok())
            .unwrap();
    }
    img.flush().unwrap();
    answers.check();
    let (mut clones_won, mut removals_won) = (0, 0);
    for round in 0..30 {
        let snap = format!("s{round}");
        img.snap_create(&snap).unwrap();
        // Every object changes, so the snapshot holds 64 copies for its removal to take.
        for i in 0..64u64 {
            img.write_async(i << 12, &[round as u8; 4096], answers.expect_ok())
                .unwrap();
        }
        img.flush().unwrap();
        answers.check();
        let child = format!("c{round}");
        let start = Arc::new(std::sync::Barrier::new(2));
        let cloner = {
            let (handle, snap, child) = (store.handle(), snap.clone(), child.clone());
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                image::clone_image(&handle, "base", &snap, &child, features::DEFAULT)
            })
        };
        // The removal starts a little later each round, so the two sweep across each other.
        start.wait();
        std::thread::sleep(Duration::from_micros(10 * round));
        let removed = img.snap_remove(&snap, |_, _| {});
        let cloned = cloner.join().unwrap();
        match (cloned.is_ok(), removed.is_ok()) {
            (true, true) => panic!("round {round}: a clone links to a removed snapshot"),
            (false, false) => panic!("round {round}: both failed: {cloned:?} {removed:?}"),
            (true, false) => {
                clones_won += 1;
                let mut c = Image::open(&store, &child).unwrap();
                assert!(c.read(0, 64 << 12).unwrap().iter().all(|&b| b == 7));
                drop(c);
                image::remove(&store, &child).unwrap();
                img.snap_remove(&snap, |_, _| {}).unwrap();
            }
            (false, true) => {
                removals_won += 1;
                assert!(!image::list(&store).unwrap().contains(&child));
            }
        }
        // The next round's snapshot must see what this one's did not.
        for i in 0..64u64 {
            img.write_async(i << 12, &[7; 4096], answers.expect_ok())
                .unwrap();
        }
        img.flush().unwrap();
        answers.check();
    }
    eprintln!("clone vs removal: clones won {clones_won}, removals won {removals_won}");
    drop(img);
    store.umount().unwrap();
}

/// A clone read asynchronously by a client that does not own its lock (so its map is not
/// trusted and every object may exist): the objects it never wrote are missing from the store
/// and come from the parent's snapshot, though the store answers on its reactor, where the
/// parent cannot be read with blocking calls.
#[test]
fn a_clone_without_a_trusted_map_reads_missing_objects_from_the_parent_asynchronously() {
    let store = store();
    let mut rng = Rng::new(11);
    image::create(&store, "golden", 256 << 10, 14, features::DEFAULT).unwrap();
    let mut parent = Image::open(&store, "golden").unwrap();
    let base = random_bytes(&mut rng, 256 << 10);
    parent.write(0, &base).unwrap();
    parent.snap_create("v1").unwrap();
    drop(parent);
    image::clone_image(&store, "golden", "v1", "vm1", features::DEFAULT).unwrap();
    let mut owner = Image::open(&store, "vm1").unwrap();
    let mut model = base.clone();
    owner.write(20_000, b"clone was here").unwrap();
    model[20_000..20_014].copy_from_slice(b"clone was here");
    let mut reader = Image::open(&store, "vm1").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    reader
        .read_async(0, 256 << 10, move |r| tx.send(r).unwrap())
        .unwrap();
    let read = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the read is answered")
        .unwrap_or_else(|e| panic!("the clone's read failed: {e}"));
    assert!(
        read == model,
        "the clone reads its parent's snapshot and its own write"
    );
    assert!(
        reader.stats().object_reads >= 16,
        "every object was asked of the store"
    );
    drop((owner, reader));
    store.umount().unwrap();
}
