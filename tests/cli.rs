//! The `bluepoll` command as a user meets it: the acceptance lines of the bench harness.

mod common;

use common::{bluepoll, fio, json_of, require_peer, scratch_dir};
use serde_json::Value;

#[test]
fn default_job_prints_a_fio_like_summary() {
    let out = bluepoll(&["bench", "--runtime=1", "--eta=never"]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let text = out.stdout_text();
    for needle in [
        "quick: (groupid=0, jobs=1): err= 0",
        "read: IOPS=",
        "clat percentiles",
        "99.00th=[",
        "Run status group 0",
        "Reactors:",
    ] {
        assert!(text.contains(needle), "missing '{needle}' in:\n{text}");
    }
}

#[test]
fn json_output_is_fio_shaped() {
    let out = bluepoll(&["bench", "--runtime=1", "--output-format=json"]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let doc = json_of(&out.stdout);
    let read = &doc["jobs"][0]["read"];
    assert!(read["iops"].as_f64().unwrap() > 0.0);
    assert!(
        read["clat_ns"]["percentile"]["99.000000"]
            .as_u64()
            .is_some()
    );
    assert!(read["total_ios"].as_u64().unwrap() > 0);
    assert_eq!(doc["jobs"][0]["jobname"], "quick");
    assert!(
        doc["fio version"]
            .as_str()
            .unwrap()
            .starts_with("bluepoll-")
    );
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn json_has_every_key_fio_writes() {
    let Some(fio_out) = fio(
        &[
            "--name=k",
            "--ioengine=null",
            "--rw=randread",
            "--size=16m",
            "--runtime=1",
            "--time_based",
            "--output-format=json",
        ],
        None,
    ) else {
        return require_peer("fio");
    };
    let theirs = json_of(&fio_out.stdout);
    let out = bluepoll(&[
        "bench",
        "--name=k",
        "--filename=null:16M",
        "--rw=randread",
        "--runtime=1",
        "--time_based",
        "--output-format=json",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let ours = json_of(&out.stdout);
    let pairs = [
        (&theirs, &ours),
        (&theirs["jobs"][0], &ours["jobs"][0]),
        (&theirs["jobs"][0]["read"], &ours["jobs"][0]["read"]),
        (
            &theirs["jobs"][0]["read"]["clat_ns"],
            &ours["jobs"][0]["read"]["clat_ns"],
        ),
        (
            &theirs["jobs"][0]["read"]["clat_ns"]["percentile"],
            &ours["jobs"][0]["read"]["clat_ns"]["percentile"],
        ),
        (
            &theirs["jobs"][0]["latency_us"],
            &ours["jobs"][0]["latency_us"],
        ),
        (
            &theirs["jobs"][0]["iodepth_level"],
            &ours["jobs"][0]["iodepth_level"],
        ),
    ];
    for (fio_part, our_part) in pairs {
        let ours = keys(our_part);
        for key in keys(fio_part) {
            assert!(
                ours.contains(&key),
                "fio writes '{key}', bluepoll does not (has {ours:?})"
            );
        }
    }
}

#[test]
fn verified_writes_read_back_clean() {
    let out = bluepoll(&[
        "bench",
        "--filename=mem:256M",
        "--verify=crc32c",
        "--bs=4k",
        "--iodepth=16",
        "--output-format=json",
        "--name=write",
        "--rw=randwrite",
        "--name=read",
        "--rw=read",
        "--stonewall",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let doc = json_of(&out.stdout);
    let jobs = doc["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    let units = 256 * 1024 / 4;
    // The write job covers every unit once, then reads them all back in its verify pass.
    assert_eq!(jobs[0]["write"]["total_ios"], units);
    assert_eq!(jobs[0]["read"]["total_ios"], units);
    assert_eq!(jobs[1]["read"]["total_ios"], units);
    for job in jobs {
        assert_eq!(job["bluepoll"]["verify_errors"], 0, "{job}");
        assert_eq!(job["error"], 0);
    }
}

#[test]
fn lost_or_corrupted_writes_fail_verification() {
    for faults in ["drop_writes=0.01", "corrupt_writes=0.01"] {
        let uri = format!("--filename=fault:seed=3,{faults}+mem:64M");
        let out = bluepoll(&[
            "bench",
            &uri,
            "--verify=crc32c",
            "--bs=4k",
            "--iodepth=8",
            "--output-format=json",
            "--name=write",
            "--rw=randwrite",
            "--do_verify=0",
            "--name=read",
            "--rw=read",
            "--stonewall",
        ]);
        assert!(
            !out.status.success(),
            "{faults}: a run with verify errors must fail"
        );
        let doc = json_of(&out.stdout);
        let errors = doc["jobs"][1]["bluepoll"]["verify_errors"]
            .as_u64()
            .unwrap();
        // 1% of 16384 writes: the exact count depends only on the seed.
        assert!(
            errors > 50 && errors < 400,
            "{faults}: {errors} verify errors"
        );
        assert_eq!(
            doc["jobs"][1]["error"], 84,
            "EILSEQ, as fio reports verify failures"
        );
        assert!(
            out.stderr_text().contains("verify errors"),
            "{}",
            out.stderr_text()
        );
    }
}

#[test]
fn io_errors_end_the_job_and_the_run_fails() {
    let out = bluepoll(&[
        "bench",
        "--filename=fault:eio_nth=100,eio_on=read+mem:16M",
        "--size=16m",
        "--rw=randread",
        "--runtime=1",
        "--output-format=json",
    ]);
    assert!(!out.status.success());
    let doc = json_of(&out.stdout);
    assert_eq!(doc["jobs"][0]["error"], 5, "EIO");
    let message = doc["jobs"][0]["bluepoll"]["messages"][0].as_str().unwrap();
    assert!(message.contains("Unrecovered Read Error"), "{message}");
}

#[test]
fn fsync_sends_a_flush_after_every_n_writes() {
    let out = bluepoll(&[
        "bench",
        "--name=f",
        "--filename=mem:16M",
        "--rw=randwrite",
        "--bs=4k",
        "--size=4m",
        "--iodepth=8",
        "--fdatasync=16",
        "--output-format=json",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let job = &json_of(&out.stdout)["jobs"][0];
    assert_eq!(job["write"]["total_ios"], 1024);
    assert_eq!(job["sync"]["total_ios"], 64);
    assert_eq!(job["sync"]["lat_ns"]["N"], 64);

    // A failed Flush is an I/O error like any other.
    let out = bluepoll(&[
        "bench",
        "--name=f",
        "--filename=fault:eio_nth=3,eio_on=flush+mem:16M",
        "--rw=write",
        "--size=4m",
        "--fsync=2",
        "--output-format=json",
    ]);
    assert!(!out.status.success());
    let job = &json_of(&out.stdout)["jobs"][0];
    assert_eq!(job["error"], 5, "EIO");
    assert_eq!(job["sync"]["total_ios"], 2);
    let message = job["bluepoll"]["messages"][0].as_str().unwrap();
    assert!(message.starts_with("flush error on fault:"), "{message}");
}

#[test]
fn bad_input_is_one_line_naming_the_problem() {
    let dir = scratch_dir();
    let missing = dir.path().join("missing.fio");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--frobnicate=1".into()], "unknown option 'frobnicate'"),
        (vec!["--bs=4q".into()], "invalid value '4q' for option 'bs'"),
        (vec![missing.display().to_string()], "cannot read job file"),
        (
            vec!["--filename=mme:1G".into()],
            "unknown device scheme 'mme'",
        ),
        (
            vec!["--iodepth=0".into()],
            "invalid value '0' for option 'iodepth'",
        ),
        (
            vec!["--bs=1000".into(), "--filename=mem:1M".into()],
            "not a multiple of the block size",
        ),
        (
            vec!["--offset=2G".into(), "--filename=mem:1G".into()],
            "offset extends end",
        ),
        (vec!["--cpus=9999".into()], "cpu 9999 is not available"),
        (
            vec!["--filename=uring:/nonexistent/dir/file".into()],
            "/nonexistent/dir/file",
        ),
        (
            vec!["--filename=pcie:ffff:ff:1f.7".into()],
            "no such PCI function",
        ),
        (vec!["--filename=pcie:00:04".into()], "is not a PCI address"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["bench".to_string(), "--runtime=1".to_string()];
        full.extend(args.iter().cloned());
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = bluepoll(&refs);
        let stderr = out.stderr_text();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: expected one line, got:\n{stderr}"
        );
        assert!(
            stderr.starts_with("bluepoll: error: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
    for (args, needle) in [
        (&["selftest"][..], "usage: bluepoll selftest"),
        (
            &["selftest", "device", "pcie:00:04.0"],
            "pass --destructive",
        ),
        (
            &["selftest", "device", "mem:64M", "--destructive"],
            "runs on pcie: devices",
        ),
        (
            &["selftest", "check-image", "/nonexistent.img"],
            "/nonexistent.img",
        ),
        (&["devinfo", "pcie:0000:ff:1f.7?nsid=0"], "nsid '0'"),
        // The tests are built without the `spdk` feature: the scheme is known, and refused
        // with what to do about it.
        (
            &["devinfo", "spdk:trtype=PCIe traddr=0000:01:00.0"],
            "build with `--features spdk`",
        ),
    ] {
        let out = bluepoll(args);
        let stderr = out.stderr_text();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = bluepoll(&["nonsense"]);
    assert!(!out.status.success());
    assert!(out.stderr_text().contains("unknown command 'nonsense'"));
}

#[test]
fn every_job_file_runs_under_bluepoll() {
    for file in common::job_files() {
        let path = file.display().to_string();
        let out = bluepoll(&["bench", &path, "--runtime=0.3", "--output-format=json"]);
        assert!(out.status.success(), "{path}: {}", out.stderr_text());
        let doc = json_of(&out.stdout);
        for job in doc["jobs"].as_array().unwrap() {
            let ios = job["read"]["total_ios"].as_u64().unwrap()
                + job["write"]["total_ios"].as_u64().unwrap();
            assert!(ios > 0, "{path}: job {} did no I/O", job["jobname"]);
        }
    }
}

#[test]
fn every_job_file_runs_unchanged_under_fio() {
    if fio(&["--version"], None).is_none() {
        return require_peer("fio");
    }
    let dir = scratch_dir();
    for file in common::job_files() {
        let path = file.display().to_string();
        // The file itself is unchanged; the null engine keeps fio off the disk.
        let out = fio(
            &["--ioengine=null", "--output-format=json", &path],
            Some(dir.path()),
        )
        .unwrap();
        assert!(
            out.status.success(),
            "fio rejected {path}: {}",
            out.stderr_text()
        );
        let doc = json_of(&out.stdout);
        assert!(!doc["jobs"].as_array().unwrap().is_empty(), "{path}");
    }
}

#[test]
fn latency_logs_and_plot_are_written() {
    let dir = scratch_dir();
    let prefix = dir.path().join("run").display().to_string();
    let plot = dir.path().join("run.svg").display().to_string();
    let out = bluepoll(&[
        "bench",
        "--filename=mem:64M",
        "--name=mix",
        "--rw=randrw",
        "--rwmixread=70",
        "--runtime=2.2",
        "--time_based",
        "--log_avg_msec=500",
        &format!("--write_lat_log={prefix}"),
        &format!("--plot={plot}"),
        "--eta=never",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    for kind in ["lat", "clat", "slat", "iops", "clat_pct"] {
        let log = std::fs::read_to_string(format!("{prefix}_{kind}.1.log")).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        // Four 500 ms intervals, two directions each.
        assert!(lines.len() >= 8, "{kind}: {log}");
        for line in &lines {
            let fields: Vec<&str> = line.split(", ").collect();
            assert_eq!(fields.len(), 5, "{kind}: {line}");
            assert!(
                fields.iter().all(|f| f.parse::<u64>().is_ok()),
                "{kind}: {line}"
            );
        }
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.matches("<polyline").count() >= 6,
        "IOPS, percentiles and spectrum for both directions"
    );
}

#[test]
fn numjobs_spread_over_reactors() {
    let out = bluepoll(&[
        "bench",
        "--filename=null:1G",
        "--numjobs=2",
        "--cpus=0,1",
        "--runtime=0.5",
        "--output-format=json",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let doc = json_of(&out.stdout);
    // quick.fio has group_reporting: two jobs merge into one entry.
    let jobs = doc["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["bluepoll"]["jobs"], 2);
    let reactors = doc["bluepoll"]["reactors"].as_array().unwrap();
    assert_eq!(reactors.len(), 2);
    for r in reactors {
        assert!(
            r["queue_pairs"][0]["stats"]["completed"].as_u64().unwrap() > 0,
            "{r}"
        );
    }
    let out = bluepoll(&[
        "bench",
        "--filename=null:1G",
        "--name=a",
        "--numjobs=2",
        "--runtime=0.3",
        "--output-format=json",
    ]);
    assert_eq!(
        json_of(&out.stdout)["jobs"].as_array().unwrap().len(),
        2,
        "without group_reporting each job reports"
    );
}

#[test]
fn compare_prints_ratios() {
    let dir = scratch_dir();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    for (path, depth) in [(&a, "1"), (&b, "32")] {
        let out = bluepoll(&[
            "bench",
            "--filename=null:1G",
            "--runtime=0.3",
            &format!("--iodepth={depth}"),
            "--output-format=json",
            &format!("--output={}", path.display()),
        ]);
        assert!(out.status.success(), "{}", out.stderr_text());
    }
    let out = bluepoll(&[
        "compare",
        &a.display().to_string(),
        &b.display().to_string(),
        "--peer-label=qd1",
        "--label=qd32",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let text = out.stdout_text();
    assert!(
        text.contains("read IOPS") && text.contains("read clat p99.9") && text.contains("qd32"),
        "{text}"
    );
}

#[test]
fn devinfo_describes_a_namespace() {
    let out = bluepoll(&["devinfo", "mem:1G?block_size=512"]);
    assert!(out.status.success());
    let text = out.stdout_text();
    assert!(
        text.contains("block size:     512") && text.contains("capacity:       2097152 blocks"),
        "{text}"
    );
}

/// Regression (review finding): jobs on two reactors verifying the same small range raced on
/// units and reported thousands of "stale data" errors on a device that lost nothing.
#[test]
fn overlapping_verifying_jobs_report_no_false_errors() {
    let out = bluepoll(&[
        "bench",
        "--filename=mem:16M",
        "--name=mix",
        "--rw=randrw",
        "--numjobs=2",
        "--cpus=0,1",
        "--size=64k",
        "--bs=4k",
        "--iodepth=8",
        "--verify=crc32c",
        "--runtime=1",
        "--time_based",
        "--output-format=json",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    for job in json_of(&out.stdout)["jobs"].as_array().unwrap() {
        assert_eq!(job["bluepoll"]["verify_errors"], 0, "{job}");
        assert!(job["read"]["total_ios"].as_u64().unwrap() > 1000);
    }
}

/// Regression (review finding): on a device too large to track whole, a small verifying job's
/// verify pass read never-written units and reported them as lost.
#[test]
fn a_small_verifying_job_on_a_huge_device_is_tracked() {
    let out = bluepoll(&[
        "bench",
        "--filename=mem:512G",
        "--name=w",
        "--rw=randwrite",
        "--size=16m",
        "--offset=1g",
        "--runtime=200ms",
        "--verify=crc32c",
        "--output-format=json",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let doc = json_of(&out.stdout);
    let job = &doc["jobs"][0];
    assert_eq!(job["bluepoll"]["verify_errors"], 0);
    assert_eq!(
        job["read"]["total_ios"], job["write"]["total_ios"],
        "the verify pass reads back exactly what was written"
    );
}

/// `bluepoll selftest conformance` runs the backend suite on a slice of any device (the QEMU
/// guest runs it on `pcie:`): it passes on RAM, says which checks `null:` skips, and refuses to
/// overwrite anything without --destructive.
#[test]
fn selftest_conformance_runs_the_backend_suite_on_any_device() {
    let out = bluepoll(&["selftest", "conformance", "mem:64M", "--destructive"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    assert!(
        out.stdout_text().starts_with("ok   conformance"),
        "{}",
        out.stdout_text()
    );
    let out = bluepoll(&["selftest", "conformance", "null:64M", "--destructive"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    assert!(
        out.stdout_text().contains("skipped: data read back"),
        "{}",
        out.stdout_text()
    );
    let out = bluepoll(&["selftest", "conformance", "mem:64M"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr_text().contains("--destructive"),
        "{}",
        out.stderr_text()
    );
}
