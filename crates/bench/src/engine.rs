//! The load generator that runs on a reactor.
//!
//! A shard holds the jobs placed on one reactor, one queue pair per device they use (so all of
//! a reactor's I/O to a device shares one doorbell per poll, as docs/devices.md wants), and one DMA
//! pool. Each reactor iteration polls every queue pair, accounts the completions, then refills the
//! jobs in rounds of at most `iodepth_batch_submit` commands each, ringing the doorbells after
//! every round. The clock is read per poll and per round, not per I/O: every completion reaped by
//! one poll completes at the same observed instant, which is all a polling engine can know anyway.
//!
//! Latencies (per I/O, in ns): `slat` = submit() → doorbell; `clat` = doorbell → reaped;
//! `lat` = submit() → reaped.
//!
//! `fsync=N` (fio's meaning): after every N writes issued, the job stops issuing, waits for its
//! commands in flight, sends one Flush and waits for it (fio quiesces the same way); the Flush's
//! submit → reaped time goes to the job's `syncs`. Devices without Flush skip it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use super::offsets::Rng;
use super::options::{JobSpec, RateProcess, VerifyMode};
use super::pattern::{IoPattern, NextIo};
use super::stats::{DirStats, LatencyStat, Meter, Sample, batch_bucket, depth_bucket};
use super::verify::{self, Claim, Generations, WrittenUnits};
use bluepoll_base::sys::{Clock, CpuUsage, thread_cpu_usage};
use bluepoll_nvme::{
    Completion, Device, DmaPool, IoCmd, Opcode, QueueFull, QueuePair, QueuePairStats,
};
use bluepoll_reactor::{Context, Poll, Poller};

/// Index of the read direction in per-direction arrays (`[_; DIRS]`).
pub const READ: usize = 0;
/// Index of the write direction in per-direction arrays.
pub const WRITE: usize = 1;
/// Index of the trim direction in per-direction arrays.
pub const TRIM: usize = 2;
/// Directions measured apart, as fio does: read, write, trim.
pub const DIRS: usize = 3;
/// The directions' names as fio's reports spell them, by index.
pub const DIR_NAMES: [&str; DIRS] = ["read", "write", "trim"];

/// Most error messages kept per job; the counts are always exact.
const MAX_MESSAGES: usize = 10;

/// How far off a job's next action must be for it to count as dormant (the reactor may then
/// park for up to its idle policy's longest sleep, 1 ms by default).
const DORMANT_NS: u64 = 5_000_000;

/// The slot number in the tag of a job's Flush (`fsync=N`); real slots are numbered from 0.
const SYNC_SLOT: u64 = 0xffff_ffff;

/// Where a job is with its `fsync=N` Flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncState {
    Idle,
    /// Due: issue nothing more until in-flight commands are done and the Flush is sent.
    Wanted,
    /// Sent at this time.
    InFlight {
        submit_ns: u64,
    },
}

/// What the main thread can watch while a job runs.
#[derive(Debug, Default)]
pub struct JobProgress {
    /// I/Os completed so far per direction, updated as the job runs (restarting from 0 when
    /// measurement starts after `ramp_time`).
    pub ios: [AtomicU64; DIRS],
    /// Bytes completed so far per direction, counted like [`ios`](Self::ios).
    pub bytes: [AtomicU64; DIRS],
    /// Set once the job is done (what `wait_for` and the status line wait on).
    pub finished: AtomicBool,
}

/// Run-wide switches the main thread flips.
#[derive(Debug, Default)]
pub struct RunControl {
    /// Stop issuing, drain, report (Ctrl-C).
    pub stop: AtomicBool,
    /// An `exitall` job with `exit_what=all` ended: later groups do not start.
    pub exit_all: AtomicBool,
}

/// Jobs sharing a `flow_id`: fio's token-based flow control keeps each job's share of the
/// group's I/Os near its share of the group's `flow` weights.
#[derive(Debug, Default)]
pub struct FlowGroup {
    /// I/Os issued so far by all the group's jobs.
    pub ios: AtomicU64,
    /// The sum of the group's jobs' `flow` weights (their magnitudes).
    pub weight: AtomicU64,
}

/// A job placed on a reactor, with its device range resolved.
pub struct JobPlan {
    /// The job's options.
    pub spec: Arc<JobSpec>,
    /// Number of the job in the run (0-based; logs and reports add one).
    pub number: usize,
    /// The group (phase) the job runs in: 0-based, one more after each `stonewall`.
    pub group: usize,
    /// Index into the shard's devices.
    pub device: usize,
    /// The URI of the job's device, as reports name it.
    pub device_uri: String,
    /// The device's logical block size in bytes: I/O sizes and offsets are multiples of it.
    pub block_size: u64,
    /// The device implements Flush (`fsync=N` is skipped where it does not).
    pub flush: bool,
    /// First byte of the job's range, its length, and the number of `bs` units in it.
    pub range_start: u64,
    /// Bytes in the job's range.
    pub range_len: u64,
    /// `bs` units in the job's range.
    pub units: u64,
    /// `wait_for`: the job that must finish before this one starts (same group).
    pub wait_for: Option<Arc<JobProgress>>,
    /// Set when an `exitall` job of the group ends: every job of the group stops.
    pub group_exit: Arc<AtomicBool>,
    /// The job's `flow_id` group when it has a `flow` weight (fio's flow control).
    pub flow: Option<Arc<FlowGroup>>,
    /// `read_iolog`: the I/Os to replay instead of generating them.
    pub replay: Option<Arc<Vec<NextIo>>>,
    /// `write_iolog`: where the job records every I/O it issues (fio's iolog v3).
    pub iolog: Option<super::iolog::IologWriter>,
    /// Seed of the job's random choices (offsets, sizes, mixes), per clone; fixed by
    /// `randseed` unless `randrepeat=0`.
    pub seed: u64,
    /// With `verify`: the device's table of what this run last wrote where, shared with the
    /// other jobs on the device.
    pub generations: Option<Arc<Generations>>,
    /// The verify tables of the job's device when the job writes or trims without verify
    /// blocks: the units it changes are marked so verifying jobs do not check them.
    pub foreign_tables: Vec<Arc<Generations>>,
    /// Where the job publishes its progress for the main thread.
    pub progress: Arc<JobProgress>,
}

/// Everything one reactor needs for one phase of the run.
pub struct ShardPlan {
    /// The devices the jobs use; the shard opens one queue pair on each.
    pub devices: Vec<Device>,
    /// The jobs placed on this reactor.
    pub jobs: Vec<JobPlan>,
    /// The run-wide switches (stop, exit_all).
    pub control: Arc<RunControl>,
    /// Where the shard sends its [`ShardReport`] when its jobs are done.
    pub results: mpsc::Sender<ShardReport>,
}

/// What a job measured.
#[derive(Clone, Debug)]
pub struct JobResult {
    /// The job's options.
    pub spec: Arc<JobSpec>,
    /// Number of the job in the run (0-based; reports add one).
    pub number: usize,
    /// The group (phase) the job ran in, fio's `groupid`.
    pub group: usize,
    /// The URI of the device (or the devices' `filename`) the job ran on.
    pub device_uri: String,
    /// Index of the reactor that ran the job; `usize::MAX` for a job on a thread of its own.
    pub reactor: usize,
    /// The CPU the job ran on.
    pub cpu: usize,
    /// Counters and latencies per direction (read, write, trim), measured after `ramp_time`.
    pub dirs: [DirStats; DIRS],
    /// Time each direction was active, ns (a write job's verify pass counts as read time).
    pub dir_runtime_ns: [u64; DIRS],
    /// From the start of measurement to the job's end (its drain and verify pass included), ns.
    pub runtime_ns: u64,
    /// One sample per `log_avg_msec` (or second): the series behind bw/iops spreads, averaged
    /// logs and plots.
    pub samples: Vec<Sample>,
    /// CPU time of the thread that ran the job while it was measured (for dev jobs, the whole
    /// reactor's, shared with the other jobs on it): fio's `usr`/`sys`.
    pub cpu_usage: CpuUsage,
    /// fio's "IO depths": commands issued, counted by the depth in flight after their batch
    /// was queued, in the buckets of [`depth_bucket`] (1, 2, 4, 8, 16, 32, ≥64).
    pub depth_dist: [u64; 7],
    /// fio's "submit": batches queued at once, counted by size in the buckets of
    /// [`batch_bucket`] (0, 1–4, 5–8, 9–16, 17–32, 33–64, >64).
    pub submit_dist: [u64; 7],
    /// fio's "complete": polls that reaped at least one of the job's completions, by how many
    /// they reaped (buckets of [`batch_bucket`]).
    pub complete_dist: [u64; 7],
    /// Commands that failed (and `rate_min` shortfalls), counted whether or not they ended
    /// the job.
    pub io_errors: u64,
    /// Blocks read back that failed verification.
    pub verify_errors: u64,
    /// The first ten error messages (the counts above are exact).
    pub messages: Vec<String>,
    /// Latencies of the syncs `fsync=N` made (Flush commands; BlueFS fsyncs): fio's `sync`.
    pub syncs: LatencyStat,
    /// The errno that ended the job, when the engine knows one (0: EIO/EILSEQ from the counts).
    pub errno: i32,
    /// One record per I/O when the job's logs want them (`log_avg_msec=0`), in completion order.
    pub io_log: Vec<super::stats::IoRecord>,
}

/// How a job that ran on a thread of its own (ioengine=kstore, image) ended.
#[cfg_attr(not(feature = "store"), allow(dead_code))]
pub(crate) struct ThreadRun {
    pub device_uri: String,
    pub meter: Meter,
    /// When the last measured request finished, and when the job stopped (clock ns).
    pub run_end_ns: u64,
    pub finish_ns: u64,
    pub cpu_usage: CpuUsage,
    pub errors: u64,
    pub messages: Vec<String>,
}

impl JobResult {
    /// The result of a job that ran on a thread of its own: no reactor, no queue pair.
    #[cfg_attr(not(feature = "store"), allow(dead_code))]
    pub(crate) fn from_thread(
        spec: &Arc<JobSpec>,
        number: usize,
        group: usize,
        run: ThreadRun,
    ) -> Self {
        let run_ns = run.run_end_ns.saturating_sub(run.meter.measure_start_ns);
        JobResult {
            spec: Arc::clone(spec),
            number,
            group,
            device_uri: run.device_uri,
            reactor: usize::MAX,
            cpu: bluepoll_base::sys::current_cpu().unwrap_or(0),
            dirs: run.meter.total,
            dir_runtime_ns: [
                if spec.rw.reads() { run_ns } else { 0 },
                if spec.rw.writes() { run_ns } else { 0 },
                if spec.rw.trims() { run_ns } else { 0 },
            ],
            runtime_ns: run.finish_ns.saturating_sub(run.meter.measure_start_ns),
            samples: run.meter.samples,
            cpu_usage: run.cpu_usage,
            depth_dist: [0; 7],
            submit_dist: [0; 7],
            complete_dist: [0; 7],
            io_errors: run.errors,
            verify_errors: 0,
            messages: run.messages,
            syncs: Default::default(),
            errno: if run.errors > 0 { libc::EIO } else { 0 },
            io_log: Vec::new(),
        }
    }
}

/// What a reactor sends back when its shard finishes.
#[derive(Debug)]
pub struct ShardReport {
    /// Index of the reactor that ran the shard.
    pub reactor: usize,
    /// The CPU that reactor is pinned to.
    pub cpu: usize,
    /// What each of the shard's jobs measured.
    pub jobs: Vec<JobResult>,
    /// The shard's queue pairs, by device URI, with their counters.
    pub queue_pairs: Vec<(String, QueuePairStats)>,
    /// Set when the shard could not start (no queue pair, no memory).
    pub error: Option<String>,
}

/// Called on the reactor: builds the shard and starts polling it, or reports why it could not.
pub fn start_shard(cx: &mut Context<'_>, plan: ShardPlan) {
    let results = plan.results.clone();
    match Shard::new(cx, plan) {
        Ok(shard) => cx.add_poller(shard),
        Err(error) => {
            let _ = results.send(ShardReport {
                reactor: cx.index(),
                cpu: cx.cpu(),
                jobs: Vec::new(),
                queue_pairs: Vec::new(),
                error: Some(error),
            });
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Built, waiting for the shard's first poll (so setup never counts as runtime).
    Pending,
    /// Running, statistics discarded at the end (`ramp_time`).
    Ramp,
    /// Running and measured.
    Run,
    /// No new I/O; waiting for in-flight commands.
    Drain,
    /// A write job reading back what it wrote (`verify` with `do_verify`).
    Verify,
    Done,
}

struct Slot {
    buf: Option<bluepoll_nvme::DmaBuf>,
    offset: u64,
    len: u64,
    dir: usize,
    in_flight: bool,
    /// A read of the verify pass: always checked.
    verify_read: bool,
    /// Holds its unit's claim in the generation table (released at completion).
    claimed: bool,
    /// For a write, the generation it writes; for a read, the one expected (0 = unknown).
    generation: u64,
    submit_ns: u64,
    doorbell_ns: u64,
}

/// What one command does, decided before it is submitted.
#[derive(Clone, Copy, Debug)]
struct Command {
    dir: usize,
    offset: u64,
    len: u64,
    generation: u64,
    claimed: bool,
    verify_read: bool,
}

struct JobRun {
    plan: JobPlan,
    qp: usize,
    bs: u64,
    blocks: u32,
    /// log2 of the block size (block sizes are powers of two), to avoid a division per I/O.
    block_shift: u32,
    iodepth: u32,
    /// Most commands queued per doorbell (resolved `iodepth_batch_submit`).
    batch: u32,
    mode: super::options::RwMode,
    verify: bool,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: u32,
    pattern: IoPattern,
    /// The next I/O, drawn but held back (rate, flow, a busy unit).
    held: Option<NextIo>,
    replay_cursor: usize,
    rng: Rng,
    phase: Phase,
    /// `startdelay`: when the job may start (clock ns).
    start_at_ns: u64,
    /// I/Os left before `number_ios` ends the job.
    ios_left: Option<u64>,
    /// Rate caps: the earliest time of the next I/O per direction, and ns per byte / per I/O.
    rate_next_ns: [u64; DIRS],
    rate_ns_per_byte: [f64; DIRS],
    rate_ns_per_io: [f64; DIRS],
    /// `rate_min`: bytes per direction in the current `rate_cycle`, and when it began.
    rate_cycle_bytes: [u64; DIRS],
    rate_cycle_start_ns: u64,
    /// `thinktime`: blocks counted toward the next think, and the think in progress.
    think_count: u64,
    think_wanted: bool,
    think_until_ns: Option<u64>,
    iotime_start_ns: u64,
    /// Issued I/Os counted in the flow group.
    flow_ios: u64,
    /// Steady state: one-second samples (IOPS or bytes/s) of the rolling window, when the next
    /// is due, and the counts at the last one.
    ss_samples: std::collections::VecDeque<f64>,
    ss_next_ns: u64,
    ss_last: Option<(u64, u64)>,
    /// `latency_target`: the depth in force, and the window's completions and those over.
    depth_limit: u32,
    window_start_ns: u64,
    window_ios: u64,
    window_over: u64,
    end_sync_sent: bool,
    io_log: Vec<super::stats::IoRecord>,
    log_every_io: bool,
    /// Whether anything paces the job (thinktime, flow, rate caps), and whether each I/O has
    /// bookkeeping beyond the counters (logs, flow, verify tables of others, think counts):
    /// both false for a plain benchmark job, which then pays two branches for them.
    paced: bool,
    extras: bool,
    ramp_end_ns: u64,
    deadline_ns: Option<u64>,
    /// Bytes a size-bound job may still issue.
    budget: Option<u64>,
    run_end_ns: u64,
    verify_start_ns: Option<u64>,
    verify_cursor: u64,
    /// Units this job wrote successfully, read back by its verify pass.
    written: WrittenUnits,
    /// `verify_backlog=N`: offsets written since the last check; at N the job reads them back
    /// before writing more.
    backlog: Vec<u64>,
    backlog_due: bool,
    finish_ns: u64,
    meter: Meter,
    depth_dist: [u64; 7],
    submit_dist: [u64; 7],
    complete_dist: [u64; 7],
    reaped_this_poll: usize,
    io_errors: u64,
    verify_errors: u64,
    messages: Vec<String>,
    /// Writes issued since the last Flush, and the Flush's state (`fsync=N`).
    writes_since_sync: u64,
    sync: SyncState,
    cpu_start: CpuUsage,
    cpu_used: CpuUsage,
}

impl JobRun {
    fn new(
        plan: JobPlan,
        qp: usize,
        slot_bufs: Vec<bluepoll_nvme::DmaBuf>,
        pattern: IoPattern,
    ) -> JobRun {
        let spec = Arc::clone(&plan.spec);
        let slots = slot_bufs
            .into_iter()
            .map(|buf| Slot {
                buf: Some(buf),
                offset: 0,
                len: 0,
                dir: READ,
                in_flight: false,
                verify_read: false,
                claimed: false,
                generation: 0,
                submit_ns: 0,
                doorbell_ns: 0,
            })
            .collect::<Vec<_>>();
        let free = (0..slots.len() as u32).rev().collect();
        let verify = spec.verify != VerifyMode::None;
        JobRun {
            qp,
            bs: spec.bs,
            blocks: (spec.bs / plan.block_size) as u32,
            block_shift: plan.block_size.trailing_zeros(),
            iodepth: spec.iodepth,
            batch: match spec.iodepth_batch_submit {
                0 => spec.iodepth,
                n => n.min(spec.iodepth),
            },
            mode: spec.rw,
            verify,
            slots,
            free,
            in_flight: 0,
            pattern,
            held: None,
            replay_cursor: 0,
            rng: Rng::new(plan.seed ^ 0x5eed),
            phase: Phase::Pending,
            start_at_ns: 0,
            ios_left: None,
            rate_next_ns: [0; DIRS],
            rate_ns_per_byte: std::array::from_fn(|d| match spec.rate[d] {
                0 => 0.0,
                r => 1e9 / r as f64,
            }),
            rate_ns_per_io: std::array::from_fn(|d| match spec.rate_iops_dirs[d] {
                0 => 0.0,
                r => 1e9 / r as f64,
            }),
            rate_cycle_bytes: [0; DIRS],
            rate_cycle_start_ns: 0,
            think_count: 0,
            think_wanted: false,
            think_until_ns: None,
            iotime_start_ns: 0,
            flow_ios: 0,
            depth_limit: spec.iodepth,
            ss_samples: std::collections::VecDeque::new(),
            ss_next_ns: 0,
            ss_last: None,
            window_start_ns: 0,
            window_ios: 0,
            window_over: 0,
            end_sync_sent: false,
            io_log: Vec::new(),
            log_every_io: spec.logs_every_io(),
            paced: !spec.thinktime.is_zero() || plan.flow.is_some() || spec.rate_limited(),
            extras: spec.logs_every_io()
                || plan.iolog.is_some()
                || plan.flow.is_some()
                || !plan.foreign_tables.is_empty()
                || !spec.thinktime.is_zero()
                || spec.latency_target.is_some()
                || spec
                    .rate_min
                    .iter()
                    .chain(&spec.rate_iops_min)
                    .any(|&r| r > 0)
                || spec.steady_state.is_some()
                || spec.rw.trims(),
            ramp_end_ns: 0,
            deadline_ns: None,
            budget: None,
            run_end_ns: 0,
            verify_start_ns: None,
            verify_cursor: 0,
            written: if verify {
                WrittenUnits::new(plan.units)
            } else {
                WrittenUnits::default()
            },
            finish_ns: 0,
            backlog: Vec::new(),
            backlog_due: false,
            meter: Meter::new(spec.sample_every_ns()),
            depth_dist: [0; 7],
            submit_dist: [0; 7],
            complete_dist: [0; 7],
            reaped_this_poll: 0,
            io_errors: 0,
            verify_errors: 0,
            messages: Vec::new(),
            writes_since_sync: 0,
            sync: SyncState::Idle,
            cpu_start: CpuUsage::default(),
            cpu_used: CpuUsage::default(),
            plan,
        }
    }

    /// Sets when the job may start (`startdelay`, drawn within its range).
    fn schedule(&mut self, now_ns: u64) {
        let (lo, hi) = self.plan.spec.startdelay;
        let spread = hi.saturating_sub(lo).as_nanos() as u64;
        let delay = lo.as_nanos() as u64
            + if spread > 0 {
                self.rng.below(spread + 1)
            } else {
                0
            };
        self.start_at_ns = now_ns + delay;
    }

    /// Whether a pending job may start now: its delay is over and the job it waits for is done.
    fn may_start(&self, now_ns: u64) -> bool {
        now_ns >= self.start_at_ns
            && self
                .plan
                .wait_for
                .as_ref()
                .is_none_or(|p| p.finished.load(Ordering::Acquire))
    }

    /// Whether the job has nothing to do for a while (more than [`DORMANT_NS`]): it waits to
    /// start, or a rate cap holds its next I/O with none in flight. A shard of such jobs lets its
    /// reactor rest (a 1 mbit/s client with a two-minute startdelay need not spin a CPU).
    fn dormant(&self, now_ns: u64) -> bool {
        match self.phase {
            Phase::Done => true,
            Phase::Pending => {
                self.start_at_ns > now_ns + DORMANT_NS
                    || self
                        .plan
                        .wait_for
                        .as_ref()
                        .is_some_and(|p| !p.finished.load(Ordering::Acquire))
            }
            Phase::Run => {
                self.in_flight == 0
                    && self.sync == SyncState::Idle
                    && self
                        .held
                        .is_some_and(|io| self.rate_next_ns[io.dir] > now_ns + DORMANT_NS)
                    && self.deadline_ns.is_none_or(|d| d > now_ns + DORMANT_NS)
            }
            _ => false,
        }
    }

    /// Starts the job: ramp first if asked, else measuring.
    fn start(&mut self, now_ns: u64) {
        let ramp = self.plan.spec.ramp_time;
        if ramp.is_zero() {
            self.begin_measuring(now_ns);
        } else {
            self.ramp_end_ns = now_ns + ramp.as_nanos() as u64;
            self.phase = Phase::Ramp;
        }
    }

    fn begin_measuring(&mut self, now_ns: u64) {
        let spec = &self.plan.spec;
        self.meter.begin(now_ns);
        self.depth_dist = [0; 7];
        self.submit_dist = [0; 7];
        self.complete_dist = [0; 7];
        self.deadline_ns = spec.runtime.map(|r| now_ns + r.as_nanos() as u64);
        self.budget = if spec.time_based || self.plan.replay.is_some() {
            None
        } else {
            Some(
                // With filesize giving the range, size is only the default amount of I/O.
                spec.io_size
                    .or(spec.filesize.and(spec.size))
                    .unwrap_or(self.plan.range_len)
                    .saturating_mul(spec.loops as u64),
            )
        };
        // As fio: number_ios ends a pass of the workload, which a time_based job starts again.
        self.ios_left = (spec.number_ios > 0 && !spec.time_based).then_some(spec.number_ios);
        self.rate_next_ns = [now_ns; DIRS];
        self.rate_cycle_start_ns = now_ns;
        self.iotime_start_ns = now_ns;
        self.window_start_ns = now_ns;
        self.ss_next_ns = now_ns + spec.ss_ramp.as_nanos() as u64;
        self.ss_last = None;
        self.ss_samples.clear();
        self.cpu_start = thread_cpu_usage();
        self.phase = Phase::Run;
        if spec.verify_only && self.verify && self.mode.writes() {
            // verify_only: write nothing; read back the whole range an earlier run wrote.
            for unit in 0..self.plan.units {
                self.written.mark(unit);
            }
            self.run_end_ns = now_ns;
            self.verify_start_ns = Some(now_ns);
            self.phase = Phase::Verify;
        }
    }

    fn note(&mut self, message: String) {
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(message);
        }
    }

    /// Accounts the completion of the job's Flush.
    fn complete_sync(&mut self, c: &Completion, now_ns: u64) {
        let SyncState::InFlight { submit_ns } = self.sync else {
            return;
        };
        self.sync = SyncState::Idle;
        if c.status.is_success() {
            self.meter.syncs.record(now_ns.saturating_sub(submit_ns));
        } else {
            self.io_errors += 1;
            let message = format!("flush error on {}: {}", self.plan.device_uri, c.status);
            self.note(message);
            if matches!(self.phase, Phase::Ramp | Phase::Run | Phase::Verify) {
                self.phase = Phase::Drain;
            }
        }
    }

    /// Accounts one completion reaped at `now_ns`.
    fn complete(&mut self, c: Completion, now_ns: u64) {
        if c.tag & SYNC_SLOT == SYNC_SLOT {
            self.complete_sync(&c, now_ns);
            return;
        }
        let index = (c.tag & 0xffff_ffff) as usize;
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if !slot.in_flight {
            return;
        }
        slot.in_flight = false;
        let (dir, offset, len, generation, verify_read, claimed) = (
            slot.dir,
            slot.offset,
            slot.len,
            slot.generation,
            slot.verify_read,
            slot.claimed,
        );
        let (submit_ns, doorbell_ns) = (slot.submit_ns, slot.doorbell_ns);
        slot.claimed = false;
        self.in_flight = self.in_flight.saturating_sub(1);
        self.reaped_this_poll += 1;
        let buf = c.buf;
        if !c.status.is_success() {
            self.io_errors += 1;
            let message = format!(
                "{} error at offset {offset} ({len} bytes) on {}: {}",
                DIR_NAMES[dir], self.plan.device_uri, c.status
            );
            self.note(message);
            if claimed && let Some(g) = &self.plan.generations {
                // A failed write leaves the unit's contents unknown.
                g.release(offset, if dir == WRITE { 0 } else { generation });
            }
            // Like fio: the first I/O error ends the job unless continue_on_error covers it.
            let go_on = &self.plan.spec.continue_on_error;
            let continues = if dir == READ { go_on.read } else { go_on.write };
            if !continues && matches!(self.phase, Phase::Ramp | Phase::Run | Phase::Verify) {
                self.phase = Phase::Drain;
            }
        } else {
            let lat_ns = now_ns.saturating_sub(submit_ns);
            let stats = &mut self.meter.interval[dir];
            stats.ios += 1;
            stats.bytes += len;
            stats.slat.record(doorbell_ns.saturating_sub(submit_ns));
            stats.clat.record(now_ns.saturating_sub(doorbell_ns));
            stats.lat.record(lat_ns);
            self.meter.ios[dir] += 1;
            self.meter.bytes[dir] += len;
            if self.extras {
                self.complete_extras(dir, offset, len, [submit_ns, doorbell_ns, now_ns]);
            }
        }
        let command = Command {
            dir,
            offset,
            len,
            generation,
            claimed,
            verify_read,
        };
        self.finish_completion(index, buf, c.status.is_success(), command);
    }

    /// Per-I/O bookkeeping only some jobs have: per-I/O logs, the latency target's window, think
    /// counts, marks in other jobs' verify tables.
    #[cold]
    #[inline(never)]
    fn complete_extras(&mut self, dir: usize, offset: u64, len: u64, times: [u64; 3]) {
        let [submit_ns, doorbell_ns, now_ns] = times;
        let lat_ns = now_ns.saturating_sub(submit_ns);
        self.rate_cycle_bytes[dir] += len;
        {
            if self.log_every_io && self.phase != Phase::Ramp {
                self.io_log.push(super::stats::IoRecord {
                    end_ns: now_ns.saturating_sub(self.meter.measure_start_ns),
                    dir: dir as u8,
                    bytes: len as u32,
                    offset,
                    slat_ns: doorbell_ns.saturating_sub(submit_ns),
                    clat_ns: now_ns.saturating_sub(doorbell_ns),
                    lat_ns,
                });
            }
            if let Some(target) = self.plan.spec.latency_target {
                self.window_ios += 1;
                if lat_ns > target.as_nanos() as u64 {
                    self.window_over += 1;
                }
            }
            if !self.plan.spec.thinktime.is_zero() && !self.plan.spec.thinktime_issue {
                self.count_think_block();
            }
            if dir != READ {
                for table in &self.plan.foreign_tables {
                    table.forget(offset, len);
                }
            }
        }
    }

    /// A successful command's verify work (claims released, reads checked) and the slot's
    /// return.
    #[inline]
    fn finish_completion(
        &mut self,
        index: usize,
        mut buf: Option<bluepoll_nvme::DmaBuf>,
        ok: bool,
        command: Command,
    ) {
        let Command {
            dir,
            offset,
            len,
            generation,
            claimed,
            verify_read,
        } = command;
        {
            if self.verify && ok {
                if claimed && let Some(g) = &self.plan.generations {
                    g.release(offset, generation);
                }
                match (dir, buf.as_deref()) {
                    (WRITE, _) => {
                        self.written
                            .mark((offset - self.plan.range_start) / self.bs);
                        let backlog = self.plan.spec.verify_backlog;
                        if backlog > 0 && self.plan.spec.do_verify {
                            self.backlog.push(offset);
                            self.backlog_due |= self.backlog.len() as u64 >= backlog;
                        }
                    }
                    (TRIM, _) => {}
                    (_, Some(data)) => {
                        let expected = generation;
                        // Mixed jobs check only what this run wrote; pure reads check everything.
                        let foreign = self
                            .plan
                            .generations
                            .as_ref()
                            .is_some_and(|g| g.foreign(offset));
                        let must_check =
                            !foreign && (verify_read || !self.mode.writes() || expected != 0);
                        if must_check {
                            let failed = check_unit(
                                &self.plan.spec,
                                &data[..len as usize],
                                offset,
                                expected,
                            );
                            if let Some(failure) = failed {
                                self.verify_errors += 1;
                                let message = format!(
                                    "verify: {} offset {offset} ({} bytes): {failure}",
                                    self.plan.device_uri, self.bs
                                );
                                self.note(message);
                                if self.plan.spec.verify_fatal
                                    && !self.plan.spec.continue_on_error.verify
                                {
                                    self.phase = Phase::Drain;
                                }
                            }
                        }
                    }
                    (_, None) => {}
                }
            }
        }
        if let Some(slot) = self.slots.get_mut(index) {
            slot.buf = buf.take();
        }
        self.free.push(index as u32);
    }

    /// Moves the job through its phases and takes interval samples; issues nothing.
    fn advance(&mut self, now_ns: u64, stop: bool) {
        if self.reaped_this_poll > 0 {
            self.complete_dist[batch_bucket(self.reaped_this_poll)] += 1;
            self.reaped_this_poll = 0;
        }
        let stop = stop || self.plan.group_exit.load(Ordering::Relaxed);
        if self.phase == Phase::Pending {
            if stop {
                self.finish(now_ns);
                return;
            }
            if self.may_start(now_ns) {
                self.start(now_ns);
            }
        }
        if self.phase == Phase::Ramp && (stop || now_ns >= self.ramp_end_ns) {
            self.begin_measuring(now_ns);
        }
        if self.phase == Phase::Run {
            let expired = self.deadline_ns.is_some_and(|d| now_ns >= d);
            let replayed = self
                .plan
                .replay
                .as_ref()
                .is_some_and(|r| self.replay_cursor >= r.len());
            if stop || expired || self.budget == Some(0) || self.ios_left == Some(0) || replayed {
                self.phase = Phase::Drain;
            } else if self.extras {
                self.check_rate_min(now_ns);
                self.adjust_depth(now_ns);
                self.check_steady_state(now_ns);
            }
        }
        if self.phase == Phase::Drain
            && self.plan.spec.end_fsync
            && !self.end_sync_sent
            && !stop
            && self.in_flight == 0
            && self.sync == SyncState::Idle
            && self.mode.writes()
            && self.plan.flush
            && self.io_errors == 0
        {
            // end_fsync: one Flush once the writes are done, timed like fsync=N's.
            self.end_sync_sent = true;
            self.sync = SyncState::Wanted;
        }
        if self.phase == Phase::Verify && stop {
            self.phase = Phase::Drain;
        }
        if self.phase == Phase::Drain
            && self.sync == SyncState::Wanted
            && (stop || self.io_errors > 0)
        {
            // Stopped or failed: the Flush that was due is not sent.
            self.sync = SyncState::Idle;
        }
        if self.phase == Phase::Drain && self.in_flight == 0 && self.sync == SyncState::Idle {
            if self.verify_start_ns.is_none() {
                self.run_end_ns = now_ns;
            }
            let wants_verify = self.verify
                && self.plan.spec.do_verify
                && !self.mode.reads()
                && self.verify_start_ns.is_none()
                && !stop
                && self.io_errors == 0;
            if wants_verify {
                self.verify_start_ns = Some(now_ns);
                self.phase = Phase::Verify;
            } else {
                self.finish(now_ns);
                return;
            }
        }
        if matches!(self.phase, Phase::Run | Phase::Drain | Phase::Verify)
            && self.meter.sample_due(now_ns)
        {
            self.meter.take_sample(now_ns);
        }
    }

    /// `rate_min`/`rate_iops_min`: a direction that moved fewer bytes than asked over a whole
    /// `rate_cycle` ends the job with an error, as fio's does.
    fn check_rate_min(&mut self, now_ns: u64) {
        let cycle = self.plan.spec.rate_cycle.as_nanos() as u64;
        if cycle == 0 || now_ns < self.rate_cycle_start_ns + cycle {
            return;
        }
        let spec = Arc::clone(&self.plan.spec);
        let secs = (now_ns - self.rate_cycle_start_ns) as f64 / 1e9;
        for (d, dir_name) in DIR_NAMES.iter().enumerate() {
            let wanted = spec.rate_min[d] as f64
                + spec.rate_iops_min[d] as f64 * self.pattern.max_len().min(self.bs) as f64;
            let got = self.rate_cycle_bytes[d] as f64 / secs;
            if wanted > 0.0 && got < wanted && self.in_direction(d) {
                self.io_errors += 1;
                let message = format!(
                    "{dir_name} rate {got:.0} B/s fell below rate_min {wanted:.0} B/s over \
                     {secs:.1} s"
                );
                self.note(message);
                self.phase = Phase::Drain;
            }
        }
        self.rate_cycle_bytes = [0; DIRS];
        self.rate_cycle_start_ns = now_ns;
    }

    /// `ss`: once a second after `ss_ramp`, the second's IOPS or bandwidth joins the rolling
    /// window of `ss_dur`; a full window that meets the criterion ends the job, as fio's does.
    fn check_steady_state(&mut self, now_ns: u64) {
        let spec = &self.plan.spec;
        let Some(criterion) = spec.steady_state else {
            return;
        };
        let window = spec.ss_dur.as_secs() as usize;
        if window == 0 || now_ns < self.ss_next_ns {
            return;
        }
        self.ss_next_ns += 1_000_000_000;
        let counts = (
            self.meter.ios.iter().sum::<u64>(),
            self.meter.bytes.iter().sum::<u64>(),
        );
        // The first reading, at the end of the ramp, is the baseline of the first second.
        let Some((last_ios, last_bytes)) = self.ss_last.replace(counts) else {
            return;
        };
        let sample = if criterion.bandwidth {
            (counts.1 - last_bytes) as f64
        } else {
            (counts.0 - last_ios) as f64
        };
        self.ss_samples.push_back(sample);
        if self.ss_samples.len() > window {
            self.ss_samples.pop_front();
        }
        let samples: Vec<f64> = self.ss_samples.iter().copied().collect();
        if samples.len() == window && super::options::steady(&criterion, &samples) {
            let message = format!(
                "steady state reached: the last {window} s met {}{}:{}{}",
                if criterion.bandwidth { "bw" } else { "iops" },
                if criterion.slope { "_slope" } else { "" },
                criterion.limit,
                if criterion.percent { "%" } else { "" }
            );
            self.note(message);
            self.phase = Phase::Drain;
        }
    }

    fn in_direction(&self, d: usize) -> bool {
        [self.mode.reads(), self.mode.writes(), self.mode.trims()][d]
    }

    /// `latency_target`: at the end of each `latency_window`, a window whose completions met the
    /// target at `latency_percentile` lets the depth grow by one, up to `iodepth`; one that did
    /// not halves it. The depth settles at the deepest queue the device serves within target.
    fn adjust_depth(&mut self, now_ns: u64) {
        let spec = &self.plan.spec;
        let Some(_) = spec.latency_target else {
            return;
        };
        let window = spec.latency_window.as_nanos().max(1) as u64;
        if now_ns < self.window_start_ns + window || self.window_ios == 0 {
            return;
        }
        let within = 100.0 * (self.window_ios - self.window_over) as f64 / self.window_ios as f64;
        self.depth_limit = if within >= spec.latency_percentile {
            (self.depth_limit + 1).min(spec.iodepth)
        } else {
            (self.depth_limit / 2).max(1)
        };
        self.window_start_ns = now_ns;
        self.window_ios = 0;
        self.window_over = 0;
    }

    /// Counts one block toward `thinktime_blocks`; the think starts once enough are counted.
    fn count_think_block(&mut self) {
        self.think_count += 1;
        if self.think_count >= self.plan.spec.thinktime_blocks {
            self.think_count = 0;
            self.think_wanted = true;
        }
    }

    /// Whether thinking keeps the job from issuing now. With `thinktime_blocks_type=complete`
    /// (the default) the job first waits for what it has in flight, as fio quiesces.
    fn thinking(&mut self, now_ns: u64) -> bool {
        let spec = &self.plan.spec;
        if spec.thinktime.is_zero() {
            return false;
        }
        if let Some(until) = self.think_until_ns {
            if now_ns < until {
                return true;
            }
            self.think_until_ns = None;
            self.iotime_start_ns = now_ns;
        }
        let iotime = spec.thinktime_iotime.as_nanos() as u64;
        if iotime > 0 && now_ns >= self.iotime_start_ns + iotime {
            self.think_wanted = true;
        }
        if self.think_wanted {
            if !spec.thinktime_issue && self.in_flight > 0 {
                return true;
            }
            self.think_wanted = false;
            self.think_until_ns = Some(now_ns + spec.thinktime.as_nanos() as u64);
            return true;
        }
        false
    }

    /// Whether the flow group holds this job back: its share of the group's I/Os is above its
    /// share of the group's weight.
    fn flow_blocked(&self) -> bool {
        let Some(group) = &self.plan.flow else {
            return false;
        };
        let total = group.ios.load(Ordering::Relaxed);
        let weight = group.weight.load(Ordering::Relaxed);
        if total == 0 || weight == 0 {
            return false;
        }
        let mine = self.plan.spec.flow.unsigned_abs();
        self.flow_ios as f64 / total as f64 > mine as f64 / weight as f64
    }

    /// The next I/O of the job, from the replayed log or the pattern.
    #[inline]
    fn draw(&mut self) -> Option<NextIo> {
        if self.held.is_some() {
            return self.held.take();
        }
        match &self.plan.replay {
            Some(log) => {
                let io = log.get(self.replay_cursor).copied();
                self.replay_cursor += 1;
                io
            }
            None => Some(self.pattern.next_io()),
        }
    }

    /// Rate caps: whether an I/O of `len` bytes in `dir` may go now; if so, books its slot.
    fn rate_allows(&mut self, dir: usize, len: u64, now_ns: u64) -> bool {
        let per_byte = self.rate_ns_per_byte[dir];
        let per_io = self.rate_ns_per_io[dir];
        if per_byte == 0.0 && per_io == 0.0 {
            return true;
        }
        if now_ns < self.rate_next_ns[dir] {
            return false;
        }
        let mean = (per_byte * len as f64).max(per_io);
        let gap = match self.plan.spec.rate_process {
            RateProcess::Linear => mean,
            // Exponential gaps with the same mean: a Poisson arrival process.
            RateProcess::Poisson => {
                let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                -mean * (1.0 - u).ln()
            }
        };
        // Never bank more than a second of credit after a stall.
        let base = self.rate_next_ns[dir].max(now_ns.saturating_sub(1_000_000_000));
        self.rate_next_ns[dir] = base + gap as u64;
        true
    }

    /// Queues up to one batch (`iodepth_batch_submit`) of commands; returns how many.
    fn issue_batch(
        &mut self,
        submit_ns: u64,
        qp: &mut QueuePair,
        pending: &mut Vec<u64>,
        job_index: usize,
    ) -> usize {
        match self.phase {
            Phase::Ramp | Phase::Run => self.issue(submit_ns, qp, pending, job_index),
            Phase::Verify => self.issue_verify_reads(submit_ns, qp, pending, job_index),
            // The Flush the last writes made due still goes out, as fio's does.
            Phase::Drain if self.sync == SyncState::Wanted => {
                let queued = pending.len();
                self.sync_blocks(submit_ns, qp, pending, job_index);
                pending.len() - queued
            }
            Phase::Pending | Phase::Drain | Phase::Done => 0,
        }
    }

    /// With verify on, two commands to one unit at once would race (which lands last?), so a
    /// command first reserves its unit, as fio's serialize_overlap does: a claim in the shared
    /// generation table keeps out every job on the device; where there is no table, only this
    /// job's own commands are checked. Returns the unit's last generation and whether a claim was
    /// taken, or None if the unit is busy.
    fn reserve(&self, offset: u64) -> Option<(u64, bool)> {
        if !self.verify {
            return Some((0, false));
        }
        if let Some(g) = &self.plan.generations {
            match g.claim(offset) {
                Claim::Claimed(generation) => return Some((generation, true)),
                Claim::Busy => return None,
                Claim::Untracked => {}
            }
        }
        let busy = self.slots.iter().any(|s| s.in_flight && s.offset == offset);
        (!busy).then_some((0, false))
    }

    /// Gives back a claim taken for a command that was not submitted after all.
    fn unreserve(&self, offset: u64, claimed: bool, generation: u64) {
        if claimed && let Some(g) = &self.plan.generations {
            g.release(offset, generation);
        }
    }

    /// With a Flush due: sends it once nothing else is in flight. True while it blocks issuing.
    fn sync_blocks(
        &mut self,
        now_ns: u64,
        qp: &mut QueuePair,
        pending: &mut Vec<u64>,
        job_index: usize,
    ) -> bool {
        match self.sync {
            SyncState::Idle => false,
            SyncState::InFlight { .. } => true,
            SyncState::Wanted => {
                if self.in_flight == 0 {
                    let tag = ((job_index as u64) << 32) | SYNC_SLOT;
                    if qp.submit(IoCmd::flush(tag)).is_ok() {
                        self.sync = SyncState::InFlight { submit_ns: now_ns };
                        // Queued: the caller rings the doorbell for it.
                        pending.push(tag);
                    }
                }
                true
            }
        }
    }

    fn issue(
        &mut self,
        now_ns: u64,
        qp: &mut QueuePair,
        pending: &mut Vec<u64>,
        job_index: usize,
    ) -> usize {
        if self.backlog_due {
            return self.issue_backlog_reads(now_ns, qp, pending, job_index);
        }
        let mut issued = 0usize;
        let queued = pending.len();
        if self.sync_blocks(now_ns, qp, pending, job_index) {
            // 1 when the Flush was just queued, so its doorbell is rung this round.
            return pending.len() - queued;
        }
        while self.in_flight < self.depth_limit
            && self.budget != Some(0)
            && self.ios_left != Some(0)
            && issued < self.batch as usize
        {
            let Some(&slot_index) = self.free.last() else {
                break;
            };
            if self.paced && (self.thinking(now_ns) || self.flow_blocked()) {
                break;
            }
            let Some(io) = self.draw() else {
                break;
            };
            if self.paced && !self.rate_allows(io.dir, io.len, now_ns) {
                self.held = Some(io);
                break;
            }
            let NextIo { dir, offset, len } = io;
            let Some((last, claimed)) = self.reserve(offset) else {
                // Another command holds the unit (verify): try this I/O again next round.
                self.held = Some(io);
                break;
            };
            let generation = match dir {
                WRITE => last + 1,
                // A trimmed unit's contents are unknown to verify from now on.
                TRIM => 0,
                _ => last,
            };
            if self.extras && dir != READ {
                for table in &self.plan.foreign_tables {
                    table.forget(offset, len);
                }
                if dir == TRIM
                    && let Some(g) = &self.plan.generations
                {
                    g.forget(offset, len);
                }
            }
            let command = Command {
                dir,
                offset,
                len,
                generation,
                claimed,
                verify_read: false,
            };
            if !self.submit(slot_index, command, now_ns, qp, pending, job_index) {
                self.unreserve(offset, claimed, last);
                self.held = Some(io);
                break;
            }
            issued += 1;
            if self.extras {
                self.issue_extras(dir, offset, len, now_ns);
            }
            if let Some(budget) = &mut self.budget {
                *budget = budget.saturating_sub(len + self.pattern.skip_bytes());
            }
            if let Some(left) = &mut self.ios_left {
                *left -= 1;
            }
            if dir == WRITE && self.plan.spec.fsync > 0 && self.plan.flush {
                self.writes_since_sync += 1;
                if self.writes_since_sync >= self.plan.spec.fsync {
                    self.writes_since_sync = 0;
                    self.sync = SyncState::Wanted;
                    break;
                }
            }
        }
        self.account_batch(issued);
        issued
    }

    /// Per-I/O bookkeeping at issue only some jobs have: the trace, the flow group's count,
    /// think counts by issue.
    #[cold]
    #[inline(never)]
    fn issue_extras(&mut self, dir: usize, offset: u64, len: u64, now_ns: u64) {
        if let Some(log) = &mut self.plan.iolog {
            let action = [
                super::iolog::Action::Read,
                super::iolog::Action::Write,
                super::iolog::Action::Trim,
            ][dir];
            let at = now_ns.saturating_sub(self.meter.measure_start_ns);
            if let Err(e) = log.record(action, offset, len, at) {
                self.plan.iolog = None;
                self.io_errors += 1;
                self.note(format!("write_iolog: {e}"));
            }
        }
        if let Some(group) = &self.plan.flow {
            self.flow_ios += 1;
            group.ios.fetch_add(1, Ordering::Relaxed);
        }
        if !self.plan.spec.thinktime.is_zero() && self.plan.spec.thinktime_issue {
            self.count_think_block();
        }
    }

    /// `verify_backlog`: reads back what was written since the last check, then lets writing
    /// go on.
    fn issue_backlog_reads(
        &mut self,
        now_ns: u64,
        qp: &mut QueuePair,
        pending: &mut Vec<u64>,
        job_index: usize,
    ) -> usize {
        let mut issued = 0;
        while self.in_flight < self.iodepth && issued < self.batch as usize {
            let Some(&slot_index) = self.free.last() else {
                break;
            };
            let Some(&offset) = self.backlog.last() else {
                break;
            };
            if !self.submit_check_read(slot_index, offset, now_ns, qp, pending, job_index) {
                break;
            }
            self.backlog.pop();
            issued += 1;
        }
        if self.backlog.is_empty() {
            self.backlog_due = false;
        }
        self.account_batch(issued);
        issued
    }

    /// Reads back one unit this job wrote, always checked (the verify pass, `verify_backlog`);
    /// false when the unit is busy or the queue full, with nothing taken.
    fn submit_check_read(
        &mut self,
        slot_index: u32,
        offset: u64,
        now_ns: u64,
        qp: &mut QueuePair,
        pending: &mut Vec<u64>,
        job_index: usize,
    ) -> bool {
        let Some((last, claimed)) = self.reserve(offset) else {
            return false;
        };
        let command = Command {
            dir: READ,
            offset,
            len: self.bs,
            generation: last,
            claimed,
            verify_read: true,
        };
        let submitted = self.submit(slot_index, command, now_ns, qp, pending, job_index);
        if !submitted {
            self.unreserve(offset, claimed, last);
        }
        submitted
    }

    /// The verify pass of a write job: read back every unit this run wrote, in order.
    fn issue_verify_reads(
        &mut self,
        now_ns: u64,
        qp: &mut QueuePair,
        pending: &mut Vec<u64>,
        job_index: usize,
    ) -> usize {
        let mut issued = 0usize;
        let mut scanned = 0;
        while self.in_flight < self.iodepth
            && self.verify_cursor < self.plan.units
            && scanned < 4096
        {
            let Some(&slot_index) = self.free.last() else {
                break;
            };
            let unit = self.verify_cursor;
            let offset = self.plan.range_start + unit * self.bs;
            scanned += 1;
            if !self.written.contains(unit) {
                self.verify_cursor += 1;
                continue;
            }
            // Another job's command on the unit, or a full queue: try again at the next poll.
            if !self.submit_check_read(slot_index, offset, now_ns, qp, pending, job_index) {
                break;
            }
            self.verify_cursor += 1;
            issued += 1;
        }
        self.account_batch(issued);
        if self.verify_cursor >= self.plan.units {
            self.phase = Phase::Drain;
        }
        issued
    }

    fn account_batch(&mut self, issued: usize) {
        if issued > 0 {
            self.depth_dist[depth_bucket(self.in_flight)] += issued as u64;
            self.submit_dist[batch_bucket(issued)] += 1;
        }
    }

    fn submit(
        &mut self,
        slot_index: u32,
        command: Command,
        now_ns: u64,
        qp: &mut QueuePair,
        pending: &mut Vec<u64>,
        job_index: usize,
    ) -> bool {
        let Command {
            dir,
            offset,
            len,
            generation,
            claimed,
            verify_read,
        } = command;
        let slot = &mut self.slots[slot_index as usize];
        let Some(mut buf) = slot.buf.take() else {
            return false;
        };
        if dir == WRITE && self.verify {
            fill_unit(
                &self.plan.spec,
                &mut buf[..len as usize],
                offset,
                generation,
            );
        }
        let tag = ((job_index as u64) << 32) | slot_index as u64;
        let blocks = if len == self.bs {
            self.blocks
        } else {
            (len >> self.block_shift) as u32
        };
        let (opcode, buf) = match dir {
            READ => (Opcode::Read, Some(buf)),
            WRITE => (Opcode::Write, Some(buf)),
            // A trim moves no data: the buffer stays with the slot.
            _ => {
                slot.buf = Some(buf);
                (Opcode::Trim, None)
            }
        };
        let cmd = IoCmd {
            opcode,
            lba: offset >> self.block_shift,
            blocks,
            buf,
            buf_offset: 0,
            tag,
        };
        if let Err(QueueFull(cmd)) = qp.submit(cmd) {
            if cmd.buf.is_some() {
                slot.buf = cmd.buf;
            }
            return false;
        }
        slot.in_flight = true;
        slot.offset = offset;
        slot.len = len;
        slot.dir = dir;
        slot.generation = generation;
        slot.claimed = claimed;
        slot.verify_read = verify_read;
        slot.submit_ns = now_ns;
        slot.doorbell_ns = now_ns;
        self.free.pop();
        self.in_flight += 1;
        pending.push(tag);
        true
    }

    fn finish(&mut self, now_ns: u64) {
        if let Some(log) = self.plan.iolog.take()
            && let Err(e) = log.finish()
        {
            self.io_errors += 1;
            self.note(format!("write_iolog: {e}"));
        }
        if self.plan.spec.exitall {
            self.plan.group_exit.store(true, Ordering::Relaxed);
        }
        self.meter.take_sample(now_ns);
        self.cpu_used = thread_cpu_usage().since(&self.cpu_start);
        self.finish_ns = now_ns;
        self.phase = Phase::Done;
    }

    fn publish(&self) {
        let p = &self.plan.progress;
        for d in 0..DIRS {
            p.ios[d].store(self.meter.ios[d], Ordering::Relaxed);
            p.bytes[d].store(self.meter.bytes[d], Ordering::Relaxed);
        }
        if self.phase == Phase::Done {
            p.finished.store(true, Ordering::Release);
        }
    }

    fn result(&mut self, reactor: usize, cpu: usize) -> JobResult {
        let run_ns = self.run_end_ns.saturating_sub(self.meter.measure_start_ns);
        let verify_ns = self
            .verify_start_ns
            .map_or(0, |s| self.finish_ns.saturating_sub(s));
        JobResult {
            spec: Arc::clone(&self.plan.spec),
            number: self.plan.number,
            group: self.plan.group,
            device_uri: self.plan.device_uri.clone(),
            reactor,
            cpu,
            dirs: self.meter.total.clone(),
            dir_runtime_ns: [
                if self.mode.reads() { run_ns } else { 0 } + verify_ns,
                if self.mode.writes() { run_ns } else { 0 },
                if self.mode.trims() { run_ns } else { 0 },
            ],
            runtime_ns: self.finish_ns.saturating_sub(self.meter.measure_start_ns),
            samples: self.meter.samples.clone(),
            cpu_usage: self.cpu_used,
            depth_dist: self.depth_dist,
            submit_dist: self.submit_dist,
            complete_dist: self.complete_dist,
            io_errors: self.io_errors,
            verify_errors: self.verify_errors,
            messages: self.messages.clone(),
            syncs: {
                let mut s = self.meter.syncs.clone();
                s.settle();
                s
            },
            errno: 0,
            io_log: std::mem::take(&mut self.io_log),
        }
    }
}

struct Shard {
    reactor: usize,
    cpu: usize,
    qps: Vec<QueuePair>,
    qp_uris: Vec<String>,
    /// Tags queued on each queue pair since its last poll, to stamp with the doorbell time.
    pending: Vec<Vec<u64>>,
    jobs: Vec<JobRun>,
    completions: Vec<Completion>,
    /// Restarted at the first poll, so building the shard never counts as runtime.
    clock: Clock,
    started: bool,
    control: Arc<RunControl>,
    results: mpsc::Sender<ShardReport>,
    _pool: DmaPool,
}

impl Shard {
    fn new(cx: &mut Context<'_>, plan: ShardPlan) -> Result<Shard, String> {
        let ShardPlan {
            devices,
            jobs,
            control,
            results,
        } = plan;
        let mut depth = vec![0u32; devices.len()];
        for job in &jobs {
            depth[job.device] += job.spec.iodepth;
        }
        let mut qps = Vec::new();
        for (device, depth) in devices.iter().zip(&depth) {
            let qp = device
                .queue_pair((*depth).max(1))
                .map_err(|e| format!("cannot create a queue pair on {}: {e}", device.info().uri))?;
            qps.push(qp);
        }
        let mut patterns = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let pattern = IoPattern::new(&job.spec, job.range_start, job.range_len, job.seed)
                .map_err(|e| format!("job '{}': {e}", job.spec.name))?;
            patterns.push(pattern);
        }
        let buf_size = patterns
            .iter()
            .zip(&jobs)
            .map(|(p, j)| {
                let replayed = j
                    .replay
                    .as_ref()
                    .and_then(|r| r.iter().map(|io| io.len).max());
                p.max_len().max(replayed.unwrap_or(0)) as usize
            })
            .max()
            .unwrap_or(4096);
        let count: usize = jobs.iter().map(|j| j.spec.iodepth as usize).sum();
        let pool = DmaPool::new(buf_size, count.max(1))
            .map_err(|e| format!("cannot allocate I/O buffers: {e}"))?;
        for qp in &mut qps {
            // Registration is an optimisation; a backend that cannot register still works.
            let _ = qp.register_pool(&pool);
        }
        let mut runs = Vec::with_capacity(jobs.len());
        let mut fill = Rng::new(0x0b1e_55ed);
        for (job, pattern) in jobs.into_iter().zip(patterns) {
            let mut bufs = Vec::with_capacity(job.spec.iodepth as usize);
            for _ in 0..job.spec.iodepth {
                let mut buf = pool.alloc().map_err(|e| e.to_string())?;
                // Written data is incompressible noise, never all zeroes, as fio's buffers are.
                for chunk in buf.chunks_mut(8) {
                    chunk.copy_from_slice(&fill.next_u64().to_le_bytes()[..chunk.len()]);
                }
                bufs.push(buf);
            }
            let qp = job.device;
            runs.push(JobRun::new(job, qp, bufs, pattern));
        }
        Ok(Shard {
            reactor: cx.index(),
            cpu: cx.cpu(),
            qp_uris: devices.iter().map(|d| d.info().uri.clone()).collect(),
            pending: vec![Vec::new(); qps.len()],
            qps,
            jobs: runs,
            completions: Vec::with_capacity(count.max(1)),
            clock: Clock::start(),
            started: false,
            control,
            results,
            _pool: pool,
        })
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    fn fail_queue_pair(&mut self, qp: usize, error: String) {
        for job in self
            .jobs
            .iter_mut()
            .filter(|j| j.qp == qp && j.phase != Phase::Done)
        {
            job.io_errors += 1;
            job.note(format!(
                "queue pair on {} failed: {error}",
                job.plan.device_uri
            ));
            // Its in-flight commands are gone with the queue pair; what they did is unknown.
            for slot in job.slots.iter_mut().filter(|s| s.in_flight) {
                slot.in_flight = false;
                if slot.claimed
                    && let Some(g) = &job.plan.generations
                {
                    g.release(slot.offset, 0);
                }
                slot.claimed = false;
            }
            job.in_flight = 0;
            job.sync = SyncState::Idle;
            job.phase = Phase::Drain;
        }
    }

    fn report(&mut self) {
        let (reactor, cpu) = (self.reactor, self.cpu);
        let jobs = self
            .jobs
            .iter_mut()
            .map(|j| j.result(reactor, cpu))
            .collect();
        let queue_pairs = self
            .qp_uris
            .iter()
            .cloned()
            .zip(self.qps.iter().map(|q| *q.stats()))
            .collect();
        let _ = self.results.send(ShardReport {
            reactor: self.reactor,
            cpu: self.cpu,
            jobs,
            queue_pairs,
            error: None,
        });
    }
}

impl Poller for Shard {
    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll {
        if !self.started {
            self.clock = Clock::start();
            self.started = true;
            for job in &mut self.jobs {
                job.schedule(0);
            }
        }
        let stop = self.control.stop.load(Ordering::Relaxed);
        let doorbell_ns = self.now_ns();
        let mut broken = Vec::new();
        for (q, qp) in self.qps.iter_mut().enumerate() {
            for tag in self.pending[q].drain(..) {
                let job = &mut self.jobs[(tag >> 32) as usize];
                // A Flush (SYNC_SLOT) has no slot: its latency runs from submit.
                if let Some(slot) = job.slots.get_mut((tag & 0xffff_ffff) as usize) {
                    slot.doorbell_ns = doorbell_ns;
                }
            }
            if let Err(e) = qp.poll(usize::MAX, &mut self.completions) {
                broken.push((q, e.to_string()));
            }
        }
        // Completions a queue pair returned before it broke are real; account them first.
        let reaped_ns = self.now_ns();
        for c in self.completions.drain(..) {
            let job = (c.tag >> 32) as usize;
            if let Some(job) = self.jobs.get_mut(job) {
                job.complete(c, reaped_ns);
            }
        }
        for (q, error) in broken {
            self.fail_queue_pair(q, error);
        }
        for job in self.jobs.iter_mut().filter(|j| j.phase != Phase::Done) {
            job.advance(reaped_ns, stop);
        }
        // Issue in rounds of at most one batch per job, ringing each queue pair's doorbell after
        // every round: fio's iodepth_batch_submit.
        let mut broken = Vec::new();
        let mut submit_ns = self.now_ns();
        loop {
            let mut issued = 0;
            for (index, job) in self.jobs.iter_mut().enumerate() {
                issued += job.issue_batch(
                    submit_ns,
                    &mut self.qps[job.qp],
                    &mut self.pending[job.qp],
                    index,
                );
            }
            if issued == 0 {
                break;
            }
            let doorbell_ns = self.now_ns();
            for (q, qp) in self.qps.iter_mut().enumerate() {
                if self.pending[q].is_empty() {
                    continue;
                }
                for tag in self.pending[q].drain(..) {
                    let job = &mut self.jobs[(tag >> 32) as usize];
                    // A Flush (SYNC_SLOT) has no slot: its latency runs from submit.
                    if let Some(slot) = job.slots.get_mut((tag & 0xffff_ffff) as usize) {
                        slot.doorbell_ns = doorbell_ns;
                    }
                }
                // max = 0: hand over what is queued, reap nothing yet.
                if let Err(e) = qp.poll(0, &mut self.completions) {
                    broken.push((q, e.to_string()));
                }
            }
            // After the doorbells (which may do the work: mem copies, io_uring_enter), so the
            // next round's slat does not include this round's doorbell.
            submit_ns = self.now_ns();
        }
        for (q, error) in broken {
            self.fail_queue_pair(q, error);
        }
        let mut all_done = true;
        for job in &self.jobs {
            if job.phase == Phase::Done
                && job.plan.spec.exitall
                && job.plan.spec.exit_what == super::options::ExitWhat::All
            {
                self.control.exit_all.store(true, Ordering::Relaxed);
            }
            job.publish();
            all_done &= job.phase == Phase::Done;
        }
        if all_done {
            self.report();
            return Poll::Done;
        }
        // The last clock reading is recent enough to judge dormancy by; jobs with commands in
        // flight are never dormant, so a busy shard stops at the first job.
        if self
            .jobs
            .iter()
            .all(|j| j.in_flight == 0 && j.dormant(submit_ns))
        {
            return Poll::Idle;
        }
        Poll::Busy
    }
}

/// Writes what the job's `verify` mode puts in one I/O of `block.len()` bytes at `offset`: a
/// header (with its digest) every `verify_interval` bytes, or the pattern.
pub fn fill_unit(spec: &JobSpec, block: &mut [u8], offset: u64, generation: u64) {
    match spec.verify {
        VerifyMode::None => {}
        VerifyMode::Pattern => {
            verify::fill_pattern(block, spec.verify_pattern.as_deref().unwrap_or(&[]))
        }
        VerifyMode::Header(digest) => {
            let unit = spec.verify_unit(block.len() as u64) as usize;
            for (k, chunk) in block.chunks_mut(unit).enumerate() {
                verify::fill_with(chunk, offset + (k * unit) as u64, generation, digest);
            }
        }
    }
}

/// Checks one I/O read at `offset` against the job's `verify` mode; the first failure.
fn check_unit(
    spec: &JobSpec,
    block: &[u8],
    offset: u64,
    expected: u64,
) -> Option<verify::VerifyFailure> {
    match spec.verify {
        VerifyMode::None => None,
        VerifyMode::Pattern => {
            verify::check_pattern(block, spec.verify_pattern.as_deref().unwrap_or(&[])).err()
        }
        VerifyMode::Header(_) => {
            let unit = spec.verify_unit(block.len() as u64) as usize;
            block.chunks(unit).enumerate().find_map(|(k, chunk)| {
                verify::check(chunk, offset + (k * unit) as u64, expected).err()
            })
        }
    }
}

/// The job's time budget for ETA display: ramp plus runtime, or None when bounded by size.
pub fn planned_duration(spec: &JobSpec) -> Option<Duration> {
    spec.runtime.map(|r| r + spec.ramp_time)
}
