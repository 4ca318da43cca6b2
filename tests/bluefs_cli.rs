//! `bluepoll bluefs`: the commands end to end on file-backed devices.

mod common;

use common::{bluepoll, scratch_dir, sparse_image};

#[test]
fn bluefs_commands_round_trip_a_file_and_report() {
    let dir = scratch_dir();
    let db = sparse_image(dir.path(), "db.img", 64 << 20);
    let wal = sparse_image(dir.path(), "wal.img", 16 << 20);
    let dbo = format!("--db=uring:{}", db.display());
    let walo = format!("--wal=uring:{}", wal.display());
    let run = |args: &[&str]| {
        let mut full = vec!["bluefs"];
        full.extend_from_slice(args);
        full.push(&dbo);
        full.push(&walo);
        let out = bluepoll(&full);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            out.stdout_text(),
            out.stderr_text()
        );
        out.stdout_text()
    };
    assert!(run(&["mkfs"]).starts_with("made BlueFS "));
    let local = dir.path().join("payload");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &payload).unwrap();
    run(&["put", local.to_str().unwrap(), "db/000007.sst"]);
    run(&["put", local.to_str().unwrap(), "db.wal/000003.log"]);
    assert_eq!(run(&["ls"]), "db/\ndb.wal/\n");
    assert!(run(&["ls", "db"]).contains("300000 000007.sst"));
    assert!(run(&["stat", "db/000007.sst"]).contains("size:      300000"));
    let mut cat = vec!["bluefs", "cat", "db/000007.sst"];
    cat.push(&dbo);
    cat.push(&walo);
    assert_eq!(bluepoll(&cat).stdout, payload);
    let sizes = run(&["sizes"]);
    assert!(
        sizes.contains("wal") && sizes.contains("spillover to slow: 0B"),
        "{sizes}"
    );
    assert!(run(&["fsck"]).contains("0 errors"));
    assert!(run(&["compact"]).contains("log compacted"));
    let out_dir = dir.path().join("export");
    run(&["export", out_dir.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out_dir.join("db.wal/000003.log")).unwrap(),
        payload
    );
    // Grow the WAL device: expand takes the space into use and says so.
    std::fs::File::options()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    assert!(run(&["expand"]).contains("wal device: 16777216 -> 33554432 bytes"));
    assert!(run(&["expand"]).contains("no device grew"));
}

#[test]
fn bluefs_errors_are_one_line() {
    let dir = scratch_dir();
    let blank = sparse_image(dir.path(), "blank.img", 16 << 20);
    let db = format!("--db=uring:{}", blank.display());
    for (args, needle) in [
        (vec!["bluefs", "ls", db.as_str()], "bad magic"),
        (vec!["bluefs", "ls"], "--db=URI is required"),
        (
            vec!["bluefs", "frob", db.as_str()],
            "unknown bluefs command",
        ),
        (vec!["bluefs", "mkfs", "--db=mem:64K"], "too small"),
    ] {
        let out = bluepoll(&args);
        let stderr = out.stderr_text();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
