//! `bluepoll bench`: fio-style load runs against bluepoll's layers.
//!
//! Jobs come from fio job files and command-line options ([`options`]); `stonewall` splits them
//! into phases that run one after another. In a phase, `ioengine=dev` jobs are spread round-robin
//! over the reactors; each reactor runs one [`engine`] shard with its jobs. `ioengine=bluefs` jobs
//! each run on a thread of their own ([`bluefs_engine`]). Results print as fio's text summary,
//! fio-shaped JSON / json+ and/or fio's terse line ([`report`]); fio's log files ([`latlog`])
//! and an SVG ([`plot`]) are optional.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod bluefs_engine;
pub mod compare;
pub mod engine;
#[cfg(feature = "store")]
pub mod image_engine;
pub mod iolog;
pub mod jobfile;
#[cfg(feature = "store")]
pub mod kstore_engine;
#[cfg(feature = "store")]
pub mod kv_bench;
pub mod latlog;
pub mod offsets;
pub mod options;
pub mod pattern;
pub mod plat;
pub mod plot;
pub mod report;
pub mod spdk_plugin;
pub mod stats;
pub mod status;
#[cfg(feature = "store")]
pub mod store_engine;
#[cfg_attr(feature = "store", path = "store_jobs.rs")]
#[cfg_attr(not(feature = "store"), path = "store_jobs_absent.rs")]
mod store_jobs;
pub mod verify;

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};

use bluepoll_bluefs::BlueFs;
use bluepoll_nvme::{Device, DmaPool, IoCmd};
use bluepoll_reactor::{ReactorConfig, Reactors, available_cpus};
use engine::{JobPlan, JobProgress, JobResult, RunControl, ShardPlan, start_shard};
use offsets::splitmix;
use options::{Eta, IoEngine, JobSpec, VerifyMode, parse_invocation};
use verify::Generations;

/// Size of the RAM device used when a job names no `filename` and no `size`.
const DEFAULT_DEVICE_BYTES: u64 = 256 << 20;

/// What a run produced, for callers that want more than the exit code.
pub struct Outcome {
    /// The process exit code: 1 when any job had I/O errors or verify failures, else 0.
    pub exit_code: i32,
    /// What every job measured, in job order.
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
    range_len: u64,
    units: u64,
    seed: u64,
}

/// URI schemes bluepoll's devices answer to; anything else in `filename` is a path.
const DEVICE_SCHEMES: &[&str] = &[
    "mem", "null", "uring", "pcie", "spdk", "fault", "sim", "slice", "ram",
];

/// Where a dev job's I/O goes before its URI is final: a device URI, or a path (fio's file or
/// block device) that several jobs may share.
enum Target {
    Uri(String),
    Path {
        path: String,
        /// Bytes the job needs from the file (None: sizes in %, or a block device).
        needed: Option<u64>,
        direct: bool,
    },
}

/// The device a dev job runs on: its `filename` as a device URI; a bare path (fio's file or
/// block device) through `uring:`, created at the job's size when missing, as fio creates files;
/// `ioengine=null` on a `null:` device; without either, the shared default RAM device, or a file
/// in `directory` named as fio names it (`JOB.CLONE.0`).
fn device_target(spec: &JobSpec, clone: u32, default_uri: &str) -> Result<Target> {
    // What the job's clones cover: the device a null engine or a new file is made with.
    let wanted_bytes = || {
        let clones = spec.numjobs.saturating_sub(1) as u64;
        spec.offset
            .saturating_add(spec.offset_increment.saturating_mul(clones))
            .saturating_add(
                spec.filesize
                    .map(|f| f.1)
                    .or(spec.size)
                    .unwrap_or(DEFAULT_DEVICE_BYTES),
            )
    };
    if spec.null_engine {
        let mib = wanted_bytes().div_ceil(1 << 20).max(1);
        return Ok(Target::Uri(format!("null:{mib}M")));
    }
    if let (Some(plugin), Some(name)) = (spec.spdk_plugin, &spec.filename) {
        let scheme = name.split(':').next().unwrap_or("");
        if !(name.contains(':') && DEVICE_SCHEMES.contains(&scheme)) {
            let uri = match plugin {
                options::SpdkPlugin::Nvme => spdk_plugin::nvme_uri(name),
                options::SpdkPlugin::Bdev => {
                    let conf = spec.spdk_json_conf.as_deref().ok_or_else(|| {
                        anyhow!(
                            "job '{}': ioengine=spdk_bdev needs spdk_json_conf",
                            spec.name
                        )
                    })?;
                    let text = std::fs::read_to_string(conf)
                        .with_context(|| format!("job '{}': spdk_json_conf={conf}", spec.name))?;
                    spdk_plugin::bdev_uri(&text, name)
                }
            }
            .map_err(|e| anyhow!("job '{}': filename={name}: {e}", spec.name))?;
            return Ok(Target::Uri(uri));
        }
    }
    let path = match (&spec.filename, &spec.directory) {
        (Some(f), _) => {
            let scheme = f.split(':').next().unwrap_or("");
            if f.contains(':') && DEVICE_SCHEMES.contains(&scheme) {
                return Ok(Target::Uri(f.clone()));
            }
            // A word before the colon is a device scheme, known or not (the device layer names
            // a misspelt one); a path before it makes fio's list of files.
            let looks_like_scheme =
                !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric());
            if f.contains(':') && looks_like_scheme {
                return Ok(Target::Uri(f.clone()));
            }
            if f.contains(':') {
                bail!(
                    "job '{}': filename={f}: lists of files (a:b) are not supported; give one \
                     path or device URI",
                    spec.name
                );
            }
            match &spec.directory {
                Some(dir) if !f.starts_with('/') => format!("{dir}/{f}"),
                _ => f.clone(),
            }
        }
        (None, Some(dir)) if spec.ioengine == IoEngine::Dev => {
            format!("{dir}/{}.{clone}.0", spec.name)
        }
        _ => return Ok(Target::Uri(default_uri.to_string())),
    };
    let is_block_device = std::fs::metadata(&path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    let percent = spec.size_percent.is_some() || spec.offset_percent.is_some();
    Ok(Target::Path {
        path,
        needed: (!is_block_device && !percent).then(wanted_bytes),
        direct: spec.direct,
    })
}

/// The `uring:` URI of a path shared by jobs needing `needed` bytes: a regular file is created,
/// or extended, only to what the jobs need, as fio does; sizes in % are of the file as it is.
fn path_uri(path: &str, needed: Option<u64>, direct: bool) -> Result<String> {
    let existing = std::fs::metadata(path).ok();
    let mut params = Vec::new();
    match needed {
        Some(bytes) => {
            let bytes = bytes.div_ceil(4096) * 4096;
            if existing.as_ref().is_none_or(|m| m.len() < bytes) {
                params.push(format!("size={bytes}"));
            }
        }
        None if existing.is_none() => {
            bail!("{path} does not exist, and a size in % needs one to measure");
        }
        None => {}
    }
    if !direct {
        params.push("direct=0".to_string());
    }
    Ok(match params.is_empty() {
        true => format!("uring:{path}"),
        false => format!("uring:{path}?{}", params.join("&")),
    })
}

/// Every dev job clone's device URI, keyed by (job index, clone): jobs sharing a path share one
/// URI, sized for the largest of them.
fn plan_device_uris(jobs: &[JobSpec], default_uri: &str) -> Result<HashMap<(usize, u32), String>> {
    let mut targets = Vec::new();
    let mut paths: HashMap<String, (Option<u64>, bool)> = HashMap::new();
    for (index, spec) in jobs.iter().enumerate() {
        if spec.ioengine != IoEngine::Dev {
            continue;
        }
        for clone in 0..spec.numjobs {
            let target = device_target(spec, clone, default_uri)?;
            if let Target::Path {
                path,
                needed,
                direct,
            } = &target
            {
                let entry = paths.entry(path.clone()).or_insert((*needed, *direct));
                entry.0 = match (entry.0, *needed) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                entry.1 &= *direct;
            }
            targets.push(((index, clone), target));
        }
    }
    let mut uris = HashMap::new();
    for (key, target) in targets {
        let uri = match target {
            Target::Uri(uri) => uri,
            Target::Path { path, .. } => {
                let (needed, direct) = paths[&path];
                path_uri(&path, needed, direct)?
            }
        };
        uris.insert(key, uri);
    }
    Ok(uris)
}

/// A RAM or null device named without a block size takes the smallest I/O its jobs issue (down
/// to 512 bytes), as a file takes any I/O size: `bssplit=512/10:4k/90` runs on `mem:1G`.
fn with_block_size(uri: &str, smallest_io: u64) -> String {
    let ram = uri.starts_with("mem:") || uri.starts_with("null:");
    if !ram || uri.contains("block_size=") || smallest_io >= 4096 {
        return uri.to_string();
    }
    let block = (1u64 << smallest_io.trailing_zeros().min(12)).max(512);
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}block_size={block}")
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
        if spec.ioengine != IoEngine::Dev {
            dev_only_options(spec)?;
        }
        match spec.ioengine {
            IoEngine::Dev => {}
            IoEngine::Store | IoEngine::Kstore | IoEngine::Image => store_jobs::validate(spec)?,
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
    let ignored = ignored_options(&invocation.jobs);
    if !ignored.is_empty() {
        notes.push(format!(
            "accepted without effect (they cannot change what a bluepoll device measures; \
             docs/bench.md): {}",
            ignored.join(", ")
        ));
    }
    let mut devices: HashMap<String, Device> = HashMap::new();
    let mut filesystems: HashMap<String, BlueFs> = HashMap::new();
    let mut instances = Vec::new();
    let mut group = 0usize;
    let mut number = 0usize;
    // The smallest I/O on each RAM device, so its block size can take it.
    let mut smallest_io: HashMap<String, u64> = HashMap::new();
    let planned_uris = plan_device_uris(&invocation.jobs, &default_uri)?;
    for ((index, _), uri) in &planned_uris {
        let e = smallest_io.entry(uri.clone()).or_insert(u64::MAX);
        *e = (*e).min(invocation.jobs[*index].min_bs());
    }
    for (i, spec) in invocation.jobs.iter().enumerate() {
        if spec.stonewall && i > 0 {
            group += 1;
        }
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
            let (uri, range_start, range_len) = match spec.ioengine {
                IoEngine::Dev => {
                    let named = planned_uris[&(i, clone)].clone();
                    let uri = with_block_size(&named, smallest_io[&named]);
                    if !devices.contains_key(&uri) {
                        let device = Device::open(&uri).with_context(|| {
                            format!("job '{}': cannot open device '{uri}'", spec.name)
                        })?;
                        devices.insert(uri.clone(), device);
                    }
                    let (start, len) = job_range(&spec, clone, seed, &devices[&uri], &mut notes)?;
                    (uri, start, len)
                }
                IoEngine::Bluefs => {
                    let uri = spec.filename.clone().unwrap_or_else(|| default_uri.clone());
                    if !filesystems.contains_key(&uri) {
                        let fs = bluefs_engine::mount(&uri, spec.bluefs_mkfs)
                            .with_context(|| format!("job '{}'", spec.name))?;
                        filesystems.insert(uri.clone(), fs);
                    }
                    (uri, 0, spec.size.unwrap_or(spec.bs) / spec.bs * spec.bs)
                }
                IoEngine::Store | IoEngine::Kstore | IoEngine::Image => {
                    let uri = spec.filename.clone().unwrap_or_else(|| default_uri.clone());
                    (uri, 0, spec.size.unwrap_or(spec.bs) / spec.bs * spec.bs)
                }
            };
            instances.push(Instance {
                spec: Arc::clone(&spec),
                number,
                clone,
                group,
                device_uri: uri,
                range_start,
                range_len,
                units: range_len / spec.bs,
                seed,
            });
            number += 1;
        }
    }
    let replays = load_replays(&instances)?;

    // Object stores, one per distinct `filename` of store and image jobs, each with a reactor
    // per CPU, laid out before the run.
    let stores = store_jobs::StoreJobs::open(&instances, &run, &mut notes)?;

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
    let interrupted = bluepoll_base::sys::interrupt_flag();
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
        if control.exit_all.load(Ordering::Relaxed) {
            notes.push(format!(
                "groups from {phase} on did not run: an exitall job with exit_what=all ended"
            ));
            break;
        }
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
        let group_exit = Arc::new(AtomicBool::new(false));
        let mut flows: HashMap<u32, Arc<engine::FlowGroup>> = HashMap::new();
        for m in members.iter().filter(|m| m.spec.flow != 0) {
            let group = flows.entry(m.spec.flow_id).or_default();
            group
                .weight
                .fetch_add(m.spec.flow.unsigned_abs(), Ordering::Relaxed);
        }
        let waited_for = |m: &Instance| -> Result<Option<Arc<JobProgress>>> {
            let Some(name) = &m.spec.wait_for else {
                return Ok(None);
            };
            if let Some(k) = members.iter().position(|o| o.spec.name == *name) {
                return Ok(Some(Arc::clone(&progress[k])));
            }
            if instances
                .iter()
                .any(|o| o.spec.name == *name && o.group < m.group)
            {
                // In an earlier group: finished before this group began.
                return Ok(None);
            }
            bail!(
                "job '{}': wait_for={name} names no job before it",
                m.spec.name
            )
        };
        let (fs_tx, fs_rx) = mpsc::channel::<Result<JobResult, String>>();
        let mut fs_pending = 0;
        for (slot, m) in &fs_members {
            if stores.start(m, &progress[*slot], &control, &fs_tx)? {
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
            let name = format!("bluefs-{}.{}", m.spec.name, m.clone);
            spawn_job_thread(name, fs_tx.clone(), move || Ok(bluefs_engine::run(job)))?;
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
                range_len: m.range_len,
                units: m.units,
                wait_for: waited_for(m)?,
                group_exit: Arc::clone(&group_exit),
                flow: (m.spec.flow != 0).then(|| Arc::clone(&flows[&m.spec.flow_id])),
                replay: replays.get(&m.number).cloned(),
                iolog: match &m.spec.write_iolog {
                    None => None,
                    Some(path) => {
                        // Clones of one job each write their own trace: PATH, PATH.1, …
                        let path = match m.clone {
                            0 => path.clone(),
                            n => format!("{path}.{n}"),
                        };
                        Some(
                            iolog::IologWriter::create(
                                std::path::Path::new(&path),
                                iolog::IologVersion::V3,
                                &m.device_uri,
                            )
                            .with_context(|| format!("job '{}': write_iolog", m.spec.name))?,
                        )
                    }
                },
                seed: m.seed,
                foreign_tables: if m.spec.verify == VerifyMode::None
                    && (m.spec.rw.writes() || m.spec.rw.trims())
                {
                    generations
                        .iter()
                        .filter(|((uri, _), _)| *uri == m.device_uri)
                        .filter_map(|(_, t)| t.clone())
                        .collect()
                } else {
                    Vec::new()
                },
                generations: if m.spec.verify != VerifyMode::None {
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
    let store_summaries = stores.finish()?;
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
        ignored_options: &ignored,
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

/// Options only the dev engine implements (verify among them): an error naming the first one
/// another engine's job sets, rather than a run that silently ignores it.
fn dev_only_options(spec: &JobSpec) -> Result<()> {
    let d = JobSpec::default_for(&spec.name);
    let set: &[(&str, bool)] = &[
        ("bssplit/bsrange/bs per direction", !spec.fixed_bs()),
        ("rw=trim/randtrim/trimwrite", spec.rw.trims()),
        ("rw=…:N", spec.rw_modifier != 0),
        (
            "random_distribution",
            spec.random_distribution != d.random_distribution,
        ),
        ("percentage_random", spec.percentage_random != 100),
        ("blockalign", spec.blockalign.is_some()),
        ("rate", spec.rate != [0; 3]),
        (
            "rate_min",
            spec.rate_min != [0; 3] || spec.rate_iops_min != [0; 3],
        ),
        ("thinktime", !spec.thinktime.is_zero()),
        ("startdelay", spec.startdelay != d.startdelay),
        ("number_ios", spec.number_ios != 0),
        ("io_size", spec.io_size.is_some()),
        ("loops", spec.loops != 1),
        (
            "offset_increment",
            spec.offset_increment != 0 || spec.offset_increment_percent.is_some(),
        ),
        (
            "size/offset in %",
            spec.size_percent.is_some() || spec.offset_percent.is_some(),
        ),
        ("filesize", spec.filesize.is_some()),
        ("wait_for", spec.wait_for.is_some()),
        ("flow", spec.flow != 0),
        ("zonemode=strided", spec.zonemode_strided.is_some()),
        ("latency_target", spec.latency_target.is_some()),
        ("read_iolog", spec.read_iolog.is_some()),
        ("write_iolog", spec.write_iolog.is_some()),
        ("end_fsync", spec.end_fsync),
        ("ioengine=null", spec.null_engine),
    ];
    if let Some((name, _)) = set.iter().find(|(_, on)| *on) {
        bail!(
            "job '{}': {name} is supported with ioengine=dev (and fio's kernel engines) only, \
             not ioengine={}",
            spec.name,
            spec.ioengine.name()
        );
    }
    if spec.verify != VerifyMode::None {
        // The store checks its own checksums on every read, so a verify pass adds nothing there.
        let why = if spec.ioengine == IoEngine::Store {
            " (the store checksums every block itself)"
        } else {
            ""
        };
        bail!(
            "job '{}': verify={} is not supported with ioengine={}{why}",
            spec.name,
            spec.verify.name(),
            spec.ioengine.name()
        );
    }
    if spec.rate_iops_dirs.iter().any(|&r| r > 0) && spec.ioengine != IoEngine::Store {
        bail!(
            "job '{}': rate_iops is supported with ioengine=dev and store only",
            spec.name
        );
    }
    Ok(())
}

/// Checks a job against its device and returns its range as (first byte, bytes). Sizes follow
/// fio on a block device: `size=N%` and `offset=N%` are of the device, `filesize` (a range: drawn
/// per clone) replaces `size`, `offset_increment` moves each clone on, a range that runs past the
/// end is cut there (with a note), and a start past the end is an error, as fio's "offset
/// extends end".
fn job_range(
    spec: &JobSpec,
    clone: u32,
    seed: u64,
    device: &Device,
    notes: &mut Vec<String>,
) -> Result<(u64, u64)> {
    let info = device.info();
    let block = info.block_size as u64;
    let name = &spec.name;
    let capacity = info.capacity_bytes();
    let align = spec.min_bs().max(block);
    let percent_of = |p: f64| ((capacity as f64 * p / 100.0) as u64) / align * align;
    for size in [
        spec.min_bs(),
        spec.max_bs(),
        spec.blockalign.unwrap_or(block),
    ] {
        if size % block != 0 {
            bail!(
                "job '{name}': block size or alignment {size} is not a multiple of the block \
                 size {block} of {}",
                info.uri
            );
        }
    }
    if spec.max_bs() > info.max_transfer_bytes as u64 {
        bail!(
            "job '{name}': bs={} exceeds the largest transfer {} of {}",
            spec.max_bs(),
            info.max_transfer_bytes,
            info.uri
        );
    }
    let base = spec.offset_percent.map_or(spec.offset, percent_of);
    let increment = spec
        .offset_increment_percent
        .map_or(spec.offset_increment, percent_of);
    let offset = base.saturating_add(increment.saturating_mul(clone as u64));
    if offset % block != 0 {
        bail!(
            "job '{name}': offset={offset} is not a multiple of the block size {block} of {}",
            info.uri
        );
    }
    if offset >= capacity {
        bail!(
            "job '{name}': offset extends end: clone {clone} starts at byte {offset} \
             (offset={}{}), beyond the end of {} ({capacity} bytes)",
            base,
            if increment > 0 {
                format!(" + offset_increment={increment} × {clone}")
            } else {
                String::new()
            },
            info.uri
        );
    }
    let wanted = match (spec.filesize, spec.size_percent) {
        (Some((lo, hi)), _) => {
            let drawn = lo + splitmix(seed ^ 0xf11e) % (hi - lo + 1);
            Some(drawn / block * block)
        }
        (None, Some(p)) => Some(percent_of(p)),
        (None, None) => spec.size,
    };
    let mut len = wanted.unwrap_or(capacity - offset);
    if offset.saturating_add(len) > capacity {
        push_once(
            notes,
            format!(
                "job '{name}': size {len} from byte {offset} runs past the end of {}; cut to {} bytes \
             (as fio does on a block device)",
                info.uri,
                capacity - offset
            ),
        );
        len = capacity - offset;
    }
    len = len / block * block;
    if len < spec.max_bs() {
        bail!(
            "job '{name}': its range ({len} bytes) is smaller than its largest block size {}",
            spec.max_bs()
        );
    }
    if spec.iodepth > info.max_queue_depth {
        bail!(
            "job '{name}': iodepth={} exceeds the deepest queue {} of {}",
            spec.iodepth,
            info.max_queue_depth,
            info.uri
        );
    }
    Ok((offset, len))
}

/// The fio options the jobs set that bluepoll accepts without effect, each once, in order.
pub fn ignored_options(jobs: &[JobSpec]) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for name in jobs.iter().flat_map(|j| &j.ignored_options) {
        if !all.contains(name) {
            all.push(name.clone());
        }
    }
    all
}

/// Adds a note unless the same one is there already (clones of a job repeat them).
fn push_once(notes: &mut Vec<String>, note: String) {
    if !notes.contains(&note) {
        notes.push(note);
    }
}

/// `read_iolog`: each job's trace, read once, as I/Os on its device (offsets are the log's, as
/// fio replays them). Syncs and waits are dropped; trims replay as trims.
fn load_replays(instances: &[Instance]) -> Result<HashMap<usize, Arc<Vec<pattern::NextIo>>>> {
    let mut by_path: HashMap<String, Arc<Vec<pattern::NextIo>>> = HashMap::new();
    let mut out = HashMap::new();
    for i in instances {
        let Some(path) = &i.spec.read_iolog else {
            continue;
        };
        if !by_path.contains_key(path) {
            let log = iolog::read(std::path::Path::new(path))
                .with_context(|| format!("job '{}': read_iolog", i.spec.name))?;
            let mut ios = Vec::new();
            for e in &log.entries {
                let dir = match e.action {
                    iolog::Action::Read => pattern::READ,
                    iolog::Action::Write => pattern::WRITE,
                    iolog::Action::Trim => pattern::TRIM,
                    _ => continue,
                };
                ios.push(pattern::NextIo {
                    dir,
                    offset: e.offset,
                    len: e.len,
                });
            }
            if ios.is_empty() {
                bail!(
                    "job '{}': read_iolog {path} holds no reads, writes or trims",
                    i.spec.name
                );
            }
            by_path.insert(path.clone(), Arc::new(ios));
        }
        let ios = Arc::clone(&by_path[path]);
        let end = i.range_start + i.range_len;
        if let Some(bad) = ios
            .iter()
            .find(|io| io.offset + io.len > end || io.len == 0)
        {
            bail!(
                "job '{}': read_iolog {path}: I/O at byte {} ({} bytes) is outside {} ({} bytes)",
                i.spec.name,
                bad.offset,
                bad.len,
                i.device_uri,
                end
            );
        }
        out.insert(i.number, ios);
    }
    Ok(out)
}

/// One generation table per (device, bs) among verifying jobs, spanning the union of their
/// ranges (not the whole device, so a small job on a huge device is still tracked); `None` when
/// that span is too large to track.
fn verify_tables(instances: &[Instance]) -> HashMap<(String, u64), Option<Arc<Generations>>> {
    let mut spans: HashMap<(String, u64), (u64, u64)> = HashMap::new();
    for i in instances
        .iter()
        .filter(|i| i.spec.verify != VerifyMode::None)
    {
        let (start, end) = (i.range_start, i.range_start + i.range_len);
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
            // The layout is what the job's verify mode writes (crc32c blocks for a job without
            // verify), so a verifying read job passes on it.
            let mut layout_spec = (*m.spec).clone();
            if layout_spec.verify == VerifyMode::None {
                layout_spec.verify = VerifyMode::Header(verify::Digest::Crc32c);
            }
            for k in 0..n {
                let offset = m.range_start + (unit + k) * bs;
                let block = &mut buf[(k * bs) as usize..((k + 1) * bs) as usize];
                engine::fill_unit(&layout_spec, block, offset, 1);
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
