//! The userspace NVMe driver against QEMU's emulated NVMe controller: boots a guest through
//! scripts/qemu-nvme-test.sh and checks its verdict. The script exits 77 with one `skipped:`
//! line when QEMU cannot run here; that is a skip, reported on stderr, unless
//! BLUEPOLL_REQUIRE_QEMU=1 makes it a failure.

use std::io::Write;
use std::process::Command;
use std::sync::Mutex;

/// One guest at a time: two TCG guests on a two-core machine only slow each other down.
static QEMU: Mutex<()> = Mutex::new(());

struct Outcome {
    code: Option<i32>,
    text: String,
}

fn run_harness(args: &[&str]) -> Outcome {
    let _one_at_a_time = QEMU.lock().unwrap_or_else(|p| p.into_inner());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/qemu-nvme-test.sh");
    let output = Command::new("bash")
        .arg(script)
        .args(args)
        .env("BLUEPOLL_BIN", env!("CARGO_BIN_EXE_bluepoll"))
        .output()
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Outcome {
        code: output.status.code(),
        text,
    }
}

/// True when the harness skipped (and that is allowed); the skip line goes to stderr.
fn skipped(outcome: &Outcome) -> bool {
    if outcome.code != Some(77) {
        return false;
    }
    let reason = outcome
        .text
        .lines()
        .find(|l| l.starts_with("skipped:"))
        .unwrap_or("skipped: (no reason given)");
    if std::env::var_os("BLUEPOLL_REQUIRE_QEMU").is_some_and(|v| v == "1") {
        panic!("QEMU is required (BLUEPOLL_REQUIRE_QEMU=1): {reason}");
    }
    let _ = writeln!(std::io::stderr(), "{reason}");
    true
}

#[test]
fn driver_passes_against_qemus_nvme_controller() {
    let outcome = run_harness(&[]);
    if skipped(&outcome) {
        return;
    }
    assert_eq!(
        outcome.code,
        Some(0),
        "QEMU NVMe run failed:\n{}",
        outcome.text
    );
    for expected in [
        "ok   identify",
        "ok   read host pattern",
        "ok   write/read split at MDTS",
        "ok   LBA beyond the namespace",
        "ok   unregistered buffer",
        "ok   doorbell batching",
        "ok   two queue pairs, random verify",
        "ok   image: split at MDTS",
        "ok   conformance",
        "== conformance: ok",
        "PASS:",
    ] {
        assert!(
            outcome.text.contains(expected),
            "'{expected}' missing from:\n{}",
            outcome.text
        );
    }
}

/// The harness must notice a DMA the IOMMU blocked even when QEMU's model reports success.
#[test]
fn harness_reports_a_dma_to_an_unmapped_address() {
    let outcome = run_harness(&["--mode", "rogue-dma"]);
    if skipped(&outcome) {
        return;
    }
    assert_eq!(
        outcome.code,
        Some(1),
        "a rogue DMA went unnoticed:\n{}",
        outcome.text
    );
    assert!(
        outcome.text.contains("FAIL: ")
            && (outcome.text.contains("DMAR") || outcome.text.contains("translation")),
        "the failure does not name the IOMMU fault:\n{}",
        outcome.text
    );
}
