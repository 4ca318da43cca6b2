//! `bluepoll image create|ls|info|rm|resize|rebuild-map` and `bluepoll serve`: images on a store,
//! and their NBD export.

use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use bluepoll::image::{self, Image, features};
use bluepoll::nbd::NbdServer;
use bluepoll::store::{Store, StoreDevices};
use bluepoll::units::parse_size;

use crate::store_cli;

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
    let (options, devices, positional) = take_options(rest, &["size", "order", "features"]);
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
                let map = match img.object_map() {
                    Some(m) => format!(
                        "valid, {} of {} objects may exist",
                        (0..m.objects()).filter(|o| m.get(*o).may_exist()).count(),
                        m.objects()
                    ),
                    None if info.has_object_map() => "INVALID (run image rebuild-map)".into(),
                    None => "none".into(),
                };
                format!(
                    "image:       {name}\nsize:        {}\nobject size: {} (order {})\nobjects:     {}\nfeatures:    {}\nobject map:  {map}",
                    info.size,
                    info.object_size(),
                    info.order,
                    info.objects(),
                    feature_names(info.features)
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
                img.resize(size, |done, total| {
                    eprint!("\rremoving objects past the end: {done}/{total}");
                    if done == total {
                        eprintln!();
                    }
                })
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
        other => bail!("unknown image command '{other}'\n{IMAGE_USAGE}"),
    }
    Ok(0)
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
