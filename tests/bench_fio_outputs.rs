//! `bluepoll bench` outputs read by fio's own tools: json+ by `fio_jsonplus_clat2csv`, the terse
//! line beside fio's, and the log files by `fio2gnuplot`. Each tool missing is a skip (a failure
//! with BLUEPOLL_REQUIRE_PEERS=1).

mod common;

use std::path::Path;
use std::process::Command;

use common::{Run, bluepoll, fio, json_of, require_peer, scratch_dir};

/// Runs one of fio's helper scripts in `dir`; None when it is not installed.
fn tool(name: &str, args: &[&str], dir: &Path) -> Option<Run> {
    Command::new(name)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .map(Run::from)
}

fn lines_of(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| l.split(',').map(|f| f.trim().to_string()).collect())
        .collect()
}

#[test]
fn json_plus_bins_convert_with_fio_jsonplus_clat2csv() {
    let dir = scratch_dir();
    let json = dir.path().join("out.json").display().to_string();
    let out = bluepoll(&[
        "bench",
        "--filename=mem:64M",
        "--name=jp",
        "--rw=randrw",
        "--runtime=1",
        "--time_based",
        "--output-format=json+",
        &format!("--output={json}"),
        "--eta=never",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let doc = json_of(&std::fs::read(&json).unwrap());
    let Some(conv) = tool(
        "fio_jsonplus_clat2csv",
        &["out.json", "out.csv"],
        dir.path(),
    ) else {
        return require_peer("fio_jsonplus_clat2csv");
    };
    assert!(conv.status.success(), "{}", conv.stderr_text());
    let csv = lines_of(&dir.path().join("out_job0.csv"));
    let header = &csv[0];
    assert_eq!(header[0], "nsec");
    assert!(csv.len() > 10, "a row per latency bucket: {}", csv.len());
    for dir_name in ["read", "write"] {
        let col = header
            .iter()
            .position(|h| h == &format!("{dir_name}_clat_ns_count"))
            .unwrap();
        let counted: u64 = csv[1..]
            .iter()
            .filter_map(|row| row.get(col).and_then(|c| c.parse::<u64>().ok()))
            .sum();
        let total = doc["jobs"][0][dir_name]["total_ios"].as_u64().unwrap();
        assert!(total > 0);
        assert_eq!(counted, total, "{dir_name}: CSV counts vs total_ios");
        // The last cumulative percentile of the direction is 1.
        let pct_col = col + 2;
        let last = csv[1..]
            .iter()
            .rev()
            .find_map(|row| row.get(pct_col).and_then(|c| c.parse::<f64>().ok()))
            .unwrap();
        assert_eq!(last, 1.0);
    }
    // The script's own check: every CSV count equals its JSON bin.
    let check = tool(
        "fio_jsonplus_clat2csv",
        &["out.json", "out.csv", "--validate"],
        dir.path(),
    )
    .unwrap();
    assert!(
        check.status.success() && check.stdout_text().contains("validated"),
        "{}{}",
        check.stdout_text(),
        check.stderr_text()
    );
}

/// Fields of fio 3.33's terse version 3 line (HOWTO "Terse output"): 5 of the job, 41 per
/// direction (read at 5, write at 46), then CPU at 87, depths at 92, latencies at 99–120.
const FIELDS: usize = 121;

fn terse_fields(text: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("3;"))
        .unwrap_or_else(|| panic!("no terse line in:\n{text}"));
    line.split(';').map(str::to_string).collect()
}

#[test]
fn terse_line_matches_fios_field_for_field() {
    let ours = bluepoll(&[
        "bench",
        "--minimal",
        "--terse-version=3",
        "--filename=null:64M",
        "--runtime=1",
        "--time_based",
        "--name=t",
    ]);
    assert!(ours.status.success(), "{}", ours.stderr_text());
    let text = ours.stdout_text();
    assert_eq!(
        text.lines().count(),
        1,
        "--minimal prints the terse line alone:\n{text}"
    );
    let ours = terse_fields(&text);
    assert_eq!(ours.len(), FIELDS, "{ours:?}");
    let Some(theirs) = fio(
        &[
            "--minimal",
            "--ioengine=null",
            "--size=64M",
            "--runtime=1",
            "--time_based",
            "--name=t",
        ],
        None,
    ) else {
        return require_peer("fio");
    };
    assert!(theirs.status.success(), "{}", theirs.stderr_text());
    let theirs = terse_fields(&theirs.stdout_text());
    assert_eq!(theirs.len(), ours.len(), "fio: {theirs:?}");
    // Version, job name, group, error.
    for i in [0, 2, 3, 4] {
        assert_eq!(ours[i], theirs[i], "field {i}");
    }
    assert!(theirs[1].starts_with("fio-") && ours[1].starts_with("bluepoll-"));
    // Read: KiB, KiB/s, IOPS, runtime — numbers, and both did reads.
    for i in 5..9 {
        assert!(
            ours[i].parse::<u64>().unwrap() > 0,
            "field {i}: {}",
            ours[i]
        );
        assert!(theirs[i].parse::<u64>().unwrap() > 0, "fio field {i}");
    }
    // Percentile fields name the same percentiles (fio's default list, padded to 20).
    for i in 17..37 {
        let name = |f: &str| f.split_once('=').map(|(p, _)| p.to_string()).unwrap();
        assert_eq!(name(&ours[i]), name(&theirs[i]), "field {i}");
    }
    // The job only read: the write block is zero in both.
    assert_eq!(ours[46], "0");
    assert_eq!(theirs[46], "0");
    // Each field has fio's form: whole numbers, six decimals, or one/two-decimal shares.
    let shape = |f: &str| -> String {
        if let Some((p, v)) = f.split_once('=') {
            return format!("{}={}", p.contains('.'), v.parse::<u64>().is_ok());
        }
        let (num, pct) = match f.strip_suffix('%') {
            Some(n) => (n, "%"),
            None => (f, ""),
        };
        let decimals = num.split_once('.').map_or(0, |(_, d)| d.len());
        format!("{decimals}{pct}")
    };
    for i in 0..FIELDS {
        if i == 1 || i == 2 {
            continue;
        }
        assert_eq!(
            shape(&ours[i]),
            shape(&theirs[i]),
            "field {i}: {} vs fio's {}",
            ours[i],
            theirs[i]
        );
    }
    let e = bluepoll(&["bench", "--terse-version=4", "--minimal"]);
    assert!(!e.status.success());
    assert!(
        e.stderr_text().contains("terse_version"),
        "{}",
        e.stderr_text()
    );
}

#[test]
fn formats_combine_in_fios_order() {
    let out = bluepoll(&[
        "bench",
        "--output-format=normal,json+,terse",
        "--filename=null:64M",
        "--runtime=0.3",
        "--time_based",
        "--name=c",
        "--eta=never",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let text = out.stdout_text();
    // fio prints terse, then JSON, then the normal text.
    let terse = text.find("3;bluepoll-").unwrap();
    let json = text.find("\"fio version\"").unwrap();
    let normal = text.find("c: (groupid=0").unwrap();
    assert!(terse < json && json < normal, "{text}");
    assert!(text.contains("\"bins\""));
}

#[test]
fn logs_read_by_fio2gnuplot_as_fios_are() {
    let dir = scratch_dir();
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("fio");
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::create_dir_all(&theirs).unwrap();
    let prefix = ours.join("x").display().to_string();
    let out = bluepoll(&[
        "bench",
        "--filename=null:64M",
        "--name=t",
        "--rw=randrw",
        "--runtime=1",
        "--time_based",
        "--log_avg_msec=100",
        &format!("--write_bw_log={prefix}"),
        &format!("--write_iops_log={prefix}"),
        &format!("--write_hist_log={prefix}"),
        "--log_hist_msec=200",
        "--output-format=json",
        "--eta=never",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let doc = json_of(&out.stdout);
    let bw = lines_of(&ours.join("x_bw.1.log"));
    // Ten 100 ms intervals, a line each for reads and writes.
    assert!(bw.len() >= 16, "{bw:?}");
    for line in &bw {
        // msec, KiB/s, direction, bs 0 and priority 0 for averaged entries.
        assert_eq!(line.len(), 5, "{line:?}");
        assert!(line.iter().all(|f| f.parse::<u64>().is_ok()), "{line:?}");
        assert!(line[2] == "0" || line[2] == "1");
        assert_eq!(&line[3..], ["0", "0"]);
    }
    // The histogram log: msec, direction, bs, then fio's 1856 buckets; its counts are the I/Os.
    let hist = lines_of(&ours.join("x_clat_hist.1.log"));
    let mut per_dir = [0u64; 2];
    for line in &hist {
        assert_eq!(line.len(), 3 + 1856);
        let counts: u64 = line[3..].iter().map(|c| c.parse::<u64>().unwrap()).sum();
        per_dir[line[1].parse::<usize>().unwrap()] += counts;
    }
    let total = |d: &str| doc["jobs"][0][d]["total_ios"].as_u64().unwrap();
    assert_eq!(per_dir, [total("read"), total("write")]);

    // fio's own averaged bandwidth log has the same columns.
    if let Some(run) = fio(
        &[
            "--ioengine=null",
            "--size=64M",
            "--runtime=1",
            "--time_based",
            "--write_bw_log=x",
            "--log_avg_msec=100",
            "--name=t",
        ],
        Some(&theirs),
    ) {
        assert!(run.status.success(), "{}", run.stderr_text());
        for line in lines_of(&theirs.join("x_bw.1.log")) {
            assert_eq!(line.len(), 5, "fio: {line:?}");
            assert_eq!(&line[3..], ["0", "0"], "fio: {line:?}");
        }
    } else {
        return require_peer("fio");
    }

    // fio2gnuplot's data path (python only; rendering, -g, needs gnuplot): it finds the per-job
    // bw log, reads every line and writes its statistics.
    let Some(run) = tool("fio2gnuplot", &["-b"], &ours) else {
        return require_peer("fio2gnuplot");
    };
    assert!(
        run.status.success() && run.stdout_text().contains("x_bw.1.log"),
        "{}{}",
        run.stdout_text(),
        run.stderr_text()
    );
    let global = std::fs::read_to_string(ours.join("result.global")).unwrap();
    // It skips lines at time 0 (there are none: the first interval ends at 100 ms).
    assert!(
        global.contains(&format!("values_count={}\n", bw.len())),
        "{global}"
    );
    assert!(global.contains("disks_count=1\n"), "{global}");
    let mean = bw.iter().map(|l| l[1].parse::<f64>().unwrap()).sum::<f64>() / bw.len() as f64;
    assert!(
        global.contains(&format!("avg={mean:.2}\n")),
        "{global} vs {mean:.2}"
    );
}

#[test]
fn jobs_share_a_log_without_job_numbers() {
    let dir = scratch_dir();
    let prefix = dir.path().join("s").display().to_string();
    let out = bluepoll(&[
        "bench",
        "--filename=null:64M",
        "--rw=randread",
        "--runtime=0.6",
        "--time_based",
        "--log_avg_msec=100",
        "--per_job_logs=0",
        "--log_offset=1",
        &format!("--write_iops_log={prefix}"),
        "--name=a",
        "--name=b",
        "--eta=never",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    // Both jobs in one file, one after the other: msec, IOPS, direction, bs, offset, priority.
    let shared = lines_of(&dir.path().join("s_iops.log"));
    assert!(shared.len() >= 8, "{shared:?}");
    assert!(
        shared
            .iter()
            .all(|l| l.len() == 6 && l[2] == "0" && l[3..] == ["0", "0", "0"])
    );
    let ms = |l: &Vec<String>| l[0].parse::<u64>().unwrap();
    let restarts = shared.windows(2).filter(|w| ms(&w[1]) < ms(&w[0])).count();
    assert_eq!(
        restarts, 1,
        "the second job's lines follow the first's: {shared:?}"
    );
    assert!(!dir.path().join("s_iops.1.log").exists());
}
