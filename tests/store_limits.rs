//! The object store at its edges: commit order under load on two reactors, a full main device,
//! and damaged data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bluepoll::nvme::{Device, IoCmd};
use bluepoll::rand::Rng;
use bluepoll::store::{Store, StoreConfig, StoreDevices, Transaction};

fn config(cpus: Vec<usize>) -> StoreConfig {
    let mut c = StoreConfig {
        pin: false,
        cpus,
        ..StoreConfig::default()
    };
    c.kv.error_retry_interval = Duration::from_millis(5);
    c
}

/// Polls `cond` for up to ten seconds (a liveness bound, not a performance one).
fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

fn make(devices: &StoreDevices, config: &StoreConfig) -> Store {
    Store::mkfs_on(devices, config).unwrap();
    Store::mount_on(devices.clone(), config.clone()).unwrap()
}

/// Four threads queue transactions on eight collections spread over two reactors, as fast as
/// the throttle lets them; each collection's commit callbacks must come in queue order.
#[test]
fn commit_callbacks_follow_queue_order_per_collection_on_two_reactors() {
    let devices = StoreDevices::only(Device::open("mem:2G").unwrap());
    let store = Arc::new(make(&devices, &config(vec![0, 1])));
    let colls: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let shards: std::collections::BTreeSet<usize> =
        colls.iter().map(|c| store.shard_of(c)).collect();
    assert_eq!(
        shards.len(),
        2,
        "the collections must live on both reactors"
    );
    for c in &colls {
        let mut t = Transaction::new(c);
        t.create_collection().touch("meta");
        store.apply(t).unwrap();
    }
    let seen: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Default::default();
    let per_thread = 3000u64;
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let store = Arc::clone(&store);
            let seen = Arc::clone(&seen);
            let colls = colls.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(thread);
                // Each thread owns two collections, so its queue order is theirs.
                let mine = [&colls[thread as usize * 2], &colls[thread as usize * 2 + 1]];
                let mut serial = [0u64; 2];
                for _ in 0..per_thread {
                    let k = rng.below(2) as usize;
                    let coll = mine[k].clone();
                    serial[k] += 1;
                    let n = serial[k];
                    let mut t = Transaction::new(&coll);
                    let len = [512u64, 4096, 20_000][rng.below(3) as usize];
                    t.write(
                        &format!("o{}", rng.below(16)),
                        rng.below(64) * 4096,
                        vec![n as u8; len as usize],
                    );
                    if rng.below(4) == 0 {
                        t.omap_setkey("meta", &n.to_be_bytes(), b"x");
                    }
                    let seen = Arc::clone(&seen);
                    store
                        .queue_transaction(t, move |r| {
                            r.expect("commit");
                            seen.lock().unwrap().entry(coll).or_default().push(n);
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Wait for the last callbacks.
    for _ in 0..2000 {
        let total: usize = seen.lock().unwrap().values().map(Vec::len).sum();
        if total as u64 == per_thread * 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = seen.lock().unwrap();
    let total: usize = seen.values().map(Vec::len).sum();
    assert_eq!(
        total as u64,
        per_thread * 4,
        "every transaction commits once"
    );
    for (coll, order) in seen.iter() {
        let expected: Vec<u64> = (1..=order.len() as u64).collect();
        assert_eq!(order, &expected, "{coll}: callbacks out of queue order");
    }
    drop(seen);
    assert_eq!(store.callback_panics(), 0);
    Arc::try_unwrap(store).ok().unwrap().umount().unwrap();
}

/// A caller's callback that panics is the caller's bug, not the store's: the panic is caught
/// and counted, the reactor lives on, later transactions and reads on that shard work.
#[test]
fn a_panicking_callback_does_not_take_the_shard_down() {
    let devices = StoreDevices::only(Device::open("mem:256M").unwrap());
    let store = make(&devices, &config(vec![0]));
    let mut t = Transaction::new("c");
    t.create_collection();
    store.apply(t).unwrap();
    let mut t = Transaction::new("c");
    t.write("o", 0, vec![1u8; 4096]);
    store
        .queue_transaction(t, |_| panic!("a caller's bug"))
        .unwrap();
    store
        .read_async("c", "o", 0, 1, |_| panic!("another caller's bug"))
        .unwrap();
    let mut t = Transaction::new("c");
    t.write("o", 0, vec![2u8; 4096]);
    store.apply(t).unwrap();
    assert_eq!(store.read("c", "o", 0, 4).unwrap(), vec![2u8; 4]);
    assert_eq!(store.callback_panics(), 2);
    assert!(store.failure().is_none());
    store.umount().unwrap();
}

/// Filling the main device: writes get ENOSPC, metadata keeps committing (BlueFS's reserve on
/// the main device is kept from object data), deleting objects makes room, the store survives
/// a remount and fsck is clean.
#[test]
fn a_full_device_answers_enospc_and_keeps_committing_metadata() {
    let devices = StoreDevices::only(Device::open("mem:384M").unwrap());
    let mut cfg = config(vec![0]);
    cfg.db_size = Some(64 << 20);
    cfg.bluefs_reserve = Some(32 << 20);
    cfg.kv.write_buffer_size = 1 << 20;
    let store = make(&devices, &cfg);
    let mut t = Transaction::new("fill");
    t.create_collection();
    store.apply(t).unwrap();
    // Every object its own bytes, so a cross-linked or misplaced extent cannot read "right".
    let object_bytes = |i: u64| {
        let mut data = vec![0u8; 4 << 20];
        Rng::new(0x5a00 + i).fill_bytes(&mut data);
        data
    };
    let mut written = 0u64;
    let mut enospc = None;
    for i in 0..200u64 {
        let mut t = Transaction::new("fill");
        t.write(&format!("obj{i}"), 0, object_bytes(i));
        match store.apply(t) {
            Ok(()) => written += 1,
            Err(e) => {
                enospc = Some(e);
                break;
            }
        }
    }
    let e = enospc.expect("a 384 MiB device cannot take 800 MiB");
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    assert!(written > 40, "only {written} objects before ENOSPC");
    let free = store.statfs().free;
    assert!(
        free < 4 << 20,
        "ENOSPC with {free} bytes free beyond the reserve"
    );
    // The failed write left no trace.
    assert!(!store.exists("fill", &format!("obj{written}")).unwrap());
    // Metadata goes on committing: 24 MiB of omap, several memtable flushes and compactions.
    let value = vec![7u8; 64 << 10];
    for i in 0..384u32 {
        let mut t = Transaction::new("fill");
        t.omap_setkey("obj0", &i.to_be_bytes(), &value);
        t.setattr("obj1", "n", i.to_le_bytes().to_vec());
        store
            .apply(t)
            .unwrap_or_else(|e| panic!("metadata commit {i} on a full device: {e}"));
    }
    assert!(store.failure().is_none());
    // Deleting makes room again: 64 MiB, since BlueFS has grown into the reserve meanwhile.
    let mut t = Transaction::new("fill");
    for i in 2..18 {
        t.remove(&format!("obj{i}"));
    }
    store.apply(t).unwrap();
    // The space comes back when the removal reaches DONE, a moment after its commit callback.
    let freed = wait_until(|| store.statfs().free >= 4 << 20);
    assert!(freed, "removing 64 MiB freed nothing: {:?}", store.statfs());
    let mut t = Transaction::new("fill");
    t.write("again", 0, object_bytes(1000));
    store.apply(t).unwrap();
    store.umount().unwrap();
    let store = Store::mount_on(devices.clone(), cfg.clone()).unwrap();
    // Every object acknowledged before ENOSPC and not removed, whole, and the one after.
    for i in (0..written).filter(|i| !(2..18).contains(i)) {
        let got = store.read("fill", &format!("obj{i}"), 0, 4 << 20).unwrap();
        assert!(got == object_bytes(i), "obj{i} does not read as written");
    }
    assert!(store.read("fill", "again", 0, 4 << 20).unwrap() == object_bytes(1000));
    assert_eq!(store.omap_get("fill", "obj0").unwrap().len(), 384);
    store.umount().unwrap();
    let report = bluepoll::store::fsck(&devices, &cfg, true, false).unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
}

/// Finds `pattern` on the device (at a 4 KiB boundary) and flips one bit there.
fn flip_bit_in(device: &Device, pattern: &[u8]) -> u64 {
    let info = device.info();
    let mut qp = device.queue_pair(1).unwrap();
    let chunk = 1u64 << 20;
    let bs = info.block_size as u64;
    for at in (0..info.capacity_bytes()).step_by(chunk as usize) {
        let buf = bluepoll::nvme::DmaBuf::new(chunk as usize).unwrap();
        let c = qp
            .execute(IoCmd::read(at / bs, (chunk / bs) as u32, buf, 0))
            .unwrap();
        let buf = c.buf.unwrap();
        for off in (0..chunk as usize).step_by(4096) {
            if buf[off..off + pattern.len()] == *pattern {
                let byte = at + off as u64 + 100;
                let mut block = bluepoll::nvme::DmaBuf::new(bs as usize).unwrap();
                block.copy_from_slice(&buf[off - off % bs as usize..][..bs as usize]);
                block[(byte % bs) as usize] ^= 0x04;
                let c = qp.execute(IoCmd::write(byte / bs, 1, block, 0)).unwrap();
                assert!(c.status.is_success());
                return byte;
            }
        }
    }
    panic!("pattern not found on the device");
}

/// A bit flipped on the data device: reads of the object fail with EIO naming it (never wrong
/// bytes), other objects read fine, and a deep fsck reports the object.
#[test]
fn a_flipped_data_bit_is_an_error_for_read_and_for_deep_fsck() {
    let devices = StoreDevices::only(Device::open("mem:512M").unwrap());
    let cfg = config(vec![0]);
    let store = make(&devices, &cfg);
    let mut pattern = vec![0u8; 64 << 10];
    Rng::new(9).fill_bytes(&mut pattern);
    let mut t = Transaction::new("p");
    t.create_collection()
        .write("victim", 0, pattern.clone())
        .write("bystander", 0, vec![1u8; 8192]);
    store.apply(t).unwrap();
    store.umount().unwrap();
    flip_bit_in(&devices.slow, &pattern[..64]);

    let store = Store::mount_on(devices.clone(), cfg.clone()).unwrap();
    let err = store.read("p", "victim", 0, 65536).unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    let text = err.to_string();
    assert!(
        text.contains("checksum mismatch") && text.contains("p/victim"),
        "{text}"
    );
    // The damaged block is the first one; the rest of the object still reads.
    assert_eq!(
        store.read("p", "victim", 4096, 4096).unwrap(),
        pattern[4096..8192]
    );
    assert_eq!(
        store.read("p", "bystander", 0, 8192).unwrap(),
        vec![1u8; 8192]
    );
    store.umount().unwrap();
    let plain = bluepoll::store::fsck(&devices, &cfg, false, false).unwrap();
    assert!(plain.is_clean(), "metadata is intact: {:?}", plain.errors);
    let deep = bluepoll::store::fsck(&devices, &cfg, true, false).unwrap();
    assert_eq!(deep.errors.len(), 1, "{:?}", deep.errors);
    assert!(
        deep.errors[0].contains("p/victim") && deep.errors[0].contains("checksum mismatch"),
        "{:?}",
        deep.errors
    );
}

/// A commit that fails (here: the data-device flush before it) must not hand the space its
/// transaction freed back to the allocator: the committed metadata still points there, and a
/// write another shard was preparing at that moment could otherwise land on committed data
/// (the eio drill found this as a checksum mismatch after remount, about once in 500 runs).
#[test]
fn a_failed_commit_frees_nothing_the_committed_metadata_still_uses() {
    use bluepoll::nvme::{EioRule, EioTrigger, FaultOps};
    let devices = StoreDevices::only(Device::open("fault:seed=3+mem:256M").unwrap());
    let control = devices.slow.fault_control().unwrap();
    let mut cfg = config(vec![0]);
    cfg.prefer_deferred_size = Some(0);
    let store = make(&devices, &cfg);
    let old = vec![0x5au8; 64 << 10];
    let mut t = Transaction::new("c");
    t.create_collection().write("a", 0, old.clone());
    store.apply(t).unwrap();
    // Every shard has run its pollers since (two round trips), so all frees are done.
    let settle = |store: &Store| {
        store.perf().unwrap();
        store.perf().unwrap();
        store.statfs().free
    };
    let before = settle(&store);
    control.arm(EioRule {
        ops: FaultOps::Flush,
        trigger: EioTrigger::Nth(1),
    });
    let mut t = Transaction::new("c");
    t.write("a", 0, vec![0xa5u8; 64 << 10]);
    let err = store.apply(t).unwrap_err();
    assert!(err.to_string().contains("flush"), "{err}");
    let after = settle(&store);
    assert_eq!(
        after,
        before - (64 << 10),
        "the failed overwrite took 64 KiB of new space and must not have freed the old 64 KiB"
    );
    let _ = store.umount();
    control.disarm_all();
    let store = Store::mount_on(devices.clone(), cfg.clone()).unwrap();
    assert_eq!(store.read("c", "a", 0, 64 << 10).unwrap(), old);
    store.umount().unwrap();
    let deep = bluepoll::store::fsck(&devices, &cfg, true, false).unwrap();
    assert!(deep.is_clean(), "{:?}", deep.errors);
}

/// A store filled through `queue_transaction` (as `bench --ioengine=store` fills it: many
/// writes in flight, answered by callbacks) to twice its capacity, with reads interleaved and
/// overwrites among the writes: each write commits or fails with ENOSPC, nothing of a failed
/// one is ever read, every read returns the newest committed bytes; after a remount every
/// committed write reads back and a deep fsck is clean.
#[test]
fn a_store_filled_twice_over_with_reads_between_serves_only_committed_bytes() {
    const PIECE: u64 = 64 << 10;
    const PIECES_PER_OBJECT: u64 = 64;
    let bytes = |piece: u64, version: u32| -> Vec<u8> {
        let mut data = vec![0u8; PIECE as usize];
        if version > 0 {
            Rng::new(piece << 32 | version as u64).fill_bytes(&mut data);
        }
        data
    };
    let devices = StoreDevices::only(Device::open("mem:192M").unwrap());
    let config = config(vec![0]);
    let store = make(&devices, &config);
    let mut t = Transaction::new("fill");
    t.create_collection();
    store.apply(t).unwrap();
    let capacity = store.statfs().free;
    let pieces = (2 * capacity).div_ceil(PIECE);
    let name = |piece: u64| format!("o{:06}", piece / PIECES_PER_OBJECT);
    let mut rng = Rng::new(19);
    let mut committed: BTreeMap<u64, u32> = BTreeMap::new();
    let mut versions: BTreeMap<u64, u32> = BTreeMap::new();
    let (mut taken, mut refused, mut next) = (0u64, 0u64, 0u64);
    while next < pieces {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut batch = std::collections::BTreeSet::new();
        while batch.len() < 32 && next < pieces {
            let piece = if rng.below(8) == 0 && !committed.is_empty() {
                *committed
                    .keys()
                    .nth(rng.below(committed.len() as u64) as usize)
                    .unwrap()
            } else {
                next += 1;
                next - 1
            };
            if !batch.insert(piece) {
                continue;
            }
            let version = versions.get(&piece).copied().unwrap_or(0) + 1;
            versions.insert(piece, version);
            let mut t = Transaction::new("fill");
            t.write(
                &name(piece),
                (piece % PIECES_PER_OBJECT) * PIECE,
                bytes(piece, version),
            );
            let sender = tx.clone();
            store
                .queue_transaction(t, move |r| sender.send((piece, version, r)).unwrap())
                .unwrap();
            // A read of a committed piece in flight with the writes.
            if let Some((&p, &v)) = committed
                .iter()
                .nth(rng.below(committed.len().max(1) as u64) as usize)
                && !batch.contains(&p)
            {
                let tx = tx.clone();
                store
                    .read_async(
                        "fill",
                        &name(p),
                        (p % PIECES_PER_OBJECT) * PIECE,
                        PIECE,
                        move |r| {
                            let ok = r.is_ok_and(|d| d == bytes(p, v));
                            tx.send((
                                p,
                                0,
                                if ok {
                                    Ok(())
                                } else {
                                    Err(bluepoll::store::StoreError::Corrupt {
                                        reason: format!(
                                            "piece {p}: a read did not return committed version {v}"
                                        ),
                                    })
                                },
                            ))
                            .unwrap();
                        },
                    )
                    .unwrap();
            }
        }
        drop(tx);
        for (piece, version, result) in rx.iter() {
            match (version, result) {
                (0, Ok(())) => {}
                (0, Err(e)) => panic!("{e}"),
                (_, Ok(())) => {
                    taken += 1;
                    committed.insert(piece, version);
                }
                (_, Err(e)) if e.is_no_space() => refused += 1,
                (_, Err(e)) => panic!("piece {piece}: {e} (only ENOSPC is expected)"),
            }
        }
        assert!(store.failure().is_none(), "{:?}", store.failure());
    }
    eprintln!("capacity {capacity}: {taken} writes of {PIECE} committed, {refused} refused");
    assert!(refused > 0, "the store never filled");
    assert!(taken * PIECE >= capacity / 2, "only {taken} writes fitted");
    store.umount().unwrap();
    let report = bluepoll::store::fsck(&devices, &config, true, false).unwrap();
    assert!(report.errors.is_empty(), "deep fsck: {:?}", report.errors);
    let store = Store::mount_on(devices, config).unwrap();
    for piece in 0..pieces {
        let version = committed.get(&piece).copied().unwrap_or(0);
        let got = match store.read(
            "fill",
            &name(piece),
            (piece % PIECES_PER_OBJECT) * PIECE,
            PIECE,
        ) {
            Ok(mut d) => {
                d.resize(PIECE as usize, 0);
                d
            }
            Err(e) if e.is_not_found() => vec![0; PIECE as usize],
            Err(e) => panic!("piece {piece}: {e}"),
        };
        assert!(
            got == bytes(piece, version),
            "piece {piece}: not its committed version {version}"
        );
    }
    store.umount().unwrap();
}

/// A transaction taken at PREPARE whose data write then fails stops the store; what memory
/// shows of it was never stored, so reads of the objects it changed fail (EROFS) instead of
/// returning its bytes, while objects it did not touch still read; after a remount the
/// object reads as committed before.
#[test]
fn reads_never_return_the_bytes_of_a_transaction_that_failed_after_prepare() {
    use bluepoll::nvme::{EioRule, EioTrigger, FaultOps};
    let device = Device::open("fault:cache=off+mem:256M").unwrap();
    let control = device.fault_control().unwrap();
    let devices = StoreDevices::only(device);
    let cfg = config(vec![0]);
    let store = make(&devices, &cfg);
    let mut t = Transaction::new("c");
    t.create_collection();
    t.write("kept", 0, vec![1u8; 65536]);
    t.write("changed", 0, vec![2u8; 65536]);
    store.apply(t).unwrap();
    control.arm(EioRule {
        ops: FaultOps::Write,
        trigger: EioTrigger::Nth(1),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let prepared = tx.clone();
    let mut t = Transaction::new("c");
    t.write("changed", 0, vec![3u8; 65536]);
    store
        .queue_transaction_staged(
            t,
            move |r| prepared.send(("prepared", r.is_ok())).unwrap(),
            move |r| tx.send(("committed", r.is_ok())).unwrap(),
        )
        .unwrap();
    assert_eq!(rx.recv().unwrap(), ("prepared", true), "PREPARE took it");
    assert_eq!(
        rx.recv().unwrap(),
        ("committed", false),
        "its data write failed"
    );
    assert!(
        store.failure().is_some(),
        "a failed data write stops the store"
    );
    match store.read("c", "changed", 0, 65536) {
        Ok(bytes) => assert!(
            bytes != vec![3u8; 65536],
            "a read returned the bytes of a transaction that was never stored"
        ),
        Err(e) => assert_eq!(e.errno(), libc::EROFS, "{e}"),
    }
    assert_eq!(store.read("c", "kept", 0, 4).unwrap(), vec![1u8; 4]);
    control.disarm_all();
    let _ = store.umount();
    let store = Store::mount_on(devices, cfg).unwrap();
    assert_eq!(store.read("c", "changed", 0, 4).unwrap(), vec![2u8; 4]);
    store.umount().unwrap();
}
