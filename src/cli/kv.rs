//! `bluepoll kv ...`: read and write the RocksDB that lives in a BlueFS.

use anyhow::{Context, Result};
use bluepoll::kv::{KeyRange, Kv, KvConfig, WriteBatch};

use crate::cli::bluefs::{mount, parse_with, split_command};

pub const USAGE: &str = "\
usage: bluepoll kv COMMAND --db=URI [--wal=URI] [--slow=URI] [ARGS]

commands:
  put KEY VALUE         store VALUE under KEY (a synced write)
  get KEY               print the value (exit status 1 when KEY is missing)
  delete KEY            remove KEY (a synced write)
  scan [PREFIX] [--limit=N]  keys and values in order, those starting with PREFIX
  stats                 RocksDB's statistics and the BlueFS usage per device
  verify                RocksDB's check of every table file's checksums

The devices hold a BlueFS (`bluepoll bluefs mkfs`); the DB is made by the first put. get,
scan, stats and verify open it read-only, so a DB on full devices can still be inspected. Keys
and values are taken as text; output escapes bytes that are not printable ASCII.";

fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

pub fn run(args: &[String]) -> Result<i32> {
    let (command, rest) = match split_command(args, USAGE) {
        Ok(split) => split,
        Err(code) => return Ok(code),
    };
    let mut limit = usize::MAX;
    let mut device_args = Vec::new();
    for arg in rest {
        match arg.strip_prefix("--limit=") {
            Some(n) => {
                limit = n
                    .parse()
                    .with_context(|| format!("--limit={n}: not a count"))?
            }
            None => device_args.push(arg.clone()),
        }
    }
    let o = parse_with(&device_args, USAGE)?;
    let word = |i: usize, what: &str| {
        o.args
            .get(i)
            .map(String::as_bytes)
            .with_context(|| format!("missing {what}\n{USAGE}"))
    };
    let fs = mount(&o)?;
    // Reading needs no space: a full DB can still be inspected.
    let kv = match command {
        "put" | "delete" => Kv::open(&fs, &KvConfig::default()),
        _ => Kv::open_read_only(&fs, &KvConfig::default()),
    }
    .context("opening the DB")?;
    match command {
        "put" => {
            let mut batch = WriteBatch::new();
            batch.put(word(0, "KEY")?, word(1, "VALUE")?);
            kv.submit(batch, true)?;
        }
        "delete" => {
            let mut batch = WriteBatch::new();
            batch.delete(word(0, "KEY")?);
            kv.submit(batch, true)?;
        }
        "get" => match kv.get(word(0, "KEY")?)? {
            Some(value) => println!("{}", show(&value)),
            None => {
                eprintln!("{}: not found", show(word(0, "KEY")?));
                return Ok(1);
            }
        },
        "scan" => {
            let range = match o.args.first() {
                Some(prefix) => KeyRange::prefix(prefix.as_bytes()),
                None => KeyRange::default(),
            };
            for item in kv.scan(&range, None).take(limit) {
                let (key, value) = item?;
                println!("{}\t{}", show(&key), show(&value));
            }
        }
        "stats" => {
            for property in ["rocksdb.stats", "rocksdb.levelstats"] {
                if let Some(text) = kv.property(property)? {
                    println!("{}", text.trim_end());
                }
            }
            let usage = fs.usage();
            println!(
                "BlueFS: {} files, spillover to SLOW {} bytes",
                usage.files, usage.spillover_bytes
            );
        }
        "verify" => {
            kv.verify_checksums()?;
            println!("every table file's checksums verified");
        }
        other => anyhow::bail!("unknown kv command '{other}'\n{USAGE}"),
    }
    Ok(0)
}
