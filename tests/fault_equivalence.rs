//! With no faults armed, a `fault:` device must be indistinguishable from the device it wraps:
//! the same statuses and the same read data for any command sequence, valid or not, in both
//! cache modes. After a final Flush, a power cut must keep everything.

use bluepoll::nvme::{Completion, Device, DmaBuf, IoCmd, QueuePair, Status};
use proptest::prelude::*;

const BLOCK: usize = 4096;

#[derive(Clone, Debug)]
enum Op {
    Read { lba: u64, blocks: u32 },
    Write { lba: u64, blocks: u32, seed: u64 },
    Flush,
    WriteZeroes { lba: u64, blocks: u32 },
    Trim { lba: u64, blocks: u32 },
}

fn lba() -> impl Strategy<Value = u64> {
    // mem:1M has 256 blocks: mostly inside, some across or past the end, some overflowing.
    prop_oneof![
        8 => 0u64..256,
        1 => 250u64..300,
        1 => Just(u64::MAX - 1),
    ]
}

fn blocks() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => 1u32..9,
        1 => Just(0u32),
        1 => 9u32..64,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (lba(), blocks()).prop_map(|(lba, blocks)| Op::Read { lba, blocks }),
        3 => (lba(), blocks(), any::<u64>())
            .prop_map(|(lba, blocks, seed)| Op::Write { lba, blocks, seed }),
        1 => Just(Op::Flush),
        1 => (lba(), blocks()).prop_map(|(lba, blocks)| Op::WriteZeroes { lba, blocks }),
        1 => (lba(), blocks()).prop_map(|(lba, blocks)| Op::Trim { lba, blocks }),
    ]
}

/// Batches of commands: each batch is submitted whole, then drained.
fn batches() -> impl Strategy<Value = Vec<Vec<Op>>> {
    prop::collection::vec(prop::collection::vec(op(), 1..6), 1..24)
}

fn fill(seed: u64, bytes: &mut [u8]) {
    let mut x = seed | 1;
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn buffer(blocks: u32) -> DmaBuf {
    DmaBuf::new(blocks.max(1) as usize * BLOCK).unwrap()
}

fn command(op: &Op, tag: u64) -> IoCmd {
    match *op {
        Op::Read { lba, blocks } => IoCmd::read(lba, blocks, buffer(blocks), tag),
        Op::Write { lba, blocks, seed } => {
            let mut buf = buffer(blocks);
            fill(seed, &mut buf);
            IoCmd::write(lba, blocks, buf, tag)
        }
        Op::Flush => IoCmd::flush(tag),
        Op::WriteZeroes { lba, blocks } => IoCmd::write_zeroes(lba, blocks, tag),
        Op::Trim { lba, blocks } => IoCmd::trim(lba, blocks, tag),
    }
}

/// What a caller can observe of a batch: per command, its status and (for a successful read)
/// its data.
fn run_batch(qp: &mut QueuePair, batch: &[Op]) -> Vec<(Status, Option<Vec<u8>>)> {
    for (tag, op) in batch.iter().enumerate() {
        qp.submit(command(op, tag as u64)).unwrap();
    }
    let mut done: Vec<Completion> = Vec::new();
    qp.drain(&mut done).unwrap();
    assert_eq!(done.len(), batch.len());
    done.sort_by_key(|c| c.tag);
    done.into_iter()
        .zip(batch)
        .map(|(c, op)| {
            let data = match (op, c.status.is_success()) {
                (Op::Read { blocks, .. }, true) => {
                    Some(c.buf.unwrap()[..*blocks as usize * BLOCK].to_vec())
                }
                _ => None,
            };
            (c.status, data)
        })
        .collect()
}

fn whole_device(qp: &mut QueuePair, capacity_blocks: u64) -> Vec<u8> {
    let c = qp
        .execute(IoCmd::read(
            0,
            capacity_blocks as u32,
            buffer(capacity_blocks as u32),
            0,
        ))
        .unwrap();
    assert!(c.status.is_success(), "{}", c.status);
    c.buf.unwrap()[..capacity_blocks as usize * BLOCK].to_vec()
}

fn check_equivalent(fault_uri: &str, batches: &[Vec<Op>]) -> Result<(), TestCaseError> {
    let reference = Device::open("mem:1M").unwrap();
    let faulty = Device::open(fault_uri).unwrap();
    let capacity = reference.info().capacity_blocks;
    prop_assert_eq!(faulty.info().capacity_blocks, capacity);
    let mut reference_qp = reference.queue_pair(8).unwrap();
    let mut faulty_qp = faulty.queue_pair(8).unwrap();
    for (i, batch) in batches.iter().enumerate() {
        let expected = run_batch(&mut reference_qp, batch);
        let seen = run_batch(&mut faulty_qp, batch);
        for (j, (want, got)) in expected.iter().zip(&seen).enumerate() {
            prop_assert_eq!(want.0, got.0, "batch {} command {} {:?}", i, j, batch[j]);
            prop_assert!(
                want.1 == got.1,
                "batch {} command {} {:?}: read data differs",
                i,
                j,
                batch[j]
            );
        }
    }
    let expected = whole_device(&mut reference_qp, capacity);
    prop_assert!(whole_device(&mut faulty_qp, capacity) == expected);

    // Flushed data survives a power cut whole.
    let flushed = faulty_qp.execute(IoCmd::flush(0)).unwrap();
    prop_assert!(flushed.status.is_success());
    let control = faulty.fault_control().unwrap();
    let report = control.power_cut().unwrap();
    prop_assert_eq!(report.blocks_lost, 0);
    let mut after_cut = faulty.queue_pair(8).unwrap();
    prop_assert!(whole_device(&mut after_cut, capacity) == expected);
    Ok(())
}

proptest! {
    #[test]
    fn fault_with_cache_matches_mem(batches in batches()) {
        check_equivalent("fault:mem:1M", &batches)?;
    }

    #[test]
    fn fault_without_cache_matches_mem(batches in batches()) {
        check_equivalent("fault:cache=off+mem:1M", &batches)?;
    }
}
