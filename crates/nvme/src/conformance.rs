//! Behaviour every backend must show, run against each one by URI: by the tests for the
//! backends a test can open, and by `bluepoll selftest conformance` in the QEMU guest for the
//! userspace NVMe driver (`pcie:`). A failed check panics with what it saw (the test harness,
//! or the selftest command, reports it).
//!
//! `moves_data` is false for `null:`, which completes reads without filling the buffer.

use super::*;

/// Fills `buf` with bytes determined by `seed` alone (an xorshift64 stream), so whoever reads
/// the data back can regenerate what was written and compare. Distinct seeds give distinct
/// patterns; a prefix of a longer fill equals a shorter fill with the same seed.
pub fn pattern(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

fn ok(c: &Completion) {
    assert!(c.status.is_success(), "tag {} failed: {}", c.tag, c.status);
}

/// Writes `blocks` blocks at `lba` filled from `seed`, then reads them back and compares.
fn roundtrip(
    qp: &mut QueuePair,
    pool: &DmaPool,
    bs: usize,
    lba: u64,
    blocks: u32,
    seed: u64,
    moves_data: bool,
) {
    let mut buf = pool.alloc().unwrap();
    pattern(seed, &mut buf[..blocks as usize * bs]);
    let expected = buf[..blocks as usize * bs].to_vec();
    let done = qp.execute(IoCmd::write(lba, blocks, buf, 1)).unwrap();
    ok(&done);
    let mut back = done.buf.unwrap();
    back.fill(0xee);
    let done = qp.execute(IoCmd::read(lba, blocks, back, 2)).unwrap();
    ok(&done);
    if moves_data {
        assert!(
            done.buf.unwrap()[..blocks as usize * bs] == expected[..],
            "data differs at lba {lba}"
        );
    }
}

/// Runs the suite on the device `uri` opens; the checks it skipped (the device does not
/// advertise the command, or does not promise what the check reads back), so a caller can hold
/// a backend to the checks it must pass rather than have them skipped quietly.
#[must_use = "assert which checks were skipped"]
pub fn check_backend(uri: &str, moves_data: bool) -> Vec<&'static str> {
    check_backend_on(&Device::open(uri).unwrap(), moves_data)
}

/// Runs the suite on `uri` and insists it skipped nothing (a backend that supports every
/// command and moves data).
pub fn check_backend_fully(uri: &str) {
    assert_eq!(check_backend(uri, true), Vec::<&str>::new(), "{uri}");
}

/// The suite over an open device (for devices no URI opens, such as slices); the checks
/// skipped.
#[must_use = "assert which checks were skipped"]
pub fn check_backend_on(dev: &Device, moves_data: bool) -> Vec<&'static str> {
    let mut skipped = Vec::new();
    let dev = dev.clone();
    let info = dev.info().clone();
    let bs = info.block_size as u64;
    let mut qp = dev.queue_pair(16).unwrap();
    // Data moves through buffers registered with the queue pair, as a device that DMAs only
    // to memory mapped for it (`pcie:`) requires; 8 blocks is the largest transfer below.
    let data = DmaPool::new(8 * bs as usize, 16).unwrap();
    let _ = qp.register_pool(&data).unwrap();

    // Round trips: first, last, multi-block.
    let b = bs as usize;
    roundtrip(&mut qp, &data, b, 0, 1, 1, moves_data);
    roundtrip(
        &mut qp,
        &data,
        b,
        info.capacity_blocks - 1,
        1,
        2,
        moves_data,
    );
    roundtrip(&mut qp, &data, b, 3, 8, 3, moves_data);

    // Error completions: out of range, past the end, zero blocks, no buffer, short buffer,
    // misaligned buffer, oversized transfer.
    let buf = || data.alloc().unwrap();
    let cases: Vec<(IoCmd, Status)> = vec![
        (
            IoCmd::read(info.capacity_blocks, 1, buf(), 10),
            Status::LBA_OUT_OF_RANGE,
        ),
        (
            IoCmd::write(info.capacity_blocks - 1, 2, buf(), 11),
            Status::LBA_OUT_OF_RANGE,
        ),
        (
            IoCmd::read(u64::MAX, 2, buf(), 12),
            Status::LBA_OUT_OF_RANGE,
        ),
        (IoCmd::read(0, 0, buf(), 13), Status::INVALID_FIELD),
        (
            IoCmd {
                opcode: Opcode::Write,
                lba: 0,
                blocks: 1,
                buf: None,
                buf_offset: 0,
                tag: 14,
            },
            Status::INVALID_FIELD,
        ),
        (
            IoCmd::read(0, (buf().len() as u64 / bs + 1) as u32, buf(), 15),
            Status::INVALID_FIELD,
        ),
        (
            IoCmd::write_zeroes(info.capacity_blocks, 1, 16),
            Status::LBA_OUT_OF_RANGE,
        ),
    ];
    for (cmd, expected) in cases {
        let tag = cmd.tag;
        let c = qp.execute(cmd).unwrap();
        assert_eq!(c.tag, tag);
        assert_eq!(c.status, expected, "tag {tag}");
    }
    if info.buffer_alignment > 1 {
        let c = qp
            .execute(IoCmd::read(0, 1, buf(), 17).with_buf_offset(1))
            .unwrap();
        assert_eq!(c.status, Status::PRP_OFFSET_INVALID);
        assert!(
            c.buf.is_some(),
            "the buffer comes back with an error completion"
        );
    }
    let blocks_over_limit = (info.max_transfer_bytes as u64 / bs + 1) as u32;
    if (blocks_over_limit as u64) < info.capacity_blocks {
        let big = DmaBuf::new((blocks_over_limit as u64 * bs) as usize).unwrap();
        let c = qp
            .execute(IoCmd::read(0, blocks_over_limit, big, 18))
            .unwrap();
        assert_eq!(c.status, Status::INVALID_FIELD);
    }

    // Flush, write-zeroes and trim.
    ok(&qp.execute(IoCmd::flush(20)).unwrap());
    if !info.ops.write_zeroes {
        skipped.push("write-zeroes");
    }
    if info.ops.write_zeroes {
        ok(&qp.execute(IoCmd::write_zeroes(3, 2, 21)).unwrap());
        if moves_data {
            let c = qp
                .execute(IoCmd::read(3, 3, data.alloc().unwrap(), 22))
                .unwrap();
            ok(&c);
            let data = c.buf.unwrap();
            assert!(
                data[..2 * bs as usize].iter().all(|&b| b == 0),
                "write-zeroes left data"
            );
            assert!(
                data[2 * bs as usize..3 * bs as usize]
                    .iter()
                    .any(|&b| b != 0),
                "write-zeroes went too far"
            );
        }
    }
    if !info.ops.trim {
        skipped.push("trim");
    } else if !info.trim_reads_zeroes {
        skipped.push("trim reads zeroes");
    }
    if !moves_data {
        skipped.push("data read back");
    }
    if info.ops.trim {
        ok(&qp.execute(IoCmd::trim(6, 2, 23)).unwrap());
        if moves_data && info.trim_reads_zeroes {
            let c = qp
                .execute(IoCmd::read(6, 2, data.alloc().unwrap(), 24))
                .unwrap();
            ok(&c);
            assert!(c.buf.unwrap()[..2 * bs as usize].iter().all(|&b| b == 0));
        }
    }

    // Queue full hands the command back; one poll rings one doorbell for the whole batch.
    let pool = DmaPool::new(bs as usize, 17).unwrap();
    let _ = qp.register_pool(&pool).unwrap();
    let before = *qp.stats();
    for i in 0..16 {
        qp.submit(IoCmd::read(i, 1, pool.alloc().unwrap(), 100 + i))
            .unwrap();
    }
    let full = qp
        .submit(IoCmd::read(0, 1, pool.alloc().unwrap(), 999))
        .unwrap_err();
    assert_eq!(full.0.tag, 999);
    drop(full);
    let mut out = Vec::new();
    qp.drain(&mut out).unwrap();
    assert_eq!(out.len(), 16);
    out.iter().for_each(ok);
    let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, (100..116).collect::<Vec<_>>());
    let after = *qp.stats();
    assert_eq!(
        after.doorbells - before.doorbells,
        1,
        "16 queued commands go in one doorbell"
    );
    assert_eq!(after.doorbell_commands - before.doorbell_commands, 16);
    assert_eq!(qp.outstanding(), 0);
    drop(out);
    assert_eq!(pool.available(), 17, "every buffer came back");

    // poll(max) never returns more than asked.
    for i in 0..4 {
        qp.submit(IoCmd::read(i, 1, pool.alloc().unwrap(), i))
            .unwrap();
    }
    let mut out = Vec::new();
    let mut spins = 0;
    while out.is_empty() && spins < 1_000_000 {
        qp.poll(1, &mut out).unwrap();
        spins += 1;
    }
    assert_eq!(out.len(), 1);
    qp.drain(&mut out).unwrap();
    assert_eq!(out.len(), 4);
    skipped
}

/// Checks that the device at `uri` refuses queue pairs of depth 0 and of one more than its
/// `max_queue_depth`, with [`NvmeError::InvalidQueueDepth`]. Panics if it does not, or if `uri`
/// does not open.
pub fn check_queue_depth_limits(uri: &str) {
    let dev = Device::open(uri).unwrap();
    assert!(matches!(
        dev.queue_pair(0),
        Err(NvmeError::InvalidQueueDepth { .. })
    ));
    let max = dev.info().max_queue_depth;
    assert!(matches!(
        dev.queue_pair(max + 1),
        Err(NvmeError::InvalidQueueDepth { .. })
    ));
}

#[test]
fn mem_backend_conforms() {
    check_backend_fully("mem:4M");
    check_backend_fully("mem:1M?block_size=512");
    check_queue_depth_limits("mem:1M");
}

#[test]
fn null_backend_conforms() {
    // It completes reads without filling the buffer: only the read-back checks are skipped.
    let skipped = check_backend("null:1G", false);
    assert!(
        skipped
            .iter()
            .all(|s| ["data read back", "trim reads zeroes"].contains(s)),
        "{skipped:?}"
    );
    check_queue_depth_limits("null:1M");
}

#[test]
fn mem_is_thin_and_spans_chunks() {
    // 1 TiB costs nothing until written; a write across a 1 MiB chunk boundary reads back whole.
    let dev = Device::open("mem:1T").unwrap();
    let mut qp = dev.queue_pair(4).unwrap();
    let pool = DmaPool::new(256 * 4096, 2).unwrap();
    let lba = (1 << 20) / 4096 - 1;
    roundtrip(&mut qp, &pool, 4096, lba, 4, 9, true);
    roundtrip(
        &mut qp,
        &pool,
        4096,
        dev.info().capacity_blocks - 300,
        256,
        10,
        true,
    );
}

#[test]
fn mem_is_shared_between_queue_pairs_on_threads() {
    let dev = Device::open("mem:8M").unwrap();
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                let mut qp = dev.queue_pair(8).unwrap();
                for i in 0..64u64 {
                    let mut buf = DmaBuf::new(4096).unwrap();
                    buf.fill((t * 64 + i) as u8);
                    let c = qp.execute(IoCmd::write(t * 64 + i, 1, buf, i)).unwrap();
                    assert!(c.status.is_success());
                }
            })
        })
        .collect();
    writers.into_iter().for_each(|w| w.join().unwrap());
    let mut qp = dev.queue_pair(1).unwrap();
    for lba in 0..128u64 {
        let c = qp
            .execute(IoCmd::read(lba, 1, DmaBuf::new(4096).unwrap(), lba))
            .unwrap();
        assert!(c.buf.unwrap().iter().all(|&b| b == lba as u8));
    }
}

#[test]
fn bad_uris_are_errors_not_panics() {
    for (uri, needle) in [
        ("mme:1G", "unknown device scheme 'mme'"),
        ("mem:", "missing size"),
        ("mem:4q", "unknown unit 'q'"),
        ("mem:1G?block_size=1000", "power of two"),
        ("mem:1G?wat=1", "unknown parameter 'wat'"),
        ("null:1000", "multiple of the block size"),
        ("/dev/sda", "no scheme"),
    ] {
        let err = Device::open(uri).unwrap_err().to_string();
        assert!(err.contains(needle), "{uri}: {err}");
    }
}
