//! The fio options the harness understands, and how job files and the command line combine.
//!
//! Precedence, lowest first: built-in defaults; a job file's `[global]` options; the job
//! section's own options; options on the command line before any `--name`; for jobs started on
//! the command line with `--name`, the options after it. Unlike fio — where a job file's values
//! beat the command line — a command-line option here overrides the job file, so a job file can
//! be pointed at another device or shortened without editing it.

use std::time::Duration;

use super::jobfile::{Origin, RawJob, RawOption};
use crate::units::{parse_duration, parse_size};

/// fio's default `percentile_list`.
pub const DEFAULT_PERCENTILES: [f64; 17] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95,
    99.99,
];

/// The embedded default job, used when neither a job file nor `--name` is given.
pub const DEFAULT_JOB: &str = include_str!("../../bench/jobs/quick.fio");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwMode {
    Read,
    Write,
    Trim,
    RandRead,
    RandWrite,
    RandTrim,
    /// Sequential mix (`rw`, `readwrite`).
    ReadWrite,
    RandRw,
    /// Each block trimmed, then written (fio's `trimwrite`; `randtrimwrite` at random offsets).
    TrimWrite,
    RandTrimWrite,
}

impl RwMode {
    const ALL: [RwMode; 10] = [
        RwMode::Read,
        RwMode::Write,
        RwMode::Trim,
        RwMode::RandRead,
        RwMode::RandWrite,
        RwMode::RandTrim,
        RwMode::ReadWrite,
        RwMode::RandRw,
        RwMode::TrimWrite,
        RwMode::RandTrimWrite,
    ];

    fn parse(text: &str) -> Option<RwMode> {
        match text {
            "readwrite" => Some(RwMode::ReadWrite),
            _ => RwMode::ALL.into_iter().find(|m| m.name() == text),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RwMode::Read => "read",
            RwMode::Write => "write",
            RwMode::Trim => "trim",
            RwMode::RandRead => "randread",
            RwMode::RandWrite => "randwrite",
            RwMode::RandTrim => "randtrim",
            RwMode::ReadWrite => "rw",
            RwMode::RandRw => "randrw",
            RwMode::TrimWrite => "trimwrite",
            RwMode::RandTrimWrite => "randtrimwrite",
        }
    }

    pub fn is_random(self) -> bool {
        matches!(
            self,
            RwMode::RandRead
                | RwMode::RandWrite
                | RwMode::RandRw
                | RwMode::RandTrim
                | RwMode::RandTrimWrite
        )
    }

    pub fn reads(self) -> bool {
        matches!(
            self,
            RwMode::Read | RwMode::RandRead | RwMode::ReadWrite | RwMode::RandRw
        )
    }

    pub fn writes(self) -> bool {
        matches!(
            self,
            RwMode::Write
                | RwMode::RandWrite
                | RwMode::ReadWrite
                | RwMode::RandRw
                | RwMode::TrimWrite
                | RwMode::RandTrimWrite
        )
    }

    pub fn trims(self) -> bool {
        matches!(
            self,
            RwMode::Trim | RwMode::RandTrim | RwMode::TrimWrite | RwMode::RandTrimWrite
        )
    }
}

/// Which layer a job drives. Later layers add `store`, `image`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEngine {
    /// Queue pairs on the device named by `filename` (a device URI).
    Dev,
    /// Files of a BlueFS made on the devices named by `filename`, one synchronous thread per
    /// job clone, as fio's psync engine ([`super::bluefs_engine`]).
    Bluefs,
    /// Objects of an object store made on the devices named by `filename`, jobs on the store's
    /// reactors ([`super::store_engine`]).
    Store,
    /// The baseline: object data as RocksDB values on the kernel filesystem in `directory`
    /// ([`super::kstore_engine`]).
    Kstore,
    /// RBD-style images on an object store made on the devices named by `filename`, one
    /// thread per job clone ([`super::image_engine`]).
    Image,
}

impl IoEngine {
    pub fn name(self) -> &'static str {
        match self {
            IoEngine::Dev => "dev",
            IoEngine::Bluefs => "bluefs",
            IoEngine::Store => "store",
            IoEngine::Kstore => "kstore",
            IoEngine::Image => "image",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyMode {
    None,
    Crc32c,
}

/// One job, fully resolved.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub name: String,
    pub rw: RwMode,
    pub bs: u64,
    pub iodepth: u32,
    /// Commands queued before the doorbell is rung (fio's `iodepth_batch_submit`; 1 = each as
    /// soon as it is ready, as fio does by default; 0 = a whole `iodepth` at a time).
    pub iodepth_batch_submit: u32,
    pub numjobs: u32,
    /// Bytes of the device the job covers from `offset`; `None` = to the end of the device.
    pub size: Option<u64>,
    pub offset: u64,
    pub runtime: Option<Duration>,
    pub time_based: bool,
    pub ramp_time: Duration,
    pub rwmixread: u32,
    pub filename: Option<String>,
    pub ioengine: IoEngine,
    /// fio's `fsync=N` / `fdatasync=N`: sync the file after every N writes; 0 = never.
    pub fsync: u64,
    /// `bluefs_mkfs`: make a new BlueFS on the `filename` devices before the run (default on).
    pub bluefs_mkfs: bool,
    /// `bluefs_kind=db|wal|slow`: what kind of BlueFS file the job works on, hence where its
    /// data goes — `wal` names it like a RocksDB WAL (`*.log`: the WAL device, with the log).
    pub bluefs_kind: crate::bluefs::FileKind,
    /// fio's `nrfiles`: objects per job (ioengine=store).
    pub nrfiles: u32,
    /// `store_config=FILE`: a TOML store config for the store made on `filename`.
    pub store_config: Option<String>,
    /// `store_mkfs`: make a new store on `filename` before the run (default on).
    pub store_mkfs: bool,
    /// `store_layout`: whether ioengine=store writes each object in full before the run (0: the
    /// run starts on an empty collection; reads of unwritten space are holes, as in a new
    /// sparse file, and writes take new space — how a store is filled with reads between).
    pub store_layout: bool,
    /// `store_deferred_size=SIZE`: the store's prefer_deferred_size.
    pub store_deferred_size: Option<u64>,
    /// fio's `rate_iops`: at most this many I/Os per second per job (0: no cap; ioengine=store).
    pub rate_iops: u64,
    /// fio's `directory`: where ioengine=kstore keeps its RocksDB.
    pub directory: Option<String>,
    /// `kstore_stripe`: bytes per data key of ioengine=kstore (Ceph KStore's default 64 KiB).
    pub kstore_stripe: u64,
    /// `image_order`: ioengine=image's objects are 2^order bytes (22: 4 MiB, rbd's default).
    pub image_order: u8,
    /// `image_layout`: whether ioengine=image writes each image in full before the run.
    pub image_layout: bool,
    pub direct: bool,
    pub percentile_list: Vec<f64>,
    pub group_reporting: bool,
    pub randrepeat: bool,
    pub randseed: u64,
    pub norandommap: bool,
    pub verify: VerifyMode,
    pub do_verify: bool,
    pub stonewall: bool,
    /// fio's log options: the prefix of each log's files; empty = the job's name (fio writes
    /// `JOBNAME_bw.N.log` when the option has no value).
    pub write_lat_log: Option<String>,
    pub write_iops_log: Option<String>,
    pub write_bw_log: Option<String>,
    pub write_hist_log: Option<String>,
    /// Milliseconds per averaged log entry; 0 = one entry per I/O (fio's default for logs).
    pub log_avg_msec: u64,
    /// `log_hist_msec`: milliseconds per histogram log entry.
    pub log_hist_msec: u64,
    /// `per_job_logs`: one log file per job (`PREFIX_bw.N.log`) or one shared (`PREFIX_bw.log`).
    pub per_job_logs: bool,
    /// `log_offset`: per-I/O log lines carry the offset of the I/O.
    pub log_offset: bool,
    /// `log_prio`: per-I/O log lines carry the I/O priority (always 0 here: no priorities).
    pub log_prio: bool,
    /// `log_max_value`: averaged entries hold the interval's maximum rather than its mean.
    pub log_max_value: bool,
    /// CPUs the job may run on (fio's `cpus_allowed`); the run's reactors come from these.
    pub cpus_allowed: Option<Vec<usize>>,
    /// The options as written in the job's own section (for fio's "job options" in JSON).
    pub job_options: Vec<(String, String)>,
    /// The global options in force (file `[global]` and command line), for "global options".
    pub global_options: Vec<(String, String)>,
}

impl JobSpec {
    /// The interval of the samples behind bw/iops spreads, averaged logs and plots: `log_avg_msec`,
    /// or a second where that is 0 (then logs get one line per I/O as well).
    pub fn sample_every_ns(&self) -> u64 {
        match self.log_avg_msec {
            0 => 1_000_000_000,
            ms => ms * 1_000_000,
        }
    }

    /// Whether the engine keeps one record per I/O for the logs (fio's `log_avg_msec=0`).
    pub fn logs_every_io(&self) -> bool {
        self.log_avg_msec == 0
            && (self.write_lat_log.is_some()
                || self.write_iops_log.is_some()
                || self.write_bw_log.is_some())
    }

    fn new(name: &str) -> JobSpec {
        JobSpec {
            name: name.to_string(),
            rw: RwMode::Read,
            bs: 4096,
            iodepth: 1,
            iodepth_batch_submit: 1,
            numjobs: 1,
            size: None,
            offset: 0,
            runtime: None,
            time_based: false,
            ramp_time: Duration::ZERO,
            rwmixread: 50,
            filename: None,
            ioengine: IoEngine::Dev,
            fsync: 0,
            bluefs_mkfs: true,
            bluefs_kind: crate::bluefs::FileKind::Db,
            nrfiles: 1,
            store_config: None,
            store_mkfs: true,
            store_layout: true,
            store_deferred_size: None,
            rate_iops: 0,
            directory: None,
            kstore_stripe: 64 << 10,
            image_order: 22,
            image_layout: true,
            direct: true,
            percentile_list: DEFAULT_PERCENTILES.to_vec(),
            group_reporting: false,
            randrepeat: true,
            randseed: 0x89,
            norandommap: false,
            verify: VerifyMode::None,
            do_verify: true,
            stonewall: false,
            write_lat_log: None,
            write_iops_log: None,
            write_bw_log: None,
            write_hist_log: None,
            log_avg_msec: 0,
            log_hist_msec: 0,
            per_job_logs: true,
            log_offset: false,
            log_prio: false,
            log_max_value: false,
            cpus_allowed: None,
            job_options: Vec::new(),
            global_options: Vec::new(),
        }
    }
}

/// What a bad option looks like to the user: one line naming it.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    #[error("{origin}: unknown option '{key}'")]
    Unknown { origin: Origin, key: String },
    #[error("{origin}: invalid value '{value}' for option '{key}': {reason}")]
    Invalid {
        origin: Origin,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{origin}: option '{key}' needs a value")]
    MissingValue { origin: Origin, key: String },
}

fn normalise(key: &str) -> String {
    key.trim()
        .trim_start_matches('-')
        .replace('-', "_")
        .to_ascii_lowercase()
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected 0 or 1".into()),
    }
}

fn parse_u64(value: &str) -> Result<u64, String> {
    let v = value.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| "expected a whole number".to_string())
}

fn at_least_one(value: &str, max: u64) -> Result<u64, String> {
    let n = parse_size(value)?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    if n > max {
        return Err(format!("must be at most {max}"));
    }
    Ok(n)
}

/// Most CPUs a list may name, repeats counted: more than any machine has, and a bound on the
/// work a list can ask for (every `0-4096,` names thousands, each checked against the list).
const MAX_LISTED_CPUS: usize = 8192;

/// Parses a CPU list such as `0,1` or `0-3,6`.
pub fn parse_cpu_list(value: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    let mut named = 0;
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let first: usize = first
            .parse()
            .map_err(|_| format!("'{part}' is not a cpu number or range"))?;
        let last: usize = last
            .parse()
            .map_err(|_| format!("'{part}' is not a cpu number or range"))?;
        if last < first || last - first > 4096 {
            return Err(format!("'{part}' is not a valid cpu range"));
        }
        named += last - first + 1;
        if named > MAX_LISTED_CPUS {
            return Err(format!("more than {MAX_LISTED_CPUS} cpus listed"));
        }
        for cpu in first..=last {
            if !cpus.contains(&cpu) {
                cpus.push(cpu);
            }
        }
    }
    if cpus.is_empty() {
        return Err("empty cpu list".into());
    }
    Ok(cpus)
}

/// Options that take no value (`--time_based`), where a bare key means 1.
fn is_flag(key: &str) -> bool {
    matches!(
        key,
        "time_based"
            | "group_reporting"
            | "randrepeat"
            | "norandommap"
            | "stonewall"
            | "wait_for_previous"
            | "direct"
            | "buffered"
            | "do_verify"
            | "thread"
            | "bluefs_mkfs"
            | "store_mkfs"
            | "store_layout"
            | "image_layout"
    )
}

/// fio engines that do not drive a block device or file (network, RDMA, HTTP, RBD, SCSI
/// generic, HDFS, DAX, …): refused with a message naming the engine.
const NO_MEANING_ENGINES: &[&str] = &[
    "net",
    "netsplice",
    "rdma",
    "http",
    "rbd",
    "sg",
    "libhdfs",
    "dev-dax",
    "filecreate",
    "filestat",
    "filedelete",
    "dircreate",
    "dirstat",
    "dirdelete",
    "cpuio",
    "e4defrag",
    "falloc",
    "ftruncate",
    "gfapi",
    "gfapi_async",
    "guasi",
    "libcufile",
    "libiscsi",
    "nbd",
    "nfs",
    "rados",
    "splice",
    "windowsaio",
    "xnvme",
    "exec",
];

/// Applies one option to a job.
fn apply(spec: &mut JobSpec, option: &RawOption) -> Result<(), OptionError> {
    let key = normalise(&option.key);
    let value = match (&option.value, is_flag(&key)) {
        (Some(v), _) => v.clone(),
        (None, true) => "1".to_string(),
        // A log option without a value names its files after the job, as fio does.
        (None, false) if key.starts_with("write_") && key.ends_with("_log") => String::new(),
        (None, false) => {
            return Err(OptionError::MissingValue {
                origin: option.origin.clone(),
                key,
            });
        }
    };
    let invalid = |reason: String| OptionError::Invalid {
        origin: option.origin.clone(),
        key: key.clone(),
        value: value.clone(),
        reason,
    };
    let secs = Duration::from_secs(1);
    match key.as_str() {
        "name" => spec.name = value.clone(),
        "description" => {}
        "rw" | "readwrite" => {
            spec.rw = RwMode::parse(&value).ok_or_else(|| {
                invalid("expected read, write, randread, randwrite, rw, readwrite or randrw".into())
            })?;
        }
        "bs" | "blocksize" => spec.bs = at_least_one(&value, 1 << 30).map_err(invalid)?,
        "iodepth" => spec.iodepth = at_least_one(&value, 65536).map_err(invalid)? as u32,
        "iodepth_batch_submit" | "iodepth_batch" => {
            let n = parse_u64(&value).map_err(invalid)?;
            if n > 65536 {
                return Err(invalid("must be at most 65536 (0 means iodepth)".into()));
            }
            spec.iodepth_batch_submit = n as u32;
        }
        "numjobs" => spec.numjobs = at_least_one(&value, 4096).map_err(invalid)? as u32,
        "size" => spec.size = Some(at_least_one(&value, u64::MAX).map_err(invalid)?),
        "offset" => spec.offset = parse_size(&value).map_err(invalid)?,
        "runtime" => {
            let d = parse_duration(&value, secs).map_err(invalid)?;
            spec.runtime = if d.is_zero() { None } else { Some(d) };
        }
        "time_based" => spec.time_based = parse_bool(&value).map_err(invalid)?,
        "ramp_time" => spec.ramp_time = parse_duration(&value, secs).map_err(invalid)?,
        "rwmixread" => {
            let n = parse_u64(&value).map_err(invalid)?;
            if n > 100 {
                return Err(invalid("must be between 0 and 100".into()));
            }
            spec.rwmixread = n as u32;
        }
        "rwmixwrite" => {
            let n = parse_u64(&value).map_err(invalid)?;
            if n > 100 {
                return Err(invalid("must be between 0 and 100".into()));
            }
            spec.rwmixread = 100 - n as u32;
        }
        "filename" => {
            if value.is_empty() {
                return Err(invalid("empty device URI".into()));
            }
            spec.filename = Some(value.clone());
        }
        "ioengine" => {
            spec.ioengine = match value.as_str() {
                "dev" => IoEngine::Dev,
                // fio's engines for the kernel's block and file paths: here the same device
                // through bluepoll's queue pairs, which is what a job file written for them
                // asks to measure.
                "libaio" | "io_uring" | "psync" | "sync" | "pvsync" | "pvsync2" | "vsync"
                | "posixaio" | "mmap" => IoEngine::Dev,
                "bluefs" => IoEngine::Bluefs,
                "store" => IoEngine::Store,
                "kstore" => IoEngine::Kstore,
                "image" => IoEngine::Image,
                other if NO_MEANING_ENGINES.contains(&other) => {
                    return Err(invalid(format!(
                        "fio's {other} engine has no meaning for bluepoll, which drives block \
                         devices through its own queue pairs (use dev, or libaio/io_uring/psync \
                         for the same)"
                    )));
                }
                _ => {
                    return Err(invalid(
                        "bluepoll's engines are: dev (queue pairs on the device in filename), \
                         bluefs (files of a BlueFS on the devices in filename), store (objects \
                         of an object store on the devices in filename), kstore (RocksDB \
                         values in directory), image (RBD-style images of an object store on \
                         the devices in filename)"
                            .into(),
                    ));
                }
            }
        }
        // BlueFS has one sync, so fio's fdatasync is the same as its fsync.
        "fsync" | "fdatasync" => spec.fsync = parse_u64(&value).map_err(invalid)?,
        "bluefs_mkfs" => spec.bluefs_mkfs = parse_bool(&value).map_err(invalid)?,
        "bluefs_kind" => {
            spec.bluefs_kind = match value.as_str() {
                "db" => crate::bluefs::FileKind::Db,
                "wal" => crate::bluefs::FileKind::Wal,
                "slow" => crate::bluefs::FileKind::Slow,
                _ => return Err(invalid("expected db, wal or slow".into())),
            }
        }
        "nrfiles" => spec.nrfiles = at_least_one(&value, 1 << 24).map_err(invalid)? as u32,
        "store_config" => spec.store_config = Some(value.clone()),
        "store_mkfs" => spec.store_mkfs = parse_bool(&value).map_err(invalid)?,
        "store_layout" => spec.store_layout = parse_bool(&value).map_err(invalid)?,
        "store_deferred_size" => {
            spec.store_deferred_size = Some(parse_size(&value).map_err(invalid)?)
        }
        "rate_iops" => spec.rate_iops = parse_u64(&value).map_err(invalid)?,
        "directory" => spec.directory = Some(value.clone()),
        "kstore_stripe" => spec.kstore_stripe = at_least_one(&value, 1 << 30).map_err(invalid)?,
        "image_order" => spec.image_order = at_least_one(&value, 26).map_err(invalid)? as u8,
        "image_layout" => spec.image_layout = parse_bool(&value).map_err(invalid)?,
        "direct" => spec.direct = parse_bool(&value).map_err(invalid)?,
        // fio's `buffered` is the opposite of `direct`.
        "buffered" => spec.direct = !parse_bool(&value).map_err(invalid)?,
        "thread" => {}
        "percentile_list" => {
            let mut list = Vec::new();
            for part in value.split(':').filter(|p| !p.is_empty()) {
                let p: f64 = part
                    .parse()
                    .map_err(|_| invalid(format!("'{part}' is not a number")))?;
                if !(p > 0.0 && p <= 100.0) {
                    return Err(invalid(format!("percentile {part} is not in (0, 100]")));
                }
                list.push(p);
            }
            if list.is_empty() {
                return Err(invalid("empty list".into()));
            }
            spec.percentile_list = list;
        }
        "group_reporting" => spec.group_reporting = parse_bool(&value).map_err(invalid)?,
        "randrepeat" => spec.randrepeat = parse_bool(&value).map_err(invalid)?,
        "randseed" => spec.randseed = parse_u64(&value).map_err(invalid)?,
        "norandommap" => spec.norandommap = parse_bool(&value).map_err(invalid)?,
        "verify" => {
            spec.verify = match value.as_str() {
                "0" | "none" => VerifyMode::None,
                "crc32c" | "crc32c-intel" => VerifyMode::Crc32c,
                _ => return Err(invalid("supported: crc32c, none".into())),
            }
        }
        "do_verify" => spec.do_verify = parse_bool(&value).map_err(invalid)?,
        "stonewall" | "wait_for_previous" => {
            spec.stonewall = parse_bool(&value).map_err(invalid)?
        }
        "write_lat_log" => spec.write_lat_log = Some(value.clone()),
        "write_iops_log" => spec.write_iops_log = Some(value.clone()),
        "write_bw_log" => spec.write_bw_log = Some(value.clone()),
        "write_hist_log" => spec.write_hist_log = Some(value.clone()),
        "log_avg_msec" => spec.log_avg_msec = parse_u64(&value).map_err(invalid)?,
        "log_hist_msec" => spec.log_hist_msec = parse_u64(&value).map_err(invalid)?,
        "per_job_logs" => spec.per_job_logs = parse_bool(&value).map_err(invalid)?,
        "log_offset" => spec.log_offset = parse_bool(&value).map_err(invalid)?,
        "log_prio" => spec.log_prio = parse_bool(&value).map_err(invalid)?,
        "log_max_value" => spec.log_max_value = parse_bool(&value).map_err(invalid)?,
        "cpus_allowed" => spec.cpus_allowed = Some(parse_cpu_list(&value).map_err(invalid)?),
        _ => {
            return Err(OptionError::Unknown {
                origin: option.origin.clone(),
                key,
            });
        }
    }
    Ok(())
}

/// How results are printed (fio's `--output-format` list; printed in fio's order: terse, JSON,
/// normal).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputFormat {
    pub normal: bool,
    pub json: bool,
    /// `json+`: the JSON plus each latency's histogram in fio's buckets (`bins`); sets `json`.
    pub json_plus: bool,
    /// `terse` / `--minimal`: fio's semicolon-separated line per job (terse version 3).
    pub terse: bool,
}

impl OutputFormat {
    pub const NORMAL: OutputFormat = OutputFormat {
        normal: true,
        json: false,
        json_plus: false,
        terse: false,
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eta {
    Auto,
    Always,
    Never,
}

/// Options of the whole run rather than of a job.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub output_format: OutputFormat,
    pub output: Option<String>,
    pub cpus: Option<Vec<usize>>,
    pub plot: Option<String>,
    pub eta: Eta,
    /// Write a pattern over a fresh `mem:` device's range before jobs read it, as fio lays out
    /// a new file, so reads measure copying data rather than zero-filling unwritten memory.
    pub layout: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            output_format: OutputFormat::NORMAL,
            output: None,
            cpus: None,
            plot: None,
            eta: Eta::Auto,
            layout: true,
        }
    }
}

/// Applies a run-level option; `Ok(false)` if `key` is not one.
fn apply_run_option(
    run: &mut RunOptions,
    key: &str,
    value: Option<&str>,
) -> Result<bool, OptionError> {
    let origin = Origin::CommandLine;
    let need = |v: Option<&str>| {
        v.map(str::to_string)
            .ok_or_else(|| OptionError::MissingValue {
                origin: origin.clone(),
                key: key.to_string(),
            })
    };
    let invalid = |value: &str, reason: &str| OptionError::Invalid {
        origin: origin.clone(),
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    match key {
        "output_format" => {
            let v = need(value)?;
            let mut format = OutputFormat::default();
            for part in v.split(',') {
                match part.trim() {
                    "normal" => format.normal = true,
                    "json" => format.json = true,
                    "json+" => {
                        format.json = true;
                        format.json_plus = true;
                    }
                    // fio's other names for terse.
                    "terse" | "minimal" | "csv" => format.terse = true,
                    _ => {
                        return Err(invalid(
                            &v,
                            "supported: normal, json, json+, terse (comma-separated)",
                        ));
                    }
                }
            }
            run.output_format = format;
        }
        // fio's flags: --minimal prints the terse line alone, --append-terse adds it.
        "minimal" | "append_terse" => {
            if let Some(v) = value {
                return Err(invalid(v, "takes no value"));
            }
            if key == "minimal" {
                run.output_format = OutputFormat {
                    terse: true,
                    ..OutputFormat::default()
                };
            } else {
                run.output_format.terse = true;
            }
        }
        "terse_version" => {
            let v = need(value)?;
            // Versions 2, 4 and 5 differ in fields (trim, bw/iops samples, no fio version);
            // tools written for fio's default read version 3.
            if v.trim() != "3" {
                return Err(invalid(&v, "only terse version 3 is supported"));
            }
        }
        "output" => run.output = Some(need(value)?),
        "cpus" => {
            let v = need(value)?;
            run.cpus = Some(parse_cpu_list(&v).map_err(|e| invalid(&v, &e))?);
        }
        "plot" => run.plot = Some(need(value)?),
        "eta" => {
            let v = need(value)?;
            run.eta = match v.as_str() {
                "auto" => Eta::Auto,
                "always" => Eta::Always,
                "never" => Eta::Never,
                _ => return Err(invalid(&v, "expected auto, always or never")),
            };
        }
        "layout" => {
            let v = value.unwrap_or("1");
            run.layout = parse_bool(v).map_err(|e| invalid(v, &e))?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Everything `bluepoll bench` was asked to do.
#[derive(Debug)]
pub struct Invocation {
    pub run: RunOptions,
    pub jobs: Vec<JobSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error(transparent)]
    JobFile(#[from] super::jobfile::JobFileError),
    #[error("cannot read job file '{path}': {source}")]
    ReadJobFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Parses `bluepoll bench` arguments: job file paths and `--key[=value]` options.
pub fn parse_invocation(args: &[String]) -> Result<Invocation, InvocationError> {
    let mut run = RunOptions::default();
    let mut files: Vec<RawJob> = Vec::new();
    let mut cli_globals: Vec<RawOption> = Vec::new();
    let mut cli_jobs: Vec<RawJob> = Vec::new();
    for arg in args {
        let Some(option) = arg.strip_prefix("--") else {
            let text =
                std::fs::read_to_string(arg).map_err(|source| InvocationError::ReadJobFile {
                    path: arg.clone(),
                    source,
                })?;
            files.extend(super::jobfile::parse(arg, &text)?);
            continue;
        };
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (normalise(k), Some(v)),
            None => (normalise(option), None),
        };
        if apply_run_option(&mut run, &key, value)? {
            continue;
        }
        let raw = RawOption {
            key: key.clone(),
            value: value.map(str::to_string),
            origin: Origin::CommandLine,
        };
        if key == "name" {
            let name = value
                .filter(|v| !v.is_empty())
                .ok_or(OptionError::MissingValue {
                    origin: Origin::CommandLine,
                    key: key.clone(),
                })?;
            cli_jobs.push(RawJob {
                name: name.to_string(),
                globals: Vec::new(),
                options: Vec::new(),
            });
            continue;
        }
        match cli_jobs.last_mut() {
            Some(job) => job.options.push(raw),
            None => cli_globals.push(raw),
        }
    }
    if files.is_empty() && cli_jobs.is_empty() {
        files = super::jobfile::parse("bench/jobs/quick.fio", DEFAULT_JOB)?;
        for job in &mut files {
            for option in job.globals.iter_mut().chain(job.options.iter_mut()) {
                option.origin = Origin::Default;
            }
        }
    }
    let mut jobs = Vec::new();
    for raw in &files {
        jobs.push(resolve(raw, &raw.globals, &raw.options, &cli_globals)?);
    }
    for raw in &cli_jobs {
        jobs.push(resolve(raw, &cli_globals, &raw.options, &[])?);
    }
    Ok(Invocation { run, jobs })
}

pub(crate) fn resolve(
    raw: &RawJob,
    globals: &[RawOption],
    own: &[RawOption],
    overrides: &[RawOption],
) -> Result<JobSpec, OptionError> {
    let mut spec = JobSpec::new(&raw.name);
    // A value the command line overrides is not even checked: a job file written for fio
    // (`ioengine=libaio`, a path for filename) runs when the command line says what to use.
    let overridden = |o: &RawOption| {
        overrides
            .iter()
            .any(|c| normalise(&c.key) == normalise(&o.key))
    };
    for option in globals.iter().chain(own).filter(|o| !overridden(o)) {
        apply(&mut spec, option)?;
    }
    for option in overrides {
        apply(&mut spec, option)?;
    }
    let text = |o: &RawOption| {
        (
            normalise(&o.key),
            o.value.clone().unwrap_or_else(|| "1".into()),
        )
    };
    spec.job_options = own.iter().map(text).collect();
    spec.global_options = globals.iter().chain(overrides).map(text).collect();
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_default_job_is_used_when_nothing_is_given() {
        let inv = parse_invocation(&[]).unwrap();
        assert_eq!(inv.jobs.len(), 1);
        assert_eq!(inv.jobs[0].name, "quick");
        assert_eq!(inv.jobs[0].rw, RwMode::RandRead);
        assert!(inv.jobs[0].time_based);
    }

    #[test]
    fn command_line_overrides_the_job_file() {
        let inv = parse_invocation(&args(&[
            "--runtime=2",
            "--filename=null:1G",
            "--output-format=json",
        ]))
        .unwrap();
        assert_eq!(inv.jobs[0].runtime, Some(Duration::from_secs(2)));
        assert_eq!(inv.jobs[0].filename.as_deref(), Some("null:1G"));
        assert_eq!(
            inv.run.output_format,
            OutputFormat {
                json: true,
                ..OutputFormat::default()
            }
        );
    }

    /// A job file written for fio's kernel engines runs as is on a bluepoll device given on the
    /// command line: its `ioengine` means "this device", and its `filename` (a path here) is
    /// not even checked when the command line overrides it.
    #[test]
    fn a_job_file_for_fios_kernel_engines_runs_with_the_device_on_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fio.job");
        std::fs::write(
            &path,
            "[global]\nioengine=libaio\ndirect=1\nfilename=\n[a]\nrw=randread\n\
             [b]\nioengine=psync\nrw=write\n",
        )
        .unwrap();
        let file = path.display().to_string();
        let inv = parse_invocation(&args(&[&file, "--filename=mem:64M"])).unwrap();
        assert_eq!(inv.jobs.len(), 2);
        for job in &inv.jobs {
            assert_eq!(job.ioengine, IoEngine::Dev, "{}", job.name);
            assert_eq!(job.filename.as_deref(), Some("mem:64M"));
        }
        // Without the override, the file's empty filename is an error naming the option.
        let e = parse_invocation(&args(&[&file])).unwrap_err().to_string();
        assert!(e.contains("filename"), "{e}");
        // Engines that drive no block device are refused by name.
        for engine in ["rdma", "net", "http", "sg"] {
            let e = parse_invocation(&args(&[&format!("--ioengine={engine}")]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("fio's {engine} engine")), "{e}");
        }
    }

    #[test]
    fn named_jobs_on_the_command_line() {
        let inv = parse_invocation(&args(&[
            "--bs=8k",
            "--name=w",
            "--rw=randwrite",
            "--name=r",
            "--rw=read",
            "--stonewall",
            "--iodepth=4",
        ]))
        .unwrap();
        assert_eq!(inv.jobs.len(), 2);
        assert_eq!(
            (inv.jobs[0].name.as_str(), inv.jobs[0].rw, inv.jobs[0].bs),
            ("w", RwMode::RandWrite, 8192)
        );
        assert_eq!(
            (inv.jobs[1].rw, inv.jobs[1].iodepth, inv.jobs[1].stonewall),
            (RwMode::Read, 4, true)
        );
    }

    #[test]
    fn bad_options_are_named() {
        let e = parse_invocation(&args(&["--bs=4q"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "command line: invalid value '4q' for option 'bs': unknown unit 'q' in '4q' (use k, m, g, t or p)"
        );
        let e = parse_invocation(&args(&["--iodepth=0"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid value '0' for option 'iodepth': must be at least 1"),
            "{e}"
        );
        let e = parse_invocation(&args(&["--frobnicate=1"]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "command line: unknown option 'frobnicate'");
        let e = parse_invocation(&args(&["/no/such/job.fio"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read job file '/no/such/job.fio'"),
            "{e}"
        );
        let e = parse_invocation(&args(&["--rw=sideways"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("option 'rw'"), "{e}");
        let e = parse_invocation(&args(&["--name"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a value"), "{e}");
        let e = parse_invocation(&args(&["--output-format=xml"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("output_format"), "{e}");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0-3,2,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }
}
