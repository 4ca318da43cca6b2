//! `bluepoll mkfs | fsck | perf dump | store ...`: the object store's commands end to end on
//! file-backed devices (mem: devices would vanish between the commands' processes).

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::{Run, bluepoll, json_of, scratch_dir};

/// A 512 MiB main device (the DB area is carved out of it) in `dir`.
fn main_device(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("main.img");
    let option = format!("--slow=uring:{}?size=512M", path.display());
    (path, option)
}

/// Runs `bluepoll ARGS... DEVICE`.
fn run(args: &[&str], device: &str) -> Run {
    let mut full = args.to_vec();
    full.push(device);
    bluepoll(&full)
}

/// Runs and insists on exit status 0; returns stdout.
fn ok(args: &[&str], device: &str) -> String {
    let out = run(args, device);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}{}",
        out.stdout_text(),
        out.stderr_text()
    );
    out.stdout_text()
}

/// Runs and insists on exit status 1 with one error line containing `needle`; returns stderr.
fn fails(args: &[&str], needle: &str) -> String {
    let out = bluepoll(args);
    let stderr = out.stderr_text();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: want '{needle}' in: {stderr}"
    );
    assert!(
        stderr.starts_with("bluepoll: error: "),
        "{args:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    stderr
}

/// Bytes no other object or record will hold (xorshift from `seed`).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn store_commands_round_trip_an_object() {
    let dir = scratch_dir();
    let (_, dev) = main_device(dir.path());
    let made = ok(&["mkfs"], &dev);
    assert!(made.starts_with("made store "), "{made}");

    let local = dir.path().join("payload");
    let payload = pattern(300_000, 7);
    std::fs::write(&local, &payload).unwrap();
    let local = local.to_str().unwrap();
    // The collection is made by the first put.
    assert_eq!(
        ok(&["store", "put", "pool", "obj.1", local], &dev),
        "pool/obj.1: 300000 bytes\n"
    );
    // A second put replaces the whole object (shorter: nothing of the old one is left).
    let short = dir.path().join("short");
    std::fs::write(&short, b"hello").unwrap();
    ok(&["store", "put", "pool", "obj.2", local], &dev);
    ok(
        &["store", "put", "pool", "obj.2", short.to_str().unwrap()],
        &dev,
    );
    ok(&["store", "mkcoll", "empty"], &dev);
    assert_eq!(ok(&["store", "ls"], &dev), "empty\npool\n");
    assert_eq!(ok(&["store", "ls", "pool"], &dev), "obj.1\nobj.2\n");
    assert_eq!(ok(&["store", "ls", "empty"], &dev), "");

    let stat = ok(&["store", "stat", "pool", "obj.1"], &dev);
    for needle in [
        "object:    pool/obj.1",
        "size:      300000",
        "allocated: 303104",
        "omap:      no",
        "attrs:     0",
    ] {
        assert!(stat.contains(needle), "missing '{needle}' in:\n{stat}");
    }
    assert!(ok(&["store", "stat", "pool", "obj.2"], &dev).contains("size:      5\n"));

    assert_eq!(
        run(&["store", "get", "pool", "obj.1"], &dev).stdout,
        payload
    );
    let copy = dir.path().join("copy");
    ok(
        &["store", "get", "pool", "obj.2", copy.to_str().unwrap()],
        &dev,
    );
    assert_eq!(std::fs::read(&copy).unwrap(), b"hello");

    ok(&["store", "rm", "pool", "obj.1"], &dev);
    assert_eq!(ok(&["store", "ls", "pool"], &dev), "obj.2\n");
    fails(
        &["store", "get", "pool", "obj.1", &dev],
        "object 'obj.1' does not exist in collection 'pool'",
    );
    fails(&["store", "mkcoll", "pool", &dev], "already exists");
    fails(&["store", "rmcoll", "pool", &dev], "is not empty");
    ok(&["store", "mkcoll", "gone"], &dev);
    ok(&["store", "rmcoll", "gone"], &dev);
    fails(&["store", "rmcoll", "gone", &dev], "does not exist");

    let fsck = ok(&["fsck", "--deep"], &dev);
    for needle in [
        "collections:        2",
        "objects:            1",
        "fsck: clean",
    ] {
        assert!(fsck.contains(needle), "missing '{needle}' in:\n{fsck}");
    }

    let perf = json_of(ok(&["perf", "dump"], &dev).as_bytes());
    assert!(perf["store"].is_object(), "{perf}");
    assert!(perf["kv_sync"].is_object(), "{perf}");

    // mkfs over a store needs --force, and says which store it would destroy.
    let fsid = made.trim().trim_start_matches("made store ");
    let refused = fails(&["mkfs", &dev], "--force");
    assert!(refused.contains(fsid), "{refused}");
    let again = ok(&["mkfs", "--force"], &dev);
    assert!(
        again.starts_with("made store ") && !again.contains(fsid),
        "{again}"
    );
    assert_eq!(ok(&["store", "ls"], &dev), "");
}

#[test]
fn deep_fsck_names_the_object_with_a_flipped_byte() {
    let dir = scratch_dir();
    let (image, dev) = main_device(dir.path());
    ok(&["mkfs"], &dev);
    let local = dir.path().join("pattern");
    let data = pattern(256 << 10, 0x5eed);
    std::fs::write(&local, &data).unwrap();
    ok(
        &["store", "put", "pool", "victim", local.to_str().unwrap()],
        &dev,
    );
    ok(&["fsck", "--deep"], &dev);

    // Find the object's first block in the data area (past the DB area) and flip a byte.
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    let mut block0 = vec![0u8; bluepoll::store::format::LABEL_SIZE];
    file.read_exact(&mut block0).unwrap();
    let label = bluepoll::store::format::decode_label(&block0).unwrap();
    let needle = &data[..4096];
    let mut at = None;
    let mut offset = label.data_start;
    let mut chunk = vec![0u8; 4 << 20];
    while at.is_none() && offset < label.device_size {
        file.seek(SeekFrom::Start(offset)).unwrap();
        let n = file.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        at = chunk[..n]
            .chunks_exact(4096)
            .position(|block| block == needle)
            .map(|i| offset + i as u64 * 4096);
        offset += n as u64;
    }
    let at = at.expect("the object's data is on the main device") + 1000;
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at)).unwrap();
    file.read_exact(&mut byte).unwrap();
    byte[0] ^= 0x40;
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&byte).unwrap();
    file.sync_all().unwrap();
    drop(file);

    // Without --deep the metadata is all fsck sees: clean.
    assert!(ok(&["fsck"], &dev).contains("fsck: clean"));
    let out = run(&["fsck", "--deep"], &dev);
    let text = out.stdout_text();
    assert_eq!(out.status.code(), Some(1), "{text}{}", out.stderr_text());
    assert!(
        text.contains("error: object 'pool/victim': checksum mismatch at object offset 0"),
        "{text}"
    );
    assert!(text.contains("fsck: 1 errors"), "{text}");
    // A read of the object reports the damage rather than returning it.
    fails(
        &["store", "get", "pool", "victim", &dev],
        "checksum mismatch",
    );
    // Repair cannot invent the lost byte: the second check still finds it.
    let out = run(&["fsck", "--deep", "--repair"], &dev);
    let text = out.stdout_text();
    assert_eq!(out.status.code(), Some(1), "{text}{}", out.stderr_text());
    assert!(
        text.contains("checking again") && text.contains("errors remain after repair"),
        "{text}"
    );
}

#[test]
fn config_files_and_bad_input_are_one_line_errors() {
    let dir = scratch_dir();
    let (image, dev) = main_device(dir.path());

    // A config file names the devices; --cpus overrides store.cpus.
    let config = dir.path().join("store.toml");
    std::fs::write(
        &config,
        format!(
            "[devices]\nslow = \"uring:{}?size=512M\"\n[store]\ncache_bytes = \"64M\"\n",
            image.display()
        ),
    )
    .unwrap();
    let with_config = format!("--config={}", config.display());
    ok(&["mkfs"], &with_config);
    ok(&["store", "mkcoll", "--cpus=0", "c"], &with_config);
    assert_eq!(ok(&["store", "ls"], &dev), "c\n");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[devices]\nslow = \"mem:1G\"\n[store]\nmin_aloc_size = 4096\n",
    )
    .unwrap();
    let bad = format!("--config={}", bad.display());
    fails(&["store", "ls", &bad], "min_aloc_size");
    fails(&["mkfs", &bad], "min_aloc_size");

    let big = dir.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((1 << 30) + 1)
        .unwrap();
    let big = big.to_str().unwrap();
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    let blank = format!(
        "--slow=uring:{}?size=256M",
        dir.path().join("blank.img").display()
    );
    for (args, needle) in [
        (vec!["store", "ls"], "no devices given"),
        (vec!["store", "ls", "--db=mem:1G"], "need --slow"),
        (
            vec!["store", "ls", &dev, "--frob=1"],
            "unknown option --frob",
        ),
        (vec!["store", "ls", &dev, "-x"], "unknown option -x"),
        (vec!["store", "ls", &dev, "--slow"], "--slow needs a value"),
        (vec!["mkfs", &dev, "--force=yes"], "--force takes no value"),
        (vec!["fsck", &dev, "--force"], "unknown option --force"),
        (vec!["store", "ls", &dev, "--cpus=3-1"], "runs backwards"),
        (vec!["store", "frob", &dev], "unknown store command 'frob'"),
        (vec!["store", "stat", "c", &dev], "missing OBJ"),
        (
            vec!["store", "ls", "a", "b", &dev],
            "unexpected argument 'b'",
        ),
        (vec!["store", "put", "c", "o", big, &dev], "at most 1 GiB"),
        (vec!["store", "put", "c", "o", missing, &dev], missing),
        (
            vec!["store", "stat", "c", "nothing", &dev],
            "object 'nothing' does not exist in collection 'c'",
        ),
        (vec!["store", "ls", "nope", &dev], "'nope' does not exist"),
        (vec!["store", "ls", &blank], "no bluepoll store label"),
        (vec!["fsck", &blank], "no bluepoll store label"),
        (vec!["perf", "frob", &dev], "unknown perf command 'frob'"),
        (vec!["mkfs", "--slow=mem:64M"], "cannot hold"),
    ] {
        fails(&args, needle);
    }
    // `--` lets a name start with a dash.
    let out = bluepoll(&["store", "mkcoll", &dev, "--cpus=0", "--", "-dash"]);
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(ok(&["store", "ls"], &dev), "-dash\nc\n");

    for args in [
        &["mkfs", "--help"][..],
        &["fsck", "--help"],
        &["perf", "--help"],
        &["perf", "dump", "--help"],
        &["store", "--help"],
        &["store", "put", "-h"],
    ] {
        let out = bluepoll(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            out.stdout_text().starts_with("usage: bluepoll "),
            "{args:?}"
        );
        assert!(out.stdout_text().contains("--slow=URI"), "{args:?}");
    }
    let usage = bluepoll(&["--help"]).stdout_text();
    assert!(usage.contains("store COMMAND"), "{usage}");
}

#[test]
fn expand_grows_the_store_onto_a_larger_main_device() {
    let dir = scratch_dir();
    let path = dir.path().join("main.img");
    let at = |size: &str| format!("--slow=uring:{}?size={size}", path.display());
    let small = at("256M");
    ok(&["mkfs"], &small);
    let total =
        |dev: &str| json_of(ok(&["perf", "dump"], dev).as_bytes())["space"]["total"].clone();
    assert_eq!(total(&small), 256u64 << 20);
    let file = dir.path().join("obj");
    std::fs::write(&file, pattern(300_000, 5)).unwrap();
    ok(
        &["store", "put", "pool", "o", &file.display().to_string()],
        &small,
    );
    // The file grows (uring: extends it to size=), then the store onto it.
    let big = at("384M");
    let said = ok(&["expand"], &big);
    assert!(said.contains("from 268435456 to 402653184"), "{said}");
    assert_eq!(total(&big), 384u64 << 20);
    assert!(ok(&["expand"], &big).contains("nothing to do"));
    let copy = dir.path().join("copy");
    ok(
        &["store", "get", "pool", "o", &copy.display().to_string()],
        &big,
    );
    assert_eq!(std::fs::read(&copy).unwrap(), pattern(300_000, 5));
    assert!(ok(&["fsck", "--deep"], &big).contains("fsck: clean"));
    // A device smaller than the store is refused, by expand and by mount.
    let shrunk = format!("--slow=uring:{}", path.display());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    fails(&["expand", &shrunk], "shrank");
    fails(&["store", "ls", &shrunk], "shrank");
}

/// `bench --ioengine=store` with reads and writes mixed, asked to write twice what the store
/// holds: the job ends with ENOSPC as its error (as fio ends a job at its first error), not a
/// crash or a hang; the store mounts again and a deep fsck is clean.
#[test]
fn a_store_bench_that_overfills_ends_with_enospc_and_leaves_a_clean_store() {
    let dir = scratch_dir();
    let path = dir.path().join("main.img");
    let filename = format!("--filename=uring:{}?size=256M", path.display());
    let out = bluepoll(&[
        "bench",
        "--name=overfill",
        "--ioengine=store",
        &filename,
        "--rw=randrw",
        "--rwmixread=30",
        "--bs=64k",
        "--size=512M",
        "--nrfiles=128",
        "--iodepth=16",
        "--norandommap",
        "--store_layout=0",
    ]);
    let (stdout, stderr) = (out.stdout_text(), out.stderr_text());
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        !stderr.contains("laying out"),
        "the run, not a layout, fills the store: {stderr}"
    );
    assert!(
        stdout.contains("err=28") || stdout.contains("err= 28"),
        "the job's error is ENOSPC:\n{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let fsck = ok(
        &["fsck", "--deep"],
        &format!("--slow=uring:{}", path.display()),
    );
    assert!(fsck.contains("fsck: clean"), "{fsck}");
}
