//! Latency and throughput statistics for one job and direction.
//!
//! Each latency keeps exact min/max/mean/stddev (what fio prints as `min=… avg=… stdev=…`) and an
//! HDR histogram with three significant digits for percentiles. The hot path records into an
//! interval set that is folded into the totals once per `log_avg_msec`, which also yields the
//! per-interval series for latency logs and plots.

use hdrhistogram::Histogram;

use super::engine::DIRS;

/// Latencies above this (100 s) are recorded as this; a storage benchmark has bigger problems
/// by then.
pub const MAX_TRACKED_NS: u64 = 100_000_000_000;

/// Exact moments plus a histogram. Recording is run-length encoded: commands of one submission
/// batch share their submit and doorbell stamps, and completions of one poll share theirs, so
/// consecutive values often repeat and one `record_n` serves the whole run. Call [`settle`]
/// before reading.
///
/// [`settle`]: LatencyStat::settle
#[derive(Clone, Debug)]
pub struct LatencyStat {
    /// Every settled value, ns, clamped to 1..=[`MAX_TRACKED_NS`], three significant digits.
    pub hist: Histogram<u64>,
    /// How many values are settled.
    pub n: u64,
    /// The smallest settled value, ns (`u64::MAX` while empty; [`min`](Self::min()) gives 0).
    pub min: u64,
    /// The largest settled value, ns (0 while empty).
    pub max: u64,
    /// Sum of the settled values, ns.
    pub sum: u128,
    /// Sum of the squares of the settled values, ns² (for the standard deviation).
    pub sum_sq: f64,
    run_value: u64,
    run_length: u64,
}

impl Default for LatencyStat {
    fn default() -> Self {
        LatencyStat {
            // Constant, valid bounds: this cannot fail.
            hist: Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).expect("valid histogram bounds"),
            n: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
            sum_sq: 0.0,
            run_value: 0,
            run_length: 0,
        }
    }
}

impl LatencyStat {
    /// Records one latency of `ns` nanoseconds; a run of equal values is folded in at once by
    /// the next different value or [`settle`](Self::settle).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        if ns == self.run_value {
            self.run_length += 1;
        } else {
            self.settle();
            self.run_value = ns;
            self.run_length = 1;
        }
    }

    /// Folds the pending run of equal values into the statistics.
    pub fn settle(&mut self) {
        let (ns, count) = (self.run_value, self.run_length);
        if count == 0 {
            return;
        }
        self.run_length = 0;
        self.hist
            .saturating_record_n(ns.clamp(1, MAX_TRACKED_NS), count);
        self.n += count;
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
        self.sum += ns as u128 * count as u128;
        self.sum_sq += (ns as f64) * (ns as f64) * count as f64;
    }

    /// Adds `other`, which must be settled.
    pub fn merge(&mut self, other: &LatencyStat) {
        debug_assert_eq!(other.run_length, 0, "merge of an unsettled LatencyStat");
        if other.n == 0 {
            return;
        }
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.n += other.n;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    /// Forgets every value, pending or settled.
    pub fn reset(&mut self) {
        if self.n > 0 {
            self.hist.reset();
        }
        self.run_length = 0;
        self.n = 0;
        self.min = u64::MAX;
        self.max = 0;
        self.sum = 0;
        self.sum_sq = 0.0;
    }

    /// The smallest latency, ns; 0 when nothing was recorded.
    pub fn min(&self) -> u64 {
        if self.n == 0 { 0 } else { self.min }
    }

    /// The mean latency, ns; 0 when nothing was recorded.
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }

    /// Sample standard deviation, as fio reports it.
    pub fn stddev(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        let mean = self.sum as f64 / n;
        ((self.sum_sq - n * mean * mean) / (n - 1.0))
            .max(0.0)
            .sqrt()
    }

    /// The latency at percentile `p` (0–100], in ns.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.n == 0 {
            0
        } else {
            self.hist.value_at_percentile(p)
        }
    }
}

/// Counters and latencies for one direction.
#[derive(Clone, Debug, Default)]
pub struct DirStats {
    /// I/Os completed.
    pub ios: u64,
    /// Bytes those I/Os moved.
    pub bytes: u64,
    /// `submit()` call to the doorbell that handed the command to the device.
    pub slat: LatencyStat,
    /// Doorbell to the poll that reaped the completion.
    pub clat: LatencyStat,
    /// `submit()` call to completion: what the caller waited.
    pub lat: LatencyStat,
}

impl DirStats {
    /// Settles the three latencies (see [`LatencyStat::settle`]).
    pub fn settle(&mut self) {
        self.slat.settle();
        self.clat.settle();
        self.lat.settle();
    }

    /// Adds `other`'s counts and latencies, which must be settled.
    pub fn merge(&mut self, other: &DirStats) {
        self.ios += other.ios;
        self.bytes += other.bytes;
        self.slat.merge(&other.slat);
        self.clat.merge(&other.clat);
        self.lat.merge(&other.lat);
    }

    /// Forgets every count and latency.
    pub fn reset(&mut self) {
        self.ios = 0;
        self.bytes = 0;
        self.slat.reset();
        self.clat.reset();
        self.lat.reset();
    }
}

/// One interval of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DirSample {
    /// I/Os completed in the interval.
    pub ios: u64,
    /// Bytes they moved.
    pub bytes: u64,
    /// Mean submission latency, ns.
    pub slat_mean: f64,
    /// Mean completion latency, ns.
    pub clat_mean: f64,
    /// Mean total latency, ns.
    pub lat_mean: f64,
    /// The interval's largest latencies (fio's `log_max_value` logs them instead of means).
    pub slat_max: u64,
    /// The interval's largest completion latency, ns.
    pub clat_max: u64,
    /// The interval's largest total latency, ns.
    pub lat_max: u64,
    /// The interval's median completion latency, ns.
    pub clat_p50: u64,
    /// The interval's 99th-percentile completion latency, ns.
    pub clat_p99: u64,
    /// The interval's 99.9th-percentile completion latency, ns.
    pub clat_p999: u64,
}

impl DirSample {
    /// Operations per second over an interval of `duration_ns`.
    pub fn iops(&self, duration_ns: u64) -> f64 {
        if duration_ns == 0 {
            0.0
        } else {
            self.ios as f64 * 1e9 / duration_ns as f64
        }
    }

    /// Bytes per second over an interval of `duration_ns`.
    pub fn bytes_per_second(&self, duration_ns: u64) -> f64 {
        if duration_ns == 0 {
            0.0
        } else {
            self.bytes as f64 * 1e9 / duration_ns as f64
        }
    }

    /// The sample of one interval's statistics, which must be settled.
    pub fn of(stats: &DirStats) -> DirSample {
        DirSample {
            ios: stats.ios,
            bytes: stats.bytes,
            slat_mean: stats.slat.mean(),
            clat_mean: stats.clat.mean(),
            lat_mean: stats.lat.mean(),
            slat_max: stats.slat.max,
            clat_max: stats.clat.max,
            lat_max: stats.lat.max,
            clat_p50: stats.clat.percentile(50.0),
            clat_p99: stats.clat.percentile(99.0),
            clat_p999: stats.clat.percentile(99.9),
        }
    }
}

/// Both directions over one interval, ending `end_ms` after the measured run began.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// When the interval ended, ms since the measured run began.
    pub end_ms: u64,
    /// Exact length of the interval (rates use it; whole milliseconds would distort short ones).
    pub duration_ns: u64,
    /// The interval per direction (read, write, trim).
    pub dirs: [DirSample; DIRS],
}

/// One I/O as per-I/O logs see it (`log_avg_msec=0`), kept by the engines that record them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoRecord {
    /// Completion time, ns since the measured run began.
    pub end_ns: u64,
    /// 0 read, 1 write, 2 trim.
    pub dir: u8,
    /// Size of the I/O.
    pub bytes: u32,
    /// Byte offset of the I/O on its device (or in its file or object).
    pub offset: u64,
    /// Its submission latency, ns.
    pub slat_ns: u64,
    /// Its completion latency, ns.
    pub clat_ns: u64,
    /// Its total latency, ns.
    pub lat_ns: u64,
}

/// fio's distribution buckets: "IO depths" 1,2,4,8,16,32,>=64.
pub fn depth_bucket(depth: u32) -> usize {
    match depth {
        0..=1 => 0,
        2..=3 => 1,
        4..=7 => 2,
        8..=15 => 3,
        16..=31 => 4,
        32..=63 => 5,
        _ => 6,
    }
}

/// fio's "submit"/"complete" buckets: 0 (none), 1–4, 5–8, 9–16, 17–32, 33–64, >64.
pub fn batch_bucket(n: usize) -> usize {
    match n {
        0 => 0,
        1..=4 => 1,
        5..=8 => 2,
        9..=16 => 3,
        17..=32 => 4,
        33..=64 => 5,
        _ => 6,
    }
}

/// Min, max, mean and sample stddev of a series (fio's bw/iops lines).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spread {
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// The arithmetic mean.
    pub mean: f64,
    /// The sample standard deviation (n − 1); 0 for fewer than two values.
    pub stddev: f64,
    /// How many values there were.
    pub samples: usize,
}

impl Spread {
    /// The spread of `values`; all zeros when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let values: Vec<f64> = values.into_iter().collect();
        if values.is_empty() {
            return Spread::default();
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = if values.len() > 1 {
            values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Spread {
            min: values.iter().cloned().fold(f64::INFINITY, f64::min),
            max: values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            mean,
            stddev: var.sqrt(),
            samples: values.len(),
        }
    }
}

/// What a running job measures, for both engines: per-interval stats that become samples (logs,
/// plots, bw/iops spreads) and fold into the totals, plus progress counts and sync latencies.
pub(crate) struct Meter {
    pub interval: [DirStats; DIRS],
    pub total: [DirStats; DIRS],
    pub syncs: LatencyStat,
    pub samples: Vec<Sample>,
    pub sample_every_ns: u64,
    pub measure_start_ns: u64,
    pub last_sample_ns: u64,
    pub next_sample_ns: u64,
    pub ios: [u64; DIRS],
    pub bytes: [u64; DIRS],
}

impl Meter {
    pub fn new(sample_every_ns: u64) -> Meter {
        Meter {
            interval: Default::default(),
            total: Default::default(),
            syncs: LatencyStat::default(),
            samples: Vec::new(),
            sample_every_ns,
            measure_start_ns: 0,
            last_sample_ns: 0,
            next_sample_ns: 0,
            ios: [0; DIRS],
            bytes: [0; DIRS],
        }
    }

    /// Discards what ramp_time recorded and starts measuring at `now_ns`.
    pub fn begin(&mut self, now_ns: u64) {
        let every = self.sample_every_ns;
        *self = Meter {
            measure_start_ns: now_ns,
            last_sample_ns: now_ns,
            next_sample_ns: now_ns + every,
            ..Meter::new(every)
        };
    }

    /// Records an I/O that was one call from submission to completion (lat = clat; no slat).
    pub fn record(&mut self, dir: usize, bytes: u64, ns: u64) {
        let stats = &mut self.interval[dir];
        stats.ios += 1;
        stats.bytes += bytes;
        stats.clat.record(ns);
        stats.lat.record(ns);
        self.ios[dir] += 1;
        self.bytes[dir] += bytes;
    }

    pub fn sample_due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_sample_ns
    }

    /// Closes the current interval: a sample (unless a fragment shorter than half an interval),
    /// folded into the totals.
    pub fn take_sample(&mut self, now_ns: u64) {
        for stats in &mut self.interval {
            stats.settle();
        }
        let duration_ns = now_ns.saturating_sub(self.last_sample_ns);
        // A closing fragment shorter than half an interval would distort bw/iops spreads.
        if duration_ns * 2 >= self.sample_every_ns {
            self.samples.push(Sample {
                end_ms: (now_ns - self.measure_start_ns) / 1_000_000,
                duration_ns,
                dirs: std::array::from_fn(|d| DirSample::of(&self.interval[d])),
            });
        }
        for d in 0..DIRS {
            self.total[d].merge(&self.interval[d]);
            self.interval[d].reset();
        }
        self.last_sample_ns = now_ns;
        while self.next_sample_ns <= now_ns {
            self.next_sample_ns += self.sample_every_ns;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_moments_and_close_percentiles() {
        let mut s = LatencyStat::default();
        for v in 1..=1000u64 {
            s.record(v * 100);
        }
        s.settle();
        assert_eq!((s.n, s.min(), s.max), (1000, 100, 100_000));
        assert!((s.mean() - 50_050.0).abs() < 1e-6);
        assert!((s.stddev() - 28_881.94).abs() < 0.01, "{}", s.stddev());
        let p99 = s.percentile(99.0) as f64;
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.002, "{p99}");
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (
            LatencyStat::default(),
            LatencyStat::default(),
            LatencyStat::default(),
        );
        for v in 0..500u64 {
            a.record(v * 7 + 1);
            all.record(v * 7 + 1);
            b.record(v * 13 + 5);
            all.record(v * 13 + 5);
        }
        a.settle();
        b.settle();
        all.settle();
        a.merge(&b);
        assert_eq!(
            (a.n, a.min(), a.max, a.sum),
            (all.n, all.min(), all.max, all.sum)
        );
        assert_eq!(a.percentile(90.0), all.percentile(90.0));
        a.reset();
        assert_eq!((a.n, a.min(), a.percentile(50.0)), (0, 0, 0));
    }

    #[test]
    fn huge_latencies_saturate_instead_of_failing() {
        let mut s = LatencyStat::default();
        s.record(u64::MAX / 2);
        s.settle();
        assert_eq!(s.n, 1);
        assert!(s.percentile(50.0) >= MAX_TRACKED_NS / 2);
    }

    #[test]
    fn runs_of_equal_values_are_exact() {
        let (mut runs, mut plain) = (LatencyStat::default(), LatencyStat::default());
        for (v, times) in [(5u64, 3), (9, 1), (5, 2), (700, 4)] {
            for _ in 0..times {
                runs.record(v);
            }
        }
        runs.settle();
        for v in [5u64, 5, 5, 9, 5, 5, 700, 700, 700, 700] {
            plain.record(v);
            plain.settle();
        }
        assert_eq!(
            (runs.n, runs.min(), runs.max, runs.sum),
            (plain.n, plain.min(), plain.max, plain.sum)
        );
        assert_eq!(runs.sum_sq, plain.sum_sq);
        assert_eq!(runs.percentile(50.0), plain.percentile(50.0));
    }

    #[test]
    fn buckets_match_fio() {
        assert_eq!(
            [1, 2, 3, 4, 32, 63, 64, 128].map(depth_bucket),
            [0, 1, 1, 2, 5, 5, 6, 6]
        );
        assert_eq!([0, 1, 4, 5, 64, 65].map(batch_bucket), [0, 1, 1, 2, 5, 6]);
        let s = Spread::of([1.0, 2.0, 3.0]);
        assert_eq!((s.min, s.max, s.mean, s.samples), (1.0, 3.0, 2.0, 3));
        assert!((s.stddev - 1.0).abs() < 1e-12);
    }
}
