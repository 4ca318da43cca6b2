//! Drives one device through one queue pair, the way every layer of bluepoll does: the thread
//! that submits also polls, there are no interrupts and no I/O threads.
//!
//! ```sh
//! cargo run --example queue_pair                 # a 64 MiB RAM namespace
//! cargo run --example queue_pair -- uring:/tmp/f # any device URI (docs/devices.md)
//! ```
//!
//! It writes a pattern to 64 blocks with up to 16 commands in flight, flushes, reads every
//! block back at the same depth and compares, then prints the queue pair's counters. The
//! device's first 64 blocks are overwritten.

use anyhow::{Context, Result, bail, ensure};
use bluepoll::nvme::{Completion, Device, DmaPool, IoCmd, QueuePair};

/// Blocks written and read back.
const BLOCKS: u64 = 64;
/// Commands kept in flight.
const DEPTH: u32 = 16;

fn main() -> Result<()> {
    let uri = std::env::args().nth(1).unwrap_or_else(|| "mem:64M".into());
    let device = Device::open(&uri).with_context(|| format!("opening {uri}"))?;
    let info = device.info();
    let block = info.block_size as usize;
    ensure!(
        info.capacity_blocks >= BLOCKS,
        "{uri} holds {} blocks; this example needs {BLOCKS}",
        info.capacity_blocks
    );
    println!(
        "{uri}: {} ({} blocks of {block} bytes)",
        info.model, info.capacity_blocks
    );

    // One queue pair per thread per device; a pool of DMA buffers sized for one block each.
    let mut qp = device.queue_pair(DEPTH)?;
    let pool = DmaPool::new(block, DEPTH as usize)?;
    // Backends that map buffers for the device (pcie:, spdk:) do it once per pool, here.
    qp.register_pool(&pool)?;

    // Writes: the tag says which block a completion belongs to.
    at_depth(
        &mut qp,
        |lba| {
            let mut buf = pool.alloc()?;
            buf.fill(pattern(lba));
            Ok(IoCmd::write(lba, 1, buf, lba))
        },
        |_| Ok(()),
    )?;
    // Durable before we read: a Flush covers every write completed before it.
    let flush = qp.execute(IoCmd::flush(u64::MAX))?;
    ensure!(
        flush.status.is_success(),
        "flush failed: {:?}",
        flush.status
    );

    // Reads at the same depth, compared as they complete.
    at_depth(
        &mut qp,
        |lba| Ok(IoCmd::read(lba, 1, pool.alloc()?, lba)),
        |done| {
            // The buffer is ours again: the device has finished with it.
            let buf = done.buf.context("a read completes with its buffer")?;
            ensure!(
                buf.iter().all(|b| *b == pattern(done.tag)),
                "block {} read back different bytes",
                done.tag
            );
            Ok(())
        },
    )?;
    let stats = qp.stats();
    println!("wrote, flushed and read back {BLOCKS} blocks at depth {DEPTH}: all match");
    println!("queue pair: {stats:?}");
    Ok(())
}

/// Runs one command per block `0..BLOCKS`, `command(lba)` making each, keeping `DEPTH` in
/// flight: submit fills the queue, poll reaps whatever finished (returning at once when nothing
/// has), and `check` sees every successful completion.
fn at_depth(
    qp: &mut QueuePair,
    mut command: impl FnMut(u64) -> Result<IoCmd>,
    mut check: impl FnMut(Completion) -> Result<()>,
) -> Result<()> {
    let (mut next, mut done) = (0u64, 0u64);
    let mut completions = Vec::new();
    while done < BLOCKS {
        while next < BLOCKS && qp.outstanding() < DEPTH {
            qp.submit(command(next)?)
                .map_err(|_| anyhow::anyhow!("queue full below its depth"))?;
            next += 1;
        }
        completions.clear();
        qp.poll(DEPTH as usize, &mut completions)?;
        for c in completions.drain(..) {
            if !c.status.is_success() {
                bail!("block {}: {:?}", c.tag, c.status);
            }
            done += 1;
            check(c)?;
        }
    }
    Ok(())
}

/// The byte every block `lba` is filled with.
fn pattern(lba: u64) -> u8 {
    (lba as u8).wrapping_mul(31).wrapping_add(7)
}
