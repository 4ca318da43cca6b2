//! `sim:CLASS[,key=value...]+INNER_URI` — a latency model over any backend, so tier placement
//! (WAL on nvme, DB on ssd, data on hdd) can be studied on one machine. It is a simulation and
//! says so: the namespace's `model` starts with "simulated" ([`is_simulated`]).
//!
//! # What it does
//!
//! Data moves through the inner device unchanged: every command is forwarded to an inner queue
//! pair at the poll that rings its doorbell. At that moment the command also gets a due time from
//! the device's model, whose state every queue pair of the device shares. A completion is handed
//! back only once the inner device completed the command *and* its due time has passed; among
//! those, earliest due first. The model's clock is the wall clock ([`Instant`]), so a caller that
//! polls late sees its command complete late and the model treats the next command as arriving
//! late — which is how a QD1 writer on a disk misses a rotation.
//!
//! The namespace reports `class` = CLASS and `model` = "simulated CLASS (parameters) over INNER
//! MODEL"; every other fact (capacity, block size, supported commands, volatile cache) is the
//! inner device's.
//!
//! # Models
//!
//! Times below are service times; a command's due time is when its service finishes.
//!
//! **hdd** — one actuator, commands served FIFO in doorbell order, write-through (no volatile
//! cache is modelled). Parameters `rpm` (7200), `seek_ms` (average seek, 8.5), `track_ms`
//! (track-to-track, 0.8; when not given it is capped at `seek_ms`), `mbps` (media rate in
//! 10^6 bytes/s, 200).
//! - Geometry: rotation period `P = 60 s / rpm`; `bytes_per_track = rate × P`; byte offset `x`
//!   lies on track `x / bytes_per_track` at angle `(x mod bytes_per_track) / bytes_per_track`.
//! - Service starts at `max(arrival, end of the previous command)`: a seek over `d` tracks,
//!   `0` if `d = 0`, else `track_ms + (full_stroke − track_ms)·sqrt(d / tracks)`, where
//!   `full_stroke = track_ms + (seek_ms − track_ms)·15/8` makes the mean over uniformly random
//!   pairs of positions `seek_ms` (E[sqrt|U1 − U2|] = 8/15); then the wait until the platter's
//!   angle, `(t mod P) / P`, reaches the first byte's; then the transfer, `bytes / rate`.
//! - The head is left at the byte after the transfer. Moving on to the next track while
//!   transferring, or between two sequential commands, is free (real drives skew tracks so
//!   that it is), so back-to-back sequential commands cost only their transfer, while one that
//!   arrives after the head passed its first byte waits for the platter to come round again.
//! - Flush completes when everything rung before it is done, at no extra cost. WriteZeroes and
//!   Trim cost a 4 KiB write at their first LBA (a metadata update, not a media pass).
//!
//! **ssd**, **nvme** — `channels` independent units (ssd 4, nvme 8), each serving its commands
//! FIFO; a command goes to the unit that is free earliest and takes `read_us` or `write_us` plus
//! `bytes / mbps` there (ssd: 80 µs, 30 µs, 500 MB/s; nvme: 10 µs, 10 µs, 3000 MB/s). `mbps` is
//! each unit's rate, so large transfers spread over all units reach `channels × mbps`. Flush
//! completes `flush_us` (default 0) after everything rung before it is done. WriteZeroes and Trim
//! cost a 4 KiB write.
//!
//! The models are plain state machines ([`HddState`], [`FlashState`]) that take an arrival time
//! and a [`SimOp`] and return its [`Service`], so they are tested by computing times, not by
//! measuring them.
//!
//! # URI
//!
//! `sim:CLASS[,key=value...]+INNER_URI`: `sim:hdd+mem:4G`, `sim:nvme,read_us=20+mem:1G`,
//! `sim:hdd,rpm=5400,seek_ms=12+uring:/x.img?size=4G`. The options end at the first `+`; the rest is the inner URI, opened with [`Device::open`].
//! Times accept a unit (`seek_ms=500us`); a bare number is in the unit the name says. An unknown
//! option, a repeated one or a bad value is [`NvmeError::InvalidUri`] naming the option.

use crate::uri::uri_error;
use bluepoll_base::options::KeyValues;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::command::{Completion, IoCmd, Opcode, Status};
use super::device::{
    Device, DeviceClass, Namespace, NamespaceInfo, PollResult, QueueFull, QueuePair,
    QueuePairBackend, QueuePairStats,
};
use super::dma::DmaPool;
use super::error::NvmeError;
use super::fault::FaultControl;
use bluepoll_base::sync::lock;
use bluepoll_base::units::parse_duration;

const MODEL_PREFIX: &str = "simulated ";

/// Whether `info` describes a `sim:` device (or a slice of one), for outputs that should say that
/// their latencies are modelled.
pub fn is_simulated(info: &NamespaceInfo) -> bool {
    info.model.starts_with(MODEL_PREFIX)
}

/// What WriteZeroes and Trim cost: a small metadata write, whatever range they name.
const METADATA_BYTES: u64 = 4096;

/// Parameters of the `hdd` model (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HddModel {
    /// Spindle speed, revolutions per minute; one rotation takes `60 / rpm` seconds.
    pub rpm: f64,
    /// Average seek over uniformly random pairs of positions.
    pub seek_ms: f64,
    /// Seek to the adjacent track.
    pub track_ms: f64,
    /// Media rate, 10^6 bytes per second.
    pub mbps: f64,
}

impl Default for HddModel {
    fn default() -> HddModel {
        HddModel {
            rpm: 7200.0,
            seek_ms: 8.5,
            track_ms: 0.8,
            mbps: 200.0,
        }
    }
}

/// Parameters of the `ssd` and `nvme` models (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashModel {
    /// Units serving commands in parallel.
    pub channels: u32,
    /// Fixed cost of a read on its unit, in microseconds, before the transfer.
    pub read_us: f64,
    /// Fixed cost of a write (also of WriteZeroes and Trim) on its unit, in microseconds, before
    /// the transfer.
    pub write_us: f64,
    /// Transfer rate of one unit, 10^6 bytes per second.
    pub mbps: f64,
    /// Added to a Flush after everything before it is done.
    pub flush_us: f64,
}

impl FlashModel {
    /// The `ssd` defaults: 4 units, 80 µs reads, 30 µs writes, 500 MB/s per unit.
    pub const SSD: FlashModel = FlashModel {
        channels: 4,
        read_us: 80.0,
        write_us: 30.0,
        mbps: 500.0,
        flush_us: 0.0,
    };

    /// The `nvme` defaults: 8 units, 10 µs reads and writes, 3000 MB/s per unit.
    pub const NVME: FlashModel = FlashModel {
        channels: 8,
        read_us: 10.0,
        write_us: 10.0,
        mbps: 3000.0,
        flush_us: 0.0,
    };
}

/// A latency model and the class it simulates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SimConfig {
    /// `sim:hdd`: a rotating disk; the namespace reports [`DeviceClass::Hdd`].
    Hdd(HddModel),
    /// `sim:ssd`: the flash model with SATA-like defaults; reports [`DeviceClass::Ssd`].
    Ssd(FlashModel),
    /// `sim:nvme`: the flash model with NVMe-like defaults; reports [`DeviceClass::Nvme`].
    Nvme(FlashModel),
}

const HDD_OPTIONS: &str = "rpm, seek_ms, track_ms, mbps";
const FLASH_OPTIONS: &str = "channels, read_us, write_us, mbps, flush_us";
const MAX_CHANNELS: u32 = 1024;

impl SimConfig {
    /// The class's model with its default parameters.
    pub fn defaults(class: DeviceClass) -> SimConfig {
        match class {
            DeviceClass::Hdd => SimConfig::Hdd(HddModel::default()),
            DeviceClass::Ssd => SimConfig::Ssd(FlashModel::SSD),
            DeviceClass::Nvme => SimConfig::Nvme(FlashModel::NVME),
        }
    }

    /// The class the simulated namespace reports in [`NamespaceInfo::class`].
    pub fn class(&self) -> DeviceClass {
        match self {
            SimConfig::Hdd(_) => DeviceClass::Hdd,
            SimConfig::Ssd(_) => DeviceClass::Ssd,
            SimConfig::Nvme(_) => DeviceClass::Nvme,
        }
    }

    /// Parses `CLASS[,key=value...]` (the part of a `sim:` URI before the `+`).
    fn parse(uri: &str, options: &str) -> Result<SimConfig, NvmeError> {
        let (class_text, rest) = options
            .split_once(',')
            .map_or((options, None), |(class, rest)| (class, Some(rest)));
        let class = DeviceClass::parse(class_text).ok_or_else(|| {
            NvmeError::uri(
                uri,
                format!("class '{class_text}' is not one of hdd, ssd, nvme"),
            )
        })?;
        let mut config = SimConfig::defaults(class);
        let bad = |key: &str, why: String| NvmeError::uri(uri, format!("option '{key}': {why}"));
        let ms = Duration::from_millis(1);
        let us = Duration::from_micros(1);
        let values = match rest {
            Some(rest) => KeyValues::list(rest, ',', "option"),
            None => KeyValues::query("", "option"),
        }
        .map_err(|e| uri_error(uri, e))?;
        let seen: Vec<&str> = values.pairs().iter().map(|(k, _)| *k).collect();
        for &(key, value) in values.pairs() {
            // A bare number is kept as written, so the model string shows what was asked for.
            let time = |unit: Duration| match value.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => parse_duration(value, unit)
                    .map(|d| d.as_nanos() as f64 / unit.as_nanos() as f64)
                    .map_err(|e| bad(key, e)),
            };
            let number = || parse_number(value).map_err(|e| bad(key, e));
            match &mut config {
                SimConfig::Hdd(m) => match key {
                    "rpm" => m.rpm = number()?,
                    "seek_ms" => m.seek_ms = time(ms)?,
                    "track_ms" => m.track_ms = time(ms)?,
                    "mbps" => m.mbps = number()?,
                    _ => return Err(unknown_option(uri, key, class, HDD_OPTIONS)),
                },
                SimConfig::Ssd(m) | SimConfig::Nvme(m) => match key {
                    "channels" => {
                        m.channels = value
                            .parse()
                            .map_err(|_| bad(key, format!("'{value}' is not a whole number")))?
                    }
                    "read_us" => m.read_us = time(us)?,
                    "write_us" => m.write_us = time(us)?,
                    "mbps" => m.mbps = number()?,
                    "flush_us" => m.flush_us = time(us)?,
                    _ => return Err(unknown_option(uri, key, class, FLASH_OPTIONS)),
                },
            }
        }
        // A fast disk given only a short average seek should not be refused for the default
        // track-to-track time exceeding it.
        if let SimConfig::Hdd(m) = &mut config
            && !seen.contains(&"track_ms")
        {
            m.track_ms = m.track_ms.min(m.seek_ms);
        }
        config.check().map_err(|(key, why)| bad(key, why))?;
        Ok(config)
    }

    /// The first parameter out of range, by option name.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let positive = |key, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err((key, format!("{v} is not a positive number")))
            }
        };
        let time = |key, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err((key, format!("{v} is not a time")))
            }
        };
        match self {
            SimConfig::Hdd(m) => {
                positive("rpm", m.rpm)?;
                positive("mbps", m.mbps)?;
                time("seek_ms", m.seek_ms)?;
                time("track_ms", m.track_ms)?;
                if m.track_ms > m.seek_ms {
                    return Err((
                        "track_ms",
                        format!(
                            "{} exceeds the average seek_ms {} (which includes the short seeks)",
                            m.track_ms, m.seek_ms
                        ),
                    ));
                }
            }
            SimConfig::Ssd(m) | SimConfig::Nvme(m) => {
                if !(1..=MAX_CHANNELS).contains(&m.channels) {
                    return Err((
                        "channels",
                        format!("{} is not from 1 to {MAX_CHANNELS}", m.channels),
                    ));
                }
                time("read_us", m.read_us)?;
                time("write_us", m.write_us)?;
                time("flush_us", m.flush_us)?;
                positive("mbps", m.mbps)?;
            }
        }
        Ok(())
    }

    /// The options part of a URI that opens a device with this model.
    fn to_options(self) -> String {
        match self {
            SimConfig::Hdd(m) => format!(
                "hdd,rpm={},seek_ms={},track_ms={},mbps={}",
                m.rpm, m.seek_ms, m.track_ms, m.mbps
            ),
            SimConfig::Ssd(m) | SimConfig::Nvme(m) => format!(
                "{},channels={},read_us={},write_us={},mbps={},flush_us={}",
                self.class(),
                m.channels,
                m.read_us,
                m.write_us,
                m.mbps,
                m.flush_us
            ),
        }
    }

    /// The key parameters, for the namespace's model string.
    fn describe(&self) -> String {
        match self {
            SimConfig::Hdd(m) => format!(
                "{} rpm, {} ms avg seek, {} ms track-to-track, {} MB/s",
                m.rpm, m.seek_ms, m.track_ms, m.mbps
            ),
            SimConfig::Ssd(m) | SimConfig::Nvme(m) => {
                let mut text = format!(
                    "{} channels, read {} us, write {} us, {} MB/s per channel",
                    m.channels, m.read_us, m.write_us, m.mbps
                );
                if m.flush_us > 0.0 {
                    text.push_str(&format!(", flush {} us", m.flush_us));
                }
                text
            }
        }
    }
}

fn unknown_option(uri: &str, key: &str, class: DeviceClass, options: &str) -> NvmeError {
    NvmeError::uri(
        uri,
        format!("unknown option '{key}' for sim:{class} (options: {options})"),
    )
}

fn parse_number(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("'{text}' is not a number")),
    }
}

/// What the model needs to know about a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimKind {
    /// A Read: pays `read_us` on flash.
    Read,
    /// A Write, or the metadata write WriteZeroes and Trim are modelled as: pays `write_us` on
    /// flash.
    Write,
    /// A Flush: waits for everything scheduled before it and moves no data.
    Flush,
}

/// A command as the model sees it: byte offset and length on the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimOp {
    /// What the command costs like.
    pub kind: SimKind,
    /// Byte offset of the first byte on the namespace (LBA × block size); 0 for a Flush.
    pub offset: u64,
    /// Bytes transferred; 0 for a Flush.
    pub bytes: u64,
}

impl SimOp {
    /// A read of `bytes` bytes at byte `offset`.
    pub fn read(offset: u64, bytes: u64) -> SimOp {
        SimOp {
            kind: SimKind::Read,
            offset,
            bytes,
        }
    }

    /// A write of `bytes` bytes at byte `offset`.
    pub fn write(offset: u64, bytes: u64) -> SimOp {
        SimOp {
            kind: SimKind::Write,
            offset,
            bytes,
        }
    }

    /// A flush.
    pub fn flush() -> SimOp {
        SimOp {
            kind: SimKind::Flush,
            offset: 0,
            bytes: 0,
        }
    }

    fn of(cmd: &IoCmd, block_size: u64) -> SimOp {
        let offset = cmd.lba.saturating_mul(block_size);
        let bytes = cmd.blocks as u64 * block_size;
        match cmd.opcode {
            Opcode::Read => SimOp::read(offset, bytes),
            Opcode::Write => SimOp::write(offset, bytes),
            Opcode::WriteZeroes | Opcode::Trim => SimOp::write(offset, METADATA_BYTES),
            Opcode::Flush => SimOp::flush(),
        }
    }
}

/// When a command's service starts and finishes, in nanoseconds on the model's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// When the model began serving the command: its arrival, or later if the unit (the
    /// actuator, for a disk) was busy with earlier commands.
    pub start: u64,
    /// When the command is done; the simulated device completes it no earlier than this.
    pub finish: u64,
}

impl Service {
    /// Service time in nanoseconds, `finish - start`; the wait before `start` is not included.
    pub fn duration(&self) -> u64 {
        self.finish - self.start
    }
}

fn ns(value: f64, unit_ns: f64) -> u64 {
    (value * unit_ns).round() as u64
}

/// The disk model's state: where the head is and when the actuator is free.
#[derive(Clone, Debug)]
pub struct HddState {
    period_ns: u64,
    bytes_per_track: u64,
    tracks: u64,
    track_ns: f64,
    /// Full-stroke seek minus track-to-track.
    stroke_extra_ns: f64,
    busy_until: u64,
    head_track: u64,
}

impl HddState {
    /// A disk of `capacity_bytes`, idle, head on track 0.
    pub fn new(model: &HddModel, capacity_bytes: u64) -> HddState {
        let period_ns = ns(60.0 / model.rpm, 1e9).max(1);
        let bytes_per_track = ((model.mbps * 1e6) * (period_ns as f64 / 1e9))
            .round()
            .max(1.0) as u64;
        let track_ns = model.track_ms * 1e6;
        let full_stroke_ns = track_ns + (model.seek_ms * 1e6 - track_ns) * 15.0 / 8.0;
        HddState {
            period_ns,
            bytes_per_track,
            tracks: capacity_bytes.div_ceil(bytes_per_track).max(1),
            track_ns,
            stroke_extra_ns: full_stroke_ns - track_ns,
            busy_until: 0,
            head_track: 0,
        }
    }

    /// One rotation, in nanoseconds (at least 1).
    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    /// Bytes that pass under the head in one rotation at the media rate (at least 1).
    pub fn bytes_per_track(&self) -> u64 {
        self.bytes_per_track
    }

    /// Tracks the capacity spans (at least 1); seek distances are measured against it.
    pub fn tracks(&self) -> u64 {
        self.tracks
    }

    /// Nanoseconds of rotation from the start of track 0 to byte `x`. Its remainder modulo the
    /// period is the byte's angle, and differences are transfer times, so a transfer that starts
    /// exactly at its first byte's angle ends exactly at the next byte's: sequential commands
    /// chain without a rounding error costing them a rotation.
    fn rotation_ns(&self, x: u64) -> u64 {
        (x as u128 * self.period_ns as u128 / self.bytes_per_track as u128) as u64
    }

    /// Time to move the head over `distance` tracks.
    pub fn seek_ns(&self, distance: u64) -> u64 {
        if distance == 0 {
            return 0;
        }
        let fraction = (distance as f64 / self.tracks as f64).min(1.0);
        (self.track_ns + self.stroke_extra_ns * fraction.sqrt()).round() as u64
    }

    /// Time to transfer `bytes` starting at `offset` once the head is there.
    pub fn transfer_ns(&self, offset: u64, bytes: u64) -> u64 {
        self.rotation_ns(offset.saturating_add(bytes)) - self.rotation_ns(offset)
    }

    /// Serves `op`, which arrives at `now`, after everything scheduled before it.
    pub fn schedule(&mut self, now: u64, op: SimOp) -> Service {
        let start = now.max(self.busy_until);
        if op.kind == SimKind::Flush {
            return Service {
                start,
                finish: start,
            };
        }
        let track = op.offset / self.bytes_per_track;
        let at_track = start.saturating_add(self.seek_ns(track.abs_diff(self.head_track)));
        let period = self.period_ns;
        let first = self.rotation_ns(op.offset);
        let rotational_wait = (first % period + period - at_track % period) % period;
        let end = op.offset.saturating_add(op.bytes);
        let finish = at_track
            .saturating_add(rotational_wait)
            .saturating_add(self.rotation_ns(end) - first);
        self.busy_until = finish;
        self.head_track = end / self.bytes_per_track;
        Service { start, finish }
    }
}

/// The flash model's state: when each unit is free.
#[derive(Clone, Debug)]
pub struct FlashState {
    read_ns: u64,
    write_ns: u64,
    flush_ns: u64,
    ns_per_byte: f64,
    free_at: Vec<u64>,
}

impl FlashState {
    /// Every unit idle from time 0. Expects a model that passed the `sim:` range checks
    /// (positive `mbps`); a `channels` of 0 is treated as 1.
    pub fn new(model: &FlashModel) -> FlashState {
        FlashState {
            read_ns: ns(model.read_us, 1e3),
            write_ns: ns(model.write_us, 1e3),
            flush_ns: ns(model.flush_us, 1e3),
            ns_per_byte: 1e3 / model.mbps,
            free_at: vec![0; model.channels.max(1) as usize],
        }
    }

    /// Time one unit takes to move `bytes` bytes at its rate, in nanoseconds.
    pub fn transfer_ns(&self, bytes: u64) -> u64 {
        (bytes as f64 * self.ns_per_byte).round() as u64
    }

    /// Serves `op`, which arrives at `now`, on the unit free earliest.
    pub fn schedule(&mut self, now: u64, op: SimOp) -> Service {
        let fixed = match op.kind {
            SimKind::Read => self.read_ns,
            SimKind::Write => self.write_ns,
            SimKind::Flush => {
                let all_done = self.free_at.iter().copied().max().unwrap_or(0);
                let start = now.max(all_done);
                return Service {
                    start,
                    finish: start.saturating_add(self.flush_ns),
                };
            }
        };
        let mut unit = 0;
        for (i, &free) in self.free_at.iter().enumerate() {
            if free < self.free_at[unit] {
                unit = i;
            }
        }
        let start = now.max(self.free_at[unit]);
        let finish = start
            .saturating_add(fixed)
            .saturating_add(self.transfer_ns(op.bytes));
        self.free_at[unit] = finish;
        Service { start, finish }
    }
}

/// Either model, behind the namespace's lock.
#[derive(Clone, Debug)]
pub enum ModelState {
    /// The disk model.
    Hdd(HddState),
    /// The flash model, for both `ssd` and `nvme`.
    Flash(FlashState),
}

impl ModelState {
    /// The idle state of `config`'s model for a namespace of `capacity_bytes` bytes (only the
    /// disk model uses the capacity, for its geometry).
    pub fn new(config: &SimConfig, capacity_bytes: u64) -> ModelState {
        match config {
            SimConfig::Hdd(m) => ModelState::Hdd(HddState::new(m, capacity_bytes)),
            SimConfig::Ssd(m) | SimConfig::Nvme(m) => ModelState::Flash(FlashState::new(m)),
        }
    }

    /// Serves `op`, arriving at `now` (nanoseconds on the model's clock), after everything
    /// scheduled before it, and returns when it starts and finishes.
    #[inline]
    pub fn schedule(&mut self, now: u64, op: SimOp) -> Service {
        match self {
            ModelState::Hdd(state) => state.schedule(now, op),
            ModelState::Flash(state) => state.schedule(now, op),
        }
    }
}

impl Device {
    /// Wraps `inner` in a latency model configured programmatically; its URI is the `sim:` URI
    /// that would open the same thing. Fails on a parameter out of range, naming it.
    pub fn with_latency_model(inner: Device, config: SimConfig) -> Result<Device, NvmeError> {
        let uri = format!("sim:{}+{}", config.to_options(), inner.info().uri);
        config
            .check()
            .map_err(|(key, why)| NvmeError::uri(&uri, format!("option '{key}': {why}")))?;
        Ok(Device::from_namespace(Arc::new(SimNamespace::new(
            uri, inner, &config,
        ))))
    }
}

pub(crate) fn open(uri: &str, rest: &str) -> Result<Arc<dyn Namespace>, NvmeError> {
    let (options, inner_uri) = match rest.split_once('+') {
        Some((_, "")) => {
            return Err(NvmeError::uri(uri, "nothing after '+': missing inner URI"));
        }
        Some(split) => split,
        None => {
            return Err(NvmeError::uri(
                uri,
                "expected sim:CLASS[,key=value...]+INNER_URI, e.g. sim:hdd+mem:4G \
                 (classes: hdd, ssd, nvme)",
            ));
        }
    };
    let config = SimConfig::parse(uri, options)?;
    let inner = Device::open(inner_uri)?;
    Ok(Arc::new(SimNamespace::new(uri.to_string(), inner, &config)))
}

pub(crate) struct SimNamespace {
    info: NamespaceInfo,
    inner: Device,
    block_size: u64,
    epoch: Instant,
    model: Mutex<ModelState>,
}

impl SimNamespace {
    fn new(uri: String, inner: Device, config: &SimConfig) -> SimNamespace {
        let inner_info = inner.info();
        let mut info = inner_info.clone();
        info.uri = uri;
        info.class = config.class();
        info.model = format!(
            "{MODEL_PREFIX}{} ({}) over {}",
            config.class(),
            config.describe(),
            inner_info.model
        );
        let model = ModelState::new(config, inner_info.capacity_bytes());
        SimNamespace {
            block_size: info.block_size as u64,
            info,
            inner,
            epoch: Instant::now(),
            model: Mutex::new(model),
        }
    }

    /// The model's clock, in nanoseconds.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

impl Namespace for SimNamespace {
    fn info(&self) -> &NamespaceInfo {
        &self.info
    }

    fn wrapped(&self) -> Option<&Device> {
        Some(&self.inner)
    }

    fn create_queue_pair(
        self: Arc<Self>,
        depth: u32,
    ) -> Result<Box<dyn QueuePairBackend>, NvmeError> {
        let inner = self.inner.queue_pair(depth)?;
        // Grown on demand: a deep queue pair that is never filled costs nothing.
        let initial = (depth as usize).min(1024);
        Ok(Box::new(SimQueuePair {
            ns: self,
            inner,
            queued: Vec::with_capacity(initial),
            slots: Vec::with_capacity(initial),
            free: Vec::with_capacity(initial),
            ready: BinaryHeap::with_capacity(initial),
            reaped: Vec::with_capacity(initial),
        }))
    }

    fn fault_control(&self) -> Option<FaultControl> {
        self.inner.fault_control()
    }
}

/// A command in flight; its index is its tag on the inner queue pair.
struct Slot {
    caller_tag: u64,
    due: u64,
    /// The inner completion, once it arrived.
    done: Option<Completion>,
}

struct SimQueuePair {
    ns: Arc<SimNamespace>,
    inner: QueuePair,
    queued: Vec<IoCmd>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots whose inner completion arrived, earliest due first.
    ready: BinaryHeap<Reverse<(u64, u32)>>,
    reaped: Vec<Completion>,
}

/// Below this, `wait` yields instead of sleeping: a sleep overshoots by the kernel's timer slack
/// (50 µs by default), which would stretch the modelled latencies of fast devices.
const SLEEP_MIN: Duration = Duration::from_micros(100);
const TIMER_SLACK: Duration = Duration::from_micros(50);
/// Longest sleep in one `wait`, so a caller still polls other things now and then.
const SLEEP_MAX: Duration = Duration::from_millis(1);

impl SimQueuePair {
    /// Schedules every queued command and hands it to the inner queue pair.
    fn ring(&mut self, now: u64) {
        let SimQueuePair {
            ns,
            inner,
            queued,
            slots,
            free,
            ready,
            ..
        } = self;
        let mut model = lock(&ns.model);
        for mut cmd in queued.drain(..) {
            let due = model.schedule(now, SimOp::of(&cmd, ns.block_size)).finish;
            let slot = match free.pop() {
                Some(slot) => slot,
                None => {
                    slots.push(Slot {
                        caller_tag: 0,
                        due: 0,
                        done: None,
                    });
                    (slots.len() - 1) as u32
                }
            };
            let entry = &mut slots[slot as usize];
            entry.caller_tag = std::mem::replace(&mut cmd.tag, slot as u64);
            entry.due = due;
            if let Err(QueueFull(cmd)) = inner.submit(cmd) {
                // Cannot happen (the inner queue pair is as deep as this one); if it did, the
                // caller gets the command back failed rather than lost.
                entry.done = Some(cmd.complete(Status::INTERNAL_ERROR));
                ready.push(Reverse((due, slot)));
            }
        }
    }

    fn reap_inner(&mut self) -> Result<(), NvmeError> {
        self.inner.poll(usize::MAX, &mut self.reaped)?;
        for completion in self.reaped.drain(..) {
            let slot = completion.tag as u32;
            if let Some(entry) = self.slots.get_mut(slot as usize) {
                self.ready.push(Reverse((entry.due, slot)));
                entry.done = Some(completion);
            }
        }
        Ok(())
    }
}

impl QueuePairBackend for SimQueuePair {
    fn queue(&mut self, cmd: IoCmd) {
        self.queued.push(cmd);
    }

    fn poll(
        &mut self,
        max: usize,
        out: &mut Vec<Completion>,
        stats: &mut QueuePairStats,
    ) -> PollResult {
        let syscalls_before = self.inner.stats().syscalls;
        let mut now = None;
        if !self.queued.is_empty() {
            stats.record_doorbell(self.queued.len());
            let t = self.ns.now();
            self.ring(t);
            now = Some(t);
        }
        let reaped = if self.inner.outstanding() > 0 {
            self.reap_inner()
        } else {
            Ok(())
        };
        stats.syscalls += self.inner.stats().syscalls - syscalls_before;
        reaped?;
        if self.ready.is_empty() || max == 0 {
            return Ok(0);
        }
        let now = now.unwrap_or_else(|| self.ns.now());
        let mut n = 0;
        while n < max {
            match self.ready.peek() {
                Some(&Reverse((due, slot))) if due <= now => {
                    self.ready.pop();
                    let entry = &mut self.slots[slot as usize];
                    if let Some(mut completion) = entry.done.take() {
                        completion.tag = entry.caller_tag;
                        out.push(completion);
                        n += 1;
                    }
                    self.free.push(slot);
                }
                _ => break,
            }
        }
        Ok(n)
    }

    /// Sleeps until the earliest due completion, or waits on the inner device while it still
    /// holds commands.
    fn wait(&mut self, stats: &mut QueuePairStats) {
        if self.inner.outstanding() > 0 {
            self.inner.wait();
            return;
        }
        let Some(&Reverse((due, _))) = self.ready.peek() else {
            std::thread::yield_now();
            return;
        };
        let left = Duration::from_nanos(due.saturating_sub(self.ns.now()));
        if left >= SLEEP_MIN {
            std::thread::sleep((left - TIMER_SLACK).min(SLEEP_MAX));
            stats.waits += 1;
        } else {
            std::thread::yield_now();
        }
    }

    fn register_pool(&mut self, pool: &DmaPool) -> Result<bool, NvmeError> {
        self.inner.register_pool(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DmaBuf;
    use crate::conformance::{check_backend_fully, check_queue_depth_limits};
    use bluepoll_base::rand::Rng;

    const MS: u64 = 1_000_000;
    const US: u64 = 1_000;

    #[test]
    fn conforms_over_mem() {
        check_backend_fully("sim:nvme+mem:4M");
        check_backend_fully("sim:ssd,channels=2+mem:1M?block_size=512");
        check_backend_fully("sim:hdd,rpm=60000,seek_ms=0.05+mem:4M");
        check_backend_fully("sim:nvme+fault:mem:4M");
        check_queue_depth_limits("sim:hdd+mem:1M");
    }

    #[test]
    fn info_is_the_inner_devices_but_class_and_a_labelled_model() {
        let dev = Device::open("sim:hdd+mem:4G?class=nvme").unwrap();
        let info = dev.info();
        assert_eq!(info.class, DeviceClass::Hdd);
        assert_eq!(
            info.model,
            "simulated hdd (7200 rpm, 8.5 ms avg seek, 0.8 ms track-to-track, 200 MB/s) \
             over RAM namespace"
        );
        assert!(is_simulated(info));
        assert_eq!(info.uri, "sim:hdd+mem:4G?class=nvme");
        assert_eq!(info.capacity_bytes(), 4 << 30);
        assert!(!is_simulated(Device::open("mem:1M").unwrap().info()));

        let dev = Device::open("sim:nvme,read_us=20,flush_us=5+mem:1G").unwrap();
        assert_eq!(dev.info().class, DeviceClass::Nvme);
        assert_eq!(
            dev.info().model,
            "simulated nvme (8 channels, read 20 us, write 10 us, 3000 MB/s per channel, \
             flush 5 us) over RAM namespace"
        );

        // Stacks both ways; a fault: wrapper reports its own model, over the simulated one.
        let dev = Device::open("fault:sim:ssd+mem:1M").unwrap();
        assert!(dev.info().model.contains("simulated ssd"));
        let dev = Device::open("sim:ssd+fault:cache=off+mem:1M").unwrap();
        assert!(
            dev.fault_control().is_some(),
            "the inner injector is reachable"
        );
        assert_eq!(dev.info().class, DeviceClass::Ssd);
    }

    #[test]
    fn programmatic_model_has_a_reopenable_uri() {
        let model = HddModel {
            rpm: 5400.0,
            ..HddModel::default()
        };
        let dev =
            Device::with_latency_model(Device::open("mem:1G").unwrap(), SimConfig::Hdd(model))
                .unwrap();
        let again = Device::open(&dev.info().uri).unwrap();
        assert_eq!(again.info().model, dev.info().model);
        assert!(dev.info().model.contains("5400 rpm"));

        let mut bad = FlashModel::NVME;
        bad.channels = 0;
        let err = Device::with_latency_model(Device::open("mem:1M").unwrap(), SimConfig::Nvme(bad))
            .unwrap_err();
        assert!(err.to_string().contains("option 'channels'"), "{err}");
    }

    #[test]
    fn uri_options_parse() {
        let dev =
            Device::open("sim:hdd,rpm=5400,seek_ms=12,track_ms=500us,mbps=150+mem:1G").unwrap();
        assert!(
            dev.info()
                .model
                .contains("5400 rpm, 12 ms avg seek, 0.5 ms track-to-track, 150 MB/s")
        );
        // An average seek below the default track-to-track time caps the latter.
        let config = SimConfig::parse("u", "hdd,seek_ms=0.05").unwrap();
        let SimConfig::Hdd(m) = config else {
            panic!("{config:?}")
        };
        assert_eq!((m.seek_ms, m.track_ms), (0.05, 0.05));
        let config = SimConfig::parse("u", "ssd,channels=16,write_us=1ms").unwrap();
        assert_eq!(
            config,
            SimConfig::Ssd(FlashModel {
                channels: 16,
                write_us: 1000.0,
                ..FlashModel::SSD
            })
        );
    }

    #[test]
    fn bad_uris_name_the_problem() {
        for (uri, needle) in [
            ("sim:hdd", "expected sim:CLASS"),
            ("sim:hdd+", "missing inner URI"),
            (
                "sim:tape+mem:1M",
                "class 'tape' is not one of hdd, ssd, nvme",
            ),
            ("sim:+mem:1M", "class '' is not one of"),
            (
                "sim:hdd,rpm=fast+mem:1M",
                "option 'rpm': 'fast' is not a number",
            ),
            (
                "sim:hdd,rpm=0+mem:1M",
                "option 'rpm': 0 is not a positive number",
            ),
            ("sim:hdd,seek_ms=-1+mem:1M", "option 'seek_ms'"),
            ("sim:hdd,mbps=inf+mem:1M", "option 'mbps'"),
            (
                "sim:hdd,seek_ms=1,track_ms=2+mem:1M",
                "option 'track_ms': 2 exceeds",
            ),
            ("sim:hdd,rpm=1,rpm=2+mem:1M", "option 'rpm' given twice"),
            ("sim:hdd,rpm+mem:1M", "option 'rpm' is not key=value"),
            (
                "sim:hdd,colour=red+mem:1M",
                "unknown option 'colour' for sim:hdd",
            ),
            (
                "sim:nvme,rpm=5400+mem:1M",
                "unknown option 'rpm' for sim:nvme",
            ),
            (
                "sim:hdd,channels=2+mem:1M",
                "unknown option 'channels' for sim:hdd",
            ),
            (
                "sim:ssd,channels=0+mem:1M",
                "option 'channels': 0 is not from 1",
            ),
            (
                "sim:ssd,channels=x+mem:1M",
                "option 'channels': 'x' is not a whole",
            ),
            ("sim:nvme,read_us=10parsecs+mem:1M", "option 'read_us'"),
            ("sim:nvme+mem:1M?wat=1", "unknown parameter 'wat'"),
            ("sim:nvme+tape:1M", "unknown device scheme 'tape'"),
        ] {
            let err = Device::open(uri).unwrap_err().to_string();
            assert!(err.contains(needle), "{uri}: {err}");
        }
    }

    fn default_disk() -> HddState {
        HddState::new(&HddModel::default(), 4 << 30)
    }

    #[test]
    fn disk_geometry_follows_the_parameters() {
        let disk = default_disk();
        assert_eq!(disk.period_ns(), 8_333_333);
        // 200 MB/s over one 8.33 ms rotation.
        assert_eq!(disk.bytes_per_track(), 1_666_667);
        assert_eq!(disk.tracks(), (4u64 << 30).div_ceil(1_666_667));
        assert_eq!(disk.seek_ns(0), 0);
        assert_eq!(
            disk.seek_ns(1),
            800_000
                + (7_700_000.0 * 15.0 / 8.0 * (1.0 / disk.tracks() as f64).sqrt()).round() as u64
        );
        // Full stroke: track-to-track plus 15/8 of the rest of the average.
        assert_eq!(disk.seek_ns(disk.tracks()), 800_000 + 14_437_500);
        // 4 KiB at 200 MB/s.
        assert!(disk.transfer_ns(12_345 * 4096, 4096).abs_diff(20_480) <= 1);
    }

    #[test]
    fn random_reads_average_seek_plus_half_a_rotation_plus_transfer() {
        let mut disk = default_disk();
        let blocks = (4u64 << 30) / 4096;
        let mut rng = Rng::new(7);
        let mut now = 0;
        let samples = 20_000;
        let mut total = 0u64;
        for _ in 0..samples {
            // Arrive at a random moment after the previous read, so the platter's angle at
            // arrival is random too.
            now += rng.below(20 * MS);
            let service = disk.schedule(now, SimOp::read(rng.below(blocks) * 4096, 4096));
            assert_eq!(
                service.start, now,
                "each read arrives after the last finished"
            );
            total += service.duration();
            now = service.finish;
        }
        let mean_ms = total as f64 / samples as f64 / 1e6;
        let expected_ms = 8.5 + 8.333_333 / 2.0 + 4096.0 / 200e6 * 1e3;
        assert!(
            (mean_ms / expected_ms - 1.0).abs() < 0.03,
            "mean {mean_ms:.3} ms, model says {expected_ms:.3} ms"
        );
    }

    #[test]
    fn sequential_writes_issued_together_cost_only_their_transfer() {
        let mut disk = default_disk();
        let len = 64 * 1024;
        let base = 1000 * 4096;
        let first = disk.schedule(5 * MS, SimOp::write(base, len));
        let mut previous = first;
        // 64 commands cross track boundaries: those are free too (track skew).
        for i in 1..64 {
            let offset = base + i * len;
            let s = disk.schedule(5 * MS, SimOp::write(offset, len));
            assert_eq!(s.start, previous.finish);
            assert_eq!(s.duration(), disk.transfer_ns(offset, len), "command {i}");
            assert!(s.duration().abs_diff(327_680) <= 1, "64 KiB at 200 MB/s");
            previous = s;
        }
        assert!(64 * len > disk.bytes_per_track());
        // The first paid for getting there: a seek and some rotation.
        assert!(first.duration() > disk.transfer_ns(base, len) + disk.seek_ns(1));
    }

    #[test]
    fn a_sequential_write_that_arrives_late_waits_for_the_next_rotation() {
        let mut disk = default_disk();
        let first = disk.schedule(0, SimOp::write(0, 4096));
        let late = disk.schedule(first.finish + 100 * US, SimOp::write(4096, 4096));
        assert_eq!(late.start, first.finish + 100 * US);
        assert_eq!(
            late.duration(),
            disk.period_ns() - 100 * US + disk.transfer_ns(4096, 4096)
        );
        // On time, the same write costs only its transfer.
        let mut disk = default_disk();
        let first = disk.schedule(0, SimOp::write(0, 4096));
        let on_time = disk.schedule(first.finish, SimOp::write(4096, 4096));
        assert_eq!(on_time.duration(), disk.transfer_ns(4096, 4096));
    }

    #[test]
    fn disk_serves_in_doorbell_order_and_flush_waits_for_all_before_it() {
        let mut disk = default_disk();
        let a = disk.schedule(0, SimOp::read(3 << 30, 4096));
        let b = disk.schedule(0, SimOp::read(0, 4096));
        assert_eq!(b.start, a.finish);
        let flush = disk.schedule(10, SimOp::flush());
        assert_eq!((flush.start, flush.finish), (b.finish, b.finish));
        // Nothing left: a flush is immediate.
        let idle = disk.schedule(b.finish + MS, SimOp::flush());
        assert_eq!(idle.duration(), 0);
    }

    #[test]
    fn trim_and_write_zeroes_cost_a_small_write() {
        let op = SimOp::of(&IoCmd::trim(10, 100_000, 1), 4096);
        assert_eq!(op, SimOp::write(40_960, 4096));
        let op = SimOp::of(&IoCmd::write_zeroes(10, 8, 1), 512);
        assert_eq!(op, SimOp::write(5120, 4096));
        assert_eq!(SimOp::of(&IoCmd::flush(1), 4096).kind, SimKind::Flush);
    }

    #[test]
    fn nvme_channels_run_in_parallel() {
        let mut flash = FlashState::new(&FlashModel::NVME);
        let transfer = flash.transfer_ns(4096);
        assert_eq!(transfer, 1365, "4 KiB at 3000 MB/s");
        for i in 0..8 {
            let s = flash.schedule(0, SimOp::read(i * 4096, 4096));
            assert_eq!((s.start, s.finish), (0, 10 * US + transfer));
        }
        // The ninth queues behind one of them.
        let ninth = flash.schedule(0, SimOp::read(0, 4096));
        assert_eq!(ninth.start, 10 * US + transfer);
        assert_eq!(ninth.finish, 2 * (10 * US + transfer));
        // A flush completes when all of them are done.
        let flush = flash.schedule(1, SimOp::flush());
        assert_eq!(flush.finish, ninth.finish);
    }

    #[test]
    fn ssd_writes_and_flush_cost() {
        let mut model = FlashModel::SSD;
        model.flush_us = 7.0;
        let mut flash = FlashState::new(&model);
        let w = flash.schedule(MS, SimOp::write(0, 1 << 20));
        assert_eq!(w.duration(), 30 * US + 2_097_152, "1 MiB at 500 MB/s");
        let flush = flash.schedule(MS, SimOp::flush());
        assert_eq!(flush.finish, w.finish + 7 * US);
    }

    /// The model's clock is `Instant`: a completion handed back is at least its service time
    /// after the poll that rang its doorbell, which started after `before`.
    #[test]
    fn completions_wait_for_their_due_time() {
        let dev = Device::open("sim:nvme,read_us=20ms+mem:1M").unwrap();
        let mut qp = dev.queue_pair(4).unwrap();
        let before = Instant::now();
        let c = qp
            .execute(IoCmd::read(0, 1, DmaBuf::new(4096).unwrap(), 5))
            .unwrap();
        assert!(c.status.is_success());
        assert_eq!(c.tag, 5);
        assert!(before.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn queue_pairs_share_the_model() {
        // One unit: the second queue pair's read waits for the first's.
        let dev = Device::open("sim:ssd,channels=1,read_us=10ms+mem:1M").unwrap();
        let mut a = dev.queue_pair(1).unwrap();
        let mut b = dev.queue_pair(1).unwrap();
        let before = Instant::now();
        a.submit(IoCmd::read(0, 1, DmaBuf::new(4096).unwrap(), 1))
            .unwrap();
        b.submit(IoCmd::read(1, 1, DmaBuf::new(4096).unwrap(), 2))
            .unwrap();
        let mut out = Vec::new();
        a.poll(0, &mut out).unwrap();
        b.poll(0, &mut out).unwrap();
        b.drain(&mut out).unwrap();
        assert!(before.elapsed() >= Duration::from_millis(20));
        a.drain(&mut out).unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn completions_come_back_in_due_order() {
        // Two units at 1 MB/s: the 64 KiB read takes 65 ms, the 4 KiB one 4 ms.
        let dev = Device::open("sim:nvme,channels=2,read_us=0,mbps=1+mem:1M").unwrap();
        let mut qp = dev.queue_pair(4).unwrap();
        qp.submit(IoCmd::read(0, 16, DmaBuf::new(65536).unwrap(), 1))
            .unwrap();
        qp.submit(IoCmd::read(0, 1, DmaBuf::new(4096).unwrap(), 2))
            .unwrap();
        let mut out = Vec::new();
        qp.drain(&mut out).unwrap();
        let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        assert_eq!(tags, [2, 1]);
    }
}
