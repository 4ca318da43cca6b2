//! A store filled through NBD to twice its capacity, from two connections at once: every write
//! is either refused on the request itself (ENOSPC) or readable after a restart; every flush
//! that succeeds covers only writes that survive; no read before the restart returns bytes a
//! read after it does not; the object map stays valid and fast-diff complete; deep fsck is
//! clean. (The issue "A full store through NBD": before the fix, writes past capacity were
//! acknowledged and dropped, and flushes succeeded over them.)

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use bluepoll::image::{self, Image, features};
use bluepoll::nbd::NbdServer;
use bluepoll::nbd::protocol::*;
use bluepoll::nvme::Device;
use bluepoll::store::{Store, StoreConfig, StoreDevices, fsck};
use common::nbd_client::Client;

/// Bytes each write covers: the unit of the model.
const UNIT: u64 = 256 << 10;
/// Writes in flight per connection.
const DEPTH: usize = 8;
const ENOSPC_WIRE: u32 = 28;

/// The bytes of version `version` of unit `unit` (version 0: never written, zeros).
fn pattern(unit: u64, version: u32) -> Vec<u8> {
    if version == 0 {
        return vec![0; UNIT as usize];
    }
    let mut out = Vec::with_capacity(UNIT as usize);
    let mut x = (unit << 32 | version as u64) | 1;
    while out.len() < UNIT as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// A new store on `main`, mounted with one unpinned reactor.
fn new_store(main: Device) -> (StoreDevices, StoreConfig, Store) {
    let devices = StoreDevices::only(main);
    let config = StoreConfig {
        pin: false,
        cpus: vec![0],
        ..StoreConfig::default()
    };
    Store::mkfs_on(&devices, &config).unwrap();
    let store = Store::mount_on(devices.clone(), config.clone()).unwrap();
    (devices, config, store)
}

/// What one connection saw.
#[derive(Default)]
struct Seen {
    /// unit → the newest version whose write was answered with success.
    acked: BTreeMap<u64, u32>,
    accepted: u64,
    refused: u64,
    fua: u64,
    flushes: u64,
    /// Reads before the restart: (unit, version they returned).
    reads: Vec<(u64, u32)>,
}

/// Writes `units` (sequentially, with overwrites of earlier units mixed in), DEPTH at a time,
/// every fourth with FUA, a read of an acknowledged unit after each batch and a flush every
/// 16 batches; every flush must succeed. Then waits at `barrier` and flushes once more.
fn fill(addr: std::net::SocketAddr, units: std::ops::Range<u64>, barrier: &Barrier) -> Seen {
    let mut c = Client::connect(addr);
    c.go("vol");
    c.s.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    let mut seen = Seen::default();
    let mut rng = units.start.wrapping_mul(0x9e37_79b9) | 1;
    let mut next = units.start;
    let mut batches = 0u64;
    let mut versions: BTreeMap<u64, u32> = BTreeMap::new();
    while next < units.end {
        // One batch: distinct units, so no two writes to a unit are in flight together.
        let mut batch: BTreeMap<u64, (u64, u32, bool)> = BTreeMap::new();
        let mut in_batch = std::collections::BTreeSet::new();
        while batch.len() < DEPTH && next < units.end {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let unit = if rng % 8 == 0 && !seen.acked.is_empty() {
                let keys: Vec<u64> = seen.acked.keys().copied().collect();
                keys[(rng >> 8) as usize % keys.len()]
            } else {
                next += 1;
                next - 1
            };
            if !in_batch.insert(unit) {
                continue;
            }
            let version = versions.get(&unit).copied().unwrap_or(0) + 1;
            versions.insert(unit, version);
            let fua = rng % 4 == 1;
            let flags = if fua { CMD_FLAG_FUA } else { 0 };
            let cookie = c.send(
                flags,
                CMD_WRITE,
                unit * UNIT,
                UNIT as u32,
                &pattern(unit, version),
            );
            batch.insert(cookie, (unit, version, fua));
        }
        for _ in 0..batch.len() {
            let (cookie, error, _) = c.receive(|_| None);
            let (unit, version, fua) = batch[&cookie];
            match error {
                0 => {
                    seen.accepted += 1;
                    seen.fua += fua as u64;
                    seen.acked.insert(unit, version);
                }
                ENOSPC_WIRE => seen.refused += 1,
                other => panic!("write of unit {unit}: error {other}, not 0 or ENOSPC"),
            }
        }
        batches += 1;
        if let Some((&unit, &version)) = seen
            .acked
            .iter()
            .nth(rng as usize % seen.acked.len().max(1))
        {
            let cookie = c.send(0, CMD_READ, unit * UNIT, UNIT as u32, &[]);
            let (got, error, data) = c.receive(|_| Some(UNIT as u32));
            assert_eq!(got, cookie);
            assert_eq!(error, 0, "read of unit {unit}");
            let found = (1..=version).rev().find(|&v| data == pattern(unit, v));
            assert_eq!(
                found,
                Some(version),
                "unit {unit}: a read returned something other than the acknowledged version {version}"
            );
            seen.reads.push((unit, version));
        }
        if batches % 16 == 0 {
            let (e, _) = c.request(CMD_FLUSH, 0, 0, &[]);
            assert_eq!(
                e, 0,
                "a flush failed though no acknowledged write may be lost"
            );
            seen.flushes += 1;
        }
    }
    barrier.wait();
    let (e, _) = c.request(CMD_FLUSH, 0, 0, &[]);
    assert_eq!(e, 0, "the final flush failed");
    seen.flushes += 1;
    c.request_disconnect();
    seen
}

#[test]
fn a_store_filled_twice_over_through_nbd_loses_no_acknowledged_write() {
    let (devices, config, store) = new_store(Device::open("mem:256M").unwrap());
    let capacity = store.statfs().free;
    let units = (2 * capacity).div_ceil(UNIT).next_multiple_of(16);
    image::create(&store, "vol", units * UNIT, 22, features::DEFAULT).unwrap();
    let server = NbdServer::bind("127.0.0.1:0", &store, &[]).unwrap();
    let (addr, stop) = (server.local_addr(), server.stopper());
    let serving = std::thread::spawn(move || server.run().unwrap());

    let barrier = Arc::new(Barrier::new(2));
    let half = units / 2;
    let results = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = [0..half, half..units]
        .into_iter()
        .map(|range| {
            let barrier = Arc::clone(&barrier);
            let results = Arc::clone(&results);
            let failed = Arc::clone(&failed);
            std::thread::spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    fill(addr, range, &barrier)
                }));
                match outcome {
                    Ok(seen) => results.lock().unwrap().push(seen),
                    Err(p) => {
                        failed.store(true, Ordering::SeqCst);
                        std::panic::resume_unwind(p);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a connection failed its checks");
    }
    stop.store(true, Ordering::Relaxed);
    serving.join().unwrap();
    let statfs = store.statfs();
    store.umount().unwrap();

    let seen = std::mem::take(&mut *results.lock().unwrap());
    let accepted: u64 = seen.iter().map(|s| s.accepted).sum();
    let refused: u64 = seen.iter().map(|s| s.refused).sum();
    let fua: u64 = seen.iter().map(|s| s.fua).sum();
    let flushes: u64 = seen.iter().map(|s| s.flushes).sum();
    eprintln!(
        "capacity {capacity} bytes, image {} bytes: {accepted} writes accepted ({fua} FUA), {refused} refused with ENOSPC, {flushes} flushes; at the end {statfs:?}",
        units * UNIT
    );
    assert!(refused > 0, "the store never filled");
    assert!(
        accepted * UNIT >= capacity / 2,
        "only {accepted} writes of {UNIT} bytes were taken into {capacity} bytes"
    );

    let report = fsck(&devices, &config, true, false).unwrap();
    assert!(report.errors.is_empty(), "deep fsck: {:?}", report.errors);
    let store = Store::mount_on(devices, config).unwrap();
    let mut img = Image::open(&store, "vol").unwrap();
    img.acquire_lock().unwrap();
    assert!(
        !img.info().map_invalid(),
        "the object map was marked invalid"
    );
    let mut acked: BTreeMap<u64, u32> = BTreeMap::new();
    for s in &seen {
        acked.extend(s.acked.iter().map(|(&u, &v)| (u, v)));
    }
    for unit in 0..units {
        let version = acked.get(&unit).copied().unwrap_or(0);
        let data = img.read(unit * UNIT, UNIT).unwrap();
        assert!(
            data == pattern(unit, version),
            "unit {unit}: after the restart it does not read as its acknowledged version {version}"
        );
    }
    for s in &seen {
        for &(unit, version) in &s.reads {
            // A read before the restart saw `version`; the unit now reads as its newest
            // acknowledged version, which is `version` or a later acknowledged one.
            assert!(acked[&unit] >= version, "unit {unit}");
        }
    }
    // The map says "may exist" exactly for the objects that exist.
    let map = img.object_map().expect("a trusted map").clone();
    let object = 1u64 << 22;
    for i in 0..img.info().objects() {
        let exists = store.exists("img.vol", &format!("data.{i:016x}")).unwrap();
        assert_eq!(
            map.get(i).may_exist(),
            exists,
            "object {i}: map {:?}",
            map.get(i)
        );
    }
    // Fast-diff from the beginning covers every acknowledged unit.
    let diff = img.diff(None, None).unwrap();
    for &unit in acked.keys() {
        let (start, end) = (unit * UNIT, (unit + 1) * UNIT);
        assert!(
            diff.extents
                .iter()
                .any(|e| e.offset <= start && e.exists && e.offset + e.len >= end),
            "fast-diff misses unit {unit} (object {})",
            start / object
        );
    }
    drop(img);
    store.umount().unwrap();
}

/// A write answered from the write cache that the device then fails (the store stops): every
/// flush after it fails, on the connection that wrote it, on another one open at the time, again
/// and again, and on a connection made later; reads of what it wrote never return its bytes;
/// after a remount the flushed write is there and the lost one is not.
#[test]
fn a_lost_write_fails_every_later_flush_on_every_connection() {
    use bluepoll::nvme::{EioRule, EioTrigger, FaultOps};
    let device = Device::open("fault:cache=off+mem:256M").unwrap();
    let control = device.fault_control().unwrap();
    let (devices, config, store) = new_store(device);
    image::create(&store, "vol", 64 << 20, 22, features::DEFAULT).unwrap();
    let server = NbdServer::bind("127.0.0.1:0", &store, &[]).unwrap();
    let (addr, stop) = (server.local_addr(), server.stopper());
    let serving = std::thread::spawn(move || server.run().unwrap());
    let mut a = Client::connect(addr);
    a.go("vol");
    let mut b = Client::connect(addr);
    b.go("vol");
    let cookie = a.send(0, CMD_WRITE, 0, UNIT as u32, &pattern(0, 1));
    assert_eq!(a.receive(|_| None), (cookie, 0, Vec::new()));
    assert_eq!(a.request(CMD_FLUSH, 0, 0, &[]).0, 0);

    // The next write command of the device fails: B's write is taken, then lost.
    control.arm(EioRule {
        ops: FaultOps::Write,
        trigger: EioTrigger::Nth(1),
    });
    let cookie = b.send(0, CMD_WRITE, UNIT, UNIT as u32, &pattern(1, 1));
    assert_eq!(
        b.receive(|_| None),
        (cookie, 0, Vec::new()),
        "taken from the cache"
    );
    for round in ["", " again"] {
        for (who, c) in [("A", &mut a), ("B", &mut b)] {
            assert_eq!(
                c.request(CMD_FLUSH, 0, 0, &[]).0,
                5,
                "{who}{round}: a flush over a lost write must fail"
            );
        }
    }
    let cookie = b.send(0, CMD_READ, UNIT, UNIT as u32, &[]);
    let (_, error, data) = b.receive(|c| (c == cookie).then_some(UNIT as u32));
    assert!(
        error != 0 || data != pattern(1, 1),
        "a read returned the bytes of a write that was never stored"
    );
    let mut later = Client::connect(addr);
    later.go("vol");
    assert_eq!(
        later.request(CMD_FLUSH, 0, 0, &[]).0,
        5,
        "a later client's flush must fail too"
    );
    control.disarm_all();
    drop((a, b, later));
    stop.store(true, Ordering::Relaxed);
    serving.join().unwrap();
    let _ = store.umount();

    let store = Store::mount_on(devices, config).unwrap();
    let mut img = Image::open(&store, "vol").unwrap();
    assert!(
        img.read(0, UNIT).unwrap() == pattern(0, 1),
        "the flushed write survives"
    );
    assert!(
        img.read(UNIT, UNIT).unwrap() != pattern(1, 1),
        "the lost write cannot be there"
    );
    drop(img);
    store.umount().unwrap();
}
