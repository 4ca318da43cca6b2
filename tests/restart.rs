//! A node killed with SIGKILL restarts at once: the device claim ends with the process (not when
//! the kernel gets round to tearing down its io_uring instances), and nothing acknowledged is
//! lost. While a device really is held, the refusal names the process holding it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use bluepoll::nbd::protocol::*;
use common::nbd_client::Client;

/// Bytes per write of the load.
const UNIT: u32 = 64 << 10;
/// Restarts after a kill -9.
const ROUNDS: u64 = 20;

/// `bluepoll serve` on `dev`, and the address it listens on; Err(what it printed) when it exits
/// instead of serving.
fn serve(dev: &str) -> Result<(Child, SocketAddr), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bluepoll"))
        .args(["serve", dev, "--listen=127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(address) = line.split_whitespace().find(|w| w.starts_with("nbd://")) else {
        let out = child.wait_with_output().unwrap();
        return Err(format!("{line}{}", String::from_utf8_lossy(&out.stderr)));
    };
    let address = address
        .trim_start_matches("nbd://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    Ok((child, address))
}

/// The bytes of write `round` at unit `unit`.
fn pattern(round: u64, unit: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; UNIT as usize];
    bluepoll::rand::Rng::new(round << 32 | unit).fill_bytes(&mut bytes);
    bytes
}

#[test]
fn serve_restarts_at_once_after_kill_9_and_loses_nothing_acknowledged() {
    let dir = common::scratch_dir();
    let dev = format!(
        "--slow=uring:{}?size=1G",
        dir.path().join("main.img").display()
    );
    common::bluepoll_ok(&dev, &["mkfs"]);
    common::bluepoll_ok(&dev, &["image", "create", "disk", "--size=256M"]);
    // unit → the round whose write to it was acknowledged last.
    let mut acknowledged: Vec<Option<u64>> = vec![None; 64];
    let mut refused = Vec::new();
    for round in 0..ROUNDS {
        let (mut server, address) = match serve(&dev) {
            Ok(started) => started,
            Err(text) => {
                refused.push(format!("round {round}: {text}"));
                continue;
            }
        };
        let mut client = Client::connect(address);
        client.go("disk");
        // Everything acknowledged in earlier lives is there.
        for (unit, last) in acknowledged.iter().enumerate() {
            if let Some(written) = last {
                let (error, data) = client.request(CMD_READ, unit as u64 * UNIT as u64, UNIT, &[]);
                assert_eq!(error, 0, "round {round}: read of unit {unit}");
                assert!(
                    data == pattern(*written, unit as u64),
                    "round {round}: unit {unit} lost its write of round {written}"
                );
            }
        }
        // Acknowledged (FUA) writes, then more sent without waiting, in flight at the kill.
        for k in 0..8 {
            let unit = (round * 8 + k) % acknowledged.len() as u64;
            let (error, _) =
                client.request(CMD_WRITE, unit * UNIT as u64, UNIT, &pattern(round, unit));
            assert_eq!(error, 0, "round {round}: write of unit {unit}");
            acknowledged[unit as usize] = Some(round);
        }
        for k in 0..8u64 {
            // Units no acknowledged write of this round touches; their content is then either
            // version, so they are not checked.
            let unit = 64 + k;
            let request = Request {
                flags: 0,
                kind: CMD_WRITE,
                cookie: 1000 + k,
                offset: unit * UNIT as u64,
                length: UNIT,
            };
            client.s.write_all(&request.encode()).unwrap();
            client.s.write_all(&pattern(round, unit)).unwrap();
        }
        server.kill().unwrap();
        server.wait().unwrap();
    }
    assert!(
        refused.is_empty(),
        "refused restarts:\n{}",
        refused.join("\n")
    );
    // A last life: every acknowledged write, then a clean stop and a deep check.
    let (mut server, address) = serve(&dev).expect("the last restart");
    let mut client = Client::connect(address);
    client.go("disk");
    for (unit, last) in acknowledged.iter().enumerate() {
        let written = last.expect("every unit was written");
        let (error, data) = client.request(CMD_READ, unit as u64 * UNIT as u64, UNIT, &[]);
        assert_eq!(error, 0);
        assert!(
            data == pattern(written, unit as u64),
            "unit {unit} lost round {written}"
        );
    }
    client.request_disconnect();

    // While it serves, the device is really held: a second user is refused with its name.
    let held = common::bluepoll_on(&dev, &["fsck"]);
    assert_ne!(held.status.code(), Some(0));
    let text = held.stderr_text();
    assert!(
        text.contains(&format!("process {} (bluepoll)", server.id())),
        "{text}"
    );

    let sent = Command::new("kill")
        .args(["-INT", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(server.wait().unwrap().success());
    assert!(common::bluepoll_ok(&dev, &["fsck", "--deep"]).contains("fsck: clean"));
}
