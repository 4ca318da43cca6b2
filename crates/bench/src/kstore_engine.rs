//! `ioengine=kstore`: the baseline the object store is measured against — object data kept as
//! RocksDB values, RocksDB on its default Env on a kernel filesystem (`directory=DIR`), the
//! way Ceph's KStore keeps it: each object's data in stripes of `kstore_stripe` bytes (Ceph's
//! default 64 KiB), one key per stripe, plus an onode key rewritten by every write.
//!
//! A write of part of a stripe reads the stripe, changes it and puts it back (KStore's
//! read-modify-write); a write of whole stripes just puts them. Like the store's kv-sync
//! thread, the job commits group-wise: it takes all `iodepth` writes it has outstanding, applies
//! them to one RocksDB batch and commits it synced; each write's latency is that of its batch.
//! Reads get the stripes. One job clone runs on one thread.
//!
//! The RocksDB options are the metadata store's own (`kv::rocksdb_options`: same memtables,
//! block cache, compaction), so the comparison is of data paths, not of tuning.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context as _, Result, bail};

use super::engine::{JobProgress, JobResult, READ, RunControl, ThreadRun, WRITE};
use super::offsets::{OffsetGen, Rng};
use super::options::JobSpec;
use super::stats::Meter;
use bluepoll_base::sys::{Clock, thread_cpu_usage};
use bluepoll_kv::KvConfig;

/// Checks what a kstore job can do before anything is opened.
pub fn validate(spec: &JobSpec) -> Result<()> {
    let name = &spec.name;
    if spec.directory.is_none() {
        bail!("job '{name}': ioengine=kstore needs directory= (where RocksDB keeps its files)");
    }
    let Some(size) = spec.size else {
        bail!("job '{name}': ioengine=kstore needs size= (the bytes of each job's objects)");
    };
    if size / (spec.nrfiles as u64) < spec.bs {
        bail!("job '{name}': objects of size/nrfiles are smaller than bs");
    }
    if spec.kstore_stripe == 0 || !spec.kstore_stripe.is_power_of_two() {
        bail!("job '{name}': kstore_stripe must be a power of two");
    }
    Ok(())
}

/// The database of a job clone: `DIR/kstore.<job>.<clone>` (made afresh unless it exists).
pub fn db_path(spec: &JobSpec, clone: u32) -> PathBuf {
    Path::new(spec.directory.as_deref().unwrap_or("."))
        .join(format!("kstore.{}.{clone}", spec.name))
}

fn open(path: &Path) -> Result<rocksdb::DB> {
    let config = KvConfig {
        level_aware: false,
        ..KvConfig::default()
    };
    std::fs::create_dir_all(path).with_context(|| format!("cannot make {}", path.display()))?;
    let opts = bluepoll_kv::rocksdb_options(&config, path, None);
    rocksdb::DB::open(&opts, path.join(bluepoll_kv::DB_DIR))
        .with_context(|| format!("cannot open RocksDB in {}", path.display()))
}

fn stripe_key(object: u64, stripe: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'D';
    k[1..9].copy_from_slice(&object.to_be_bytes());
    k[9..].copy_from_slice(&stripe.to_be_bytes());
    k
}

fn onode_key(object: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'O';
    k[1..].copy_from_slice(&object.to_be_bytes());
    k
}

/// What KStore keeps per object (size, and the bookkeeping a real onode carries).
fn onode_value(size: u64) -> Vec<u8> {
    let mut v = vec![0u8; 96];
    v[..8].copy_from_slice(&size.to_le_bytes());
    v
}

/// One job clone, ready to run on its own thread.
pub struct KstoreJob {
    /// The job's options.
    pub spec: Arc<JobSpec>,
    /// Number of the job in the run (0-based; reports add one).
    pub number: usize,
    /// The group (phase) the job runs in.
    pub group: usize,
    /// Which clone of its job (0..`numjobs`): picks its database ([`db_path`]).
    pub clone: u32,
    /// Seed of the job's random offsets and data.
    pub seed: u64,
    /// Where the job publishes its progress for the main thread.
    pub progress: Arc<JobProgress>,
    /// The run-wide switches (stop on Ctrl-C).
    pub control: Arc<RunControl>,
}

/// Writes every object in full before the run (fio's layout), unless already there.
fn lay_out(db: &rocksdb::DB, objects: u64, object_size: u64, stripe: u64, seed: u64) -> Result<()> {
    let mut data = vec![0u8; stripe as usize];
    Rng::new(seed ^ 0x1a70).fill_bytes(&mut data);
    for o in 0..objects {
        if db.get(onode_key(o))?.is_some() {
            continue;
        }
        let mut batch = rocksdb::WriteBatch::default();
        let mut at = 0;
        while at < object_size {
            let n = stripe.min(object_size - at);
            batch.put(stripe_key(o, at / stripe), &data[..n as usize]);
            at += n;
        }
        batch.put(onode_key(o), onode_value(object_size));
        let mut w = rocksdb::WriteOptions::default();
        w.set_sync(true);
        db.write_opt(batch, &w)?;
    }
    Ok(())
}

/// Runs one job clone on the calling thread.
pub fn run(job: KstoreJob) -> Result<JobResult> {
    let KstoreJob {
        spec,
        number,
        group,
        clone,
        seed,
        progress,
        control,
    } = job;
    let path = db_path(&spec, clone);
    let db = open(&path)?;
    let bs = spec.bs;
    let stripe = spec.kstore_stripe;
    let objects = spec.nrfiles as u64;
    let object_size = spec.size.unwrap_or(bs) / objects;
    lay_out(&db, objects, object_size, stripe, seed)
        .with_context(|| format!("laying out {}", path.display()))?;
    let units_per_object = object_size / bs;
    let units = units_per_object * objects;
    let mut offsets = if spec.rw.is_random() {
        OffsetGen::random(units, seed, !spec.norandommap)
    } else {
        OffsetGen::sequential(units)
    };
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut data = vec![0u8; bs as usize];
    Rng::new(seed ^ 0x0b1e_55ed).fill_bytes(&mut data);
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);

    let clock = Clock::start();
    let mut meter = Meter::new(spec.sample_every_ns());
    let ramp_ns = spec.ramp_time.as_nanos() as u64;
    let mut measuring = false;
    let mut deadline = None;
    let mut budget = None;
    let mut cpu_start = thread_cpu_usage();
    let run_end;
    let mut errors = 0u64;
    let mut messages = Vec::new();
    let depth = spec.iodepth.max(1) as usize;
    loop {
        let now = clock.now_ns();
        if !measuring && now >= ramp_ns {
            meter.begin(now);
            deadline = spec.runtime.map(|r| now + r.as_nanos() as u64);
            budget = (!spec.time_based).then_some(units * bs);
            cpu_start = thread_cpu_usage();
            measuring = true;
        }
        if control.stop.load(Ordering::Relaxed)
            || deadline.is_some_and(|d| now >= d)
            || budget == Some(0)
        {
            run_end = now;
            break;
        }
        if measuring && meter.sample_due(now) {
            meter.take_sample(now);
        }
        // One round: `iodepth` operations, writes committed together.
        let mut writes: Vec<(u64, u64)> = Vec::with_capacity(depth);
        let mut reads = 0u64;
        let t0 = clock.now_ns();
        let mut batch = rocksdb::WriteBatch::default();
        let mut failed: Option<String> = None;
        for _ in 0..depth {
            let unit = offsets.next(&mut rng);
            let (object, offset) = (unit / units_per_object, (unit % units_per_object) * bs);
            let dir = spec.rw.read_or_write(spec.rwmixread, &mut rng);
            let result = if dir == READ {
                reads += 1;
                read(&db, object, offset, bs, stripe)
            } else {
                writes.push((object, offset));
                stage_write(&db, &mut batch, object, offset, &data, stripe, object_size)
            };
            if let Err(e) = result {
                failed = Some(e.to_string());
                break;
            }
        }
        if failed.is_none() && !writes.is_empty() {
            if let Err(e) = db.write_opt(batch, &sync) {
                failed = Some(e.to_string());
            }
        }
        let t1 = clock.now_ns();
        if let Some(e) = failed {
            errors += 1;
            messages.push(format!("kstore: {e}"));
            run_end = t1;
            break;
        }
        if measuring {
            for _ in 0..reads {
                meter.record(READ, bs, t1 - t0);
            }
            for _ in &writes {
                meter.record(WRITE, bs, t1 - t0);
            }
            if let Some(b) = &mut budget {
                *b = b.saturating_sub((reads + writes.len() as u64) * bs);
            }
            for d in 0..super::engine::DIRS {
                progress.ios[d].store(meter.ios[d], Ordering::Relaxed);
                progress.bytes[d].store(meter.bytes[d], Ordering::Relaxed);
            }
        }
    }
    let finish = clock.now_ns();
    meter.take_sample(finish.max(run_end));
    let cpu_used = thread_cpu_usage().since(&cpu_start);
    progress.finished.store(true, Ordering::Release);
    Ok(JobResult::from_thread(
        &spec,
        number,
        group,
        ThreadRun {
            device_uri: path.display().to_string(),
            meter,
            run_end_ns: run_end,
            finish_ns: finish,
            cpu_usage: cpu_used,
            errors,
            messages,
        },
    ))
}

/// Adds a write of `data` at `offset` of `object` to `batch`: whole stripes are put, partial
/// ones read, changed and put. (Two writes to one stripe in the same round both read the
/// committed stripe, so only the later change survives: the work and the bytes are KStore's,
/// which is what a baseline has to get right.)
fn stage_write(
    db: &rocksdb::DB,
    batch: &mut rocksdb::WriteBatch,
    object: u64,
    offset: u64,
    data: &[u8],
    stripe: u64,
    object_size: u64,
) -> Result<(), rocksdb::Error> {
    let end = offset + data.len() as u64;
    let mut at = offset;
    while at < end {
        let index = at / stripe;
        let s0 = index * stripe;
        let s1 = (s0 + stripe).min(object_size.max(end));
        let piece_end = end.min(s0 + stripe);
        let key = stripe_key(object, index);
        let value = if at == s0 && piece_end == s1 {
            data[(at - offset) as usize..(piece_end - offset) as usize].to_vec()
        } else {
            let mut old = db.get(key)?.unwrap_or_default();
            if (old.len() as u64) < piece_end - s0 {
                old.resize((piece_end - s0) as usize, 0);
            }
            old[(at - s0) as usize..(piece_end - s0) as usize]
                .copy_from_slice(&data[(at - offset) as usize..(piece_end - offset) as usize]);
            old
        };
        batch.put(key, value);
        at = piece_end;
    }
    batch.put(onode_key(object), onode_value(object_size));
    Ok(())
}

fn read(
    db: &rocksdb::DB,
    object: u64,
    offset: u64,
    len: u64,
    stripe: u64,
) -> Result<(), rocksdb::Error> {
    let end = offset + len;
    let mut at = offset;
    while at < end {
        let index = at / stripe;
        let value = db.get_pinned(stripe_key(object, index))?;
        std::hint::black_box(value.as_deref().map(<[u8]>::len));
        at = (index + 1) * stripe;
    }
    Ok(())
}
