//! `bluepoll kvbench`: db_bench-style workloads on RocksDB over BlueFS and, in the same
//! invocation, on RocksDB's default Env over a directory of the kernel filesystem on the same
//! disk, with the same options, rounds alternating which goes first.
//!
//! Workloads (db_bench's meanings; keys of 16 bytes, values of `--value-size` random bytes):
//! - fillseq: `num` puts in key order into a fresh DB, not synced;
//! - fillrandom: `num` puts in random order into a fresh DB, not synced;
//! - overwrite: `num` puts of random existing keys (after fillrandom);
//! - readrandom: `num` gets of random existing keys;
//! - seekrandom: `num` seeks to random keys, each reading the key found;
//! - fillsync: `num / 100` puts in random order into a fresh DB, each synced (a WAL fsync).
//!
//! BlueFS runs on `uring:` image files (`flush=inline`) in the same directory as the kernel
//! copy: a 4 GiB DB image and a 512 MiB WAL image (`--image-size`), written through once and kept for later
//! invocations, so they behave like block devices (a write changes no host-filesystem
//! metadata), as bench/bluefs-vs-kernel.sh's default images do. The kernel's DB is made afresh
//! in a new directory for every fill.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use bluepoll_base::rand::Rng;
use bluepoll_bluefs::{BlueFs, BlueFsConfig, Devices};
use bluepoll_kv::{Kv, KvConfig, WriteBatch, rocksdb_options};
use bluepoll_nvme::Device;

/// The help text `bluepoll kvbench --help` prints.
pub const USAGE: &str = "\
usage: bluepoll kvbench --dir=DIR [--num=N] [--value-size=B] [--rounds=R] [--image-size=SIZE]
                        [--workloads=fillseq,fillrandom,overwrite,readrandom,seekrandom,fillsync]

  --dir=DIR         a directory on the disk to measure (not tmpfs): BlueFS's images (written
                    once and kept) and the kernel filesystem's DB (removed after)
  --image-size=4G   BlueFS's DB image; its WAL image is an eighth of it
  --num=200000      keys per workload (fillsync: num/100 synced puts)
  --value-size=100  bytes per value
  --rounds=3        rounds; each runs every workload on both, alternating which goes first

Prints ops/s per workload and engine, then the BlueFS/kernel ratios (median of rounds).";

/// The workloads `--workloads` may name (db_bench's; see the module docs): all of them, in
/// this order, by default.
pub const WORKLOADS: [&str; 6] = [
    "fillseq",
    "fillrandom",
    "overwrite",
    "readrandom",
    "seekrandom",
    "fillsync",
];

struct Settings {
    dir: PathBuf,
    db_image_bytes: u64,
    num: u64,
    value_size: usize,
    rounds: usize,
    workloads: Vec<String>,
}

fn parse(args: &[String]) -> Result<Settings> {
    let mut s = Settings {
        dir: PathBuf::new(),
        db_image_bytes: 4 << 30,
        num: 200_000,
        value_size: 100,
        rounds: 3,
        workloads: WORKLOADS.iter().map(|w| w.to_string()).collect(),
    };
    for arg in args {
        let Some((key, value)) = arg.strip_prefix("--").and_then(|a| a.split_once('=')) else {
            bail!("unexpected argument '{arg}'\n{USAGE}");
        };
        let number = |v: &str| -> Result<u64> {
            v.parse()
                .with_context(|| format!("--{key}={v}: not a number"))
        };
        match key {
            "dir" => s.dir = PathBuf::from(value),
            "image-size" => {
                s.db_image_bytes = bluepoll_base::units::parse_size(value)
                    .map_err(|e| anyhow::anyhow!("--image-size: {e}"))?;
                if s.db_image_bytes < 64 << 20 {
                    bail!("--image-size={value}: at least 64M");
                }
            }
            "num" => s.num = number(value)?.max(100),
            "value-size" => s.value_size = number(value)? as usize,
            "rounds" => s.rounds = number(value)?.max(1) as usize,
            "workloads" => {
                s.workloads = value.split(',').map(str::to_owned).collect();
                for w in &s.workloads {
                    if !WORKLOADS.contains(&w.as_str()) {
                        bail!("unknown workload '{w}' (known: {})", WORKLOADS.join(","));
                    }
                }
            }
            _ => bail!("unknown option --{key}\n{USAGE}"),
        }
    }
    if s.dir.as_os_str().is_empty() {
        bail!("--dir=DIR is required\n{USAGE}");
    }
    Ok(s)
}

/// The 16-byte key of index `i`: big-endian, so index order is key order.
fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(b"bpkvkey:");
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// One engine under test: a way to get a fresh, empty DB.
trait Engine {
    fn name(&self) -> &'static str;
    fn fresh(&mut self) -> Result<Box<dyn Db>>;
}

trait Db {
    fn put(&self, key: &[u8], value: &[u8], sync: bool) -> Result<()>;
    fn get(&self, key: &[u8]) -> Result<bool>;
    fn seek(&self, key: &[u8]) -> Result<bool>;
}

impl Db for Kv {
    fn put(&self, key: &[u8], value: &[u8], sync: bool) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(key, value);
        Ok(self.submit(batch, sync)?)
    }
    fn get(&self, key: &[u8]) -> Result<bool> {
        Ok(Kv::get(self, key)?.is_some())
    }
    fn seek(&self, key: &[u8]) -> Result<bool> {
        Ok(self
            .scan(&bluepoll_kv::KeyRange::default(), Some(key))
            .next()
            .transpose()?
            .is_some())
    }
}

struct KernelDb(rocksdb::DB);

impl Db for KernelDb {
    fn put(&self, key: &[u8], value: &[u8], sync: bool) -> Result<()> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(sync);
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(key, value);
        Ok(self.0.write_opt(batch, &opts)?)
    }
    fn get(&self, key: &[u8]) -> Result<bool> {
        Ok(self.0.get(key)?.is_some())
    }
    fn seek(&self, key: &[u8]) -> Result<bool> {
        let mut it = self.0.raw_iterator();
        it.seek(key);
        it.status()?;
        Ok(it.valid() && it.key().is_some())
    }
}

struct BlueFsEngine {
    wal_image: PathBuf,
    db_image: PathBuf,
}

impl Engine for BlueFsEngine {
    fn name(&self) -> &'static str {
        "bluefs"
    }
    fn fresh(&mut self) -> Result<Box<dyn Db>> {
        let open = |path: &Path| {
            Device::open(&format!("uring:{}?flush=inline", path.display()))
                .with_context(|| format!("opening {}", path.display()))
        };
        let devices = Devices {
            wal: Some(open(&self.wal_image)?),
            db: open(&self.db_image)?,
            slow: None,
        };
        let config = BlueFsConfig::default();
        BlueFs::mkfs(&devices, &config, true).context("BlueFS mkfs")?;
        let fs = BlueFs::mount(devices, config, None)?.fs;
        Ok(Box::new(Kv::open(&fs, &KvConfig::default())?))
    }
}

struct KernelEngine {
    root: PathBuf,
}

impl Engine for KernelEngine {
    fn name(&self) -> &'static str {
        "kernel"
    }
    fn fresh(&mut self) -> Result<Box<dyn Db>> {
        let _ = std::fs::remove_dir_all(&self.root);
        std::fs::create_dir_all(&self.root)?;
        let opts = rocksdb_options(&KvConfig::default(), &self.root, None);
        let db = rocksdb::DB::open(&opts, self.root.join(bluepoll_kv::DB_DIR))?;
        Ok(Box::new(KernelDb(db)))
    }
}

/// Runs the workloads on one engine; returns ops/s per workload, in `workloads` order.
fn run_engine(engine: &mut dyn Engine, s: &Settings, seed: u64) -> Result<Vec<f64>> {
    let mut rng = Rng::new(seed);
    let mut value = vec![0u8; s.value_size];
    let mut results = Vec::new();
    let mut db: Option<Box<dyn Db>> = None;
    for w in &s.workloads {
        let fresh = matches!(w.as_str(), "fillseq" | "fillrandom" | "fillsync") || db.is_none();
        if fresh {
            drop(db.take()); // closes the previous DB before its files are replaced
            db = Some(engine.fresh()?);
            if matches!(w.as_str(), "overwrite" | "readrandom" | "seekrandom") {
                // Nothing to read or overwrite yet: load the keys first (not timed).
                let d = db.as_deref().expect("just made");
                for i in 0..s.num {
                    rng.fill_bytes(&mut value);
                    d.put(&key(i), &value, false)?;
                }
            }
        }
        let d = db.as_deref().expect("made above");
        let ops = if w == "fillsync" { s.num / 100 } else { s.num };
        let start = Instant::now();
        for i in 0..ops {
            match w.as_str() {
                "fillseq" => {
                    rng.fill_bytes(&mut value);
                    d.put(&key(i), &value, false)?;
                }
                "fillrandom" | "overwrite" | "fillsync" => {
                    rng.fill_bytes(&mut value);
                    d.put(&key(rng.below(s.num)), &value, w == "fillsync")?;
                }
                "readrandom" => {
                    d.get(&key(rng.below(s.num)))?;
                }
                "seekrandom" => {
                    d.seek(&key(rng.below(s.num)))?;
                }
                other => bail!("unknown workload {other}"),
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let rate = ops as f64 / seconds.max(1e-9);
        eprintln!("  {:<7} {:<11} {:>12.0} ops/s", engine.name(), w, rate);
        results.push(rate);
    }
    Ok(results)
}

/// Makes `path` a file of `bytes` bytes, every block written (once: a file of the right size
/// is kept).
fn written_image(path: &Path, bytes: u64) -> Result<()> {
    use std::io::Write;
    if std::fs::metadata(path).map(|m| m.len()).ok() == Some(bytes) {
        return Ok(());
    }
    eprintln!("writing {} ({bytes} bytes, once)", path.display());
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let chunk = vec![0u8; 8 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Entry point of `bluepoll kvbench`: parses `args` (see [`USAGE`]), runs the rounds and
/// prints the results.
pub fn run(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let s = parse(args)?;
    std::fs::create_dir_all(&s.dir).with_context(|| format!("creating {}", s.dir.display()))?;
    let dir = s.dir.canonicalize()?;
    let mut bluefs = BlueFsEngine {
        wal_image: dir.join("kvbench-wal.img"),
        db_image: dir.join("kvbench-db.img"),
    };
    written_image(&bluefs.wal_image, s.db_image_bytes / 8)?;
    written_image(&bluefs.db_image, s.db_image_bytes)?;
    let mut kernel = KernelEngine {
        root: dir.join("kvbench-kernel"),
    };
    println!(
        "kvbench: {} keys, {}-byte values, {} rounds, in {}",
        s.num,
        s.value_size,
        s.rounds,
        dir.display()
    );
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); s.workloads.len()];
    let mut theirs: Vec<Vec<f64>> = vec![Vec::new(); s.workloads.len()];
    for round in 0..s.rounds {
        eprintln!(
            "round {} ({} first):",
            round + 1,
            if round % 2 == 0 { "bluefs" } else { "kernel" }
        );
        let seed = 1 + round as u64;
        let (a, b) = if round % 2 == 0 {
            let a = run_engine(&mut bluefs, &s, seed)?;
            (a, run_engine(&mut kernel, &s, seed)?)
        } else {
            let b = run_engine(&mut kernel, &s, seed)?;
            (run_engine(&mut bluefs, &s, seed)?, b)
        };
        for i in 0..s.workloads.len() {
            ours[i].push(a[i]);
            theirs[i].push(b[i]);
        }
    }
    let _ = std::fs::remove_dir_all(&kernel.root);
    println!(
        "{:<11} {:>14} {:>14} {:>8}   (medians of {} rounds)",
        "workload", "bluefs ops/s", "kernel ops/s", "ratio", s.rounds
    );
    for (i, w) in s.workloads.iter().enumerate() {
        let ratios: Vec<f64> = ours[i].iter().zip(&theirs[i]).map(|(a, b)| a / b).collect();
        println!(
            "{:<11} {:>14.0} {:>14.0} {:>7.2}x",
            w,
            median(ours[i].clone()),
            median(theirs[i].clone()),
            median(ratios)
        );
    }
    Ok(())
}
