//! Reliability drills on the assembled engine (issue 7): kill -9 of a real process under a
//! verified load, the checker that judges it shown able to fail, and the owner guard (one
//! mount per device, devices of another store refused).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use bluepoll::nvme::Device;
use bluepoll::store::{Store, StoreConfig, StoreDevices};
use common::{bluepoll, scratch_dir};

/// Device options for a store of files in `dir` (`tag` tells two stores apart).
fn devices(dir: &Path, tag: &str) -> [String; 2] {
    [
        format!(
            "--slow=uring:{}?size=256M",
            dir.join(format!("{tag}main.img")).display()
        ),
        format!(
            "--wal=uring:{}?size=64M",
            dir.join(format!("{tag}wal.img")).display()
        ),
    ]
}

fn with(args: &[&str], devices: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string())
        .chain(devices.iter().cloned())
        .collect()
}

fn run(args: &[String]) -> common::Run {
    bluepoll(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A short stress run on a new store, then its log's path.
fn stressed_store(dir: &Path, devs: &[String]) -> String {
    let log = format!("--log={}", dir.join("stress.log").display());
    let out = run(&with(
        &["stress", "run", &log, "--mkfs", "--seconds=1"],
        devs,
    ));
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    log
}

/// A short kill9 drill (scripts/drills.sh runs the full count and prints its summary line).
#[test]
fn kill9_drill_loses_nothing() {
    let dir = scratch_dir();
    let runs: u64 = std::env::var("BLUEPOLL_KILL9_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let out = bluepoll(&[
        "drill",
        "kill9",
        &format!("--dir={}", dir.path().display()),
        &format!("--runs={runs}"),
    ]);
    let stdout = out.stdout_text();
    eprintln!("{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", out.stderr_text());
    assert!(
        stdout.contains(&format!(
            "kill9: {runs} runs, {runs} faults, 0 lost, 0 corrupt"
        )),
        "{stdout}"
    );
    // The runs did real work (how much depends on the machine's load, so no more is asked).
    let log = std::fs::read_to_string(dir.path().join("stress.log")).unwrap();
    let acked = log.lines().filter(|l| l.starts_with("A ")).count();
    assert!(acked > 0, "no acknowledged transaction in {runs} runs");
}

/// The numbers in a drill's "checked N objects, N acknowledged writes, N runs checked nothing"
/// line.
fn held_to(drill: &str, stdout: &str) -> (u64, u64, u64) {
    let prefix = format!("{drill}: checked ");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line in:\n{stdout}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 3, "{line}");
    (numbers[0], numbers[1], numbers[2])
}

/// The in-process drills, briefly (scripts/drills.sh runs them in full). Beyond "0 lost, 0
/// corrupt", each must have held the store to something: acknowledged writes, objects checked
/// in every run that was not a refused mount, and (corruption) every kind of damage.
#[test]
fn power_cut_and_eio_drills_lose_nothing() {
    for drill in ["power-cut", "eio", "enospc", "corruption"] {
        let dir = scratch_dir();
        let out = Command::new(env!("CARGO_BIN_EXE_bluepoll"))
            .args([
                "drill",
                drill,
                "--runs=8",
                "--seed=7",
                &format!("--dir={}", dir.path().display()),
            ])
            .env("BLUEPOLL_DRILL_VERBOSE", "1")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        let line = stdout.lines().last().unwrap_or_default().to_string();
        assert!(line.starts_with(&format!("{drill}: 8 runs, ")), "{stdout}");
        assert!(line.ends_with(" faults, 0 lost, 0 corrupt"), "{stdout}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let (objects, acknowledged, empty) = held_to(drill, &stdout);
        assert!(
            acknowledged >= 8,
            "{drill}: {acknowledged} acknowledged writes in 8 runs"
        );
        if drill == "corruption" {
            // A refused mount checks nothing, and is the right answer for some damage; every
            // kind of damage must have been dealt.
            for target in [
                "object data",
                "store label",
                "BlueFS superblock",
                "BlueFS log",
                "RocksDB table",
            ] {
                assert!(
                    stderr.contains(&format!("({target})")),
                    "{drill}: no run damaged the {target}:\n{stderr}"
                );
            }
        } else {
            assert_eq!(empty, 0, "{drill}: runs that checked nothing:\n{stderr}");
            assert!(objects >= 8, "{drill}: {objects} objects checked in 8 runs");
        }
    }
}

#[test]
fn the_checker_finds_an_acknowledged_write_missing() {
    let dir = scratch_dir();
    let devs = devices(dir.path(), "");
    let log = stressed_store(dir.path(), &devs);
    let check = with(&["stress", "check", &log], &devs);
    let clean = run(&check);
    assert_eq!(clean.status.code(), Some(0), "{}", clean.stdout_text());
    assert!(
        clean
            .stdout_text()
            .contains("0 lost, 0 corrupt, 0 unreadable, fsck clean")
    );
    // Claim the store acknowledged a transaction it never saw.
    let path = dir.path().join("stress.log");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("S 3 99999999 0 100 7\nA 3 99999999\n");
    std::fs::write(&path, text).unwrap();
    let out = run(&check);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout_text());
    assert!(
        out.stdout_text().contains("1 lost"),
        "{}",
        out.stdout_text()
    );
    assert!(
        out.stdout_text().contains("obj00003"),
        "{}",
        out.stdout_text()
    );
}

#[test]
fn the_checker_finds_changed_bytes() {
    let dir = scratch_dir();
    let devs = devices(dir.path(), "");
    let log = stressed_store(dir.path(), &devs);
    // Rewrite an object through the store, keeping its attrs: its bytes no longer match the log.
    let file = dir.path().join("other");
    std::fs::write(&file, vec![0xeeu8; 5000]).unwrap();
    let log_text = std::fs::read_to_string(dir.path().join("stress.log")).unwrap();
    let obj: u64 = log_text
        .lines()
        .find_map(|l| l.strip_prefix("A "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|o| o.parse().ok())
        .expect("an acknowledged write");
    let put = run(&with(
        &[
            "store",
            "put",
            &format!("stress.{}", obj % 4),
            &format!("obj{obj:05}"),
            &file.display().to_string(),
        ],
        &devs,
    ));
    assert_eq!(put.status.code(), Some(0), "{}", put.stderr_text());
    let out = run(&with(&["stress", "check", &log], &devs));
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout_text());
    assert!(
        out.stdout_text().contains("1 corrupt"),
        "{}",
        out.stdout_text()
    );
}

/// A first transaction that landed in part — the object's bytes there, its `seq` attribute not
/// — is found, although the log expects nothing of the object yet.
#[test]
fn the_checker_finds_a_first_write_that_landed_in_part() {
    let dir = scratch_dir();
    let devs = devices(dir.path(), "");
    let log = stressed_store(dir.path(), &devs);
    // An object the run never wrote, its write queued (S) but never acknowledged.
    let path = dir.path().join("stress.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let next_seq = text
        .lines()
        .filter_map(|l| l.strip_prefix("S "))
        .filter_map(|rest| rest.split(' ').nth(1)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let obj = 99_992u64;
    std::fs::write(&path, format!("{text}S {obj} {next_seq} 0 4096 5\n")).unwrap();
    let file = dir.path().join("part");
    std::fs::write(&file, vec![0x11u8; 4096]).unwrap();
    let put = run(&with(
        &[
            "store",
            "put",
            &format!("stress.{}", obj % 4),
            &format!("obj{obj:05}"),
            &file.display().to_string(),
        ],
        &devs,
    ));
    assert_eq!(put.status.code(), Some(0), "{}", put.stderr_text());
    let out = run(&with(&["stress", "check", &log], &devs));
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout_text());
    assert!(
        out.stdout_text().contains("1 corrupt"),
        "{}",
        out.stdout_text()
    );
}

/// A collection where a later transaction survived but an earlier one of another object did
/// not is found: what survives of a collection is a prefix of what was queued.
#[test]
fn the_checker_finds_a_collection_that_is_not_a_prefix() {
    let dir = scratch_dir();
    let devs = devices(dir.path(), "");
    let log = stressed_store(dir.path(), &devs);
    let path = dir.path().join("stress.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let (acked_obj, acked_seq) = text
        .lines()
        .filter_map(|l| l.strip_prefix("A "))
        .filter_map(|rest| {
            let mut f = rest.split(' ');
            Some((
                f.next()?.parse::<u64>().ok()?,
                f.next()?.parse::<u64>().ok()?,
            ))
        })
        .rfind(|(o, _)| o % 4 == 0)
        .expect("an acknowledged write in collection 0");
    assert!(
        acked_seq > 1,
        "the newest acknowledged write of collection 0 is the first one"
    );
    // A write of object 99996 (collection 0) that the log says was queued just before an
    // acknowledged one of the same collection: the store has no such object.
    let text = text.replacen(
        &format!("S {acked_obj} {acked_seq} "),
        &format!(
            "S 99996 {} 0 10 3\nS {acked_obj} {acked_seq} ",
            acked_seq - 1
        ),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let out = run(&with(&["stress", "check", &log], &devs));
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout_text());
    assert!(
        out.stdout_text().contains("1 lost"),
        "{}",
        out.stdout_text()
    );
}

#[test]
fn a_store_another_process_holds_is_refused() {
    let dir = scratch_dir();
    let devs = devices(dir.path(), "");
    let log = stressed_store(dir.path(), &devs);
    let mut holder = Command::new(env!("CARGO_BIN_EXE_bluepoll"))
        .args(with(&["stress", "run", &log, "--seconds=30"], &devs))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for it to be running (it prints once mounted).
    let mut stdout = holder.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8];
    while !String::from_utf8_lossy(&seen).contains("stress: running") {
        let n = std::io::Read::read(&mut stdout, &mut byte).unwrap();
        assert_eq!(
            n,
            1,
            "the holder stopped: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    for command in [
        with(&["store", "ls"], &devs),
        with(&["fsck"], &devs),
        with(&["mkfs", "--force"], &devs),
        with(&["stress", "check", &log], &devs),
    ] {
        let out = run(&command);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{command:?}: {}",
            out.stdout_text()
        );
        // The refusal names the holder.
        assert!(
            out.stderr_text()
                .contains(&format!("is in use: process {} (bluepoll)", holder.id())),
            "{command:?}: {}",
            out.stderr_text()
        );
    }
    // Once the holder is gone (killed: its lock ends with it), the store opens again at once,
    // whole.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = run(&with(&["stress", "check", &log], &devs));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        out.stdout_text(),
        out.stderr_text()
    );
    assert!(out.stdout_text().contains("0 lost, 0 corrupt"));
}

#[test]
fn a_second_mount_in_one_process_is_refused() {
    let main = Device::open("mem:512M").unwrap();
    let config = StoreConfig {
        pin: false,
        cpus: vec![0],
        ..StoreConfig::default()
    };
    let devices = StoreDevices::only(main);
    Store::mkfs_on(&devices, &config).unwrap();
    let store = Store::mount_on(devices.clone(), config.clone()).unwrap();
    let Err(again) = Store::mount_on(devices.clone(), config.clone()) else {
        panic!("a second mount of a mounted store succeeded");
    };
    assert_eq!(again.errno(), libc::EBUSY, "{again}");
    assert!(again.to_string().contains("a mounted store"), "{again}");
    let fsck = bluepoll::store::fsck(&devices, &config, false, false).unwrap_err();
    assert_eq!(fsck.errno(), libc::EBUSY, "{fsck}");
    assert_eq!(
        Store::mkfs_on(&devices, &config).unwrap_err().errno(),
        libc::EBUSY
    );
    store.umount().unwrap();
    let store = Store::mount_on(devices, config).unwrap();
    store.umount().unwrap();
}

#[test]
fn the_wal_device_of_another_store_is_refused() {
    let dir = scratch_dir();
    let a = devices(dir.path(), "a-");
    let b = devices(dir.path(), "b-");
    for devs in [&a, &b] {
        let out = run(&with(&["mkfs"], devs));
        assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    }
    // A's main device with B's WAL.
    let mixed = [a[0].clone(), b[1].clone()];
    let out = run(&with(&["store", "ls"], &mixed));
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout_text());
    assert!(
        out.stderr_text().contains("wal") && out.stderr_text().contains("another"),
        "{}",
        out.stderr_text()
    );
    // A without its WAL device.
    let out = run(&with(&["store", "ls"], &a[..1]));
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout_text());
    // And A whole still mounts.
    let out = run(&with(&["store", "ls"], &a));
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
}
