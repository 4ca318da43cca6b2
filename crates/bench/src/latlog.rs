//! fio's log files, in fio 3.33's line format so fio's tools (`fio2gnuplot`,
//! `fio_generate_plots`, `fiologparser.py`, `fiologparser_hist.py`) read them.
//!
//! Options and files (N = the job's number, 1-based; without `per_job_logs` the `.N` is left out
//! and jobs naming one prefix share the file, one after another; an empty prefix is the job's
//! name):
//! - `write_lat_log=PREFIX`: `PREFIX_lat.N.log`, `PREFIX_clat.N.log`, `PREFIX_slat.N.log` (ns),
//!   and, beyond fio, `PREFIX_clat_pct.N.log` (`msec, p50, p99, p99.9, direction` per interval,
//!   so tails can be plotted) and `PREFIX_iops.N.log` unless `write_iops_log` names its own.
//! - `write_bw_log=PREFIX`: `PREFIX_bw.N.log` (KiB/s); `write_iops_log=PREFIX`:
//!   `PREFIX_iops.N.log`.
//! - `write_hist_log=PREFIX`: `PREFIX_clat_hist.N.log`, clat histograms every `log_hist_msec`.
//!
//! A line is `msec, value, direction, bs, [offset,] priority`: msec since the measured run
//! began, direction 0 read / 1 write / 2 trim, the offset only with `log_offset=1`, priority 0
//! (`0x0000` with `log_prio=1`: bluepoll has no I/O priorities). With `log_avg_msec=0` (fio's
//! default) there is a line per I/O from the job's [`IoRecord`]s: its latency, its bandwidth
//! (bytes·10⁶/clat ns, as fio computes it) or 1 for IOPS, its size and offset. Otherwise a line
//! per interval and direction that did I/O in it: the mean latency (the maximum with
//! `log_max_value=1`), KiB/s or IOPS over the interval, with bs and offset 0 — as fio writes
//! averaged entries. Slat lines appear only for directions that measure a submission latency
//! (fio's sync engines write an empty slat log too). A job whose engine kept no per-I/O records
//! writes the 1 s interval lines instead.
//!
//! A histogram line is `msec, direction, bs, c0, …, c1855`: the I/Os completed since the
//! direction's previous line in each of fio's 1856 latency buckets ([`plat`]). A line closes the
//! first I/O at least `log_hist_msec` after the window began (fio's rule); the I/Os after the
//! last full window get a closing line, so the counts add up to the job's I/Os. The file is
//! empty without `log_hist_msec`, as fio's is. Without per-I/O records, each direction gets one
//! line with the whole run's histogram.
//!
//! [`IoRecord`]: super::stats::IoRecord
//! [`plat`]: super::plat

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};

use anyhow::{Context, Result};

use super::engine::{DIRS, JobResult};
use super::options::JobSpec;
use super::plat;
use super::stats::{DirSample, IoRecord};

/// Writes every log the jobs asked for.
pub fn write_logs(results: &[JobResult]) -> Result<()> {
    let mut files = LogFiles::default();
    for r in results {
        write_job_logs(r, &mut files)?;
    }
    Ok(())
}

/// The files written in this run: the first job to use a name truncates it, later ones append
/// (`per_job_logs=0` with one prefix for several jobs).
#[derive(Default)]
struct LogFiles {
    opened: HashSet<String>,
}

impl LogFiles {
    fn write(
        &mut self,
        path: &str,
        body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        let file = if self.opened.insert(path.to_string()) {
            File::create(path)
        } else {
            OpenOptions::new().append(true).open(path)
        }
        .with_context(|| format!("cannot write log '{path}'"))?;
        let mut out = BufWriter::new(file);
        body(&mut out)
            .and_then(|()| out.flush())
            .with_context(|| format!("cannot write log '{path}'"))
    }
}

/// fio's name for a log of `kind` (`bw`, `clat`, …).
pub fn log_path(prefix: &str, spec: &JobSpec, kind: &str, job_number: usize) -> String {
    let prefix = if prefix.is_empty() {
        &spec.name
    } else {
        prefix
    };
    if spec.per_job_logs {
        format!("{prefix}_{kind}.{job_number}.log")
    } else {
        format!("{prefix}_{kind}.log")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lat,
    Clat,
    Slat,
    Bw,
    Iops,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Lat => "lat",
            Kind::Clat => "clat",
            Kind::Slat => "slat",
            Kind::Bw => "bw",
            Kind::Iops => "iops",
        }
    }

    fn per_io(self, rec: &IoRecord) -> u64 {
        match self {
            Kind::Lat => rec.lat_ns,
            Kind::Clat => rec.clat_ns,
            Kind::Slat => rec.slat_ns,
            // fio's per-I/O "bandwidth": the I/O's bytes over its completion latency.
            Kind::Bw => match rec.clat_ns {
                0 => 0,
                ns => (u128::from(rec.bytes) * 1_000_000 / u128::from(ns)) as u64,
            },
            Kind::Iops => 1,
        }
    }

    fn per_interval(self, d: &DirSample, duration_ns: u64, max: bool) -> u64 {
        // fio rounds a mean to the nearest and truncates a rate.
        let mean = |x: f64| (x + 0.5) as u64;
        match (self, max) {
            (Kind::Lat, false) => mean(d.lat_mean),
            (Kind::Clat, false) => mean(d.clat_mean),
            (Kind::Slat, false) => mean(d.slat_mean),
            (Kind::Lat, true) => d.lat_max,
            (Kind::Clat, true) => d.clat_max,
            (Kind::Slat, true) => d.slat_max,
            (Kind::Bw, _) => (d.bytes_per_second(duration_ns) / 1024.0) as u64,
            (Kind::Iops, _) => d.iops(duration_ns) as u64,
        }
    }
}

/// Writes one fio log line.
fn line(
    out: &mut dyn Write,
    spec: &JobSpec,
    ms: u64,
    value: u64,
    dir: usize,
    bs: u64,
    offset: u64,
) -> std::io::Result<()> {
    write!(out, "{ms}, {value}, {dir}, {bs}, ")?;
    if spec.log_offset {
        write!(out, "{offset}, ")?;
    }
    if spec.log_prio {
        writeln!(out, "0x0000")
    } else {
        writeln!(out, "0")
    }
}

fn write_job_logs(r: &JobResult, files: &mut LogFiles) -> Result<()> {
    let spec = &r.spec;
    let n = r.number + 1;
    let mut kinds: Vec<(&str, Kind)> = Vec::new();
    if let Some(prefix) = &spec.write_lat_log {
        kinds.extend([
            (prefix.as_str(), Kind::Lat),
            (prefix, Kind::Slat),
            (prefix, Kind::Clat),
        ]);
        if spec.write_iops_log.is_none() {
            kinds.push((prefix, Kind::Iops));
        }
    }
    if let Some(prefix) = &spec.write_bw_log {
        kinds.push((prefix, Kind::Bw));
    }
    if let Some(prefix) = &spec.write_iops_log {
        kinds.push((prefix, Kind::Iops));
    }
    let per_io = spec.log_avg_msec == 0 && !r.io_log.is_empty();
    for (prefix, kind) in kinds {
        let path = log_path(prefix, spec, kind.name(), n);
        // Directions that never measured a submission latency write no slat lines.
        let logged = |dir: usize| kind != Kind::Slat || r.dirs[dir].slat.n > 0;
        files.write(&path, |out| {
            if per_io {
                for rec in r.io_log.iter().filter(|rec| usize::from(rec.dir) < DIRS) {
                    let dir = usize::from(rec.dir);
                    if logged(dir) {
                        let ms = rec.end_ns / 1_000_000;
                        let value = kind.per_io(rec);
                        line(out, spec, ms, value, dir, rec.bytes.into(), rec.offset)?;
                    }
                }
            } else {
                for s in &r.samples {
                    for dir in (0..DIRS).filter(|&d| s.dirs[d].ios > 0 && logged(d)) {
                        let value =
                            kind.per_interval(&s.dirs[dir], s.duration_ns, spec.log_max_value);
                        line(out, spec, s.end_ms, value, dir, 0, 0)?;
                    }
                }
            }
            Ok(())
        })?;
    }
    if let Some(prefix) = &spec.write_lat_log {
        let path = log_path(prefix, spec, "clat_pct", n);
        files.write(&path, |out| {
            for s in &r.samples {
                for dir in (0..DIRS).filter(|&d| s.dirs[d].ios > 0) {
                    let x = &s.dirs[dir];
                    writeln!(
                        out,
                        "{}, {}, {}, {}, {dir}",
                        s.end_ms, x.clat_p50, x.clat_p99, x.clat_p999
                    )?;
                }
            }
            Ok(())
        })?;
    }
    if let Some(prefix) = &spec.write_hist_log {
        let path = log_path(prefix, spec, "clat_hist", n);
        files.write(&path, |out| write_histograms(out, r))?;
    }
    Ok(())
}

/// Per direction, the I/Os counted since its last histogram line.
struct Window {
    counts: Vec<u64>,
    pending: u64,
    start_ms: Option<u64>,
    last: (u64, u64),
}

fn hist_line(
    out: &mut dyn Write,
    ms: u64,
    dir: usize,
    bs: u64,
    counts: &[u64],
) -> std::io::Result<()> {
    write!(out, "{ms}, {dir}, {bs}")?;
    for c in counts {
        write!(out, ", {c}")?;
    }
    writeln!(out)
}

fn write_histograms(out: &mut dyn Write, r: &JobResult) -> std::io::Result<()> {
    let every = r.spec.log_hist_msec;
    if every == 0 {
        return Ok(());
    }
    if r.io_log.is_empty() {
        for dir in (0..DIRS).filter(|&d| r.dirs[d].clat.n > 0) {
            let mut counts = vec![0u64; plat::BUCKETS];
            for (ns, n) in plat::recorded(&r.dirs[dir].clat) {
                counts[plat::index(ns)] += n;
            }
            hist_line(
                out,
                r.dir_runtime_ns[dir] / 1_000_000,
                dir,
                r.spec.bs,
                &counts,
            )?;
        }
        return Ok(());
    }
    let mut windows: Vec<Window> = (0..DIRS)
        .map(|_| Window {
            counts: vec![0; plat::BUCKETS],
            pending: 0,
            start_ms: None,
            last: (0, 0),
        })
        .collect();
    for rec in r.io_log.iter().filter(|rec| usize::from(rec.dir) < DIRS) {
        let dir = usize::from(rec.dir);
        let w = &mut windows[dir];
        let ms = rec.end_ns / 1_000_000;
        w.counts[plat::index(rec.clat_ns)] += 1;
        w.pending += 1;
        w.last = (ms, rec.bytes.into());
        let start = *w.start_ms.get_or_insert(ms);
        let elapsed = ms.saturating_sub(start);
        if elapsed >= every {
            hist_line(out, ms, dir, rec.bytes.into(), &w.counts)?;
            w.counts.fill(0);
            w.pending = 0;
            // The next window starts on the grid, skipping windows without I/O.
            w.start_ms = Some(ms - elapsed % every);
        }
    }
    for (dir, w) in windows.iter().enumerate().filter(|(_, w)| w.pending > 0) {
        hist_line(out, w.last.0, dir, w.last.1, &w.counts)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::stats::Sample;

    fn spec(f: impl FnOnce(&mut JobSpec)) -> JobSpec {
        let mut spec = crate::options::parse_invocation(&["--name=j".to_string()])
            .unwrap()
            .jobs
            .remove(0);
        f(&mut spec);
        spec
    }

    /// A finished job with per-I/O records: reads of 4 KiB every 1 ms (clat 1000+i ns), and
    /// writes of 8 KiB every 3 ms.
    fn job(spec: JobSpec) -> JobResult {
        let mut r = crate::report::test_support::empty_result(Arc::new(spec));
        for i in 0..300u64 {
            let write = i % 3 == 0;
            let rec = IoRecord {
                end_ns: i * 1_000_000 + 500,
                dir: u8::from(write),
                bytes: if write { 8192 } else { 4096 },
                offset: i * 4096,
                slat_ns: 100,
                clat_ns: 1000 + i,
                lat_ns: 1100 + i,
            };
            r.io_log.push(rec);
            let d = &mut r.dirs[usize::from(rec.dir)];
            d.ios += 1;
            d.bytes += u64::from(rec.bytes);
            d.slat.record(rec.slat_ns);
            d.clat.record(rec.clat_ns);
            d.lat.record(rec.lat_ns);
        }
        for d in &mut r.dirs {
            d.settle();
        }
        r
    }

    fn read(path: &std::path::Path) -> Vec<Vec<String>> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l.split(", ").map(str::to_string).collect())
            .collect()
    }

    #[test]
    fn per_io_lines_are_fios() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("p").display().to_string();
        let r = job(spec(|s| {
            s.write_lat_log = Some(prefix.clone());
            s.write_bw_log = Some(prefix.clone());
            s.log_offset = true;
        }));
        write_logs(&[r]).unwrap();
        let clat = read(&dir.path().join("p_clat.1.log"));
        assert_eq!(clat.len(), 300);
        // msec, clat ns, direction, bs, offset, priority.
        assert_eq!(clat[0], ["0", "1000", "1", "8192", "0", "0"]);
        assert_eq!(clat[1], ["1", "1001", "0", "4096", "4096", "0"]);
        let bw = read(&dir.path().join("p_bw.1.log"));
        assert_eq!(bw[1][1], (4096u64 * 1_000_000 / 1001).to_string());
        let iops = read(&dir.path().join("p_iops.1.log"));
        assert!(iops.iter().all(|l| l[1] == "1" && l.len() == 6));
        assert_eq!(read(&dir.path().join("p_slat.1.log"))[5][1], "100");
    }

    #[test]
    fn names_and_sharing_follow_fio() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("s").display().to_string();
        let shared = spec(|s| {
            s.write_iops_log = Some(prefix.clone());
            s.per_job_logs = false;
            s.log_prio = true;
        });
        let (mut a, mut b) = (job(shared.clone()), job(shared));
        a.number = 0;
        b.number = 1;
        write_logs(&[a, b]).unwrap();
        let lines = read(&dir.path().join("s_iops.log"));
        assert_eq!(lines.len(), 600, "both jobs, one after the other");
        assert_eq!(lines[0], ["0", "1", "1", "8192", "0x0000"]);
        assert!(!dir.path().join("s_iops.1.log").exists());
        // An empty prefix is the job's name.
        let s = spec(|s| s.write_bw_log = Some(String::new()));
        assert_eq!(log_path("", &s, "bw", 3), "j_bw.3.log");
    }

    #[test]
    fn averaged_lines_hold_means_or_maxima() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("a").display().to_string();
        let mut r = job(spec(|s| {
            s.write_lat_log = Some(prefix.clone());
            s.write_bw_log = Some(prefix.clone());
            s.log_avg_msec = 100;
            s.log_max_value = true;
        }));
        let read_only = DirSample {
            ios: 50,
            bytes: 50 * 4096,
            clat_mean: 1500.4,
            clat_max: 2100,
            ..DirSample::default()
        };
        r.samples = vec![Sample {
            end_ms: 100,
            duration_ns: 100_000_000,
            dirs: [read_only, DirSample::default(), DirSample::default()],
        }];
        write_logs(&[r]).unwrap();
        // Directions without I/O in the interval have no line; bs and priority are 0.
        assert_eq!(
            read(&dir.path().join("a_clat.1.log")),
            [["100", "2100", "0", "0", "0"]]
        );
        assert_eq!(read(&dir.path().join("a_bw.1.log"))[0][1], "2000");
        assert_eq!(read(&dir.path().join("a_iops.1.log"))[0][1], "500");
    }

    #[test]
    fn histogram_lines_count_every_io_in_fio_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("h").display().to_string();
        let r = job(spec(|s| {
            s.write_hist_log = Some(prefix.clone());
            s.log_hist_msec = 100;
        }));
        write_logs(&[r]).unwrap();
        let lines = read(&dir.path().join("h_clat_hist.1.log"));
        let mut per_dir = [0u64; DIRS];
        for l in &lines {
            assert_eq!(l.len(), 3 + plat::BUCKETS);
            let counts: Vec<u64> = l[3..].iter().map(|c| c.parse().unwrap()).collect();
            per_dir[l[1].parse::<usize>().unwrap()] += counts.iter().sum::<u64>();
            // clat 1000..1300 ns: buckets of 1000 to 1299.
            let first = counts.iter().position(|&c| c > 0).unwrap();
            assert!(first >= plat::index(1000) && first <= plat::index(1299));
        }
        assert_eq!(per_dir, [200, 100, 0]);
        // Windows of 100 ms over 300 ms: three per direction, the last a closing one.
        assert_eq!(
            lines.len(),
            6,
            "{:?}",
            lines.iter().map(|l| &l[..3]).collect::<Vec<_>>()
        );
        // Reads from 1 ms on: the first window closes with the read at 101 ms; writes every
        // 3 ms from 0: with the write at 102 ms.
        let heads: Vec<&[String]> = lines.iter().map(|l| &l[..3]).collect();
        assert_eq!(heads[0], ["101", "0", "4096"]);
        assert_eq!(heads[1], ["102", "1", "8192"]);
        assert_eq!(heads[5], ["297", "1", "8192"], "{heads:?}");
    }
}
