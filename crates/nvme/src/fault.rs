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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::command::{Completion, IoCmd, Opcode, Status};
use super::device::{
    Device, Namespace, NamespaceInfo, PollResult, QueueFull, QueuePair, QueuePairBackend,
    QueuePairStats, SupportedOps,
};
use super::dma::{DmaBuf, DmaPool};
use super::error::NvmeError;
use super::uri::SCHEMES;
use bluepoll_base::sync::lock;

/// How a `fault:` device misbehaves. [`Default`] is a volatile write cache and no faults.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Whether completed writes stay volatile until a Flush (`cache=on`).
    pub volatile_cache: bool,
    /// At a power cut, the probability an unflushed write persists whole.
    pub survive: f64,
    /// At a power cut, the probability an unflushed multi-block write persists in part.
    pub torn: f64,
    /// Probability a write reports success but is discarded.
    pub drop_writes: f64,
    /// Probability a write is stored with one bit flipped.
    pub corrupt_writes: f64,
    /// Error rules armed from the start.
    pub eio: Vec<EioRule>,
}

impl Default for FaultConfig {
    fn default() -> FaultConfig {
        FaultConfig {
            seed: 0,
            volatile_cache: true,
            survive: 0.0,
            torn: 0.0,
            drop_writes: 0.0,
            corrupt_writes: 0.0,
            eio: Vec::new(),
        }
    }
}

/// Which commands an [`EioRule`] matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOps {
    Read,
    /// Write, WriteZeroes and Trim.
    Write,
    Flush,
    Any,
}

impl FaultOps {
    pub fn matches(self, op: Opcode) -> bool {
        match self {
            FaultOps::Read => op == Opcode::Read,
            FaultOps::Write => op.modifies(),
            FaultOps::Flush => op == Opcode::Flush,
            FaultOps::Any => true,
        }
    }

    fn parse(text: &str) -> Option<FaultOps> {
        match text {
            "read" => Some(FaultOps::Read),
            "write" => Some(FaultOps::Write),
            "flush" => Some(FaultOps::Flush),
            "any" => Some(FaultOps::Any),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            FaultOps::Read => "read",
            FaultOps::Write => "write",
            FaultOps::Flush => "flush",
            FaultOps::Any => "any",
        }
    }
}

/// When an [`EioRule`] fires, among the commands its `ops` match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EioTrigger {
    /// The Nth matching command (1-based), once. `Nth(0)` never fires.
    Nth(u64),
    /// Matching commands number N, 2N, 3N, … `Every(0)` never fires.
    Every(u64),
    /// Matching commands whose LBA range overlaps `first..=last`.
    Lbas { first: u64, last: u64 },
}

/// Makes matching commands fail with a media error (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EioRule {
    pub ops: FaultOps,
    pub trigger: EioTrigger,
}

/// Counters of a `fault:` device since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Commands this backend executed (not counting ones aborted by a power cut).
    pub commands: u64,
    /// Commands failed by an [`EioRule`].
    pub injected_errors: u64,
    pub dropped_writes: u64,
    pub corrupted_writes: u64,
    /// Flush commands that completed successfully.
    pub flushes: u64,
    pub power_cuts: u64,
    /// Writes with at least one block still in the volatile cache.
    pub unflushed_writes: u64,
    /// Blocks in the volatile cache.
    pub unflushed_blocks: u64,
}

/// What one power cut did to the unflushed writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerCutReport {
    pub writes_lost: u64,
    pub writes_torn: u64,
    pub writes_persisted: u64,
    /// Blocks written to the inner device by the cut.
    pub blocks_persisted: u64,
    /// Cached blocks that reverted to their durable contents.
    pub blocks_lost: u64,
}

/// The handle crash tests use to cut power and arm faults; shared by every clone of the device.
#[derive(Clone)]
pub struct FaultControl {
    shared: Arc<FaultShared>,
}

impl fmt::Debug for FaultControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultControl")
            .field("inner", &self.shared.inner.info().uri)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FaultControl {
    /// Simulates power loss; see the module documentation for exactly what survives.
    ///
    /// Fails only if the inner device cannot take the persisting blocks; power is cut (old queue
    /// pairs dead, cache empty) either way.
    pub fn power_cut(&self) -> Result<PowerCutReport, NvmeError> {
        self.shared.power_cut()
    }

    /// Arms an error rule; its counter starts at zero now.
    pub fn arm(&self, rule: EioRule) {
        lock(&self.shared.rules).push(ArmedRule { rule, matched: 0 });
    }

    pub fn disarm_all(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Clamped to 0..=1 (NaN counts as 0).
    pub fn set_drop_writes(&self, probability: f64) {
        self.shared.odds.drop_writes.set(probability);
    }

    /// Clamped to 0..=1 (NaN counts as 0).
    pub fn set_corrupt_writes(&self, probability: f64) {
        self.shared.odds.corrupt_writes.set(probability);
    }

    /// Odds for the next power cuts, clamped to 0..=1 (NaN counts as 0).
    pub fn set_power_cut_odds(&self, survive: f64, torn: f64) {
        self.shared.odds.survive.set(survive);
        self.shared.odds.torn.set(torn);
    }

    pub fn stats(&self) -> FaultStats {
        let counters = &self.shared.counters;
        let (unflushed_writes, unflushed_blocks) = {
            let cache = lock(&self.shared.cache);
            (cache.writes.len() as u64, cache.blocks)
        };
        FaultStats {
            commands: counters.commands.load(Ordering::Relaxed),
            injected_errors: counters.injected_errors.load(Ordering::Relaxed),
            dropped_writes: counters.dropped_writes.load(Ordering::Relaxed),
            corrupted_writes: counters.corrupted_writes.load(Ordering::Relaxed),
            flushes: counters.flushes.load(Ordering::Relaxed),
            power_cuts: counters.power_cuts.load(Ordering::Relaxed),
            unflushed_writes,
            unflushed_blocks,
        }
    }
}

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

fn split_options<'a>(uri: &str, rest: &'a str) -> Result<(&'a str, &'a str), NvmeError> {
    // Options are key=value and keys hold no ':', so a leading `scheme:` can only be the inner
    // URI — which lets it contain '+' (a nested fault:, a path) without options in front.
    let starts_with_scheme = rest
        .split_once(':')
        .is_some_and(|(scheme, _)| SCHEMES.split(", ").any(|known| known == scheme));
    if starts_with_scheme {
        return Ok(("", rest));
    }
    match rest.split_once('+') {
        Some((_, "")) => Err(NvmeError::uri(uri, "nothing after '+': missing inner URI")),
        Some(split) => Ok(split),
        None => Err(NvmeError::uri(
            uri,
            format!(
                "expected fault:[OPTIONS+]INNER_URI, e.g. fault:seed=1,torn=0.5+mem:1G \
                 (inner schemes: {SCHEMES})"
            ),
        )),
    }
}

impl FaultConfig {
    fn parse(uri: &str, options: &str) -> Result<FaultConfig, NvmeError> {
        let mut config = FaultConfig::default();
        if options.is_empty() {
            return Ok(config);
        }
        let bad = |key: &str, why: String| NvmeError::uri(uri, format!("option '{key}': {why}"));
        let mut seen: Vec<&str> = Vec::new();
        let mut eio_ops = None;
        let mut triggers = Vec::new();
        for item in options.split(',') {
            let Some((key, value)) = item.split_once('=') else {
                return Err(NvmeError::uri(
                    uri,
                    format!("option '{item}' is not key=value"),
                ));
            };
            if seen.contains(&key) {
                return Err(bad(key, "given twice".into()));
            }
            seen.push(key);
            match key {
                "seed" => config.seed = parse_u64(value).map_err(|e| bad(key, e))?,
                "cache" => {
                    config.volatile_cache = match value {
                        "on" | "1" | "true" | "yes" => true,
                        "off" | "0" | "false" | "no" => false,
                        _ => return Err(bad(key, format!("'{value}' is not on/off"))),
                    }
                }
                "survive" => config.survive = parse_probability(value).map_err(|e| bad(key, e))?,
                "torn" => config.torn = parse_probability(value).map_err(|e| bad(key, e))?,
                "drop_writes" => {
                    config.drop_writes = parse_probability(value).map_err(|e| bad(key, e))?
                }
                "corrupt_writes" => {
                    config.corrupt_writes = parse_probability(value).map_err(|e| bad(key, e))?
                }
                "eio_nth" => triggers.push(EioTrigger::Nth(
                    parse_count(value).map_err(|e| bad(key, e))?,
                )),
                "eio_every" => triggers.push(EioTrigger::Every(
                    parse_count(value).map_err(|e| bad(key, e))?,
                )),
                "eio_lba" => {
                    let (first, last) = value
                        .split_once('-')
                        .ok_or_else(|| bad(key, format!("'{value}' is not START-END")))?;
                    let first = parse_u64(first).map_err(|e| bad(key, e))?;
                    let last = parse_u64(last).map_err(|e| bad(key, e))?;
                    if first > last {
                        return Err(bad(key, format!("start {first} is after end {last}")));
                    }
                    triggers.push(EioTrigger::Lbas { first, last });
                }
                "eio_on" => {
                    eio_ops = Some(FaultOps::parse(value).ok_or_else(|| {
                        bad(
                            key,
                            format!("'{value}' is not one of read, write, flush, any"),
                        )
                    })?)
                }
                _ => {
                    return Err(NvmeError::uri(
                        uri,
                        format!(
                            "unknown option '{key}' (options: seed, cache, survive, torn, \
                             drop_writes, corrupt_writes, eio_nth, eio_every, eio_lba, eio_on)"
                        ),
                    ));
                }
            }
        }
        if eio_ops.is_some() && triggers.is_empty() {
            return Err(bad(
                "eio_on",
                "needs eio_nth, eio_every or eio_lba to say which commands fail".into(),
            ));
        }
        let ops = eio_ops.unwrap_or(FaultOps::Any);
        config.eio = triggers
            .into_iter()
            .map(|trigger| EioRule { ops, trigger })
            .collect();
        Ok(config)
    }

    /// The options part of a URI that opens a device configured like this.
    fn to_options(&self) -> String {
        let mut options = vec![
            format!("seed={}", self.seed),
            format!("cache={}", if self.volatile_cache { "on" } else { "off" }),
        ];
        for (key, value) in [
            ("survive", self.survive),
            ("torn", self.torn),
            ("drop_writes", self.drop_writes),
            ("corrupt_writes", self.corrupt_writes),
        ] {
            let value = clamp_probability(value);
            if value > 0.0 {
                options.push(format!("{key}={value}"));
            }
        }
        // Rules that can never fire have no URI spelling; leaving them out changes nothing.
        let rules: Vec<&EioRule> = self
            .eio
            .iter()
            .filter(|rule| match rule.trigger {
                EioTrigger::Nth(n) | EioTrigger::Every(n) => n > 0,
                EioTrigger::Lbas { first, last } => first <= last,
            })
            .collect();
        if let Some(first) = rules.first()
            && rules.iter().all(|rule| rule.ops == first.ops)
        {
            for rule in &rules {
                options.push(match rule.trigger {
                    EioTrigger::Nth(n) => format!("eio_nth={n}"),
                    EioTrigger::Every(n) => format!("eio_every={n}"),
                    EioTrigger::Lbas { first, last } => format!("eio_lba={first}-{last}"),
                });
            }
            options.push(format!("eio_on={}", first.ops.name()));
        }
        options.join(",")
    }
}

fn parse_u64(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("'{text}' is not a whole number"))
}

fn parse_count(text: &str) -> Result<u64, String> {
    match parse_u64(text)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

fn parse_probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        Ok(_) => Err(format!("{text} is not a probability between 0 and 1")),
        Err(_) => Err(format!("'{text}' is not a number")),
    }
}

fn clamp_probability(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

// Randomness: splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
// 2014) over seed, purpose and sequence number. Each purpose has its own salt so the decisions
// about one command are independent of each other.
const SALT_DROP: u64 = 0x6472_6f70; // "drop"
const SALT_CORRUPT: u64 = 0x636f_7272; // "corr"
const SALT_BIT: u64 = 0x0062_6974; // "bit"
const SALT_FATE: u64 = 0x6661_7465; // "fate"
const SALT_TEAR_KEEP: u64 = 0x6b65_6570; // "keep"
const SALT_TEAR_LOSE: u64 = 0x6c6f_7365; // "lose"
const SALT_TEAR_BLOCK: u64 = 0x7465_6172; // "tear"

/// One SplitMix64 step: the generator's increment, then its finaliser.
fn splitmix64(x: u64) -> u64 {
    bluepoll_base::rand::splitmix(x.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

fn draw(seed: u64, salt: u64, seq: u64, index: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed ^ salt) ^ seq) ^ index)
}

/// Uniform in [0, 1), so probability 1 always fires and 0 never does.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// An f64 that threads can change while others read it.
struct Probability(AtomicU64);

impl Probability {
    fn new(p: f64) -> Probability {
        Probability(AtomicU64::new(clamp_probability(p).to_bits()))
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, p: f64) {
        self.0
            .store(clamp_probability(p).to_bits(), Ordering::Relaxed);
    }
}

struct Odds {
    survive: Probability,
    torn: Probability,
    drop_writes: Probability,
    corrupt_writes: Probability,
}

#[derive(Default)]
struct Counters {
    commands: AtomicU64,
    injected_errors: AtomicU64,
    dropped_writes: AtomicU64,
    corrupted_writes: AtomicU64,
    flushes: AtomicU64,
    power_cuts: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct ArmedRule {
    rule: EioRule,
    /// Commands the rule's `ops` matched since it was armed.
    matched: u64,
}

/// What a cached block reads as.
#[derive(Clone)]
enum Content {
    /// Block `i` of the extent is `bytes[(first + i) * block_size ..][.. block_size]`; slicing an
    /// extent shares the bytes instead of copying them.
    Data {
        bytes: Arc<[u8]>,
        first: u64,
    },
    Zeroes,
    Trimmed,
}

/// A run of cached blocks written by one command.
#[derive(Clone)]
struct Extent {
    blocks: u64,
    write_seq: u64,
    content: Content,
}

impl Extent {
    fn slice(&self, skip: u64, blocks: u64) -> Extent {
        let content = match &self.content {
            Content::Data { bytes, first } => Content::Data {
                bytes: Arc::clone(bytes),
                first: first + skip,
            },
            other => other.clone(),
        };
        Extent {
            blocks,
            write_seq: self.write_seq,
            content,
        }
    }
}

/// A write that still owns blocks in the cache, as it was issued.
struct UnflushedWrite {
    lba: u64,
    blocks: u64,
    cached_blocks: u64,
}

/// The volatile write cache: non-overlapping extents keyed by first LBA, so a huge WriteZeroes or
/// Trim costs one entry rather than one per block.
#[derive(Default)]
struct Cache {
    extents: BTreeMap<u64, Extent>,
    /// By write sequence number.
    writes: BTreeMap<u64, UnflushedWrite>,
    blocks: u64,
    /// Unflushed versions a newer write replaced, oldest first, each with the write it came
    /// from (as issued: its fate at a power cut is that write's). A drive may have written an
    /// older version back before the newer one arrived, so a cut can leave it.
    older: VecDeque<(u64, Extent, UnflushedWrite)>,
    older_blocks: u64,
}

/// Blocks of replaced unflushed versions the cache keeps at most; past this the oldest are
/// forgotten (a cut then reverts their blocks to the last flushed version instead).
const MAX_OLDER_BLOCKS: u64 = 1 << 16;

impl Cache {
    /// The cached parts of `first..end`, clipped to it, in LBA order.
    fn overlapping(&self, first: u64, end: u64) -> Vec<(u64, Extent)> {
        let mut found = Vec::new();
        if first >= end {
            return found;
        }
        if let Some((&start, extent)) = self.extents.range(..first).next_back() {
            let extent_end = start + extent.blocks;
            if extent_end > first {
                found.push((
                    first,
                    extent.slice(first - start, extent_end.min(end) - first),
                ));
            }
        }
        for (&start, extent) in self.extents.range(first..end) {
            let clipped_end = (start + extent.blocks).min(end);
            found.push((start, extent.slice(0, clipped_end - start)));
        }
        found
    }

    /// Removes `first..end` from the cache, keeping the parts of extents outside it.
    fn punch(&mut self, first: u64, end: u64) {
        if first >= end {
            return;
        }
        let mut starts = Vec::new();
        if let Some((&start, extent)) = self.extents.range(..first).next_back()
            && start + extent.blocks > first
        {
            starts.push(start);
        }
        starts.extend(self.extents.range(first..end).map(|(&start, _)| start));
        for start in starts {
            let Some(extent) = self.extents.remove(&start) else {
                continue;
            };
            let extent_end = start + extent.blocks;
            if start < first {
                self.extents.insert(start, extent.slice(0, first - start));
            }
            if extent_end > end {
                self.extents
                    .insert(end, extent.slice(end - start, extent_end - end));
            }
            let removed = extent_end.min(end) - start.max(first);
            self.forget(extent.write_seq, removed);
        }
    }

    fn forget(&mut self, write_seq: u64, blocks: u64) {
        self.blocks = self.blocks.saturating_sub(blocks);
        if let Some(write) = self.writes.get_mut(&write_seq) {
            write.cached_blocks = write.cached_blocks.saturating_sub(blocks);
            if write.cached_blocks == 0 {
                self.writes.remove(&write_seq);
            }
        }
    }

    fn insert(&mut self, lba: u64, extent: Extent) {
        // What the new write replaces stays as an older unflushed version.
        for (start, replaced) in self.overlapping(lba, lba + extent.blocks) {
            let Some(write) = self.writes.get(&replaced.write_seq) else {
                continue;
            };
            let issued = UnflushedWrite {
                lba: write.lba,
                blocks: write.blocks,
                cached_blocks: 0,
            };
            self.older_blocks += replaced.blocks;
            self.older.push_back((start, replaced, issued));
        }
        while self.older_blocks > MAX_OLDER_BLOCKS {
            let Some((_, dropped, _)) = self.older.pop_front() else {
                break;
            };
            self.older_blocks -= dropped.blocks;
        }
        self.punch(lba, lba + extent.blocks);
        self.blocks += extent.blocks;
        self.writes.insert(
            extent.write_seq,
            UnflushedWrite {
                lba,
                blocks: extent.blocks,
                cached_blocks: extent.blocks,
            },
        );
        self.extents.insert(lba, extent);
    }

    /// `insert` without keeping what it replaces (building the media's state at a cut).
    fn insert_plain(&mut self, lba: u64, extent: Extent) {
        self.punch(lba, lba + extent.blocks);
        self.blocks += extent.blocks;
        self.extents.insert(lba, extent);
    }

    /// Drops the blocks of a written-back extent that no later write replaced.
    fn retire(&mut self, lba: u64, written_back: &Extent) {
        for (start, current) in self.overlapping(lba, lba + written_back.blocks) {
            if current.write_seq == written_back.write_seq {
                self.punch(start, start + current.blocks);
            }
        }
    }

    fn snapshot(&self) -> Vec<(u64, Extent)> {
        self.extents
            .iter()
            .map(|(&lba, extent)| (lba, extent.clone()))
            .collect()
    }

    /// After a write-back of a snapshot taken when `older_then` older versions were kept: those
    /// are behind a durable newer version now, so no cut can bring them back.
    fn forget_older(&mut self, older_then: usize) {
        for (_, extent, _) in self.older.drain(..older_then.min(self.older.len())) {
            self.older_blocks -= extent.blocks;
        }
    }
}

/// Copies cached blocks over a read's data window.
fn apply_overlay(
    window: &mut [u8],
    read_lba: u64,
    block_size: usize,
    overlay: &[(u64, Extent)],
) -> Result<(), Status> {
    for (lba, extent) in overlay {
        let at = (lba - read_lba) as usize * block_size;
        let len = extent.blocks as usize * block_size;
        let dst = window.get_mut(at..at + len).ok_or(Status::INTERNAL_ERROR)?;
        match &extent.content {
            Content::Data { bytes, first } => {
                let start = *first as usize * block_size;
                let src = bytes
                    .get(start..start + len)
                    .ok_or(Status::INTERNAL_ERROR)?;
                dst.copy_from_slice(src);
            }
            Content::Zeroes | Content::Trimmed => dst.fill(0),
        }
    }
    Ok(())
}

/// A command's data window in its buffer; `None` only if validation was bypassed.
fn data_window(cmd: &mut IoCmd, block_size: usize) -> Option<&mut [u8]> {
    let start = cmd.buf_offset as usize;
    let len = cmd.blocks as usize * block_size;
    cmd.buf.as_mut()?.get_mut(start..start + len)
}

/// One piece of a coalesced write-back Write.
enum Piece {
    Bytes {
        data: Arc<[u8]>,
        start: usize,
        len: usize,
    },
    Zeroes(usize),
}

/// A command the device itself sends to the inner device, at a Flush or a power cut.
enum InnerOp {
    Write {
        lba: u64,
        blocks: u32,
        pieces: Vec<Piece>,
    },
    Zeroes {
        lba: u64,
        blocks: u32,
    },
    Trim {
        lba: u64,
        blocks: u32,
    },
    Flush,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RunKind {
    Data,
    Zeroes,
    Trim,
}

/// A write-back command the inner device failed (or that could not be built).
#[derive(Clone, Copy, Debug)]
struct FailedOp {
    opcode: Opcode,
    lba: u64,
    blocks: u32,
    status: Status,
}

impl FailedOp {
    fn into_error(self) -> NvmeError {
        NvmeError::Command {
            op: self.opcode,
            lba: self.lba,
            blocks: self.blocks,
            status: self.status,
        }
    }
}

impl InnerOp {
    fn kind_and_end(&self) -> Option<(RunKind, u64, u32)> {
        match self {
            InnerOp::Write { lba, blocks, .. } => {
                Some((RunKind::Data, lba + *blocks as u64, *blocks))
            }
            InnerOp::Zeroes { lba, blocks } => {
                Some((RunKind::Zeroes, lba + *blocks as u64, *blocks))
            }
            InnerOp::Trim { lba, blocks } => Some((RunKind::Trim, lba + *blocks as u64, *blocks)),
            InnerOp::Flush => None,
        }
    }

    fn describe(&self, status: Status) -> FailedOp {
        let (opcode, lba, blocks) = match self {
            InnerOp::Write { lba, blocks, .. } => (Opcode::Write, *lba, *blocks),
            InnerOp::Zeroes { lba, blocks } => (Opcode::WriteZeroes, *lba, *blocks),
            InnerOp::Trim { lba, blocks } => (Opcode::Trim, *lba, *blocks),
            InnerOp::Flush => (Opcode::Flush, 0, 0),
        };
        FailedOp {
            opcode,
            lba,
            blocks,
            status,
        }
    }

    fn into_cmd(self, tag: u64, block_size: usize) -> Result<IoCmd, Status> {
        Ok(match self {
            InnerOp::Write {
                lba,
                blocks,
                pieces,
            } => {
                // A fresh mapping per command keeps write-back memory bounded by the commands in
                // flight; this is a test tool, so the mmap per Flush run is affordable.
                let mut buf = DmaBuf::new(blocks as usize * block_size)
                    .map_err(|_| Status::INTERNAL_ERROR)?;
                let mut at = 0;
                for piece in pieces {
                    match piece {
                        Piece::Bytes { data, start, len } => {
                            let src = data.get(start..start + len);
                            let dst = buf.get_mut(at..at + len);
                            let (Some(src), Some(dst)) = (src, dst) else {
                                return Err(Status::INTERNAL_ERROR);
                            };
                            dst.copy_from_slice(src);
                            at += len;
                        }
                        Piece::Zeroes(len) => {
                            let dst = buf.get_mut(at..at + len).ok_or(Status::INTERNAL_ERROR)?;
                            dst.fill(0);
                            at += len;
                        }
                    }
                }
                IoCmd::write(lba, blocks, buf, tag)
            }
            InnerOp::Zeroes { lba, blocks } => IoCmd::write_zeroes(lba, blocks, tag),
            InnerOp::Trim { lba, blocks } => IoCmd::trim(lba, blocks, tag),
            InnerOp::Flush => IoCmd::flush(tag),
        })
    }
}

/// What the inner device can take, for turning cached extents into commands.
#[derive(Clone, Copy)]
struct RunLimits {
    block_size: usize,
    max_data_blocks: u32,
    ops: SupportedOps,
}

impl RunLimits {
    fn of(info: &NamespaceInfo) -> RunLimits {
        RunLimits {
            block_size: info.block_size as usize,
            max_data_blocks: (info.max_transfer_bytes / info.block_size).max(1),
            ops: info.ops,
        }
    }

    fn kind_for(&self, content: &Content) -> RunKind {
        match content {
            Content::Data { .. } => RunKind::Data,
            Content::Trimmed if self.ops.trim => RunKind::Trim,
            Content::Zeroes | Content::Trimmed if self.ops.write_zeroes => RunKind::Zeroes,
            Content::Zeroes | Content::Trimmed => RunKind::Data,
        }
    }

    fn max_blocks(&self, kind: RunKind) -> u32 {
        match kind {
            RunKind::Data => self.max_data_blocks,
            RunKind::Zeroes | RunKind::Trim => u32::MAX,
        }
    }
}

/// Coalesces LBA-sorted extents into as few inner commands as the inner limits allow.
fn build_runs(extents: &[(u64, Extent)], limits: RunLimits) -> Vec<InnerOp> {
    let bs = limits.block_size;
    let mut ops: Vec<InnerOp> = Vec::new();
    for (lba, extent) in extents {
        let kind = limits.kind_for(&extent.content);
        let cap = limits.max_blocks(kind);
        let mut done = 0u64;
        while done < extent.blocks {
            let at = lba + done;
            let room = match ops.last().and_then(InnerOp::kind_and_end) {
                Some((last_kind, end, blocks)) if last_kind == kind && end == at => cap - blocks,
                _ => 0,
            };
            if room == 0 {
                ops.push(match kind {
                    RunKind::Data => InnerOp::Write {
                        lba: at,
                        blocks: 0,
                        pieces: Vec::new(),
                    },
                    RunKind::Zeroes => InnerOp::Zeroes { lba: at, blocks: 0 },
                    RunKind::Trim => InnerOp::Trim { lba: at, blocks: 0 },
                });
            }
            let room = if room == 0 { cap } else { room };
            let take = (room as u64).min(extent.blocks - done) as u32;
            match ops.last_mut() {
                Some(InnerOp::Write { blocks, pieces, .. }) => {
                    *blocks += take;
                    pieces.push(match &extent.content {
                        Content::Data { bytes, first } => Piece::Bytes {
                            data: Arc::clone(bytes),
                            start: (first + done) as usize * bs,
                            len: take as usize * bs,
                        },
                        Content::Zeroes | Content::Trimmed => Piece::Zeroes(take as usize * bs),
                    });
                }
                Some(InnerOp::Zeroes { blocks, .. } | InnerOp::Trim { blocks, .. }) => {
                    *blocks += take;
                }
                Some(InnerOp::Flush) | None => {}
            }
            done += take as u64;
        }
    }
    ops
}

/// Tags of write-back commands on an inner queue pair; forwarded commands use tags below it.
const WRITEBACK_TAG: u64 = 1 << 63;
/// Write-back commands in flight at once: bounds the memory a Flush maps.
const MAX_WRITEBACK_IN_FLIGHT: usize = 8;
/// Extra inner queue depth so a Flush has room beside the reads a queue pair keeps in flight.
const WRITEBACK_SLOTS: u32 = MAX_WRITEBACK_IN_FLIGHT as u32;

/// Runs `ops` on `inner` to completion. Completions of other commands on the same queue pair go
/// to `stray`. After a failure nothing more is submitted; the first failure is returned once
/// everything submitted has completed. `Err` only when the inner queue pair itself broke.
fn run_on_inner(
    inner: &mut QueuePair,
    ops: Vec<InnerOp>,
    block_size: usize,
    stray: &mut Vec<Completion>,
) -> Result<Option<FailedOp>, NvmeError> {
    let mut pending = ops.into_iter();
    let mut in_flight: HashMap<u64, FailedOp> = HashMap::new();
    let mut failure: Option<FailedOp> = None;
    let mut next_tag = WRITEBACK_TAG;
    let mut reaped = Vec::new();
    loop {
        while failure.is_none()
            && in_flight.len() < MAX_WRITEBACK_IN_FLIGHT
            && inner.outstanding() < inner.depth()
        {
            let Some(op) = pending.next() else {
                break;
            };
            let description = op.describe(Status::SUCCESS);
            let tag = next_tag;
            next_tag += 1;
            match op.into_cmd(tag, block_size) {
                Ok(cmd) => match inner.submit(cmd) {
                    Ok(()) => {
                        in_flight.insert(tag, description);
                    }
                    Err(QueueFull(_)) => {
                        failure = Some(FailedOp {
                            status: Status::INTERNAL_ERROR,
                            ..description
                        })
                    }
                },
                Err(status) => {
                    failure = Some(FailedOp {
                        status,
                        ..description
                    })
                }
            }
        }
        if in_flight.is_empty() && (failure.is_some() || pending.len() == 0) {
            return Ok(failure);
        }
        inner.poll_waiting(usize::MAX, &mut reaped)?;
        for completion in reaped.drain(..) {
            match in_flight.remove(&completion.tag) {
                Some(op) => {
                    if !completion.status.is_success() && failure.is_none() {
                        failure = Some(FailedOp {
                            status: completion.status,
                            ..op
                        });
                    }
                }
                None => stray.push(completion),
            }
        }
    }
}

/// Writes `ops` back and then flushes the inner device if it can be flushed.
fn write_back(
    inner: &mut QueuePair,
    ops: Vec<InnerOp>,
    limits: RunLimits,
    stray: &mut Vec<Completion>,
) -> Result<Option<FailedOp>, NvmeError> {
    if let Some(failed) = run_on_inner(inner, ops, limits.block_size, stray)? {
        return Ok(Some(failed));
    }
    if limits.ops.flush {
        // Only after every write completed: NVMe Flush covers completed writes only.
        return run_on_inner(inner, vec![InnerOp::Flush], limits.block_size, stray);
    }
    Ok(None)
}

/// A write tears into at most this many independently decided pieces: single blocks for every
/// write of up to this many blocks (any data write within a 4 MiB transfer limit), equal
/// segments beyond, so tearing a cached multi-GiB Trim costs thousands of draws, not billions.
const MAX_TEAR_SEGMENTS: u64 = 4096;

/// A power-cut decision about one unflushed write.
#[derive(Clone, Copy)]
enum Fate {
    Persist,
    /// The write's blocks fall into `segments` equal segments; segment `kept` persists and
    /// segment `lost` does not (so the subset is non-empty and strict), the rest are coin flips.
    Tear {
        first_lba: u64,
        blocks: u64,
        segments: u64,
        kept: u64,
        lost: u64,
    },
    Lose,
}

impl Fate {
    fn segment_of(self, lba: u64) -> u64 {
        match self {
            Fate::Tear {
                first_lba,
                blocks,
                segments,
                ..
            } => ((lba - first_lba) as u128 * segments as u128 / blocks as u128) as u64,
            Fate::Persist | Fate::Lose => 0,
        }
    }

    /// The first LBA after `lba` in a different segment.
    fn segment_end(self, lba: u64) -> u64 {
        match self {
            Fate::Tear {
                first_lba,
                blocks,
                segments,
                ..
            } => {
                let next = self.segment_of(lba) as u128 + 1;
                first_lba + (next * blocks as u128).div_ceil(segments as u128) as u64
            }
            Fate::Persist | Fate::Lose => u64::MAX,
        }
    }
}

/// Everything the namespace and its queue pairs share.
struct FaultShared {
    inner: Device,
    seed: u64,
    volatile_cache: bool,
    limits: RunLimits,
    odds: Odds,
    rules: Mutex<Vec<ArmedRule>>,
    counters: Counters,
    next_seq: AtomicU64,
    /// Bumped by each power cut; a queue pair made under an older value is dead.
    generation: AtomicU64,
    /// Held by a Flush write-back and by a power cut. Lock order: `writeback`, then `cache`.
    writeback: Mutex<()>,
    cache: Mutex<Cache>,
}

impl FaultShared {
    fn chance(&self, probability: &Probability, salt: u64, seq: u64) -> bool {
        let p = probability.get();
        p > 0.0 && unit(draw(self.seed, salt, seq, 0)) < p
    }

    /// Counts `cmd` against every armed rule and says how it fails, if a rule fires.
    fn injected_error(&self, cmd: &IoCmd) -> Option<Status> {
        let mut rules = lock(&self.rules);
        let mut fires = false;
        for armed in rules.iter_mut() {
            if !armed.rule.ops.matches(cmd.opcode) {
                continue;
            }
            armed.matched += 1;
            fires |= match armed.rule.trigger {
                EioTrigger::Nth(n) => armed.matched == n,
                EioTrigger::Every(n) => n != 0 && armed.matched % n == 0,
                EioTrigger::Lbas { first, last } => {
                    let cmd_last = cmd
                        .lba
                        .saturating_add((cmd.blocks as u64).saturating_sub(1));
                    cmd.opcode != Opcode::Flush && cmd.lba <= last && cmd_last >= first
                }
            };
        }
        fires.then_some(if cmd.opcode == Opcode::Read {
            Status::UNRECOVERED_READ_ERROR
        } else {
            Status::WRITE_FAULT
        })
    }

    fn fate(&self, write_seq: u64, write: &UnflushedWrite) -> Fate {
        let u = unit(draw(self.seed, SALT_FATE, write_seq, 0));
        let survive = self.odds.survive.get();
        if u < survive {
            return Fate::Persist;
        }
        if write.blocks >= 2 && u < survive + self.odds.torn.get() {
            let segments = write.blocks.min(MAX_TEAR_SEGMENTS);
            let kept = draw(self.seed, SALT_TEAR_KEEP, write_seq, 0) % segments;
            let mut lost = draw(self.seed, SALT_TEAR_LOSE, write_seq, 0) % (segments - 1);
            if lost >= kept {
                lost += 1;
            }
            return Fate::Tear {
                first_lba: write.lba,
                blocks: write.blocks,
                segments,
                kept,
                lost,
            };
        }
        Fate::Lose
    }

    fn segment_persists(&self, write_seq: u64, fate: Fate, segment: u64) -> bool {
        match fate {
            Fate::Persist => true,
            Fate::Lose => false,
            Fate::Tear { kept, lost, .. } => {
                if segment == kept {
                    true
                } else if segment == lost {
                    false
                } else {
                    draw(self.seed, SALT_TEAR_BLOCK, write_seq, segment) & 1 == 1
                }
            }
        }
    }

    /// The parts of a torn write's cached extent that persist, merged into runs.
    fn torn_parts(&self, lba: u64, extent: &Extent, fate: Fate, out: &mut Vec<(u64, Extent)>) {
        let end = lba + extent.blocks;
        let mut at = lba;
        let mut run_start: Option<u64> = None;
        while at < end {
            let next = fate.segment_end(at).min(end);
            let persists = self.segment_persists(extent.write_seq, fate, fate.segment_of(at));
            match (persists, run_start) {
                (true, None) => run_start = Some(at),
                (false, Some(start)) => {
                    out.push((start, extent.slice(start - lba, at - start)));
                    run_start = None;
                }
                _ => {}
            }
            at = next;
        }
        if let Some(start) = run_start {
            out.push((start, extent.slice(start - lba, end - start)));
        }
    }

    fn power_cut(&self) -> Result<PowerCutReport, NvmeError> {
        let _writeback = lock(&self.writeback);
        // Held until the persisting blocks are on the inner device, so every command that looks
        // at the cache — all of them with the cache on — waits for the durable state.
        let mut cache = lock(&self.cache);
        self.generation.fetch_add(1, Ordering::SeqCst);
        bump(&self.counters.power_cuts);
        let lost = std::mem::take(&mut *cache);

        let mut report = PowerCutReport::default();
        let mut fates = HashMap::with_capacity(lost.writes.len());
        let issued = lost
            .writes
            .iter()
            .map(|(&seq, write)| (seq, write))
            .chain(lost.older.iter().map(|(_, e, write)| (e.write_seq, write)));
        for (seq, write) in issued {
            if fates.contains_key(&seq) {
                continue;
            }
            let fate = self.fate(seq, write);
            match fate {
                Fate::Persist => report.writes_persisted += 1,
                Fate::Tear { .. } => report.writes_torn += 1,
                Fate::Lose => report.writes_lost += 1,
            }
            fates.insert(seq, fate);
        }
        // Every unflushed version, newest last: the media holds, per block, the newest version
        // whose write reached it (or the last flushed one if none did).
        let mut versions: Vec<(u64, &Extent)> = lost
            .older
            .iter()
            .map(|(lba, e, _)| (*lba, e))
            .chain(lost.extents.iter().map(|(&lba, e)| (lba, e)))
            .collect();
        versions.sort_by_key(|(_, e)| e.write_seq);
        let mut landed = Cache::default();
        for (lba, extent) in versions {
            let fate = fates.get(&extent.write_seq).copied().unwrap_or(Fate::Lose);
            let mut parts = Vec::new();
            match fate {
                Fate::Persist => parts.push((lba, extent.clone())),
                Fate::Lose => {}
                Fate::Tear { .. } => self.torn_parts(lba, extent, fate, &mut parts),
            }
            for (at, part) in parts {
                landed.insert_plain(at, part);
            }
        }
        let persisting = landed.snapshot();
        report.blocks_persisted = persisting.iter().map(|(_, e)| e.blocks).sum();
        report.blocks_lost = lost.blocks.saturating_sub(report.blocks_persisted);

        if !persisting.is_empty() {
            let depth = self.inner.info().max_queue_depth.min(WRITEBACK_SLOTS);
            let mut qp = self.inner.queue_pair(depth)?;
            let ops = build_runs(&persisting, self.limits);
            let mut stray = Vec::new();
            if let Some(failed) = write_back(&mut qp, ops, self.limits, &mut stray)? {
                return Err(failed.into_error());
            }
        }
        drop(cache);
        Ok(report)
    }
}

pub(crate) struct FaultNamespace {
    info: NamespaceInfo,
    shared: Arc<FaultShared>,
}

impl FaultNamespace {
    fn new(uri: String, inner: Device, config: &FaultConfig) -> FaultNamespace {
        let inner_info = inner.info();
        let mut info = inner_info.clone();
        info.uri = uri;
        info.model = format!("fault injector over {}", inner_info.model);
        if config.volatile_cache {
            info.ops.flush = true;
            info.volatile_write_cache = true;
        }
        let shared = FaultShared {
            limits: RunLimits::of(inner_info),
            seed: config.seed,
            volatile_cache: config.volatile_cache,
            odds: Odds {
                survive: Probability::new(config.survive),
                torn: Probability::new(config.torn),
                drop_writes: Probability::new(config.drop_writes),
                corrupt_writes: Probability::new(config.corrupt_writes),
            },
            rules: Mutex::new(
                config
                    .eio
                    .iter()
                    .map(|&rule| ArmedRule { rule, matched: 0 })
                    .collect(),
            ),
            counters: Counters::default(),
            next_seq: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            writeback: Mutex::new(()),
            cache: Mutex::new(Cache::default()),
            inner,
        };
        FaultNamespace {
            info,
            shared: Arc::new(shared),
        }
    }
}

impl Namespace for FaultNamespace {
    fn info(&self) -> &NamespaceInfo {
        &self.info
    }

    fn wrapped(&self) -> Option<&Device> {
        Some(&self.shared.inner)
    }

    fn create_queue_pair(
        self: Arc<Self>,
        depth: u32,
    ) -> Result<Box<dyn QueuePairBackend>, NvmeError> {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let inner_max = self.shared.inner.info().max_queue_depth;
        let inner_depth = depth
            .saturating_add(WRITEBACK_SLOTS)
            .min(inner_max)
            .max(depth);
        let inner = self.shared.inner.queue_pair(inner_depth)?;
        Ok(Box::new(FaultQueuePair {
            shared: Arc::clone(&self.shared),
            inner,
            generation,
            queued: Vec::with_capacity(depth as usize),
            completed: VecDeque::with_capacity(depth as usize),
            forwarded: HashMap::with_capacity(depth as usize),
            next_inner_tag: 0,
            reaped: Vec::new(),
        }))
    }

    fn fault_control(&self) -> Option<FaultControl> {
        Some(FaultControl {
            shared: Arc::clone(&self.shared),
        })
    }
}

/// What to do with a forwarded command's completion before handing it back.
enum Fixup {
    None,
    /// Cached blocks as they were when the read was forwarded.
    Overlay {
        lba: u64,
        blocks: u32,
        buf_offset: u32,
        extents: Vec<(u64, Extent)>,
    },
    /// Undo the bit flipped for `corrupt_writes` in the caller's buffer.
    RestoreBit {
        byte: usize,
        mask: u8,
    },
}

struct Forwarded {
    caller_tag: u64,
    opcode: Opcode,
    fixup: Fixup,
}

struct FaultQueuePair {
    shared: Arc<FaultShared>,
    inner: QueuePair,
    /// The power generation this queue pair was made in.
    generation: u64,
    queued: Vec<IoCmd>,
    completed: VecDeque<Completion>,
    /// By inner tag.
    forwarded: HashMap<u64, Forwarded>,
    next_inner_tag: u64,
    /// Inner completions not yet matched to their forwarded command.
    reaped: Vec<Completion>,
}

impl FaultQueuePair {
    fn is_dead(&self) -> bool {
        self.shared.generation.load(Ordering::SeqCst) != self.generation
    }

    fn block_size(&self) -> usize {
        self.shared.limits.block_size
    }

    fn complete(&mut self, cmd: IoCmd, status: Status) {
        self.completed.push_back(cmd.complete(status));
    }

    fn execute(&mut self, mut cmd: IoCmd) -> Result<(), NvmeError> {
        if self.is_dead() {
            self.complete(cmd, Status::ABORTED_POWER_LOSS);
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        bump(&shared.counters.commands);
        if let Some(status) = shared.injected_error(&cmd) {
            bump(&shared.counters.injected_errors);
            self.complete(cmd, status);
            return Ok(());
        }
        if cmd.opcode.modifies() && shared.chance(&shared.odds.drop_writes, SALT_DROP, seq) {
            bump(&shared.counters.dropped_writes);
            self.complete(cmd, Status::SUCCESS);
            return Ok(());
        }
        let corrupt_bit = (cmd.opcode == Opcode::Write
            && shared.chance(&shared.odds.corrupt_writes, SALT_CORRUPT, seq))
        .then(|| {
            let bits = cmd.blocks as u64 * self.block_size() as u64 * 8;
            draw(shared.seed, SALT_BIT, seq, 0) % bits
        });
        if corrupt_bit.is_some() {
            bump(&shared.counters.corrupted_writes);
        }
        if shared.volatile_cache {
            match cmd.opcode {
                Opcode::Read => self.read_through_cache(cmd),
                Opcode::Write => self.write_to_cache(cmd, seq, corrupt_bit),
                Opcode::WriteZeroes => self.cache_content(cmd, seq, Content::Zeroes),
                Opcode::Trim => self.cache_content(cmd, seq, Content::Trimmed),
                Opcode::Flush => self.flush_cache(cmd)?,
            }
        } else {
            let fixup = match corrupt_bit {
                Some(bit) => {
                    let byte = cmd.buf_offset as usize + (bit / 8) as usize;
                    let mask = 1u8 << (bit % 8);
                    match cmd.buf.as_mut().and_then(|buf| buf.get_mut(byte)) {
                        Some(target) => {
                            *target ^= mask;
                            Fixup::RestoreBit { byte, mask }
                        }
                        None => Fixup::None,
                    }
                }
                None => Fixup::None,
            };
            self.forward(cmd, fixup);
        }
        Ok(())
    }

    fn read_through_cache(&mut self, mut cmd: IoCmd) {
        let end = cmd.lba + cmd.blocks as u64;
        let overlay = {
            let cache = lock(&self.shared.cache);
            if self.is_dead() {
                drop(cache);
                self.complete(cmd, Status::ABORTED_POWER_LOSS);
                return;
            }
            cache.overlapping(cmd.lba, end)
        };
        let covered: u64 = overlay.iter().map(|(_, e)| e.blocks).sum();
        if covered == cmd.blocks as u64 {
            let bs = self.block_size();
            let lba = cmd.lba;
            let status = match data_window(&mut cmd, bs) {
                Some(window) => match apply_overlay(window, lba, bs, &overlay) {
                    Ok(()) => Status::SUCCESS,
                    Err(status) => status,
                },
                None => Status::INVALID_FIELD,
            };
            self.complete(cmd, status);
        } else {
            let fixup = Fixup::Overlay {
                lba: cmd.lba,
                blocks: cmd.blocks,
                buf_offset: cmd.buf_offset,
                extents: overlay,
            };
            self.forward(cmd, fixup);
        }
    }

    fn write_to_cache(&mut self, mut cmd: IoCmd, seq: u64, corrupt_bit: Option<u64>) {
        let bs = self.block_size();
        let Some(window) = data_window(&mut cmd, bs) else {
            self.complete(cmd, Status::INVALID_FIELD);
            return;
        };
        let mut data = window.to_vec();
        if let Some(bit) = corrupt_bit
            && let Some(byte) = data.get_mut((bit / 8) as usize)
        {
            *byte ^= 1 << (bit % 8);
        }
        let content = Content::Data {
            bytes: Arc::from(data),
            first: 0,
        };
        self.cache_content(cmd, seq, content);
    }

    fn cache_content(&mut self, cmd: IoCmd, seq: u64, content: Content) {
        let status = {
            let mut cache = lock(&self.shared.cache);
            if self.is_dead() {
                Status::ABORTED_POWER_LOSS
            } else {
                let extent = Extent {
                    blocks: cmd.blocks as u64,
                    write_seq: seq,
                    content,
                };
                cache.insert(cmd.lba, extent);
                Status::SUCCESS
            }
        };
        self.complete(cmd, status);
    }

    fn flush_cache(&mut self, cmd: IoCmd) -> Result<(), NvmeError> {
        let shared = Arc::clone(&self.shared);
        let _writeback = lock(&shared.writeback);
        let snapshot = {
            let cache = lock(&shared.cache);
            if self.is_dead() {
                drop(cache);
                self.complete(cmd, Status::ABORTED_POWER_LOSS);
                return Ok(());
            }
            (cache.snapshot(), cache.older.len())
        };
        let (snapshot, older_then) = snapshot;
        let ops = build_runs(&snapshot, shared.limits);
        let mut stray = std::mem::take(&mut self.reaped);
        let result = write_back(&mut self.inner, ops, shared.limits, &mut stray);
        self.reaped = stray;
        if let Some(failed) = result? {
            self.complete(cmd, failed.status);
            return Ok(());
        }
        {
            let mut cache = lock(&shared.cache);
            for (lba, extent) in &snapshot {
                cache.retire(*lba, extent);
            }
            cache.forget_older(older_then);
        }
        bump(&shared.counters.flushes);
        self.complete(cmd, Status::SUCCESS);
        Ok(())
    }

    fn forward(&mut self, mut cmd: IoCmd, fixup: Fixup) {
        let tag = self.next_inner_tag;
        self.next_inner_tag = (tag + 1) % WRITEBACK_TAG;
        let caller_tag = std::mem::replace(&mut cmd.tag, tag);
        let opcode = cmd.opcode;
        match self.inner.submit(cmd) {
            Ok(()) => {
                self.forwarded.insert(
                    tag,
                    Forwarded {
                        caller_tag,
                        opcode,
                        fixup,
                    },
                );
            }
            Err(QueueFull(mut cmd)) => {
                // Cannot happen (the inner queue pair is at least as deep as this one), but if
                // it did, the caller gets its command back failed rather than lost.
                cmd.tag = caller_tag;
                restore_bit(&mut cmd.buf, &fixup);
                self.complete(cmd, Status::INTERNAL_ERROR);
            }
        }
    }

    fn finish_forwarded(&mut self, completion: Completion, dead: bool) {
        let Some(forwarded) = self.forwarded.remove(&completion.tag) else {
            // Every inner command this queue pair submits is either forwarded (recorded) or a
            // write-back command that run_on_inner consumes, so this cannot happen.
            return;
        };
        let Completion {
            mut status,
            mut buf,
            ..
        } = completion;
        restore_bit(&mut buf, &forwarded.fixup);
        if let Fixup::Overlay {
            lba,
            blocks,
            buf_offset,
            extents,
        } = &forwarded.fixup
            && status.is_success()
            && !dead
            && !extents.is_empty()
        {
            let bs = self.block_size();
            let start = *buf_offset as usize;
            let window = buf
                .as_mut()
                .and_then(|buf| buf.get_mut(start..start + *blocks as usize * bs));
            status = match window {
                Some(window) => match apply_overlay(window, *lba, bs, extents) {
                    Ok(()) => Status::SUCCESS,
                    Err(status) => status,
                },
                None => Status::INTERNAL_ERROR,
            };
        }
        if dead {
            status = Status::ABORTED_POWER_LOSS;
        }
        if forwarded.opcode == Opcode::Flush && status.is_success() {
            bump(&self.shared.counters.flushes);
        }
        self.completed.push_back(Completion {
            tag: forwarded.caller_tag,
            status,
            buf,
        });
    }

    fn reap_inner(&mut self) -> Result<(), NvmeError> {
        if self.inner.outstanding() > 0 {
            self.inner.poll(usize::MAX, &mut self.reaped)?;
        }
        if self.reaped.is_empty() {
            return Ok(());
        }
        let dead = self.is_dead();
        let mut reaped = std::mem::take(&mut self.reaped);
        for completion in reaped.drain(..) {
            self.finish_forwarded(completion, dead);
        }
        self.reaped = reaped;
        Ok(())
    }
}

fn restore_bit(buf: &mut Option<DmaBuf>, fixup: &Fixup) {
    if let Fixup::RestoreBit { byte, mask } = *fixup
        && let Some(target) = buf.as_mut().and_then(|buf| buf.get_mut(byte))
    {
        *target ^= mask;
    }
}

impl QueuePairBackend for FaultQueuePair {
    fn queue(&mut self, cmd: IoCmd) {
        self.queued.push(cmd);
    }

    /// Waiting on this device is waiting on the inner one, when commands went there.
    fn wait(&mut self, _stats: &mut QueuePairStats) {
        if self.forwarded.is_empty() {
            std::thread::yield_now();
        } else {
            self.inner.wait();
        }
    }

    fn poll(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
        stats: &mut QueuePairStats,
    ) -> PollResult {
        let syscalls_before = self.inner.stats().syscalls;
        if !self.queued.is_empty() {
            stats.record_doorbell(self.queued.len());
            let mut batch = std::mem::take(&mut self.queued);
            for cmd in batch.drain(..) {
                self.execute(cmd)?;
            }
            self.queued = batch;
        }
        self.reap_inner()?;
        stats.syscalls += self.inner.stats().syscalls - syscalls_before;
        let n = max.min(self.completed.len());
        out.extend(self.completed.drain(..n));
        Ok(n)
    }

    fn register_pool(&mut self, pool: &DmaPool) -> Result<bool, NvmeError> {
        self.inner.register_pool(pool)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::conformance::{check_backend_fully, check_queue_depth_limits, pattern};

    const BS: usize = 4096;

    fn open(uri: &str) -> (Device, FaultControl) {
        let dev = Device::open(uri).unwrap();
        let control = dev.fault_control().expect("fault: devices have a control");
        (dev, control)
    }

    fn data(seed: u64, blocks: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; blocks as usize * BS];
        pattern(seed, &mut bytes);
        bytes
    }

    fn write_cmd(lba: u64, bytes: &[u8], tag: u64) -> IoCmd {
        let mut buf = DmaBuf::new(bytes.len()).unwrap();
        buf[..bytes.len()].copy_from_slice(bytes);
        IoCmd::write(lba, (bytes.len() / BS) as u32, buf, tag)
    }

    fn write(qp: &mut QueuePair, lba: u64, bytes: &[u8]) -> Status {
        qp.execute(write_cmd(lba, bytes, 1)).unwrap().status
    }

    fn read(qp: &mut QueuePair, lba: u64, blocks: u32) -> (Status, Vec<u8>) {
        let len = blocks as usize * BS;
        let c = qp
            .execute(IoCmd::read(lba, blocks, DmaBuf::new(len).unwrap(), 2))
            .unwrap();
        (c.status, c.buf.unwrap()[..len].to_vec())
    }

    fn read_ok(qp: &mut QueuePair, lba: u64, blocks: u32) -> Vec<u8> {
        let (status, bytes) = read(qp, lba, blocks);
        assert_eq!(status, Status::SUCCESS);
        bytes
    }

    fn flush(qp: &mut QueuePair) -> Status {
        qp.execute(IoCmd::flush(3)).unwrap().status
    }

    /// A block written twice since the last flush can come back, after a cut, as the newer
    /// version, the older unflushed one (the drive wrote it back before the newer arrived), or
    /// the flushed one — never anything else; and a flush makes the older versions unreachable.
    #[test]
    fn a_cut_can_leave_an_older_unflushed_version() {
        let (flushed, older, newer) = (data(1, 1), data(2, 1), data(3, 1));
        let mut seen = [0u32; 3];
        for seed in 0..64 {
            let (dev, control) = open(&format!("fault:seed={seed},survive=0.5+mem:1M"));
            let mut qp = dev.queue_pair(4).unwrap();
            assert_eq!(write(&mut qp, 0, &flushed), Status::SUCCESS);
            // A second block written twice before the flush and once after: the version the
            // flush replaced (`flushed` here) must never come back.
            assert_eq!(write(&mut qp, 1, &flushed), Status::SUCCESS);
            assert_eq!(write(&mut qp, 1, &older), Status::SUCCESS);
            assert_eq!(flush(&mut qp), Status::SUCCESS);
            assert_eq!(write(&mut qp, 0, &older), Status::SUCCESS);
            assert_eq!(write(&mut qp, 0, &newer), Status::SUCCESS);
            assert_eq!(write(&mut qp, 1, &newer), Status::SUCCESS);
            drop(qp);
            control.power_cut().unwrap();
            let mut qp = dev.queue_pair(4).unwrap();
            let found = read_ok(&mut qp, 0, 1);
            let which = [&flushed, &older, &newer]
                .iter()
                .position(|v| **v == found)
                .unwrap_or_else(|| panic!("seed {seed}: block 0 is none of its versions"));
            seen[which] += 1;
            let second = read_ok(&mut qp, 1, 1);
            assert!(
                second == older || second == newer,
                "seed {seed}: block 1 went back past its flush"
            );
        }
        assert!(
            seen.iter().all(|&n| n > 0),
            "flushed / older / newer seen {seen:?} times: every outcome should occur"
        );
    }

    /// Holds completions of one opcode until opened.
    #[derive(Default)]
    struct Gate {
        open: AtomicBool,
        held: AtomicU64,
    }

    impl Gate {
        fn open(&self) {
            self.open.store(true, Ordering::SeqCst);
        }
    }

    /// A pass-through backend whose completions of one opcode wait until the gate opens: lets a
    /// test hold a command in flight on the inner device while other things happen.
    struct GatedNamespace {
        info: NamespaceInfo,
        inner: Device,
        gated: Opcode,
        gate: Arc<Gate>,
    }

    struct GatedQueuePair {
        inner: QueuePair,
        gated: Opcode,
        gate: Arc<Gate>,
        gated_tags: HashSet<u64>,
        held: Vec<Completion>,
        ready: VecDeque<Completion>,
    }

    impl Namespace for GatedNamespace {
        fn info(&self) -> &NamespaceInfo {
            &self.info
        }

        fn create_queue_pair(
            self: Arc<Self>,
            depth: u32,
        ) -> Result<Box<dyn QueuePairBackend>, NvmeError> {
            Ok(Box::new(GatedQueuePair {
                inner: self.inner.queue_pair(depth)?,
                gated: self.gated,
                gate: Arc::clone(&self.gate),
                gated_tags: HashSet::new(),
                held: Vec::new(),
                ready: VecDeque::new(),
            }))
        }
    }

    impl QueuePairBackend for GatedQueuePair {
        fn queue(&mut self, cmd: IoCmd) {
            if cmd.opcode == self.gated {
                self.gated_tags.insert(cmd.tag);
            }
            if let Err(QueueFull(cmd)) = self.inner.submit(cmd) {
                self.ready.push_back(cmd.complete(Status::INTERNAL_ERROR));
            }
        }

        fn poll(
            &mut self,
            max: usize,
            out: &mut Vec<Completion>,
            _stats: &mut QueuePairStats,
        ) -> PollResult {
            let mut done = Vec::new();
            self.inner.poll(usize::MAX, &mut done)?;
            for c in done {
                if self.gated_tags.remove(&c.tag) {
                    self.gate.held.fetch_add(1, Ordering::SeqCst);
                    self.held.push(c);
                } else {
                    self.ready.push_back(c);
                }
            }
            if self.gate.open.load(Ordering::SeqCst) {
                self.ready.extend(self.held.drain(..));
            }
            let n = max.min(self.ready.len());
            out.extend(self.ready.drain(..n));
            Ok(n)
        }
    }

    /// `mem:SIZE` behind a closed gate on `gated` completions, optionally without Flush support.
    fn gated(size: &str, flush: bool, gated: Opcode) -> (Device, Arc<Gate>) {
        let inner = Device::open(&format!("mem:{size}")).unwrap();
        let mut info = inner.info().clone();
        info.uri = format!("gated:{size}");
        info.model = "gated RAM".into();
        info.ops.flush = flush;
        let gate = Arc::new(Gate::default());
        let ns = GatedNamespace {
            info,
            inner,
            gated,
            gate: Arc::clone(&gate),
        };
        (Device::from_namespace(Arc::new(ns)), gate)
    }

    #[test]
    fn conforms_with_cache_on_and_off() {
        check_backend_fully("fault:mem:4M");
        check_backend_fully("fault:cache=off+mem:4M");
        check_backend_fully("fault:seed=3+mem:1M?block_size=512");
        check_backend_fully("fault:cache=off+fault:mem:4M");
        check_queue_depth_limits("fault:mem:1M");
    }

    #[test]
    fn uri_options_parse() {
        let config = FaultConfig::parse(
            "u",
            "seed=0x10,cache=off,survive=0.25,torn=1,drop_writes=0,corrupt_writes=0.5,\
             eio_nth=3,eio_every=7,eio_lba=5-9,eio_on=write",
        )
        .unwrap();
        assert_eq!(
            config,
            FaultConfig {
                seed: 16,
                volatile_cache: false,
                survive: 0.25,
                torn: 1.0,
                drop_writes: 0.0,
                corrupt_writes: 0.5,
                eio: vec![
                    EioRule {
                        ops: FaultOps::Write,
                        trigger: EioTrigger::Nth(3)
                    },
                    EioRule {
                        ops: FaultOps::Write,
                        trigger: EioTrigger::Every(7)
                    },
                    EioRule {
                        ops: FaultOps::Write,
                        trigger: EioTrigger::Lbas { first: 5, last: 9 }
                    },
                ],
            }
        );
        assert_eq!(FaultConfig::parse("u", "").unwrap(), FaultConfig::default());
        let rule = FaultConfig::parse("u", "eio_every=2").unwrap().eio[0];
        assert_eq!(rule.ops, FaultOps::Any);

        // No options, empty options, nested wrappers, an inner URI with its own query.
        for (uri, model, cache) in [
            ("fault:mem:1M", "fault injector over RAM namespace", true),
            ("fault:+mem:1M", "fault injector over RAM namespace", true),
            (
                "fault:seed=1+fault:cache=off+mem:1M?block_size=512",
                "fault injector over fault injector over RAM namespace",
                true,
            ),
            (
                "fault:fault:mem:1M",
                "fault injector over fault injector over RAM namespace",
                true,
            ),
            (
                "fault:cache=off+null:1M",
                "fault injector over null namespace (no data)",
                false,
            ),
        ] {
            let dev = Device::open(uri).unwrap();
            let info = dev.info();
            assert_eq!(info.uri, uri);
            assert_eq!(info.model, model, "{uri}");
            assert_eq!(info.volatile_write_cache, cache, "{uri}");
            assert!(info.ops.flush);
            assert!(dev.fault_control().is_some());
        }
        let dev = Device::open("fault:seed=1+mem:1M?block_size=512").unwrap();
        assert_eq!(dev.info().block_size, 512);
        assert_eq!(dev.info().capacity_blocks, 2048);
    }

    #[test]
    fn bad_uri_options_name_the_option() {
        for (uri, needle) in [
            ("fault:colour=red+mem:1M", "unknown option 'colour'"),
            (
                "fault:seed=x+mem:1M",
                "option 'seed': 'x' is not a whole number",
            ),
            ("fault:seed=1,seed=2+mem:1M", "option 'seed': given twice"),
            ("fault:survive=1.5+mem:1M", "option 'survive'"),
            ("fault:torn=-0.1+mem:1M", "option 'torn'"),
            ("fault:drop_writes=NaN+mem:1M", "option 'drop_writes'"),
            (
                "fault:corrupt_writes=lots+mem:1M",
                "option 'corrupt_writes'",
            ),
            ("fault:cache=maybe+mem:1M", "option 'cache'"),
            (
                "fault:eio_nth=0+mem:1M",
                "option 'eio_nth': must be at least 1",
            ),
            ("fault:eio_every=-1+mem:1M", "option 'eio_every'"),
            ("fault:eio_lba=9-5+mem:1M", "option 'eio_lba'"),
            ("fault:eio_lba=9+mem:1M", "option 'eio_lba'"),
            ("fault:eio_on=write+mem:1M", "option 'eio_on': needs"),
            ("fault:eio_nth=1,eio_on=trim+mem:1M", "option 'eio_on'"),
            ("fault:seed+mem:1M", "option 'seed' is not key=value"),
            ("fault:seed=1,+mem:1M", "option '' is not key=value"),
            ("fault:seed=1", "expected fault:[OPTIONS+]INNER_URI"),
            ("fault:seed=1+", "missing inner URI"),
            ("fault:", "expected fault:[OPTIONS+]INNER_URI"),
            ("fault:seed=1+mem:", "missing size"),
            ("fault:seed=1+disk:1G", "unknown device scheme 'disk'"),
        ] {
            let err = match Device::open(uri) {
                Ok(_) => panic!("{uri} opened"),
                Err(err) => err.to_string(),
            };
            assert!(err.contains(needle), "{uri}: {err}");
        }
    }

    #[test]
    fn with_faults_renders_its_configuration() {
        let config = FaultConfig {
            seed: 9,
            torn: 0.5,
            eio: vec![EioRule {
                ops: FaultOps::Read,
                trigger: EioTrigger::Lbas { first: 1, last: 2 },
            }],
            ..FaultConfig::default()
        };
        let dev = Device::with_faults(Device::open("mem:1M").unwrap(), config.clone());
        assert_eq!(
            dev.info().uri,
            "fault:seed=9,cache=on,torn=0.5,eio_lba=1-2,eio_on=read+mem:1M"
        );
        let reopened = Device::open(&dev.info().uri).unwrap();
        assert_eq!(reopened.info().model, dev.info().model);
        assert_eq!(
            FaultConfig::parse("u", &config.to_options()).unwrap(),
            config
        );
    }

    #[test]
    fn power_cut_loses_unflushed_writes_and_keeps_flushed_ones() {
        let (dev, control) = open("fault:seed=5+mem:1M");
        let mut qp = dev.queue_pair(8).unwrap();
        let durable = data(1, 2);
        assert_eq!(write(&mut qp, 10, &durable), Status::SUCCESS);
        assert_eq!(flush(&mut qp), Status::SUCCESS);
        let volatile = data(2, 3);
        assert_eq!(write(&mut qp, 11, &volatile), Status::SUCCESS);
        assert_eq!(write(&mut qp, 40, &volatile), Status::SUCCESS);
        assert_eq!(
            qp.execute(IoCmd::write_zeroes(10, 1, 4)).unwrap().status,
            Status::SUCCESS
        );
        // Before the cut every completed write is visible.
        let mut expected = vec![0u8; 4 * BS];
        expected[BS..].copy_from_slice(&volatile);
        assert_eq!(read_ok(&mut qp, 10, 4), expected);
        let stats = control.stats();
        assert_eq!((stats.unflushed_writes, stats.unflushed_blocks), (3, 7));

        let report = control.power_cut().unwrap();
        assert_eq!(
            report,
            PowerCutReport {
                writes_lost: 3,
                writes_torn: 0,
                writes_persisted: 0,
                blocks_persisted: 0,
                blocks_lost: 7,
            }
        );
        let mut qp = dev.queue_pair(8).unwrap();
        let mut expected = durable.clone();
        expected.extend_from_slice(&[0u8; 2 * BS]);
        assert_eq!(read_ok(&mut qp, 10, 4), expected);
        assert_eq!(read_ok(&mut qp, 40, 3), vec![0u8; 3 * BS]);
        let stats = control.stats();
        assert_eq!((stats.unflushed_writes, stats.unflushed_blocks), (0, 0));
        assert_eq!((stats.flushes, stats.power_cuts), (1, 1));
    }

    #[test]
    fn survive_one_keeps_every_completed_write() {
        let (dev, control) = open("fault:survive=1+mem:1M");
        let mut qp = dev.queue_pair(8).unwrap();
        let a = data(3, 4);
        let b = data(4, 2);
        write(&mut qp, 0, &a);
        write(&mut qp, 2, &b); // replaces a's last two blocks
        qp.execute(IoCmd::trim(100, 50, 1)).unwrap();
        let report = control.power_cut().unwrap();
        assert_eq!(report.writes_persisted, 3);
        assert_eq!(report.blocks_persisted, 4 + 50);
        let mut qp = dev.queue_pair(8).unwrap();
        let mut expected = a[..2 * BS].to_vec();
        expected.extend_from_slice(&b);
        assert_eq!(read_ok(&mut qp, 0, 4), expected);
    }

    /// Which of `blocks` written blocks at `lba` hold the written data after a cut.
    fn torn_mask(seed: u64, blocks: u32) -> Vec<bool> {
        let (dev, control) = open(&format!("fault:seed={seed},torn=1+mem:1M"));
        let mut qp = dev.queue_pair(8).unwrap();
        let written = data(seed + 100, blocks);
        write(&mut qp, 20, &written);
        let single = data(7, 1);
        write(&mut qp, 90, &single);
        let report = control.power_cut().unwrap();
        assert_eq!((report.writes_torn, report.writes_lost), (1, 1));
        let mut qp = dev.queue_pair(8).unwrap();
        assert_eq!(
            read_ok(&mut qp, 90, 1),
            vec![0u8; BS],
            "a one-block write cannot tear"
        );
        let back = read_ok(&mut qp, 20, blocks);
        let mask: Vec<bool> = (0..blocks as usize)
            .map(|i| {
                let block = &back[i * BS..(i + 1) * BS];
                if block == &written[i * BS..(i + 1) * BS] {
                    true
                } else {
                    assert!(block.iter().all(|&b| b == 0), "block {i} is neither");
                    false
                }
            })
            .collect();
        assert_eq!(
            report.blocks_persisted,
            mask.iter().filter(|&&kept| kept).count() as u64
        );
        mask
    }

    #[test]
    fn torn_writes_persist_a_strict_nonempty_subset_chosen_by_the_seed() {
        let mut masks = Vec::new();
        for seed in 0..8 {
            for blocks in [2, 3, 8, 33] {
                let mask = torn_mask(seed, blocks);
                assert!(mask.iter().any(|&kept| kept), "seed {seed}: nothing kept");
                assert!(mask.iter().any(|&kept| !kept), "seed {seed}: nothing lost");
                assert_eq!(
                    mask,
                    torn_mask(seed, blocks),
                    "seed {seed} is not repeatable"
                );
                if blocks == 8 {
                    masks.push(mask);
                }
            }
        }
        masks.dedup();
        assert!(masks.len() > 1, "the seed should change the subset");
    }

    #[test]
    fn huge_trims_tear_in_segments() {
        let (dev, control) = open("fault:seed=2,torn=1+mem:64M");
        let mut qp = dev.queue_pair(4).unwrap();
        let blocks = dev.info().capacity_blocks as u32;
        let written = data(11, 4);
        for lba in (0..blocks as u64).step_by(64) {
            write(&mut qp, lba, &written[..BS]);
        }
        assert_eq!(flush(&mut qp), Status::SUCCESS);
        assert_eq!(
            qp.execute(IoCmd::write_zeroes(0, blocks, 1))
                .unwrap()
                .status,
            Status::SUCCESS
        );
        let report = control.power_cut().unwrap();
        assert_eq!(report.writes_torn, 1);
        assert!(report.blocks_persisted > 0 && report.blocks_persisted < blocks as u64);
    }

    #[test]
    fn dropped_writes_leave_old_data() {
        for uri in [
            "fault:drop_writes=1+mem:1M",
            "fault:drop_writes=1,cache=off+mem:1M",
        ] {
            let (dev, control) = open(uri);
            let mut qp = dev.queue_pair(4).unwrap();
            control.set_drop_writes(0.0);
            let old = data(1, 2);
            write(&mut qp, 5, &old);
            control.set_drop_writes(1.0);
            assert_eq!(write(&mut qp, 5, &data(2, 2)), Status::SUCCESS);
            assert_eq!(
                qp.execute(IoCmd::write_zeroes(5, 1, 1)).unwrap().status,
                Status::SUCCESS
            );
            assert_eq!(read_ok(&mut qp, 5, 2), old, "{uri}");
            assert_eq!(control.stats().dropped_writes, 2);
        }
    }

    fn differing_bits(a: &[u8], b: &[u8]) -> u32 {
        a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
    }

    #[test]
    fn corrupted_writes_flip_exactly_one_bit() {
        for uri in [
            "fault:corrupt_writes=1,seed=4+mem:1M",
            "fault:corrupt_writes=1,seed=4,cache=off+mem:1M",
        ] {
            let (dev, control) = open(uri);
            let mut qp = dev.queue_pair(4).unwrap();
            let written = data(9, 3);
            let done = qp.execute(write_cmd(7, &written, 1)).unwrap();
            assert_eq!(done.status, Status::SUCCESS);
            assert_eq!(
                &done.buf.unwrap()[..written.len()],
                &written[..],
                "{uri}: the caller's buffer comes back as it was"
            );
            let back = read_ok(&mut qp, 7, 3);
            assert_eq!(differing_bits(&back, &written), 1, "{uri}");
            assert_eq!(control.stats().corrupted_writes, 1);
            assert_eq!(flush(&mut qp), Status::SUCCESS);
            control.power_cut().unwrap();
            let mut qp = dev.queue_pair(4).unwrap();
            assert_eq!(read_ok(&mut qp, 7, 3), back, "{uri}: the flip is durable");
        }
    }

    #[test]
    fn silent_faults_repeat_with_the_seed() {
        let run = |seed: u64| {
            let (dev, control) = open(&format!(
                "fault:seed={seed},drop_writes=0.3,corrupt_writes=0.3+mem:1M"
            ));
            let mut qp = dev.queue_pair(4).unwrap();
            for i in 0..40 {
                write(&mut qp, i, &data(i, 1));
            }
            (read_ok(&mut qp, 0, 40), control.stats())
        };
        let (first, stats) = run(1);
        assert_eq!(run(1), (first.clone(), stats));
        assert!(stats.dropped_writes > 0 && stats.corrupted_writes > 0);
        assert_ne!(run(2).0, first);
    }

    #[test]
    fn eio_nth_fails_only_the_nth_matching_command() {
        let (dev, control) = open("fault:eio_nth=3,eio_on=write+mem:1M");
        let mut qp = dev.queue_pair(4).unwrap();
        let a = data(1, 2);
        assert_eq!(write(&mut qp, 0, &a), Status::SUCCESS); // write 1
        read_ok(&mut qp, 0, 2); // reads do not count
        assert_eq!(flush(&mut qp), Status::SUCCESS); // nor flushes
        assert_eq!(write(&mut qp, 4, &a), Status::SUCCESS); // write 2
        let zeroes = qp.execute(IoCmd::write_zeroes(0, 2, 9)).unwrap(); // write 3
        assert_eq!((zeroes.tag, zeroes.status), (9, Status::WRITE_FAULT));
        assert_eq!(
            read_ok(&mut qp, 0, 2),
            a,
            "a failed command touches nothing"
        );
        assert_eq!(
            qp.execute(IoCmd::trim(0, 2, 1)).unwrap().status,
            Status::SUCCESS
        );
        assert_eq!(control.stats().injected_errors, 1);
    }

    #[test]
    fn eio_every_counts_matching_commands_device_wide() {
        let (dev, _control) = open("fault:eio_every=2,eio_on=read,cache=off+mem:1M");
        let mut first = dev.queue_pair(4).unwrap();
        let mut second = dev.queue_pair(4).unwrap();
        let a = data(2, 1);
        write(&mut first, 3, &a);
        let mut statuses = Vec::new();
        for i in 0..6 {
            let qp = if i % 3 == 0 { &mut first } else { &mut second };
            assert_eq!(write(qp, 9, &a), Status::SUCCESS);
            let (status, bytes) = read(qp, 3, 1);
            if status.is_success() {
                assert_eq!(bytes, a);
            }
            statuses.push(status);
        }
        let fail = Status::UNRECOVERED_READ_ERROR;
        let ok = Status::SUCCESS;
        assert_eq!(statuses, vec![ok, fail, ok, fail, ok, fail]);
    }

    #[test]
    fn eio_lba_fails_overlapping_commands_and_never_flush() {
        let (dev, _control) = open("fault:eio_lba=10-12+mem:1M");
        let mut qp = dev.queue_pair(4).unwrap();
        let two = data(3, 2);
        assert_eq!(write(&mut qp, 8, &two), Status::SUCCESS); // 8..=9
        assert_eq!(write(&mut qp, 9, &two), Status::WRITE_FAULT); // 9..=10
        assert_eq!(write(&mut qp, 12, &two), Status::WRITE_FAULT); // 12..=13
        assert_eq!(write(&mut qp, 13, &two), Status::SUCCESS);
        assert_eq!(read(&mut qp, 11, 1).0, Status::UNRECOVERED_READ_ERROR);
        assert_eq!(read(&mut qp, 0, 20).0, Status::UNRECOVERED_READ_ERROR);
        assert_eq!(
            qp.execute(IoCmd::trim(12, 1, 1)).unwrap().status,
            Status::WRITE_FAULT
        );
        assert_eq!(flush(&mut qp), Status::SUCCESS);
        assert_eq!(read_ok(&mut qp, 8, 2), two);
    }

    #[test]
    fn flush_errors_keep_data_cached() {
        let (dev, control) = open("fault:eio_nth=1,eio_on=flush+mem:1M");
        let mut qp = dev.queue_pair(4).unwrap();
        let a = data(4, 2);
        write(&mut qp, 0, &a);
        assert_eq!(flush(&mut qp), Status::WRITE_FAULT);
        assert_eq!(control.stats().unflushed_blocks, 2);
        assert_eq!(flush(&mut qp), Status::SUCCESS);
        assert_eq!(control.stats().unflushed_blocks, 0);

        // Armed and disarmed at run time.
        control.arm(EioRule {
            ops: FaultOps::Any,
            trigger: EioTrigger::Every(1),
        });
        assert_eq!(read(&mut qp, 0, 1).0, Status::UNRECOVERED_READ_ERROR);
        assert_eq!(flush(&mut qp), Status::WRITE_FAULT);
        control.disarm_all();
        assert_eq!(read_ok(&mut qp, 0, 2), a);
    }

    #[test]
    fn inner_write_back_errors_fail_the_flush_and_keep_blocks_cached() {
        let inner = Device::open("fault:mem:1M").unwrap();
        let inner_control = inner.fault_control().unwrap();
        let dev = Device::with_faults(inner, FaultConfig::default());
        let control = dev.fault_control().unwrap();
        let mut qp = dev.queue_pair(4).unwrap();
        let a = data(5, 3);
        write(&mut qp, 1, &a);
        inner_control.arm(EioRule {
            ops: FaultOps::Write,
            trigger: EioTrigger::Lbas { first: 2, last: 2 },
        });
        assert_eq!(flush(&mut qp), Status::WRITE_FAULT);
        assert_eq!(control.stats().unflushed_blocks, 3);
        assert_eq!(read_ok(&mut qp, 1, 3), a);
        inner_control.disarm_all();
        assert_eq!(flush(&mut qp), Status::SUCCESS);
        // The outer flush flushed the inner device too: both cuts keep the data.
        control.power_cut().unwrap();
        inner_control.power_cut().unwrap();
        let mut qp = dev.queue_pair(4).unwrap();
        assert_eq!(read_ok(&mut qp, 1, 3), a);
    }

    #[test]
    fn fault_over_fault_cuts_each_level() {
        let inner = Device::open("fault:mem:1M").unwrap();
        let inner_control = inner.fault_control().unwrap();
        let dev = Device::with_faults(inner, FaultConfig::default());
        let control = dev.fault_control().unwrap();
        let mut qp = dev.queue_pair(4).unwrap();
        let a = data(6, 1);
        write(&mut qp, 0, &a);
        // The inner device never saw the write: cutting it loses nothing of the outer cache...
        assert_eq!(
            inner_control.power_cut().unwrap(),
            PowerCutReport::default()
        );
        // ...but it killed the outer queue pair's inner queue pair.
        assert_eq!(read(&mut qp, 0, 1).0, Status::SUCCESS, "served from cache");
        assert_eq!(read(&mut qp, 1, 1).0, Status::ABORTED_POWER_LOSS);
        assert_eq!(control.power_cut().unwrap().writes_lost, 1);
        let mut qp = dev.queue_pair(4).unwrap();
        assert_eq!(read_ok(&mut qp, 0, 1), vec![0u8; BS]);
    }

    #[test]
    fn a_read_in_flight_sees_writes_that_a_concurrent_flush_moves() {
        let (inner, gate) = gated("1M", true, Opcode::Read);
        let dev = Device::with_faults(inner, FaultConfig::default());
        let mut writer = dev.queue_pair(4).unwrap();
        let mut reader = dev.queue_pair(4).unwrap();
        let old = data(1, 2);
        write(&mut writer, 0, &old);
        assert_eq!(flush(&mut writer), Status::SUCCESS);
        let new = data(2, 1);
        write(&mut writer, 1, &new); // cached; the inner device still has `old`

        reader
            .submit(IoCmd::read(0, 2, DmaBuf::new(2 * BS).unwrap(), 77))
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(
            reader.poll(16, &mut out).unwrap(),
            0,
            "the read is in flight"
        );

        assert_eq!(flush(&mut writer), Status::SUCCESS);
        assert_eq!(dev.fault_control().unwrap().stats().unflushed_blocks, 0);

        gate.open();
        reader.drain(&mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].tag, out[0].status), (77, Status::SUCCESS));
        let mut expected = old[..BS].to_vec();
        expected.extend_from_slice(&new);
        assert!(out[0].buf.as_ref().unwrap()[..2 * BS] == expected[..]);
    }

    #[test]
    fn blocks_rewritten_during_a_write_back_stay_cached() {
        let (inner, gate) = gated("1M", true, Opcode::Write);
        let dev = Device::with_faults(inner, FaultConfig::default());
        let control = dev.fault_control().unwrap();
        let first = data(1, 2);
        let second = data(2, 1);
        let mut qp = dev.queue_pair(4).unwrap();
        write(&mut qp, 0, &first);

        let flusher = {
            let dev = dev.clone();
            std::thread::spawn(move || {
                let mut qp = dev.queue_pair(4).unwrap();
                flush(&mut qp)
            })
        };
        // The Flush is now waiting for its write-back to complete on the inner device.
        while gate.held.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        assert_eq!(write(&mut qp, 1, &second), Status::SUCCESS);
        gate.open();
        assert_eq!(flusher.join().unwrap(), Status::SUCCESS);

        let stats = control.stats();
        assert_eq!((stats.unflushed_writes, stats.unflushed_blocks), (1, 1));
        let mut expected = first[..BS].to_vec();
        expected.extend_from_slice(&second);
        assert_eq!(read_ok(&mut qp, 0, 2), expected);
        control.power_cut().unwrap();
        let mut qp = dev.queue_pair(4).unwrap();
        assert_eq!(
            read_ok(&mut qp, 0, 2),
            first,
            "the rewrite was never flushed"
        );
    }

    #[test]
    fn old_queue_pairs_abort_everything_after_a_cut() {
        for cache in ["on", "off"] {
            let (inner, gate) = gated("1M", true, Opcode::Read);
            let config = FaultConfig {
                volatile_cache: cache == "on",
                ..FaultConfig::default()
            };
            let dev = Device::with_faults(inner, config);
            let control = dev.fault_control().unwrap();
            let mut old = dev.queue_pair(8).unwrap();
            let durable = data(1, 1);
            write(&mut old, 0, &durable);
            assert_eq!(flush(&mut old), Status::SUCCESS);

            // In flight: a read the inner device holds. Queued: a write not yet polled.
            old.submit(IoCmd::read(0, 1, DmaBuf::new(BS).unwrap(), 1))
                .unwrap();
            let mut out = Vec::new();
            assert_eq!(old.poll(16, &mut out).unwrap(), 0);
            old.submit(write_cmd(0, &data(2, 1), 2)).unwrap();

            control.power_cut().unwrap();

            // Submitted after the cut.
            old.submit(write_cmd(3, &data(3, 1), 3)).unwrap();
            old.submit(IoCmd::flush(4)).unwrap();
            old.submit(IoCmd::trim(0, 1, 5)).unwrap();
            gate.open();
            old.drain(&mut out).unwrap();
            out.sort_by_key(|c| c.tag);
            assert_eq!(out.len(), 5);
            for c in &out {
                assert_eq!(
                    c.status,
                    Status::ABORTED_POWER_LOSS,
                    "cache={cache} tag {}",
                    c.tag
                );
            }
            assert!(
                out[..3].iter().all(|c| c.buf.is_some()),
                "buffers come back"
            );
            assert_eq!(
                read(&mut old, 0, 1).0,
                Status::ABORTED_POWER_LOSS,
                "still dead"
            );

            let mut new = dev.queue_pair(8).unwrap();
            assert_eq!(read_ok(&mut new, 0, 1), durable, "cache={cache}");
            assert_eq!(read_ok(&mut new, 3, 1), vec![0u8; BS], "cache={cache}");
            assert_eq!(write(&mut new, 3, &durable), Status::SUCCESS);
            assert_eq!(flush(&mut new), Status::SUCCESS);
        }
    }

    #[test]
    fn cache_off_cuts_lose_nothing_that_completed() {
        let (dev, control) = open("fault:cache=off+mem:1M");
        assert!(!dev.info().volatile_write_cache);
        let mut qp = dev.queue_pair(4).unwrap();
        let a = data(8, 2);
        write(&mut qp, 0, &a);
        assert_eq!(flush(&mut qp), Status::SUCCESS);
        assert_eq!(control.stats().flushes, 1);
        assert_eq!(control.power_cut().unwrap(), PowerCutReport::default());
        let mut qp = dev.queue_pair(4).unwrap();
        assert_eq!(read_ok(&mut qp, 0, 2), a);
    }

    #[test]
    fn cache_on_offers_flush_over_an_inner_device_without_it() {
        let (inner, gate) = gated("1M", false, Opcode::Read);
        gate.open();
        let dev = Device::with_faults(inner, FaultConfig::default());
        assert!(dev.info().ops.flush);
        let control = dev.fault_control().unwrap();
        let mut qp = dev.queue_pair(4).unwrap();
        let a = data(10, 2);
        write(&mut qp, 0, &a);
        assert_eq!(flush(&mut qp), Status::SUCCESS);
        control.power_cut().unwrap();
        let mut qp = dev.queue_pair(4).unwrap();
        assert_eq!(read_ok(&mut qp, 0, 2), a);

        let (inner, _gate) = gated("1M", false, Opcode::Read);
        let config = FaultConfig {
            volatile_cache: false,
            ..FaultConfig::default()
        };
        let dev = Device::with_faults(inner, config);
        assert!(!dev.info().ops.flush);
    }

    #[test]
    fn write_back_coalesces_and_splits_at_the_transfer_limit() {
        // Runs hold at most 4 blocks, so the 4-block writes at 3 and 7 straddle run boundaries
        // and each run takes the middle of some extent.
        let inner = Device::open("mem:1M?max_transfer=16k").unwrap();
        let dev = Device::with_faults(inner, FaultConfig::default());
        let control = dev.fault_control().unwrap();
        let mut qp = dev.queue_pair(4).unwrap();
        let a = data(12, 4);
        let b = data(13, 4);
        let c = data(14, 4);
        write(&mut qp, 0, &a[..3 * BS]);
        write(&mut qp, 3, &b);
        write(&mut qp, 7, &c);
        write(&mut qp, 5, &a[..BS]); // splits b's extent in two
        qp.execute(IoCmd::write_zeroes(11, 5, 1)).unwrap();
        qp.execute(IoCmd::trim(16, 200, 1)).unwrap();
        write(&mut qp, 230, &a[..BS]);
        let mut expected = a[..3 * BS].to_vec();
        expected.extend_from_slice(&b[..2 * BS]);
        expected.extend_from_slice(&a[..BS]);
        expected.extend_from_slice(&b[3 * BS..]);
        expected.extend_from_slice(&c);
        let blockwise = |qp: &mut QueuePair| -> Vec<u8> {
            (0..11).flat_map(|lba| read_ok(qp, lba, 1)).collect()
        };
        assert_eq!(blockwise(&mut qp), expected);
        assert_eq!(flush(&mut qp), Status::SUCCESS);
        control.power_cut().unwrap();
        let mut qp = dev.queue_pair(4).unwrap();
        assert_eq!(blockwise(&mut qp), expected);
        assert_eq!(read_ok(&mut qp, 11, 4), vec![0u8; 4 * BS]);
        assert_eq!(read_ok(&mut qp, 230, 1), a[..BS]);
    }

    #[test]
    fn concurrent_writers_and_flushers_converge() {
        let (dev, control) = open("fault:mem:4M");
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    let mut qp = dev.queue_pair(8).unwrap();
                    for round in 0..50u64 {
                        // Every thread rewrites a shared block and its own blocks.
                        let mut block = vec![0u8; BS];
                        block.fill((t * 50 + round) as u8);
                        assert_eq!(write(&mut qp, 0, &block), Status::SUCCESS);
                        assert_eq!(write(&mut qp, 1 + t, &block), Status::SUCCESS);
                        if round % 3 == t % 3 {
                            assert_eq!(flush(&mut qp), Status::SUCCESS);
                        }
                    }
                    assert_eq!(flush(&mut qp), Status::SUCCESS);
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let mut qp = dev.queue_pair(4).unwrap();
        let before = read_ok(&mut qp, 0, 5);
        assert_eq!(control.stats().unflushed_blocks, 0);
        control.power_cut().unwrap();
        let mut qp = dev.queue_pair(4).unwrap();
        assert_eq!(read_ok(&mut qp, 0, 5), before);
        for t in 0..4usize {
            assert!(
                before[(1 + t) * BS..(2 + t) * BS]
                    .iter()
                    .all(|&b| b as usize == t * 50 + 49)
            );
        }
    }

    #[test]
    fn cache_extents_split_and_count() {
        let bytes: Arc<[u8]> = Arc::from(vec![0u8; 10 * BS]);
        let mut cache = Cache::default();
        let data = |seq| Extent {
            blocks: 10,
            write_seq: seq,
            content: Content::Data {
                bytes: Arc::clone(&bytes),
                first: 0,
            },
        };
        cache.insert(10, data(1));
        cache.insert(
            13,
            Extent {
                blocks: 2,
                write_seq: 2,
                content: Content::Zeroes,
            },
        );
        assert_eq!(cache.blocks, 10);
        assert_eq!(cache.writes[&1].cached_blocks, 8);
        let starts: Vec<u64> = cache.extents.keys().copied().collect();
        assert_eq!(starts, vec![10, 13, 15]);
        let seen: Vec<(u64, u64, u64)> = cache
            .overlapping(12, 16)
            .iter()
            .map(|(lba, e)| (*lba, e.blocks, e.write_seq))
            .collect();
        assert_eq!(seen, vec![(12, 1, 1), (13, 2, 2), (15, 1, 1)]);
        cache.retire(10, &data(1));
        assert_eq!(cache.blocks, 2);
        assert!(!cache.writes.contains_key(&1));
        cache.punch(0, 100);
        assert_eq!((cache.blocks, cache.writes.len()), (0, 0));
    }
}
