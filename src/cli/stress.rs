//! `bluepoll stress run|check` and `bluepoll drill kill9`: a verified workload on the object
//! store that keeps a side log of what it submitted and what the store acknowledged, a checker
//! that holds a store to that log after any kind of stop, and the kill -9 drill built from both.
//!
//! The side log (`--log=FILE`, text, one record per line, appended with plain `write`s — a
//! killed process loses nothing the kernel has, and the drills that cut power keep the log off
//! the faulty devices):
//!
//! ```text
//! S OBJ SEQ OFFSET LEN SEED   transaction SEQ (write LEN bytes from SEED at OFFSET, then set
//!                             the attr "seq" to SEQ) was handed to the store — written before
//!                             queue_transaction
//! A OBJ SEQ                   the store acknowledged SEQ (commit callback with Ok)
//! F OBJ SEQ                   the store rejected SEQ (an error other than EROFS): it never
//!                             happens, later ones build on the state before it
//! R OBJ SEQ                   a check found OBJ at SEQ: later submissions of OBJ never
//!                             happened, and its history continues from SEQ
//! ```
//!
//! One object's transactions are on one collection, so they commit in order: after any stop,
//! the object must be at some submitted SEQ at least as new as its newest acknowledged one, and
//! its bytes must be exactly the writes up to that SEQ — nothing lost, nothing in part.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bluepoll::bluefs::format::SUPERBLOCK_OFFSETS;
use bluepoll::bluefs::{DeviceId, Extent};
use bluepoll::nvme::{Device, DmaBuf, EioRule, EioTrigger, FaultControl, FaultOps, IoCmd};
use bluepoll::rand::Rng;
use bluepoll::store::{Store, StoreConfig, StoreDevices, Transaction, fsck};

use crate::cli::store as store_cli;

pub const STRESS_USAGE: &str = "\
usage: bluepoll stress run --log=FILE DEVICES [--mkfs] [--seconds=N] [--objects=N]
                           [--object-size=SIZE] [--iodepth=N] [--seed=N]
       bluepoll stress check --log=FILE DEVICES

run: a verified random workload — writes of 512 B to 256 KiB at any alignment into --objects
objects (default 32) of --object-size (default 1M) spread over 4 collections, --iodepth (16)
transactions in flight — for --seconds (default 0: until killed). Every submission and every
acknowledgement goes to the side log FILE. It starts with a check (below) unless --mkfs makes a
new store (and a new log).
check: mounts, and holds every object to the log: it must be at a submitted transaction no
older than its newest acknowledged one, with exactly that history's bytes; then unmounts and
runs a deep fsck. Prints `checked N objects: N lost, N corrupt` and exits 1 when either is
not 0 or fsck is not clean.

DEVICES: --slow=URI [--db=URI] [--wal=URI] or --config=FILE, and --cpus=LIST (as mkfs).";

pub const DRILL_USAGE: &str = "\
usage: bluepoll drill kill9|power-cut|eio|enospc|corruption [--runs=N | --long=SECONDS] [--seed=N]
                     [--dir=DIR]

Each drill prints `NAME: N runs, N faults, N lost, N corrupt` (and the runs that failed) and
exits 1 unless nothing was lost or corrupt. --long=SECONDS runs for that long instead of N runs
(and overrides --runs).

kill9      a store on uring: files in DIR (required; a 512 MiB main and a 64 MiB WAL device);
           N times (default 50): `bluepoll stress run` as a child process, SIGKILL at a random
           moment (mount, replay or load), then `stress check`: every acknowledged transaction
           present, none in part, deep fsck clean.
power-cut  in this process, on fault: devices over RAM (one device, or main + DB + WAL; one or
           two shards; deferred writes on or off, by seed): the stress load, every device
           frozen at a random moment, power cut (caches lost, writes in flight torn or kept),
           remount and check. Default 40 runs.
eio        as power-cut, but one media error on a random device at a random moment (on a read,
           write, flush or any command): the store fails the request or turns read-only with
           the reason, then remount and check; then every object read while every other read of
           the main device fails: right bytes or EIO naming the object. Default 40 runs.
enospc     in this process: a store filled to the last byte through the API (ENOSPC, no
           trace of the failed write, the store stays up), 300 metadata transactions on the
           full store (RocksDB and BlueFS keep committing), then room made by deleting objects
           or by growing the main device and `expand`, more writes, remount, every object
           checked, deep fsck. Then an image of twice a store's capacity filled as the NBD
           server fills it (writes answered when taken or when durable, reads and flushes
           between): each write taken or refused with ENOSPC at once, every flush succeeds,
           after remount every acknowledged unit reads back, the object map exact, fast-diff
           complete, deep fsck clean. Default 20 runs.
corruption in this process: a store with a history, then one bit flipped in object data, the
           store label, a BlueFS superblock slot, the older half of the BlueFS log or a live
           RocksDB table; the damage must be reported (mount refused with the reason, EIO
           naming the object, deep fsck errors) or be harmless (everything checks right);
           wrong data without an error counts as corrupt. Default 50 runs.
Panics anywhere in the process count as failures. DIR (power-cut, eio) holds the side logs.
BLUEPOLL_DRILL_VERBOSE=1 prints every run of the in-process drills.";

const COLLECTIONS: u64 = 4;

/// One submitted write of the log.
#[derive(Clone, Copy, Debug)]
struct Write1 {
    seq: u64,
    offset: u64,
    len: u64,
    seed: u64,
}

/// What the log says of one object.
#[derive(Default, Debug)]
struct History {
    /// Writes that may have happened, oldest first (a check drops the ones that did not).
    writes: Vec<Write1>,
    /// The newest acknowledged SEQ (0: none).
    acked: u64,
    /// The SEQ a check found (the base the writes build on); 0 for a new object.
    resolved: u64,
    /// Transactions the store rejected (they must never show).
    failed: Vec<u64>,
}

/// The side log, read back.
#[derive(Default)]
struct Log {
    objects: BTreeMap<u64, History>,
    next_seq: u64,
}

impl Log {
    fn read(path: &Path) -> Result<Log> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the side log {}", path.display()))?;
        let mut log = Log {
            next_seq: 1,
            ..Log::default()
        };
        // Every line is complete but the last one when the file does not end in a newline.
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let complete: Vec<bool> = lines.iter().map(|l| l.ends_with('\n')).collect();
        for (number, line) in lines.iter().enumerate() {
            let line = line.trim_end_matches('\n');
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let num = |i: usize| -> Result<u64> {
                fields.get(i).and_then(|f| f.parse().ok()).with_context(|| {
                    format!("{}:{}: bad record '{line}'", path.display(), number + 1)
                })
            };
            // A line without its newline was cut by a kill (`open_log` ends it later); its
            // transaction was never queued (an S line is whole before queue_transaction).
            if !complete[number] {
                continue;
            }
            match fields.first().copied() {
                Some("S") if fields.len() == 6 => {
                    let w = Write1 {
                        seq: num(2)?,
                        offset: num(3)?,
                        len: num(4)?,
                        seed: num(5)?,
                    };
                    log.next_seq = log.next_seq.max(w.seq + 1);
                    log.objects.entry(num(1)?).or_default().writes.push(w);
                }
                Some("A") if fields.len() == 3 => {
                    let h = log.objects.entry(num(1)?).or_default();
                    h.acked = h.acked.max(num(2)?);
                }
                Some("F") if fields.len() == 3 => {
                    let seq = num(2)?;
                    let h = log.objects.entry(num(1)?).or_default();
                    h.writes.retain(|w| w.seq != seq);
                    h.failed.push(seq);
                }
                Some("R") if fields.len() == 3 => {
                    let seq = num(2)?;
                    let h = log.objects.entry(num(1)?).or_default();
                    h.writes.retain(|w| w.seq <= seq);
                    h.resolved = seq;
                }
                _ => bail!("{}:{}: bad record '{line}'", path.display(), number + 1),
            }
        }
        Ok(log)
    }
}

/// Opens the side log for appending, ending a line a kill cut short so that it stays alone
/// (and is skipped) rather than swallowing the next record.
fn open_log(path: &Path) -> Result<File> {
    let mut out = OpenOptions::new()
        .append(true)
        .read(true)
        .open(path)
        .with_context(|| format!("opening the side log {}", path.display()))?;
    let len = out.metadata()?.len();
    if len > 0 {
        let mut last = [0u8];
        std::os::unix::fs::FileExt::read_exact_at(&out, &mut last, len - 1)?;
        if last[0] != b'\n' {
            out.write_all(b"\n")?;
        }
    }
    Ok(out)
}

/// Appends records with one `write`: a kill lands before or after it, not inside a line.
fn record(out: &mut File, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())
        .context("appending to the side log")
}

fn collection_of(obj: u64) -> String {
    format!("stress.{}", obj % COLLECTIONS)
}

fn object_name(obj: u64) -> String {
    format!("obj{obj:05}")
}

fn data_of(w: &Write1) -> Vec<u8> {
    let mut data = vec![0u8; w.len as usize];
    Rng::new(w.seed).fill_bytes(&mut data);
    data
}

/// The bytes an object holds at `seq`: every logged write up to it, on zeros.
fn expected(h: &History, seq: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for w in h.writes.iter().filter(|w| w.seq <= seq) {
        let end = (w.offset + w.len) as usize;
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[w.offset as usize..end].copy_from_slice(&data_of(w));
    }
    bytes
}

/// Options of `stress` beyond the device ones.
struct StressOptions {
    log: PathBuf,
    mkfs: bool,
    seconds: u64,
    objects: u64,
    object_size: u64,
    iodepth: usize,
    seed: u64,
}

fn split_options(args: &[String]) -> Result<(StressOptions, Vec<String>)> {
    let mut o = StressOptions {
        log: PathBuf::new(),
        mkfs: false,
        seconds: 0,
        objects: 32,
        object_size: 1 << 20,
        iodepth: 16,
        seed: 1,
    };
    let mut rest = Vec::new();
    for arg in args {
        let (key, value) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
        let number = || -> Result<u64> {
            value
                .parse()
                .with_context(|| format!("{key}={value}: not a number\n{STRESS_USAGE}"))
        };
        match key {
            "--log" if !value.is_empty() => o.log = PathBuf::from(value),
            "--mkfs" if value.is_empty() && !arg.contains('=') => o.mkfs = true,
            "--seconds" => o.seconds = number()?,
            "--objects" => o.objects = number()?,
            "--object-size" => {
                o.object_size = bluepoll::units::parse_size(value)
                    .map_err(|e| anyhow::anyhow!("--object-size={value}: {e}"))?
            }
            "--iodepth" => o.iodepth = number()? as usize,
            "--seed" => o.seed = number()?,
            "--log" | "--mkfs" => bail!("{arg}: bad value\n{STRESS_USAGE}"),
            _ => rest.push(arg.clone()),
        }
    }
    if o.log.as_os_str().is_empty() {
        bail!("--log=FILE is required (the side log)\n{STRESS_USAGE}");
    }
    if o.objects == 0 || o.iodepth == 0 || o.object_size < 4096 {
        bail!("--objects and --iodepth must be at least 1, --object-size at least 4K");
    }
    Ok((o, rest))
}

/// `bluepoll stress ...`.
pub fn run(args: &[String]) -> Result<i32> {
    let Some((command, rest)) = args.split_first() else {
        println!("{STRESS_USAGE}");
        return Ok(2);
    };
    if command == "--help" || command == "-h" {
        println!("{STRESS_USAGE}");
        return Ok(0);
    }
    let (o, rest) = split_options(rest)?;
    let config = store_cli::parse_devices(&rest, STRESS_USAGE)?;
    match command.as_str() {
        "run" => {
            if o.mkfs {
                let devices = StoreDevices::open(&config.devices)?;
                Store::mkfs_on(&devices, &config).context("making the store")?;
                File::create(&o.log)
                    .with_context(|| format!("creating the side log {}", o.log.display()))?;
            } else {
                let outcome = check(&StoreDevices::open(&config.devices)?, &config, &o.log)?;
                if !outcome.clean() {
                    println!("{}", outcome.line());
                    return Ok(1);
                }
            }
            let devices = StoreDevices::open(&config.devices)?;
            let end = run_load(&devices, &config, &o, None)?;
            println!("stress: {} transactions acknowledged", end.acked);
            Ok(0)
        }
        "check" => {
            let outcome = check(&StoreDevices::open(&config.devices)?, &config, &o.log)?;
            println!("{}", outcome.line());
            Ok(if outcome.clean() { 0 } else { 1 })
        }
        other => bail!("unknown stress command '{other}'\n{STRESS_USAGE}"),
    }
}

/// How a load ended.
#[derive(Debug, Default)]
pub struct LoadEnd {
    pub acked: u64,
    /// The first failure the store reported (a drill's fault), if the load ended on one.
    pub failure: Option<String>,
}

/// The load: random writes with every submission and acknowledgement logged, until
/// `--seconds` pass or `stop` is set. With `stop` (a drill in this process injecting faults) a
/// failed transaction ends the load quietly; otherwise it is an error.
fn run_load(
    devices: &StoreDevices,
    config: &StoreConfig,
    o: &StressOptions,
    stop: Option<&AtomicBool>,
) -> Result<LoadEnd> {
    let log = Log::read(&o.log)?;
    let mut out = open_log(&o.log)?;
    let store = match Store::mount_on(devices.clone(), config.clone()) {
        Ok(store) => store,
        // A drill's fault may land in the mount itself.
        Err(e) if stop.is_some() => {
            return Ok(LoadEnd {
                acked: 0,
                failure: Some(format!("mount: {e}")),
            });
        }
        Err(e) => return Err(anyhow::Error::new(e).context("mounting the store")),
    };
    let result = load_on(&store, &log, &mut out, o, stop);
    let umounted = store.umount();
    let mut end = result?;
    match umounted {
        Ok(()) => {}
        // Under a drill the fault may surface only here (a background flush or compaction).
        Err(e) if stop.is_some() => {
            end.failure.get_or_insert(format!("unmount: {e}"));
        }
        Err(e) if end.failure.is_none() => return Err(e.into()),
        Err(_) => {}
    }
    Ok(end)
}

fn load_on(
    store: &Store,
    log: &Log,
    out: &mut File,
    o: &StressOptions,
    stop: Option<&AtomicBool>,
) -> Result<LoadEnd> {
    let mut end = LoadEnd::default();
    // A failure under a drill ends the load; without one it is the answer.
    let mut failed = |e: String, end: &mut LoadEnd| -> Result<()> {
        if stop.is_none() {
            bail!("{e}");
        }
        end.failure.get_or_insert(e);
        Ok(())
    };
    for c in 0..COLLECTIONS {
        let name = format!("stress.{c}");
        let made = match store.collection_exists(&name) {
            Ok(true) => Ok(()),
            Ok(false) => {
                let mut t = Transaction::new(&name);
                t.create_collection();
                store.apply(t)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = made {
            failed(format!("creating {name}: {e}"), &mut end)?;
            return Ok(end);
        }
    }
    if stop.is_none() {
        println!("stress: running");
        let _ = std::io::stdout().flush();
    }
    let mut rng = Rng::new(o.seed ^ log.next_seq.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut seq = log.next_seq;
    let (tx, rx) = mpsc::channel::<Settled>();
    let mut in_flight = 0usize;
    let deadline = (o.seconds > 0).then(|| Instant::now() + Duration::from_secs(o.seconds));
    let stopping = || {
        deadline.is_some_and(|d| Instant::now() >= d)
            || stop.is_some_and(|s| s.load(Ordering::Relaxed))
    };
    while !stopping() && end.failure.is_none() {
        while in_flight < o.iodepth {
            let obj = rng.below(o.objects);
            let len = match rng.below(4) {
                0 => 1 + rng.below(4096),
                1 => 4096 * (1 + rng.below(4)),
                2 => 512 * (1 + rng.below(128)),
                _ => 1 + rng.below(256 << 10),
            }
            .min(o.object_size);
            let offset = rng.below(o.object_size - len + 1);
            let w = Write1 {
                seq,
                offset,
                len,
                seed: rng.next_u64(),
            };
            seq += 1;
            record(
                out,
                &format!("S {obj} {} {} {} {}\n", w.seq, w.offset, w.len, w.seed),
            )?;
            let mut t = Transaction::new(collection_of(obj));
            t.write(&object_name(obj), w.offset, data_of(&w)).setattr(
                &object_name(obj),
                "seq",
                w.seq.to_le_bytes().to_vec(),
            );
            let tx = tx.clone();
            let at = w.seq;
            match store.queue_transaction(t, move |r| {
                let _ = tx.send((obj, at, r.map_err(|e| (e.errno(), e.to_string()))));
            }) {
                Ok(()) => in_flight += 1,
                Err(e) => {
                    failed(format!("queueing {at}: {e}"), &mut end)?;
                    break;
                }
            }
        }
        if in_flight > 0 {
            settle(&rx, &mut in_flight, out, &mut end, &mut failed, false)?;
        }
    }
    while in_flight > 0 {
        settle(&rx, &mut in_flight, out, &mut end, &mut failed, true)?;
    }
    Ok(end)
}

/// A commit callback's news: object, SEQ, and the errno and message of a failure.
type Settled = (u64, u64, Result<(), (i32, String)>);

/// Takes one commit callback's result (waiting for it), logging an acknowledgement.
fn settle(
    rx: &mpsc::Receiver<Settled>,
    in_flight: &mut usize,
    out: &mut File,
    end: &mut LoadEnd,
    failed: &mut impl FnMut(String, &mut LoadEnd) -> Result<()>,
    draining: bool,
) -> Result<()> {
    // A store that failed answers every transaction it holds; a minute of silence is a hang.
    let (obj, at, result) = rx.recv_timeout(Duration::from_secs(60)).with_context(|| {
        format!(
            "no commit callback for a minute with {in_flight} transactions in flight{}",
            if draining { " (draining)" } else { "" }
        )
    })?;
    *in_flight -= 1;
    match result {
        Ok(()) => {
            record(out, &format!("A {obj} {at}\n"))?;
            end.acked += 1;
        }
        Err((errno, e)) => {
            // EROFS: the store failed with the transaction in flight, which may or may not
            // have committed. Any other error rejected the transaction itself: it never
            // happens, and the transactions after it build on what was there before.
            if errno != libc::EROFS {
                record(out, &format!("F {obj} {at}\n"))?;
            }
            failed(format!("transaction {at} on object {obj}: {e}"), end)?
        }
    }
    Ok(())
}

/// What a check found.
#[derive(Debug, Default)]
pub struct CheckOutcome {
    pub objects: u64,
    /// Writes (transactions, image writes) the run saw acknowledged before its fault: what the
    /// check holds the store to.
    pub acknowledged: u64,
    /// Objects silently older than acknowledged.
    pub lost: u64,
    /// Objects silently wrong: bytes or state that no history explains.
    pub corrupt: u64,
    /// Objects whose reads failed with an error (damage reported, not hidden).
    pub unreadable: u64,
    pub fsck_errors: Vec<String>,
    pub problems: Vec<String>,
}

impl CheckOutcome {
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.corrupt == 0 && self.unreadable == 0 && self.fsck_errors.is_empty()
    }

    pub fn line(&self) -> String {
        let mut line = format!(
            "checked {} objects: {} lost, {} corrupt, {} unreadable, fsck {}",
            self.objects,
            self.lost,
            self.corrupt,
            self.unreadable,
            if self.fsck_errors.is_empty() {
                "clean".to_string()
            } else {
                format!("{} errors", self.fsck_errors.len())
            }
        );
        for p in self.problems.iter().chain(&self.fsck_errors).take(10) {
            line.push_str(&format!("\n  {p}"));
        }
        line
    }
}

/// Mounts, holds every object to the log, records what it found (R lines), unmounts, fscks.
pub fn check(
    devices: &StoreDevices,
    config: &StoreConfig,
    log_path: &Path,
) -> Result<CheckOutcome> {
    let log = Log::read(log_path)?;
    let store = Store::mount_on(devices.clone(), config.clone()).context("mounting the store")?;
    let mut outcome = CheckOutcome::default();
    let mut resolved = String::new();
    let mut found_at: BTreeMap<u64, u64> = BTreeMap::new();
    for (&obj, h) in &log.objects {
        outcome.objects += 1;
        let (coll, name) = (collection_of(obj), object_name(obj));
        let found = match store.getattr(&coll, &name, "seq") {
            Ok(v) => match <[u8; 8]>::try_from(v.as_slice()) {
                Ok(b) => u64::from_le_bytes(b),
                Err(_) => {
                    outcome.corrupt += 1;
                    outcome
                        .problems
                        .push(format!("{name}: attr seq is {} bytes", v.len()));
                    continue;
                }
            },
            Err(e) if e.is_not_found() => 0,
            Err(e) if e.errno() == libc::ENODATA => {
                // Every write sets `seq` in its own transaction: an object without it holds
                // part of a transaction.
                outcome.corrupt += 1;
                outcome.problems.push(format!(
                    "{name}: exists without its seq attribute (a transaction landed in part)"
                ));
                continue;
            }
            Err(e) => {
                outcome.unreadable += 1;
                outcome.problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        if found < h.acked {
            outcome.lost += 1;
            outcome.problems.push(format!(
                "{name}: at seq {found}, but seq {} was acknowledged",
                h.acked
            ));
            continue;
        }
        if h.failed.contains(&found) {
            outcome.corrupt += 1;
            outcome.problems.push(format!(
                "{name}: at seq {found}, a transaction the store rejected"
            ));
            continue;
        }
        if found != h.resolved && !h.writes.iter().any(|w| w.seq == found) {
            outcome.corrupt += 1;
            outcome.problems.push(format!(
                "{name}: at seq {found}, which was never submitted for it"
            ));
            continue;
        }
        let want = expected(h, found);
        // Always looked at, even when nothing should be there: a first transaction that landed
        // in part (its data, not its `seq`) must show as bytes where there should be none.
        let read = store
            .stat(&coll, &name)
            .and_then(|st| store.read(&coll, &name, 0, st.size.max(want.len() as u64)));
        let got = match read {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() && found == 0 => Vec::new(),
            Err(e) => {
                outcome.unreadable += 1;
                outcome.problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        if got != want {
            outcome.corrupt += 1;
            let at = got.iter().zip(&want).position(|(a, b)| a != b);
            outcome.problems.push(format!(
                "{name}: at seq {found}, {} bytes differ from the log's (first at {at:?}; {} vs {} bytes)",
                got.iter().zip(&want).filter(|(a, b)| a != b).count(),
                got.len(),
                want.len()
            ));
            continue;
        }
        if h.writes.last().is_some_and(|w| w.seq > found) {
            resolved.push_str(&format!("R {obj} {found}\n"));
        }
        found_at.insert(obj, found);
    }
    check_prefixes(&log, &found_at, &mut outcome);
    store.umount()?;
    let report = fsck(devices, config, true, false)?;
    outcome.fsck_errors = report.errors;
    if outcome.clean() && !resolved.is_empty() {
        let mut out = open_log(log_path)?;
        record(&mut out, &resolved)?;
        out.sync_data()?;
    }
    Ok(outcome)
}

/// A collection's transactions commit in the order they were queued (SEQ order: one thread
/// queues them all), so what survives of it is a prefix: once any object of a collection is
/// found at SEQ s, every write to that collection queued before s (and not rejected) must be
/// there too. `found_at`: the SEQ each object was found at.
fn check_prefixes(log: &Log, found_at: &BTreeMap<u64, u64>, outcome: &mut CheckOutcome) {
    let mut newest: BTreeMap<u64, u64> = BTreeMap::new();
    for (&obj, &found) in found_at {
        let c = newest.entry(obj % COLLECTIONS).or_default();
        *c = (*c).max(found);
    }
    for (&obj, &found) in found_at {
        let newest = newest[&(obj % COLLECTIONS)];
        let owed = log.objects[&obj]
            .writes
            .iter()
            .map(|w| w.seq)
            .filter(|&seq| seq <= newest)
            .max()
            .unwrap_or(0);
        if found < owed {
            outcome.lost += 1;
            outcome.problems.push(format!(
                "{}: at seq {found}, but seq {newest} of its collection survived and this \
                 object's seq {owed} was queued before it",
                object_name(obj)
            ));
        }
    }
}

/// `bluepoll drill ...`.
pub fn drill(args: &[String]) -> Result<i32> {
    let Some((command, rest)) = args.split_first() else {
        println!("{DRILL_USAGE}");
        return Ok(2);
    };
    if command == "--help" || command == "-h" {
        println!("{DRILL_USAGE}");
        return Ok(0);
    }
    let (mut dir, mut runs, mut long, mut seed) = (None, None, None, 1u64);
    for arg in rest {
        let (key, value) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
        let number = || -> Result<u64> {
            value
                .parse()
                .with_context(|| format!("{key}={value}: not a number\n{DRILL_USAGE}"))
        };
        match key {
            "--dir" if !value.is_empty() => dir = Some(PathBuf::from(value)),
            "--runs" => runs = Some(number()?),
            "--long" => long = Some(Duration::from_secs(number()?)),
            "--seed" => seed = number()?,
            _ => bail!("unknown option {arg}\n{DRILL_USAGE}"),
        }
    }
    let bound = |default_runs: u64| match long {
        Some(limit) => Bound::For(limit),
        None => Bound::Runs(runs.unwrap_or(default_runs)),
    };
    match command.as_str() {
        "kill9" => {
            let Some(dir) = dir else {
                bail!("--dir=DIR is required (where the store's files go)\n{DRILL_USAGE}");
            };
            kill9(&dir, bound(50), seed)
        }
        "power-cut" => in_process_drill("power-cut", bound(40), seed, dir, power_cut_run),
        "eio" => in_process_drill("eio", bound(40), seed, dir, eio_run),
        "enospc" => in_process_drill("enospc", bound(20), seed, dir, enospc_run),
        "corruption" => in_process_drill("corruption", bound(50), seed, dir, corruption_run),
        other => bail!("unknown drill '{other}'\n{DRILL_USAGE}"),
    }
}

/// How long a drill goes on.
#[derive(Clone, Copy)]
enum Bound {
    Runs(u64),
    For(Duration),
}

impl Bound {
    fn more(self, done: u64, started: Instant) -> bool {
        match self {
            Bound::Runs(n) => done < n,
            Bound::For(limit) => started.elapsed() < limit,
        }
    }

    fn long(self) -> bool {
        matches!(self, Bound::For(_))
    }
}

/// Tallies of a drill, and its summary line.
#[derive(Default)]
struct Tally {
    runs: u64,
    faults: u64,
    lost: u64,
    corrupt: u64,
    objects: u64,
    acknowledged: u64,
    /// Runs whose check looked at no object (a fault before any load): they prove nothing.
    empty: u64,
    failures: Vec<String>,
}

impl Tally {
    fn add(&mut self, run: u64, what: &str, faulted: bool, outcome: &CheckOutcome) {
        self.runs += 1;
        self.faults += u64::from(faulted);
        self.objects += outcome.objects;
        self.acknowledged += outcome.acknowledged;
        self.empty += u64::from(outcome.objects == 0);
        self.lost += outcome.lost;
        self.corrupt += outcome.corrupt + outcome.unreadable + outcome.fsck_errors.len() as u64;
        if !outcome.clean() {
            self.failures
                .push(format!("run {run} ({what}): {}", outcome.line()));
        }
    }

    /// Prints the failures and the summary line; the exit status.
    fn finish(&self, name: &str, panics: u64) -> i32 {
        for f in &self.failures {
            println!("{f}");
        }
        let panics = if panics > 0 {
            format!(", {panics} panics")
        } else {
            String::new()
        };
        // What the runs held the store to, before the summary line (which stays last).
        println!(
            "{name}: checked {} objects, {} acknowledged writes, {} runs checked nothing",
            self.objects, self.acknowledged, self.empty
        );
        println!(
            "{name}: {} runs, {} faults, {} lost, {} corrupt{panics}",
            self.runs, self.faults, self.lost, self.corrupt
        );
        i32::from(self.lost > 0 || self.corrupt > 0 || !panics.is_empty())
    }
}

/// Panics anywhere in the process while an in-process drill runs (reactor threads included):
/// each is a failure of the drill, not just a message.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// One run of an in-process drill: whether a fault was injected, and the check after it.
type DrillRun = fn(u64, &Path) -> Result<(bool, String, CheckOutcome)>;

fn in_process_drill(
    name: &str,
    bound: Bound,
    seed: u64,
    dir: Option<PathBuf>,
    one_run: DrillRun,
) -> Result<i32> {
    let scratch = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("bluepoll-drill-{}", std::process::id())),
    };
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));
    let started = Instant::now();
    let mut tally = Tally::default();
    let verbose = std::env::var_os("BLUEPOLL_DRILL_VERBOSE").is_some();
    while bound.more(tally.runs, started) {
        let run_seed = seed.wrapping_mul(1_000_003).wrapping_add(tally.runs);
        let (faulted, what, outcome) = one_run(run_seed, &scratch)
            .with_context(|| format!("{name} run {} (seed {run_seed})", tally.runs))?;
        if verbose {
            eprintln!("{name} run {}: {what}: {}", tally.runs, outcome.line());
        }
        tally.add(tally.runs, &what, faulted, &outcome);
        if bound.long() && tally.runs % 10 == 0 {
            eprintln!(
                "{name}: {} runs so far, {} lost, {} corrupt",
                tally.runs, tally.lost, tally.corrupt
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(tally.finish(name, PANICS.load(Ordering::Relaxed)))
}

/// A store on `fault:` devices over RAM — one device, or main, DB and WAL — with the
/// settings a run's seed picks: one or two shards, deferred writes on or off, small memtables
/// (so RocksDB flushes and compacts under the load).
fn fault_store(seed: u64, faults: &str) -> Result<(StoreDevices, StoreConfig, Vec<FaultControl>)> {
    let open = |size: &str| Device::open(&format!("fault:seed={seed}{faults}+mem:{size}"));
    let three = seed % 2 == 1;
    let devices = StoreDevices {
        slow: open(if three { "256M" } else { "512M" })?,
        db: three.then(|| open("128M")).transpose()?,
        wal: three.then(|| open("64M")).transpose()?,
    };
    let controls = [
        Some(&devices.slow),
        devices.db.as_ref(),
        devices.wal.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter_map(Device::fault_control)
    .collect();
    let mut config = StoreConfig {
        pin: false,
        cpus: if seed % 4 < 2 { vec![0] } else { vec![0, 1] },
        prefer_deferred_size: Some(if seed % 3 == 0 { 0 } else { 64 << 10 }),
        db_size: Some(96 << 20),
        bluefs_reserve: Some(16 << 20),
        ..StoreConfig::default()
    };
    config.kv.write_buffer_size = 1 << 20;
    config.kv.error_retry_interval = Duration::from_millis(5);
    Store::mkfs_on(&devices, &config)?;
    Ok((devices, config, controls))
}

fn drill_options(dir: &Path, name: &str, seed: u64) -> Result<StressOptions> {
    let log = dir.join(format!("{name}.log"));
    File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    Ok(StressOptions {
        log,
        mkfs: false,
        seconds: 0,
        objects: 16,
        object_size: 256 << 10,
        iodepth: 16,
        seed,
    })
}

/// Every command to every device fails from now on: what reaches the media is what had
/// reached it when the power went.
fn freeze(controls: &[FaultControl]) {
    for c in controls {
        c.arm(EioRule {
            ops: FaultOps::Any,
            trigger: EioTrigger::Every(1),
        });
    }
}

/// Runs the load on a thread, does `fault` to the devices at a random moment of it, stops it.
fn load_with_fault(
    devices: &StoreDevices,
    config: &StoreConfig,
    o: &StressOptions,
    rng: &mut Rng,
    fault: impl FnOnce(),
) -> Result<LoadEnd> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let load = scope.spawn(|| run_load(devices, config, o, Some(&stop)));
        // The random moment counts from the load's first acknowledged transaction (its first
        // `A` record in the side log), not from the thread's start: on a slow or busy machine
        // mounting alone can outlast a short delay, and a run whose fault lands before anything
        // was acknowledged holds the store to nothing.
        let started = Instant::now();
        while !load.is_finished()
            && started.elapsed() < Duration::from_secs(30)
            && !std::fs::read(&o.log)
                .is_ok_and(|log| log.starts_with(b"A ") || log.windows(3).any(|w| w == b"\nA "))
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(10 + rng.below(300)));
        fault();
        std::thread::sleep(Duration::from_millis(rng.below(50)));
        stop.store(true, Ordering::Relaxed);
        load.join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))?
    })
}

/// power-cut: a random moment of the load, every device frozen, then power lost (volatile
/// caches dropped, writes in flight torn or kept at random); then the check.
fn power_cut_run(seed: u64, dir: &Path) -> Result<(bool, String, CheckOutcome)> {
    let (devices, config, controls) = fault_store(seed, ",torn=0.5,survive=0.3")?;
    let o = drill_options(dir, "power-cut", seed)?;
    let mut rng = Rng::new(seed);
    let end = load_with_fault(&devices, &config, &o, &mut rng, || freeze(&controls))?;
    let (mut lost_writes, mut torn) = (0, 0);
    for c in &controls {
        c.disarm_all();
        let cut = c.power_cut()?;
        lost_writes += cut.writes_lost;
        torn += cut.writes_torn;
    }
    let mut outcome = check(&devices, &config, &o.log)?;
    outcome.acknowledged = end.acked;
    Ok((
        true,
        format!(
            "{} acknowledged; unflushed writes: {lost_writes} lost, {torn} torn",
            end.acked
        ),
        outcome,
    ))
}

/// eio: one media error on a random device at a random moment of the load (on a read, a
/// write, a flush or any command); the load goes on until the store says it failed. The check
/// then mounts the store; last, reads of every object with every other read of the main
/// device failing must give the right bytes or EIO naming the object — never wrong bytes.
fn eio_run(seed: u64, dir: &Path) -> Result<(bool, String, CheckOutcome)> {
    let (devices, config, controls) = fault_store(seed, "")?;
    let o = drill_options(dir, "eio", seed)?;
    let mut rng = Rng::new(seed);
    let victim = rng.below(controls.len() as u64) as usize;
    let ops = [
        FaultOps::Read,
        FaultOps::Write,
        FaultOps::Flush,
        FaultOps::Any,
    ][rng.below(4) as usize];
    let nth = 1 + rng.below(64);
    let end = load_with_fault(&devices, &config, &o, &mut rng, || {
        controls[victim].arm(EioRule {
            ops,
            trigger: EioTrigger::Nth(nth),
        })
    })?;
    let injected: u64 = controls.iter().map(|c| c.stats().injected_errors).sum();
    for c in &controls {
        c.disarm_all();
    }
    let mut outcome = check(&devices, &config, &o.log)?;
    outcome.acknowledged = end.acked;
    if outcome.clean() {
        read_under_errors(&devices, &config, &o, &controls[0], &mut outcome)?;
    }
    let what = format!(
        "{ops:?} error #{nth} on device {victim}: {}",
        end.failure.as_deref().unwrap_or("the store went on")
    );
    Ok((injected > 0, what, outcome))
}

/// enospc: fill the store to the last byte through the public API with objects of random
/// sizes; the write that does not fit gets ENOSPC and leaves no trace, the store stays up; then
/// 300 metadata transactions (20 MiB of omap: memtable flushes, compactions, BlueFS growing
/// into its reserve) all commit; then room comes back — by deleting a quarter of the objects
/// (even seeds) or by growing the main device and `expand` (odd seeds) — and 8 MiB more of
/// objects go in. After a remount every acknowledged object has its bytes, the omap its keys,
/// and a deep fsck is clean.
fn enospc_run(seed: u64, _dir: &Path) -> Result<(bool, String, CheckOutcome)> {
    let mut rng = Rng::new(seed);
    let backing = Device::open("mem:640M")?;
    let three = seed % 4 >= 2;
    let db_wal = [Device::open("mem:128M")?, Device::open("mem:64M")?];
    let grown = |bytes: u64| -> Result<StoreDevices> {
        Ok(StoreDevices {
            slow: backing.slice(0, bytes)?,
            db: if three { Some(db_wal[0].clone()) } else { None },
            wal: if three { Some(db_wal[1].clone()) } else { None },
        })
    };
    let mut config = StoreConfig {
        pin: false,
        cpus: vec![0],
        db_size: Some(64 << 20),
        bluefs_reserve: Some(16 << 20),
        ..StoreConfig::default()
    };
    config.kv.write_buffer_size = 1 << 20;
    let devices = grown(256 << 20)?;
    Store::mkfs_on(&devices, &config)?;
    let mut store = Store::mount_on(devices, config.clone())?;
    let coll = "fill";
    let mut t = Transaction::new(coll);
    t.create_collection();
    store.apply(t)?;
    // name -> (seed, length) of every acknowledged object.
    let mut objects: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let object_bytes = |seed: u64, len: u64| {
        let mut data = vec![0u8; len as usize];
        Rng::new(seed).fill_bytes(&mut data);
        data
    };
    let mut fill_rng = Rng::new(seed ^ 0xf111_f111);
    let mut next_name = 0u64;
    let mut fill = |store: &Store,
                    objects: &mut BTreeMap<String, (u64, u64)>,
                    limit: u64|
     -> Result<Option<String>> {
        let mut written = 0;
        while written < limit {
            let rng = &mut fill_rng;
            next_name += 1;
            let name = format!("o{next_name:06}");
            let (data_seed, len) = (rng.next_u64(), (256 << 10) + rng.below(4 << 20));
            let mut t = Transaction::new(coll);
            t.write(&name, 0, object_bytes(data_seed, len));
            match store.apply(t) {
                Ok(()) => {
                    objects.insert(name, (data_seed, len));
                    written += len;
                }
                Err(e) if e.is_no_space() => {
                    if store.exists(coll, &name)? && !objects.contains_key(&name) {
                        bail!("the write that got ENOSPC left {name} behind");
                    }
                    return Ok(Some(e.to_string()));
                }
                Err(e) => bail!("filling: {e}"),
            }
        }
        Ok(None)
    };
    let Some(full) = fill(&store, &mut objects, u64::MAX)? else {
        bail!("a 256 MiB store never filled");
    };
    if let Some(reason) = store.failure() {
        bail!("ENOSPC turned the store read-only: {reason}");
    }
    let value = vec![0x6bu8; 64 << 10];
    let keeper = objects.keys().next().cloned().context("no object fitted")?;
    for i in 0..300u32 {
        let mut t = Transaction::new(coll);
        t.omap_setkey(&keeper, &i.to_be_bytes(), &value).setattr(
            &keeper,
            "n",
            i.to_le_bytes().to_vec(),
        );
        store
            .apply(t)
            .with_context(|| format!("metadata commit {i} on a full store"))?;
    }
    let how = if seed % 2 == 0 {
        let victims: Vec<String> = objects
            .keys()
            .filter(|k| **k != keeper && rng.below(4) == 0)
            .cloned()
            .collect();
        let mut t = Transaction::new(coll);
        for v in &victims {
            t.remove(v);
            objects.remove(v);
        }
        store.apply(t)?;
        // The space returns when the removal reaches DONE, a moment after its callback.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.statfs().free < 12 << 20 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        format!("{} objects deleted", victims.len())
    } else {
        store.umount()?;
        let devices = grown(384 << 20)?;
        Store::expand_on(&devices)?;
        store = Store::mount_on(devices, config.clone())?;
        "main device grown by 128 MiB".to_string()
    };
    if let Some(e) = fill(&store, &mut objects, 8 << 20)? {
        bail!("after {how}, writes still fail: {e}");
    }
    store.umount()?;
    let devices = grown(if seed % 2 == 0 { 256 << 20 } else { 384 << 20 })?;
    let store = Store::mount_on(devices.clone(), config.clone())?;
    let mut outcome = CheckOutcome {
        acknowledged: objects.len() as u64,
        ..CheckOutcome::default()
    };
    for (name, &(data_seed, len)) in &objects {
        outcome.objects += 1;
        match store.read(coll, name, 0, len + 1) {
            Ok(bytes) if bytes == object_bytes(data_seed, len) => {}
            Ok(_) => {
                outcome.corrupt += 1;
                outcome.problems.push(format!("{name}: wrong bytes"));
            }
            Err(e) if e.is_not_found() => {
                outcome.lost += 1;
                outcome
                    .problems
                    .push(format!("{name}: acknowledged, now missing"));
            }
            Err(e) => {
                outcome.corrupt += 1;
                outcome.problems.push(format!("{name}: {e}"));
            }
        }
    }
    let keys = store.omap_get(coll, &keeper)?.len();
    if keys != 300 {
        outcome.lost += 1;
        outcome
            .problems
            .push(format!("{keeper}: {keys} omap keys of 300"));
    }
    store.umount()?;
    outcome.fsck_errors = fsck(&devices, &config, true, false)?.errors;
    let image_part = enospc_image_run(seed, &mut outcome)?;
    Ok((
        true,
        format!(
            "full at {} objects ({full}); {how}; {image_part}",
            objects.len()
        ),
        outcome,
    ))
}

/// The image half of the enospc drill: an image of twice the store's capacity filled the way
/// the NBD server fills it — writes answered once the store has taken them (`write_cached`)
/// mixed with writes answered when durable, overwrites among them, a read of an acknowledged
/// unit after every batch, a flush every 8 batches. Every write must be taken or refused with
/// ENOSPC at once (never taken and lost), every flush must succeed, every read return the
/// newest acknowledged bytes; after a remount each unit reads as its newest acknowledged
/// version, the object map is valid and says "may exist" exactly for the objects that exist,
/// fast-diff covers every written unit, and a deep fsck is clean.
fn enospc_image_run(seed: u64, outcome: &mut CheckOutcome) -> Result<String> {
    use bluepoll::image::{self, Image, ImageError, features};

    const UNIT: u64 = 128 << 10;
    const BATCH: usize = 16;
    let unit_bytes = |unit: u64, version: u32| -> Vec<u8> {
        let mut data = vec![0u8; UNIT as usize];
        if version > 0 {
            Rng::new(unit << 32 | version as u64).fill_bytes(&mut data);
        }
        data
    };
    let devices = StoreDevices::only(Device::open("mem:192M")?);
    let config = StoreConfig {
        pin: false,
        cpus: vec![0],
        ..StoreConfig::default()
    };
    Store::mkfs_on(&devices, &config)?;
    let store = Store::mount_on(devices.clone(), config.clone())?;
    let capacity = store.statfs().free;
    let units = (2 * capacity).div_ceil(UNIT).next_multiple_of(32);
    image::create(&store, "vol", units * UNIT, 22, features::DEFAULT)?;
    let mut img = Image::open(&store, "vol")?;
    let mut rng = Rng::new(seed ^ 0x1a6e);
    let mut acked: BTreeMap<u64, u32> = BTreeMap::new();
    let mut versions: BTreeMap<u64, u32> = BTreeMap::new();
    let (mut taken, mut refused, mut next, mut batches) = (0u64, 0u64, 0u64, 0u64);
    while next < units {
        let (tx, rx) = mpsc::channel::<(u64, u32, Result<(), ImageError>)>();
        let mut in_batch = std::collections::BTreeSet::new();
        while in_batch.len() < BATCH && next < units {
            let unit = if rng.below(8) == 0 && !acked.is_empty() {
                *acked
                    .keys()
                    .nth(rng.below(acked.len() as u64) as usize)
                    .expect("index below len")
            } else {
                next += 1;
                next - 1
            };
            if !in_batch.insert(unit) {
                continue;
            }
            let version = versions.get(&unit).copied().unwrap_or(0) + 1;
            versions.insert(unit, version);
            let tx = tx.clone();
            let answer = move |r| {
                let _ = tx.send((unit, version, r));
            };
            let data = unit_bytes(unit, version);
            let queued = match rng.below(4) {
                0 => img.write_async(unit * UNIT, &data, answer),
                _ => img.write_cached(unit * UNIT, &data, answer),
            };
            if let Err(e) = queued {
                if !e.to_string().contains("space") && e.errno() != libc::ENOSPC {
                    bail!("image write of unit {unit} not queued: {e}");
                }
                refused += 1;
                in_batch.remove(&unit);
            }
        }
        drop(tx);
        for (unit, version, result) in rx.iter() {
            match result {
                Ok(()) => {
                    taken += 1;
                    acked.insert(unit, version);
                }
                Err(e) if e.errno() == libc::ENOSPC => refused += 1,
                Err(e) => bail!("image write of unit {unit}: {e} (only ENOSPC is expected)"),
            }
        }
        batches += 1;
        if !acked.is_empty() {
            let pick = rng.below(acked.len() as u64) as usize;
            let (&unit, &version) = acked.iter().nth(pick).expect("index below len");
            if img.read(unit * UNIT, UNIT)? != unit_bytes(unit, version) {
                outcome.corrupt += 1;
                outcome.problems.push(format!(
                    "image unit {unit}: a read did not return acknowledged version {version}"
                ));
            }
        }
        if batches % 8 == 0
            && let Err(e) = img.flush()
        {
            outcome.lost += 1;
            outcome.problems.push(format!("image flush failed: {e}"));
        }
    }
    if let Err(e) = img.flush() {
        outcome.lost += 1;
        outcome
            .problems
            .push(format!("final image flush failed: {e}"));
    }
    if refused == 0 {
        bail!("an image of twice the store's capacity never filled it");
    }
    drop(img);
    store.umount()?;
    outcome
        .fsck_errors
        .extend(fsck(&devices, &config, true, false)?.errors);
    let store = Store::mount_on(devices, config)?;
    let mut img = Image::open(&store, "vol")?;
    img.acquire_lock()?;
    if img.info().map_invalid() {
        outcome.corrupt += 1;
        outcome
            .problems
            .push("image: the object map was marked invalid".into());
    }
    outcome.acknowledged += taken;
    for unit in 0..units {
        let version = acked.get(&unit).copied().unwrap_or(0);
        outcome.objects += 1;
        if img.read(unit * UNIT, UNIT)? != unit_bytes(unit, version) {
            outcome.lost += 1;
            outcome.problems.push(format!(
                "image unit {unit}: after remount not its acknowledged version {version}"
            ));
        }
    }
    let map = img
        .object_map()
        .context("the image has no trusted map")?
        .clone();
    for i in 0..img.info().objects() {
        let exists = store.exists("img.vol", &format!("data.{i:016x}"))?;
        if map.get(i).may_exist() != exists {
            outcome.corrupt += 1;
            outcome.problems.push(format!(
                "image object {i}: map says {:?}, exists={exists}",
                map.get(i)
            ));
        }
    }
    let diff = img.diff(None, None)?;
    for &unit in acked.keys() {
        let (start, end) = (unit * UNIT, (unit + 1) * UNIT);
        if !diff
            .extents
            .iter()
            .any(|e| e.exists && e.offset <= start && e.offset + e.len >= end)
        {
            outcome.corrupt += 1;
            outcome
                .problems
                .push(format!("image unit {unit}: fast-diff misses it"));
        }
    }
    drop(img);
    store.umount()?;
    Ok(format!(
        "image of {} MiB on {} MiB free: {taken} writes taken, {refused} refused with ENOSPC",
        (units * UNIT) >> 20,
        capacity >> 20
    ))
}

/// What a corruption run damages.
const CORRUPTION_TARGETS: [&str; 5] = [
    "object data",
    "store label",
    "BlueFS superblock",
    "BlueFS log",
    "RocksDB table",
];

/// corruption: a store with a history (the stress load, stopped cleanly), then one bit flipped
/// in one structure — object data, the store label, a BlueFS superblock slot, the BlueFS log
/// (its older half: a flip in the newest frame looks exactly like a torn write), or a live
/// RocksDB table. Then mount and the side-log check: the damage must be reported — mount
/// failing with the reason, EIO from reads, or fsck errors — or be harmless (the check finds
/// everything right). Anything wrong that no error announced counts as lost or corrupt.
fn corruption_run(seed: u64, dir: &Path) -> Result<(bool, String, CheckOutcome)> {
    let (devices, config, _) = fault_store(seed, "")?;
    let o = drill_options(dir, "corruption", seed)?;
    let mut rng = Rng::new(seed);
    let end = load_with_fault(&devices, &config, &o, &mut rng, || {})?;
    if let Some(failure) = end.failure {
        bail!("the load failed with no fault injected: {failure}");
    }
    // Consecutive runs have consecutive seeds: every target is hit once in every five runs.
    let target = (seed % CORRUPTION_TARGETS.len() as u64) as usize;
    let store = Store::mount_on(devices.clone(), config.clone())?;
    let spot = corruption_spot(&store, &devices, target, &mut rng);
    store.umount()?;
    let Some((device, byte)) = spot? else {
        // Nothing of that kind to damage (no object written yet, no table flushed yet).
        return Ok((
            false,
            format!("no {} to damage", CORRUPTION_TARGETS[target]),
            CheckOutcome::default(),
        ));
    };
    let bit = rng.below(8) as u8;
    flip_bit(&device, byte, bit)?;
    let what = format!(
        "bit {bit} of byte {byte} of {} ({})",
        device.info().uri,
        CORRUPTION_TARGETS[target]
    );
    let mut outcome = match check(&devices, &config, &o.log) {
        Ok(outcome) => outcome,
        // Refusing to mount, with the reason, is the damage reported — if the reason is the
        // damage (a checksum or a structure found broken), not some other failure.
        Err(e) => {
            let reason = format!("{e:#}");
            let names_damage = ["checksum", "corrupt", "damaged", "Corruption"]
                .iter()
                .any(|w| reason.contains(w));
            let mut outcome = CheckOutcome {
                acknowledged: end.acked,
                ..CheckOutcome::default()
            };
            if !names_damage {
                outcome.corrupt = 1;
                outcome
                    .problems
                    .push(format!("mount failed without naming the damage: {reason}"));
            }
            return Ok((true, format!("{what}: mount refused: {reason}"), outcome));
        }
    };
    // Errors that name the damage are the right answer here; silence with wrong data is not.
    let reported = match (outcome.unreadable, outcome.fsck_errors.first()) {
        (0, None) => "no error, nothing wrong found".to_string(),
        (n, first) => format!(
            "reported: {n} objects unreadable, {} fsck errors{}",
            outcome.fsck_errors.len(),
            first.map(|e| format!(" ({e})")).unwrap_or_default()
        ),
    };
    outcome.unreadable = 0;
    outcome.fsck_errors.clear();
    outcome.acknowledged = end.acked;
    Ok((true, format!("{what}: {reported}"), outcome))
}

/// A device and byte inside the target structure of a mounted store.
fn corruption_spot(
    store: &Store,
    devices: &StoreDevices,
    target: usize,
    rng: &mut Rng,
) -> Result<Option<(Device, u64)>> {
    let label = bluepoll::store::read_label(&devices.slow)?;
    let db_device = match &devices.db {
        Some(db) => db.clone(),
        None => devices.slow.slice(label.db_offset, label.db_len)?,
    };
    let bluefs_device = |id: DeviceId| -> Device {
        match id {
            DeviceId::Wal => devices.wal.clone().unwrap_or_else(|| db_device.clone()),
            DeviceId::Db => db_device.clone(),
            DeviceId::Slow => devices.slow.clone(),
        }
    };
    // The device byte at `offset` into a run of extents.
    let locate = |extents: &[Extent], mut offset: u64| -> Option<(Device, u64)> {
        for e in extents {
            if offset < e.length {
                return Some((bluefs_device(e.device), e.offset + offset));
            }
            offset -= e.length;
        }
        None
    };
    Ok(match target {
        0 => {
            let mut mapped = Vec::new();
            for c in 0..COLLECTIONS {
                let coll = format!("stress.{c}");
                for name in store.list_objects(&coll, None, usize::MAX)? {
                    mapped.extend(store.object_extents(&coll, &name)?);
                }
            }
            if mapped.is_empty() {
                return Ok(None);
            }
            let e = mapped[rng.below(mapped.len() as u64) as usize];
            Some((devices.slow.clone(), e.device_offset + rng.below(e.length)))
        }
        1 => Some((devices.slow.clone(), rng.below(LABEL_BYTES))),
        2 => {
            let slot = SUPERBLOCK_OFFSETS[rng.below(2) as usize];
            Some((db_device, slot + rng.below(SUPERBLOCK_BYTES)))
        }
        3 => {
            let (extents, used) = store.bluefs().log_extents();
            if used < 2 * 4096 {
                return Ok(None);
            }
            locate(&extents, rng.below(used / 2))
        }
        _ => {
            // Only live tables: a compaction that finishes now deletes its inputs.
            let busy = [
                "rocksdb.num-running-compactions",
                "rocksdb.num-running-flushes",
                "rocksdb.compaction-pending",
            ];
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline
                && busy.iter().any(|p| {
                    store
                        .kv_property(p)
                        .ok()
                        .flatten()
                        .is_some_and(|v| v.trim() != "0")
                })
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            let fs = store.bluefs();
            let tables: Vec<String> = fs
                .list_files()
                .into_iter()
                .filter(|f| f.ends_with(".sst"))
                .collect();
            if tables.is_empty() {
                return Ok(None);
            }
            let table = &tables[rng.below(tables.len() as u64) as usize];
            let size = fs.stat(table)?.size;
            if size == 0 {
                return Ok(None);
            }
            locate(&fs.extents_of(table)?, rng.below(size))
        }
    })
}

/// Bytes of the store label and of a BlueFS superblock that carry data (the rest of their
/// blocks is padding a flip may land in harmlessly, so flips aim at the encoded part).
const LABEL_BYTES: u64 = 64;
const SUPERBLOCK_BYTES: u64 = 128;

/// Flips one bit on a device, through a queue pair, and flushes.
fn flip_bit(device: &Device, byte: u64, bit: u8) -> Result<()> {
    let bs = device.info().block_size as u64;
    let lba = byte / bs;
    let mut qp = device.queue_pair(1)?;
    let c = qp.execute(IoCmd::read(lba, 1, DmaBuf::new(bs as usize)?, 0))?;
    if !c.status.is_success() {
        bail!("reading block {lba} of {}: {}", device.info().uri, c.status);
    }
    let mut buf = c.buf.context("the read returned no buffer")?;
    buf[(byte % bs) as usize] ^= 1 << bit;
    let c = qp.execute(IoCmd::write(lba, 1, buf, 0))?;
    if !c.status.is_success() {
        bail!("writing block {lba} of {}: {}", device.info().uri, c.status);
    }
    qp.execute(IoCmd::flush(0))?;
    Ok(())
}

/// Reads every object while every other read of the main device fails, and again without
/// faults: a read gives the right bytes or an EIO that names the object.
fn read_under_errors(
    devices: &StoreDevices,
    config: &StoreConfig,
    o: &StressOptions,
    main: &FaultControl,
    outcome: &mut CheckOutcome,
) -> Result<()> {
    let store = Store::mount_on(devices.clone(), config.clone())?;
    let mut plain = Vec::new();
    for obj in 0..o.objects {
        let (coll, name) = (collection_of(obj), object_name(obj));
        plain.push(store.read(&coll, &name, 0, o.object_size).ok());
    }
    main.arm(EioRule {
        ops: FaultOps::Read,
        trigger: EioTrigger::Every(2),
    });
    for obj in 0..o.objects {
        let (coll, name) = (collection_of(obj), object_name(obj));
        match store.read(&coll, &name, 0, o.object_size) {
            Ok(bytes) if Some(&bytes) == plain[obj as usize].as_ref() => {}
            Ok(_) => {
                outcome.corrupt += 1;
                outcome.problems.push(format!(
                    "{name}: a read under media errors returned wrong bytes"
                ));
            }
            Err(e) if e.errno() == libc::EIO && e.to_string().contains(&name) => {}
            Err(e) if e.is_not_found() && plain[obj as usize].is_none() => {}
            Err(e) => {
                outcome.corrupt += 1;
                outcome
                    .problems
                    .push(format!("{name}: a failed read did not say EIO for it: {e}"));
            }
        }
    }
    main.disarm_all();
    let failure = store.failure();
    store.umount()?;
    if let Some(reason) = failure {
        outcome.corrupt += 1;
        outcome
            .problems
            .push(format!("read errors turned the store read-only: {reason}"));
    }
    Ok(())
}

/// Waits until a killed process's claims on the devices are gone: its io_uring instances hold
/// the files (and so their advisory locks) until the kernel tears the rings down, a moment
/// after the process is reaped.
fn wait_released(config: &StoreConfig) -> Result<()> {
    let devices = StoreDevices::open(&config.devices)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match devices.claim("bluepoll drill") {
            Ok(_) => return Ok(()),
            Err(e) if e.errno() == libc::EBUSY && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("waiting for the killed process's devices"),
        }
    }
}

fn kill9(dir: &Path, bound: Bound, seed: u64) -> Result<i32> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let devices = [
        format!("--slow=uring:{}?size=512M", dir.join("main.img").display()),
        format!("--wal=uring:{}?size=64M", dir.join("wal.img").display()),
    ];
    let log = dir.join("stress.log");
    let config = store_cli::parse_devices(&devices, DRILL_USAGE)?;
    let exe = std::env::current_exe().context("finding the bluepoll executable")?;
    let mut child_args = vec![
        "stress".to_string(),
        "run".to_string(),
        format!("--log={}", log.display()),
    ];
    child_args.extend(devices.iter().cloned());
    // The store is made here, so that a kill never lands in mkfs (which promises nothing
    // until it returns); every run checks it, then loads it.
    Store::mkfs_on(&StoreDevices::open(&config.devices)?, &config).context("making the store")?;
    File::create(&log).with_context(|| format!("creating the side log {}", log.display()))?;
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut tally = Tally::default();
    while bound.more(tally.runs, started) {
        let run = tally.runs;
        let mut child = Command::new(&exe)
            .args(&child_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting bluepoll stress")?;
        // From the middle of mount (and the check before it) to well into the load.
        let after = Duration::from_millis(100 + rng.below(1500));
        std::thread::sleep(after);
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            bail!(
                "run {run}: bluepoll stress exited by itself ({status}) before the kill: {}",
                stderr.trim()
            );
        }
        child.kill().context("killing bluepoll stress")?;
        child.wait()?;
        wait_released(&config)?;
        let outcome = check(&StoreDevices::open(&config.devices)?, &config, &log)
            .with_context(|| format!("run {run}: checking"))?;
        tally.add(run, &format!("killed after {after:?}"), true, &outcome);
        if bound.long() && tally.runs % 10 == 0 {
            eprintln!(
                "kill9: {} runs so far, {} lost, {} corrupt",
                tally.runs, tally.lost, tally.corrupt
            );
        }
    }
    Ok(tally.finish("kill9", 0))
}
