//! fio-format log files: `--write_lat_log=PREFIX` and `--write_iops_log=PREFIX`.
//!
//! Each line is `msec, value, direction, 0, 0` as fio writes averaged logs (`log_avg_msec`):
//! msec is the end of the interval since the measured run began, direction 0 = read, 1 = write.
//! For each job N (1-based): `PREFIX_lat.N.log`, `PREFIX_clat.N.log`, `PREFIX_slat.N.log` (mean
//! ns per interval), `PREFIX_iops.N.log` (IOPS per interval), and, beyond fio,
//! `PREFIX_clat_pct.N.log` with `msec, p50, p99, p99.9, direction` so tails can be plotted.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::engine::JobResult;

pub fn write_logs(r: &JobResult) -> Result<()> {
    let n = r.number + 1;
    let active = |d: usize| r.dirs[d].ios > 0 || r.samples.iter().any(|s| s.dirs[d].ios > 0);
    let series = |value: &dyn Fn(&super::stats::DirSample, u64) -> String| {
        let mut out = String::new();
        for s in &r.samples {
            for d in (0..super::engine::DIRS).filter(|&d| active(d)) {
                let _ = writeln!(
                    out,
                    "{}, {}, {d}, 0, 0",
                    s.end_ms,
                    value(&s.dirs[d], s.duration_ns)
                );
            }
        }
        out
    };
    let iops = |d: &super::stats::DirSample, ns: u64| format!("{:.0}", d.iops(ns));
    if let Some(prefix) = &r.spec.write_lat_log {
        let write = |name: String, text: String| {
            std::fs::write(&name, text)
                .with_context(|| format!("cannot write latency log '{name}'"))
        };
        write(
            format!("{prefix}_lat.{n}.log"),
            series(&|d, _| format!("{:.0}", d.lat_mean)),
        )?;
        write(
            format!("{prefix}_clat.{n}.log"),
            series(&|d, _| format!("{:.0}", d.clat_mean)),
        )?;
        write(
            format!("{prefix}_slat.{n}.log"),
            series(&|d, _| format!("{:.0}", d.slat_mean)),
        )?;
        let mut pct = String::new();
        for s in &r.samples {
            for d in (0..super::engine::DIRS).filter(|&d| active(d)) {
                let x = &s.dirs[d];
                let _ = writeln!(
                    pct,
                    "{}, {}, {}, {}, {d}",
                    s.end_ms, x.clat_p50, x.clat_p99, x.clat_p999
                );
            }
        }
        write(format!("{prefix}_clat_pct.{n}.log"), pct)?;
        if r.spec.write_iops_log.is_none() {
            write(format!("{prefix}_iops.{n}.log"), series(&iops))?;
        }
    }
    if let Some(prefix) = &r.spec.write_iops_log {
        let name = format!("{prefix}_iops.{n}.log");
        std::fs::write(&name, series(&iops))
            .with_context(|| format!("cannot write IOPS log '{name}'"))?;
    }
    Ok(())
}
