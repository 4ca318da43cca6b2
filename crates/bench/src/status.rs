//! The live status line fio shows on a terminal:
//! `Jobs: 2 (f=2): [r(2)][45.0%][r=8.1GiB/s][r=2121k IOPS][eta 00m:05s]`.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::engine::{DIRS, JobProgress};
use super::options::RwMode;
use bluepoll_base::units::{format_bytes, format_count};

/// Whether stdout is a terminal (`--eta=auto` shows the status line only then).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// The status line, redrawn in place with `\r` while jobs run.
pub struct StatusLine {
    enabled: bool,
    last: Option<(
        Instant,
        [u64; super::engine::DIRS],
        [u64; super::engine::DIRS],
    )>,
    width: usize,
}

impl StatusLine {
    /// A status line that draws nothing unless `enabled`.
    pub fn new(enabled: bool) -> StatusLine {
        StatusLine {
            enabled,
            last: None,
            width: 0,
        }
    }

    /// Redraws the line from the jobs' progress counters (rates since the previous call).
    pub fn update(
        &mut self,
        modes: &[RwMode],
        progress: &[Arc<JobProgress>],
        elapsed: Duration,
        planned: Option<Duration>,
    ) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let sum = |f: &dyn Fn(&JobProgress) -> u64| progress.iter().map(|p| f(p)).sum::<u64>();
        let ios: [u64; DIRS] = std::array::from_fn(|d| sum(&|p| p.ios[d].load(Ordering::Relaxed)));
        let bytes: [u64; DIRS] =
            std::array::from_fn(|d| sum(&|p| p.bytes[d].load(Ordering::Relaxed)));
        let Some((then, last_ios, last_bytes)) = self.last.replace((now, ios, bytes)) else {
            return;
        };
        let dt = now.duration_since(then).as_secs_f64().max(1e-3);
        let running = progress
            .iter()
            .filter(|p| !p.finished.load(Ordering::Relaxed))
            .count();
        let letters: String = modes
            .iter()
            .zip(progress)
            .filter(|(_, p)| !p.finished.load(Ordering::Relaxed))
            .map(|(m, _)| match m {
                RwMode::Read => 'R',
                RwMode::RandRead => 'r',
                RwMode::Write => 'W',
                RwMode::RandWrite => 'w',
                RwMode::ReadWrite => 'M',
                RwMode::RandRw => 'm',
                RwMode::Trim => 'D',
                RwMode::RandTrim => 'd',
                RwMode::TrimWrite => 'F',
                RwMode::RandTrimWrite => 'f',
            })
            .collect();
        let (percent, eta) = match planned {
            Some(p) if !p.is_zero() => {
                let pct = (elapsed.as_secs_f64() / p.as_secs_f64() * 100.0).min(100.0);
                (format!("{pct:.1}%"), p.saturating_sub(elapsed).as_secs())
            }
            _ => ("-.-%".to_string(), 0),
        };
        let mut line = format!("Jobs: {running} (f={running}): [{letters}][{percent}]");
        let tags = ["r", "w", "t"];
        let bw: Vec<String> = (0..super::engine::DIRS)
            .filter(|&d| ios[d] > 0)
            .map(|d| {
                format!(
                    "{}={}/s",
                    tags[d],
                    format_bytes((bytes[d] - last_bytes[d]) as f64 / dt)
                )
            })
            .collect();
        let iops: Vec<String> = (0..super::engine::DIRS)
            .filter(|&d| ios[d] > 0)
            .map(|d| {
                format!(
                    "{}={} IOPS",
                    tags[d],
                    format_count((ios[d] - last_ios[d]) as f64 / dt)
                )
            })
            .collect();
        line.push_str(&format!(
            "[{}][{}][eta {:02}m:{:02}s]",
            bw.join(","),
            iops.join(","),
            eta / 60,
            eta % 60
        ));
        let pad = self.width.saturating_sub(line.len());
        self.width = line.len();
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r{line}{}", " ".repeat(pad));
        let _ = out.flush();
    }

    /// Erases the line so the report starts on a clean one.
    pub fn clear(&mut self) {
        if self.enabled && self.width > 0 {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r{}\r", " ".repeat(self.width));
            let _ = out.flush();
            self.width = 0;
        }
    }
}
