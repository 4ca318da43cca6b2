//! `ioengine=bluefs`: jobs on files of a BlueFS, the way fio's psync engine runs on files.
//!
//! The job's `filename` names the BlueFS devices: one device URI (the DB device), or
//! `ROLE=URI` pairs joined by `|` (`db=uring:/x/db.img|wal=uring:/x/wal.img`). `|` because device
//! URIs already use `:` (schemes), `?`/`&` (parameters), `+` and `,` (`fault:` options). The
//! harness makes a new BlueFS there (default config) unless `bluefs_mkfs=0`, mounts it once for
//! the run, and every job clone works on its own file `bench/<jobname>.<clone>`.
//!
//! BlueFS I/O is synchronous — the calling thread drives its own queue pairs — so each clone runs
//! on its own thread (not on a reactor) with one I/O in flight; `iodepth` is accepted and
//! ignored, as psync ignores it. Files are append-only for writers, so:
//! - `rw=write` appends `bs` chunks; when the file reaches `size` it is closed and created afresh
//!   (which truncates it and frees its space), so `time_based` runs go on;
//! - `rw=read` / `randread` read a file of `size` bytes, written before the phase starts (fio's
//!   layout) unless it already holds that much;
//! - other modes are an error.
//!
//! A write is `append` (+ `flush` to the device with `direct=1`, the default, as O_DIRECT reaches
//! the device) (+ `fsync` when `fsync=N` says one is due — it then writes the bytes itself,
//! together with its log record, instead of the flush): its latency, recorded as `clat` and
//! `lat`, covers all of that, so with `fsync=1` the write latency is the latency of one
//! append+fsync. The fsyncs alone are also counted and timed, in fio's `sync` section.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use libc::{EIO, ENOENT, ENOSPC, EROFS};

use super::engine::{DIR_NAMES, JobProgress, JobResult, READ, RunControl, WRITE};
use super::offsets::{OffsetGen, Rng};
use super::options::{JobSpec, RwMode};
use super::stats::Meter;
use bluepoll_base::sys::{Clock, CpuUsage, current_cpu, thread_cpu_usage};
use bluepoll_bluefs::{BlueFs, BlueFsConfig, BlueFsError, Devices, FileKind};
use bluepoll_nvme::Device;

/// The BlueFS directory the job files live in (`bluefs_kind=slow`: [`SLOW_DIR`]).
pub const DIR: &str = "bench";
/// The directory of `bluefs_kind=slow` files: BlueFS puts the files of a directory whose name
/// ends in `.slow` on the SLOW device first.
pub const SLOW_DIR: &str = "bench.slow";

/// Separates `ROLE=URI` pairs in `filename`.
pub const SEPARATOR: char = '|';

/// Most error messages kept per job.
const MAX_MESSAGES: usize = 10;

/// The device URIs `filename` names, by BlueFS role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceUris {
    /// `wal=URI`: the device of BlueFS's WAL area, if separate.
    pub wal: Option<String>,
    /// `db=URI` (or the single URI): BlueFS's main device, which it needs.
    pub db: String,
    /// `slow=URI`: the device of BlueFS's SLOW area, if any.
    pub slow: Option<String>,
}

/// Parses `URI` (one device) or `ROLE=URI|ROLE=URI…` with roles `wal`, `db`, `slow`: returns
/// the single URI, or the URIs by role (wal, db, slow). Shared by the engines on BlueFS and on
/// the object store, which read a single URI as their main device.
pub fn parse_roles(text: &str) -> Result<(Option<String>, [Option<String>; 3]), String> {
    let roles = ["wal", "db", "slow"];
    let is_pair = |piece: &str| {
        piece
            .split_once('=')
            .is_some_and(|(role, _)| roles.contains(&role.trim()))
    };
    let pieces: Vec<&str> = text.split(SEPARATOR).map(str::trim).collect();
    if pieces.len() == 1 && !is_pair(pieces[0]) {
        if pieces[0].is_empty() {
            return Err("empty device URI".into());
        }
        return Ok((Some(pieces[0].to_string()), [None, None, None]));
    }
    let mut found: [Option<String>; 3] = [None, None, None];
    for piece in pieces {
        let Some((role, uri)) = piece.split_once('=').filter(|_| is_pair(piece)) else {
            return Err(format!(
                "'{piece}' is not ROLE=URI (roles: wal, db, slow; pairs joined by '{SEPARATOR}')"
            ));
        };
        let (role, uri) = (role.trim(), uri.trim());
        let index = roles.iter().position(|r| *r == role).expect("checked");
        if found[index].is_some() {
            return Err(format!("the {role} device is given twice"));
        }
        if uri.is_empty() {
            return Err(format!("the {role} device has an empty URI"));
        }
        found[index] = Some(uri.to_string());
    }
    Ok((None, found))
}

/// Parses `URI` (the DB device alone) or `ROLE=URI|ROLE=URI…` with roles `wal`, `db`, `slow`.
pub fn parse_filename(text: &str) -> Result<DeviceUris, String> {
    let (single, [wal, db, slow]) = parse_roles(text)?;
    if let Some(db) = single {
        return Ok(DeviceUris {
            wal: None,
            db,
            slow: None,
        });
    }
    let Some(db) = db else {
        return Err("no db= device (BlueFS needs one)".into());
    };
    Ok(DeviceUris { wal, db, slow })
}

/// Checks what a bluefs job can do before anything is opened.
pub fn validate(spec: &JobSpec) -> Result<()> {
    let name = &spec.name;
    if !matches!(spec.rw, RwMode::Write | RwMode::Read | RwMode::RandRead) {
        bail!(
            "job '{name}': rw={}: ioengine=bluefs supports rw=write|read|randread (BlueFS files \
             are append-only)",
            spec.rw.name()
        );
    }
    let Some(filename) = &spec.filename else {
        bail!(
            "job '{name}': ioengine=bluefs needs filename= (the BlueFS devices: URI, or \
             db=URI{SEPARATOR}wal=URI{SEPARATOR}slow=URI)"
        );
    };
    parse_filename(filename).map_err(|e| anyhow::anyhow!("job '{name}': filename: {e}"))?;
    let Some(size) = spec.size else {
        bail!("job '{name}': ioengine=bluefs needs size= (the bytes of each job's file)");
    };
    if spec.offset != 0 {
        bail!("job '{name}': offset is not supported with ioengine=bluefs (files start at 0)");
    }
    if size < spec.bs {
        bail!("job '{name}': size={size} is smaller than bs={}", spec.bs);
    }
    Ok(())
}

/// Opens the devices `filename` names, makes a BlueFS on them if `mkfs`, mounts it and makes
/// the `bench` directory.
pub fn mount(filename: &str, mkfs: bool) -> Result<BlueFs> {
    let uris = parse_filename(filename).map_err(|e| anyhow::anyhow!("filename: {e}"))?;
    let open = |role: &str, uri: &str| {
        Device::open(uri).with_context(|| format!("cannot open the BlueFS {role} device '{uri}'"))
    };
    let devices = Devices {
        wal: uris.wal.as_deref().map(|u| open("wal", u)).transpose()?,
        db: open("db", &uris.db)?,
        slow: uris.slow.as_deref().map(|u| open("slow", u)).transpose()?,
    };
    let config = BlueFsConfig::default();
    if mkfs {
        BlueFs::mkfs(&devices, &config, false)
            .with_context(|| format!("cannot make a BlueFS on '{filename}'"))?;
    }
    let fs = BlueFs::mount(devices, config, None)
        .with_context(|| format!("cannot mount the BlueFS on '{filename}'"))?
        .fs;
    for dir in [DIR, SLOW_DIR] {
        if !fs.dir_exists(dir) {
            fs.mkdir(dir)
                .with_context(|| format!("cannot make directory '{dir}' on '{filename}'"))?;
        }
    }
    Ok(fs)
}

/// The file job clone `clone` of `spec` works on.
pub fn file_path(spec: &JobSpec, clone: u32) -> String {
    match spec.bluefs_kind {
        FileKind::Db => format!("{DIR}/{}.{clone}", spec.name),
        FileKind::Wal => format!("{DIR}/{}.{clone}.log", spec.name),
        FileKind::Slow => format!("{SLOW_DIR}/{}.{clone}", spec.name),
    }
}

/// Before a read job's phase: make sure its file holds `size` bytes, writing it (incompressible
/// data, 1 MiB at a time, fsync'ed) if it does not — fio's layout of a new file.
pub fn lay_out(fs: &BlueFs, spec: &JobSpec, clone: u32, seed: u64) -> Result<()> {
    let path = file_path(spec, clone);
    let size = spec.size.unwrap_or(0);
    if fs.stat(&path).is_ok_and(|s| s.size >= size) {
        return Ok(());
    }
    let context = || format!("job '{}': laying out {path} ({size} bytes)", spec.name);
    let mut writer = fs.create(&path).with_context(context)?;
    let mut chunk = vec![0u8; 1 << 20];
    fill_random(&mut chunk, seed);
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        writer.append(&chunk[..n]).with_context(context)?;
        left -= n as u64;
    }
    writer.close().with_context(context)
}

/// Incompressible noise, never all zeroes, as fio's buffers are.
fn fill_random(buf: &mut [u8], seed: u64) {
    let mut rng = Rng::new(seed ^ 0x0b1e_55ed);
    for chunk in buf.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
    }
}

/// fio's errno for a failed BlueFS call.
fn errno_of(e: &BlueFsError) -> i32 {
    match e {
        BlueFsError::NoSpace { .. } => ENOSPC,
        BlueFsError::ReadOnly { .. } => EROFS,
        BlueFsError::NotFound { .. } => ENOENT,
        _ => EIO,
    }
}

/// A job's failures: the first one ends it.
#[derive(Default)]
struct Errors {
    count: u64,
    errno: i32,
    messages: Vec<String>,
}

impl Errors {
    fn add(&mut self, what: String, e: &BlueFsError) {
        self.count += 1;
        if self.errno == 0 {
            self.errno = errno_of(e);
        }
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(format!("{what}: {e}"));
        }
    }
}

/// One job clone, ready to run on its own thread.
pub struct FsJob {
    /// The job's options.
    pub spec: Arc<JobSpec>,
    /// Number of the job in the run (0-based; reports add one).
    pub number: usize,
    /// The group (phase) the job runs in.
    pub group: usize,
    /// Which clone of its job (0..`numjobs`): picks its file and its CPU.
    pub clone: u32,
    /// The BlueFS the job's file is on, mounted for the run.
    pub fs: BlueFs,
    /// Seed of the job's random offsets and data.
    pub seed: u64,
    /// Where the job publishes its progress for the main thread.
    pub progress: Arc<JobProgress>,
    /// The run-wide switches (stop on Ctrl-C).
    pub control: Arc<RunControl>,
}

/// What the job does per I/O.
enum Work {
    Write {
        writer: Option<bluepoll_bluefs::FileWriter>,
        data: Vec<u8>,
        since_sync: u64,
    },
    Read {
        reader: bluepoll_bluefs::FileReader,
        offsets: OffsetGen,
        rng: Rng,
        buf: Vec<u8>,
    },
}

/// Runs one job clone to its end on the calling thread and returns what it measured.
pub fn run(job: FsJob) -> JobResult {
    let FsJob {
        spec,
        number,
        group,
        clone,
        fs,
        seed,
        progress,
        control,
    } = job;
    if let Some(cpus) = spec.cpus_allowed.as_ref().filter(|c| !c.is_empty()) {
        let cpu = cpus[clone as usize % cpus.len()];
        // Like fio, a CPU that cannot be had is not fatal; the job runs where it is put.
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    let path = file_path(&spec, clone);
    let bs = spec.bs;
    let size = spec.size.unwrap_or(bs);
    let units = (size / bs).max(1);
    let mut errors = Errors::default();

    let opened = match spec.rw {
        RwMode::Write => fs.create(&path).map(|writer| {
            let mut data = vec![0u8; bs as usize];
            fill_random(&mut data, seed);
            Work::Write {
                writer: Some(writer),
                data,
                since_sync: 0,
            }
        }),
        _ => fs.open_read(&path).map(|reader| Work::Read {
            reader,
            offsets: if spec.rw.is_random() {
                OffsetGen::random(units, seed, !spec.norandommap)
            } else {
                OffsetGen::sequential(units)
            },
            rng: Rng::new(seed ^ 0x5eed),
            buf: vec![0u8; bs as usize],
        }),
    };
    let mut work = match opened {
        Ok(work) => Some(work),
        Err(e) => {
            errors.add(format!("opening {path}"), &e);
            None
        }
    };

    let clock = Clock::start();
    let mut meter = Meter::new(spec.sample_every_ns());
    let ramp_ns = spec.ramp_time.as_nanos() as u64;
    let mut measuring = false;
    let mut deadline_ns = None;
    let mut budget: Option<u64> = None;
    let mut cpu_start = thread_cpu_usage();
    let begin = |meter: &mut Meter, now_ns: u64| -> (Option<u64>, Option<u64>, CpuUsage) {
        meter.begin(now_ns);
        (
            spec.runtime.map(|r: Duration| now_ns + r.as_nanos() as u64),
            (!spec.time_based).then_some(units * bs),
            thread_cpu_usage(),
        )
    };
    if ramp_ns == 0 {
        (deadline_ns, budget, cpu_start) = begin(&mut meter, 0);
        measuring = true;
    }
    let mut run_end_ns = 0;
    while let Some(w) = work.as_mut() {
        let now = clock.now_ns();
        if !measuring && now >= ramp_ns {
            (deadline_ns, budget, cpu_start) = begin(&mut meter, now);
            measuring = true;
        }
        let stop = control.stop.load(Ordering::Relaxed);
        if stop || deadline_ns.is_some_and(|d| now >= d) || budget == Some(0) {
            run_end_ns = now;
            break;
        }
        if measuring && now >= meter.next_sample_ns {
            meter.take_sample(now);
        }
        let (dir, offset, outcome) = match w {
            Work::Write {
                writer,
                data,
                since_sync,
            } => {
                // A full file is closed and made afresh (its space freed), as fio wraps around.
                let full = writer.as_ref().is_some_and(|wr| wr.size() + bs > size);
                if full || writer.is_none() {
                    let rotated = match writer.take() {
                        Some(old) => old.close(),
                        None => Ok(()),
                    }
                    .and_then(|()| fs.create(&path));
                    match rotated {
                        Ok(new) => *writer = Some(new),
                        Err(e) => {
                            errors.add(format!("starting {path} again"), &e);
                            run_end_ns = clock.now_ns();
                            break;
                        }
                    }
                    *since_sync = 0;
                    continue;
                }
                let wr = writer.as_mut().expect("present");
                let offset = wr.size();
                let t0 = clock.now_ns();
                let mut result = wr.append(data);
                *since_sync += 1;
                let sync_due = spec.fsync > 0 && *since_sync >= spec.fsync;
                // direct=1: the bytes reach the device now — by the fsync when one is due (it
                // writes them together with its log record), else by a flush.
                if result.is_ok() && spec.direct && !sync_due {
                    result = wr.flush();
                }
                let mut sync_ns = None;
                if result.is_ok() && sync_due {
                    let s0 = clock.now_ns();
                    result = wr.fsync();
                    sync_ns = Some(clock.now_ns() - s0);
                    *since_sync = 0;
                }
                let t1 = clock.now_ns();
                if result.is_ok()
                    && let Some(ns) = sync_ns
                {
                    meter.syncs.record(ns);
                }
                (WRITE, offset, result.map(|()| t1 - t0))
            }
            Work::Read {
                reader,
                offsets,
                rng,
                buf,
            } => {
                let offset = offsets.next(rng) * bs;
                let t0 = clock.now_ns();
                let result = reader.read_at(offset, buf);
                let t1 = clock.now_ns();
                let result = match result {
                    Ok(n) if n as u64 == bs => Ok(t1 - t0),
                    Ok(n) => Err(BlueFsError::Corrupt {
                        reason: format!("short read: {n} of {bs} bytes (file smaller than size?)"),
                    }),
                    Err(e) => Err(e),
                };
                (READ, offset, result)
            }
        };
        match outcome {
            Ok(ns) => {
                meter.record(dir, bs, ns);
                if let Some(b) = &mut budget {
                    *b = b.saturating_sub(bs);
                }
                progress.ios[dir].store(meter.ios[dir], Ordering::Relaxed);
                progress.bytes[dir].store(meter.bytes[dir], Ordering::Relaxed);
            }
            Err(e) => {
                // Like fio without continue_on_error: the first error ends the job.
                let what = format!(
                    "{} of {bs} bytes at offset {offset} of {path}",
                    DIR_NAMES[dir]
                );
                errors.add(what, &e);
                run_end_ns = clock.now_ns();
                break;
            }
        }
    }
    if work.is_some() && !measuring {
        // Stopped during ramp_time: nothing measured.
        meter.begin(run_end_ns);
    }
    let measure_start_ns = meter.measure_start_ns;
    let finish_ns = clock.now_ns();
    meter.take_sample(finish_ns.max(run_end_ns));
    let cpu_used = thread_cpu_usage().since(&cpu_start);
    // Close outside the measured time: the last fsync a close does is the job's end, not an I/O.
    if let Some(Work::Write {
        writer: Some(w), ..
    }) = work.take()
        && errors.count == 0
        && let Err(e) = w.close()
    {
        errors.add(format!("closing {path}"), &e);
    }
    progress.finished.store(true, Ordering::Release);

    let run_ns = run_end_ns.saturating_sub(measure_start_ns);
    let ios = meter.total[READ].ios + meter.total[WRITE].ios;
    let mut depth_dist = [0u64; 7];
    let mut batches = [0u64; 7];
    depth_dist[0] = ios;
    batches[1] = ios;
    let writes = spec.rw.writes();
    JobResult {
        spec: Arc::clone(&spec),
        number,
        group,
        device_uri: spec.filename.clone().unwrap_or_default(),
        reactor: usize::MAX,
        cpu: current_cpu().unwrap_or(0),
        dirs: meter.total,
        dir_runtime_ns: [
            if writes { 0 } else { run_ns },
            if writes { run_ns } else { 0 },
            0,
        ],
        runtime_ns: finish_ns.saturating_sub(measure_start_ns),
        samples: meter.samples,
        cpu_usage: cpu_used,
        depth_dist,
        submit_dist: batches,
        complete_dist: batches,
        io_errors: errors.count,
        verify_errors: 0,
        messages: errors.messages,
        syncs: {
            let mut s = meter.syncs;
            s.settle();
            s
        },
        errno: errors.errno,
        io_log: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_name_the_devices() {
        let one = parse_filename("mem:1G").unwrap();
        assert_eq!((one.wal, one.db.as_str(), one.slow), (None, "mem:1G", None));
        let uris = parse_filename(
            "db=uring:/x/db.img?size=1G | wal=fault:seed=1,torn=0.5+mem:1G|slow=mem:4G",
        )
        .unwrap();
        assert_eq!(uris.db, "uring:/x/db.img?size=1G");
        assert_eq!(uris.wal.as_deref(), Some("fault:seed=1,torn=0.5+mem:1G"));
        assert_eq!(uris.slow.as_deref(), Some("mem:4G"));
        // A URI with '=' in its parameters is still one URI.
        assert_eq!(
            parse_filename("uring:/x/a.img?size=1G").unwrap().db,
            "uring:/x/a.img?size=1G"
        );
        assert!(
            parse_filename("wal=mem:1G")
                .unwrap_err()
                .contains("no db= device")
        );
        assert!(
            parse_filename("db=mem:1G|db=mem:2G")
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            parse_filename("db=mem:1G|mem:2G")
                .unwrap_err()
                .contains("is not ROLE=URI")
        );
        assert!(parse_filename("").is_err());
        assert!(parse_filename("db=").is_err());
    }
}
