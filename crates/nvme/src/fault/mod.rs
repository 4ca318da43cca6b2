//! `fault:[OPTIONS+]INNER_URI` — a fault-injecting wrapper over any backend; the device every crash
//! test of every layer above runs on. The guarantees below are what those tests may rely on.
//!
//! # URI
//!
//! `OPTIONS` is a comma-separated list of `key=value`, ended by `+`; the rest is the inner URI,
//! opened with [`Device::open`] (so `fault:seed=1+fault:cache=off+mem:1G` stacks two injectors).
//! When the text after `fault:` starts with a known scheme and `:` (`fault:mem:256M`) there are no
//! options, and the inner URI may itself contain `+`.
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `seed=N` | seed of every random choice (decimal or `0x` hex) | 0 |
//! | `cache=on\|off` | volatile write cache | on |
//! | `survive=P` | at a power cut, chance an unflushed write persists whole | 0 |
//! | `torn=P` | at a power cut, chance an unflushed write of ≥ 2 blocks persists in part | 0 |
//! | `drop_writes=P` | chance a write reports success but is discarded | 0 |
//! | `corrupt_writes=P` | chance a write is stored with one bit flipped | 0 |
//! | `eio_nth=N` | the Nth matching command (1-based) fails | — |
//! | `eio_every=N` | every Nth matching command fails | — |
//! | `eio_lba=A-B` | matching commands touching LBAs A..=B fail | — |
//! | `eio_on=read\|write\|flush\|any` | what the `eio_*` options match | any |
//!
//! Each `eio_nth`/`eio_every`/`eio_lba` becomes its own [`EioRule`] (with its own counter), all
//! with the one `eio_on`. An unknown option, a repeated one, a bad number or a probability
//! outside 0..=1 is [`NvmeError::InvalidUri`] naming the option.
//!
//! # Volatile write cache (`cache=on`)
//!
//! - Write, WriteZeroes and Trim execute at the poll that rings their doorbell: they land in one
//!   cache shared by every queue pair of the device and complete successfully at once, without
//!   reaching the inner device. Reads see the newest version of each block; the versions it
//!   replaced are kept for power cuts (below).
//! - A Read returns inner data overlaid with the cached blocks it overlaps. The overlay is the
//!   cache as it was when the read was forwarded to the inner device, so a write that completed
//!   before the read was submitted is always visible to it, even if a concurrent Flush writes the
//!   block back and drops it from the cache while the inner read is in flight. A read the cache
//!   covers completely does not reach the inner device. Trimmed blocks read as zeroes.
//! - A Flush writes the whole cache back to the inner device (contiguous blocks coalesced into one
//!   command up to the inner transfer limit; zeroed runs as WriteZeroes, trimmed runs as Trim),
//!   then flushes the inner device if it supports Flush, and only then completes. Write-back runs
//!   synchronously inside the poll that executes the Flush, through that queue pair's inner queue
//!   pair; inner completions of its other commands are kept for later. Flushes of the device are
//!   serialised: two concurrent write-backs could otherwise land an older snapshot of a block
//!   after a newer one. A block leaves the cache only if no write replaced it meanwhile. If the
//!   inner device fails a write-back command, the Flush completes with that status and every
//!   block stays cached.
//! - With the cache on, the device advertises Flush even if the inner one lacks it, and reports
//!   `volatile_write_cache = true`.
//!
//! With `cache=off` every command goes straight to the inner device; nothing is volatile here
//! (the inner device may still have its own cache, and its `volatile_write_cache` is reported).
//!
//! # Power cuts ([`FaultControl::power_cut`])
//!
//! 1. Waits for a Flush write-back in progress, then bumps the device's power generation.
//! 2. Decides the fate of every unflushed write — every write some of whose blocks are still
//!    cached — from the seed and the write's sequence number, with one draw `u` in [0, 1):
//!    `u < survive` persists it whole; otherwise, if it was issued with ≥ 2 blocks and
//!    `u < survive + torn`, it is torn at block granularity: a random non-empty strict subset of
//!    its blocks (as issued) persists; otherwise it is lost. If `survive + torn > 1`, `torn`
//!    effectively becomes `1 - survive`. A write of more than 4096 blocks (only WriteZeroes or
//!    Trim can be that large) tears in 4096 equal segments instead of single blocks.
//!
//!    The cache also keeps the unflushed versions a newer write replaced (up to 65,536 blocks of
//!    them; a Flush forgets those its write-back made stale), since a drive may have written an
//!    older version to the media before the newer one arrived. Each version's blocks persist as
//!    its write's fate says, and a block ends as the newest version that persisted: the newest
//!    write if it did, else an older unflushed version that did, else what the inner device
//!    holds (the last flushed version).
//! 3. Writes the persisting blocks to the inner device through a queue pair created on the
//!    calling thread, flushes it, and clears the cache. While this runs, every command that needs
//!    the cache waits, so queue pairs created after the cut see exactly the durable state.
//!
//! Queue pairs created before the cut are dead. Every command queued on them and not yet handed
//! to the device, every command in flight on the inner device, and every command submitted later
//! completes with [`Status::ABORTED_POWER_LOSS`], buffers handed back; `poll` does not fail for
//! this. An aborted command that was already in flight on the inner device (only possible with
//! `cache=off`, or a read) may or may not have taken effect, as with real power loss; one that was
//! still queued never did. Completions posted before the cut keep their status (a cached write
//! that completed and was then lost still reported success, as a volatile cache does). A command
//! another thread is executing at the instant of the cut counts as in flight. With `cache=off` a
//! power cut only kills the old queue pairs.
//!
//! Stacked injectors compose: cutting an inner `fault:` device kills the inner queue pairs the
//! outer device's queue pairs use, so their commands that reach the inner device complete with
//! `ABORTED_POWER_LOSS`; the outer cache is untouched. Cutting the outer device writes its
//! persisting blocks into the inner device and flushes it.
//!
//! # Silent faults
//!
//! Decided per command, in both cache modes. `drop_writes` applies to Write, WriteZeroes and Trim:
//! the command succeeds and changes nothing (a read returns whatever was there before).
//! `corrupt_writes` applies to Write: the data is stored with one bit, chosen from the seed, of
//! the written range flipped. With the cache off the bit is flipped in the caller's buffer while
//! the inner device holds it and flipped back before the buffer is returned, so the caller never
//! sees its own data change. A dropped write is never also corrupted.
//!
//! # Injected errors
//!
//! An armed [`EioRule`] makes a matching command complete with
//! [`Status::UNRECOVERED_READ_ERROR`] (Read) or [`Status::WRITE_FAULT`] (Write, WriteZeroes,
//! Trim, Flush) without touching data or the cache. `FaultOps::Write` matches all three
//! modifying commands. Nth/Every count the commands a rule matches, device-wide, in the order the
//! device executes them (a command executes at the poll that rings its doorbell), starting when
//! the rule is armed. An LBA rule matches commands whose range overlaps it; a Flush has no range
//! and never matches one. Commands the queue pair rejects (out of range, misaligned) never reach
//! this backend and are not counted; neither are commands aborted by a power cut.
//!
//! # Determinism
//!
//! Each executed command takes the next value of a device-wide sequence number. Every random
//! choice is a splitmix64 hash of the seed, a purpose, and that sequence number (plus a block
//! index for torn writes), so a single-threaded command sequence behaves identically every run
//! with the same seed. With several threads, the interleaving decides the sequence numbers.
//!
//! # Layout
//!
//! `options` is [`FaultConfig`] and its URI syntax, `rules` the injected errors, `random` the
//! seeded decisions, `cache` the volatile write cache, `writeback` the commands a Flush or a cut
//! sends to the inner device, `power_cut` what a cut keeps, `namespace` the state a device shares
//! with its queue pairs, `queue_pair` the command path, and `control` the handle tests hold.
//!
//! [`Status::ABORTED_POWER_LOSS`]: crate::Status::ABORTED_POWER_LOSS
//! [`Status::UNRECOVERED_READ_ERROR`]: crate::Status::UNRECOVERED_READ_ERROR
//! [`Status::WRITE_FAULT`]: crate::Status::WRITE_FAULT

mod cache;
mod control;
mod namespace;
mod options;
mod power_cut;
mod queue_pair;
mod random;
mod rules;
#[cfg(test)]
mod tests;
mod writeback;

use std::sync::Arc;

use self::namespace::FaultNamespace;
use self::options::split_options;
use crate::device::{Device, Namespace};
use crate::error::NvmeError;

pub use self::control::{FaultControl, FaultStats, PowerCutReport};
pub use self::options::FaultConfig;
pub use self::rules::{EioRule, EioTrigger, FaultOps};

impl Device {
    /// Wraps `inner` in a fault injector configured programmatically. Probabilities are clamped
    /// to 0..=1. The device's URI renders the configuration as `fault:` options where the URI
    /// grammar can express it (rules with different `ops` cannot be, and are left out).
    pub fn with_faults(inner: Device, config: FaultConfig) -> Device {
        let uri = format!("fault:{}+{}", config.to_options(), inner.info().uri);
        Device::from_namespace(Arc::new(FaultNamespace::new(uri, inner, &config)))
    }
}

pub(crate) fn open(uri: &str, rest: &str) -> Result<Arc<dyn Namespace>, NvmeError> {
    let (options, inner_uri) = split_options(uri, rest)?;
    let config = FaultConfig::parse(uri, options)?;
    let inner = Device::open(inner_uri)?;
    Ok(Arc::new(FaultNamespace::new(
        uri.to_string(),
        inner,
        &config,
    )))
}
