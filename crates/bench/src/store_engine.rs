//! `ioengine=store`: jobs on objects of a bluepoll object store, the way fio runs on files.
//!
//! `filename` names the store's devices: one URI (the main device; BlueFS's DB area is carved
//! from it) or `slow=URI|db=URI|wal=URI`. The harness makes a new store there (unless
//! `store_mkfs=0`; tuning from `store_config=FILE`, a TOML store config, and
//! `store_deferred_size=SIZE`), mounts it with one reactor per run CPU, and runs every job clone
//! as a poller on one of the store's reactors, beside the shard, keeping `iodepth` transactions
//! (writes) or reads in flight through the store's callback API. Each clone has its own
//! collection (named so it lives on the clone's reactor) of `nrfiles` objects of
//! `size / nrfiles` bytes, written in full before the first phase (fio's layout), so writes are
//! overwrites of existing objects — unless `store_layout=0`: then the objects start absent,
//! reads of unwritten space are holes, and writes take new space (a store filled with reads
//! between ends its job at ENOSPC, as fio ends a job at its first error).
//!
//! Latency is from queueing the transaction (or read) to its commit callback (or data), as the
//! job sees it. The summary adds the store's counters and the time spent in each TransContext
//! state (counted from after the layout).

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};

use anyhow::{Context as _, Result, bail};
use crossbeam_queue::ArrayQueue;
use serde_json::Value;

use super::engine::{DIR_NAMES, JobProgress, JobResult, RunControl, WRITE};
use super::offsets::{OffsetGen, Rng};
use super::options::JobSpec;
use super::stats::Meter;
use bluepoll_base::sys::{Clock, CpuUsage, thread_cpu_usage};
use bluepoll_reactor::{Context, Poll, Poller};
use bluepoll_store::{Store, StoreConfig, StoreDevices, StoreHandle, Transaction, TxcState};

/// Most error messages kept per job.
const MAX_MESSAGES: usize = 10;
/// Bytes per transaction while laying objects out.
const LAYOUT_CHUNK: u64 = 1 << 20;

/// Checks what a store job can do before anything is opened.
pub fn validate(spec: &JobSpec) -> Result<()> {
    let name = &spec.name;
    let Some(filename) = &spec.filename else {
        bail!(
            "job '{name}': ioengine=store needs filename= (the store's devices: URI, or \
             slow=URI|db=URI|wal=URI)"
        );
    };
    devices_of(filename).map_err(|e| anyhow::anyhow!("job '{name}': filename: {e}"))?;
    let Some(size) = spec.size else {
        bail!("job '{name}': ioengine=store needs size= (the bytes of each job's objects)");
    };
    if spec.offset != 0 {
        bail!("job '{name}': offset is not supported with ioengine=store (objects start at 0)");
    }
    let object = size / spec.nrfiles as u64;
    if object < spec.bs {
        bail!(
            "job '{name}': size={size} over nrfiles={} gives {object}-byte objects, smaller than bs={}",
            spec.nrfiles,
            spec.bs
        );
    }
    Ok(())
}

/// The device URIs of `filename`: a single URI is the main device.
fn devices_of(filename: &str) -> Result<bluepoll_store::DeviceUris, String> {
    let (single, [wal, db, slow]) = super::bluefs_engine::parse_roles(filename)?;
    match (single, slow) {
        (Some(slow), _) | (None, Some(slow)) => Ok(bluepoll_store::DeviceUris { slow, db, wal }),
        (None, None) => Err("no slow= device (the store's main device)".into()),
    }
}

/// Makes (unless `store_mkfs=0`) and mounts the store a job names, with a reactor per CPU.
pub fn open(spec: &JobSpec, cpus: Vec<usize>) -> Result<Store> {
    let filename = spec.filename.as_deref().unwrap_or_default();
    let uris = devices_of(filename).map_err(|e| anyhow::anyhow!("filename: {e}"))?;
    let mut config = match &spec.store_config {
        Some(path) => StoreConfig::from_file(std::path::Path::new(path))?,
        None => StoreConfig::default(),
    };
    config.devices = uris;
    config.cpus = cpus;
    if let Some(size) = spec.store_deferred_size {
        config.prefer_deferred_size = Some(size);
    }
    let devices = StoreDevices::open(&config.devices)
        .with_context(|| format!("cannot open the store devices '{filename}'"))?;
    if spec.store_mkfs {
        Store::mkfs_on(&devices, &config)
            .with_context(|| format!("cannot make a store on '{filename}'"))?;
    }
    Store::mount_on(devices, config)
        .with_context(|| format!("cannot mount the store on '{filename}'"))
}

/// A collection name for clone `clone` of `spec` that lives on shard `shard`.
pub fn collection_for(handle: &StoreHandle, spec: &JobSpec, clone: u32, shard: usize) -> String {
    (0u32..)
        .map(|k| format!("bench.{}.{clone}.{k}", spec.name))
        .find(|name| handle.shard_of(name) == shard)
        .expect("some name hashes to every shard")
}

/// The name of object `i` (0..`nrfiles`) in a job clone's collection.
pub fn object_name(i: u64) -> String {
    format!("obj.{i}")
}

/// Writes every object of the job in full (fio's layout of new files), if not done yet.
pub fn lay_out(handle: &StoreHandle, spec: &JobSpec, coll: &str, seed: u64) -> Result<()> {
    let size = spec.size.unwrap_or(spec.bs);
    let objects = spec.nrfiles as u64;
    let object_size = size / objects;
    let context = || {
        format!(
            "job '{}': laying out {objects} objects in {coll}",
            spec.name
        )
    };
    if !handle.collection_exists(coll).with_context(context)? {
        let mut t = Transaction::new(coll);
        t.create_collection();
        handle.apply(t).with_context(context)?;
    }
    if !spec.store_layout {
        return Ok(());
    }
    let mut chunk = vec![0u8; LAYOUT_CHUNK.min(object_size) as usize];
    Rng::new(seed ^ 0x1a70).fill_bytes(&mut chunk);
    let chunk = Arc::new(chunk);
    let mut pending = std::collections::VecDeque::new();
    for i in 0..objects {
        let obj = object_name(i);
        if handle.stat(coll, &obj).is_ok_and(|s| s.size >= object_size) {
            continue;
        }
        let mut at = 0;
        while at < object_size {
            let n = (object_size - at).min(chunk.len() as u64);
            let mut t = Transaction::new(coll);
            if n == chunk.len() as u64 {
                t.write_shared(&obj, at, Arc::clone(&chunk));
            } else {
                t.write(&obj, at, chunk[..n as usize].to_vec());
            }
            pending.push_back(handle.submit(t));
            if pending.len() >= 32
                && let Some(c) = pending.pop_front()
            {
                c.wait().with_context(context)?;
            }
            at += n;
        }
    }
    for c in pending {
        c.wait().with_context(context)?;
    }
    Ok(())
}

/// One job clone, placed on a reactor of its store.
pub struct StoreJobPlan {
    /// The job's options.
    pub spec: Arc<JobSpec>,
    /// Number of the job in the run (0-based; reports add one).
    pub number: usize,
    /// The group (phase) the job runs in.
    pub group: usize,
    /// Which clone of its job (0..`numjobs`).
    pub clone: u32,
    /// Seed of the job's random offsets, objects and data.
    pub seed: u64,
    /// The mounted store the job runs on.
    pub store: StoreHandle,
    /// The store reactor (shard) the job runs on, the one its collection lives on.
    pub shard: usize,
    /// The job clone's collection ([`collection_for`]).
    pub coll: String,
    /// Where the job publishes its progress for the main thread.
    pub progress: Arc<JobProgress>,
    /// The run-wide switches (stop on Ctrl-C).
    pub control: Arc<RunControl>,
    /// Where the job sends what it measured, or why it failed, when it ends.
    pub results: mpsc::Sender<Result<JobResult, String>>,
}

/// Starts the job as a poller on its shard's reactor.
pub fn start(plan: StoreJobPlan) -> Result<()> {
    let reactors = plan.store.reactor_handle();
    let shard = plan.shard;
    reactors
        .send(shard, move |cx| {
            let job = StoreJob::new(plan, cx);
            cx.add_poller(job);
        })
        .context("cannot hand a store job to its reactor")
}

/// How an operation ended: None, or the errno and message of its failure.
type Outcome = Option<(i32, String)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Ramp,
    Run,
    Drain,
    Done,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    start_ns: u64,
    dir: usize,
    offset: u64,
    object: u64,
}

struct StoreJob {
    plan: StoreJobPlan,
    reactor: usize,
    cpu: usize,
    coll: Arc<str>,
    bs: u64,
    units_per_object: u64,
    objects: Vec<String>,
    data: Arc<Vec<u8>>,
    clock: Clock,
    started: bool,
    phase: Phase,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: u32,
    done: Arc<ArrayQueue<(u32, Outcome)>>,
    offsets: OffsetGen,
    rng: Rng,
    meter: Meter,
    ramp_end_ns: u64,
    deadline_ns: Option<u64>,
    budget: Option<u64>,
    run_end_ns: u64,
    /// Ops issued since measuring began, for `rate_iops`.
    issued: u64,
    errors: u64,
    errno: i32,
    messages: Vec<String>,
    cpu_start: CpuUsage,
    cpu_used: CpuUsage,
    depth_dist: [u64; 7],
}

impl StoreJob {
    fn new(plan: StoreJobPlan, cx: &mut Context<'_>) -> StoreJob {
        let spec = Arc::clone(&plan.spec);
        let size = spec.size.unwrap_or(spec.bs);
        let objects = spec.nrfiles as u64;
        let units_per_object = (size / objects) / spec.bs;
        let units = units_per_object * objects;
        let offsets = if spec.rw.is_random() {
            OffsetGen::random(units, plan.seed, !spec.norandommap)
        } else {
            OffsetGen::sequential(units)
        };
        let mut data = vec![0u8; spec.bs as usize];
        Rng::new(plan.seed ^ 0x0b1e_55ed).fill_bytes(&mut data);
        let depth = spec.iodepth as usize;
        StoreJob {
            reactor: cx.index(),
            cpu: cx.cpu(),
            coll: Arc::from(plan.coll.as_str()),
            bs: spec.bs,
            units_per_object,
            objects: (0..objects).map(object_name).collect(),
            data: Arc::new(data),
            clock: Clock::start(),
            started: false,
            phase: Phase::Ramp,
            slots: vec![Slot::default(); depth],
            free: (0..depth as u32).rev().collect(),
            in_flight: 0,
            done: Arc::new(ArrayQueue::new(depth.max(1))),
            offsets,
            rng: Rng::new(plan.seed ^ 0x5eed),
            meter: Meter::new(spec.sample_every_ns()),
            ramp_end_ns: 0,
            deadline_ns: None,
            budget: None,
            run_end_ns: 0,
            issued: 0,
            errors: 0,
            errno: 0,
            messages: Vec::new(),
            cpu_start: CpuUsage::default(),
            cpu_used: CpuUsage::default(),
            depth_dist: [0; 7],
            plan,
        }
    }

    fn begin_measuring(&mut self, now: u64) {
        let spec = &self.plan.spec;
        self.meter.begin(now);
        self.deadline_ns = spec.runtime.map(|r| now + r.as_nanos() as u64);
        self.budget =
            (!spec.time_based).then(|| self.units_per_object * self.objects.len() as u64 * self.bs);
        self.cpu_start = thread_cpu_usage();
        self.issued = 0;
        self.phase = Phase::Run;
    }

    fn fail(&mut self, errno: i32, message: String) {
        self.errors += 1;
        if self.errno == 0 {
            self.errno = errno;
        }
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(message);
        }
        // Like fio without continue_on_error: the first error ends the job.
        if matches!(self.phase, Phase::Ramp | Phase::Run) {
            self.phase = Phase::Drain;
        }
    }

    fn reap(&mut self, now: u64) -> bool {
        let mut any = false;
        while let Some((slot, outcome)) = self.done.pop() {
            any = true;
            self.in_flight -= 1;
            let s = self.slots[slot as usize];
            self.free.push(slot);
            match outcome {
                None => {
                    let dir = s.dir;
                    self.meter
                        .record(dir, self.bs, now.saturating_sub(s.start_ns));
                }
                Some((errno, message)) => {
                    let what = format!(
                        "{} of {} bytes at offset {} of {}/{}: {message}",
                        DIR_NAMES[s.dir],
                        self.bs,
                        s.offset,
                        self.coll,
                        self.objects[s.object as usize]
                    );
                    self.fail(errno, what);
                }
            }
        }
        any
    }

    fn choose_dir(&mut self) -> usize {
        let spec = &self.plan.spec;
        spec.rw.read_or_write(spec.rwmixread, &mut self.rng)
    }

    fn issue(&mut self, now: u64) {
        let spec = Arc::clone(&self.plan.spec);
        let measure_start = self.meter.measure_start_ns;
        while self.in_flight < spec.iodepth && self.budget != Some(0) {
            if spec.rate_iops > 0 && self.phase == Phase::Run {
                let allowed = (now.saturating_sub(measure_start) as u128 * spec.rate_iops as u128
                    / 1_000_000_000) as u64
                    + 1;
                if self.issued >= allowed {
                    break;
                }
            }
            let Some(slot) = self.free.pop() else { break };
            let unit = self.offsets.next(&mut self.rng);
            let object = unit / self.units_per_object;
            let offset = (unit % self.units_per_object) * self.bs;
            let dir = self.choose_dir();
            self.slots[slot as usize] = Slot {
                start_ns: now,
                dir,
                offset,
                object,
            };
            let queue = Arc::clone(&self.done);
            let obj = &self.objects[object as usize];
            let bs = self.bs;
            let sent = if dir == WRITE {
                let mut t = Transaction::new(&*self.coll);
                t.write_shared(obj, offset, Arc::clone(&self.data));
                self.plan.store.queue_transaction(t, move |r| {
                    let _ = queue.push((slot, r.err().map(|e| (e.errno(), e.to_string()))));
                })
            } else {
                // Without the layout, unwritten space is a hole: a missing object or one that
                // ends before the read reads short, as a new sparse file would.
                let holes = !self.plan.spec.store_layout;
                self.plan
                    .store
                    .read_async(&self.coll, obj, offset, bs, move |r| {
                        let outcome = match r {
                            Ok(d) if d.len() as u64 == bs || holes => None,
                            Err(e) if holes && e.is_not_found() => None,
                            Ok(d) => Some((libc::EIO, format!("short read: {} bytes", d.len()))),
                            Err(e) => Some((e.errno(), e.to_string())),
                        };
                        let _ = queue.push((slot, outcome));
                    })
            };
            match sent {
                Ok(()) => {
                    self.in_flight += 1;
                    self.issued += 1;
                    self.depth_dist[super::stats::depth_bucket(self.in_flight)] += 1;
                    if let Some(b) = &mut self.budget {
                        *b = b.saturating_sub(bs);
                    }
                }
                Err(e) => {
                    self.free.push(slot);
                    self.fail(e.errno(), format!("queueing a {}: {e}", DIR_NAMES[dir]));
                    break;
                }
            }
        }
    }

    fn finish(&mut self, now: u64) {
        self.meter.take_sample(now);
        self.cpu_used = thread_cpu_usage().since(&self.cpu_start);
        self.phase = Phase::Done;
        let spec = &self.plan.spec;
        let run_ns = self.run_end_ns.saturating_sub(self.meter.measure_start_ns);
        let result = JobResult {
            spec: Arc::clone(spec),
            number: self.plan.number,
            group: self.plan.group,
            device_uri: spec.filename.clone().unwrap_or_default(),
            reactor: self.reactor,
            cpu: self.cpu,
            dirs: self.meter.total.clone(),
            dir_runtime_ns: [
                if spec.rw.reads() { run_ns } else { 0 },
                if spec.rw.writes() { run_ns } else { 0 },
                0,
            ],
            runtime_ns: now.saturating_sub(self.meter.measure_start_ns),
            samples: self.meter.samples.clone(),
            cpu_usage: self.cpu_used,
            depth_dist: self.depth_dist,
            submit_dist: [0; 7],
            complete_dist: [0; 7],
            io_errors: self.errors,
            verify_errors: 0,
            messages: self.messages.clone(),
            syncs: Default::default(),
            errno: self.errno,
            io_log: Vec::new(),
        };
        let _ = self.plan.results.send(Ok(result));
    }

    fn publish(&self) {
        let p = &self.plan.progress;
        for d in 0..super::engine::DIRS {
            p.ios[d].store(self.meter.ios[d], Ordering::Relaxed);
            p.bytes[d].store(self.meter.bytes[d], Ordering::Relaxed);
        }
    }
}

impl Poller for StoreJob {
    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll {
        if !self.started {
            self.started = true;
            self.clock = Clock::start();
            let ramp = self.plan.spec.ramp_time;
            if ramp.is_zero() {
                self.begin_measuring(0);
            } else {
                self.ramp_end_ns = ramp.as_nanos() as u64;
            }
        }
        let now = self.clock.now_ns();
        let reaped = self.reap(now);
        let stop = self.plan.control.stop.load(Ordering::Relaxed);
        if self.phase == Phase::Ramp && (stop || now >= self.ramp_end_ns) {
            self.begin_measuring(now);
        }
        if self.phase == Phase::Run
            && (stop || self.deadline_ns.is_some_and(|d| now >= d) || self.budget == Some(0))
        {
            self.phase = Phase::Drain;
        }
        if self.phase == Phase::Drain && self.in_flight == 0 {
            self.run_end_ns = now;
            self.publish();
            self.finish(now);
            self.plan.progress.finished.store(true, Ordering::Release);
            return Poll::Done;
        }
        let before = self.issued;
        if matches!(self.phase, Phase::Ramp | Phase::Run) {
            self.issue(now);
        }
        if self.phase == Phase::Run && self.meter.sample_due(now) {
            self.meter.take_sample(now);
        }
        self.publish();
        // Waiting for commits is not work: completions come with the shard's messages, which
        // wake the reactor, so an idle reactor can leave its CPU to the kv-sync thread. A
        // `rate_iops` job waiting for its next slot stays busy (no message will wake it).
        let pacing = self.plan.spec.rate_iops > 0 && self.phase == Phase::Run;
        if reaped || self.issued != before || pacing {
            Poll::Busy
        } else {
            Poll::Idle
        }
    }
}

/// The store's counters after a run: JSON (`perf dump`) and a text block with the per-state
/// breakdown.
pub fn summary(uri: &str, handle: &StoreHandle) -> Result<(String, Value, String)> {
    use std::fmt::Write as _;
    let json = handle.perf_dump()?;
    let (perf, kv) = handle.perf()?;
    let mut text = String::new();
    let info = handle.main_device().info();
    let _ = writeln!(text, "\nobject store {uri}:");
    if info.is_simulated() {
        let _ = writeln!(text, "  main device is SIMULATED: {}", info.model);
    }
    let _ = writeln!(
        text,
        "  transactions={} (failed {}), copy-on-write writes={} ({} bytes), deferred writes={} ({} bytes) in {} batches",
        perf.txcs,
        perf.txc_errors,
        perf.cow_writes,
        perf.cow_bytes,
        perf.deferred_writes,
        perf.deferred_bytes,
        perf.deferred_batches
    );
    let batch = if kv.batches == 0 {
        0.0
    } else {
        kv.txcs as f64 / kv.batches as f64
    };
    let _ = writeln!(
        text,
        "  kv-sync: batches={} ({batch:.1} per batch), data flushes={}, commit p50={:.1}us p99={:.1}us",
        kv.batches,
        kv.flushes,
        kv.commit_latency.percentile(50.0) as f64 / 1e3,
        kv.commit_latency.percentile(99.0) as f64 / 1e3
    );
    let _ = writeln!(
        text,
        "  reads={} ({} from device, {} bytes from cache), rmw reads={}, checksum errors={}",
        perf.reads, perf.read_device_ios, perf.read_cache_bytes, perf.rmw_reads, perf.csum_errors
    );
    let _ = writeln!(
        text,
        "  time in each TransContext state (usec):        count       mean        p50        p99      p99.9"
    );
    for s in TxcState::ALL {
        let h = &perf.state_ns[s as usize];
        if h.count() == 0 {
            continue;
        }
        let us = |ns: u64| ns as f64 / 1e3;
        let _ = writeln!(
            text,
            "    {:<40} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            s.name(),
            h.count(),
            h.mean() / 1e3,
            us(h.percentile(50.0)),
            us(h.percentile(99.0)),
            us(h.percentile(99.9))
        );
    }
    let c = &perf.commit_latency;
    let _ = writeln!(
        text,
        "    {:<40} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
        "queued → committed (total)",
        c.count(),
        c.mean() / 1e3,
        c.percentile(50.0) as f64 / 1e3,
        c.percentile(99.0) as f64 / 1e3,
        c.percentile(99.9) as f64 / 1e3
    );
    Ok((uri.to_string(), json, text))
}
