//! `bluepoll image create|ls|info|rm|resize|rebuild-map|snap …|diff|clone|flatten` and
//! `bluepoll serve`: images on a store, and their NBD export.

use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use bluepoll::image::{self, Image, features};
use bluepoll::nbd::NbdServer;
use bluepoll::store::{Store, StoreDevices};
use bluepoll::units::parse_size;

use crate::cli::store as store_cli;

pub const IMAGE_USAGE: &str = "\
usage: bluepoll image COMMAND [ARGS] DEVICES
  create NAME --size=SIZE [--order=N] [--features=LIST]
                       LIST: object-map,exclusive-lock,fast-diff (the default), or shared
  ls                   the images, one per line
  info NAME            size, object size, features, map state and existing objects
  rm NAME              removes the image and its objects
  resize NAME --size=SIZE
                       grows, or shrinks (removing the objects past the end, with progress)
  rebuild-map NAME     rebuilds an invalid object map from the objects that exist
  snap create NAME@SNAP   takes a snapshot
  snap ls NAME         the snapshots: id, name, size
  snap rm NAME@SNAP    removes a snapshot (not while clones of it exist)
  snap rollback NAME@SNAP
                       makes the image what the snapshot saw (later snapshots stay)
  diff NAME[@SNAP] [--from-snap=SNAP]
                       what changed since SNAP (or since creation), up to NAME@SNAP or now,
                       from the object maps alone: lines OFFSET LENGTH data|zero
  clone PARENT@SNAP CHILD [--features=LIST]
                       a clone reading from the snapshot until it writes (copy-up)
  flatten NAME [--objects-per-second=N]
                       copies what a clone still reads from its parent, then cuts the link

DEVICES: --slow=URI [--db=URI] [--wal=URI] or --config=FILE, and --cpus=LIST (as mkfs).";

pub const SERVE_USAGE: &str = "\
usage: bluepoll serve DEVICES [--listen=ADDR:PORT] [--image=NAME ...]

Mounts the store and exports its images (or those named) over NBD until interrupted: fixed
newstyle handshake, one export per image, read/write/flush/trim/write-zeroes. Listens on
127.0.0.1:10809 unless told otherwise. Clients: qemu-io/qemu-img nbd://HOST:PORT/NAME, fio
--ioengine=nbd, nbd-client.

DEVICES: --slow=URI [--db=URI] [--wal=URI] or --config=FILE, and --cpus=LIST (as mkfs).";

/// Splits `--key=value` options named in `keys` from the rest (the device options).
fn take_options<'a>(
    args: &'a [String],
    keys: &[&str],
) -> (Vec<(String, String)>, Vec<String>, Vec<&'a str>) {
    let (mut taken, mut rest, mut positional) = (Vec::new(), Vec::new(), Vec::new());
    for arg in args {
        match arg.strip_prefix("--").and_then(|a| a.split_once('=')) {
            Some((k, v)) if keys.contains(&k) => taken.push((k.to_string(), v.to_string())),
            _ if !arg.starts_with('-') => positional.push(arg.as_str()),
            _ => rest.push(arg.clone()),
        }
    }
    (taken, rest, positional)
}

fn mount(device_args: &[String], usage: &str) -> Result<Store> {
    let config = store_cli::parse_devices(device_args, usage)?;
    let devices = StoreDevices::open(&config.devices)?;
    Store::mount_on(devices, config).context("mounting the store")
}

fn parse_features(list: &str) -> Result<u32> {
    let mut bits = 0;
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        bits |= match name {
            "object-map" => features::OBJECT_MAP,
            "exclusive-lock" => features::EXCLUSIVE_LOCK,
            "fast-diff" => features::FAST_DIFF,
            "shared" => features::SHARED,
            other => {
                bail!("unknown feature '{other}' (object-map, exclusive-lock, fast-diff, shared)")
            }
        };
    }
    Ok(bits)
}

fn feature_names(bits: u32) -> String {
    let names: Vec<&str> = [
        (features::OBJECT_MAP, "object-map"),
        (features::EXCLUSIVE_LOCK, "exclusive-lock"),
        (features::FAST_DIFF, "fast-diff"),
        (features::SHARED, "shared"),
    ]
    .iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| *n)
    .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// `bluepoll image ...`.
pub fn run(args: &[String]) -> Result<i32> {
    let Some((command, rest)) = args.split_first() else {
        println!("{IMAGE_USAGE}");
        return Ok(2);
    };
    if command == "--help" || command == "-h" {
        println!("{IMAGE_USAGE}");
        return Ok(0);
    }
    let (options, devices, positional) = take_options(
        rest,
        &[
            "size",
            "order",
            "features",
            "from-snap",
            "objects-per-second",
        ],
    );
    let option = |key: &str| {
        options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let size = || -> Result<u64> {
        let v = option("size").context("--size=SIZE is required")?;
        parse_size(v).map_err(|e| anyhow::anyhow!("--size={v}: {e}"))
    };
    let name = |what: &str| -> Result<&str> {
        match positional.as_slice() {
            [name] => Ok(name),
            [] => bail!("missing image NAME for '{what}'\n{IMAGE_USAGE}"),
            [_, extra, ..] => bail!("unexpected argument '{extra}'\n{IMAGE_USAGE}"),
        }
    };
    match command.as_str() {
        "create" => {
            let name = name("create")?;
            let size = size()?;
            let order: u8 = match option("order") {
                Some(v) => v
                    .parse()
                    .with_context(|| format!("--order={v}: not a number"))?,
                None => 22,
            };
            let feats = match option("features") {
                Some(list) => parse_features(list)?,
                None => features::DEFAULT,
            };
            let store = mount(&devices, IMAGE_USAGE)?;
            let made = image::create(&store, name, size, order, feats);
            store.umount()?;
            let info = made?;
            println!(
                "created image {name}: {} bytes, {} objects of {} bytes",
                info.size,
                info.objects(),
                info.object_size()
            );
        }
        "ls" => {
            if let Some(extra) = positional.first() {
                bail!("unexpected argument '{extra}'\n{IMAGE_USAGE}");
            }
            let store = mount(&devices, IMAGE_USAGE)?;
            let names = image::list(&store);
            store.umount()?;
            for n in names? {
                println!("{n}");
            }
        }
        "info" => {
            let name = name("info")?;
            let store = mount(&devices, IMAGE_USAGE)?;
            let opened = Image::open(&store, name);
            let text = opened.map(|img| {
                let info = img.info();
                let map = match img.loaded_object_map() {
                    Some(m) => format!(
                        "valid, {} of {} objects may exist",
                        (0..m.objects()).filter(|o| m.get(*o).may_exist()).count(),
                        m.objects()
                    ),
                    None if info.has_object_map() => "INVALID (run image rebuild-map)".into(),
                    None => "none".into(),
                };
                let parent = img.parent().map_or(String::new(), |p| {
                    format!("\nparent:      {} snapshot #{} (overlap {} bytes)", p.image, p.snap, p.overlap)
                });
                format!(
                    "image:       {name}\nsize:        {}\nobject size: {} (order {})\nobjects:     {}\nfeatures:    {}\nobject map:  {map}\nsnapshots:   {}{parent}",
                    info.size,
                    info.object_size(),
                    info.order,
                    info.objects(),
                    feature_names(info.features),
                    img.snapshots().len()
                )
            });
            store.umount()?;
            println!("{}", text?);
        }
        "rm" => {
            let name = name("rm")?;
            let store = mount(&devices, IMAGE_USAGE)?;
            let removed = image::remove(&store, name);
            store.umount()?;
            removed?;
        }
        "resize" => {
            let name = name("resize")?;
            let size = size()?;
            let store = mount(&devices, IMAGE_USAGE)?;
            let resized = Image::open(&store, name).and_then(|mut img| {
                img.resize(size, progress_line("removing objects past the end"))
            });
            store.umount()?;
            resized?;
        }
        "rebuild-map" => {
            let name = name("rebuild-map")?;
            let store = mount(&devices, IMAGE_USAGE)?;
            let rebuilt = Image::open(&store, name).and_then(|mut img| img.rebuild_object_map());
            store.umount()?;
            rebuilt?;
        }
        "snap" => {
            let (sub, spec) = match positional.as_slice() {
                [sub, spec] => (*sub, *spec),
                _ => bail!(
                    "usage: bluepoll image snap create|ls|rm|rollback NAME[@SNAP]\n{IMAGE_USAGE}"
                ),
            };
            let store = mount(&devices, IMAGE_USAGE)?;
            let done = snap_command(&store, sub, spec);
            store.umount()?;
            done?;
        }
        "diff" => {
            let spec = name("diff")?;
            let (image_name, to) = split_spec(spec);
            let from = option("from-snap");
            let store = mount(&devices, IMAGE_USAGE)?;
            let started = std::time::Instant::now();
            let report = Image::open(&store, image_name).and_then(|mut img| img.diff(from, to));
            let elapsed = started.elapsed();
            store.umount()?;
            let report = report?;
            for e in &report.extents {
                println!(
                    "{} {} {}",
                    e.offset,
                    e.len,
                    if e.exists { "data" } else { "zero" }
                );
            }
            eprintln!(
                "{} extent(s), {} object(s) changed; {} object map(s) and {} data object(s) read; {:.1} ms",
                report.extents.len(),
                report.objects_changed,
                report.maps_read,
                report.data_objects_read,
                elapsed.as_secs_f64() * 1e3
            );
        }
        "clone" => {
            let (parent, child) = match positional.as_slice() {
                [parent, child] => (*parent, *child),
                _ => bail!("usage: bluepoll image clone PARENT@SNAP CHILD\n{IMAGE_USAGE}"),
            };
            let (parent, Some(snap)) = split_spec(parent) else {
                bail!("clone needs the parent's snapshot: PARENT@SNAP");
            };
            let feats = match option("features") {
                Some(list) => parse_features(list)?,
                None => features::DEFAULT,
            };
            let store = mount(&devices, IMAGE_USAGE)?;
            let made = image::clone_image(&store, parent, snap, child, feats);
            store.umount()?;
            let info = made?;
            println!("cloned {parent}@{snap} as {child}: {} bytes", info.size);
        }
        "flatten" => {
            let name = name("flatten")?;
            let rate = match option("objects-per-second") {
                Some(v) => Some(
                    v.parse::<u64>()
                        .with_context(|| format!("--objects-per-second={v}: not a number"))?,
                ),
                None => None,
            };
            let store = mount(&devices, IMAGE_USAGE)?;
            let flattened = Image::open(&store, name)
                .and_then(|mut img| img.flatten(rate, progress_line("copying up")));
            store.umount()?;
            flattened?;
        }
        other => bail!("unknown image command '{other}'\n{IMAGE_USAGE}"),
    }
    Ok(0)
}

/// `IMAGE@SNAP` → (IMAGE, Some(SNAP)); `IMAGE` → (IMAGE, None).
fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('@') {
        Some((image, snap)) => (image, Some(snap)),
        None => (spec, None),
    }
}

/// A progress callback that keeps one line on stderr up to date.
fn progress_line(what: &'static str) -> impl FnMut(u64, u64) {
    move |done, total| {
        eprint!("\r{what}: {done}/{total}");
        if done == total {
            eprintln!();
        }
    }
}

fn snap_command(store: &Store, sub: &str, spec: &str) -> Result<()> {
    let (name, snap) = split_spec(spec);
    let mut img = Image::open(store, name)?;
    let need_snap = || snap.with_context(|| format!("'snap {sub}' needs NAME@SNAP"));
    match sub {
        "create" => {
            let s = img.snap_create(need_snap()?)?;
            println!("created snapshot {name}@{} (id {})", s.name, s.id);
        }
        "ls" => {
            println!("{:>6}  {:<24} {:>16}", "ID", "NAME", "SIZE");
            for s in img.snapshots() {
                println!("{:>6}  {:<24} {:>16}", s.id, s.name, s.size);
            }
        }
        "rm" => img.snap_remove(need_snap()?, progress_line("removing snapshot objects"))?,
        "rollback" => img.rollback(need_snap()?, progress_line("rolling back"))?,
        other => bail!("unknown snap command '{other}' (create, ls, rm, rollback)"),
    }
    Ok(())
}

/// `bluepoll serve`.
pub fn serve(args: &[String]) -> Result<i32> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{SERVE_USAGE}");
        return Ok(0);
    }
    let (options, devices, positional) = take_options(args, &["listen", "image"]);
    if let Some(extra) = positional.first() {
        bail!("unexpected argument '{extra}'\n{SERVE_USAGE}");
    }
    let listen = options
        .iter()
        .rev()
        .find(|(k, _)| k == "listen")
        .map_or("127.0.0.1:10809", |(_, v)| v.as_str());
    let images: Vec<String> = options
        .iter()
        .filter(|(k, _)| k == "image")
        .map(|(_, v)| v.clone())
        .collect();
    let store = mount(&devices, SERVE_USAGE)?;
    let server = match NbdServer::bind(listen, &store, &images) {
        Ok(s) => s,
        Err(e) => {
            store.umount()?;
            return Err(e).context(format!("serving on {listen}"));
        }
    };
    let exports = server.exports();
    println!(
        "serving {} image(s) on nbd://{}/ : {}",
        exports.len(),
        server.local_addr(),
        exports.join(", ")
    );
    // Ctrl-C stops the server; the store is then unmounted cleanly.
    let interrupted = bluepoll::sys::interrupt_flag();
    let stop = server.stopper();
    std::thread::spawn(move || {
        while !interrupted.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let served = server.run();
    drop(server);
    store.umount()?;
    served?;
    Ok(0)
}
