use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::cache::{Cache, Content, Extent};
use super::*;
use crate::command::{Completion, IoCmd, Opcode, Status};
use crate::conformance::{check_backend_fully, check_queue_depth_limits, pattern};
use crate::device::{
    NamespaceInfo, PollResult, QueueFull, QueuePair, QueuePairBackend, QueuePairStats,
};
use crate::dma::DmaBuf;

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
        ("fault:seed=1,seed=2+mem:1M", "option 'seed' given twice"),
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
    let blockwise =
        |qp: &mut QueuePair| -> Vec<u8> { (0..11).flat_map(|lba| read_ok(qp, lba, 1)).collect() };
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
