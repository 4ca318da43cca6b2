//! The fio options the harness understands, and how job files and the command line combine.
//!
//! Precedence, lowest first: built-in defaults; a job file's `[global]` options; the job
//! section's own options; options on the command line before any `--name`; for jobs started on
//! the command line with `--name`, the options after it. Unlike fio — where a job file's values
//! beat the command line — a command-line option here overrides the job file, so a job file can
//! be pointed at another device or shortened without editing it.

use std::time::Duration;

use super::jobfile::{Origin, RawJob, RawOption};
use super::verify::Digest;
use bluepoll_base::units::{parse_duration, parse_size};

/// fio's default `percentile_list`.
pub const DEFAULT_PERCENTILES: [f64; 17] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95,
    99.99,
];

/// The embedded default job, used when neither a job file nor `--name` is given.
pub const DEFAULT_JOB: &str = include_str!("../../../bench/jobs/quick.fio");

/// fio's `rw` (`readwrite`): the directions a job issues and whether its offsets are sequential
/// or random.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwMode {
    /// `read`: sequential reads.
    Read,
    /// `write`: sequential writes.
    Write,
    /// `trim`: sequential trims (deallocations).
    Trim,
    /// `randread`: reads at random offsets.
    RandRead,
    /// `randwrite`: writes at random offsets.
    RandWrite,
    /// `randtrim`: trims at random offsets.
    RandTrim,
    /// Sequential mix (`rw`, `readwrite`).
    ReadWrite,
    /// `randrw`: reads and writes at random offsets, mixed by `rwmixread`.
    RandRw,
    /// Each block trimmed, then written (fio's `trimwrite`; `randtrimwrite` at random offsets).
    TrimWrite,
    /// `randtrimwrite`: as [`TrimWrite`](Self::TrimWrite), at random offsets.
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

    /// The mode's name as fio writes it (`rw` for the sequential mix, not `readwrite`).
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

    /// Whether offsets are drawn at random (the `rand*` modes).
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

    /// Whether the job issues reads.
    pub fn reads(self) -> bool {
        matches!(
            self,
            RwMode::Read | RwMode::RandRead | RwMode::ReadWrite | RwMode::RandRw
        )
    }

    /// Whether the job issues writes (the trim-then-write modes included).
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

    /// For the engines that only read and write (trims are refused before they run): 0 (read)
    /// when the job only reads, 1 (write) when it only writes, else drawn by `rwmixread`.
    pub fn read_or_write(self, rwmixread: u32, rng: &mut bluepoll_base::rand::Rng) -> usize {
        match (self.reads(), self.writes()) {
            (true, false) => 0,
            (false, _) => 1,
            (true, true) => usize::from(rng.below(100) >= rwmixread as u64),
        }
    }

    /// Whether the job issues trims (the trim-then-write modes included).
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
    /// reactors (`store_engine`, built with the `store` feature).
    #[cfg_attr(feature = "store", doc = "\nSee [`super::store_engine`].")]
    Store,
    /// The baseline: object data as RocksDB values on the kernel filesystem in `directory`
    /// (`kstore_engine`, built with the `store` feature).
    #[cfg_attr(feature = "store", doc = "\nSee [`super::kstore_engine`].")]
    Kstore,
    /// RBD-style images on an object store made on the devices named by `filename`, one
    /// thread per job clone (`image_engine`, built with the `store` feature).
    #[cfg_attr(feature = "store", doc = "\nSee [`super::image_engine`].")]
    Image,
}

impl IoEngine {
    /// The engine's name as `ioengine=` takes it.
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

/// fio's `verify`: what write jobs put in each block and how reads check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyMode {
    /// `verify=0` / `none` (the default): nothing is written for checking, nothing checked.
    None,
    /// bluepoll's verify header (docs/format.md): a crc32c of the block (fio's `crc32c`,
    /// `crc32c-intel`, and `meta`, fio's header-only check, which this header more than covers),
    /// plus, for fio's other names, a digest of the payload.
    Header(super::verify::Digest),
    /// `verify=pattern`: units hold `verify_pattern` repeated, and reads must find exactly it.
    Pattern,
}

impl VerifyMode {
    /// The mode's name as fio's `verify=` spells it (`crc32c` for fio's `crc32c-intel` and
    /// `meta` too).
    pub fn name(self) -> &'static str {
        match self {
            VerifyMode::None => "none",
            VerifyMode::Header(d) => d.name(),
            VerifyMode::Pattern => "pattern",
        }
    }
}

/// How one direction's block sizes are chosen (`bs`, `bsrange`, `bssplit`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockSizes {
    /// Every I/O is this many bytes (`bs`).
    Fixed(u64),
    /// Uniform between the two, inclusive.
    Range(u64, u64),
    /// (size, weight in percent).
    Split(Vec<(u64, u32)>),
}

impl BlockSizes {
    fn min(&self) -> u64 {
        match self {
            BlockSizes::Fixed(b) => *b,
            BlockSizes::Range(lo, _) => *lo,
            BlockSizes::Split(parts) => parts.iter().map(|p| p.0).min().unwrap_or(4096),
        }
    }

    fn max(&self) -> u64 {
        match self {
            BlockSizes::Fixed(b) => *b,
            BlockSizes::Range(_, hi) => *hi,
            BlockSizes::Split(parts) => parts.iter().map(|p| p.0).max().unwrap_or(4096),
        }
    }
}

/// fio's `random_distribution`.
#[derive(Clone, Debug, PartialEq)]
pub enum Distribution {
    /// `random`: uniform over the range (the default).
    Random,
    /// `zipf:THETA`: a Zipf distribution with exponent theta (above 0, not 1).
    Zipf(f64),
    /// `pareto:POWER`: a Pareto distribution with power h (between 0 and 1).
    Pareto(f64),
    /// Deviation in percent of the range.
    Normal(f64),
    /// (percent of accesses, percent of the range).
    Zoned(Vec<(u32, f64)>),
    /// (percent of accesses, bytes).
    ZonedAbs(Vec<(u32, u64)>),
}

/// `rw_sequencer`: what the `:N` of a random `rw` does between fresh offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sequencer {
    /// `sequential` (the default): the I/Os between fresh random offsets follow on from the
    /// previous one.
    Sequential,
    /// `identical`: the I/Os between fresh random offsets repeat the same offset.
    Identical,
}

/// Which of SPDK's fio plugins a job file names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpdkPlugin {
    /// `ioengine=spdk`: `filename` is an SPDK transport ID of an NVMe namespace.
    Nvme,
    /// `ioengine=spdk_bdev`: `filename` names a bdev defined in `spdk_json_conf`.
    Bdev,
}

/// fio's steady-state criterion (`ss=iops:10%`, `ss=bw_slope:0.1%`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SteadyState {
    /// Bandwidth (bytes/s) rather than IOPS.
    pub bandwidth: bool,
    /// The least-squares slope of the window rather than each sample's distance from the mean.
    pub slope: bool,
    /// The allowed deviation (or slope): IOPS or bytes/s, or, with
    /// [`percent`](Self::percent), a percentage of the window's mean.
    pub limit: f64,
    /// The limit is a percentage of the window's mean.
    pub percent: bool,
}

/// `rate_process`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateProcess {
    /// `linear` (the default): rate-capped I/Os are evenly spaced.
    Linear,
    /// `poisson`: gaps between I/Os are drawn from an exponential distribution with the same
    /// mean, as arrivals of a Poisson process.
    Poisson,
}

/// `exit_what`: which jobs an `exitall` job's end stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitWhat {
    /// `group` (the default): the other jobs of the `exitall` job's group stop.
    Group,
    /// `stonewall`: fio stops the running jobs of every group and goes on with the next
    /// stonewalled group; groups here run one at a time, so this is the same as `group`.
    Stonewall,
    /// `all`: the group stops and later groups do not start.
    All,
}

/// `continue_on_error`: which errors do not end a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ContinueOn {
    /// Failed reads are counted and the job goes on (`read`, `io`, `all`).
    pub read: bool,
    /// Failed writes are counted and the job goes on (`write`, `io`, `all`).
    pub write: bool,
    /// Blocks that fail verification are counted and the job goes on (`verify`, `all`).
    pub verify: bool,
}

/// One job, fully resolved.
///
/// Each field comes from the fio option of the same name unless its doc says otherwise; units
/// are those of fio's HOWTO (sizes in bytes, with fio's `k`/`m`/`g` suffixes when parsed). The
/// defaults are fio's, set by [`JobSpec::default_for`].
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// `name` (the job file's section name, or `--name=`): names the job in reports and log
    /// files, and what `wait_for` refers to.
    pub name: String,
    /// `rw` / `readwrite`: the I/O pattern — direction(s), and sequential or random offsets.
    pub rw: RwMode,
    /// `:N` after `rw`: bytes added between sequential I/Os (negative: backwards), or I/Os per
    /// random offset.
    pub rw_modifier: i64,
    /// `rw_sequencer`: what the I/Os between two fresh random offsets do when `rw` has a `:N`
    /// (`sequential`, the default: follow on; `identical`: repeat the same offset).
    pub rw_sequencer: Sequencer,
    /// The smallest block size of the job (the only one for engines other than dev).
    pub bs: u64,
    /// Block sizes per direction (read, write, trim), from `bs`, `bsrange` or `bssplit`.
    pub block_sizes: [BlockSizes; 3],
    /// `blockalign`: random offsets are multiples of this (default: the smallest block size).
    pub blockalign: Option<u64>,
    /// `random_distribution`: how random offsets are spread over the range (default `random`:
    /// uniform).
    pub random_distribution: Distribution,
    /// `percentage_random`: share of a random job's I/Os at random offsets (the rest sequential).
    pub percentage_random: u32,
    /// `size=N%`: the job's range as a percentage of the device (or file), resolved when it is
    /// open; replaces [`size`](Self::size) when set.
    pub size_percent: Option<f64>,
    /// `offset=N%`: the start of the job's range as a percentage of the device (replaces
    /// [`offset`](Self::offset) when set).
    pub offset_percent: Option<f64>,
    /// `offset_increment`: bytes added to `offset` per clone — clone k of `numjobs` starts
    /// `offset + k × offset_increment`.
    pub offset_increment: u64,
    /// `offset_increment=N%`: the increment as a percentage of the device.
    pub offset_increment_percent: Option<f64>,
    /// `filesize=LO[-HI]`: the job's range when given (fio's per-file size).
    pub filesize: Option<(u64, u64)>,
    /// `io_size`: bytes of I/O before the job ends (default: the range, times `loops`).
    pub io_size: Option<u64>,
    /// `number_ios`: I/Os before the job ends (0: no limit).
    pub number_ios: u64,
    /// `loops`: how many times the job goes over its range (default 1).
    pub loops: u32,
    /// `startdelay=LO[-HI]`: how long after its group begins the job starts (seconds by
    /// default); with a range, each clone draws a delay within it. Runtime counts from then.
    pub startdelay: (Duration, Duration),
    /// `rate`: bandwidth cap in bytes per second, per direction (read, write, trim); 0 = no cap.
    pub rate: [u64; 3],
    /// `rate_min` / `ratemin`: the least bandwidth in bytes per second, per direction; a
    /// direction below it over a `rate_cycle` ends the job with an error. 0 = no minimum.
    pub rate_min: [u64; 3],
    /// `rate_iops`: cap in I/Os per second, per direction (read, write, trim); 0 = no cap.
    pub rate_iops_dirs: [u64; 3],
    /// `rate_iops_min`: the least I/Os per second, per direction, checked like `rate_min`.
    pub rate_iops_min: [u64; 3],
    /// `rate_process`: how rate-capped I/Os are spaced (`linear`: evenly; `poisson`:
    /// exponential gaps with the same mean).
    pub rate_process: RateProcess,
    /// `rate_cycle`: the window over which `rate_min` and `rate_iops_min` are checked
    /// (milliseconds by default; default 1 s).
    pub rate_cycle: Duration,
    /// `thinktime`: after every `thinktime_blocks` I/Os the job waits for what it has in
    /// flight, then issues nothing for this long (µs by default; 0 = never).
    pub thinktime: Duration,
    /// `thinktime_spin`: of each think, how long fio busy-spins rather than sleeps (µs by
    /// default). Parsed but without effect: a polling reactor always spins.
    pub thinktime_spin: Duration,
    /// `thinktime_blocks`: I/Os between thinks (default 1).
    pub thinktime_blocks: u64,
    /// `thinktime_blocks_type=issue`: count `thinktime_blocks` as I/Os are issued rather than
    /// as they complete (`complete`, the default).
    pub thinktime_issue: bool,
    /// `thinktime_iotime`: also think after each stretch of this much I/O time (seconds by
    /// default; 0 = off).
    pub thinktime_iotime: Duration,
    /// `new_group`: fio starts a new reporting group at this job. Parsed but without effect:
    /// groups here are split by `stonewall` only.
    pub new_group: bool,
    /// `wait_for`: the name of a job of the same group that must finish before this one starts.
    pub wait_for: Option<String>,
    /// `exitall`: when this job ends, the jobs `exit_what` names stop too.
    pub exitall: bool,
    /// `exit_what`: which jobs an `exitall` job's end stops (default `group`).
    pub exit_what: ExitWhat,
    /// `flow`: the job's weight in fio's token-based flow control among the jobs of its
    /// `flow_id` (its magnitude is used; 0 = no flow control).
    pub flow: i64,
    /// `flow_id`: the flow-control group the job belongs to (default 0).
    pub flow_id: u32,
    /// `flow_sleep`: how long fio sleeps when flow control holds a job back (µs by default).
    /// Parsed but unused: a held-back job here simply issues nothing until its share allows.
    pub flow_sleep: Duration,
    /// `zonemode=strided`: (`zonesize`, `zonerange`, `zoneskip`) once the job is resolved;
    /// `None` for `zonemode=none`.
    pub zonemode_strided: Option<(u64, u64, u64)>,
    /// `zonesize`: with `zonemode=strided`, bytes of I/O done in a zone before moving on.
    pub zonesize: u64,
    /// `zonerange`: with `zonemode=strided`, the size of one zone (the distance between zone
    /// starts, before `zoneskip`).
    pub zonerange: u64,
    /// `zoneskip`: with `zonemode=strided`, bytes skipped after each zone.
    pub zoneskip: u64,
    /// `continue_on_error`: which kinds of error are counted without ending the job.
    pub continue_on_error: ContinueOn,
    /// `verify_fatal`: end the job at the first block that fails verification.
    pub verify_fatal: bool,
    /// `verify_backlog`: after this many writes, read back and check them before writing more
    /// (0 = no such checks; the verify pass after the writes comes either way with
    /// `do_verify`).
    pub verify_backlog: u64,
    /// `verify_interval`: bytes per verify header (default: the whole I/O).
    pub verify_interval: Option<u64>,
    /// `verify_only`: read and check what an earlier run wrote, writing nothing.
    pub verify_only: bool,
    /// `verify_pattern`: the bytes `verify=pattern` writes and expects.
    pub verify_pattern: Option<Vec<u8>>,
    /// `read_iolog`: path of an fio I/O log ([`crate::iolog`]) whose I/Os the job replays
    /// instead of generating its own.
    pub read_iolog: Option<String>,
    /// `write_iolog`: path where the job records every I/O it issues as an fio I/O log.
    pub write_iolog: Option<String>,
    /// `ioengine=null`: the job runs on a `null:` device of its size, as fio's null engine.
    pub null_engine: bool,
    /// SPDK's fio plugins: `ioengine=spdk` (filename is an SPDK transport ID) or `spdk_bdev`
    /// (filename names a bdev of `spdk_json_conf`); resolved to bluepoll devices
    /// ([`super::spdk_plugin`]).
    pub spdk_plugin: Option<SpdkPlugin>,
    /// `spdk_json_conf`: the SPDK JSON config that defines the bdev an `ioengine=spdk_bdev`
    /// job's `filename` names.
    pub spdk_json_conf: Option<String>,
    /// `latency_target` (with `latency_window`, `latency_percentile`): find the deepest queue
    /// that keeps the percentile of completions under the target.
    pub latency_target: Option<Duration>,
    /// `latency_window`: how long the job runs at one queue depth before `latency_target`
    /// judges it (µs by default).
    pub latency_window: Duration,
    /// `latency_percentile`: the percentage of a window's completions that must be within
    /// `latency_target` (default 100).
    pub latency_percentile: f64,
    /// Options accepted that cannot change what a bluepoll device measures (named in reports).
    pub ignored_options: Vec<String>,
    /// `ss`, `ss_dur`, `ss_ramp`: end the job once its one-second IOPS or bandwidth samples over
    /// `ss_dur` meet the criterion.
    pub steady_state: Option<SteadyState>,
    /// `ss_dur` / `steadystate_duration`: the rolling window of samples the steady-state
    /// criterion is judged over (seconds by default).
    pub ss_dur: Duration,
    /// `ss_ramp` / `steadystate_ramp_time`: time before steady-state samples are taken
    /// (seconds by default).
    pub ss_ramp: Duration,
    /// `end_fsync` / `fsync_on_close`: one Flush when the job's writes are done.
    pub end_fsync: bool,
    /// `iodepth`: I/Os the job keeps in flight (default 1; BlueFS jobs always have one).
    pub iodepth: u32,
    /// Commands queued before the doorbell is rung (fio's `iodepth_batch_submit`; 1 = each as
    /// soon as it is ready, as fio does by default; 0 = a whole `iodepth` at a time).
    pub iodepth_batch_submit: u32,
    /// `numjobs`: how many clones of the job run (default 1).
    pub numjobs: u32,
    /// Bytes of the device the job covers from `offset`; `None` = to the end of the device.
    pub size: Option<u64>,
    /// `offset`: the byte where the job's range starts on the device (default 0).
    pub offset: u64,
    /// `runtime` (or fio's older `timeout`): the most the job runs after `ramp_time`; `None`
    /// (or 0) = no time limit.
    pub runtime: Option<Duration>,
    /// `time_based`: run for all of `runtime`, going over the range again as often as needed,
    /// rather than ending after `size` bytes.
    pub time_based: bool,
    /// `ramp_time`: how long the job runs before its statistics start (seconds by default).
    pub ramp_time: Duration,
    /// `rwmixread` (or `100 - rwmixwrite`): percentage of a mixed job's I/Os that are reads
    /// (default 50).
    pub rwmixread: u32,
    /// `filename`: the device URI or path the job works on (the engine's devices for
    /// `bluefs`, `store` and `image`); `None` = the shared default RAM device, or, with
    /// `directory`, a file there named as fio names it.
    pub filename: Option<String>,
    /// `ioengine`: the layer the job drives (fio's kernel engines map to [`IoEngine::Dev`]).
    pub ioengine: IoEngine,
    /// fio's `fsync=N` / `fdatasync=N`: sync the file after every N writes; 0 = never.
    pub fsync: u64,
    /// `bluefs_mkfs`: make a new BlueFS on the `filename` devices before the run (default on).
    pub bluefs_mkfs: bool,
    /// `bluefs_kind=db|wal|slow`: what kind of BlueFS file the job works on, hence where its
    /// data goes — `wal` names it like a RocksDB WAL (`*.log`: the WAL device, with the log).
    pub bluefs_kind: bluepoll_bluefs::FileKind,
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
    /// fio's `rate_iops`, the largest of its per-direction values: at most this many I/Os per
    /// second per job, the cap ioengine=store applies (0: no cap; ioengine=dev uses
    /// [`rate_iops_dirs`](Self::rate_iops_dirs)).
    pub rate_iops: u64,
    /// fio's `directory`: where ioengine=kstore keeps its RocksDB.
    pub directory: Option<String>,
    /// `kstore_stripe`: bytes per data key of ioengine=kstore (Ceph KStore's default 64 KiB).
    pub kstore_stripe: u64,
    /// `image_order`: ioengine=image's objects are 2^order bytes (22: 4 MiB, rbd's default).
    pub image_order: u8,
    /// `image_layout`: whether ioengine=image writes each image in full before the run.
    pub image_layout: bool,
    /// `direct` (or the opposite of `buffered`): non-buffered I/O (default on). bluepoll
    /// devices are always direct; this picks how a path in `filename` is opened, and whether
    /// a BlueFS write is flushed to the device each time.
    pub direct: bool,
    /// `percentile_list`: the completion-latency percentiles reported (default fio's 17,
    /// [`DEFAULT_PERCENTILES`]).
    pub percentile_list: Vec<f64>,
    /// `group_reporting`: report each group's jobs merged into one entry.
    pub group_reporting: bool,
    /// `randrepeat`: seed the random generators from `randseed`, so runs repeat (default on;
    /// off: seeded from the clock).
    pub randrepeat: bool,
    /// `randseed`: the seed random offsets and sizes are drawn from (default 0x89).
    pub randseed: u64,
    /// `norandommap`: draw random offsets uniformly instead of touching every block once per
    /// pass.
    pub norandommap: bool,
    /// `verify`: what write jobs put in their blocks and read jobs check (default none).
    pub verify: VerifyMode,
    /// `do_verify`: a write job with `verify` reads back what it wrote once its writes are
    /// done (default on).
    pub do_verify: bool,
    /// `stonewall` / `wait_for_previous`: the job starts a new group, which runs once the
    /// jobs before it have finished.
    pub stonewall: bool,
    /// `write_lat_log`: the prefix of the job's latency log files (`PREFIX_lat.N.log`,
    /// `_clat`, `_slat`; [`crate::latlog`]). As for each log option, empty = the job's name
    /// (fio writes `JOBNAME_bw.N.log` when the option has no value).
    pub write_lat_log: Option<String>,
    /// `write_iops_log`: the prefix of the job's IOPS log files (empty = the job's name).
    pub write_iops_log: Option<String>,
    /// `write_bw_log`: the prefix of the job's bandwidth log files (empty = the job's name).
    pub write_bw_log: Option<String>,
    /// `write_hist_log`: the prefix of the job's clat histogram log files (empty = the job's
    /// name).
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
        let averaged_logs = self.write_lat_log.is_some()
            || self.write_iops_log.is_some()
            || self.write_bw_log.is_some();
        (self.log_avg_msec == 0 && averaged_logs)
            || (self.write_hist_log.is_some() && self.log_hist_msec > 0)
    }

    /// Bytes per verify header in an I/O of `len` bytes (`verify_interval`, at least a header).
    pub fn verify_unit(&self, len: u64) -> u64 {
        self.verify_interval
            .unwrap_or(len)
            .clamp(super::verify::HEADER_LEN as u64, len.max(1))
    }

    /// The smallest I/O size of the directions the job uses (`bs` when it uses none).
    pub fn min_bs(&self) -> u64 {
        self.used_dirs()
            .map(|d| self.block_sizes[d].min())
            .min()
            .unwrap_or(self.bs)
    }

    /// The largest I/O size of the directions the job uses (`bs` when it uses none).
    pub fn max_bs(&self) -> u64 {
        self.used_dirs()
            .map(|d| self.block_sizes[d].max())
            .max()
            .unwrap_or(self.bs)
    }

    /// Whether every I/O of the job has the same size.
    pub fn fixed_bs(&self) -> bool {
        self.used_dirs()
            .all(|d| matches!(self.block_sizes[d], BlockSizes::Fixed(b) if b == self.bs))
    }

    fn used_dirs(&self) -> impl Iterator<Item = usize> + '_ {
        [self.rw.reads(), self.rw.writes(), self.rw.trims()]
            .into_iter()
            .enumerate()
            .filter(|(_, used)| *used)
            .map(|(d, _)| d)
    }

    /// Whether any rate cap is in force: bytes/s from `rate`, or I/Os per second from
    /// `rate_iops`, in any direction.
    pub fn rate_limited(&self) -> bool {
        self.rate.iter().chain(&self.rate_iops_dirs).any(|&r| r > 0)
    }

    /// A job with nothing but defaults (to tell which options a job changed).
    pub fn default_for(name: &str) -> JobSpec {
        JobSpec::new(name)
    }

    fn new(name: &str) -> JobSpec {
        JobSpec {
            name: name.to_string(),
            rw: RwMode::Read,
            rw_modifier: 0,
            rw_sequencer: Sequencer::Sequential,
            bs: 4096,
            block_sizes: [
                BlockSizes::Fixed(4096),
                BlockSizes::Fixed(4096),
                BlockSizes::Fixed(4096),
            ],
            blockalign: None,
            random_distribution: Distribution::Random,
            percentage_random: 100,
            size_percent: None,
            offset_percent: None,
            offset_increment: 0,
            offset_increment_percent: None,
            filesize: None,
            io_size: None,
            number_ios: 0,
            loops: 1,
            startdelay: (Duration::ZERO, Duration::ZERO),
            rate: [0; 3],
            rate_min: [0; 3],
            rate_iops_dirs: [0; 3],
            rate_iops_min: [0; 3],
            rate_process: RateProcess::Linear,
            rate_cycle: Duration::from_secs(1),
            thinktime: Duration::ZERO,
            thinktime_spin: Duration::ZERO,
            thinktime_blocks: 1,
            thinktime_issue: false,
            thinktime_iotime: Duration::ZERO,
            new_group: false,
            wait_for: None,
            exitall: false,
            exit_what: ExitWhat::Group,
            flow: 0,
            flow_id: 0,
            flow_sleep: Duration::ZERO,
            zonemode_strided: None,
            zonesize: 0,
            zonerange: 0,
            zoneskip: 0,
            continue_on_error: ContinueOn::default(),
            verify_fatal: false,
            verify_backlog: 0,
            verify_interval: None,
            verify_only: false,
            verify_pattern: None,
            read_iolog: None,
            write_iolog: None,
            null_engine: false,
            spdk_plugin: None,
            spdk_json_conf: None,
            latency_target: None,
            latency_window: Duration::ZERO,
            latency_percentile: 100.0,
            ignored_options: Vec::new(),
            end_fsync: false,
            steady_state: None,
            ss_dur: Duration::ZERO,
            ss_ramp: Duration::ZERO,
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
            bluefs_kind: bluepoll_bluefs::FileKind::Db,
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
    /// No option of that name, neither fio's nor bluepoll's.
    #[error("{origin}: unknown option '{key}'")]
    Unknown {
        /// Where the option was written.
        origin: Origin,
        /// The option's name, normalised (no leading dashes, `-` as `_`, lower case).
        key: String,
    },
    /// The option exists but its value does not parse or is out of range.
    #[error("{origin}: invalid value '{value}' for option '{key}': {reason}")]
    Invalid {
        /// Where the option was written.
        origin: Origin,
        /// The option's name, normalised.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong with it, and what is accepted.
        reason: String,
    },
    /// An option that takes a value was given without one.
    #[error("{origin}: option '{key}' needs a value")]
    MissingValue {
        /// Where the option was written.
        origin: Origin,
        /// The option's name, normalised.
        key: String,
    },
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

/// Options of fio that are accepted but cannot change what a bluepoll device measures, with why.
/// They are named in the report header and in the JSON (`"ignored_options"`), and listed in
/// docs/bench.md.
pub const IGNORED_OPTIONS: &[(&str, &str)] = &[
    (
        "invalidate",
        "page-cache invalidation: bluepoll never goes through the page cache",
    ),
    ("fadvise_hint", "page-cache advice"),
    ("allow_mounted_write", "a kernel-filesystem safety check"),
    (
        "allow_file_create",
        "files are not created on bluepoll devices",
    ),
    (
        "create_on_open",
        "files are not created on bluepoll devices",
    ),
    (
        "create_serialize",
        "files are not created on bluepoll devices",
    ),
    ("create_fsync", "files are not created on bluepoll devices"),
    ("fallocate", "files are not created on bluepoll devices"),
    ("pre_read", "page-cache warm-up"),
    ("unlink", "files are not created on bluepoll devices"),
    (
        "unlink_each_loop",
        "files are not created on bluepoll devices",
    ),
    ("overwrite", "a device has no holes to fill first"),
    ("file_service_type", "each job drives one device"),
    (
        "io_submit_mode",
        "the reactor submits to the queue pair either way",
    ),
    ("iodepth_low", "the reactor refills every poll"),
    (
        "iodepth_batch_complete_min",
        "the reactor reaps every completion each poll",
    ),
    (
        "iodepth_batch_complete_max",
        "the reactor reaps every completion each poll",
    ),
    ("iomem", "buffers come from the queue pair's DMA pool"),
    ("mem", "buffers come from the queue pair's DMA pool"),
    ("iomem_align", "DMA buffers are page-aligned"),
    ("mem_align", "DMA buffers are page-aligned"),
    ("nice", "CPU scheduling of a kernel thread"),
    (
        "prio",
        "kernel I/O priority: a queue pair has no priority classes",
    ),
    (
        "prioclass",
        "kernel I/O priority: a queue pair has no priority classes",
    ),
    (
        "cmdprio",
        "kernel I/O priority: a queue pair has no priority classes",
    ),
    (
        "cmdprio_class",
        "kernel I/O priority: a queue pair has no priority classes",
    ),
    (
        "cmdprio_percentage",
        "kernel I/O priority: a queue pair has no priority classes",
    ),
    (
        "cmdprio_bssplit",
        "kernel I/O priority: a queue pair has no priority classes",
    ),
    (
        "cmdprio_hint",
        "kernel I/O priority: a queue pair has no priority classes",
    ),
    (
        "ioscheduler",
        "the kernel's block scheduler is not in the path",
    ),
    ("cgroup", "kernel cgroups"),
    ("cgroup_weight", "kernel cgroups"),
    (
        "numa_mem_policy",
        "DMA pools are allocated by the reactor on its own CPU",
    ),
    (
        "cpus_allowed_policy",
        "jobs are placed round-robin on the run's reactors",
    ),
    (
        "gtod_reduce",
        "bluepoll stamps time once per poll, so latencies cost nothing to keep",
    ),
    ("gtod_cpu", "bluepoll stamps time once per poll"),
    (
        "clocksource",
        "bluepoll's clock is the invariant TSC or the monotonic clock",
    ),
    (
        "disable_lat",
        "bluepoll stamps time once per poll, so latencies cost nothing to keep",
    ),
    (
        "disable_clat",
        "bluepoll stamps time once per poll, so latencies cost nothing to keep",
    ),
    (
        "disable_slat",
        "bluepoll stamps time once per poll, so latencies cost nothing to keep",
    ),
    ("disable_bw_measurement", "bandwidth is counted either way"),
    (
        "lat_percentiles",
        "clat percentiles are reported; lat is reported with min/max/mean",
    ),
    ("clat_percentiles", "clat percentiles are always reported"),
    ("slat_percentiles", "slat is reported with min/max/mean"),
    (
        "unified_rw_reporting",
        "directions are always reported apart",
    ),
    ("kb_base", "units in reports follow fio's defaults"),
    ("unit_base", "units in reports follow fio's defaults"),
    ("log_compression", "logs are written uncompressed"),
    ("log_store_compressed", "logs are written uncompressed"),
    ("status_interval", "the live status line is --eta"),
    (
        "dedupe_mode",
        "data content: bluepoll devices neither compress nor deduplicate",
    ),
    (
        "dedupe_global",
        "data content: bluepoll devices neither compress nor deduplicate",
    ),
    (
        "dedupe_percentage",
        "data content: bluepoll devices neither compress nor deduplicate",
    ),
    (
        "dedupe_working_set_percentage",
        "data content: bluepoll devices neither compress nor deduplicate",
    ),
    (
        "buffer_compress_percentage",
        "data content: bluepoll devices neither compress nor deduplicate",
    ),
    (
        "buffer_compress_chunk",
        "data content: bluepoll devices neither compress nor deduplicate",
    ),
    (
        "compress_percentage",
        "data content: bluepoll devices neither compress nor deduplicate",
    ),
    (
        "refill_buffers",
        "data content: bluepoll devices neither compress nor deduplicate",
    ),
    (
        "scramble_buffers",
        "data content: bluepoll devices neither compress nor deduplicate",
    ),
    (
        "zero_buffers",
        "data content: bluepoll devices neither compress nor deduplicate",
    ),
    (
        "buffer_pattern",
        "data content: bluepoll devices neither compress nor deduplicate",
    ),
    (
        "verify_dump",
        "a failed block is named in the report rather than dumped to files",
    ),
    (
        "verify_async",
        "blocks are checked on the reactor as they complete",
    ),
    (
        "verify_async_cpus",
        "blocks are checked on the reactor as they complete",
    ),
    (
        "verify_state_save",
        "the generation table lives for one run",
    ),
    (
        "error_dump",
        "errors are counted and the first ten named in the report",
    ),
    (
        "ignore_error",
        "errors a job continues past are chosen with continue_on_error",
    ),
    (
        "allrandrepeat",
        "every random choice is seeded from randseed already",
    ),
    ("bs_unaligned", "lengths must be whole device blocks"),
    ("uid", "jobs run as the invoking user"),
    ("gid", "jobs run as the invoking user"),
];

fn micros() -> Duration {
    Duration::from_micros(1)
}

/// fio's per-direction lists (`bs=4k,8k`): one value for all three directions; two for reads,
/// then writes and trims; three for each. An empty part keeps the default.
fn per_direction(value: &str) -> [Option<&str>; 3] {
    let parts: Vec<&str> = value.split(',').map(str::trim).collect();
    let pick = |i: usize| parts.get(i).copied().filter(|p| !p.is_empty());
    match parts.len() {
        1 => [pick(0), pick(0), pick(0)],
        2 => [pick(0), pick(1), pick(1)],
        _ => [pick(0), pick(1), pick(2)],
    }
}

/// `rate=1m,500k`: per direction, 0 where not given.
fn per_direction_sizes(value: &str) -> Result<[u64; 3], String> {
    let mut out = [0; 3];
    let parts: Vec<&str> = value.split(',').map(str::trim).collect();
    if parts.len() == 1 {
        return Ok([parse_size(parts[0])?; 3]);
    }
    for (d, part) in parts.iter().take(3).enumerate() {
        if !part.is_empty() {
            out[d] = parse_size(part)?;
        }
    }
    Ok(out)
}

/// `LO-HI` or `LO:HI` (fio's ranges), or one value for both.
fn parse_range(value: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = match value.split_once(['-', ':']) {
        Some((a, b)) => (parse_size(a.trim())?, parse_size(b.trim())?),
        None => {
            let v = parse_size(value.trim())?;
            (v, v)
        }
    };
    if hi < lo {
        return Err(format!("range {value} ends before it starts"));
    }
    Ok((lo, hi))
}

/// `N%` as a fraction in percent, or None for an absolute value.
fn parse_percent(value: &str) -> Result<Option<f64>, String> {
    let Some(number) = value.trim().strip_suffix('%') else {
        return Ok(None);
    };
    let p: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{value}' is not a percentage"))?;
    if !(p > 0.0 && p <= 100.0) {
        return Err(format!("percentage {p} is not in (0, 100]"));
    }
    Ok(Some(p))
}

/// `iops:10%`, `iops_slope:0.1%`, `bw:2m`, `bw_slope:1%`.
fn parse_steady_state(value: &str) -> Result<SteadyState, String> {
    let (kind, limit) = value
        .split_once(':')
        .ok_or("expected CRITERION:LIMIT, e.g. iops:10% or bw_slope:0.1%")?;
    let (bandwidth, slope) = match kind.trim() {
        "iops" => (false, false),
        "iops_slope" => (false, true),
        "bw" => (true, false),
        "bw_slope" => (true, true),
        other => {
            return Err(format!(
                "criterion {other}: expected iops, iops_slope, bw or bw_slope"
            ));
        }
    };
    let limit = limit.trim();
    let (number, percent) = match limit.strip_suffix('%') {
        Some(n) => (
            n.trim()
                .parse::<f64>()
                .map_err(|_| format!("'{limit}' is not a number"))?,
            true,
        ),
        None if bandwidth => (parse_size(limit)? as f64, false),
        None => (
            limit
                .parse::<f64>()
                .map_err(|_| format!("'{limit}' is not a number"))?,
            false,
        ),
    };
    if number.is_nan() || number < 0.0 {
        return Err(format!("limit {limit} is negative"));
    }
    Ok(SteadyState {
        bandwidth,
        slope,
        limit: number,
        percent,
    })
}

/// Whether one-second samples meet a steady-state criterion (fio's definitions: every sample
/// within the limit of the mean, or the least-squares slope within it).
pub fn steady(criterion: &SteadyState, samples: &[f64]) -> bool {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return false;
    }
    let mean = samples.iter().sum::<f64>() / n;
    let limit = if criterion.percent {
        mean * criterion.limit / 100.0
    } else {
        criterion.limit
    };
    if criterion.slope {
        let x_mean = (n - 1.0) / 2.0;
        let (mut num, mut den) = (0.0, 0.0);
        for (i, y) in samples.iter().enumerate() {
            num += (i as f64 - x_mean) * (y - mean);
            den += (i as f64 - x_mean) * (i as f64 - x_mean);
        }
        (num / den).abs() <= limit
    } else {
        samples.iter().all(|y| (y - mean).abs() <= limit)
    }
}

/// fio's pattern syntax: `0xaa555aa5` (bytes in the order written), a decimal number (its
/// little-endian bytes, at least one), or `'text'`/`"text"`; pieces may follow each other.
fn parse_pattern(value: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        if let Some(hex) = rest.strip_prefix("0x").or_else(|| rest.strip_prefix("0X")) {
            let end = hex
                .find(|c: char| !c.is_ascii_hexdigit())
                .unwrap_or(hex.len());
            let digits = &hex[..end];
            if digits.is_empty() {
                return Err(format!("'{value}': 0x with no hex digits"));
            }
            let padded = if digits.len() % 2 == 1 {
                format!("0{digits}")
            } else {
                digits.to_string()
            };
            for pair in padded.as_bytes().chunks(2) {
                let text = std::str::from_utf8(pair).unwrap_or("");
                out.push(u8::from_str_radix(text, 16).map_err(|e| e.to_string())?);
            }
            rest = &hex[end..];
        } else if let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
            let inner = &rest[1..];
            let end = inner
                .find(quote)
                .ok_or_else(|| format!("'{value}': unterminated quote"))?;
            out.extend_from_slice(&inner.as_bytes()[..end]);
            rest = &inner[end + 1..];
        } else {
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if end == 0 {
                return Err(format!(
                    "'{value}' is not a pattern (0xHEX, a number or 'text')"
                ));
            }
            let n: u64 = rest[..end]
                .parse()
                .map_err(|_| format!("'{value}': number too large"))?;
            let used = (8 - n.leading_zeros() as usize / 8).max(1);
            out.extend_from_slice(&n.to_le_bytes()[..used]);
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    if out.is_empty() {
        return Err("empty pattern".into());
    }
    Ok(out)
}

/// `4k/10:64k/50:32k/` — weights left blank share what the others leave, as fio does.
fn parse_bssplit(value: &str) -> Result<Vec<(u64, u32)>, String> {
    let mut parts = Vec::new();
    let mut blank = 0;
    let mut given = 0u32;
    for item in value.split(':').map(str::trim).filter(|i| !i.is_empty()) {
        let (size, weight) = item.split_once('/').unwrap_or((item, ""));
        let size = parse_size(size.trim())?;
        if size == 0 || size > 1 << 30 {
            return Err(format!("block size in '{item}' must be between 1 and 1G"));
        }
        let weight = match weight.trim() {
            "" => {
                blank += 1;
                None
            }
            w => {
                let w: u32 = w
                    .parse()
                    .map_err(|_| format!("weight in '{item}' is not a whole number"))?;
                given += w;
                Some(w)
            }
        };
        parts.push((size, weight));
    }
    if parts.is_empty() {
        return Err("no block sizes".into());
    }
    if given > 100 {
        return Err(format!("weights add up to {given}, more than 100"));
    }
    let share = (100 - given).checked_div(blank).unwrap_or(0);
    Ok(parts
        .into_iter()
        .map(|(size, w)| (size, w.unwrap_or(share)))
        .collect())
}

/// `zipf:1.2`, `pareto:0.9`, `normal:10`, `zoned:50/5:30/15:20/`, `zoned_abs:60/10g:40/`.
fn parse_distribution(value: &str) -> Result<Distribution, String> {
    // fio allows one per direction after commas; bluepoll applies the first to all.
    let value = value.split(',').next().unwrap_or("").trim();
    let (kind, rest) = value.split_once(':').unwrap_or((value, ""));
    let number = |text: &str| -> Result<f64, String> {
        let first = text.split(':').next().unwrap_or("");
        first
            .trim()
            .parse()
            .map_err(|_| format!("'{text}' is not a number"))
    };
    let zones = |rest: &str| -> Result<Vec<(u32, String)>, String> {
        let mut out = Vec::new();
        for item in rest.split(':').map(str::trim).filter(|i| !i.is_empty()) {
            let (access, range) = item.split_once('/').unwrap_or((item, ""));
            let access: u32 = access
                .trim()
                .parse()
                .map_err(|_| format!("access share in '{item}' is not a whole number"))?;
            out.push((access, range.trim().to_string()));
        }
        let total: u32 = out.iter().map(|z| z.0).sum();
        if total != 100 {
            return Err(format!("zone access shares add up to {total}, not 100"));
        }
        Ok(out)
    };
    Ok(match kind {
        "random" => Distribution::Random,
        "zipf" => {
            let theta = number(rest)?;
            if theta.is_nan() || theta <= 0.0 || theta == 1.0 {
                return Err("zipf theta must be above 0 and not 1".into());
            }
            Distribution::Zipf(theta)
        }
        "pareto" => {
            let h = number(rest)?;
            if !(h > 0.0 && h < 1.0) {
                return Err("pareto power must be between 0 and 1".into());
            }
            Distribution::Pareto(h)
        }
        "normal" | "gauss" => {
            let dev = number(rest)?;
            if !(0.0..=100.0).contains(&dev) {
                return Err("normal deviation must be between 0 and 100".into());
            }
            Distribution::Normal(dev)
        }
        "zoned" => {
            let list = zones(rest)?;
            let given: f64 = list
                .iter()
                .filter(|z| !z.1.is_empty())
                .map(|z| z.1.parse::<f64>().unwrap_or(0.0))
                .sum();
            let blank = list.iter().filter(|z| z.1.is_empty()).count().max(1) as f64;
            let mut out = Vec::new();
            for (access, range) in list {
                let pct = if range.is_empty() {
                    (100.0 - given) / blank
                } else {
                    range
                        .parse::<f64>()
                        .map_err(|_| format!("range share '{range}' is not a number"))?
                };
                out.push((access, pct));
            }
            Distribution::Zoned(out)
        }
        "zoned_abs" => {
            let mut out = Vec::new();
            for (access, range) in zones(rest)? {
                let bytes = if range.is_empty() {
                    u64::MAX / 4
                } else {
                    parse_size(&range)?
                };
                out.push((access, bytes));
            }
            Distribution::ZonedAbs(out)
        }
        _ => {
            return Err(
                "expected random, zipf:THETA, pareto:POWER, normal:DEV, zoned:… or zoned_abs:…"
                    .into(),
            );
        }
    })
}

/// Keeps `bs` — what engines with one block size use — at the job's smallest size.
fn settle_bs(spec: &mut JobSpec) {
    spec.bs = spec
        .block_sizes
        .iter()
        .map(BlockSizes::min)
        .min()
        .unwrap_or(4096);
}

/// The CPUs of NUMA nodes `0` or `0-1` (from sysfs). Nodes this machine does not have are
/// passed over, so a job file written for a two-socket server runs on one socket; naming only
/// absent nodes is an error.
fn numa_node_cpus(value: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for node in parse_cpu_list(value)? {
        let path = format!("/sys/devices/system/node/node{node}/cpulist");
        let Ok(list) = std::fs::read_to_string(&path) else {
            continue;
        };
        for cpu in parse_cpu_list(list.trim())? {
            if !cpus.contains(&cpu) {
                cpus.push(cpu);
            }
        }
    }
    if cpus.is_empty() {
        return Err(format!("this machine has none of the NUMA nodes {value}"));
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
            | "new_group"
            | "exitall"
            | "threads"
            | "fill_device"
            | "fill_fs"
            | "verify_fatal"
            | "verify_only"
            | "per_job_logs"
            | "log_offset"
            | "log_prio"
            | "log_max_value"
            | "gtod_reduce"
            | "disable_lat"
            | "disable_clat"
            | "disable_slat"
            | "disable_bw_measurement"
            | "lat_percentiles"
            | "clat_percentiles"
            | "slat_percentiles"
            | "create_on_open"
            | "create_serialize"
            | "invalidate"
            | "pre_read"
            | "unlink"
            | "overwrite"
            | "refill_buffers"
            | "scramble_buffers"
            | "zero_buffers"
            | "dedupe_global"
            | "allow_file_create"
            | "allow_mounted_write"
            | "end_fsync"
            | "fsync_on_close"
            | "rate_ignore_thinktime"
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
            let (mode, modifier) = match value.split_once(':') {
                Some((m, n)) => (m, Some(n)),
                None => (value.as_str(), None),
            };
            spec.rw = RwMode::parse(mode).ok_or_else(|| {
                invalid(
                    "expected read, write, trim, randread, randwrite, randtrim, rw, readwrite, \
                     randrw, trimwrite or randtrimwrite, optionally with :N"
                        .into(),
                )
            })?;
            spec.rw_modifier = match modifier {
                None => 0,
                Some(n) => {
                    let (negative, digits) = match n.strip_prefix('-') {
                        Some(d) => (true, d),
                        None => (false, n),
                    };
                    let v = parse_size(digits).map_err(invalid)? as i64;
                    if negative { -v } else { v }
                }
            };
        }
        "rw_sequencer" => {
            spec.rw_sequencer = match value.as_str() {
                "sequential" => Sequencer::Sequential,
                "identical" => Sequencer::Identical,
                _ => return Err(invalid("expected sequential or identical".into())),
            }
        }
        "bs" | "blocksize" => {
            let parts = per_direction(&value);
            for (d, part) in parts.iter().enumerate() {
                if let Some(part) = part {
                    spec.block_sizes[d] =
                        BlockSizes::Fixed(at_least_one(part, 1 << 30).map_err(invalid)?);
                }
            }
            settle_bs(spec);
        }
        "bsrange" | "blocksize_range" => {
            for (d, part) in per_direction(&value).iter().enumerate() {
                if let Some(part) = part {
                    let (lo, hi) = parse_range(part).map_err(invalid)?;
                    if lo == 0 || hi > 1 << 30 {
                        return Err(invalid("block sizes must be between 1 and 1G".into()));
                    }
                    spec.block_sizes[d] = BlockSizes::Range(lo, hi);
                }
            }
            settle_bs(spec);
        }
        "bssplit" => {
            for (d, part) in per_direction(&value).iter().enumerate() {
                if let Some(part) = part {
                    spec.block_sizes[d] = BlockSizes::Split(parse_bssplit(part).map_err(invalid)?);
                }
            }
            settle_bs(spec);
        }
        "blockalign" | "ba" => {
            let first = per_direction(&value)[0].ok_or_else(|| invalid("empty".into()))?;
            spec.blockalign = Some(at_least_one(first, 1 << 30).map_err(invalid)?);
        }
        "random_distribution" => {
            spec.random_distribution = parse_distribution(&value).map_err(invalid)?
        }
        "random_generator" => {
            // The generator's algorithm, not the distribution: bluepoll's own generator (with
            // its random map, which like lfsr touches every block once per pass) stands in.
            if !matches!(value.as_str(), "tausworthe" | "lfsr" | "tausworthe64") {
                return Err(invalid("expected tausworthe, lfsr or tausworthe64".into()));
            }
        }
        "percentage_random" => {
            let first = per_direction(&value)[0].ok_or_else(|| invalid("empty".into()))?;
            let n = parse_u64(first).map_err(invalid)?;
            if n > 100 {
                return Err(invalid("must be between 0 and 100".into()));
            }
            spec.percentage_random = n as u32;
        }
        "iodepth" => spec.iodepth = at_least_one(&value, 65536).map_err(invalid)? as u32,
        "iodepth_batch_submit" | "iodepth_batch" => {
            let n = parse_u64(&value).map_err(invalid)?;
            if n > 65536 {
                return Err(invalid("must be at most 65536 (0 means iodepth)".into()));
            }
            spec.iodepth_batch_submit = n as u32;
        }
        "numjobs" => spec.numjobs = at_least_one(&value, 4096).map_err(invalid)? as u32,
        "size" => match parse_percent(&value).map_err(invalid)? {
            Some(p) => {
                spec.size_percent = Some(p);
                spec.size = None;
            }
            None => {
                spec.size = Some(at_least_one(&value, u64::MAX).map_err(invalid)?);
                spec.size_percent = None;
            }
        },
        "offset" => match parse_percent(&value).map_err(invalid)? {
            Some(p) => spec.offset_percent = Some(p),
            None => {
                spec.offset = parse_size(&value).map_err(invalid)?;
                spec.offset_percent = None;
            }
        },
        "offset_increment" => match parse_percent(&value).map_err(invalid)? {
            Some(p) => spec.offset_increment_percent = Some(p),
            None => spec.offset_increment = parse_size(&value).map_err(invalid)?,
        },
        "filesize" => {
            let (lo, hi) = parse_range(&value).map_err(invalid)?;
            if lo == 0 {
                return Err(invalid("must be at least 1".into()));
            }
            spec.filesize = Some((lo, hi));
        }
        "io_size" | "io_limit" => {
            spec.io_size = Some(at_least_one(&value, u64::MAX).map_err(invalid)?)
        }
        "number_ios" => spec.number_ios = parse_size(&value).map_err(invalid)?,
        "loops" => spec.loops = at_least_one(&value, u32::MAX as u64).map_err(invalid)? as u32,
        "fill_device" | "fill_fs" => {
            if parse_bool(&value).map_err(invalid)? {
                // To the end of the device: a device's "full" is its last block.
                spec.size = None;
                spec.size_percent = None;
            }
        }
        "startdelay" => {
            let (lo, hi) = match value.split_once('-') {
                Some((a, b)) => (a, b),
                None => (value.as_str(), value.as_str()),
            };
            let lo = parse_duration(lo, secs).map_err(invalid)?;
            let hi = parse_duration(hi, secs).map_err(invalid)?;
            if hi < lo {
                return Err(invalid("the range's end is before its start".into()));
            }
            spec.startdelay = (lo, hi);
        }
        "rate" => spec.rate = per_direction_sizes(&value).map_err(invalid)?,
        "rate_min" | "ratemin" => spec.rate_min = per_direction_sizes(&value).map_err(invalid)?,
        "rate_iops_min" => spec.rate_iops_min = per_direction_sizes(&value).map_err(invalid)?,
        "rate_process" => {
            spec.rate_process = match value.as_str() {
                "linear" => RateProcess::Linear,
                "poisson" => RateProcess::Poisson,
                _ => return Err(invalid("expected linear or poisson".into())),
            }
        }
        "rate_cycle" | "ratecycle" => {
            spec.rate_cycle = parse_duration(&value, Duration::from_millis(1)).map_err(invalid)?
        }
        "rate_ignore_thinktime" => {
            parse_bool(&value).map_err(invalid)?;
        }
        "thinktime" => spec.thinktime = parse_duration(&value, micros()).map_err(invalid)?,
        "thinktime_spin" => {
            spec.thinktime_spin = parse_duration(&value, micros()).map_err(invalid)?
        }
        "thinktime_blocks" => {
            spec.thinktime_blocks = at_least_one(&value, u64::MAX).map_err(invalid)?
        }
        "thinktime_blocks_type" => {
            spec.thinktime_issue = match value.as_str() {
                "complete" => false,
                "issue" => true,
                _ => return Err(invalid("expected complete or issue".into())),
            }
        }
        "thinktime_iotime" => {
            spec.thinktime_iotime = parse_duration(&value, secs).map_err(invalid)?
        }
        "new_group" => spec.new_group = parse_bool(&value).map_err(invalid)?,
        "wait_for" => spec.wait_for = Some(value.clone()),
        "exitall" => spec.exitall = parse_bool(&value).map_err(invalid)?,
        "exit_what" => {
            spec.exit_what = match value.as_str() {
                "group" => ExitWhat::Group,
                "stonewall" => ExitWhat::Stonewall,
                "all" => ExitWhat::All,
                _ => return Err(invalid("expected group, stonewall or all".into())),
            }
        }
        "flow" => {
            spec.flow = value
                .trim()
                .parse()
                .map_err(|_| invalid("expected a whole number".into()))?
        }
        "flow_id" => spec.flow_id = parse_u64(&value).map_err(invalid)? as u32,
        "flow_sleep" => spec.flow_sleep = parse_duration(&value, micros()).map_err(invalid)?,
        "zonemode" => match value.as_str() {
            "none" => spec.zonemode_strided = None,
            "strided" => spec.zonemode_strided = Some((0, 0, 0)),
            other => {
                return Err(invalid(format!(
                    "zonemode={other} is not supported: bluepoll's devices are not zoned and \
                     it does not emulate zones (zonemode=strided and none are)"
                )));
            }
        },
        "zonesize" => spec.zonesize = parse_size(&value).map_err(invalid)?,
        "zonerange" => spec.zonerange = parse_size(&value).map_err(invalid)?,
        "zoneskip" => spec.zoneskip = parse_size(&value).map_err(invalid)?,
        "continue_on_error" => {
            spec.continue_on_error = match value.as_str() {
                "none" | "0" => ContinueOn::default(),
                "read" => ContinueOn {
                    read: true,
                    ..Default::default()
                },
                "write" => ContinueOn {
                    write: true,
                    ..Default::default()
                },
                "io" => ContinueOn {
                    read: true,
                    write: true,
                    verify: false,
                },
                "verify" => ContinueOn {
                    verify: true,
                    ..Default::default()
                },
                "all" | "1" => ContinueOn {
                    read: true,
                    write: true,
                    verify: true,
                },
                _ => {
                    return Err(invalid(
                        "expected none, read, write, io, verify or all".into(),
                    ));
                }
            }
        }
        "verify_fatal" => spec.verify_fatal = parse_bool(&value).map_err(invalid)?,
        "verify_backlog" => spec.verify_backlog = parse_u64(&value).map_err(invalid)?,
        "verify_pattern" => spec.verify_pattern = Some(parse_pattern(&value).map_err(invalid)?),
        "verify_interval" => {
            spec.verify_interval = Some(at_least_one(&value, 1 << 30).map_err(invalid)?)
        }
        "verify_only" => spec.verify_only = parse_bool(&value).map_err(invalid)?,
        "read_iolog" => spec.read_iolog = Some(value.clone()),
        "ss" | "steadystate" => {
            spec.steady_state = Some(parse_steady_state(&value).map_err(invalid)?)
        }
        "ss_dur" | "steadystate_duration" => {
            spec.ss_dur = parse_duration(&value, secs).map_err(invalid)?
        }
        "ss_ramp" | "steadystate_ramp_time" => {
            spec.ss_ramp = parse_duration(&value, secs).map_err(invalid)?
        }
        "spdk_json_conf" => spec.spdk_json_conf = Some(value.clone()),
        "write_iolog" => spec.write_iolog = Some(value.clone()),
        "latency_target" => {
            let d = parse_duration(&value, micros()).map_err(invalid)?;
            spec.latency_target = (!d.is_zero()).then_some(d);
        }
        "latency_window" => {
            spec.latency_window = parse_duration(&value, micros()).map_err(invalid)?
        }
        "latency_percentile" => {
            let p: f64 = value
                .trim()
                .parse()
                .map_err(|_| invalid("expected a number".into()))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(invalid("must be in (0, 100]".into()));
            }
            spec.latency_percentile = p;
        }
        "numa_cpu_nodes" => {
            let cpus = numa_node_cpus(&value).map_err(invalid)?;
            spec.cpus_allowed = Some(cpus);
        }
        "timeout" => {
            let d = parse_duration(&value, secs).map_err(invalid)?;
            spec.runtime = if d.is_zero() { None } else { Some(d) };
        }
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
                "dev" => {
                    spec.null_engine = false;
                    spec.spdk_plugin = None;
                    IoEngine::Dev
                }
                // SPDK's fio plugins: the same controller or bdev through bluepoll's devices.
                "spdk" => {
                    spec.spdk_plugin = Some(SpdkPlugin::Nvme);
                    IoEngine::Dev
                }
                "spdk_bdev" => {
                    spec.spdk_plugin = Some(SpdkPlugin::Bdev);
                    IoEngine::Dev
                }
                // fio's engines for the kernel's block and file paths: here the same device
                // through bluepoll's queue pairs, which is what a job file written for them
                // asks to measure.
                "libaio" | "io_uring" | "psync" | "sync" | "pvsync" | "pvsync2" | "vsync"
                | "posixaio" | "mmap" => {
                    spec.null_engine = false;
                    IoEngine::Dev
                }
                // fio's null engine completes I/O without doing any: bluepoll's null: device.
                "null" => {
                    spec.null_engine = true;
                    IoEngine::Dev
                }
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
                "db" => bluepoll_bluefs::FileKind::Db,
                "wal" => bluepoll_bluefs::FileKind::Wal,
                "slow" => bluepoll_bluefs::FileKind::Slow,
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
        "rate_iops" => {
            spec.rate_iops_dirs = per_direction_sizes(&value).map_err(invalid)?;
            spec.rate_iops = spec.rate_iops_dirs.iter().copied().max().unwrap_or(0);
        }
        "directory" => spec.directory = Some(value.clone()),
        "kstore_stripe" => spec.kstore_stripe = at_least_one(&value, 1 << 30).map_err(invalid)?,
        "image_order" => spec.image_order = at_least_one(&value, 26).map_err(invalid)? as u8,
        "image_layout" => spec.image_layout = parse_bool(&value).map_err(invalid)?,
        "direct" | "odirect" => spec.direct = parse_bool(&value).map_err(invalid)?,
        "end_fsync" | "fsync_on_close" => spec.end_fsync |= parse_bool(&value).map_err(invalid)?,
        "cpumask" => {
            let mask = parse_u64(&value).map_err(invalid)?;
            let cpus: Vec<usize> = (0..64).filter(|c| mask & (1 << c) != 0).collect();
            if cpus.is_empty() {
                return Err(invalid("names no CPU".into()));
            }
            spec.cpus_allowed = Some(cpus);
        }
        // fio's `buffered` is the opposite of `direct`.
        "buffered" => spec.direct = !parse_bool(&value).map_err(invalid)?,
        "thread" | "threads" => {}
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
                "crc32c" | "crc32c-intel" | "meta" => VerifyMode::Header(Digest::Crc32c),
                "md5" => VerifyMode::Header(Digest::Md5),
                "sha1" => VerifyMode::Header(Digest::Sha1),
                "sha256" => VerifyMode::Header(Digest::Sha256),
                "sha512" => VerifyMode::Header(Digest::Sha512),
                "crc64" => VerifyMode::Header(Digest::Crc64),
                "xxhash" => VerifyMode::Header(Digest::Xxhash),
                "pattern" => VerifyMode::Pattern,
                _ => {
                    return Err(invalid(
                        "supported: crc32c (crc32c-intel), meta, md5, sha1, sha256, sha512, \
                         crc64, xxhash (bluepoll's verify header with that digest, \
                         docs/format.md), pattern, none; crc32, crc16, crc7, sha224, sha384 \
                         and sha3-* are not"
                            .into(),
                    ));
                }
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
        other if IGNORED_OPTIONS.iter().any(|(name, _)| *name == other) => {
            if !spec.ignored_options.iter().any(|o| o == other) {
                spec.ignored_options.push(other.to_string());
            }
        }
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
    /// `normal`: fio's human-readable text summary.
    pub normal: bool,
    /// `json`: fio-shaped JSON.
    pub json: bool,
    /// `json+`: the JSON plus each latency's histogram in fio's buckets (`bins`); sets `json`.
    pub json_plus: bool,
    /// `terse` / `--minimal`: fio's semicolon-separated line per job (terse version 3).
    pub terse: bool,
}

impl OutputFormat {
    /// The text summary alone: fio's default `--output-format=normal`.
    pub const NORMAL: OutputFormat = OutputFormat {
        normal: true,
        json: false,
        json_plus: false,
        terse: false,
    };
}

/// fio's `--eta`: when the live status line is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eta {
    /// `auto` (the default): when stdout is a terminal.
    Auto,
    /// `always`: even when stdout is not a terminal.
    Always,
    /// `never`: not at all.
    Never,
}

/// Options of the whole run rather than of a job.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `--output-format` (with `--minimal`, `--append-terse`): which reports are printed.
    pub output_format: OutputFormat,
    /// `--output=FILE`: where the reports go instead of stdout.
    pub output: Option<String>,
    /// `--cpus=LIST`: the CPUs to run reactors on (default: the first job's `cpus_allowed`, else
    /// as many available CPUs as the largest group has jobs).
    pub cpus: Option<Vec<usize>>,
    /// `--plot=FILE.svg`: where to draw the run's IOPS and latency percentiles over time
    /// ([`crate::plot`]).
    pub plot: Option<String>,
    /// `--eta`: when the live status line is shown.
    pub eta: Eta,
    /// Write a pattern over a fresh `mem:` device's range before jobs read it, as fio lays out
    /// a new file, so reads measure copying data rather than zero-filling unwritten memory.
    pub layout: bool,
    /// fio's `--section=NAME` (repeatable): run only these job sections of the job files.
    pub sections: Vec<String>,
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
            sections: Vec::new(),
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
        "section" => run.sections.push(need(value)?),
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
    /// The run-wide options (command line only).
    pub run: RunOptions,
    /// The jobs in the order they run: the job files' sections (in file order), then those
    /// started with `--name`.
    pub jobs: Vec<JobSpec>,
}

/// Why `bluepoll bench`'s arguments could not be turned into an [`Invocation`].
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// An option is unknown or has a bad value.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// A job file does not parse.
    #[error(transparent)]
    JobFile(#[from] super::jobfile::JobFileError),
    /// A job file named on the command line cannot be read.
    #[error("cannot read job file '{path}': {source}")]
    ReadJobFile {
        /// The path as given.
        path: String,
        /// Why reading it failed.
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
    if !run.sections.is_empty() {
        files.retain(|job| run.sections.contains(&job.name));
        if files.is_empty() {
            return Err(OptionError::Invalid {
                origin: Origin::CommandLine,
                key: "section".into(),
                value: run.sections.join(","),
                reason: "no job file has a section of that name".into(),
            }
            .into());
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

/// Resolves one job: defaults, then `globals` and the job's `own` options in order (skipping
/// any that `overrides` sets again), then `overrides` — the command line, which wins. Checks
/// what needs the whole job (`zonemode=strided` needs `zonesize`, `verify=pattern` needs
/// `verify_pattern`, `verify` needs one block size) and records the options as written for the
/// JSON report.
pub fn resolve(
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
    let last_origin = || {
        own.iter()
            .chain(globals)
            .chain(overrides)
            .last()
            .map_or(Origin::Default, |o| o.origin.clone())
    };
    let origin_of = |key: &str| {
        overrides
            .iter()
            .chain(own.iter().rev())
            .chain(globals.iter().rev())
            .find(|o| normalise(&o.key) == key)
            .map_or_else(last_origin, |o| o.origin.clone())
    };
    if spec.zonemode_strided.is_some() {
        if spec.zonesize == 0 {
            return Err(OptionError::Invalid {
                origin: origin_of("zonemode"),
                key: "zonemode".into(),
                value: "strided".into(),
                reason: "zonemode=strided needs zonesize".into(),
            });
        }
        spec.zonemode_strided = Some((spec.zonesize, spec.zonerange, spec.zoneskip));
    }
    if spec.verify == VerifyMode::Pattern && spec.verify_pattern.is_none() {
        return Err(OptionError::Invalid {
            origin: origin_of("verify"),
            key: "verify".into(),
            value: "pattern".into(),
            reason: "verify=pattern needs verify_pattern".into(),
        });
    }
    if spec.verify != VerifyMode::None && !spec.fixed_bs() {
        return Err(OptionError::Invalid {
            origin: origin_of("verify"),
            key: "verify".into(),
            value: spec.verify.name().into(),
            reason: "verify needs one block size (bluepoll tracks what it wrote per block)".into(),
        });
    }
    if let (VerifyMode::Header(digest), Some(interval)) = (spec.verify, spec.verify_interval) {
        // Each unit carries a whole header and digest, and the units tile every I/O exactly
        // (fio asks the same: the block size a multiple of the interval).
        let bs = spec.min_bs();
        let needed = digest.header_len() as u64;
        let reason = if interval < needed {
            Some(format!(
                "verify={} needs at least {needed} bytes per unit for its header",
                digest.name()
            ))
        } else if bs % interval != 0 {
            Some(format!("the block size ({bs}) must be a multiple of it"))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(OptionError::Invalid {
                origin: origin_of("verify_interval"),
                key: "verify_interval".into(),
                value: interval.to_string(),
                reason,
            });
        }
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
    fn fios_job_shaping_options_parse_as_fio_defines_them() {
        let inv = parse_invocation(&args(&[
            "--name=j",
            "--rw=randrw:8",
            "--rw_sequencer=identical",
            "--bs=4k,16k",
            "--bssplit=4k/50:1k/:32k/,8k/100",
            "--size=25%",
            "--offset_increment=1g",
            "--rate=1m,500k",
            "--rate_iops=,200",
            "--thinktime=2ms",
            "--startdelay=1-3",
            "--random_distribution=zoned:50/5:30/15:20/",
            "--invalidate=1",
            "--gtod_reduce",
        ]))
        .unwrap();
        let j = &inv.jobs[0];
        assert_eq!(
            (j.rw, j.rw_modifier, j.rw_sequencer),
            (RwMode::RandRw, 8, Sequencer::Identical)
        );
        assert_eq!(
            j.block_sizes[0],
            BlockSizes::Split(vec![(4096, 50), (1024, 25), (32768, 25)])
        );
        assert_eq!(j.block_sizes[1], BlockSizes::Split(vec![(8192, 100)]));
        assert_eq!(j.bs, 1024, "bs follows the smallest size");
        assert_eq!(j.size_percent, Some(25.0));
        assert_eq!(j.offset_increment, 1 << 30);
        assert_eq!(j.rate, [1 << 20, 500 << 10, 0]);
        assert_eq!(j.rate_iops_dirs, [0, 200, 0]);
        assert_eq!(j.thinktime, Duration::from_millis(2));
        assert_eq!(
            j.startdelay,
            (Duration::from_secs(1), Duration::from_secs(3))
        );
        assert_eq!(
            j.random_distribution,
            Distribution::Zoned(vec![(50, 5.0), (30, 15.0), (20, 80.0)])
        );
        assert_eq!(j.ignored_options, vec!["invalidate", "gtod_reduce"]);
        let bad = |a: &str| {
            parse_invocation(&args(&["--name=j", a]))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("--bssplit=4k/60:8k/60").contains("more than 100"));
        assert!(bad("--random_distribution=zoned:50/5:30/15").contains("not 100"));
        assert!(bad("--zonemode=zbd").contains("not supported"));
        assert!(bad("--rw=read:x").contains("option 'rw'"));
        assert!(bad("--verify=crc16").contains("not"));
        assert!(bad("--verify=pattern").contains("needs verify_pattern"));
        assert_eq!(
            parse_pattern("0xaa555aa5").unwrap(),
            vec![0xaa, 0x55, 0x5a, 0xa5]
        );
        assert_eq!(parse_pattern("0xab'cd'").unwrap(), vec![0xab, b'c', b'd']);
        assert_eq!(parse_pattern("258").unwrap(), vec![2, 1]);
        assert!(parse_pattern("'open").is_err());
        let e = parse_invocation(&args(&["--name=j", "--verify=crc32c", "--bsrange=4k-8k"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("one block size"), "{e}");
    }

    #[test]
    fn steady_state_criteria_follow_fio() {
        let flat = [100.0, 104.0, 97.0, 101.0];
        let rising = [100.0, 110.0, 120.0, 130.0];
        let within =
            |text: &str, samples: &[f64]| steady(&parse_steady_state(text).unwrap(), samples);
        assert!(within("iops:5%", &flat));
        assert!(!within("iops:2%", &flat));
        assert!(within("iops:5", &flat));
        assert!(!within("iops:3", &flat));
        assert!(within("iops_slope:11%", &rising));
        assert!(!within("iops_slope:5%", &rising));
        assert!(within("bw_slope:10", &[5.0, 5.0, 5.0]));
        assert!(parse_steady_state("latency:1%").is_err());
        assert!(parse_steady_state("iops").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0-3,2,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }

    #[test]
    fn a_verify_interval_must_hold_its_header_and_tile_the_block() {
        let run = |extra: &[&str]| {
            let mut list = vec!["--name=v", "--rw=write", "--bs=4k", "--verify=md5"];
            list.extend_from_slice(extra);
            parse_invocation(&args(&list))
        };
        assert!(run(&["--verify_interval=512"]).is_ok());
        assert!(run(&[]).is_ok());
        let short = run(&["--verify_interval=32"]).unwrap_err().to_string();
        assert!(short.contains("header"), "{short}");
        let ragged = run(&["--verify_interval=4080"]).unwrap_err().to_string();
        assert!(ragged.contains("multiple"), "{ragged}");
    }
}
