//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Run {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            status: o.status,
            stdout: o.stdout,
            stderr: o.stderr,
        }
    }
}

/// Runs the bluepoll binary built for these tests.
pub fn bluepoll(args: &[&str]) -> Run {
    Command::new(env!("CARGO_BIN_EXE_bluepoll"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the bluepoll binary runs")
        .into()
}

/// Runs fio if it is installed; None when it is not.
/// `bluepoll ARGS DEVICE_OPTION` (a command that names its devices last).
pub fn bluepoll_on(device_option: &str, args: &[&str]) -> Run {
    let mut full = args.to_vec();
    full.push(device_option);
    bluepoll(&full)
}

/// As [`bluepoll_on`], for a command that must succeed: its stdout.
pub fn bluepoll_ok(device_option: &str, args: &[&str]) -> String {
    let out = bluepoll_on(device_option, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        out.stderr_text()
    );
    out.stdout_text()
}

pub fn fio(args: &[&str], cwd: Option<&Path>) -> Option<Run> {
    let mut cmd = Command::new("fio");
    cmd.args(args);
    // fio leaves files in its working directory (a verify job's `*-verify.state`): never the
    // repository's.
    let scratch = tempfile::tempdir().ok()?;
    cmd.current_dir(cwd.unwrap_or(scratch.path()));
    cmd.output().ok().map(Run::from)
}

/// A test that needs a peer program: fails when the suite demands peers (the README's test
/// command sets BLUEPOLL_REQUIRE_PEERS=1), otherwise prints one skip line that libtest does not
/// swallow.
pub fn require_peer(name: &str) {
    if std::env::var_os("BLUEPOLL_REQUIRE_PEERS").is_some_and(|v| v == "1") {
        panic!("{name} is required (BLUEPOLL_REQUIRE_PEERS=1) but not installed");
    }
    let _ = writeln!(std::io::stderr(), "skipped: {name} is not installed");
}

pub fn json_of(bytes: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(bytes);
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in output:\n{text}"));
    serde_json::from_str(&text[start..]).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{text}"))
}

/// A temporary directory on the build's disk rather than /tmp (which may be tmpfs, where
/// O_DIRECT is refused).
pub fn scratch_dir() -> tempfile::TempDir {
    let base = std::env::var_os("BLUEPOLL_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("test directory can be created");
    tempfile::tempdir_in(base).expect("temporary directory")
}

pub fn job_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/jobs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("bench/jobs exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "fio"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "bench/jobs holds the job files");
    files
}

/// A sparse image file of `bytes` bytes in `dir`, for file-backed devices.
pub fn sparse_image(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(bytes))
        .expect("image file can be made");
    path
}
pub mod nbd_client;
