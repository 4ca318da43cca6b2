//! Power cuts under a random object-store workload, on `fault:` devices (volatile write cache,
//! torn and surviving writes at the cut).
//!
//! Each run makes a store, queues random transactions on two collections with up to eight in
//! flight, and at a random moment stops the devices (every command from then on fails, as if
//! the power went: nothing more reaches the media), unmounts what is left, cuts the power (the
//! volatile caches lose, tear or keep what was not flushed) and mounts again. Then, for each
//! collection, the state must be that after exactly its first k transactions for some k between
//! the number whose commit callback said Ok and the number queued — every committed transaction
//! visible in full, none in part — commit callbacks must have come in queue order, and a deep
//! fsck must be clean.
//!
//! 320 runs in the normal suite (two threads); `BLUEPOLL_STORE_CRASH_RUNS=N` for more
//! (`scripts/store-soak.sh`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bluepoll::nvme::{Device, EioRule, EioTrigger, FaultControl, FaultOps};
use bluepoll::rand::Rng;
use bluepoll::store::{Store, StoreConfig, StoreDevices, Transaction};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Obj {
    data: Vec<u8>,
    attrs: BTreeMap<String, Vec<u8>>,
    omap: BTreeMap<Vec<u8>, Vec<u8>>,
}

type Coll = BTreeMap<String, Obj>;

#[derive(Clone, Debug)]
enum Step {
    Write {
        obj: String,
        off: u64,
        data: Vec<u8>,
    },
    Zero {
        obj: String,
        off: u64,
        len: u64,
    },
    Truncate {
        obj: String,
        size: u64,
    },
    Remove {
        obj: String,
    },
    SetAttr {
        obj: String,
        key: String,
        value: Vec<u8>,
    },
    OmapSet {
        obj: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    OmapRm {
        obj: String,
        key: Vec<u8>,
    },
    Clone {
        src: String,
        dst: String,
    },
    Rename {
        from: String,
        to: String,
    },
}

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
const MAX_OBJECT: u64 = 96 << 10;

fn gen_steps(rng: &mut Rng, model: &Coll, serial: u64) -> Vec<Step> {
    let mut m = model.clone();
    let mut steps = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let name = NAMES[rng.below(NAMES.len() as u64) as usize].to_string();
        let exists = m.contains_key(&name);
        let step = match rng.below(12) {
            0..=4 => {
                // Writes of every alignment, small ones often (deferred when enabled).
                let off = match rng.below(3) {
                    0 => rng.below(MAX_OBJECT / 4096) * 4096,
                    _ => rng.below(MAX_OBJECT - 1),
                };
                let len = match rng.below(4) {
                    0 => 1 + rng.below(512),
                    1 => 4096,
                    _ => 1 + rng.below((MAX_OBJECT - off).min(40_000)),
                };
                let mut data = vec![0u8; len.min(MAX_OBJECT - off) as usize];
                rng.fill_bytes(&mut data);
                data[0] = serial as u8;
                Step::Write {
                    obj: name,
                    off,
                    data,
                }
            }
            5 if exists => Step::Zero {
                obj: name,
                off: rng.below(MAX_OBJECT),
                len: 1 + rng.below(20_000),
            },
            6 if exists => Step::Truncate {
                obj: name,
                size: rng.below(MAX_OBJECT),
            },
            7 if exists => Step::Remove { obj: name },
            8 if exists => Step::SetAttr {
                obj: name,
                key: format!("k{}", rng.below(4)),
                value: serial.to_le_bytes().to_vec(),
            },
            9 if exists => {
                if rng.below(3) == 0 {
                    Step::OmapRm {
                        obj: name,
                        key: vec![rng.below(8) as u8],
                    }
                } else {
                    Step::OmapSet {
                        obj: name,
                        key: vec![rng.below(8) as u8],
                        value: serial.to_le_bytes().to_vec(),
                    }
                }
            }
            10 if exists => {
                let dst = NAMES[rng.below(NAMES.len() as u64) as usize].to_string();
                if dst == name {
                    continue;
                }
                Step::Clone { src: name, dst }
            }
            11 if exists => {
                let to = NAMES[rng.below(NAMES.len() as u64) as usize].to_string();
                if m.contains_key(&to) {
                    continue;
                }
                Step::Rename { from: name, to }
            }
            _ => continue,
        };
        apply(&mut m, &step);
        steps.push(step);
    }
    steps
}

fn apply(m: &mut Coll, step: &Step) {
    match step {
        Step::Write { obj, off, data } => {
            let d = &mut m.entry(obj.clone()).or_default().data;
            let end = *off as usize + data.len();
            if d.len() < end {
                d.resize(end, 0);
            }
            d[*off as usize..end].copy_from_slice(data);
        }
        Step::Zero { obj, off, len } => {
            let d = &mut m.get_mut(obj).expect("exists").data;
            let end = (off + len) as usize;
            if d.len() < end {
                d.resize(end, 0);
            }
            d[*off as usize..end].fill(0);
        }
        Step::Truncate { obj, size } => m
            .get_mut(obj)
            .expect("exists")
            .data
            .resize(*size as usize, 0),
        Step::Remove { obj } => {
            m.remove(obj);
        }
        Step::SetAttr { obj, key, value } => {
            m.get_mut(obj)
                .expect("exists")
                .attrs
                .insert(key.clone(), value.clone());
        }
        Step::OmapSet { obj, key, value } => {
            m.get_mut(obj)
                .expect("exists")
                .omap
                .insert(key.clone(), value.clone());
        }
        Step::OmapRm { obj, key } => {
            m.get_mut(obj).expect("exists").omap.remove(key);
        }
        Step::Clone { src, dst } => {
            let o = m[src].clone();
            m.insert(dst.clone(), o);
        }
        Step::Rename { from, to } => {
            let o = m.remove(from).expect("exists");
            m.insert(to.clone(), o);
        }
    }
}

fn transaction(coll: &str, steps: &[Step]) -> Transaction {
    let mut t = Transaction::new(coll);
    for s in steps {
        match s {
            Step::Write { obj, off, data } => t.write(obj, *off, data.clone()),
            Step::Zero { obj, off, len } => t.zero(obj, *off, *len),
            Step::Truncate { obj, size } => t.truncate(obj, *size),
            Step::Remove { obj } => t.remove(obj),
            Step::SetAttr { obj, key, value } => t.setattr(obj, key, value.clone()),
            Step::OmapSet { obj, key, value } => t.omap_setkey(obj, key, value),
            Step::OmapRm { obj, key } => t.omap_rmkeys(obj, vec![key.clone()]),
            Step::Clone { src, dst } => t.clone_object(src, dst),
            Step::Rename { from, to } => t.rename(from, to),
        };
    }
    t
}

/// What the store holds of a collection.
fn snapshot(store: &Store, coll: &str, seed: u64) -> Coll {
    let fail = |what: &str, e: bluepoll::store::StoreError| -> ! {
        panic!("seed {seed}: {what} of {coll} after the power cut: {e}")
    };
    let mut out = Coll::new();
    let names = store
        .list_objects(coll, None, 1000)
        .unwrap_or_else(|e| fail("listing", e));
    for name in names {
        let size = store
            .stat(coll, &name)
            .unwrap_or_else(|e| fail("stat", e))
            .size;
        let data = store
            .read(coll, &name, 0, size)
            .unwrap_or_else(|e| fail("reading", e));
        assert_eq!(
            data.len() as u64,
            size,
            "seed {seed}: short read of {coll}/{name}"
        );
        let obj = Obj {
            data,
            attrs: store
                .getattrs(coll, &name)
                .unwrap_or_else(|e| fail("getattrs", e)),
            omap: store
                .omap_get(coll, &name)
                .unwrap_or_else(|e| fail("omap_get", e)),
        };
        out.insert(name, obj);
    }
    out
}

fn summary(c: &Coll) -> Vec<(String, usize, usize, usize)> {
    c.iter()
        .map(|(n, o)| (n.clone(), o.data.len(), o.attrs.len(), o.omap.len()))
        .collect()
}

struct Layout {
    devices: StoreDevices,
    controls: Vec<FaultControl>,
    config: StoreConfig,
}

fn layout(seed: u64) -> Layout {
    let faults = format!("seed={seed},torn=0.5,survive=0.3");
    let open = |size: &str| Device::open(&format!("fault:{faults}+mem:{size}")).unwrap();
    let separate = seed % 2 == 1;
    let devices = StoreDevices {
        slow: open(if separate { "256M" } else { "512M" }),
        db: separate.then(|| open("256M")),
        wal: separate.then(|| open("64M")),
    };
    let controls = [
        Some(&devices.slow),
        devices.db.as_ref(),
        devices.wal.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|d| d.fault_control().unwrap())
    .collect();
    let mut config = StoreConfig {
        pin: false,
        cpus: if seed % 4 < 2 { vec![0] } else { vec![0, 1] },
        prefer_deferred_size: Some(if seed % 3 == 0 { 0 } else { 64 << 10 }),
        db_size: Some(128 << 20),
        bluefs_reserve: Some(16 << 20),
        ..StoreConfig::default()
    };
    config.kv.write_buffer_size = 256 << 10;
    config.kv.error_retry_interval = Duration::from_millis(5);
    config.bluefs.read_cache_bytes = 0;
    Layout {
        devices,
        controls,
        config,
    }
}

/// Per collection: transactions queued, and the queue numbers of those whose callback said Ok,
/// in callback order.
#[derive(Default)]
struct Progress {
    queued: u64,
    acked: Vec<u64>,
}

/// One run; returns whether anything was in flight at the cut.
/// One run: whether transactions were in flight at the cut, and how many unflushed device
/// writes the cut lost or tore.
fn crash_run(seed: u64) -> (bool, u64) {
    let l = layout(seed);
    Store::mkfs_on(&l.devices, &l.config).unwrap();
    let store = Store::mount_on(l.devices.clone(), l.config.clone()).unwrap();
    let colls = ["c0", "c1"];
    for c in colls {
        let mut t = Transaction::new(c);
        t.create_collection();
        store.apply(t).unwrap();
    }
    let mut rng = Rng::new(seed ^ 0xc0ffee);
    let total = 5 + rng.below(60);
    let cut_after = rng.below(total + 1);
    let progress: Vec<Arc<Mutex<Progress>>> = colls.iter().map(|_| Default::default()).collect();
    // Model states after each of the last transactions queued per collection (the window of
    // states a crash may leave).
    let window = 9;
    let mut models: Vec<VecDeque<(u64, Coll)>> = colls
        .iter()
        .map(|_| VecDeque::from([(0, Coll::new())]))
        .collect();
    let mut in_flight_at_cut = false;
    for serial in 0..total {
        if serial == cut_after {
            if rng.below(2) == 0 {
                std::thread::sleep(Duration::from_micros(rng.below(3000)));
            }
            in_flight_at_cut = progress.iter().any(|p| {
                let p = p.lock().unwrap();
                p.acked.len() as u64 != p.queued
            });
            break;
        }
        let c = rng.below(2) as usize;
        // Keep at most eight of a collection's transactions in flight.
        while {
            let p = progress[c].lock().unwrap();
            p.queued - p.acked.len() as u64 >= 8
        } {
            std::thread::yield_now();
        }
        let (last, model) = models[c].back().cloned().expect("one state at least");
        let steps = gen_steps(&mut rng, &model, serial);
        let mut next = model;
        for s in &steps {
            apply(&mut next, s);
        }
        let number = last + 1;
        models[c].push_back((number, next));
        if models[c].len() > window + 1 {
            models[c].pop_front();
        }
        let p = Arc::clone(&progress[c]);
        p.lock().unwrap().queued = number;
        store
            .queue_transaction(transaction(colls[c], &steps), move |r| {
                if r.is_ok() {
                    p.lock().unwrap().acked.push(number);
                }
            })
            .unwrap();
    }
    // The power goes: from now on nothing reaches the media.
    for c in &l.controls {
        c.arm(EioRule {
            ops: FaultOps::Any,
            trigger: EioTrigger::Every(1),
        });
    }
    let _ = store.umount();
    let mut damaged = 0;
    for c in &l.controls {
        c.disarm_all();
        let cut = c.power_cut().unwrap();
        damaged += cut.writes_lost + cut.writes_torn;
    }
    let store = Store::mount_on(l.devices.clone(), l.config.clone())
        .unwrap_or_else(|e| panic!("seed {seed}: mount after the power cut failed: {e}"));
    for (i, c) in colls.iter().enumerate() {
        let p = progress[i].lock().unwrap();
        assert!(
            p.acked.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: commit callbacks of {c} out of order: {:?}",
            p.acked
        );
        let acked = p.acked.last().copied().unwrap_or(0);
        assert_eq!(
            acked,
            p.acked.len() as u64,
            "seed {seed}: {c}: an acknowledged transaction follows an unacknowledged one"
        );
        let found = snapshot(&store, c, seed);
        let matches: Vec<u64> = models[i]
            .iter()
            .filter(|(n, m)| *n >= acked && *n <= p.queued && *m == found)
            .map(|(n, _)| *n)
            .collect();
        assert!(
            !matches.is_empty(),
            "seed {seed}: {c} after the cut matches no state between its {acked} acknowledged \
             and {} queued transactions\nfound: {:?}\nstates: {:?}",
            p.queued,
            summary(&found),
            models[i]
                .iter()
                .map(|(n, m)| (*n, summary(m)))
                .collect::<Vec<_>>()
        );
    }
    store.umount().unwrap();
    let report = bluepoll::store::fsck(&l.devices, &l.config, true, false).unwrap();
    assert!(
        report.is_clean(),
        "seed {seed}: fsck after the power cut: {:?}",
        report.errors
    );
    (in_flight_at_cut, damaged)
}

#[test]
fn power_cuts_lose_no_committed_transaction_and_tear_none() {
    let runs: u64 = std::env::var("BLUEPOLL_STORE_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(320);
    let first: u64 = std::env::var("BLUEPOLL_STORE_CRASH_FIRST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(runs > 0, "BLUEPOLL_STORE_CRASH_RUNS=0 runs nothing");
    let threads = 2;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let (mut busy, mut damaged) = (0, 0);
                for seed in (first..first + runs).filter(|s| s % threads == t) {
                    let (in_flight, cut) = crash_run(seed);
                    busy += u64::from(in_flight);
                    damaged += cut;
                }
                (busy, damaged)
            })
        })
        .collect();
    let (busy, damaged) = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(
        busy * 3 >= runs,
        "only {busy} of {runs} cuts found transactions in flight: the cut comes too late"
    );
    // The cuts must really have lost or torn device writes, or the test proves nothing.
    assert!(
        runs < 20 || damaged > 0,
        "{runs} power cuts lost or tore no device write"
    );
    eprintln!(
        "store crash test: {runs} runs, {runs} power cuts ({busy} with transactions in flight, \
         {damaged} unflushed device writes lost or torn), 0 lost, 0 torn, fsck clean"
    );
}
