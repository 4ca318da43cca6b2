//! `bluepoll bluefs ...`: make, inspect and maintain a BlueFS on device URIs.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bluepoll::bluefs::{BlueFs, BlueFsConfig, DeviceId, Devices};
use bluepoll::nvme::Device;
use bluepoll::units::{format_bytes, parse_size};

pub const USAGE: &str = "\
usage: bluepoll bluefs COMMAND --db=URI [--wal=URI] [--slow=URI] [--alloc-unit=SIZE] [ARGS]

commands:
  mkfs                 make a new filesystem (labels, superblock, empty log)
  mkdir DIR            make a directory
  ls [DIR]             directories, or the files of DIR with their sizes
  stat PATH            size, mtime, links, allocation of DIR/NAME
  put LOCAL PATH       copy a local file into BlueFS (fsync'ed; makes the directory)
  cat PATH             write a file's bytes to stdout
  export DIR           copy every file out to DIR/<dir>/<name>
  sizes                usage per device and per kind of file, spillover
  fsck                 check metadata; exit status 1 when damaged
  compact              rewrite the log from live metadata
  expand               take grown devices' new space into use
  bench-mount [N,...] [H]  mount time after N files (default 1000,10000,100000) on RAM
                       devices, without history and after H×N more made and deleted
                       (default H=4); needs no --db

Devices are device URIs (mem:, uring:, pcie:, fault:); docs/bluefs.md has the details.";

pub struct Options {
    pub devices: Devices,
    pub config: BlueFsConfig,
    pub args: Vec<String>,
    _claims: Vec<bluepoll::nvme::DeviceClaim>,
}

/// Device options (`--db=`, `--wal=`, `--slow=`, `--alloc-unit=`) and the other arguments;
/// `usage` is shown with errors.
pub fn parse_with(args: &[String], usage: &str) -> Result<Options> {
    let (mut wal, mut db, mut slow) = (None, None, None);
    let mut config = BlueFsConfig::default();
    let mut rest = Vec::new();
    for arg in args {
        let Some(option) = arg.strip_prefix("--") else {
            rest.push(arg.clone());
            continue;
        };
        let (key, value) = option
            .split_once('=')
            .with_context(|| format!("option --{option} needs a value (--{option}=...)"))?;
        match key {
            "db" => db = Some(value.to_string()),
            "wal" => wal = Some(value.to_string()),
            "slow" => slow = Some(value.to_string()),
            "alloc-unit" => {
                let unit = parse_size(value).map_err(|e| anyhow::anyhow!("--alloc-unit: {e}"))?;
                config.alloc_units = [unit; 3];
            }
            _ => bail!("unknown option --{key}\n{usage}"),
        }
    }
    let Some(db) = db else {
        bail!("--db=URI is required\n{usage}")
    };
    let open = |uri: &str| Device::open(uri).with_context(|| format!("opening {uri}"));
    let devices = Devices {
        wal: wal.as_deref().map(open).transpose()?,
        db: open(&db)?,
        slow: slow.as_deref().map(open).transpose()?,
    };
    // Held until the command ends: a second bluepoll on the same devices is refused (EBUSY).
    let owner = format!("bluepoll (pid {})", std::process::id());
    let mut claims = Vec::new();
    for device in [
        devices.wal.as_ref(),
        Some(&devices.db),
        devices.slow.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        claims.push(device.claim(&owner)?);
    }
    Ok(Options {
        devices,
        config,
        args: rest,
        _claims: claims,
    })
}

fn parse(args: &[String]) -> Result<Options> {
    parse_with(args, USAGE)
}

pub fn mount(o: &Options) -> Result<BlueFs> {
    Ok(BlueFs::mount(o.devices.clone(), o.config.clone(), None)
        .context("mounting BlueFS")?
        .fs)
}

fn arg<'a>(o: &'a Options, index: usize, what: &str) -> Result<&'a str> {
    o.args
        .get(index)
        .map(String::as_str)
        .with_context(|| format!("missing {what}\n{USAGE}"))
}

/// A command-group's command and its arguments; without one, or for `--help`, the usage is
/// printed and Err carries the exit status (2 and 0).
pub fn split_command<'a>(args: &'a [String], usage: &str) -> Result<(&'a str, &'a [String]), i32> {
    match args.split_first() {
        None => {
            println!("{usage}");
            Err(2)
        }
        Some((command, _)) if command == "--help" || command == "-h" => {
            println!("{usage}");
            Err(0)
        }
        Some((command, rest)) => Ok((command.as_str(), rest)),
    }
}

pub fn run(args: &[String]) -> Result<i32> {
    let (command, rest) = match split_command(args, USAGE) {
        Ok(split) => split,
        Err(code) => return Ok(code),
    };
    if command == "bench-mount" {
        return bench_mount(rest);
    }
    let o = parse(rest)?;
    match command {
        "mkfs" => {
            let uuid = BlueFs::mkfs(&o.devices, &o.config, false)?;
            println!("made BlueFS {}", bluepoll::id::uuid_text(&uuid));
        }
        "mkdir" => {
            let fs = mount(&o)?;
            fs.mkdir(arg(&o, 0, "DIR")?)?;
        }
        "ls" => {
            let fs = mount(&o)?;
            match o.args.first() {
                None => {
                    for dir in fs.list_dirs() {
                        println!("{dir}/");
                    }
                }
                Some(dir) => {
                    for name in fs.readdir(dir)? {
                        let stat = fs.stat(&format!("{dir}/{name}"))?;
                        println!("{:>14} {name}", stat.size);
                    }
                }
            }
        }
        "stat" => {
            let fs = mount(&o)?;
            let path = arg(&o, 0, "PATH")?;
            let s = fs.stat(path)?;
            println!("path:      {path}");
            println!("ino:       {}", s.ino);
            println!("size:      {}", s.size);
            println!("allocated: {}", s.allocated);
            println!("links:     {}", s.nlink);
            println!("mtime_ns:  {}", s.mtime_ns);
        }
        "put" => {
            let fs = mount(&o)?;
            let local = arg(&o, 0, "LOCAL")?;
            let path = arg(&o, 1, "PATH")?;
            let data = std::fs::read(local).with_context(|| format!("reading {local}"))?;
            if let Some((dir, _)) = path.trim_start_matches('/').rsplit_once('/')
                && !fs.dir_exists(dir)
            {
                fs.mkdir(dir)?;
            }
            let mut w = fs.create(path)?;
            w.append(&data)?;
            w.close()?;
            println!("{path}: {} bytes", data.len());
        }
        "cat" => {
            let fs = mount(&o)?;
            let data = fs.read_file(arg(&o, 0, "PATH")?)?;
            std::io::stdout().write_all(&data)?;
        }
        "export" => {
            let fs = mount(&o)?;
            let out = Path::new(arg(&o, 0, "DIR")?);
            let mut files = 0;
            let mut bytes = 0u64;
            for path in fs.list_files() {
                let data = fs.read_file(&path)?;
                let target = out.join(&path);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                std::fs::write(&target, &data)
                    .with_context(|| format!("writing {}", target.display()))?;
                files += 1;
                bytes += data.len() as u64;
            }
            println!(
                "exported {files} files ({bytes} bytes) to {}",
                out.display()
            );
        }
        "sizes" => {
            let fs = mount(&o)?;
            let usage = fs.usage();
            println!(
                "{:<6} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
                "device", "size", "free", "log", "wal files", "db files", "slow files"
            );
            for id in DeviceId::ALL {
                let Some(d) = &usage.devices[id.index()] else {
                    continue;
                };
                let b = |n: u64| format_bytes(n as f64);
                println!(
                    "{:<6} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
                    id.name(),
                    b(d.size),
                    b(d.free),
                    b(d.log),
                    b(d.by_kind[0]),
                    b(d.by_kind[1]),
                    b(d.by_kind[2])
                );
            }
            println!(
                "files: {}, log: {} of {} used, spillover to slow: {}",
                usage.files,
                format_bytes(usage.log_position as f64),
                format_bytes(usage.log_bytes as f64),
                format_bytes(usage.spillover_bytes as f64)
            );
        }
        "fsck" => {
            let fs = mount(&o)?;
            let report = fs.fsck();
            for e in &report.errors {
                println!("error: {e}");
            }
            println!(
                "fsck: {} directories, {} files, {} errors",
                report.dirs,
                report.files,
                report.errors.len()
            );
            return Ok(if report.errors.is_empty() { 0 } else { 1 });
        }
        "compact" => {
            let fs = mount(&o)?;
            let before = fs.usage().log_position;
            fs.compact()?;
            println!(
                "log compacted: {} -> {} bytes",
                before,
                fs.usage().log_position
            );
        }
        "expand" => {
            let fs = mount(&o)?;
            let grown = fs.expand()?;
            if grown.is_empty() {
                println!("no device grew");
            }
            for (id, old, new) in grown {
                println!("{} device: {old} -> {new} bytes", id.name());
            }
        }
        other => bail!("unknown bluefs command '{other}'\n{USAGE}"),
    }
    Ok(0)
}

/// Mount time against live metadata and against history: N files made on RAM devices, the log
/// compacted, then mounted; and the same N files left after 4N created and deleted.
fn bench_mount(args: &[String]) -> Result<i32> {
    let counts: Vec<u64> = match args.first() {
        Some(list) => list
            .split(',')
            .map(|n| {
                n.parse()
                    .with_context(|| format!("'{n}' is not a file count"))
            })
            .collect::<Result<_>>()?,
        None => vec![1000, 10_000, 100_000],
    };
    let history: u64 = match args.get(1) {
        Some(h) => h
            .parse()
            .with_context(|| format!("'{h}' is not a history multiple"))?,
        None => 4,
    };
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>10}",
        "files", "history", "log bytes", "mount ms", "µs/file"
    );
    for &files in &counts {
        for churn in [0, history] {
            let devices = Devices::only(Device::open("mem:2G")?);
            // 4 KiB units: 100k one-block files fit in RAM.
            let config = BlueFsConfig {
                alloc_units: [4096; 3],
                ..BlueFsConfig::default()
            };
            BlueFs::mkfs(&devices, &config, false)?;
            let fs = BlueFs::mount(devices.clone(), config.clone(), None)?.fs;
            fs.mkdir("db")?;
            for i in 0..files * (1 + churn) {
                let mut w = fs.create(&format!("db/{i:08}.sst"))?;
                w.append(&i.to_le_bytes())?;
                w.close()?;
                if i >= files {
                    fs.unlink(&format!("db/{i:08}.sst"))?;
                }
            }
            fs.compact()?;
            let log = fs.usage().log_position;
            drop(fs);
            let start = std::time::Instant::now();
            let fs = BlueFs::mount(devices, config, None)?.fs;
            let elapsed = start.elapsed();
            anyhow::ensure!(
                fs.readdir("db")?.len() as u64 == files,
                "remount lost files"
            );
            println!(
                "{:>8} {:>10} {:>12} {:>12.2} {:>10.2}",
                files,
                if churn == 0 {
                    "none".to_string()
                } else {
                    format!("+{} deleted", files * churn)
                },
                log,
                elapsed.as_secs_f64() * 1e3,
                elapsed.as_secs_f64() * 1e6 / files as f64
            );
        }
    }
    Ok(0)
}
