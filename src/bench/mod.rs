//! `bluepoll bench`: fio-style load runs against bluepoll's layers.
//!
//! Jobs come from fio job files and command-line options ([`options`]); `stonewall` splits them
//! into phases that run one after another. In a phase, `ioengine=dev` jobs are spread round-robin
//! over the reactors; each reactor runs one [`engine`] shard with its jobs. `ioengine=bluefs` jobs
//! each run on a thread of their own ([`bluefs_engine`]). Results print as fio's text summary,
//! fio-shaped JSON / json+ and/or fio's terse line ([`report`]); fio's log files ([`latlog`])
//! and an SVG ([`plot`]) are optional.

pub mod bluefs_engine;
pub mod compare;
pub mod engine;
pub mod image_engine;
pub mod iolog;
pub mod jobfile;
pub mod kstore_engine;
pub mod kv_bench;
pub mod latlog;
pub mod offsets;
pub mod options;
pub mod plat;
pub mod plot;
pub mod report;
pub mod stats;
pub mod status;
pub mod store_engine;
pub mod verify;

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::bluefs::BlueFs;
use crate::nvme::{Device, DmaPool, IoCmd};
use crate::reactor::{ReactorConfig, Reactors, available_cpus};
use engine::{JobPlan, JobProgress, JobResult, RunControl, ShardPlan, start_shard};
use offsets::splitmix;
use options::{Eta, IoEngine, JobSpec, VerifyMode, parse_invocation};
use verify::Generations;

/// Size of the RAM device used when a job names no `filename` and no `size`.
const DEFAULT_DEVICE_BYTES: u64 = 256 << 20;

/// What a run produced, for callers that want more than the exit code.
pub struct Outcome {
    pub exit_code: i32,
    pub results: Vec<JobResult>,
}

/// One job instance (a `numjobs` clone) ready to be placed.
struct Instance {
    spec: Arc<JobSpec>,
    number: usize,
    /// Which clone of its job (0..numjobs).
    clone: u32,
    group: usize,
    device_uri: String,
    range_start: u64,
    units: u64,
    seed: u64,
}

/// Phase members with their slot in the phase (which indexes their progress).
type Placed<'a> = Vec<(usize, &'a Instance)>;

/// Runs a job on a thread of its own, sending its result (or its error, or its panic) to `tx`.
fn spawn_job_thread(
    name: String,
    tx: mpsc::Sender<Result<JobResult, String>>,
    job: impl FnOnce() -> Result<JobResult> + Send + 'static,
) -> Result<()> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                job().map_err(|e| format!("{e:#}"))
            }))
            .unwrap_or_else(|_| Err(format!("thread {name} panicked")));
            let _ = tx.send(result);
        })
        .with_context(|| "cannot start a job thread")?;
    Ok(())
}

/// Runs `bluepoll bench ARGS…`, printing the report; returns the process exit code.
pub fn run(args: &[String]) -> Result<Outcome> {
    let invocation = parse_invocation(args)?;
    let run = invocation.run.clone();
    let started = SystemTime::now();
    let started_at = Instant::now();

    let default_uri = default_device_uri(&invocation.jobs);
    let mut notes = Vec::new();
    for spec in &invocation.jobs {
        if spec.rate_iops > 0 && spec.ioengine != IoEngine::Store {
            bail!(
                "job '{}': rate_iops is supported with ioengine=store only",
                spec.name
            );
        }
        match spec.ioengine {
            IoEngine::Dev => {}
            IoEngine::Store => store_engine::validate(spec)?,
            IoEngine::Kstore => kstore_engine::validate(spec)?,
            IoEngine::Image => image_engine::validate(spec)?,
            IoEngine::Bluefs => {
                bluefs_engine::validate(spec)?;
                if spec.iodepth > 1 {
                    notes.push(format!(
                        "job '{}': ioengine=bluefs is synchronous: iodepth={} ignored (1 I/O in \
                         flight per job, as fio's psync)",
                        spec.name, spec.iodepth
                    ));
                }
            }
        }
    }
    let mut devices: HashMap<String, Device> = HashMap::new();
    let mut filesystems: HashMap<String, BlueFs> = HashMap::new();
    let mut instances = Vec::new();
    let mut group = 0usize;
    let mut number = 0usize;
    for (i, spec) in invocation.jobs.iter().enumerate() {
        if spec.stonewall && i > 0 {
            group += 1;
        }
        let uri = spec.filename.clone().unwrap_or_else(|| default_uri.clone());
        let (range_start, units) = match spec.ioengine {
            IoEngine::Dev => {
                if !devices.contains_key(&uri) {
                    let device = Device::open(&uri).with_context(|| {
                        format!("job '{}': cannot open device '{uri}'", spec.name)
                    })?;
                    devices.insert(uri.clone(), device);
                }
                job_range(spec, &devices[&uri])?
            }
            IoEngine::Bluefs => {
                if !filesystems.contains_key(&uri) {
                    let fs = bluefs_engine::mount(&uri, spec.bluefs_mkfs)
                        .with_context(|| format!("job '{}'", spec.name))?;
                    filesystems.insert(uri.clone(), fs);
                }
                (0, spec.size.unwrap_or(spec.bs) / spec.bs)
            }
            IoEngine::Store | IoEngine::Kstore | IoEngine::Image => {
                (0, spec.size.unwrap_or(spec.bs) / spec.bs)
            }
        };
        let spec = Arc::new(spec.clone());
        for clone in 0..spec.numjobs {
            let seed = if spec.randrepeat {
                splitmix(spec.randseed ^ (number as u64).wrapping_mul(0x9e37_79b9) ^ clone as u64)
            } else {
                splitmix(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos() as u64
                        ^ number as u64,
                )
            };
            instances.push(Instance {
                spec: Arc::clone(&spec),
                number,
                clone,
                group,
                device_uri: uri.clone(),
                range_start,
                units,
                seed,
            });
            number += 1;
        }
    }

    // Object stores, one per distinct `filename` of store and image jobs, each with a reactor
    // per CPU.
    let on_store = |e: IoEngine| matches!(e, IoEngine::Store | IoEngine::Image);
    let mut stores: Vec<(String, crate::store::Store)> = Vec::new();
    for i in instances.iter().filter(|i| on_store(i.spec.ioengine)) {
        if stores.iter().any(|(u, _)| *u == i.device_uri) {
            continue;
        }
        let same: Vec<&Instance> = instances
            .iter()
            .filter(|j| j.device_uri == i.device_uri && on_store(j.spec.ioengine))
            .collect();
        let cpus = choose_cpus(&run.cpus, &same)?;
        let store =
            store_engine::open(&i.spec, cpus).with_context(|| format!("job '{}'", i.spec.name))?;
        let info = store.main_device().info();
        if info.is_simulated() {
            notes.push(format!(
                "{}: the main device is a simulation ({})",
                i.device_uri, info.model
            ));
        }
        stores.push((i.device_uri.clone(), store));
    }
    // Each store job clone gets a collection on a shard (round robin), laid out before the run.
    let mut placements: HashMap<usize, (usize, String)> = HashMap::new();
    for (uri, store) in &stores {
        let handle = store.handle();
        let members = instances
            .iter()
            .filter(|i| i.spec.ioengine == IoEngine::Store && i.device_uri == *uri);
        for (k, m) in members.enumerate() {
            let shard = k % handle.shard_count();
            let coll = store_engine::collection_for(&handle, &m.spec, m.clone, shard);
            store_engine::lay_out(&handle, &m.spec, &coll, m.seed)?;
            placements.insert(m.number, (shard, coll));
        }
        for m in instances
            .iter()
            .filter(|i| i.spec.ioengine == IoEngine::Image && i.device_uri == *uri)
        {
            image_engine::lay_out(&handle, &m.spec, m.clone, m.seed)
                .with_context(|| format!("job '{}'", m.spec.name))?;
        }
        // The counters describe the jobs, not the layout.
        handle.reset_perf()?;
    }

    let generations = verify_tables(&instances);
    // Reactors only for the jobs that use them: bluefs jobs run on threads of their own.
    let on_reactors: Vec<&Instance> = instances
        .iter()
        .filter(|i| i.spec.ioengine == IoEngine::Dev)
        .collect();
    let reactors = if on_reactors.is_empty() {
        None
    } else {
        let cpus = choose_cpus(&run.cpus, &on_reactors)?;
        Some(Reactors::start(ReactorConfig::new(cpus)).context("cannot start reactors")?)
    };
    let interrupted = crate::sys::interrupt_flag();
    let control = Arc::new(RunControl::default());
    if generations.values().any(Option::is_none) {
        notes.push("verify: a device range is too large to track generations; only headers and checksums are checked".into());
    }

    let mut results: Vec<JobResult> = Vec::new();
    let mut queue_pairs = Vec::new();
    let mut written: Vec<String> = Vec::new();
    let show_status = match run.eta {
        Eta::Always => true,
        Eta::Never => false,
        Eta::Auto => status::stdout_is_terminal() && run.output.is_none(),
    };
    let groups = instances.iter().map(|i| i.group).max().map_or(0, |g| g + 1);
    for phase in 0..groups {
        let members: Vec<&Instance> = instances.iter().filter(|i| i.group == phase).collect();
        let (dev_members, fs_members): (Placed<'_>, Placed<'_>) = members
            .iter()
            .copied()
            .enumerate()
            .partition(|(_, m)| m.spec.ioengine == IoEngine::Dev);
        let dev_only: Vec<&Instance> = dev_members.iter().map(|(_, m)| *m).collect();
        if run.layout {
            lay_out_fresh_ram(&dev_only, &devices, &generations, &mut written)?;
        }
        for m in &dev_only {
            if m.spec.rw.writes() && !written.contains(&m.device_uri) {
                written.push(m.device_uri.clone());
            }
        }
        // Read jobs on BlueFS read a file laid out before the phase, as fio lays out files.
        for (_, m) in &fs_members {
            if m.spec.ioengine == IoEngine::Bluefs && m.spec.rw.reads() {
                bluefs_engine::lay_out(&filesystems[&m.device_uri], &m.spec, m.clone, m.seed)?;
            }
        }
        let progress: Vec<Arc<JobProgress>> = members
            .iter()
            .map(|_| Arc::new(JobProgress::default()))
            .collect();
        let (fs_tx, fs_rx) = mpsc::channel::<Result<JobResult, String>>();
        let mut fs_pending = 0;
        for (slot, m) in &fs_members {
            if m.spec.ioengine == IoEngine::Kstore {
                let job = kstore_engine::KstoreJob {
                    spec: Arc::clone(&m.spec),
                    number: m.number,
                    group: m.group,
                    clone: m.clone,
                    seed: m.seed,
                    progress: Arc::clone(&progress[*slot]),
                    control: Arc::clone(&control),
                };
                let name = format!("kstore-{}.{}", m.spec.name, m.clone);
                spawn_job_thread(name, fs_tx.clone(), move || kstore_engine::run(job))?;
                fs_pending += 1;
                continue;
            }
            if m.spec.ioengine == IoEngine::Image {
                let store = &stores
                    .iter()
                    .find(|(u, _)| *u == m.device_uri)
                    .expect("opened above")
                    .1;
                let job = image_engine::ImageJob {
                    spec: Arc::clone(&m.spec),
                    number: m.number,
                    group: m.group,
                    clone: m.clone,
                    seed: m.seed,
                    store: store.handle(),
                    progress: Arc::clone(&progress[*slot]),
                    control: Arc::clone(&control),
                };
                let name = format!("image-{}.{}", m.spec.name, m.clone);
                spawn_job_thread(name, fs_tx.clone(), move || image_engine::run(job))?;
                fs_pending += 1;
                continue;
            }
            if m.spec.ioengine == IoEngine::Store {
                let (shard, coll) = placements[&m.number].clone();
                let store = &stores
                    .iter()
                    .find(|(u, _)| *u == m.device_uri)
                    .expect("opened above")
                    .1;
                store_engine::start(store_engine::StoreJobPlan {
                    spec: Arc::clone(&m.spec),
                    number: m.number,
                    group: m.group,
                    clone: m.clone,
                    seed: m.seed,
                    store: store.handle(),
                    shard,
                    coll,
                    progress: Arc::clone(&progress[*slot]),
                    control: Arc::clone(&control),
                    results: fs_tx.clone(),
                })?;
                fs_pending += 1;
                continue;
            }
            let job = bluefs_engine::FsJob {
                spec: Arc::clone(&m.spec),
                number: m.number,
                group: m.group,
                clone: m.clone,
                fs: filesystems[&m.device_uri].clone(),
                seed: m.seed,
                progress: Arc::clone(&progress[*slot]),
                control: Arc::clone(&control),
            };
            let tx = fs_tx.clone();
            let name = format!("bluefs-{}.{}", m.spec.name, m.clone);
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        bluefs_engine::run(job)
                    }))
                    .map_err(|_| format!("thread {name} panicked"));
                    let _ = tx.send(result);
                })
                .context("cannot start a bluefs job thread")?;
            fs_pending += 1;
        }
        drop(fs_tx);
        let (tx, rx) = mpsc::channel();
        let reactor_count = reactors.as_ref().map_or(1, Reactors::len);
        let mut shards: Vec<(Vec<Device>, Vec<JobPlan>)> = (0..reactor_count)
            .map(|_| (Vec::new(), Vec::new()))
            .collect();
        for (slot, m) in dev_members.iter().copied() {
            let (shard_devices, plans) = &mut shards[slot % reactor_count];
            let device = &devices[&m.device_uri];
            let index = match shard_devices
                .iter()
                .position(|d| d.info().uri == m.device_uri)
            {
                Some(i) => i,
                None => {
                    shard_devices.push(device.clone());
                    shard_devices.len() - 1
                }
            };
            plans.push(JobPlan {
                spec: Arc::clone(&m.spec),
                number: m.number,
                group: m.group,
                device: index,
                device_uri: m.device_uri.clone(),
                block_size: device.info().block_size as u64,
                flush: device.info().ops.flush,
                range_start: m.range_start,
                units: m.units,
                seed: m.seed,
                generations: if m.spec.verify == VerifyMode::Crc32c {
                    generations
                        .get(&(m.device_uri.clone(), m.spec.bs))
                        .cloned()
                        .flatten()
                } else {
                    None
                },
                progress: Arc::clone(&progress[slot]),
            });
        }
        let mut pending = 0;
        for (reactor, (shard_devices, plans)) in shards.into_iter().enumerate() {
            if plans.is_empty() {
                continue;
            }
            let Some(reactors) = &reactors else {
                bail!("internal error: device jobs but no reactors");
            };
            let plan = ShardPlan {
                devices: shard_devices,
                jobs: plans,
                control: Arc::clone(&control),
                results: tx.clone(),
            };
            reactors
                .send(reactor, move |cx| start_shard(cx, plan))
                .context("cannot hand jobs to a reactor")?;
            pending += 1;
        }
        drop(tx);
        let planned = members
            .iter()
            .filter_map(|m| engine::planned_duration(&m.spec))
            .max();
        let mut line = status::StatusLine::new(show_status);
        let phase_start = Instant::now();
        while pending > 0 || fs_pending > 0 {
            // Wait on whichever kind is still running; check the other without blocking.
            let tick = if pending > 0 && fs_pending > 0 {
                Duration::from_millis(50)
            } else {
                Duration::from_millis(250)
            };
            let fs_report = if pending > 0 {
                fs_rx.try_recv().ok()
            } else {
                match fs_rx.recv_timeout(tick) {
                    Ok(report) => Some(report),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        bail!("a bluefs job thread stopped without reporting");
                    }
                }
            };
            if let Some(report) = fs_report {
                fs_pending -= 1;
                match report {
                    Ok(result) => results.push(result),
                    Err(error) => {
                        control.stop.store(true, Ordering::SeqCst);
                        line.clear();
                        bail!("{error}");
                    }
                }
            }
            let shard_report = if pending > 0 {
                rx.recv_timeout(tick)
            } else {
                Err(mpsc::RecvTimeoutError::Timeout)
            };
            match shard_report {
                Ok(report) => {
                    pending -= 1;
                    if let Some(error) = report.error {
                        control.stop.store(true, Ordering::SeqCst);
                        line.clear();
                        bail!("reactor {} (cpu {}): {error}", report.reactor, report.cpu);
                    }
                    queue_pairs.extend(
                        report
                            .queue_pairs
                            .into_iter()
                            .map(|(uri, s)| (report.reactor, uri, s)),
                    );
                    results.extend(report.jobs);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("a reactor stopped without reporting its jobs");
                }
            }
            if interrupted.load(Ordering::Relaxed) && !control.stop.load(Ordering::Relaxed) {
                control.stop.store(true, Ordering::SeqCst);
                line.clear();
                eprintln!("bluepoll: interrupted, stopping jobs (press Ctrl-C again to abort)");
            }
            line.update(
                &members.iter().map(|m| m.spec.rw).collect::<Vec<_>>(),
                &progress,
                phase_start.elapsed(),
                planned,
            );
        }
        line.clear();
        if control.stop.load(Ordering::Relaxed) {
            notes.push(
                "run interrupted: later phases skipped; results cover the time actually run".into(),
            );
            break;
        }
    }
    let reactor_stats = reactors.map(Reactors::shutdown).unwrap_or_default();
    // Unmount: whatever a job left open is closed by now; dropping the last handle is enough.
    drop(filesystems);
    let mut store_summaries = Vec::new();
    for (uri, store) in stores {
        store_summaries.push(store_engine::summary(&uri, &store.handle())?);
        store
            .umount()
            .with_context(|| format!("unmounting the store on '{uri}'"))?;
    }
    results.sort_by_key(|r| r.number);
    queue_pairs.sort_by_key(|(r, _, _)| *r);

    let global_options = invocation
        .jobs
        .first()
        .map(|j| j.global_options.clone())
        .unwrap_or_default();
    let summary = report::RunSummary {
        started,
        elapsed_s: started_at.elapsed().as_secs(),
        global_options: &global_options,
        reactors: &reactor_stats,
        queue_pairs: &queue_pairs,
        notes: &notes,
        stores: &store_summaries,
    };
    let entries = report::entries(&results);
    // fio's order: terse, JSON, normal.
    let format = run.output_format;
    let mut text = String::new();
    if format.terse {
        text.push_str(&report::terse_report(&entries));
    }
    if format.json {
        let doc = report::json_report(&entries, &summary, format.json_plus);
        text.push_str(&serde_json::to_string_pretty(&doc)?);
        text.push('\n');
    }
    if format.normal {
        text.push_str(&report::text_report(&entries, &summary));
    }
    match &run.output {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("cannot write output file '{path}'"))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
        }
    }
    latlog::write_logs(&results)?;
    if let Some(path) = &run.plot {
        let svg = plot::render(&results);
        std::fs::write(path, svg).with_context(|| format!("cannot write plot '{path}'"))?;
    }
    let failed = results
        .iter()
        .any(|r| r.io_errors > 0 || r.verify_errors > 0);
    for r in results
        .iter()
        .filter(|r| r.verify_errors > 0 || r.io_errors > 0)
    {
        eprintln!(
            "bluepoll: job '{}' ({}): {} verify errors, {} I/O errors",
            r.spec.name, r.device_uri, r.verify_errors, r.io_errors
        );
    }
    Ok(Outcome {
        exit_code: i32::from(failed),
        results,
    })
}

/// The `mem:` device jobs without a `filename` share: large enough for every such job.
fn default_device_uri(jobs: &[JobSpec]) -> String {
    let bytes = jobs
        .iter()
        .filter(|j| j.filename.is_none() && j.ioengine == IoEngine::Dev)
        .map(|j| {
            j.offset
                .saturating_add(j.size.unwrap_or(DEFAULT_DEVICE_BYTES))
        })
        .max()
        .unwrap_or(DEFAULT_DEVICE_BYTES);
    let mib = bytes.div_ceil(1 << 20).max(1);
    format!("mem:{mib}M")
}

/// Checks a job against its device and returns its range as (first byte, units of `bs`).
fn job_range(spec: &JobSpec, device: &Device) -> Result<(u64, u64)> {
    let info = device.info();
    let block = info.block_size as u64;
    let name = &spec.name;
    if spec.bs % block != 0 {
        bail!(
            "job '{name}': bs={} is not a multiple of the block size {block} of {}",
            spec.bs,
            info.uri
        );
    }
    if spec.bs > info.max_transfer_bytes as u64 {
        bail!(
            "job '{name}': bs={} exceeds the largest transfer {} of {}",
            spec.bs,
            info.max_transfer_bytes,
            info.uri
        );
    }
    if spec.offset % block != 0 {
        bail!(
            "job '{name}': offset={} is not a multiple of the block size {block} of {}",
            spec.offset,
            info.uri
        );
    }
    let capacity = info.capacity_bytes();
    if spec.offset >= capacity {
        bail!(
            "job '{name}': offset={} is beyond the end of {} ({capacity} bytes)",
            spec.offset,
            info.uri
        );
    }
    let size = spec.size.unwrap_or(capacity - spec.offset);
    if spec.offset.saturating_add(size) > capacity {
        bail!(
            "job '{name}': size={size} from offset={} runs past the end of {} ({capacity} bytes)",
            spec.offset,
            info.uri
        );
    }
    let units = size / spec.bs;
    if units == 0 {
        bail!("job '{name}': size={size} is smaller than bs={}", spec.bs);
    }
    if spec.iodepth > info.max_queue_depth {
        bail!(
            "job '{name}': iodepth={} exceeds the deepest queue {} of {}",
            spec.iodepth,
            info.max_queue_depth,
            info.uri
        );
    }
    Ok((spec.offset, units))
}

/// One generation table per (device, bs) among verifying jobs, spanning the union of their
/// ranges (not the whole device, so a small job on a huge device is still tracked); `None` when
/// that span is too large to track.
fn verify_tables(instances: &[Instance]) -> HashMap<(String, u64), Option<Arc<Generations>>> {
    let mut spans: HashMap<(String, u64), (u64, u64)> = HashMap::new();
    for i in instances
        .iter()
        .filter(|i| i.spec.verify == VerifyMode::Crc32c)
    {
        let (start, end) = (i.range_start, i.range_start + i.units * i.spec.bs);
        let span = spans
            .entry((i.device_uri.clone(), i.spec.bs))
            .or_insert((start, end));
        *span = (span.0.min(start), span.1.max(end));
    }
    spans
        .into_iter()
        .map(|(key, (start, end))| {
            let table = Generations::new(start, end - start, key.1).map(Arc::new);
            if let Some(t) = table.as_ref().filter(|t| t.stride() > 1) {
                eprintln!(
                    "verify: {}: more than {} units of {} bytes; lost writes are tracked on one \
                     unit in {} (every unit still gets its header and crc checked)",
                    key.0,
                    Generations::MAX_UNITS,
                    key.1,
                    t.stride()
                );
            }
            (key, table)
        })
        .collect()
}

/// Reactor CPUs: `--cpus`, else the first job's `cpus_allowed`, else as many available CPUs as
/// the largest phase has jobs.
fn choose_cpus(requested: &Option<Vec<usize>>, instances: &[&Instance]) -> Result<Vec<usize>> {
    if let Some(cpus) = requested {
        return Ok(cpus.clone());
    }
    if let Some(cpus) = instances.first().and_then(|i| i.spec.cpus_allowed.clone()) {
        return Ok(cpus);
    }
    let available = available_cpus();
    if available.is_empty() {
        bail!("cannot read this process's CPU affinity; give --cpus");
    }
    let widest = (0..=instances.iter().map(|i| i.group).max().unwrap_or(0))
        .map(|g| instances.iter().filter(|i| i.group == g).count())
        .max()
        .unwrap_or(1);
    Ok(available.into_iter().take(widest.max(1)).collect())
}

/// Before jobs read a `mem:` device nothing has written yet in this run, fill their range the
/// way fio lays out a new file: reads of never-written RAM would only measure zero-filling.
/// The blocks are verify blocks (generation 1), so a verifying read job passes on them.
fn lay_out_fresh_ram(
    members: &[&Instance],
    devices: &HashMap<String, Device>,
    generations: &HashMap<(String, u64), Option<Arc<Generations>>>,
    written: &mut Vec<String>,
) -> Result<()> {
    for m in members {
        if !m.spec.rw.reads()
            || !m.device_uri.starts_with("mem:")
            || written.contains(&m.device_uri)
        {
            continue;
        }
        let device = &devices[&m.device_uri];
        let info = device.info();
        let bs = m.spec.bs;
        let units_per_cmd =
            ((1u64 << 20) / bs).clamp(1, (info.max_transfer_bytes as u64 / bs).max(1));
        let pool = DmaPool::new((units_per_cmd * bs) as usize, 1)?;
        let mut qp = device.queue_pair(1)?;
        let table = generations
            .get(&(m.device_uri.clone(), bs))
            .cloned()
            .flatten();
        let mut unit = 0;
        while unit < m.units {
            let n = units_per_cmd.min(m.units - unit);
            let mut buf = pool.alloc()?;
            for k in 0..n {
                let offset = m.range_start + (unit + k) * bs;
                verify::fill(
                    &mut buf[(k * bs) as usize..((k + 1) * bs) as usize],
                    offset,
                    1,
                );
                if let Some(t) = &table {
                    t.set(offset, 1);
                }
            }
            let lba = (m.range_start + unit * bs) / info.block_size as u64;
            let blocks = (n * bs / info.block_size as u64) as u32;
            let done = qp.execute(IoCmd::write(lba, blocks, buf, 0))?;
            if !done.status.is_success() {
                return Err(anyhow!(
                    "laying out {}: write at LBA {lba} failed: {}",
                    m.device_uri,
                    done.status
                ));
            }
            unit += n;
        }
        written.push(m.device_uri.clone());
    }
    Ok(())
}

/// fio's timestamp format, `Sat Nov 21 07:50:39 2026`, in UTC.
pub fn clock_text(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        year
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_text_matches_fio() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_247_430);
        assert_eq!(clock_text(t), "Sat Nov 21 07:50:30 2026");
        assert_eq!(clock_text(UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
    }

    #[test]
    fn default_device_covers_every_job() {
        let inv = parse_invocation(&["--size=1g".to_string(), "--offset=4k".to_string()]).unwrap();
        assert_eq!(default_device_uri(&inv.jobs), "mem:1025M");
    }
}
