//! Results as fio prints them: the text summary, `--output-format=json` / `json+`, and the
//! terse line (`terse`, `--minimal`).
//!
//! The JSON has fio 3.33's shape and key order (top level `fio version`, `jobs[]`; per job
//! `read`/`write`/`trim`/`sync` with `iops`, `bw`, `clat_ns.percentile["99.000000"]`, …) so tools
//! written for fio read it. What fio has no field for goes under one extra key, `bluepoll`.
//! `json+` adds, where fio does, each latency histogram as `bins` in fio's buckets ([`plat`]),
//! which `fio_jsonplus_clat2csv` turns into CSV. The terse line is fio's version 3, field for
//! field (HOWTO "Terse output"), so scripts that split fio's `--minimal` output read it.
//!
//! [`plat`]: super::plat

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::engine::{DIR_NAMES, DIRS, JobResult, READ, TRIM, WRITE};
use super::options::IoEngine;
use super::plat;
use super::stats::{DirStats, LatencyStat, Spread};
use bluepoll_base::units::{format_bytes, format_bytes_decimal, format_count};
use bluepoll_nvme::QueuePairStats;
use bluepoll_reactor::ReactorStats;

/// fio exits jobs with these errnos.
const EIO: i32 = 5;
const EILSEQ: i32 = 84;

/// One entry of the report: a job, or a group merged by `group_reporting`.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The job's result, or the group's merged ([`merge`]).
    pub result: JobResult,
    /// How many jobs were merged into it.
    pub jobs: usize,
}

impl Entry {
    /// fio's `err=` for the entry: the errno that ended the job, else EIO after I/O errors,
    /// else EILSEQ after verify failures, else 0.
    pub fn error_code(&self) -> i32 {
        if self.result.errno != 0 {
            self.result.errno
        } else if self.result.io_errors > 0 {
            EIO
        } else if self.result.verify_errors > 0 {
            EILSEQ
        } else {
            0
        }
    }
}

/// Merges several jobs' results into one (fio's group_reporting).
pub fn merge(results: &[JobResult]) -> JobResult {
    let mut merged = results[0].clone();
    for r in &results[1..] {
        for d in 0..super::engine::DIRS {
            merged.dirs[d].merge(&r.dirs[d]);
            merged.dir_runtime_ns[d] = merged.dir_runtime_ns[d].max(r.dir_runtime_ns[d]);
        }
        merged.runtime_ns = merged.runtime_ns.max(r.runtime_ns);
        merged.cpu_usage.user += r.cpu_usage.user;
        merged.cpu_usage.system += r.cpu_usage.system;
        merged.cpu_usage.context_switches += r.cpu_usage.context_switches;
        merged.cpu_usage.major_faults += r.cpu_usage.major_faults;
        merged.cpu_usage.minor_faults += r.cpu_usage.minor_faults;
        for i in 0..7 {
            merged.depth_dist[i] += r.depth_dist[i];
            merged.submit_dist[i] += r.submit_dist[i];
            merged.complete_dist[i] += r.complete_dist[i];
        }
        merged.io_errors += r.io_errors;
        merged.verify_errors += r.verify_errors;
        merged.syncs.merge(&r.syncs);
        if merged.errno == 0 {
            merged.errno = r.errno;
        }
        merged.messages.extend(r.messages.iter().cloned());
        // Interval series add up sample by sample (same interval on every job of a group).
        for (i, s) in r.samples.iter().enumerate() {
            match merged.samples.get_mut(i) {
                Some(m) => {
                    for d in 0..super::engine::DIRS {
                        let (a, b) = (m.dirs[d], s.dirs[d]);
                        let n = (a.ios + b.ios).max(1) as f64;
                        let weighted = |x: f64, y: f64| (x * a.ios as f64 + y * b.ios as f64) / n;
                        m.dirs[d].slat_mean = weighted(a.slat_mean, b.slat_mean);
                        m.dirs[d].clat_mean = weighted(a.clat_mean, b.clat_mean);
                        m.dirs[d].lat_mean = weighted(a.lat_mean, b.lat_mean);
                        m.dirs[d].slat_max = a.slat_max.max(b.slat_max);
                        m.dirs[d].clat_max = a.clat_max.max(b.clat_max);
                        m.dirs[d].lat_max = a.lat_max.max(b.lat_max);
                        m.dirs[d].clat_p50 = a.clat_p50.max(b.clat_p50);
                        m.dirs[d].clat_p99 = a.clat_p99.max(b.clat_p99);
                        m.dirs[d].clat_p999 = a.clat_p999.max(b.clat_p999);
                        m.dirs[d].ios += b.ios;
                        m.dirs[d].bytes += b.bytes;
                    }
                }
                None => merged.samples.push(*s),
            }
        }
    }
    merged
}

/// Groups results into report entries: merged per group where `group_reporting` is set.
pub fn entries(results: &[JobResult]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut groups: Vec<usize> = results.iter().map(|r| r.group).collect();
    groups.dedup();
    for group in groups {
        let members: Vec<JobResult> = results
            .iter()
            .filter(|r| r.group == group)
            .cloned()
            .collect();
        if members.iter().any(|r| r.spec.group_reporting) {
            entries.push(Entry {
                result: merge(&members),
                jobs: members.len(),
            });
        } else {
            entries.extend(members.into_iter().map(|result| Entry { result, jobs: 1 }));
        }
    }
    entries
}

fn per_second(count: u64, runtime_ns: u64) -> f64 {
    if runtime_ns == 0 {
        0.0
    } else {
        count as f64 * 1e9 / runtime_ns as f64
    }
}

/// Per-interval bandwidth (KiB/s) and IOPS spreads of one direction.
fn spreads(r: &JobResult, dir: usize) -> (Spread, Spread) {
    let live = || r.samples.iter().filter(|s| s.duration_ns > 0);
    let bw = Spread::of(live().map(|s| s.dirs[dir].bytes_per_second(s.duration_ns) / 1024.0));
    let iops = Spread::of(live().map(|s| s.dirs[dir].iops(s.duration_ns)));
    (bw, iops)
}

// ---------------------------------------------------------------------------------------------
// JSON

/// fio writes at most this many percentiles (`FIO_IO_U_LIST_MAX_LEN`); terse lines have as many
/// percentile fields.
const MAX_PERCENTILES: usize = 20;

/// One latency's JSON; with `percentiles` (fio writes them for clat and sync) and `bins` (json+),
/// its histogram in fio's buckets as well. Neither appears without samples, as in fio (and
/// `fio_jsonplus_clat2csv` fails on an empty `bins`).
fn lat_json(s: &LatencyStat, percentiles: Option<&[f64]>, bins: bool) -> Value {
    let mut m = Map::new();
    m.insert("min".into(), json!(s.min()));
    m.insert("max".into(), json!(s.max));
    m.insert("mean".into(), json!(round6(s.mean())));
    m.insert("stddev".into(), json!(round6(s.stddev())));
    m.insert("N".into(), json!(s.n));
    if let Some(list) = percentiles.filter(|_| s.n > 0) {
        let mut p = Map::new();
        for &q in list.iter().take(MAX_PERCENTILES) {
            p.insert(format!("{q:.6}"), json!(s.percentile(q)));
        }
        m.insert("percentile".into(), Value::Object(p));
        if bins {
            let b: Map<String, Value> = plat::bins(s)
                .into_iter()
                .map(|(ns, n)| (ns.to_string(), json!(n)))
                .collect();
            m.insert("bins".into(), Value::Object(b));
        }
    }
    Value::Object(m)
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn dir_json(r: &JobResult, dir: usize, group_bw: f64, bins: bool) -> Value {
    let d = &r.dirs[dir];
    let runtime_ns = r.dir_runtime_ns[dir];
    let bw_bytes = per_second(d.bytes, runtime_ns);
    let (bw, iops) = spreads(r, dir);
    let agg = if group_bw > 0.0 {
        bw_bytes / group_bw * 100.0
    } else {
        0.0
    };
    json!({
        "io_bytes": d.bytes,
        "io_kbytes": d.bytes / 1024,
        "bw_bytes": bw_bytes.round() as u64,
        "bw": (bw_bytes / 1024.0).round() as u64,
        "iops": round6(per_second(d.ios, runtime_ns)),
        "runtime": runtime_ns / 1_000_000,
        "total_ios": d.ios,
        "short_ios": 0,
        "drop_ios": 0,
        "slat_ns": lat_json(&d.slat, None, bins),
        "clat_ns": lat_json(&d.clat, Some(&r.spec.percentile_list), bins),
        "lat_ns": lat_json(&d.lat, None, bins),
        "bw_min": bw.min.round() as u64,
        "bw_max": bw.max.round() as u64,
        "bw_agg": round6(agg),
        "bw_mean": round6(bw.mean),
        "bw_dev": round6(bw.stddev),
        "bw_samples": bw.samples,
        "iops_min": iops.min.round() as u64,
        "iops_max": iops.max.round() as u64,
        "iops_mean": round6(iops.mean),
        "iops_stddev": round6(iops.stddev),
        "iops_samples": iops.samples,
    })
}

fn percent_map(keys: &[&str], counts: &[u64; 7]) -> Value {
    let total: u64 = counts.iter().sum();
    let mut m = Map::new();
    for (k, &c) in keys.iter().zip(counts) {
        m.insert((*k).into(), json!(round6(depth_pct(c, total))));
    }
    Value::Object(m)
}

/// Percentage as fio shows latency shares: anything non-zero is at least 0.01.
fn pct(part: u64, total: u64) -> f64 {
    if total == 0 || part == 0 {
        return 0.0;
    }
    let p = part as f64 * 100.0 / total as f64;
    round6(p.max(0.01))
}

/// Percentage as fio shows depth and batch shares (`stat_calc_dist`): non-zero is at least 0.1.
fn depth_pct(part: u64, total: u64) -> f64 {
    if total == 0 || part == 0 {
        return 0.0;
    }
    (part as f64 * 100.0 / total as f64).max(0.1)
}

/// Bucket upper bounds of fio's latency distribution, in ns, with the JSON map and key.
const LATENCY_BUCKETS: [(&str, &str, u64); 32] = [
    ("latency_ns", "2", 2),
    ("latency_ns", "4", 4),
    ("latency_ns", "10", 10),
    ("latency_ns", "20", 20),
    ("latency_ns", "50", 50),
    ("latency_ns", "100", 100),
    ("latency_ns", "250", 250),
    ("latency_ns", "500", 500),
    ("latency_ns", "750", 750),
    ("latency_ns", "1000", 1000),
    ("latency_us", "2", 2_000),
    ("latency_us", "4", 4_000),
    ("latency_us", "10", 10_000),
    ("latency_us", "20", 20_000),
    ("latency_us", "50", 50_000),
    ("latency_us", "100", 100_000),
    ("latency_us", "250", 250_000),
    ("latency_us", "500", 500_000),
    ("latency_us", "750", 750_000),
    ("latency_us", "1000", 1_000_000),
    ("latency_ms", "2", 2_000_000),
    ("latency_ms", "4", 4_000_000),
    ("latency_ms", "10", 10_000_000),
    ("latency_ms", "20", 20_000_000),
    ("latency_ms", "50", 50_000_000),
    ("latency_ms", "100", 100_000_000),
    ("latency_ms", "250", 250_000_000),
    ("latency_ms", "500", 500_000_000),
    ("latency_ms", "750", 750_000_000),
    ("latency_ms", "1000", 1_000_000_000),
    ("latency_ms", "2000", 2_000_000_000),
    ("latency_ms", ">=2000", u64::MAX),
];

/// Completions in each latency bucket, every direction together, counted as fio does
/// (`io_u_mark_latency`): by completion latency (clat), each in the first bucket whose bound is
/// above it — bucket "4" (ns) holds 2 and 3 ns, bucket "2" (µs) holds 1000–1999 ns.
fn latency_counts(r: &JobResult) -> [u64; LATENCY_BUCKETS.len()] {
    let mut counts = [0; LATENCY_BUCKETS.len()];
    for d in 0..DIRS {
        for (ns, n) in plat::recorded(&r.dirs[d].clat) {
            let bucket = LATENCY_BUCKETS
                .iter()
                .position(|&(_, _, upper)| ns < upper)
                .unwrap_or(LATENCY_BUCKETS.len() - 1);
            counts[bucket] += n;
        }
    }
    counts
}

/// The number fio divides latency bucket counts by: every I/O issued (at least the counted).
fn latency_total(r: &JobResult, counts: &[u64]) -> u64 {
    let ios: u64 = r.dirs.iter().map(|d| d.ios).sum();
    ios.max(counts.iter().sum())
}

/// Share of completions in each latency bucket: (JSON map, key, percent).
fn latency_distribution(r: &JobResult) -> Vec<(&'static str, &'static str, f64)> {
    let counts = latency_counts(r);
    let total = latency_total(r, &counts);
    LATENCY_BUCKETS
        .iter()
        .zip(counts)
        .map(|(&(map, key, _), n)| (map, key, pct(n, total)))
        .collect()
}

fn job_json(
    entry: &Entry,
    group_bw: [f64; DIRS],
    elapsed_s: u64,
    extra: Value,
    bins: bool,
) -> Value {
    let r = &entry.result;
    let mut job = Map::new();
    job.insert("jobname".into(), json!(r.spec.name));
    job.insert("groupid".into(), json!(r.group));
    job.insert("error".into(), json!(entry.error_code()));
    job.insert("eta".into(), json!(0));
    job.insert("elapsed".into(), json!(elapsed_s));
    let options: Map<String, Value> = r
        .spec
        .job_options
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    job.insert("job options".into(), Value::Object(options));
    job.insert("read".into(), dir_json(r, READ, group_bw[READ], bins));
    job.insert("write".into(), dir_json(r, WRITE, group_bw[WRITE], bins));
    job.insert("trim".into(), dir_json(r, TRIM, group_bw[TRIM], bins));
    job.insert(
        "sync".into(),
        json!({
            "total_ios": r.syncs.n,
            "lat_ns": lat_json(&r.syncs, Some(&r.spec.percentile_list), bins),
        }),
    );
    let runtime_ms = r.runtime_ns / 1_000_000;
    let (usr, sys) = cpu_shares(entry);
    job.insert("job_runtime".into(), json!(runtime_ms));
    job.insert("usr_cpu".into(), json!(round6(usr)));
    job.insert("sys_cpu".into(), json!(round6(sys)));
    job.insert("ctx".into(), json!(r.cpu_usage.context_switches));
    job.insert("majf".into(), json!(r.cpu_usage.major_faults));
    job.insert("minf".into(), json!(r.cpu_usage.minor_faults));
    job.insert(
        "iodepth_level".into(),
        percent_map(&["1", "2", "4", "8", "16", "32", ">=64"], &r.depth_dist),
    );
    let batch_keys = ["0", "4", "8", "16", "32", "64", ">=64"];
    job.insert(
        "iodepth_submit".into(),
        percent_map(&batch_keys, &r.submit_dist),
    );
    job.insert(
        "iodepth_complete".into(),
        percent_map(&batch_keys, &r.complete_dist),
    );
    let mut maps: Map<String, Value> = Map::new();
    for (map, key, share) in latency_distribution(r) {
        let entry = maps.entry(map).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(key.into(), json!(share));
        }
    }
    for (k, v) in maps {
        job.insert(k, v);
    }
    job.insert("latency_depth".into(), json!(r.spec.iodepth));
    job.insert("latency_target".into(), json!(0));
    job.insert("latency_percentile".into(), json!(100.0));
    job.insert("latency_window".into(), json!(0));
    job.insert("bluepoll".into(), extra);
    Value::Object(job)
}

/// User and system CPU time as percentages of the entry's run time (per job of a group).
fn cpu_shares(entry: &Entry) -> (f64, f64) {
    let r = &entry.result;
    let share = |d: std::time::Duration| {
        if r.runtime_ns == 0 {
            0.0
        } else {
            d.as_nanos() as f64 * 100.0 / (r.runtime_ns as f64 * entry.jobs as f64)
        }
    };
    (share(r.cpu_usage.user), share(r.cpu_usage.system))
}

fn qp_json(stats: &QueuePairStats) -> Value {
    json!({
        "submitted": stats.submitted,
        "completed": stats.completed,
        "errors": stats.errors,
        "polls": stats.polls,
        "polls_with_completions": stats.polls_with_completions,
        "doorbells": stats.doorbells,
        "doorbell_commands": stats.doorbell_commands,
        "syscalls": stats.syscalls,
    })
}

/// Everything a report needs besides the job results.
pub struct RunSummary<'a> {
    /// When the run started (fio's timestamp in the JSON and the text header).
    pub started: SystemTime,
    /// Whole seconds the run took (each job's `elapsed` in the JSON).
    pub elapsed_s: u64,
    /// The options in force for every job (`global options` in the JSON).
    pub global_options: &'a [(String, String)],
    /// Per reactor, its loop counters over the run (iterations, sleeps, busy time).
    pub reactors: &'a [ReactorStats],
    /// Per reactor, the queue pairs it used and their counters.
    pub queue_pairs: &'a [(usize, String, QueuePairStats)],
    /// Remarks on how the run differed from what was asked (ranges cut at a device's end,
    /// ignored options, groups that did not run, …): `note:` lines after the text report, and
    /// `"notes"` in the JSON.
    pub notes: &'a [String],
    /// Object stores the run drove (ioengine=store): (devices, `perf dump` JSON, the text
    /// summary with the per-state breakdown).
    pub stores: &'a [(String, Value, String)],
    /// fio options accepted without effect (`options::IGNORED_OPTIONS`), named for the reader.
    pub ignored_options: &'a [String],
}

fn group_bandwidths(entries: &[Entry]) -> Vec<(usize, [f64; DIRS])> {
    let mut groups: Vec<(usize, [f64; DIRS])> = Vec::new();
    for e in entries {
        let r = &e.result;
        let bw = std::array::from_fn(|d| per_second(r.dirs[d].bytes, r.dir_runtime_ns[d]));
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, sum)) => {
                for (total, b) in sum.iter_mut().zip(bw) {
                    *total += b;
                }
            }
            None => groups.push((r.group, bw)),
        }
    }
    groups
}

/// The JSON report; `bins` makes it fio's json+ (latency histograms in fio's buckets).
pub fn json_report(entries: &[Entry], summary: &RunSummary<'_>, bins: bool) -> Value {
    let since_epoch = summary
        .started
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let groups = group_bandwidths(entries);
    let jobs: Vec<Value> = entries
        .iter()
        .map(|e| {
            let r = &e.result;
            let group_bw = groups
                .iter()
                .find(|(g, _)| *g == r.group)
                .map_or([0.0; DIRS], |(_, b)| *b);
            let on_thread = matches!(
                r.spec.ioengine,
                IoEngine::Bluefs | IoEngine::Kstore | IoEngine::Image
            );
            let extra = json!({
                "device": r.device_uri,
                "ioengine": r.spec.ioengine.name(),
                // ioengine=bluefs jobs run on their own threads, not on reactors.
                "reactor": if on_thread { Value::Null } else { json!(r.reactor) },
                "cpu": r.cpu,
                "jobs": e.jobs,
                "io_errors": r.io_errors,
                "verify_errors": r.verify_errors,
                "messages": r.messages,
            });
            job_json(e, group_bw, summary.elapsed_s, extra, bins)
        })
        .collect();
    let globals: Map<String, Value> = summary
        .global_options
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let reactors: Vec<Value> = summary
        .reactors
        .iter()
        .map(|s| {
            let qps: Vec<Value> = summary
                .queue_pairs
                .iter()
                .filter(|(r, _, _)| *r == s.index)
                .map(|(_, uri, q)| json!({"device": uri, "stats": qp_json(q)}))
                .collect();
            json!({
                "index": s.index, "cpu": s.cpu, "iterations": s.iterations,
                "busy_iterations": s.busy_iterations, "idle_iterations": s.idle_iterations,
                "sleeps": s.sleeps, "messages": s.messages, "timers_fired": s.timers_fired,
                "busy_fraction": round6(s.busy_fraction()), "queue_pairs": qps,
            })
        })
        .collect();
    json!({
        "fio version": format!("bluepoll-{}", env!("CARGO_PKG_VERSION")),
        "timestamp": since_epoch.as_secs(),
        "timestamp_ms": since_epoch.as_millis() as u64,
        "time": crate::clock_text(summary.started),
        "global options": Value::Object(globals),
        "jobs": jobs,
        "disk_util": [],
        "ignored_options": summary.ignored_options,
        "bluepoll": {
            "reactors": reactors,
            "notes": summary.notes,
            "stores": summary.stores.iter().map(|(uri, perf, _)| json!({"devices": uri, "perf": perf})).collect::<Vec<_>>(),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Terse

/// Fields of a terse version 3 line: 5 of the job, 41 per direction (read, write — version 3
/// has no trim), 5 of CPU, 7 of I/O depths, 10 of µs and 12 of ms latency shares. Kernel disk
/// utilisation fields would follow, but bluepoll's devices are no kernel disks (fio's null
/// engine writes none either).
pub const TERSE_V3_FIELDS: usize = 5 + 2 * TERSE_DIR_FIELDS + 5 + 7 + 10 + 12;
/// Per direction: KiB, KiB/s, IOPS, runtime; slat, clat (4 each); 20 percentiles; lat (4); bw (5).
const TERSE_DIR_FIELDS: usize = 4 + 4 + 4 + MAX_PERCENTILES + 4 + 5;

/// fio's terse (`--minimal`) output: one line per report entry, version 3.
pub fn terse_report(entries: &[Entry]) -> String {
    let groups = group_bandwidths(entries);
    let mut out = String::new();
    for e in entries {
        let group_bw = groups
            .iter()
            .find(|(g, _)| *g == e.result.group)
            .map_or([0.0; DIRS], |(_, b)| *b);
        out.push_str(&terse_fields(e, group_bw).join(";"));
        out.push('\n');
    }
    out
}

fn terse_fields(e: &Entry, group_bw: [f64; DIRS]) -> Vec<String> {
    let r = &e.result;
    let mut f = vec![
        "3".to_string(),
        format!("bluepoll-{}", env!("CARGO_PKG_VERSION")),
        r.spec.name.clone(),
        r.group.to_string(),
        e.error_code().to_string(),
    ];
    for dir in [READ, WRITE] {
        terse_dir(&mut f, r, dir, group_bw[dir]);
    }
    let (usr, sys) = cpu_shares(e);
    f.push(format!("{usr:.6}%"));
    f.push(format!("{sys:.6}%"));
    f.push(r.cpu_usage.context_switches.to_string());
    f.push(r.cpu_usage.major_faults.to_string());
    f.push(r.cpu_usage.minor_faults.to_string());
    let depths: u64 = r.depth_dist.iter().sum();
    for &n in &r.depth_dist {
        f.push(format!("{:.1}%", depth_pct(n, depths)));
    }
    // Version 3 predates the ns buckets: fio adds their share to the first µs bucket.
    let counts = latency_counts(r);
    let total = latency_total(r, &counts);
    let ns_share = if total == 0 {
        0.0
    } else {
        counts[..10].iter().sum::<u64>() as f64 * 100.0 / total as f64
    };
    for (i, &n) in counts[10..].iter().enumerate() {
        let share = pct(n, total) + if i == 0 { ns_share } else { 0.0 };
        f.push(format!("{share:.2}%"));
    }
    f
}

/// One direction's 41 terse fields. Latencies are µs (whole for min/max, six decimals for mean
/// and stddev); bandwidth KiB/s; IOPS whole, as fio's integer arithmetic leaves them.
fn terse_dir(f: &mut Vec<String>, r: &JobResult, dir: usize, group_bw: f64) {
    let d = &r.dirs[dir];
    let runtime_ns = r.dir_runtime_ns[dir];
    let per_s = |x: u64| {
        if runtime_ns == 0 {
            0
        } else {
            (x as u128 * 1_000_000_000 / runtime_ns as u128) as u64
        }
    };
    f.push((d.bytes >> 10).to_string());
    f.push((per_s(d.bytes) / 1024).to_string());
    f.push(per_s(d.ios).to_string());
    f.push((runtime_ns / 1_000_000).to_string());
    let lat = |f: &mut Vec<String>, s: &LatencyStat| {
        f.push((s.min() / 1000).to_string());
        f.push((s.max / 1000).to_string());
        f.push(format!("{:.6}", s.mean() / 1000.0));
        f.push(format!("{:.6}", s.stddev() / 1000.0));
    };
    lat(f, &d.slat);
    lat(f, &d.clat);
    let list = &r.spec.percentile_list;
    for i in 0..MAX_PERCENTILES {
        f.push(match list.get(i) {
            Some(&p) => format!("{p:.6}%={}", d.clat.percentile(p) / 1000),
            None => "0%=0".to_string(),
        });
    }
    lat(f, &d.lat);
    let (bw, _) = spreads(r, dir);
    if bw.samples == 0 {
        f.extend(["0", "0", "0.000000%", "0.000000", "0.000000"].map(String::from));
    } else {
        // The mean's share of the group's bandwidth, at most 100 (fio's p_of_agg).
        let agg = if group_bw > 0.0 {
            (bw.mean * 100.0 / (group_bw / 1024.0)).min(100.0)
        } else {
            100.0
        };
        f.push(format!("{:.0}", bw.min));
        f.push(format!("{:.0}", bw.max));
        f.push(format!("{agg:.6}%"));
        f.push(format!("{:.6}", bw.mean));
        f.push(format!("{:.6}", bw.stddev));
    }
}

// ---------------------------------------------------------------------------------------------
// Text

/// Chooses fio's display unit for a latency: nsec below 10 µs, usec below 10 ms, else msec.
fn unit_for(ns: f64) -> (&'static str, f64) {
    if ns < 10_000.0 {
        ("nsec", 1.0)
    } else if ns < 10_000_000.0 {
        ("usec", 1e3)
    } else {
        ("msec", 1e6)
    }
}

fn lat_line(out: &mut String, label: &str, s: &LatencyStat) {
    if s.n == 0 {
        return;
    }
    let (unit, div) = unit_for(s.mean());
    let _ = writeln!(
        out,
        "    {label} ({unit}): min={}, max={}, avg={:.2}, stdev={:.2}",
        fmt_lat(s.min() as f64 / div),
        fmt_lat(s.max as f64 / div),
        s.mean() / div,
        s.stddev() / div
    );
}

fn fmt_lat(x: f64) -> String {
    if x >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn percentile_lines(out: &mut String, label: &str, s: &LatencyStat, list: &[f64]) {
    if s.n == 0 {
        return;
    }
    let (unit, div) = unit_for(s.percentile(list.iter().cloned().fold(0.0, f64::max)) as f64);
    let _ = writeln!(out, "    {label} percentiles ({unit}):");
    for chunk in list.chunks(4) {
        let cells: Vec<String> = chunk
            .iter()
            .map(|&p| {
                format!(
                    "{:>5.2}th=[{:>5}]",
                    p,
                    (s.percentile(p) as f64 / div).round() as u64
                )
            })
            .collect();
        let _ = writeln!(out, "     | {},", cells.join(", "));
    }
    let _ = writeln!(out, "     |");
}

fn dir_text(out: &mut String, r: &JobResult, dir: usize, group_bw: f64) {
    let d: &DirStats = &r.dirs[dir];
    if d.ios == 0 {
        return;
    }
    let runtime_ns = r.dir_runtime_ns[dir];
    let bw = per_second(d.bytes, runtime_ns);
    let _ = writeln!(
        out,
        "  {}: IOPS={}, BW={}/s ({}/s)({}/{}msec)",
        DIR_NAMES[dir],
        format_count(per_second(d.ios, runtime_ns)),
        format_bytes(bw),
        format_bytes_decimal(bw),
        format_bytes(d.bytes as f64),
        runtime_ns / 1_000_000
    );
    lat_line(out, "slat", &d.slat);
    lat_line(out, "clat", &d.clat);
    lat_line(out, " lat", &d.lat);
    percentile_lines(out, "clat", &d.clat, &r.spec.percentile_list);
    let (bw_spread, iops_spread) = spreads(r, dir);
    if bw_spread.samples > 0 {
        let (unit, div) = if bw_spread.mean >= 10.0 * 1024.0 {
            ("MiB/s", 1024.0)
        } else {
            ("KiB/s", 1.0)
        };
        let per = if group_bw > 0.0 {
            bw / group_bw * 100.0
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "   bw ({unit:>7}): min={:.0}, max={:.0}, per={per:.2}%, avg={:.2}, stdev={:.2}, samples={}",
            bw_spread.min / div,
            bw_spread.max / div,
            bw_spread.mean / div,
            bw_spread.stddev / div,
            bw_spread.samples
        );
        let _ = writeln!(
            out,
            "   iops        : min={:.0}, max={:.0}, avg={:.2}, stdev={:.2}, samples={}",
            iops_spread.min,
            iops_spread.max,
            iops_spread.mean,
            iops_spread.stddev,
            iops_spread.samples
        );
    }
}

fn dist_line(label: &str, keys: &[&str], counts: &[u64; 7]) -> String {
    let total: u64 = counts.iter().sum();
    let cells: Vec<String> = keys
        .iter()
        .zip(counts)
        .map(|(k, &c)| {
            format!(
                "{k}={:.1}%",
                if total == 0 {
                    0.0
                } else {
                    c as f64 * 100.0 / total as f64
                }
            )
        })
        .collect();
    format!("{label}: {}", cells.join(", "))
}

/// fio's normal text output: per entry its header, per-direction bandwidth, latencies,
/// percentiles and distributions, then the group status lines and bluepoll's own counters.
pub fn text_report(entries: &[Entry], summary: &RunSummary<'_>) -> String {
    let mut out = String::new();
    let groups = group_bandwidths(entries);
    let when = crate::clock_text(summary.started);
    for e in entries {
        let r = &e.result;
        let group_bw = groups
            .iter()
            .find(|(g, _)| *g == r.group)
            .map_or([0.0; DIRS], |(_, b)| *b);
        let _ = writeln!(
            out,
            "{}: (groupid={}, jobs={}): err={:>2}: pid={}: {}",
            r.spec.name,
            r.group,
            e.jobs,
            e.error_code(),
            std::process::id(),
            when
        );
        dir_text(&mut out, r, READ, group_bw[READ]);
        dir_text(&mut out, r, WRITE, group_bw[WRITE]);
        dir_text(&mut out, r, TRIM, group_bw[TRIM]);
        if r.syncs.n > 0 {
            // fio's block for fsync=N jobs.
            let _ = writeln!(out, "  fsync/fdatasync/sync_file_range:");
            lat_line(&mut out, "sync", &r.syncs);
            percentile_lines(&mut out, "sync", &r.syncs, &r.spec.percentile_list);
        }
        let dist = latency_distribution(r);
        for (map, unit) in [
            ("latency_ns", "nsec"),
            ("latency_us", "usec"),
            ("latency_ms", "msec"),
        ] {
            let cells: Vec<String> = dist
                .iter()
                .filter(|(m, _, share)| *m == map && *share > 0.0)
                .map(|(_, k, share)| format!("{k}={share:.2}%"))
                .collect();
            if !cells.is_empty() {
                let _ = writeln!(out, "  lat ({unit})   : {}", cells.join(", "));
            }
        }
        let (usr, sys) = cpu_shares(e);
        let _ = writeln!(
            out,
            "  cpu          : usr={usr:.2}%, sys={sys:.2}%, ctx={}, majf={}, minf={}",
            r.cpu_usage.context_switches, r.cpu_usage.major_faults, r.cpu_usage.minor_faults
        );
        let _ = writeln!(
            out,
            "  {}",
            dist_line(
                "IO depths    ",
                &["1", "2", "4", "8", "16", "32", ">=64"],
                &r.depth_dist
            )
        );
        let batch = ["0", "4", "8", "16", "32", "64", ">=64"];
        let _ = writeln!(
            out,
            "     {}",
            dist_line("submit    ", &batch, &r.submit_dist)
        );
        let _ = writeln!(
            out,
            "     {}",
            dist_line("complete  ", &batch, &r.complete_dist)
        );
        let _ = writeln!(
            out,
            "     issued rwts: total={},{},{},0 short=0,0,0,0 dropped=0,0,0,0",
            r.dirs[READ].ios, r.dirs[WRITE].ios, r.dirs[TRIM].ios
        );
        if r.spec.verify != super::options::VerifyMode::None || r.verify_errors > 0 {
            let _ = writeln!(
                out,
                "  verify       : {}, errors={}",
                r.spec.verify.name(),
                r.verify_errors
            );
        }
        if r.io_errors > 0 {
            let _ = writeln!(out, "  io errors    : {}", r.io_errors);
        }
        for m in &r.messages {
            let _ = writeln!(out, "  ! {m}");
        }
        if r.spec.ioengine == IoEngine::Bluefs {
            let _ = writeln!(
                out,
                "  bluefs       : {} (own thread, cpu {}, {} fsyncs)",
                r.device_uri, r.cpu, r.syncs.n
            );
        } else if r.spec.ioengine == IoEngine::Image {
            let _ = writeln!(
                out,
                "  image        : {} (own thread, cpu {}; the store's reactors do the I/O)",
                r.device_uri, r.cpu
            );
        } else if r.spec.ioengine == IoEngine::Kstore {
            let _ = writeln!(
                out,
                "  kstore       : {} (RocksDB, default Env; own thread, cpu {})",
                r.device_uri, r.cpu
            );
        } else {
            let _ = writeln!(
                out,
                "  device       : {} (reactor {}, cpu {})",
                r.device_uri, r.reactor, r.cpu
            );
        }
        out.push('\n');
    }
    for (group, _) in &groups {
        let _ = writeln!(out, "Run status group {group} (all jobs):");
        for dir in [READ, WRITE, TRIM] {
            let members: Vec<&JobResult> = entries
                .iter()
                .map(|e| &e.result)
                .filter(|r| r.group == *group)
                .collect();
            let bytes: u64 = members.iter().map(|r| r.dirs[dir].bytes).sum();
            if bytes == 0 {
                continue;
            }
            let runtime_ms: Vec<u64> = members
                .iter()
                .map(|r| r.dir_runtime_ns[dir] / 1_000_000)
                .collect();
            let max_runtime = members
                .iter()
                .map(|r| r.dir_runtime_ns[dir])
                .max()
                .unwrap_or(0);
            let bws: Vec<f64> = members
                .iter()
                .map(|r| per_second(r.dirs[dir].bytes, r.dir_runtime_ns[dir]))
                .collect();
            let total_bw = per_second(bytes, max_runtime);
            let (lo, hi) = (
                bws.iter().cloned().fold(f64::INFINITY, f64::min),
                bws.iter().cloned().fold(0.0, f64::max),
            );
            let _ = writeln!(
                out,
                "  {:>6}: bw={}/s ({}/s), {}/s-{}/s ({}/s-{}/s), io={} ({}), run={}-{}msec",
                DIR_NAMES[dir].to_uppercase(),
                format_bytes(total_bw),
                format_bytes_decimal(total_bw),
                format_bytes(lo),
                format_bytes(hi),
                format_bytes_decimal(lo),
                format_bytes_decimal(hi),
                format_bytes(bytes as f64),
                format_bytes_decimal(bytes as f64),
                runtime_ms.iter().min().unwrap_or(&0),
                runtime_ms.iter().max().unwrap_or(&0)
            );
        }
    }
    if !summary.reactors.is_empty() {
        out.push_str("\nReactors:\n");
    }
    for s in summary.reactors {
        let _ = writeln!(
            out,
            "  reactor {} (cpu {}): loops={}, busy={:.1}%, idle loops={}, sleeps={}, messages={}",
            s.index,
            s.cpu,
            s.iterations,
            s.busy_fraction() * 100.0,
            s.idle_iterations,
            s.sleeps,
            s.messages
        );
        for (_, uri, q) in summary.queue_pairs.iter().filter(|(r, _, _)| *r == s.index) {
            let per = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            let _ = writeln!(
                out,
                "    qpair {uri}: submitted={}, completed={}, per doorbell={:.1}, per reaping poll={:.1}, syscalls/io={:.3}",
                q.submitted,
                q.completed,
                per(q.doorbell_commands, q.doorbells),
                per(q.completed, q.polls_with_completions),
                per(q.syscalls, q.completed)
            );
        }
    }
    for (_, _, text) in summary.stores {
        out.push_str(text);
    }
    for note in summary.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use crate::engine::{JobResult, ThreadRun};
    use crate::options::JobSpec;
    use crate::stats::Meter;

    /// A finished job that did nothing yet: tests fill in what they measure.
    pub(crate) fn empty_result(spec: Arc<JobSpec>) -> JobResult {
        let run = ThreadRun {
            device_uri: "mem:64M".into(),
            meter: Meter::new(spec.sample_every_ns()),
            run_end_ns: 0,
            finish_ns: 0,
            cpu_usage: Default::default(),
            errors: 0,
            messages: Vec::new(),
        };
        JobResult::from_thread(&spec, 0, 0, run)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::options::{OutputFormat, parse_invocation};
    use crate::stats::{DirSample, Sample};

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A 2-second job: 1000 reads (clat 1–1000 µs) and 500 writes, one bw sample a second.
    fn measured() -> JobResult {
        let spec = parse_invocation(&args(&["--name=tj", "--rw=randrw"]))
            .unwrap()
            .jobs
            .remove(0);
        let mut r = test_support::empty_result(Arc::new(spec));
        for i in 1..=1000u64 {
            let d = &mut r.dirs[READ];
            d.ios += 1;
            d.bytes += 4096;
            d.slat.record(200);
            d.clat.record(i * 1000);
            d.lat.record(i * 1000 + 200);
            if i % 2 == 0 {
                let w = &mut r.dirs[WRITE];
                w.ios += 1;
                w.bytes += 4096;
                w.clat.record(50);
                w.lat.record(50);
            }
        }
        for d in &mut r.dirs {
            d.settle();
        }
        r.dir_runtime_ns = [2_000_000_000, 2_000_000_000, 0];
        r.runtime_ns = 2_000_000_000;
        r.depth_dist = [0, 0, 0, 0, 1500, 0, 0];
        let half = |ios: u64| DirSample {
            ios,
            bytes: ios * 4096,
            ..DirSample::default()
        };
        r.samples = (1..=2)
            .map(|s| Sample {
                end_ms: s * 1000,
                duration_ns: 1_000_000_000,
                dirs: [half(500), half(250), DirSample::default()],
            })
            .collect();
        r
    }

    fn summary_json(entries: &[Entry], bins: bool) -> Value {
        let summary = RunSummary {
            started: SystemTime::now(),
            elapsed_s: 2,
            global_options: &[],
            reactors: &[],
            queue_pairs: &[],
            notes: &[],
            stores: &[],
            ignored_options: &[],
        };
        json_report(entries, &summary, bins)
    }

    #[test]
    fn terse_line_has_fios_version_3_fields() {
        let entries = entries(&[measured()]);
        let text = terse_report(&entries);
        assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
        let f: Vec<&str> = text.trim_end().split(';').collect();
        assert_eq!(f.len(), TERSE_V3_FIELDS);
        assert_eq!(TERSE_V3_FIELDS, 121, "fio 3.33's --minimal line");
        assert_eq!(
            &f[..5],
            [
                "3",
                &format!("bluepoll-{}", env!("CARGO_PKG_VERSION")),
                "tj",
                "0",
                "0"
            ]
        );
        // Read: KiB, KiB/s, IOPS, runtime ms.
        assert_eq!(&f[5..9], ["4000", "2000", "500", "2000"]);
        // slat µs: min, max, mean, stddev.
        assert_eq!(&f[9..13], ["0", "0", "0.200000", "0.000000"]);
        assert_eq!(&f[13..15], ["1", "1000"]);
        assert_eq!(f[15], "500.500000");
        // fio's 17 default percentiles, then empty ones to 20.
        assert_eq!(f[17], "1.000000%=10");
        assert_eq!(f[23], "50.000000%=500");
        assert!(f[29].starts_with("99.000000%=99"), "{}", f[29]);
        assert_eq!(&f[34..37], ["0%=0"; 3]);
        // lat min/max, then bw min, max, share of the group, mean, stddev.
        assert_eq!(&f[37..39], ["1", "1000"]);
        assert_eq!(
            f[41..46],
            ["2000", "2000", "100.000000%", "2000.000000", "0.000000"]
        );
        // Write starts at 46; its clat is 50 ns: 0 µs.
        assert_eq!(&f[46..50], ["2000", "1000", "250", "2000"]);
        assert_eq!(f[54], "0");
        // CPU, then depths (all at 16), then latency shares: writes (50 ns) fold into ≤2 µs.
        assert_eq!(f[87], "0.000000%");
        assert_eq!(
            &f[92..99],
            ["0.0%", "0.0%", "0.0%", "0.0%", "100.0%", "0.0%", "0.0%"]
        );
        assert_eq!(f[99], "33.40%", "the 500 writes of 50 ns and the 1 µs read");
        // 500–750 µs and 751–999 µs (the HDR bucket of 750 µs is named 749.95 µs).
        assert_eq!(&f[107..109], ["16.73%", "16.60%"]);
        assert_eq!(f[109], "0.07%", "the 1000 µs read is under 2 ms");
        assert_eq!(f[120], "0.00%");
        let shares: f64 = f[99..121]
            .iter()
            .map(|x| x.trim_end_matches('%').parse::<f64>().unwrap())
            .sum();
        assert!((shares - 100.0).abs() < 0.1, "{shares}");
    }

    #[test]
    fn latency_buckets_split_as_fios() {
        let mut r = measured();
        r.dirs = Default::default();
        for ns in [1u64, 2, 3, 999, 1000, 1999, 2000, 2_000_000, 5_000_000_000] {
            r.dirs[READ].ios += 1;
            r.dirs[READ].clat.record(ns);
        }
        r.dirs[READ].settle();
        let counts = latency_counts(&r);
        let key = |i: usize| (LATENCY_BUCKETS[i].0, LATENCY_BUCKETS[i].1);
        let hit: Vec<_> = (0..counts.len())
            .filter(|&i| counts[i] > 0)
            .map(|i| (key(i), counts[i]))
            .collect();
        assert_eq!(
            hit,
            [
                (("latency_ns", "2"), 1),
                (("latency_ns", "4"), 2),
                (("latency_ns", "1000"), 1),
                (("latency_us", "2"), 2),
                (("latency_us", "4"), 1),
                (("latency_ms", "4"), 1),
                (("latency_ms", ">=2000"), 1),
            ]
        );
    }

    #[test]
    fn json_plus_adds_bins_that_add_up() {
        let entries = entries(&[measured()]);
        let plain = summary_json(&entries, false);
        assert!(plain["jobs"][0]["read"]["clat_ns"].get("bins").is_none());
        let plus = summary_json(&entries, true);
        let job = &plus["jobs"][0];
        for dir in ["read", "write"] {
            let bins = job[dir]["clat_ns"]["bins"].as_object().unwrap();
            let sum: u64 = bins.values().map(|v| v.as_u64().unwrap()).sum();
            assert_eq!(sum, job[dir]["total_ios"].as_u64().unwrap(), "{dir}");
            for key in bins.keys() {
                let ns: u64 = key.parse().unwrap();
                assert_eq!(plat::value(plat::index(ns)), ns, "{key} is a bucket value");
            }
        }
        // Only where fio writes percentiles, and never empty.
        assert!(job["read"]["lat_ns"].get("bins").is_none());
        assert!(job["trim"]["clat_ns"].get("bins").is_none());
        assert!(job["sync"]["lat_ns"].get("bins").is_none());
        // The 10 µs read is in fio's bucket 9984–10111 ns, named 10048.
        assert_eq!(job["read"]["clat_ns"]["bins"]["10048"], 1);
        // Without the bins (and the clock), json+ is the JSON.
        let (mut plus, mut plain) = (plus.clone(), plain);
        for dir in ["read", "write"] {
            let clat = plus["jobs"][0][dir]["clat_ns"].as_object_mut().unwrap();
            clat.remove("bins");
        }
        for v in [&mut plus, &mut plain] {
            for k in ["timestamp", "timestamp_ms", "time"] {
                v.as_object_mut().unwrap().remove(k);
            }
        }
        assert_eq!(plus, plain);
    }

    #[test]
    fn output_formats_parse_as_fios() {
        let format = |list: &[&str]| parse_invocation(&args(list)).map(|i| i.run.output_format);
        let f = |normal, json, json_plus, terse| OutputFormat {
            normal,
            json,
            json_plus,
            terse,
        };
        assert_eq!(format(&[]).unwrap(), f(true, false, false, false));
        assert_eq!(
            format(&["--output-format=normal,json+"]).unwrap(),
            f(true, true, true, false)
        );
        assert_eq!(
            format(&["--output-format=terse,json"]).unwrap(),
            f(false, true, false, true)
        );
        assert_eq!(
            format(&["--minimal"]).unwrap(),
            f(false, false, false, true)
        );
        // The last of --minimal and --output-format wins; --append-terse adds terse.
        assert_eq!(
            format(&["--minimal", "--output-format=json"]).unwrap(),
            f(false, true, false, false)
        );
        assert_eq!(
            format(&["--output-format=json", "--append-terse"]).unwrap(),
            f(false, true, false, true)
        );
        assert!(format(&["--terse-version=3", "--minimal"]).is_ok());
        for bad in [
            "--terse-version=2",
            "--terse-version=5",
            "--terse-version=x",
        ] {
            let e = format(&[bad]).unwrap_err().to_string();
            assert!(
                e.contains("'terse_version'") && e.contains("only terse version 3"),
                "{e}"
            );
        }
        let e = format(&["--minimal=1"]).unwrap_err().to_string();
        assert!(e.contains("'minimal'"), "{e}");
        let e = format(&["--output-format=json++"]).unwrap_err().to_string();
        assert!(e.contains("json+"), "{e}");
    }
}
