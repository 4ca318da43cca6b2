//! Embeds the object store: makes one on RAM devices, commits transactions the three ways the
//! API offers — a callback, a future, and a blocking call — reads them back, remounts, and
//! checks the store.
//!
//! ```sh
//! cargo run --example store
//! ```
//!
//! A transaction names one collection and carries any number of operations on its objects; it
//! is durable (its data on the main device, its metadata in RocksDB on BlueFS) when its commit
//! is reported, and a remount sees all of it or none of it.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use anyhow::{Result, ensure};
use bluepoll::store::{Store, StoreConfig, StoreDevices, Transaction};

fn main() -> Result<()> {
    // Devices by URI (docs/devices.md): here the main (SLOW) device only, 1 GiB of RAM; BlueFS
    // and RocksDB take their space from it. `pin = false`: the reactors are not pinned to CPUs,
    // so the example runs beside anything else.
    let mut config = StoreConfig::default();
    config.devices.slow = "mem:1G".into();
    config.pin = false;
    // Opened once and kept, because RAM devices vanish when the last handle goes: the same
    // devices are mounted again below.
    let devices = StoreDevices::open(&config.devices)?;
    Store::mkfs_on(&devices, &config)?;
    let store = Store::mount_on(devices.clone(), config.clone())?;

    // 1. Blocking: `apply` returns once the transaction is durable. Not allowed on the store's
    //    own reactors (it would wait on itself); there it returns WouldBlock.
    let mut t = Transaction::new("photos");
    t.create_collection()
        .write("cat.jpg", 0, b"\xff\xd8 a cat".to_vec())
        .setattr("cat.jpg", "owner", b"alice".to_vec());
    store.apply(t)?;

    // 2. Callback: `queue_transaction` returns at once; the callback runs on the collection's
    //    reactor when the transaction commits (or fails). It must not block: here it only
    //    sends the result to this thread.
    let (tx, rx) = mpsc::channel();
    for i in 0..8u8 {
        let mut t = Transaction::new("photos");
        t.write(&format!("thumb-{i}"), 0, vec![i; 4096]);
        let tx = tx.clone();
        store.queue_transaction(t, move |result| {
            let _ = tx.send((i, result));
        })?;
    }
    drop(tx);
    for (i, result) in rx {
        result?;
        println!("thumb-{i} committed");
    }

    // 3. Future: `submit` returns a future that completes at commit, for async code. Any
    //    executor works; a minimal one is below so the example needs no runtime crate.
    let mut t = Transaction::new("photos");
    t.write("cat.jpg", 8, b" and a hat".to_vec())
        .omap_setkey("cat.jpg", b"tag:hat", b"1");
    block_on(store.submit(t))?;

    let cat = store.read("photos", "cat.jpg", 0, 64)?;
    ensure!(cat == b"\xff\xd8 a cat and a hat", "read back {cat:?}");
    let objects = store.list_objects("photos", None, 100)?;
    println!("{} objects in 'photos': {objects:?}", objects.len());
    println!("store: {:?}", store.statfs());
    store.umount()?;

    // What was acknowledged survives a remount, and the deep check (every checksum) is clean.
    let store = Store::mount_on(devices.clone(), config.clone())?;
    ensure!(store.getattr("photos", "cat.jpg", "owner")? == b"alice");
    ensure!(store.read("photos", "thumb-7", 0, 4096)? == vec![7u8; 4096]);
    store.umount()?;
    let report = bluepoll::store::fsck(&devices, &config, true, false)?;
    ensure!(report.is_clean(), "fsck: {:?}", report.errors);
    println!("remounted, read back, fsck --deep clean");
    Ok(())
}

/// Runs a future to completion on this thread, parking between polls.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}
