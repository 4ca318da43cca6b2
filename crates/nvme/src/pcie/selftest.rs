//! Checks of the driver against a live controller, and of what it left on the medium.
//!
//! The QEMU harness (scripts/qemu-nvme-test.sh) runs them in three steps: `prepare_image`
//! writes a known pattern into the backing file before boot, `run_device_checks` runs inside the
//! guest against the controller QEMU emulates over that file, and after power-off
//! `check_image` finds the guest's writes in the file at the right offsets. The same device
//! checks run against a real controller (they overwrite its first 48 MiB).
//!
//! Every region of the plan is a byte range of the namespace; its content is a pure function of
//! a seed and the absolute byte position, so host and guest agree on it without sharing state.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::PcieNamespace;
use crate::command::{Completion, IoCmd, Status};
use crate::device::{Device, QueuePair};
use crate::dma::{DmaBuf, DmaPool};
use crate::error::NvmeError;
use crate::uri::split_scheme;
use bluepoll_base::rand::{Rng, splitmix};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// A byte range of the namespace with a pattern seed.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// What the region exercises, as reports name it.
    pub name: &'static str,
    /// Namespace byte offset of its first byte; a multiple of 1 MiB.
    pub offset: u64,
    /// Length in bytes; whole 4 KiB blocks.
    pub len: u64,
    /// Seed of its content ([`fill_pattern`]).
    pub seed: u64,
}

/// Written by the host before boot, read by the guest.
pub const HOST_PATTERN: Region = Region {
    name: "host pattern",
    offset: MIB,
    len: 256 * KIB,
    seed: 0x484f_5354,
};
/// One block (4 KiB on the QEMU run).
pub const GUEST_SINGLE: Region = Region {
    name: "single block",
    offset: 2 * MIB,
    len: 4 * KIB,
    seed: 1,
};
/// More than two pages: PRP2 points at a PRP list.
pub const GUEST_PRP_LIST: Region = Region {
    name: "PRP list",
    offset: 3 * MIB,
    len: 64 * KIB,
    seed: 2,
};
/// Larger than the controller's transfer limit (the harness gives QEMU mdts=9, 2 MiB): the
/// driver splits it into several commands.
pub const GUEST_SPLIT: Region = Region {
    name: "split at MDTS",
    offset: 4 * MIB,
    len: 3 * MIB,
    seed: 3,
};
/// Written from 512 bytes into its buffer, so PRP1 carries an offset into its page; at 2 MiB
/// (one command under the harness's MDTS) the PRP list that follows is used to its last entry.
pub const GUEST_UNALIGNED: Region = Region {
    name: "buffer offset, full PRP list",
    offset: 8 * MIB,
    len: 2 * MIB,
    seed: 4,
};
/// Offset into the buffer for GUEST_UNALIGNED.
const UNALIGNED_BUF_OFFSET: usize = 512;
/// Written, then zeroed with Write Zeroes.
pub const GUEST_ZEROED: Region = Region {
    name: "write zeroes",
    offset: 10 * MIB,
    len: 64 * KIB,
    seed: 5,
};
/// Written, then deallocated with Dataset Management.
pub const GUEST_TRIMMED: Region = Region {
    name: "trim",
    offset: 11 * MIB,
    len: 64 * KIB,
    seed: 6,
};

// The split region must exceed the harness's MDTS (2 MiB), the PRP-list one two pages.
const _: () = assert!(GUEST_SPLIT.len > 2 * MIB && GUEST_PRP_LIST.len > 2 * 4096);

/// Random I/O with verification, one half per queue pair.
const RANDOM_AREA: (u64, u64) = (16 * MIB, 32 * MIB);

/// Where the guest's writes must be found after power-off, and what they must hold (`true`:
/// zeroes; the host fills those regions with a pattern first, so zeroes prove the guest acted).
const PERSISTED: [(Region, bool); 6] = [
    (GUEST_SINGLE, false),
    (GUEST_PRP_LIST, false),
    (GUEST_SPLIT, false),
    (GUEST_UNALIGNED, false),
    (GUEST_ZEROED, true),
    (GUEST_TRIMMED, true),
];

/// Random I/Os in the two-queue-pair check (split between the two).
const RANDOM_IOS: u32 = 10_000;

/// Fills `out` with the pattern of `seed` for the bytes starting at namespace offset `offset`
/// (8-byte aligned): each 8-byte word is a hash of the seed and its position.
pub fn fill_pattern(seed: u64, offset: u64, out: &mut [u8]) {
    debug_assert!(offset % 8 == 0 && out.len() % 8 == 0);
    for (i, word) in out.chunks_exact_mut(8).enumerate() {
        let position = offset / 8 + i as u64;
        word.copy_from_slice(&splitmix(seed.rotate_left(32) ^ position).to_le_bytes());
    }
}

/// Where `actual` first differs from the pattern, as a namespace byte offset.
fn first_mismatch(seed: u64, offset: u64, actual: &[u8]) -> Option<u64> {
    let mut expected = vec![0u8; actual.len()];
    fill_pattern(seed, offset, &mut expected);
    actual
        .iter()
        .zip(&expected)
        .position(|(a, e)| a != e)
        .map(|i| offset + i as u64)
}

/// How one check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The device did what the check expects.
    Pass,
    /// It did not; the check's detail says what was seen.
    Fail,
    /// The device lacks what the check needs (an optional command).
    Skip,
}

/// One check's result.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What was measured on a pass, what went wrong on a failure, why it was skipped.
    pub detail: String,
}

/// The result of a run: one line per check.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// In the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    fn record(&mut self, name: &str, result: Result<String, String>) {
        let (outcome, detail) = match result {
            Ok(detail) => (Outcome::Pass, detail),
            Err(detail) => (Outcome::Fail, detail),
        };
        self.checks.push(Check {
            name: name.to_string(),
            outcome,
            detail,
        });
    }

    fn skip(&mut self, name: &str, why: &str) {
        self.checks.push(Check {
            name: name.to_string(),
            outcome: Outcome::Skip,
            detail: why.to_string(),
        });
    }

    /// How many checks ended with `outcome`; a run passed when `count(Outcome::Fail)` is 0.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.checks.iter().filter(|c| c.outcome == outcome).count()
    }

    /// One line per check: `ok`, `FAIL` or `skip`, the name, the detail.
    pub fn lines(&self) -> Vec<String> {
        self.checks
            .iter()
            .map(|c| {
                let mark = match c.outcome {
                    Outcome::Pass => "ok  ",
                    Outcome::Fail => "FAIL",
                    Outcome::Skip => "skip",
                };
                format!("{mark} {}: {}", c.name, c.detail)
            })
            .collect()
    }
}

/// What the controller should report, when the caller knows (the QEMU command line).
#[derive(Clone, Debug, Default)]
pub struct Expectations {
    /// The controller's serial number, compared exactly; `None` accepts any.
    pub serial: Option<String>,
    /// Namespace size in bytes; `None` accepts any.
    pub capacity_bytes: Option<u64>,
    /// Logical block size in bytes; `None` accepts any.
    pub block_size: Option<u32>,
}

fn image_file(path: &Path, write: bool) -> Result<File, NvmeError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| NvmeError::io(path, e))
}

/// Writes the host pattern into a raw image before the guest boots.
pub fn prepare_image(path: &Path) -> Result<(), NvmeError> {
    let file = image_file(path, true)?;
    let size = file.metadata().map_err(|e| NvmeError::io(path, e))?.len();
    if size < RANDOM_AREA.0 + RANDOM_AREA.1 {
        return Err(NvmeError::Unsupported {
            path: path.into(),
            reason: format!(
                "image is {size} bytes; the self-test needs at least {}",
                RANDOM_AREA.0 + RANDOM_AREA.1
            ),
        });
    }
    let zeroed = PERSISTED
        .iter()
        .filter(|(_, zeroed)| *zeroed)
        .map(|(r, _)| r);
    for region in [&HOST_PATTERN].into_iter().chain(zeroed) {
        let mut data = vec![0u8; region.len as usize];
        fill_pattern(HOST_PATTERN.seed, region.offset, &mut data);
        file.write_all_at(&data, region.offset)
            .map_err(|e| NvmeError::io(path, e))?;
    }
    file.sync_all().map_err(|e| NvmeError::io(path, e))
}

/// Checks, after the guest powered off, that its writes are in the image where they belong.
pub fn check_image(path: &Path) -> Result<Report, NvmeError> {
    let file = image_file(path, false)?;
    let mut report = Report::default();
    for (region, zeroed) in [(HOST_PATTERN, false)].into_iter().chain(PERSISTED) {
        let mut data = vec![0u8; region.len as usize];
        file.read_exact_at(&mut data, region.offset)
            .map_err(|e| NvmeError::io(path, e))?;
        let result = if zeroed {
            match data.iter().position(|&b| b != 0) {
                None => Ok(format!(
                    "{} bytes of zeroes at {:#x}",
                    region.len, region.offset
                )),
                Some(i) => Err(format!(
                    "byte {:#x} is {:#04x}, not zero",
                    region.offset + i as u64,
                    data[i]
                )),
            }
        } else {
            match first_mismatch(region.seed, region.offset, &data) {
                None => Ok(format!(
                    "{} bytes at {:#x} as written",
                    region.len, region.offset
                )),
                Some(at) => Err(format!("differs from what was written at byte {at:#x}")),
            }
        };
        report.record(&format!("image: {}", region.name), result);
    }
    Ok(report)
}

/// The pcie namespace behind a `pcie:` URI, opened for the checks.
fn open_pcie(uri: &str) -> Result<Arc<PcieNamespace>, NvmeError> {
    match split_scheme(uri)? {
        ("pcie", rest) => Ok(Arc::new(PcieNamespace::open(uri, rest)?)),
        (scheme, _) => Err(NvmeError::uri(
            uri,
            format!("the driver self-test runs on pcie: devices, not {scheme}:"),
        )),
    }
}

/// Runs one command and insists on success.
fn run(qp: &mut QueuePair, cmd: IoCmd) -> Result<Completion, String> {
    let what = format!("{} of {} blocks at LBA {}", cmd.opcode, cmd.blocks, cmd.lba);
    let done = qp.execute(cmd).map_err(|e| format!("{what}: {e}"))?;
    if done.status.is_success() {
        Ok(done)
    } else {
        Err(format!("{what}: {}", done.status))
    }
}

struct Session {
    ns: Arc<PcieNamespace>,
    device: Device,
    qp: QueuePair,
    pool: DmaPool,
    block_size: u64,
}

impl Session {
    fn blocks(&self, region: &Region) -> (u64, u32) {
        (
            region.offset / self.block_size,
            (region.len / self.block_size) as u32,
        )
    }

    fn write_region(&mut self, region: &Region, buf_offset: usize) -> Result<(), String> {
        let mut buf = self.pool.alloc().map_err(|e| e.to_string())?;
        let len = region.len as usize;
        fill_pattern(
            region.seed,
            region.offset,
            &mut buf[buf_offset..buf_offset + len],
        );
        let (lba, blocks) = self.blocks(region);
        let cmd = IoCmd::write(lba, blocks, buf, 0).with_buf_offset(buf_offset as u32);
        run(&mut self.qp, cmd).map(drop)
    }

    /// Reads a region into a poisoned buffer and returns its bytes.
    fn read_region(&mut self, region: &Region, buf_offset: usize) -> Result<Vec<u8>, String> {
        let mut buf = self.pool.alloc().map_err(|e| e.to_string())?;
        buf.fill(0xee);
        let (lba, blocks) = self.blocks(region);
        let cmd = IoCmd::read(lba, blocks, buf, 0).with_buf_offset(buf_offset as u32);
        let done = run(&mut self.qp, cmd)?;
        let buf = done.buf.ok_or("the read's buffer did not come back")?;
        Ok(buf[buf_offset..buf_offset + region.len as usize].to_vec())
    }

    fn verify_region(&mut self, region: &Region, buf_offset: usize) -> Result<String, String> {
        let data = self.read_region(region, buf_offset)?;
        match first_mismatch(region.seed, region.offset, &data) {
            None => Ok(format!(
                "{} bytes at {:#x} read back intact",
                region.len, region.offset
            )),
            Some(at) => Err(format!("read back differs at byte {at:#x}")),
        }
    }

    fn expect_zeroes(&mut self, region: &Region) -> Result<(), String> {
        let data = self.read_region(region, 0)?;
        match data.iter().position(|&b| b != 0) {
            None => Ok(()),
            Some(i) => Err(format!(
                "byte {:#x} reads {:#04x}, not zero",
                region.offset + i as u64,
                data[i]
            )),
        }
    }
}

/// Runs every driver check against the controller at `uri`. Overwrites the namespace's first
/// 48 MiB.
pub fn run_device_checks(uri: &str, expect: &Expectations) -> Result<Report, NvmeError> {
    let ns = open_pcie(uri)?;
    let device = Device::from_namespace(ns.clone());
    let info = device.info().clone();
    let mut report = Report::default();

    let identity = (|| {
        if let Some(serial) = &expect.serial
            && &info.serial != serial
        {
            return Err(format!("serial '{}', expected '{serial}'", info.serial));
        }
        if let Some(bs) = expect.block_size
            && info.block_size != bs
        {
            return Err(format!("block size {}, expected {bs}", info.block_size));
        }
        if let Some(bytes) = expect.capacity_bytes
            && info.capacity_bytes() != bytes
        {
            return Err(format!(
                "namespace of {} bytes, expected {bytes}",
                info.capacity_bytes()
            ));
        }
        Ok(format!(
            "serial '{}', {} blocks of {} bytes, {}; {} blocks per command; {} I/O queues",
            info.serial,
            info.capacity_blocks,
            info.block_size,
            info.model,
            ns.max_blocks_per_command(),
            ns.io_queue_limit()
        ))
    })();
    report.record("identify", identity);

    let needed = RANDOM_AREA.0 + RANDOM_AREA.1;
    if info.capacity_bytes() < needed || info.block_size > 4096 {
        report.record(
            "plan",
            Err(format!(
                "needs a namespace of at least {needed} bytes with blocks of at most 4 KiB"
            )),
        );
        return Ok(report);
    }

    let qp = device.queue_pair(32)?;
    let pool = DmaPool::new(4 * MIB as usize, 8)?;
    let mut s = Session {
        ns: ns.clone(),
        device: device.clone(),
        qp,
        pool,
        block_size: info.block_size as u64,
    };
    s.qp.register_pool(&s.pool)?;

    report.record(
        "read host pattern",
        s.verify_region(&HOST_PATTERN, 0)
            .map(|d| format!("{d} (written by the host before boot)")),
    );
    for (region, buf_offset) in [
        (GUEST_SINGLE, 0),
        (GUEST_PRP_LIST, 0),
        (GUEST_SPLIT, 0),
        (GUEST_UNALIGNED, UNALIGNED_BUF_OFFSET),
    ] {
        let handed_over = s.qp.stats().doorbell_commands;
        let result = s.write_region(&region, buf_offset).and_then(|()| {
            // Counted on the write alone: how many NVMe commands it became.
            let commands = s.qp.stats().doorbell_commands - handed_over;
            s.verify_region(&region, buf_offset)
                .map(|d| {
                    let plural = if commands == 1 { "" } else { "s" };
                    format!("{d}; the write took {commands} NVMe command{plural}")
                })
                .map(|d| (d, commands))
        });
        let per_command = ns.max_blocks_per_command() as u64 * s.block_size;
        let expected_commands = region.len.div_ceil(per_command);
        let result = result.and_then(|(detail, commands)| {
            if region.name == GUEST_SPLIT.name && expected_commands < 2 {
                Err(format!(
                    "the controller takes {per_command} bytes per command, so {} bytes were \
                     not split: start it with a smaller MDTS",
                    region.len
                ))
            } else if commands != expected_commands {
                Err(format!(
                    "{detail}, expected {expected_commands} (at most {per_command} bytes each)"
                ))
            } else {
                Ok(detail)
            }
        });
        report.record(&format!("write/read {}", region.name), result);
    }

    if info.ops.write_zeroes {
        let result = s.write_region(&GUEST_ZEROED, 0).and_then(|()| {
            let (lba, blocks) = s.blocks(&GUEST_ZEROED);
            run(&mut s.qp, IoCmd::write_zeroes(lba, blocks, 0))?;
            s.expect_zeroes(&GUEST_ZEROED)?;
            Ok(format!("{} bytes read back as zeroes", GUEST_ZEROED.len))
        });
        report.record("write zeroes", result);
    } else {
        report.skip(
            "write zeroes",
            "the controller does not support Write Zeroes",
        );
    }

    if info.ops.trim {
        let result = s.write_region(&GUEST_TRIMMED, 0).and_then(|()| {
            let (lba, blocks) = s.blocks(&GUEST_TRIMMED);
            run(&mut s.qp, IoCmd::trim(lba, blocks, 0))?;
            if info.trim_reads_zeroes {
                s.expect_zeroes(&GUEST_TRIMMED)?;
                Ok("deallocated range reads back as zeroes (DLFEAT)".to_string())
            } else {
                Ok("deallocate completed; the controller does not promise zeroes".to_string())
            }
        });
        report.record("trim", result);
    } else {
        report.skip("trim", "the controller does not support Dataset Management");
    }

    report.record(
        "flush",
        run(&mut s.qp, IoCmd::flush(0)).map(|_| {
            format!(
                "completed (volatile write cache: {})",
                info.volatile_write_cache
            )
        }),
    );

    report.record("LBA beyond the namespace", out_of_range(&s, &info));
    report.record("unregistered buffer", unregistered_buffer(&mut s));
    report.record("doorbell batching", doorbell_batching(&mut s));
    report.record("two queue pairs, random verify", two_queue_pairs(&s));
    Ok(report)
}

/// The controller itself (the device layer's validation bypassed) must fail a read past the end.
fn out_of_range(s: &Session, info: &crate::NamespaceInfo) -> Result<String, String> {
    use crate::device::QueuePairBackend;
    let mut raw = s.ns.raw_queue_pair(4).map_err(|e| e.to_string())?;
    raw.register_pool(&s.pool).map_err(|e| e.to_string())?;
    let mut stats = crate::QueuePairStats::default();
    let mut statuses = Vec::new();
    for (lba, blocks) in [(info.capacity_blocks, 1), (info.capacity_blocks - 1, 2)] {
        let buf = s.pool.alloc().map_err(|e| e.to_string())?;
        raw.queue(IoCmd::read(lba, blocks, buf, lba));
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.is_empty() {
            raw.poll(1, &mut out, &mut stats)
                .map_err(|e| e.to_string())?;
            if Instant::now() > deadline {
                return Err("no completion within 30 s".into());
            }
        }
        let status = out[0].status;
        if status != Status::LBA_OUT_OF_RANGE {
            return Err(format!(
                "read of {blocks} blocks at LBA {lba} (capacity {}) completed with {status}, \
                 expected LBA Out of Range",
                info.capacity_blocks
            ));
        }
        statuses.push(format!("LBA {lba}+{blocks}: {status}"));
    }
    if stats.doorbells == 0 {
        return Err("the commands never reached the controller".into());
    }
    Ok(format!("controller refused {}", statuses.join("; ")))
}

/// A buffer whose pool is not mapped in the IOMMU never reaches the device.
fn unregistered_buffer(s: &mut Session) -> Result<String, String> {
    let before = *s.qp.stats();
    let buf = DmaBuf::new(4096).map_err(|e| e.to_string())?;
    let blocks = (4096 / s.block_size) as u32;
    let done =
        s.qp.execute(IoCmd::read(0, blocks, buf, 0))
            .map_err(|e| e.to_string())?;
    let after = *s.qp.stats();
    if done.status != Status::DATA_TRANSFER_ERROR {
        return Err(format!(
            "completed with {}, expected Data Transfer Error",
            done.status
        ));
    }
    if after.doorbell_commands != before.doorbell_commands {
        return Err("the command was handed to the controller".into());
    }
    Ok(format!(
        "refused with {} before reaching the device",
        done.status
    ))
}

/// At queue depth 16, one SQ doorbell write must cover several commands.
fn doorbell_batching(s: &mut Session) -> Result<String, String> {
    const DEPTH: usize = 16;
    const IOS: usize = 2000;
    let mut qp = s
        .device
        .queue_pair(DEPTH as u32)
        .map_err(|e| e.to_string())?;
    let pool = DmaPool::new(4096, DEPTH).map_err(|e| e.to_string())?;
    qp.register_pool(&pool).map_err(|e| e.to_string())?;
    let blocks = (4096 / s.block_size) as u32;
    let area_blocks = RANDOM_AREA.1 / s.block_size / blocks as u64;
    let first = RANDOM_AREA.0 / s.block_size;
    let mut rng = Rng::new(7);
    let mut free: Vec<DmaBuf> = (0..DEPTH)
        .map(|_| pool.alloc())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let (mut issued, mut done) = (0, 0);
    let mut out = Vec::new();
    while done < IOS {
        while issued < IOS
            && let Some(buf) = free.pop()
        {
            let lba = first + rng.below(area_blocks) * blocks as u64;
            qp.submit(IoCmd::read(lba, blocks, buf, 0))
                .map_err(|e| e.to_string())?;
            issued += 1;
        }
        out.clear();
        qp.poll(usize::MAX, &mut out).map_err(|e| e.to_string())?;
        for c in out.drain(..) {
            if !c.status.is_success() {
                return Err(format!("read failed: {}", c.status));
            }
            done += 1;
            free.extend(c.buf);
        }
    }
    let stats = qp.stats();
    let per_command = stats.doorbells as f64 / stats.doorbell_commands.max(1) as f64;
    let summary = format!(
        "{} commands, {} SQ doorbell writes: {per_command:.3} per command at QD {DEPTH}",
        stats.doorbell_commands, stats.doorbells
    );
    if per_command < 1.0 && stats.doorbell_commands == IOS as u64 {
        Ok(summary)
    } else {
        Err(summary)
    }
}

/// Random mixed reads and writes with verification on two queue pairs, each on its own thread
/// and its own half of the area.
fn two_queue_pairs(s: &Session) -> Result<String, String> {
    let half = RANDOM_AREA.1 / 2;
    let workers: Vec<_> = (0..2u64)
        .map(|i| {
            let device = s.device.clone();
            let block_size = s.block_size;
            std::thread::spawn(move || {
                random_verify(
                    &device,
                    block_size,
                    RANDOM_AREA.0 + i * half,
                    half,
                    RANDOM_IOS / 2,
                    100 + i,
                )
            })
        })
        .collect();
    let mut totals = RandomTotals::default();
    let mut errors = Vec::new();
    for worker in workers {
        match worker.join() {
            Ok(Ok(t)) => totals.add(&t),
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a worker panicked".into()),
        }
    }
    let summary = format!(
        "{} I/Os ({} writes, {} reads, {} reads verified), {} errors",
        totals.ios,
        totals.writes,
        totals.reads,
        totals.verified,
        totals.errors + errors.len() as u64
    );
    // Half the I/Os are reads and about half of those land on blocks already written: insist
    // that a good share was actually compared.
    if errors.is_empty()
        && totals.errors == 0
        && totals.ios == RANDOM_IOS as u64
        && totals.verified * 10 >= totals.reads
        && totals.verified > 0
    {
        Ok(summary)
    } else {
        Err(format!("{summary}: {}", errors.join("; ")))
    }
}

#[derive(Default)]
struct RandomTotals {
    ios: u64,
    writes: u64,
    reads: u64,
    verified: u64,
    errors: u64,
}

impl RandomTotals {
    fn add(&mut self, o: &RandomTotals) {
        self.ios += o.ios;
        self.writes += o.writes;
        self.reads += o.reads;
        self.verified += o.verified;
        self.errors += o.errors;
    }
}

/// One queue pair's share: I/Os of 1–8 blocks at queue depth 8, never two at once on the same
/// block, every read compared with the last write of each block.
fn random_verify(
    device: &Device,
    block_size: u64,
    offset: u64,
    len: u64,
    ios: u32,
    seed: u64,
) -> Result<RandomTotals, String> {
    const DEPTH: usize = 8;
    const MAX_BLOCKS: u64 = 8;
    let mut qp = device.queue_pair(DEPTH as u32).map_err(|e| e.to_string())?;
    let pool =
        DmaPool::new((MAX_BLOCKS * block_size) as usize, DEPTH).map_err(|e| e.to_string())?;
    qp.register_pool(&pool).map_err(|e| e.to_string())?;
    let first = offset / block_size;
    let blocks_total = len / block_size;
    // generation[b] = 0: never written here; otherwise the seed of its last write.
    let mut generation = vec![0u64; blocks_total as usize];
    let mut busy = vec![false; blocks_total as usize];
    // In flight: tag -> (start block index, count, is_write)
    let mut inflight: Vec<Option<(u64, u64, bool)>> = vec![None; DEPTH];
    let mut rng = Rng::new(seed);
    let mut totals = RandomTotals::default();
    let mut issued = 0u32;
    let mut out = Vec::new();
    let mut next_generation = 1u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while totals.ios < ios as u64 {
        for (tag, slot) in inflight.iter_mut().enumerate() {
            if slot.is_some() || issued >= ios {
                continue;
            }
            let count = 1 + rng.below(MAX_BLOCKS);
            let start = rng.below(blocks_total - count + 1);
            let range = start as usize..(start + count) as usize;
            if busy[range.clone()].iter().any(|&b| b) {
                continue;
            }
            let mut buf = pool.alloc().map_err(|e| e.to_string())?;
            let is_write = rng.below(2) == 0;
            let lba = first + start;
            let cmd = if is_write {
                let generation_seed = seed << 32 | next_generation;
                next_generation += 1;
                for (i, block) in range.clone().enumerate() {
                    generation[block] = generation_seed;
                    let at = i * block_size as usize;
                    fill_pattern(
                        generation_seed,
                        (first + block as u64) * block_size,
                        &mut buf[at..at + block_size as usize],
                    );
                }
                IoCmd::write(lba, count as u32, buf, tag as u64)
            } else {
                // Poisoned, so a read that transfers nothing cannot pass for the old contents.
                buf.fill(0xee);
                IoCmd::read(lba, count as u32, buf, tag as u64)
            };
            busy[range].iter_mut().for_each(|b| *b = true);
            *slot = Some((start, count, is_write));
            qp.submit(cmd).map_err(|e| e.to_string())?;
            issued += 1;
        }
        out.clear();
        qp.poll(usize::MAX, &mut out).map_err(|e| e.to_string())?;
        for c in out.drain(..) {
            let Some((start, count, is_write)) =
                inflight.get_mut(c.tag as usize).and_then(Option::take)
            else {
                return Err(format!("completion with unknown tag {}", c.tag));
            };
            totals.ios += 1;
            busy[start as usize..(start + count) as usize]
                .iter_mut()
                .for_each(|b| *b = false);
            if !c.status.is_success() {
                totals.errors += 1;
                continue;
            }
            if is_write {
                totals.writes += 1;
                continue;
            }
            totals.reads += 1;
            let buf = c.buf.ok_or("a read's buffer did not come back")?;
            let mut all_known = true;
            for i in 0..count {
                let block = (start + i) as usize;
                let seed = generation[block];
                if seed == 0 {
                    all_known = false;
                    continue;
                }
                let at = (i * block_size) as usize;
                if first_mismatch(
                    seed,
                    (first + block as u64) * block_size,
                    &buf[at..at + block_size as usize],
                )
                .is_some()
                {
                    return Err(format!(
                        "block {} read back different from its last write",
                        first + block as u64
                    ));
                }
            }
            if all_known {
                totals.verified += 1;
            }
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {ios} I/Os done in 600 s", totals.ios));
        }
    }
    Ok(totals)
}

/// Submits a read whose data pointer no IOMMU mapping covers, bypassing the driver's checks, and
/// waits for whatever the controller answers. The harness must report this run as failed (a DMA
/// fault in the logs): it exists to prove that detection works.
pub fn rogue_dma(uri: &str) -> Result<String, NvmeError> {
    use crate::device::QueuePairBackend;
    let ns = open_pcie(uri)?;
    let mut raw = ns.raw_queue_pair(4)?;
    // Far above anything the IOVA allocator hands out in a short run.
    let unmapped_iova = 0x40_0000_0000;
    raw.submit_unmapped_read(0, unmapped_iova)?;
    let mut out = Vec::new();
    let mut stats = crate::QueuePairStats::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.is_empty() && Instant::now() < deadline {
        raw.poll(1, &mut out, &mut stats).map_err(|e| *e)?;
    }
    Ok(match out.first() {
        Some(c) => format!(
            "read into unmapped IOVA {unmapped_iova:#x} completed with {}",
            c.status
        ),
        None => format!("read into unmapped IOVA {unmapped_iova:#x} never completed"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_depend_on_seed_and_position_only() {
        let mut whole = vec![0u8; 64];
        fill_pattern(9, 4096, &mut whole);
        let mut tail = vec![0u8; 32];
        fill_pattern(9, 4096 + 32, &mut tail);
        assert_eq!(&whole[32..], &tail[..]);
        assert_eq!(first_mismatch(9, 4096, &whole), None);
        assert_eq!(first_mismatch(10, 4096, &whole), Some(4096));
        whole[40] ^= 1;
        assert_eq!(first_mismatch(9, 4096, &whole), Some(4096 + 40));
    }

    #[test]
    fn the_plan_does_not_overlap() {
        let mut regions: Vec<(u64, u64)> = [HOST_PATTERN]
            .iter()
            .chain(PERSISTED.iter().map(|(r, _)| r))
            .map(|r| (r.offset, r.offset + r.len))
            .collect();
        regions.push((RANDOM_AREA.0, RANDOM_AREA.0 + RANDOM_AREA.1));
        regions.sort();
        for pair in regions.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{pair:?}");
        }
    }

    #[test]
    fn image_checks_find_what_was_written_and_what_was_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nvme.img");
        let file = File::create(&path).unwrap();
        file.set_len(64 * MIB).unwrap();
        prepare_image(&path).unwrap();
        // Nothing the guest writes is there yet: every guest region fails, the zeroed ones too
        // (the host filled them).
        let report = check_image(&path).unwrap();
        assert_eq!(report.count(Outcome::Pass), 1, "{:?}", report.lines());
        for (region, zeroed) in PERSISTED {
            let mut data = vec![0u8; region.len as usize];
            if !zeroed {
                fill_pattern(region.seed, region.offset, &mut data);
            }
            file.write_all_at(&data, region.offset).unwrap();
        }
        let report = check_image(&path).unwrap();
        assert_eq!(report.count(Outcome::Fail), 0, "{:?}", report.lines());
        file.write_all_at(&[1], GUEST_ZEROED.offset + 5).unwrap();
        let report = check_image(&path).unwrap();
        assert_eq!(report.count(Outcome::Fail), 1);
        assert!(report.lines().iter().any(|l| l.contains("not zero")));
    }

    #[test]
    fn small_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.img");
        File::create(&path).unwrap().set_len(MIB).unwrap();
        assert!(prepare_image(&path).is_err());
    }

    #[test]
    fn only_pcie_uris_are_self_tested() {
        let e = run_device_checks("mem:64M", &Expectations::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("pcie"), "{e}");
    }
}
