//! The NBD export end to end, with a small client written from the protocol document: the
//! handshake (GO, INFO, LIST, an unknown export), read / write / trim / write-zeroes / flush,
//! requests out of range answered with errors on a connection that goes on, a broken stream
//! closed without hurting other connections; and, where qemu-io is installed, a real client.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bluepoll::image::{self, features};
use bluepoll::nbd::NbdServer;
use bluepoll::nbd::protocol::*;
use bluepoll::nvme::Device;
use bluepoll::store::{Store, StoreConfig, StoreDevices};
use common::nbd_client::{Client, u32_of};

struct Served {
    store: Option<Store>,
    addr: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        if let Some(s) = self.store.take() {
            let _ = s.umount();
        }
    }
}

/// A store with the images `(name, size)`, exported on a free loopback port.
fn serve(images: &[(&str, u64)]) -> Served {
    serve_with_objects_of(images, 20)
}

/// `serve`, with objects of 2^`order` bytes.
fn serve_with_objects_of(images: &[(&str, u64)], order: u8) -> Served {
    let devices = StoreDevices::only(Device::open("mem:1G").unwrap());
    let config = StoreConfig {
        pin: false,
        cpus: vec![0],
        ..StoreConfig::default()
    };
    Store::mkfs_on(&devices, &config).unwrap();
    let store = Store::mount_on(devices, config).unwrap();
    for (name, size) in images {
        image::create(&store, name, *size, order, features::DEFAULT).unwrap();
    }
    let server = NbdServer::bind("127.0.0.1:0", &store, &[]).unwrap();
    let (addr, stop) = (server.local_addr(), server.stopper());
    let thread = std::thread::spawn(move || server.run().unwrap());
    Served {
        store: Some(store),
        addr,
        stop,
        thread: Some(thread),
    }
}

#[test]
fn handshake_and_requests_follow_the_protocol() {
    let served = serve(&[("vm1", 8 << 20), ("vm2", 1 << 20)]);
    // LIST, INFO, an unknown export, an unsupported option, then GO.
    let mut c = Client::connect(served.addr);
    c.option(OPT_LIST, &[]);
    let mut listed = Vec::new();
    loop {
        let (kind, data) = c.reply(OPT_LIST);
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_SERVER);
        listed.push(String::from_utf8(data[4..].to_vec()).unwrap());
    }
    assert_eq!(listed, ["vm1", "vm2"]);
    c.option(OPT_INFO, &Client::info_request("nope"));
    assert_eq!(c.reply(OPT_INFO).0, REP_ERR_UNKNOWN);
    c.option(OPT_INFO, &[1, 2, 3]);
    assert_eq!(c.reply(OPT_INFO).0, REP_ERR_INVALID);
    c.option(99, &[]);
    assert_eq!(c.reply(99).0, REP_ERR_UNSUP);
    assert_eq!(c.go("vm1"), 8 << 20);

    let pattern: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let at = (1 << 20) - 1000; // across an object boundary
    assert_eq!(
        c.request(CMD_WRITE, at, pattern.len() as u32, &pattern).0,
        0
    );
    assert_eq!(c.request(CMD_FLUSH, 0, 0, &[]).0, 0);
    let (e, back) = c.request(CMD_READ, at, pattern.len() as u32, &[]);
    assert_eq!(e, 0);
    assert!(back == pattern);
    assert_eq!(c.request(CMD_TRIM, at + 1000, 100_000, &[]).0, 0);
    assert_eq!(c.request(CMD_WRITE_ZEROES, at, 10, &[]).0, 0);
    let (_, back) = c.request(CMD_READ, at, 2000, &[]);
    assert_eq!(back[..10], [0u8; 10]);
    assert!(back[10..1000] == pattern[10..1000]);
    assert!(back[1000..].iter().all(|b| *b == 0));
    // Out of range, unknown: errors, and the connection goes on.
    assert_eq!(c.request(CMD_READ, 8 << 20, 1, &[]).0, EINVAL);
    assert_eq!(c.request(CMD_WRITE, (8 << 20) - 1, 2, b"xy").0, ENOSPC);
    assert_eq!(c.request(CMD_TRIM, u64::MAX, 2, &[]).0, EINVAL);
    assert_eq!(c.request(CMD_READ, 0, MAX_PAYLOAD + 1, &[]).0, EINVAL);
    assert_eq!(c.request(77, 0, 0, &[]).0, EINVAL);
    // Past the trimmed range, the pattern is still there.
    let past = at + 101_000;
    let (e, back) = c.request(CMD_READ, past, 4, &[]);
    let from = (past - at) as usize;
    assert_eq!((e, back), (0, pattern[from..from + 4].to_vec()));

    // A second connection sees the first one's writes; a broken stream ends only its own.
    let mut c2 = Client::connect(served.addr);
    c2.go("vm1");
    let (_, seen) = c2.request(CMD_READ, at + 200_000, 100, &[]);
    assert!(seen == pattern[200_000..200_100]);
    c2.s.write_all(&[0u8; Request::LEN]).unwrap();
    let mut byte = [0u8];
    assert_eq!(
        c2.s.read(&mut byte).unwrap_or(0),
        0,
        "a bad magic must close"
    );
    let (e, _) = c.request(CMD_READ, 0, 10, &[]);
    assert_eq!(e, 0);
    c.request_disconnect();
}

/// qemu-io, a real NBD client, writes patterns and reads them back with checks.
#[test]
fn qemu_io_writes_and_verifies_patterns() {
    let have = std::process::Command::new("qemu-io")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        common::require_peer("qemu-io (qemu-utils)");
        return;
    }
    let served = serve(&[("disk", 64 << 20)]);
    let uri = format!("nbd://{}/disk", served.addr);
    let commands = [
        "write -P 0xab 0 1M",
        "write -P 0xcd 3M 5M",
        "write -z 4M 64k",
        "discard 6M 1M",
        "flush",
        "read -P 0xab 0 1M",
        "read -P 0xcd 3M 1M",
        "read -P 0 4M 64k",
        "read -P 0xcd 5M 1M",
        "read -P 0 6M 1M",
        "read -P 0 20M 1M",
    ];
    let mut args = vec!["-f".to_string(), "raw".to_string(), uri.clone()];
    for c in commands {
        args.push("-c".into());
        args.push(c.into());
    }
    let out = std::process::Command::new("qemu-io")
        .args(&args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("Pattern verification failed"), "{text}");
    assert_eq!(text.matches("read ").count(), 6, "{text}");
}

/// The commands end to end: `bluepoll image create|ls|info|resize|rm` on a store in a file, and
/// `bluepoll serve` in a process of its own, into which qemu-img copies a random raw file that
/// `qemu-img compare` then finds identical.
#[test]
fn image_commands_and_serve_with_qemu_img() {
    let dir = common::scratch_dir();
    let dev = format!(
        "--slow=uring:{}?size=512M",
        dir.path().join("main.img").display()
    );
    let run = |args: &[&str]| common::bluepoll_on(&dev, args);
    let ok = |args: &[&str]| common::bluepoll_ok(&dev, args);
    ok(&["mkfs"]);
    let made = ok(&["image", "create", "disk", "--size=16M", "--order=20"]);
    assert!(made.contains("16 objects of 1048576 bytes"), "{made}");
    ok(&["image", "create", "thin", "--size=1T"]);
    assert_eq!(ok(&["image", "ls"]), "disk\nthin\n");
    let bad = run(&[
        "image",
        "create",
        "x",
        "--size=1M",
        "--features=shared,object-map",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        bad.stderr_text()
            .contains("shared image keeps no object map")
    );
    assert_eq!(run(&["image", "info", "nope"]).status.code(), Some(1));
    ok(&["image", "rm", "thin"]);

    let have = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        common::require_peer("qemu-img (qemu-utils)");
        return;
    }
    let raw = dir.path().join("random.raw");
    let mut bytes = vec![0u8; 16 << 20];
    bluepoll::rand::Rng::new(3).fill_bytes(&mut bytes[..12 << 20]);
    std::fs::write(&raw, &bytes).unwrap();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_bluepoll"))
        .args(["serve", &dev, "--listen=127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("nbd://"))
        .unwrap_or_else(|| panic!("no address in '{line}'"))
        .trim_end_matches('/')
        .to_string();
    let uri = format!("{base}/disk");
    let qemu_img = |args: &[&str]| {
        let out = std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let raw = raw.display().to_string();
    let (copied, text) = qemu_img(&["convert", "-n", "-f", "raw", "-O", "raw", &raw, &uri]);
    assert!(copied, "convert: {text}");
    let (same, text) = qemu_img(&["compare", "-f", "raw", "-F", "raw", &raw, &uri]);
    assert!(same, "compare: {text}");
    assert!(text.contains("identical"), "{text}");
    // A changed byte is found.
    bytes[5_000_000] ^= 1;
    std::fs::write(&raw, &bytes).unwrap();
    let (same, _) = qemu_img(&["compare", "-f", "raw", "-F", "raw", &raw, &uri]);
    assert!(!same, "compare missed a changed byte");
    // SIGINT: the server stops and unmounts cleanly.
    let sent = std::process::Command::new("kill")
        .args(["-INT", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = server.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
    let info = ok(&["image", "info", "disk"]);
    assert!(
        info.contains("object map:  valid, 12 of 16 objects may exist"),
        "{info}"
    );
    assert!(ok(&["fsck", "--deep"]).contains("fsck: clean"));
}

/// fio's own NBD engine (libnbd) writes with verification and reads back clean, 16 requests in
/// flight.
#[test]
fn fio_nbd_engine_verifies_clean() {
    let Some(version) = common::fio(&["--version"], None) else {
        common::require_peer("fio");
        return;
    };
    assert!(version.status.success());
    let served = serve(&[("fio", 32 << 20)]);
    let uri = format!("--uri=nbd://{}/fio", served.addr);
    let out = common::fio(
        &[
            "--name=verify",
            "--ioengine=nbd",
            &uri,
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=32M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--output-format=json",
        ],
        None,
    )
    .unwrap();
    let text = out.stdout_text();
    assert!(out.status.success(), "{text}{}", out.stderr_text());
    let json = common::json_of(text.as_bytes());
    let job = &json["jobs"][0];
    assert_eq!(job["error"], 0, "{text}");
    assert_eq!(job["write"]["io_bytes"], 32u64 << 20, "{text}");
    // The verify pass read everything back.
    assert_eq!(job["read"]["io_bytes"], 32u64 << 20, "{text}");
}

/// A client that pipelines many requests — more than the server starts in one pass, one a read
/// of 8192 objects (too many for the reactor's mailbox, so the connection's thread does it) —
/// and then closes its side gets every one answered before the server closes.
#[test]
fn pipelined_requests_are_all_answered_even_after_the_client_closes() {
    let served = serve_with_objects_of(&[("small", 64 << 20)], 12);
    let mut c = Client::connect(served.addr);
    assert_eq!(c.go("small"), 64 << 20);
    c.s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let writes = 100u64;
    let mut batch = Vec::new();
    for i in 0..writes {
        let r = Request {
            flags: 0,
            kind: CMD_WRITE,
            cookie: i + 1,
            offset: i * 4096,
            length: 4096,
        };
        batch.extend_from_slice(&r.encode());
        batch.extend_from_slice(&[i as u8 + 1; 4096]);
    }
    let read_cookie = writes + 1;
    let read_len = 32u32 << 20;
    let r = Request {
        flags: 0,
        kind: CMD_READ,
        cookie: read_cookie,
        offset: 0,
        length: read_len,
    };
    batch.extend_from_slice(&r.encode());
    c.s.write_all(&batch).unwrap();
    c.s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answered = std::collections::BTreeSet::new();
    let mut read = Vec::new();
    for _ in 0..=writes {
        let mut head = [0u8; 16];
        c.s.read_exact(&mut head)
            .unwrap_or_else(|e| panic!("{} of {} answered: {e}", answered.len(), writes + 1));
        assert_eq!(u32_of(&head[..4]), SIMPLE_REPLY_MAGIC);
        assert_eq!(u32_of(&head[4..8]), 0, "no error");
        let cookie = u64::from_be_bytes(head[8..16].try_into().unwrap());
        assert!(answered.insert(cookie), "cookie {cookie} answered twice");
        if cookie == read_cookie {
            read = vec![0u8; read_len as usize];
            c.s.read_exact(&mut read).unwrap();
        }
    }
    assert_eq!(answered.len() as u64, writes + 1);
    // The read went after every write (nothing overtakes a request handed to the thread).
    for i in 0..writes as usize {
        assert!(
            read[i * 4096..(i + 1) * 4096]
                .iter()
                .all(|&b| b == i as u8 + 1),
            "block {i}"
        );
    }
    assert!(read[writes as usize * 4096..].iter().all(|&b| b == 0));
    let mut rest = Vec::new();
    c.s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the server closes after the last reply");
}
