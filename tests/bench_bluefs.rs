//! `bluepoll bench --ioengine=bluefs`: jobs on BlueFS files, as a user runs them.

mod common;

use common::{bluepoll, json_of, scratch_dir, sparse_image};

fn args(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

#[test]
fn bluefs_append_fsync_reports_fio_shaped_json() {
    let out = bluepoll(&[
        "bench",
        "--ioengine=bluefs",
        "--filename=mem:256M",
        "--rw=write",
        "--bs=4k",
        "--size=4M",
        "--fsync=1",
        "--name=w",
        "--output-format=json",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let doc = json_of(&out.stdout);
    let job = &doc["jobs"][0];
    assert_eq!(job["jobname"], "w");
    assert_eq!(job["error"], 0);
    let write = &job["write"];
    assert!(write["iops"].as_f64().unwrap() > 0.0);
    assert_eq!(write["total_ios"], 1024);
    assert_eq!(write["io_bytes"], 4 << 20);
    assert!(
        write["clat_ns"]["percentile"]["99.000000"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(job["read"]["total_ios"], 0);
    // Every append was followed by an fsync, timed on its own in fio's `sync` section.
    assert_eq!(job["sync"]["total_ios"], 1024);
    assert_eq!(job["sync"]["lat_ns"]["N"], 1024);
    assert!(
        job["sync"]["lat_ns"]["percentile"]["99.000000"]
            .as_u64()
            .is_some()
    );
    let extra = &job["bluepoll"];
    assert_eq!(extra["ioengine"], "bluefs");
    assert_eq!(extra["io_errors"], 0);
    assert!(
        extra["reactor"].is_null(),
        "bluefs jobs run on their own threads"
    );
    assert_eq!(doc["bluepoll"]["reactors"].as_array().unwrap().len(), 0);
}

#[test]
fn bluefs_randread_reads_a_laid_out_file_per_clone() {
    let out = bluepoll(&[
        "bench",
        "--ioengine=bluefs",
        "--filename=mem:256M",
        "--rw=randread",
        "--bs=4k",
        "--size=4M",
        "--numjobs=2",
        "--iodepth=16",
        "--name=r",
        "--output-format=json",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let doc = json_of(&out.stdout);
    let jobs = doc["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    for job in jobs {
        assert_eq!(job["error"], 0);
        // The random map touches every block of the file once.
        assert_eq!(job["read"]["total_ios"], 1024);
        assert!(job["read"]["iops"].as_f64().unwrap() > 0.0);
        assert_eq!(job["write"]["total_ios"], 0);
        assert_eq!(job["sync"]["total_ios"], 0);
    }
    let notes = doc["bluepoll"]["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().contains("iodepth=16 ignored")),
        "{notes:?}"
    );
}

#[test]
fn bluefs_rejects_modes_that_rewrite_data() {
    for rw in ["randwrite", "rw", "randrw"] {
        let out = bluepoll(&[
            "bench",
            "--ioengine=bluefs",
            "--filename=mem:256M",
            &format!("--rw={rw}"),
            "--size=4M",
            "--name=x",
        ]);
        assert!(!out.status.success());
        let err = out.stderr_text();
        assert!(
            err.contains(
                "ioengine=bluefs supports rw=write|read|randread (BlueFS files are append-only)"
            ),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[test]
fn bluefs_bad_setups_are_one_line_errors() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--ioengine=bluefs", "--size=4M", "--rw=write"],
            "needs filename=",
        ),
        (
            &["--ioengine=bluefs", "--filename=mem:64M", "--rw=write"],
            "needs size=",
        ),
        (
            &[
                "--ioengine=bluefs",
                "--filename=wal=mem:64M|slow=mem:64M",
                "--size=4M",
            ],
            "no db= device",
        ),
        (
            &[
                "--ioengine=bluefs",
                "--filename=mem:64M",
                "--size=4M",
                "--verify=crc32c",
            ],
            "verify=crc32c is not supported with ioengine=bluefs",
        ),
    ];
    for (extra, needle) in cases {
        let mut argv = vec!["bench", "--name=x"];
        argv.extend_from_slice(extra);
        let out = bluepoll(&argv);
        assert!(!out.status.success(), "{argv:?}");
        let err = out.stderr_text();
        assert!(err.contains(needle), "{argv:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[test]
fn bluefs_running_out_of_space_ends_the_job_with_enospc() {
    let out = bluepoll(&[
        "bench",
        "--ioengine=bluefs",
        "--filename=mem:16M",
        "--rw=write",
        "--bs=64k",
        "--size=64M",
        "--name=full",
        "--output-format=json",
    ]);
    assert!(!out.status.success());
    let doc = json_of(&out.stdout);
    let job = &doc["jobs"][0];
    assert_eq!(job["error"], 28, "ENOSPC");
    assert_eq!(job["bluepoll"]["io_errors"], 1);
    let message = job["bluepoll"]["messages"][0].as_str().unwrap();
    assert!(message.contains("no space left"), "{message}");
    assert!(message.contains("bench/full.0"), "{message}");
    // What was written before is still reported.
    assert!(job["write"]["total_ios"].as_u64().unwrap() > 0);
    assert!(out.stderr_text().contains("1 I/O errors"));
}

#[test]
fn bluefs_time_based_writes_start_the_file_afresh_when_full() {
    // 1 MiB files on a 32 MiB filesystem: without starting afresh (and freeing the old space)
    // a second of writes would run out of space.
    let out = bluepoll(&[
        "bench",
        "--ioengine=bluefs",
        "--filename=mem:32M",
        "--rw=write",
        "--bs=64k",
        "--size=1M",
        "--time_based",
        "--runtime=1",
        "--fdatasync=4",
        "--name=t",
        "--output-format=json",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let doc = json_of(&out.stdout);
    let job = &doc["jobs"][0];
    let writes = job["write"]["total_ios"].as_u64().unwrap();
    assert!(
        writes > 64,
        "only {writes} writes: the file was not restarted"
    );
    let syncs = job["sync"]["total_ios"].as_u64().unwrap();
    // One fsync per 4 writes (the count restarts with each new file: 16 writes each).
    assert!(
        syncs > 0 && syncs <= writes / 4,
        "{syncs} fsyncs for {writes} writes"
    );
}

#[test]
fn bluefs_files_survive_a_remount_on_wal_and_db_devices() {
    let dir = scratch_dir();
    let db = dir.path().join("db.img");
    let wal = dir.path().join("wal.img");
    let filename = format!(
        "--filename=db=uring:{}?size=64M|wal=uring:{}?size=32M",
        db.display(),
        wal.display()
    );
    let write: Vec<String> = [
        "bench",
        "--ioengine=bluefs",
        &filename,
        "--rw=write",
        "--bs=4k",
        "--size=1M",
        "--fsync=1",
        "--name=keep",
        "--output-format=json",
    ]
    .map(String::from)
    .to_vec();
    let out = bluepoll(&args(&write));
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(json_of(&out.stdout)["jobs"][0]["write"]["total_ios"], 256);

    // bluefs_mkfs=0 mounts what is there: the 1 MiB file is read, not laid out again.
    let read: Vec<String> = [
        "bench",
        "--ioengine=bluefs",
        &filename,
        "--bluefs_mkfs=0",
        "--rw=read",
        "--bs=64k",
        "--size=1M",
        "--name=keep",
        "--output-format=json",
    ]
    .map(String::from)
    .to_vec();
    let out = bluepoll(&args(&read));
    assert!(out.status.success(), "{}", out.stderr_text());
    let job = &json_of(&out.stdout)["jobs"][0];
    assert_eq!(job["read"]["total_ios"], 16);
    assert_eq!(job["write"]["total_ios"], 0);
    assert!(
        job["bluepoll"]["device"]
            .as_str()
            .unwrap()
            .contains("|wal=uring:")
    );
}

#[test]
fn bluefs_text_report_has_the_sync_block() {
    let out = bluepoll(&[
        "bench",
        "--ioengine=bluefs",
        "--filename=mem:64M",
        "--rw=write",
        "--bs=4k",
        "--size=256k",
        "--fsync=1",
        "--name=w",
        "--eta=never",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let text = out.stdout_text();
    for needle in [
        "w: (groupid=0, jobs=1): err= 0",
        "write: IOPS=",
        "clat percentiles",
        "fsync/fdatasync/sync_file_range:",
        "sync percentiles",
        "issued rwts: total=0,64,0,0",
        "bluefs       : mem:64M (own thread",
        "64 fsyncs",
    ] {
        assert!(text.contains(needle), "missing '{needle}' in:\n{text}");
    }
    assert!(!text.contains("Reactors:"), "{text}");
}

#[test]
fn the_bluefs_job_file_runs() {
    let out = bluepoll(&[
        "bench",
        "bench/jobs/bluefs-append-fsync.fio",
        "--ioengine=bluefs",
        "--filename=mem:256M",
        "--runtime=1",
        "--size=8M",
        "--output-format=json",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let job = &json_of(&out.stdout)["jobs"][0];
    assert_eq!(job["jobname"], "bluefs-append-fsync");
    let writes = job["write"]["total_ios"].as_u64().unwrap();
    assert!(writes > 0);
    assert_eq!(job["sync"]["total_ios"].as_u64().unwrap(), writes);
}

/// `bluefs_kind=wal` names the job's file like a RocksDB WAL, so its data lands on the WAL
/// device beside the log; a bad kind is refused.
#[test]
fn bluefs_kind_places_the_file() {
    let dir = scratch_dir();
    let db = sparse_image(dir.path(), "db.img", 64 << 20);
    let wal = sparse_image(dir.path(), "wal.img", 64 << 20);
    let filename = format!(
        "--filename=db=uring:{}|wal=uring:{}",
        db.display(),
        wal.display()
    );
    let out = bluepoll(&[
        "bench",
        "--ioengine=bluefs",
        &filename,
        "--bluefs_kind=wal",
        "--rw=write",
        "--bs=64k",
        "--size=4M",
        "--fsync=4",
        "--name=k",
    ]);
    assert!(out.status.success(), "{}", out.stderr_text());
    let dbo = format!("--db=uring:{}", db.display());
    let walo = format!("--wal=uring:{}", wal.display());
    let ls = bluepoll(&["bluefs", "ls", "bench", &dbo, &walo]);
    assert!(
        ls.stdout_text().contains("4194304 k.0.log"),
        "{}",
        ls.stdout_text()
    );
    let sizes = bluepoll(&["bluefs", "sizes", &dbo, &walo]).stdout_text();
    let wal_line = sizes.lines().find(|l| l.starts_with("wal")).unwrap();
    assert!(wal_line.contains("4096KiB"), "{sizes}");
    let out = bluepoll(&[
        "bench",
        "--ioengine=bluefs",
        "--filename=mem:64M",
        "--bluefs_kind=fast",
        "--rw=write",
        "--size=1M",
        "--name=k",
    ]);
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("bluefs_kind"),
        "{}",
        out.stderr_text()
    );
}
