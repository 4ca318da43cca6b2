//! `bluepoll mkfs | fsck | perf dump | store ...`: make, check, inspect and use an object store.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use bluepoll::id::uuid_text;
use bluepoll::nvme::{Device, DmaBuf, IoCmd};
use bluepoll::store::config::parse_cpu_list;
use bluepoll::store::format::{FormatError, LABEL_MAGIC, LABEL_SIZE, Label, decode_label};
use bluepoll::store::{FsckReport, Store, StoreConfig, StoreDevices, Transaction};

/// The device options every command takes (a macro so the usage texts can `concat!` it).
macro_rules! devices_help {
    () => {
        "\
devices (every command):
  --config=FILE        a store config file (TOML: [devices] and [store]; docs/store.md)
  --slow=URI           the main device: object data (and the DB, without --db)
  --db=URI             RocksDB's tables on a device of their own (optional)
  --wal=URI            RocksDB's WAL and BlueFS's log on a device of their own (optional)
  --cpus=LIST          one reactor and shard per CPU, e.g. 0,1 or 0-1 (default: the first
                       available CPU)
With --config and --slow both given, --slow/--db/--wal replace the file's [devices] as a
whole; --cpus replaces store.cpus. Device URIs: mem:, uring:, pcie:, fault: (docs/devices.md);
mem: devices vanish with the process, so use uring:PATH?size=N files or real devices."
    };
}

pub const MKFS_USAGE: &str = concat!(
    "\
usage: bluepoll mkfs [--force] (--slow=URI [--db=URI] [--wal=URI] | --config=FILE) [--cpus=LIST]

Makes a new object store: the main device's label, BlueFS (its DB area carved from the main
device when there is no --db) and the store's records. Prints the new store's fsid. A main
device that already holds a bluepoll store is refused unless --force is given (its contents
are lost).

",
    devices_help!()
);

pub const EXPAND_USAGE: &str = concat!(
    "\
usage: bluepoll expand (--slow=URI ... | --config=FILE)

Grows an unmounted store onto its main device after the device grew (a file made larger — for
uring: files, give the new size as ?size=N —, a grown volume or partition): the new space
becomes free for objects and BlueFS. Prints the old and the new size.

",
    devices_help!()
);

/// `bluepoll expand`.
pub fn expand(args: &[String]) -> Result<i32> {
    if wants_help(args) {
        println!("{EXPAND_USAGE}");
        return Ok(0);
    }
    let p = parse(args, EXPAND_USAGE, &[])?;
    p.at_most(0, EXPAND_USAGE)?;
    let devices = open_devices(&p.config)?;
    let (old, new) = Store::expand_on(&devices).context("expand")?;
    if old == new {
        println!("expand: the main device is still {new} bytes; nothing to do");
    } else {
        println!("expand: main device grown from {old} to {new} bytes");
    }
    Ok(0)
}

pub const FSCK_USAGE: &str = concat!(
    "\
usage: bluepoll fsck [--deep] [--repair] (--slow=URI ... | --config=FILE)

Checks an unmounted store: every record decodes, extents lie in the data area and overlap
neither BlueFS nor each other, allocated space equals referenced space, reference counts agree,
no orphaned extent shards or omaps. Deferred writes a crash left are applied first.
  --deep               also read every byte of object data and verify its checksums
  --repair             fix what can be fixed (leaks freed, used space marked, counts set,
                       orphans deleted), then check again
Exit status: 0 clean (with --repair: clean after repair), 1 errors remain.

",
    devices_help!()
);

pub const PERF_USAGE: &str = concat!(
    "\
usage: bluepoll perf dump (--slow=URI ... | --config=FILE)

Mounts the store and prints its counters and latency histograms (shards merged, the kv-sync
thread, throttles, space) as JSON. A fresh mount has counted only its own startup.

",
    devices_help!()
);

pub const STORE_USAGE: &str = concat!(
    "\
usage: bluepoll store COMMAND [ARGS] (--slow=URI ... | --config=FILE)

commands:
  ls [COLL]            the collections, or the objects of COLL (one per line, sorted)
  stat COLL OBJ        size, allocated bytes, omap, attributes and their sizes
  get COLL OBJ [FILE]  the object's data to FILE (default: stdout)
  put COLL OBJ FILE    FILE's bytes become the whole object (at most 1 GiB; the collection
                       is made when missing); one transaction
  rm COLL OBJ          remove an object
  mkcoll COLL          make an empty collection
  rmcoll COLL          remove an empty collection
`--` ends the options: later arguments are names even when they start with `-`.

",
    devices_help!()
);

/// Largest file `store put` takes (it is written in one transaction, held in memory).
const PUT_MAX: u64 = 1 << 30;
/// Bytes per read of `store get`.
const GET_CHUNK: u64 = 8 << 20;
/// Object names per `list_objects` call.
const LIST_PAGE: usize = 1024;

/// Standard output that a reader may close early (`| head`): once it has, output is dropped
/// quietly and `closed` says to stop producing it; other write errors are errors.
struct Out {
    out: std::io::StdoutLock<'static>,
    closed: bool,
}

impl Out {
    fn new() -> Out {
        Out {
            out: std::io::stdout().lock(),
            closed: false,
        }
    }

    fn bytes(&mut self, data: &[u8]) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.out.write_all(data) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            r => Ok(r.context("writing to stdout")?),
        }
    }

    fn line(&mut self, text: impl std::fmt::Display) -> Result<()> {
        self.bytes(format!("{text}\n").as_bytes())
    }

    fn flush(&mut self) -> Result<()> {
        match self.out.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => Ok(r.context("writing to stdout")?),
        }
    }
}

/// A command's config (devices and CPUs applied), its flags and its other arguments.
struct Parsed {
    config: StoreConfig,
    flags: HashSet<&'static str>,
    args: Vec<String>,
}

impl Parsed {
    fn flag(&self, name: &str) -> bool {
        self.flags.contains(name)
    }

    /// Positional argument `index` (`what` names it in the error).
    fn arg(&self, index: usize, what: &str, usage: &str) -> Result<&str> {
        self.args
            .get(index)
            .map(String::as_str)
            .with_context(|| format!("missing {what}\n{usage}"))
    }

    /// Refuses positional arguments past the first `max`.
    fn at_most(&self, max: usize, usage: &str) -> Result<()> {
        match self.args.get(max) {
            Some(extra) => bail!("unexpected argument '{extra}'\n{usage}"),
            None => Ok(()),
        }
    }
}

/// Whether `--help` / `-h` is among the options (before a `--`).
fn wants_help(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--help" || a == "-h")
}

/// Parses the device options and `flags` (options without a value); everything else that
/// starts with `-` is an error naming it.
fn parse(args: &[String], usage: &str, flags: &[&'static str]) -> Result<Parsed> {
    let (mut config_file, mut slow, mut db, mut wal, mut cpus) = (None, None, None, None, None);
    let mut seen = HashSet::new();
    let mut rest = Vec::new();
    let mut options_done = false;
    for arg in args {
        if options_done || !arg.starts_with('-') || arg == "-" {
            rest.push(arg.clone());
            continue;
        }
        if arg == "--" {
            options_done = true;
            continue;
        }
        let Some(option) = arg.strip_prefix("--") else {
            bail!("unknown option {arg}\n{usage}")
        };
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option, None),
        };
        if let Some(&flag) = flags.iter().find(|f| **f == key) {
            if value.is_some() {
                bail!("--{flag} takes no value");
            }
            seen.insert(flag);
            continue;
        }
        let slot = match key {
            "config" => &mut config_file,
            "slow" => &mut slow,
            "db" => &mut db,
            "wal" => &mut wal,
            "cpus" => &mut cpus,
            _ => bail!("unknown option --{key}\n{usage}"),
        };
        match value {
            Some(v) if !v.is_empty() => *slot = Some(v.to_string()),
            _ => bail!("option --{key} needs a value (--{key}=...)"),
        }
    }
    let mut config = match &config_file {
        Some(path) => StoreConfig::from_file(Path::new(path))?,
        None => StoreConfig::default(),
    };
    match slow {
        Some(slow) => {
            config.devices.slow = slow;
            config.devices.db = db;
            config.devices.wal = wal;
        }
        None if db.is_some() || wal.is_some() => {
            bail!("--db and --wal need --slow=URI (the main device) beside them\n{usage}")
        }
        None if config_file.is_none() => {
            bail!("no devices given: --slow=URI [--db=URI] [--wal=URI], or --config=FILE\n{usage}")
        }
        None => {}
    }
    if let Some(list) = cpus {
        config.cpus = parse_cpu_list(&list).map_err(|e| anyhow::anyhow!("--cpus={list}: {e}"))?;
    }
    config.validate()?;
    Ok(Parsed {
        config,
        flags: seen,
        args: rest,
    })
}

/// The store config named by device options alone (for commands with options of their own).
pub fn parse_devices(args: &[String], usage: &str) -> Result<StoreConfig> {
    let p = parse(args, usage, &[])?;
    p.at_most(0, usage)?;
    Ok(p.config)
}

/// Opens the devices of `config`, naming the URI that fails.
fn open_devices(config: &StoreConfig) -> Result<StoreDevices> {
    let open = |uri: &str| Device::open(uri).with_context(|| format!("opening {uri}"));
    let d = &config.devices;
    Ok(StoreDevices {
        slow: open(&d.slow)?,
        db: d.db.as_deref().map(open).transpose()?,
        wal: d.wal.as_deref().map(open).transpose()?,
    })
}

fn mount(config: &StoreConfig) -> Result<Store> {
    let devices = open_devices(config)?;
    Store::mount_on(devices, config.clone()).context("mounting the store")
}

/// What block 0 of a main device holds: None when it is not a store label, Some(Err) when it
/// has the label's magic but does not decode.
fn existing_label(main: &Device) -> Result<Option<Result<Label, FormatError>>> {
    let info = main.info();
    let bs = info.block_size as usize;
    let len = LABEL_SIZE.next_multiple_of(bs);
    if (len as u64) > info.capacity_bytes() {
        return Ok(None);
    }
    let mut qp = main.queue_pair(1)?;
    let buf = DmaBuf::new(len)?;
    let c = qp.execute(IoCmd::read(0, (len / bs) as u32, buf, 0))?;
    if !c.status.is_success() {
        bail!("reading block 0 of {} failed: {}", info.uri, c.status);
    }
    let block = c.buf.context("the read returned no buffer")?;
    if &block[..LABEL_MAGIC.len()] != LABEL_MAGIC {
        return Ok(None);
    }
    Ok(Some(decode_label(&block[..LABEL_SIZE])))
}

/// `bluepoll mkfs`.
pub fn mkfs(args: &[String]) -> Result<i32> {
    if wants_help(args) {
        println!("{MKFS_USAGE}");
        return Ok(0);
    }
    let p = parse(args, MKFS_USAGE, &["force"])?;
    p.at_most(0, MKFS_USAGE)?;
    let devices = open_devices(&p.config)?;
    let uri = &p.config.devices.slow;
    if !p.flag("force") {
        match existing_label(&devices.slow)? {
            None => {}
            Some(Ok(label)) => bail!(
                "{uri} already holds bluepoll store {}; pass --force to make a new store over it \
                 (everything in the old one is lost)",
                uuid_text(&label.fsid)
            ),
            Some(Err(e)) => bail!(
                "{uri} holds a damaged bluepoll store label ({e}); pass --force to make a new \
                 store over it"
            ),
        }
    }
    let fsid = Store::mkfs_on(&devices, &p.config).context("mkfs")?;
    println!("made store {}", uuid_text(&fsid));
    Ok(0)
}

fn print_report(out: &mut Out, r: &FsckReport, deep: bool) -> Result<()> {
    out.line(format_args!("collections:        {}", r.collections))?;
    out.line(format_args!("objects:            {}", r.objects))?;
    out.line(format_args!("referenced bytes:   {}", r.referenced_bytes))?;
    out.line(format_args!("allocated bytes:    {}", r.allocated_bytes))?;
    out.line(format_args!("bluefs bytes:       {}", r.bluefs_bytes))?;
    out.line(format_args!("shared units:       {}", r.shared_units))?;
    out.line(format_args!("deferred replayed:  {}", r.deferred_replayed))?;
    let not_deep = if deep { "" } else { " (data not read; --deep)" };
    out.line(format_args!(
        "verified bytes:     {}{not_deep}",
        r.verified_bytes
    ))?;
    for e in &r.errors {
        out.line(format_args!("error: {e}"))?;
    }
    for fix in &r.repaired {
        out.line(format_args!("repaired: {fix}"))?;
    }
    Ok(())
}

/// `bluepoll fsck`.
pub fn fsck(args: &[String]) -> Result<i32> {
    if wants_help(args) {
        println!("{FSCK_USAGE}");
        return Ok(0);
    }
    let p = parse(args, FSCK_USAGE, &["deep", "repair"])?;
    p.at_most(0, FSCK_USAGE)?;
    let (deep, repair) = (p.flag("deep"), p.flag("repair"));
    let devices = open_devices(&p.config)?;
    let mut out = Out::new();
    let report = bluepoll::store::fsck(&devices, &p.config, deep, repair).context("fsck")?;
    print_report(&mut out, &report, deep)?;
    let code = if report.is_clean() {
        out.line("fsck: clean")?;
        0
    } else if !repair {
        out.line(format_args!("fsck: {} errors", report.errors.len()))?;
        1
    } else {
        out.line(format_args!(
            "fsck: {} errors, {} repairs; checking again",
            report.errors.len(),
            report.repaired.len()
        ))?;
        out.flush()?;
        let again = bluepoll::store::fsck(&devices, &p.config, deep, false).context("fsck")?;
        print_report(&mut out, &again, deep)?;
        if again.is_clean() {
            out.line("fsck: clean after repair")?;
            0
        } else {
            out.line(format_args!(
                "fsck: {} errors remain after repair",
                again.errors.len()
            ))?;
            1
        }
    };
    out.flush()?;
    Ok(code)
}

/// `bluepoll perf ...`.
pub fn perf(args: &[String]) -> Result<i32> {
    if wants_help(args) {
        println!("{PERF_USAGE}");
        return Ok(0);
    }
    match args.first().map(String::as_str) {
        Some("dump") => {}
        Some(other) => bail!("unknown perf command '{other}' (perf dump)\n{PERF_USAGE}"),
        None => {
            println!("{PERF_USAGE}");
            return Ok(2);
        }
    }
    let p = parse(&args[1..], PERF_USAGE, &[])?;
    p.at_most(0, PERF_USAGE)?;
    let store = mount(&p.config)?;
    let dump = store.perf_dump()?;
    let mut out = Out::new();
    out.line(serde_json::to_string_pretty(&dump)?)?;
    out.flush()?;
    store.umount()?;
    Ok(0)
}

/// Reads a whole local file for `store put`, refusing one over [`PUT_MAX`].
fn read_put_file(path: &str) -> Result<Vec<u8>> {
    let too_big = |n: u64| {
        anyhow::anyhow!(
            "{path} is {n} bytes; store put takes files of at most 1 GiB ({PUT_MAX} bytes)"
        )
    };
    let file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let meta = file.metadata().with_context(|| format!("reading {path}"))?;
    if meta.is_dir() {
        bail!("{path} is a directory");
    }
    if meta.is_file() && meta.len() > PUT_MAX {
        return Err(too_big(meta.len()));
    }
    let mut data = Vec::with_capacity(if meta.is_file() {
        meta.len() as usize
    } else {
        0
    });
    file.take(PUT_MAX + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("reading {path}"))?;
    if data.len() as u64 > PUT_MAX {
        return Err(too_big(data.len() as u64));
    }
    Ok(data)
}

/// `bluepoll store ...`.
pub fn run(args: &[String]) -> Result<i32> {
    let Some((command, rest)) = args.split_first() else {
        println!("{STORE_USAGE}");
        return Ok(2);
    };
    if command == "--help" || command == "-h" || wants_help(rest) {
        println!("{STORE_USAGE}");
        return Ok(0);
    }
    const U: &str = STORE_USAGE;
    let (min, max) = match command.as_str() {
        "ls" => (0, 1),
        "stat" | "rm" => (2, 2),
        "get" => (2, 3),
        "put" => (3, 3),
        "mkcoll" | "rmcoll" => (1, 1),
        other => {
            bail!(
                "unknown store command '{other}' (commands: ls, stat, get, put, rm, mkcoll, rmcoll)\n{U}"
            )
        }
    };
    let p = parse(rest, U, &[])?;
    p.at_most(max, U)?;
    let names = ["COLL", "OBJ", if command == "put" { "FILE" } else { "" }];
    for (index, what) in names.iter().enumerate().take(min) {
        p.arg(index, what, U)?;
    }
    // Read the local file before mounting: a bad FILE costs no mount.
    let put_data = match command.as_str() {
        "put" => Some(read_put_file(p.arg(2, "FILE", U)?)?),
        _ => None,
    };
    let store = mount(&p.config)?;
    let coll = p.args.first().map(String::as_str).unwrap_or("");
    let obj = p.args.get(1).map(String::as_str).unwrap_or("");
    match command.as_str() {
        "ls" => {
            let mut out = Out::new();
            if p.args.is_empty() {
                for c in store.list_collections()? {
                    out.line(c)?;
                }
            } else {
                let mut after: Option<String> = None;
                while !out.closed {
                    let page = store.list_objects(coll, after.as_deref(), LIST_PAGE)?;
                    for name in &page {
                        out.line(name)?;
                    }
                    if page.len() < LIST_PAGE {
                        break;
                    }
                    after = page.last().cloned();
                }
            }
            out.flush()?;
        }
        "stat" => {
            let s = store.stat(coll, obj)?;
            let attrs = store.getattrs(coll, obj)?;
            let mut out = Out::new();
            out.line(format_args!("object:    {coll}/{obj}"))?;
            out.line(format_args!("size:      {}", s.size))?;
            out.line(format_args!("allocated: {}", s.allocated))?;
            let omap = if s.has_omap { "yes" } else { "no" };
            out.line(format_args!("omap:      {omap}"))?;
            out.line(format_args!("attrs:     {}", attrs.len()))?;
            for (name, value) in &attrs {
                out.line(format_args!("  {name}: {} bytes", value.len()))?;
            }
            out.flush()?;
        }
        "get" => {
            let size = store.stat(coll, obj)?.size;
            let mut file = match p.args.get(2) {
                Some(path) => Some((
                    std::io::BufWriter::new(
                        std::fs::File::create(path).with_context(|| format!("creating {path}"))?,
                    ),
                    path,
                )),
                None => None,
            };
            let mut out = Out::new();
            let mut offset = 0;
            while offset < size && !out.closed {
                let data = store.read(coll, obj, offset, GET_CHUNK.min(size - offset))?;
                if data.is_empty() {
                    bail!("{coll}/{obj}: read at {offset} returned nothing (size {size})");
                }
                match &mut file {
                    Some((f, path)) => f
                        .write_all(&data)
                        .with_context(|| format!("writing {path}"))?,
                    None => out.bytes(&data)?,
                }
                offset += data.len() as u64;
            }
            match &mut file {
                Some((f, path)) => f.flush().with_context(|| format!("writing {path}"))?,
                None => out.flush()?,
            }
        }
        "put" => {
            let data = put_data.unwrap_or_default();
            let len = data.len();
            let mut t = Transaction::new(coll);
            if !store.collection_exists(coll)? {
                t.create_collection();
            }
            t.touch(obj).truncate(obj, 0);
            if len > 0 {
                t.write(obj, 0, data);
            }
            store.apply(t)?;
            println!("{coll}/{obj}: {len} bytes");
        }
        "rm" => {
            let mut t = Transaction::new(coll);
            t.remove(obj);
            store.apply(t)?;
        }
        "mkcoll" => {
            let mut t = Transaction::new(coll);
            t.create_collection();
            store.apply(t)?;
        }
        "rmcoll" => {
            let mut t = Transaction::new(coll);
            t.remove_collection();
            store.apply(t)?;
        }
        _ => unreachable!("commands were checked above"),
    }
    store.umount()?;
    Ok(0)
}
