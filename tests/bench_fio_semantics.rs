//! The I/Os `bluepoll bench` issues agree with fio's for the same job: both record them with
//! `write_iolog` (fio 3.33 on its null engine or a file, bluepoll on its null device or the same
//! file), and the traces are compared — exactly where fio is deterministic (sequential skips,
//! offset_increment, loops, sizes in %), as distributions within stated tolerances where it
//! draws at random (bssplit, bsrange, zipf, pareto, zoned), and as counts over time for rates
//! (rate_iops, thinktime).

mod common;

use std::collections::HashMap;
use std::path::Path;

use bluepoll::bench::iolog::{self, Action};
use common::{bluepoll, fio, require_peer, scratch_dir};

/// (action, offset, length) of every read, write and trim in a trace.
fn ios_of(path: &Path) -> Vec<(Action, u64, u64)> {
    let log = iolog::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    log.entries
        .iter()
        .filter(|e| matches!(e.action, Action::Read | Action::Write | Action::Trim))
        .map(|e| (e.action, e.offset, e.len))
        .collect()
}

/// Runs the job through fio and through bluepoll in a fresh directory each; returns both
/// traces, or None when fio is missing. `fio_only` / `bluepoll_only` add per-tool options.
fn both(
    args: &[&str],
    fio_only: &[&str],
    bluepoll_only: &[&str],
) -> Option<[Vec<(Action, u64, u64)>; 2]> {
    let dir = scratch_dir();
    let fio_log = dir.path().join("fio.log");
    let bp_log = dir.path().join("bp.log");
    let fio_log_opt = format!("--write_iolog={}", fio_log.display());
    let bp_log_opt = format!("--write_iolog={}", bp_log.display());
    let mut fio_args = vec![
        "--name=j",
        "--randseed=1234",
        "--output=/dev/null",
        &fio_log_opt,
    ];
    fio_args.extend(args);
    fio_args.extend(fio_only);
    let out = fio(&fio_args, Some(dir.path()))?;
    assert!(
        out.status.success(),
        "fio {fio_args:?}: {}",
        out.stderr_text()
    );
    let mut bp_args = vec![
        "bench",
        "--name=j",
        "--randseed=1234",
        "--eta=never",
        "--output=/dev/null",
        &bp_log_opt,
    ];
    bp_args.extend(args);
    bp_args.extend(bluepoll_only);
    let out = bluepoll(&bp_args);
    assert!(
        out.status.success(),
        "bluepoll {bp_args:?}: {}",
        out.stderr_text()
    );
    Some([ios_of(&fio_log), ios_of(&bp_log)])
}

macro_rules! traces {
    ($args:expr) => {
        traces!($args, &[], &[])
    };
    ($args:expr, $fio:expr, $bp:expr) => {
        match both($args, $fio, $bp) {
            Some(t) => t,
            None => {
                require_peer("fio");
                return;
            }
        }
    };
}

/// Share of I/Os per key.
fn shares<K: std::hash::Hash + Eq + Ord + Copy>(
    ios: &[(Action, u64, u64)],
    key: impl Fn(&(Action, u64, u64)) -> K,
) -> Vec<(K, f64)> {
    let mut counts: HashMap<K, usize> = HashMap::new();
    for io in ios {
        *counts.entry(key(io)).or_default() += 1;
    }
    let mut out: Vec<(K, f64)> = counts
        .into_iter()
        .map(|(k, n)| (k, n as f64 / ios.len() as f64))
        .collect();
    out.sort_by_key(|p| p.0);
    out
}

/// Every key's share in `ours` within `tolerance` of fio's (absent keys count as 0).
fn assert_shares_close<K: std::fmt::Debug + Eq + Ord + Copy + std::hash::Hash>(
    what: &str,
    fio: &[(K, f64)],
    ours: &[(K, f64)],
    tolerance: f64,
) {
    let get = |list: &[(K, f64)], k: K| list.iter().find(|(x, _)| *x == k).map_or(0.0, |p| p.1);
    for &(k, _) in fio.iter().chain(ours) {
        let (a, b) = (get(fio, k), get(ours, k));
        assert!(
            (a - b).abs() <= tolerance,
            "{what}: {k:?}: fio {a:.3}, bluepoll {b:.3} (tolerance {tolerance})\nfio {fio:?}\nbluepoll {ours:?}"
        );
    }
}

/// Share of accesses the hottest `fraction` of touched offsets take.
fn top_share(ios: &[(Action, u64, u64)], fraction: f64) -> f64 {
    let mut hits: HashMap<u64, usize> = HashMap::new();
    for io in ios {
        *hits.entry(io.1).or_default() += 1;
    }
    let mut counts: Vec<usize> = hits.into_values().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top = ((counts.len() as f64 * fraction) as usize).max(1);
    counts[..top].iter().sum::<usize>() as f64 / ios.len() as f64
}

#[test]
fn bssplit_with_the_random_map_shortens_ios_as_fio_does() {
    let [f, b] = traces!(&[
        "--ioengine=null",
        "--size=64M",
        "--rw=randrw",
        "--bssplit=4k/10:64k/50:32k/40",
    ]);
    // One pass over 64 MiB: fio cuts I/Os that would run into blocks already touched.
    let ratio = b.len() as f64 / f.len() as f64;
    assert!(
        (0.93..1.07).contains(&ratio),
        "I/O counts: fio {}, bluepoll {}",
        f.len(),
        b.len()
    );
    let len = |io: &(Action, u64, u64)| io.2;
    assert_shares_close("bssplit lengths", &shares(&f, len), &shares(&b, len), 0.03);
}

#[test]
fn bssplit_per_direction_and_bsrange_follow_their_weights() {
    let [f, b] = traces!(&[
        "--ioengine=null",
        "--size=1G",
        "--rw=randrw",
        "--norandommap",
        "--number_ios=20000",
        "--bssplit=4k/10:64k/50:32k/40,8k/100",
    ]);
    let key = |io: &(Action, u64, u64)| (io.0 == Action::Write, io.2);
    assert_shares_close(
        "bssplit per direction",
        &shares(&f, key),
        &shares(&b, key),
        0.02,
    );
    let [f, b] = traces!(&[
        "--ioengine=null",
        "--size=1G",
        "--rw=randread",
        "--norandommap",
        "--number_ios=20000",
        "--bsrange=4k-32k",
    ]);
    let len = |io: &(Action, u64, u64)| io.2;
    assert_shares_close("bsrange lengths", &shares(&f, len), &shares(&b, len), 0.02);
}

#[test]
fn skewed_distributions_are_as_hot_as_fios() {
    for dist in ["zipf:1.2", "pareto:0.9", "normal:10"] {
        let option = format!("--random_distribution={dist}");
        let [f, b] = traces!(&[
            "--ioengine=null",
            "--size=256M",
            "--rw=randread",
            "--norandommap",
            "--number_ios=50000",
            &option,
        ]);
        for fraction in [0.01, 0.1] {
            let (x, y) = (top_share(&f, fraction), top_share(&b, fraction));
            assert!(
                (x - y).abs() <= 0.02,
                "{dist}: the hottest {fraction} of blocks take {x:.3} of fio's accesses, {y:.3} of bluepoll's"
            );
        }
    }
}

#[test]
fn zoned_distribution_sends_accesses_where_fio_does() {
    let size = 100u64 << 20;
    let [f, b] = traces!(&[
        "--ioengine=null",
        "--size=100M",
        "--rw=randread",
        "--norandommap",
        "--number_ios=50000",
        "--random_distribution=zoned:50/5:30/15:20/80",
    ]);
    let zone = |io: &(Action, u64, u64)| {
        let pct = io.1 * 100 / size;
        if pct < 5 {
            0
        } else if pct < 20 {
            1
        } else {
            2
        }
    };
    assert_shares_close("zones", &shares(&f, zone), &shares(&b, zone), 0.015);
}

#[test]
fn sequential_skips_offset_increment_and_loops_match_exactly() {
    for rw in ["--rw=read:8k", "--rw=read:-8k", "--rw=write:16k"] {
        let [f, b] = traces!(&["--ioengine=null", "--size=1M", "--bs=4k", rw]);
        assert_eq!(f, b, "{rw}");
    }
    let [f, b] = traces!(&[
        "--ioengine=null",
        "--size=1M",
        "--bs=64k",
        "--rw=write",
        "--loops=3"
    ]);
    assert_eq!(f, b, "loops=3");
    assert_eq!(b.len(), 48);
    // Each clone writes its own trace in bluepoll (PATH, PATH.1, …); fio's one trace has the
    // three, each starting offset_increment further on.
    let dir = scratch_dir();
    let log = dir.path().join("bp.log");
    let out = bluepoll(&[
        "bench",
        "--name=j",
        "--ioengine=null",
        "--rw=write",
        "--bs=4k",
        "--size=1M",
        "--offset=4k",
        "--offset_increment=16M",
        "--numjobs=3",
        "--eta=never",
        "--output=/dev/null",
        &format!("--write_iolog={}", log.display()),
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    for clone in 0..3u64 {
        let path = match clone {
            0 => log.clone(),
            n => dir.path().join(format!("bp.log.{n}")),
        };
        let ios = ios_of(&path);
        assert_eq!(ios.len(), 256);
        assert_eq!(ios[0].1, 4096 + clone * (16 << 20), "clone {clone}");
        assert_eq!(ios[255].1, 4096 + clone * (16 << 20) + 255 * 4096);
    }
}

#[test]
fn sizes_and_offsets_in_percent_are_of_the_file() {
    let dir = scratch_dir();
    let file = dir.path().join("data");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(64 << 20))
        .unwrap();
    let name = format!("--filename={}", file.display());
    let [f, b] = traces!(&[&name, "--rw=read", "--bs=4k", "--size=25%", "--offset=50%"]);
    assert_eq!(f, b);
    assert_eq!(b.first().map(|io| io.1), Some(32 << 20));
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        64 << 20,
        "the file kept its size"
    );
}

#[test]
fn rate_iops_and_thinktime_pace_like_fio() {
    for (pace, tolerance) in [("--rate_iops=500", 0.1), ("--thinktime=1000", 0.15)] {
        let [f, b] = traces!(&[
            "--ioengine=null",
            "--size=64M",
            "--rw=randread",
            "--time_based",
            "--runtime=2",
            pace,
        ]);
        let ratio = b.len() as f64 / f.len() as f64;
        assert!(
            (1.0 - ratio).abs() <= tolerance,
            "{pace}: fio issued {}, bluepoll {}",
            f.len(),
            b.len()
        );
    }
}

/// `read_iolog` replays a trace fio recorded: the same I/Os, in order.
#[test]
fn read_iolog_replays_a_trace_fio_recorded() {
    let [f, _] = traces!(&[
        "--ioengine=null",
        "--size=16M",
        "--rw=randrw",
        "--bs=4k",
        "--number_ios=300",
    ]);
    let dir = scratch_dir();
    let recorded = dir.path().join("fio.log");
    let out = fio(
        &[
            "--name=j",
            "--ioengine=null",
            "--size=16M",
            "--rw=randrw",
            "--bs=4k",
            "--number_ios=300",
            "--output=/dev/null",
            &format!("--write_iolog={}", recorded.display()),
        ],
        Some(dir.path()),
    )
    .expect("fio ran above");
    assert!(out.status.success());
    let replayed = dir.path().join("replayed.log");
    let out = bluepoll(&[
        "bench",
        "--name=r",
        "--filename=mem:16M",
        &format!("--read_iolog={}", recorded.display()),
        &format!("--write_iolog={}", replayed.display()),
        "--eta=never",
        "--output=/dev/null",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(ios_of(&replayed), ios_of(&recorded));
    assert_eq!(f.len(), ios_of(&recorded).len());
}
