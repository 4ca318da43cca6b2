//! fio's latency buckets ("plat"), the scale of `--output-format=json+` bins and of
//! `write_hist_log` lines.
//!
//! fio keeps every latency below 128 ns in a bucket of its own; above that, a value's bucket is
//! its highest set bit plus the 6 bits after it, so each power of two is split into 64 equal
//! buckets (a relative width under 1/64). There are 29 such groups, 1856 buckets in all; the
//! last takes everything from 2^33 ns (~8.6 s) up. A bucket is named by the middle of its range,
//! which is what fio prints as a bin key. bluepoll records latencies in HDR histograms with three
//! significant digits (finer than these buckets), so its counts re-bin into fio's without loss
//! beyond fio's own rounding.

use std::collections::BTreeMap;

use super::stats::LatencyStat;

/// Bits of a value kept after its highest set bit.
const KEPT_BITS: u32 = 6;
/// Buckets per power of two.
const PER_GROUP: u64 = 1 << KEPT_BITS;
/// Values below this have a bucket each.
const EXACT_BELOW: u64 = 2 * PER_GROUP;
/// How many buckets fio has (its `FIO_IO_U_PLAT_NR`): the columns of a histogram log line.
pub const BUCKETS: usize = 29 * PER_GROUP as usize;

/// The bucket a latency of `ns` falls in.
pub fn index(ns: u64) -> usize {
    if ns < EXACT_BELOW {
        return ns as usize;
    }
    let top_bit = 63 - ns.leading_zeros();
    let dropped = top_bit - KEPT_BITS;
    let group_start = ((dropped + 1) as usize) << KEPT_BITS;
    let within = ((ns >> dropped) & (PER_GROUP - 1)) as usize;
    (group_start + within).min(BUCKETS - 1)
}

/// The value fio names bucket `index` by: the middle of its range, in ns.
pub fn value(index: usize) -> u64 {
    let i = index as u64;
    if i < EXACT_BELOW {
        return i;
    }
    let dropped = (i >> KEPT_BITS) - 1;
    let group_base = 1u64 << (dropped + u64::from(KEPT_BITS));
    let k = i % PER_GROUP;
    // Bucket k covers [base + k·w, base + (k+1)·w) with w = 2^dropped; dropped ≥ 1 here, so
    // the middle is a whole number.
    group_base + ((2 * k + 1) << (dropped - 1))
}

/// The recorded values of `stat` as (value in ns, count), ascending. Each HDR bucket stands for
/// its middle value: exact below 2048 ns, within 0.1 % above.
pub fn recorded(stat: &LatencyStat) -> impl Iterator<Item = (u64, u64)> + '_ {
    stat.hist.iter_recorded().map(|v| {
        (
            stat.hist.median_equivalent(v.value_iterated_to()),
            v.count_at_value(),
        )
    })
}

/// The counts of `stat` in fio's buckets: (bucket value in ns, count), ascending, empty buckets
/// left out — fio's json+ `bins`.
pub fn bins(stat: &LatencyStat) -> Vec<(u64, u64)> {
    let mut by_bucket: BTreeMap<usize, u64> = BTreeMap::new();
    for (ns, count) in recorded(stat) {
        *by_bucket.entry(index(ns)).or_default() += count;
    }
    by_bucket.into_iter().map(|(i, n)| (value(i), n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_value_falls_in_its_own_bucket() {
        for i in 0..BUCKETS {
            assert_eq!(index(value(i)), i, "bucket {i} value {}", value(i));
        }
        // Values fio's documentation and its CSV script name.
        assert_eq!(value(BUCKETS - 1), 17_112_760_320);
        for key in [87_552u64, 89_600, 94_720, 100_864, 103_936, 107_008] {
            assert_eq!(value(index(key)), key);
        }
    }

    #[test]
    fn buckets_are_as_fio_cuts_them() {
        // One bucket per value below 128, then 64 per power of two.
        assert_eq!(
            (index(0), index(127), index(128), index(129)),
            (0, 127, 128, 128)
        );
        assert_eq!((index(130), index(255), index(256)), (129, 191, 192));
        assert_eq!((value(128), value(191), value(192)), (129, 255, 258));
        // Everything from 2^33 + 63·2^27 on is the last bucket.
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(index(1 << 40), BUCKETS - 1);
        // Monotone, and a bucket is never wider than 1/64 of its values.
        let mut last = 0;
        for ns in (0..5_000_000u64).step_by(997) {
            let i = index(ns);
            assert!(i >= last);
            last = i;
            let mid = value(i) as f64;
            assert!((mid - ns as f64).abs() <= mid / 64.0 + 0.5, "{ns} → {mid}");
        }
    }

    #[test]
    fn bins_keep_every_count() {
        let mut s = LatencyStat::default();
        for v in 1..=5000u64 {
            s.record(v * 37);
        }
        s.record(3);
        s.settle();
        let bins = bins(&s);
        assert_eq!(bins.iter().map(|&(_, n)| n).sum::<u64>(), s.n);
        assert!(bins.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(bins[0], (3, 1));
        assert!(bins.iter().all(|&(v, _)| value(index(v)) == v));
    }
}
