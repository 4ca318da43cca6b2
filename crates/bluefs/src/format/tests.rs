use super::codec::*;
use super::frame::*;
use super::label::*;
use super::op::*;
use super::superblock::*;
use super::*;
use proptest::prelude::*;

const UUID: Uuid = [
    0x5a, 0x17, 0x3c, 0x01, 0x9e, 0x42, 0x4b, 0x7d, 0x81, 0x0f, 0xc3, 0x66, 0x2e, 0xd4, 0x90, 0x11,
];

fn ext(device: DeviceId, offset: u64, length: u64) -> Extent {
    Extent {
        device,
        offset,
        length,
    }
}

fn label() -> Label {
    Label {
        uuid: UUID,
        device: DeviceId::Db,
        device_size: 10 << 30,
        created_ns: 1_700_000_000_123_456_789,
    }
}

fn superblock(extents: usize) -> Superblock {
    Superblock {
        uuid: UUID,
        generation: 7,
        block_size: BLOCK_SIZE as u32,
        alloc_units: [4096, 65536, 1 << 20],
        log_fnode: Fnode {
            ino: 1,
            size: 0,
            mtime_ns: 42,
            extents: (0..extents as u64)
                .map(|i| {
                    ext(
                        DeviceId::ALL[i as usize % 3],
                        RESERVED_PREFIX + i * 8192,
                        4096,
                    )
                })
                .collect(),
        },
        log_first_seq: 1000,
    }
}

/// One of every op, with non-trivial field values.
fn every_op() -> Vec<LogOp> {
    vec![
        LogOp::Init {
            created_ns: u64::MAX,
        },
        LogOp::DirCreate { name: "db".into() },
        LogOp::DirRemove {
            name: "db.slow".into(),
        },
        LogOp::DirLink {
            dir: "db".into(),
            name: "000012.sst".into(),
            ino: 12,
        },
        LogOp::DirUnlink {
            dir: "db.wal".into(),
            name: "000011.log".into(),
        },
        LogOp::FileUpdate(Fnode {
            ino: 12,
            size: 123_456,
            mtime_ns: 99,
            extents: vec![
                ext(DeviceId::Db, RESERVED_PREFIX, 65536),
                ext(DeviceId::Slow, 1 << 40, 65536),
            ],
        }),
        LogOp::FileUpdate(Fnode::default()),
        LogOp::FileUpdateDelta {
            ino: 11,
            size: 8192,
            mtime_ns: 100,
            appended: vec![ext(DeviceId::Wal, u64::MAX - 4096, 4096)],
        },
        LogOp::FileUpdateDelta {
            ino: 11,
            size: 8193,
            mtime_ns: 101,
            appended: vec![],
        },
        LogOp::FileRemove { ino: 12 },
        LogOp::Jump { offset: 1 << 22 },
        LogOp::JumpSeq { seq: 5000 },
        LogOp::FileAppendChecked {
            ino: 13,
            size: 12_288,
            mtime_ns: 102,
            appended: vec![Extent {
                device: DeviceId::Db,
                offset: 1 << 20,
                length: 65536,
            }],
            data_from: 4096,
            data_crc: 0xdead_beef,
        },
        LogOp::FileAppendInline {
            ino: 13,
            size: 12_388,
            mtime_ns: 103,
            appended: vec![],
            data_from: 12_288,
            data: (0..100).collect(),
        },
    ]
}

fn txn(seq: u64, ops: Vec<LogOp>) -> Transaction {
    Transaction {
        uuid: UUID,
        seq,
        ops,
    }
}

/// A frame with a valid header and payload crc around arbitrary payload bytes.
fn seal_frame(uuid: &Uuid, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; FRAME_HEADER_LEN];
    frame.extend_from_slice(payload);
    frame.resize(round_up_to_block(frame.len()).unwrap(), 0);
    set(&mut frame, OFF_MAGIC, &FRAME_MAGIC);
    set(&mut frame, OFF_VERSION, &1u16.to_le_bytes());
    set(
        &mut frame,
        FRAME_OFF_PAYLOAD_LEN,
        &(payload.len() as u32).to_le_bytes(),
    );
    set(&mut frame, FRAME_OFF_UUID, uuid);
    set(&mut frame, FRAME_OFF_SEQ, &seq.to_le_bytes());
    reseal_frame(&mut frame);
    frame
}

/// Recomputes both crcs of a frame after a test edited it.
fn reseal_frame(frame: &mut [u8]) {
    let payload_crc = crc32c::crc32c(&frame[FRAME_HEADER_LEN..]);
    set(frame, FRAME_OFF_PAYLOAD_CRC, &payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&frame[..FRAME_OFF_HEADER_CRC]);
    set(frame, FRAME_OFF_HEADER_CRC, &header_crc.to_le_bytes());
}

/// Recomputes a label's or superblock's crc after a test edited it.
fn reseal_block(block: &mut [u8], crc_at: usize) {
    let crc = crc_skipping(block, crc_at);
    set(block, crc_at, &crc.to_le_bytes());
}

fn payload_error(payload: &[u8]) -> String {
    match decode_transaction(&seal_frame(&UUID, 1, payload), &UUID, 1) {
        Err(FrameEnd::BadPayload(reason)) => reason,
        other => panic!("expected BadPayload, got {other:?}"),
    }
}

fn invalid_reason(r: Result<impl std::fmt::Debug, FormatError>) -> String {
    match r {
        Err(FormatError::Invalid { reason, .. }) => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

// --- constants, ids, versions ---

#[test]
fn layout_constants_agree() {
    assert_eq!(SUPERBLOCK_OFFSETS, [4096, 8192]);
    assert_eq!(RESERVED_PREFIX, 3 * 4096);
    assert!(
        SUPERBLOCK_OFFSETS
            .iter()
            .all(|&o| o + BLOCK_SIZE <= RESERVED_PREFIX)
    );
    assert_eq!(LABEL_OFFSET + BLOCK_SIZE, SUPERBLOCK_OFFSETS[0]);
    let magics = [LABEL_MAGIC, SUPERBLOCK_MAGIC, FRAME_MAGIC];
    assert_ne!(magics[0], magics[1]);
    assert_ne!(magics[1], magics[2]);
    assert_ne!(magics[0], magics[2]);
}

#[test]
fn device_ids() {
    for (i, d) in DeviceId::ALL.into_iter().enumerate() {
        assert_eq!(d.index(), i);
        assert_eq!(DeviceId::from_u8(i as u8), Some(d));
    }
    assert_eq!(DeviceId::from_u8(3), None);
    assert_eq!(DeviceId::from_u8(255), None);
    let names: Vec<_> = DeviceId::ALL.iter().map(|d| d.name()).collect();
    assert_eq!(names, ["wal", "db", "slow"]);
}

#[test]
fn format_version() {
    assert_eq!(FormatVersion::CURRENT.as_u16(), 1);
    assert_eq!(FormatVersion::from_u16(1), Some(FormatVersion::V1));
    assert_eq!(FormatVersion::from_u16(0), None);
    assert_eq!(FormatVersion::from_u16(2), None);
    assert!(FormatVersion::V1.has_file_update_delta());
    assert_eq!(FormatVersion::V1.superblock_slots(), 2);
}

#[test]
fn extent_end_and_fnode_allocated() {
    assert_eq!(ext(DeviceId::Db, 4096, 8192).end(), 12288);
    let f = Fnode {
        extents: vec![ext(DeviceId::Db, 0, 4096), ext(DeviceId::Slow, 0, 65536)],
        ..Fnode::default()
    };
    assert_eq!(f.allocated(), 69632);
    assert_eq!(Fnode::default().allocated(), 0);
    let huge = Fnode {
        extents: vec![ext(DeviceId::Db, 0, u64::MAX), ext(DeviceId::Slow, 0, 1)],
        ..Fnode::default()
    };
    assert_eq!(huge.allocated(), u64::MAX);
}

// --- label ---

#[test]
fn label_round_trips() {
    for device in DeviceId::ALL {
        let l = Label { device, ..label() };
        let b = encode_label(&l);
        assert_eq!(b.len(), BLOCK);
        assert_eq!(&b[..8], b"BPFSLABL");
        assert_eq!(decode_label(&b), Ok(l.clone()));
        // Bytes past the block are ignored (callers may read more than one block).
        let mut longer = b.clone();
        longer.extend_from_slice(&[0xff; 100]);
        assert_eq!(decode_label(&longer), Ok(l));
    }
}

#[test]
fn label_every_bit_flip_is_detected() {
    let good = encode_label(&label());
    for byte in 0..BLOCK {
        for bit in 0..8 {
            let mut b = good.clone();
            b[byte] ^= 1 << bit;
            assert!(
                decode_label(&b).is_err(),
                "flip of byte {byte} bit {bit} not detected"
            );
        }
    }
}

#[test]
fn label_errors_name_the_problem() {
    let what = "label";
    assert_eq!(
        decode_label(&[0u8; BLOCK]),
        Err(FormatError::BadMagic { what })
    );
    assert_eq!(
        decode_label(&encode_superblock(&superblock(1)).unwrap()),
        Err(FormatError::BadMagic { what })
    );
    let good = encode_label(&label());
    let reason = invalid_reason(decode_label(&good[..100]));
    assert!(reason.contains("100 bytes"), "{reason}");
    assert!(matches!(
        decode_label(&[]),
        Err(FormatError::Invalid { .. })
    ));

    let mut b = good.clone();
    set(&mut b, OFF_VERSION, &2u16.to_le_bytes());
    assert_eq!(
        decode_label(&b),
        Err(FormatError::UnsupportedVersion {
            what,
            found: 2,
            supported: 1
        })
    );

    let mut b = good.clone();
    b[LABEL_OFF_DEVICE_SIZE] ^= 1;
    let expected = get_u32(&b, LABEL_OFF_CRC);
    let actual = crc_skipping(&b, LABEL_OFF_CRC);
    let err = decode_label(&b).unwrap_err();
    assert_eq!(
        err,
        FormatError::ChecksumMismatch {
            what,
            expected,
            actual
        }
    );
    assert_eq!(
        err.to_string(),
        format!("label: checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")
    );

    let mut b = good.clone();
    b[LABEL_OFF_DEVICE] = 3;
    reseal_block(&mut b, LABEL_OFF_CRC);
    let reason = invalid_reason(decode_label(&b));
    assert!(reason.contains("device byte 3"), "{reason}");
}

// --- superblock ---

#[test]
fn superblock_round_trips() {
    for n in [0, 1, 2, 17, MAX_SUPERBLOCK_LOG_EXTENTS] {
        let s = superblock(n);
        let b = encode_superblock(&s).unwrap();
        assert_eq!(b.len(), BLOCK);
        assert_eq!(&b[..8], b"BPFSSUPR");
        assert_eq!(decode_superblock(&b), Ok(s));
    }
    let unused_wal = Superblock {
        alloc_units: [0, 4096, 65536],
        ..superblock(1)
    };
    assert_eq!(
        decode_superblock(&encode_superblock(&unused_wal).unwrap()),
        Ok(unused_wal)
    );
}

#[test]
fn superblock_encoder_refuses_what_the_decoder_would() {
    let refused = |s: Superblock| invalid_reason(encode_superblock(&s));
    let r = refused(superblock(MAX_SUPERBLOCK_LOG_EXTENTS + 1));
    assert_eq!(r, "log fnode has 235 extents, at most 234 fit");
    let r = refused(Superblock {
        block_size: 512,
        ..superblock(1)
    });
    assert_eq!(r, "block size 512 is not supported (this build uses 4096)");
    let r = refused(Superblock {
        alloc_units: [4096, 4096, 1000],
        ..superblock(1)
    });
    assert_eq!(
        r,
        "slow allocation unit 1000 is not a multiple of the block size 4096"
    );
    let mut zero_length = superblock(2);
    zero_length.log_fnode.extents[1].length = 0;
    assert_eq!(refused(zero_length), "log fnode: extent 1: length is 0");
    let mut overflowing = superblock(1);
    overflowing.log_fnode.extents[0].offset = u64::MAX;
    assert_eq!(
        refused(overflowing),
        "log fnode: extent 0: offset 0xffffffffffffffff + length 0x1000 overflows u64"
    );
    let mut too_much = superblock(2);
    too_much.log_fnode.extents[0].length = u64::MAX;
    too_much.log_fnode.extents[0].offset = 0;
    assert_eq!(
        refused(too_much),
        "log fnode: extent 1: extents total more than u64::MAX bytes"
    );
}

#[test]
fn superblock_every_bit_flip_is_detected() {
    let good = encode_superblock(&superblock(3)).unwrap();
    for byte in 0..BLOCK {
        for bit in 0..8 {
            let mut b = good.clone();
            b[byte] ^= 1 << bit;
            assert!(
                decode_superblock(&b).is_err(),
                "flip of byte {byte} bit {bit} not detected"
            );
        }
    }
}

#[test]
fn superblock_errors_name_the_problem() {
    let what = "superblock";
    let good = encode_superblock(&superblock(2)).unwrap();
    assert_eq!(
        decode_superblock(&[0u8; BLOCK]),
        Err(FormatError::BadMagic { what })
    );
    assert_eq!(
        decode_superblock(&encode_label(&label())),
        Err(FormatError::BadMagic { what })
    );
    assert_eq!(
        FormatError::BadMagic { what }.to_string(),
        "superblock: bad magic (not a bluepoll BlueFS superblock)"
    );
    assert!(matches!(
        decode_superblock(&good[..BLOCK - 1]),
        Err(FormatError::Invalid { .. })
    ));
    let mut b = good.clone();
    set(&mut b, OFF_VERSION, &0u16.to_le_bytes());
    let err = decode_superblock(&b).unwrap_err();
    assert_eq!(
        err.to_string(),
        "superblock: format version 0 is not supported (this build reads 1)"
    );
    let mut b = good.clone();
    b[BLOCK - 1] = 1; // the zero tail is covered too
    assert!(matches!(
        decode_superblock(&b),
        Err(FormatError::ChecksumMismatch { .. })
    ));

    // Fields that are wrong though the checksum is right (a buggy writer).
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        reseal_block(&mut b, SB_OFF_CRC);
        invalid_reason(decode_superblock(&b))
    };
    let r = edit(&|b| set(b, SB_OFF_BLOCK_SIZE, &512u32.to_le_bytes()));
    assert!(r.contains("block size 512"), "{r}");
    let r = edit(&|b| set(b, SB_OFF_ALLOC_UNITS + 8, &1000u64.to_le_bytes()));
    assert!(r.contains("db allocation unit 1000"), "{r}");
    let first_extent = SB_OFF_LOG_FNODE + FNODE_FIXED_LEN;
    let r = edit(&|b| b[first_extent] = 9);
    assert!(r.contains("log fnode: extent 0: device byte 9"), "{r}");
    let r = edit(&|b| set(b, first_extent + 9, &0u64.to_le_bytes()));
    assert!(r.contains("log fnode: extent 0: length is 0"), "{r}");
    let r = edit(&|b| set(b, first_extent + EXTENT_LEN + 1, &u64::MAX.to_le_bytes()));
    assert!(
        r.contains("extent 1: offset") && r.contains("overflows"),
        "{r}"
    );
    let count_at = SB_OFF_LOG_FNODE + FNODE_FIXED_LEN - 4;
    let r = edit(&|b| set(b, count_at, &u32::MAX.to_le_bytes()));
    assert!(
        r.contains("extent count: count 4294967295 cannot fit"),
        "{r}"
    );
    // 235 extents of zeros: the count fits the bytes only if it says 234 or fewer.
    let r = edit(&|b| set(b, count_at, &235u32.to_le_bytes()));
    assert!(r.contains("at most 234"), "{r}");
}

// --- log frames ---

#[test]
fn every_op_round_trips_alone_and_together() {
    for (i, op) in every_op().into_iter().enumerate() {
        let t = txn(i as u64, vec![op]);
        let frame = encode_transaction(&t);
        assert_eq!(frame.len(), BLOCK);
        assert_eq!(decode_transaction(&frame, &UUID, i as u64), Ok((t, BLOCK)));
    }
    let t = txn(77, every_op());
    let frame = encode_transaction(&t);
    assert_eq!(decode_transaction(&frame, &UUID, 77), Ok((t, frame.len())));
}

#[test]
fn op_tags_are_as_documented() {
    let tags: Vec<u8> = every_op()
        .iter()
        .map(|op| {
            let mut out = Vec::new();
            put_op(&mut out, op);
            out[0]
        })
        .collect();
    assert_eq!(tags, [1, 2, 3, 4, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12]);
    let mut out = Vec::new();
    put_op(
        &mut out,
        &LogOp::DirCreate {
            name: String::new(),
        },
    );
    assert_eq!(out.len(), MIN_OP_LEN);
}

#[test]
fn empty_transaction_round_trips() {
    let t = txn(1, vec![]);
    let frame = encode_transaction(&t);
    assert_eq!(frame.len(), BLOCK);
    assert_eq!(get_u32(&frame, FRAME_OFF_PAYLOAD_LEN), 4);
    assert_eq!(decode_transaction(&frame, &UUID, 1), Ok((t, BLOCK)));
}

#[test]
fn longest_names_round_trip() {
    let long = "é".repeat(MAX_NAME_LEN / 2);
    assert_eq!(long.len(), MAX_NAME_LEN);
    let t = txn(
        3,
        vec![LogOp::DirLink {
            dir: long.clone(),
            name: long.clone(),
            ino: 5,
        }],
    );
    let frame = encode_transaction(&t);
    assert_eq!(frame.len(), 3 * BLOCK);
    assert_eq!(decode_transaction(&frame, &UUID, 3), Ok((t, 3 * BLOCK)));
}

#[test]
#[should_panic(expected = "longer than MAX_NAME_LEN")]
fn encoding_an_over_long_name_is_a_caller_bug() {
    encode_transaction(&txn(
        1,
        vec![LogOp::DirCreate {
            name: "x".repeat(MAX_NAME_LEN + 1),
        }],
    ));
}

#[test]
fn multi_block_frames_and_frame_len_from_header() {
    let extents: Vec<Extent> = (0..1000)
        .map(|i| ext(DeviceId::Slow, i * 65536, 65536))
        .collect();
    let t = txn(
        9,
        vec![LogOp::FileUpdate(Fnode {
            ino: 40,
            size: 1000 * 65536,
            mtime_ns: 1,
            extents,
        })],
    );
    let frame = encode_transaction(&t);
    // 48 header + 4 count + 1 tag + 28 fnode + 17000 extents = 17081 → 5 blocks.
    assert_eq!(frame.len(), 5 * BLOCK);
    assert_eq!(frame_len_from_header(&frame[..BLOCK]), Some(5 * BLOCK));
    assert_eq!(
        frame_len_from_header(&frame[..FRAME_HEADER_LEN]),
        Some(5 * BLOCK)
    );
    assert_eq!(frame_len_from_header(&frame[..FRAME_HEADER_LEN - 1]), None);
    assert_eq!(frame_len_from_header(&[0u8; BLOCK]), None);
    assert_eq!(frame_len_from_header(&[]), None);
    let mut bad = frame.clone();
    bad[FRAME_OFF_SEQ] ^= 1;
    assert_eq!(frame_len_from_header(&bad), None);
    // Only the first block seen: the frame is truncated, and says so.
    assert_eq!(
        decode_transaction(&frame[..BLOCK], &UUID, 9),
        Err(FrameEnd::Truncated)
    );
    assert_eq!(decode_transaction(&frame, &UUID, 9), Ok((t, 5 * BLOCK)));
}

#[test]
fn consecutive_frames_decode_in_turn() {
    let a = txn(10, every_op());
    let b = txn(11, vec![LogOp::FileRemove { ino: 3 }]);
    let mut log = encode_transaction(&a);
    log.extend(encode_transaction(&b));
    log.extend_from_slice(&[0u8; BLOCK]);
    let (got_a, used) = decode_transaction(&log, &UUID, 10).unwrap();
    assert_eq!(got_a, a);
    let (got_b, used_b) = decode_transaction(&log[used..], &UUID, 11).unwrap();
    assert_eq!(got_b, b);
    assert_eq!(
        decode_transaction(&log[used + used_b..], &UUID, 12),
        Err(FrameEnd::BadMagic)
    );
}

#[test]
fn every_truncation_is_truncated() {
    let frame = encode_transaction(&txn(
        5,
        vec![LogOp::DirCreate {
            name: "d".repeat(MAX_NAME_LEN),
        }],
    ));
    assert_eq!(frame.len(), 2 * BLOCK);
    for len in 0..frame.len() {
        assert_eq!(
            decode_transaction(&frame[..len], &UUID, 5),
            Err(FrameEnd::Truncated),
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn frame_end_variants() {
    let t = txn(20, vec![LogOp::Init { created_ns: 1 }]);
    let good = encode_transaction(&t);

    assert_eq!(
        decode_transaction(&[0u8; BLOCK], &UUID, 20),
        Err(FrameEnd::BadMagic)
    );
    assert_eq!(
        decode_transaction(&encode_label(&label()), &UUID, 20),
        Err(FrameEnd::BadMagic)
    );
    let mut other = UUID;
    other[15] ^= 0x80;
    assert_eq!(
        decode_transaction(&good, &other, 20),
        Err(FrameEnd::UuidMismatch)
    );
    assert_eq!(
        decode_transaction(&good, &UUID, 21),
        Err(FrameEnd::SeqMismatch {
            expected: 21,
            found: 20
        })
    );

    let mut b = good.clone();
    set(&mut b, OFF_VERSION, &9u16.to_le_bytes());
    assert_eq!(
        decode_transaction(&b, &UUID, 20),
        Err(FrameEnd::UnsupportedVersion(9))
    );
    assert_eq!(
        FrameEnd::UnsupportedVersion(9).to_string(),
        "frame format version 9 is not supported (this build reads 1)"
    );

    let mut b = good.clone();
    b[FRAME_OFF_PAYLOAD_LEN] ^= 4;
    assert_eq!(
        decode_transaction(&b, &UUID, 20),
        Err(FrameEnd::HeaderChecksum)
    );

    let mut b = good.clone();
    b[FRAME_HEADER_LEN + 5] ^= 1;
    let expected = get_u32(&b, FRAME_OFF_PAYLOAD_CRC);
    let actual = crc32c::crc32c(&b[FRAME_HEADER_LEN..]);
    assert_eq!(
        decode_transaction(&b, &UUID, 20),
        Err(FrameEnd::PayloadChecksum { expected, actual })
    );
    // The zero padding after the ops is covered by the payload crc as well.
    let mut b = good.clone();
    b[BLOCK - 1] = 1;
    assert!(matches!(
        decode_transaction(&b, &UUID, 20),
        Err(FrameEnd::PayloadChecksum { .. })
    ));

    assert_eq!(
        FrameEnd::SeqMismatch {
            expected: 3,
            found: 4
        }
        .to_string(),
        "frame sequence 4, expected 3"
    );
}

#[test]
fn bad_payloads_name_the_problem() {
    // Builds a payload: op count, then raw op bytes.
    fn ops(count: u32, bytes: &[u8]) -> Vec<u8> {
        let mut p = count.to_le_bytes().to_vec();
        p.extend_from_slice(bytes);
        p
    }
    fn name(bytes: &[u8]) -> Vec<u8> {
        let mut n = (bytes.len() as u16).to_le_bytes().to_vec();
        n.extend_from_slice(bytes);
        n
    }
    fn extent_bytes(device: u8, offset: u64, length: u64) -> Vec<u8> {
        let mut e = vec![device];
        e.extend_from_slice(&offset.to_le_bytes());
        e.extend_from_slice(&length.to_le_bytes());
        e
    }
    fn fnode_with(extent: Vec<u8>) -> Vec<u8> {
        let mut f = vec![TAG_FILE_UPDATE];
        f.extend_from_slice(&[0u8; 24]);
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend(extent);
        f
    }

    let r = payload_error(&[]);
    assert!(r.contains("op count: needs 4 bytes"), "{r}");
    let r = payload_error(&ops(u32::MAX, &[]));
    assert!(r.contains("op count: count 4294967295 cannot fit"), "{r}");
    let r = payload_error(&ops(4, &[TAG_FILE_REMOVE, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert!(
        r.contains("count 4 cannot fit in the 9 bytes left (at most 3)"),
        "{r}"
    );
    let r = payload_error(&ops(2, &[TAG_FILE_REMOVE, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(r, "op 1: tag: needs 1 bytes at offset 13, only 0 left");
    let r = payload_error(&ops(1, &[0, 0, 0]));
    assert_eq!(r, "op 0: unknown op tag 0");
    let r = payload_error(&ops(1, &[13, 0, 0]));
    assert_eq!(r, "op 0: unknown op tag 13");

    let mut bad_utf8 = vec![TAG_DIR_CREATE];
    bad_utf8.extend(name(&[b'a', 0xff, b'b']));
    let r = payload_error(&ops(1, &bad_utf8));
    assert!(
        r.starts_with("op 0: DirCreate: name: not valid UTF-8"),
        "{r}"
    );

    let mut too_long = vec![TAG_DIR_REMOVE];
    too_long.extend(name(&vec![b'a'; MAX_NAME_LEN + 1]));
    let r = payload_error(&ops(1, &too_long));
    assert_eq!(
        r,
        "op 0: DirRemove: name: length 4097 is over the 4096-byte limit"
    );

    let mut short_name = vec![TAG_DIR_LINK];
    short_name.extend(name(b"db"));
    short_name.extend_from_slice(&50u16.to_le_bytes());
    short_name.extend_from_slice(b"abc");
    let r = payload_error(&ops(1, &short_name));
    assert!(r.starts_with("op 0: DirLink: name: needs 50 bytes"), "{r}");

    let mut two = vec![TAG_JUMP_SEQ];
    two.extend_from_slice(&1u64.to_le_bytes());
    two.extend(fnode_with(extent_bytes(3, 0, 4096)));
    let r = payload_error(&ops(2, &two));
    assert_eq!(
        r,
        "op 1: FileUpdate: extent 0: device byte 3 is not 0 (wal), 1 (db) or 2 (slow)"
    );
    let r = payload_error(&ops(1, &fnode_with(extent_bytes(1, 4096, 0))));
    assert_eq!(r, "op 0: FileUpdate: extent 0: length is 0");
    let r = payload_error(&ops(1, &fnode_with(extent_bytes(2, u64::MAX, 1))));
    assert!(r.contains("overflows u64"), "{r}");

    let mut delta = vec![TAG_FILE_UPDATE_DELTA];
    delta.extend_from_slice(&[0u8; 24]);
    delta.extend_from_slice(&2u32.to_le_bytes());
    delta.extend(extent_bytes(1, 0, u64::MAX));
    delta.extend(extent_bytes(1, 0, 1));
    let r = payload_error(&ops(1, &delta));
    assert!(
        r.starts_with("op 0: FileUpdateDelta: extent 1: extents total more than"),
        "{r}"
    );

    let mut huge_count = vec![TAG_FILE_UPDATE_DELTA];
    huge_count.extend_from_slice(&[0u8; 24]);
    huge_count.extend_from_slice(&0x1000_0000u32.to_le_bytes());
    let r = payload_error(&ops(1, &huge_count));
    assert!(
        r.contains("extent count: count 268435456 cannot fit"),
        "{r}"
    );

    let mut stray = vec![TAG_INIT];
    stray.extend_from_slice(&5u64.to_le_bytes());
    stray.push(0);
    let r = payload_error(&ops(1, &stray));
    assert_eq!(r, "1 stray bytes after the last op");
}

// --- properties ---

fn arb_device() -> impl Strategy<Value = DeviceId> {
    prop::sample::select(DeviceId::ALL.to_vec())
}

fn arb_extent() -> impl Strategy<Value = Extent> {
    (arb_device(), any::<u64>(), 1u64..=u64::MAX).prop_map(|(device, offset, length)| {
        // Keep offset + length within u64, as a decoded extent must be.
        let offset = offset % (u64::MAX - length + 1);
        ext(device, offset, length)
    })
}

fn arb_extents() -> impl Strategy<Value = Vec<Extent>> {
    // Total length must fit in u64: use lengths below 2^48 for lists.
    prop::collection::vec(
        (arb_device(), 0u64..1 << 50, 1u64..1 << 48)
            .prop_map(|(device, offset, length)| ext(device, offset, length)),
        0..12,
    )
}

fn arb_fnode() -> impl Strategy<Value = Fnode> {
    (any::<u64>(), any::<u64>(), any::<u64>(), arb_extents()).prop_map(
        |(ino, size, mtime_ns, extents)| Fnode {
            ino,
            size,
            mtime_ns,
            extents,
        },
    )
}

fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9._-]{0,24}",
        2 => any::<String>(),
        1 => (0usize..=MAX_NAME_LEN).prop_map(|n| "n".repeat(n)),
    ]
}

fn arb_op() -> impl Strategy<Value = LogOp> {
    prop_oneof![
        any::<u64>().prop_map(|created_ns| LogOp::Init { created_ns }),
        arb_name().prop_map(|name| LogOp::DirCreate { name }),
        arb_name().prop_map(|name| LogOp::DirRemove { name }),
        (arb_name(), arb_name(), any::<u64>()).prop_map(|(dir, name, ino)| LogOp::DirLink {
            dir,
            name,
            ino
        }),
        (arb_name(), arb_name()).prop_map(|(dir, name)| LogOp::DirUnlink { dir, name }),
        arb_fnode().prop_map(LogOp::FileUpdate),
        (any::<u64>(), any::<u64>(), any::<u64>(), arb_extents()).prop_map(
            |(ino, size, mtime_ns, appended)| LogOp::FileUpdateDelta {
                ino,
                size,
                mtime_ns,
                appended,
            }
        ),
        any::<u64>().prop_map(|ino| LogOp::FileRemove { ino }),
        any::<u64>().prop_map(|offset| LogOp::Jump { offset }),
        any::<u64>().prop_map(|seq| LogOp::JumpSeq { seq }),
    ]
}

fn arb_transaction() -> impl Strategy<Value = Transaction> {
    (
        any::<Uuid>(),
        any::<u64>(),
        prop::collection::vec(arb_op(), 0..16),
    )
        .prop_map(|(uuid, seq, ops)| Transaction { uuid, seq, ops })
}

/// Byte vectors of 0 to 3 blocks; some start with one of our magics so the checks past the
/// magic get exercised too.
fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    let raw = prop::collection::vec(any::<u8>(), 0..3 * BLOCK);
    let magic = prop::sample::select(vec![LABEL_MAGIC, SUPERBLOCK_MAGIC, FRAME_MAGIC]);
    prop_oneof![
        raw.clone(),
        (magic, any::<u16>(), raw).prop_map(|(magic, version, rest)| {
            let mut b = magic.to_vec();
            let version = if version % 2 == 0 { 1 } else { version };
            b.extend_from_slice(&version.to_le_bytes());
            b.extend(rest);
            b
        }),
    ]
}

proptest! {
    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in arb_bytes(), seq in any::<u64>()) {
        let _ = decode_label(&bytes);
        let _ = decode_superblock(&bytes);
        let _ = frame_len_from_header(&bytes);
        let _ = decode_transaction(&bytes, &UUID, seq);
    }

    /// Valid checksums around garbage: exercises every field check behind them.
    #[test]
    fn decoders_never_panic_behind_valid_checksums(
        body in prop::collection::vec(any::<u8>(), 0..2 * BLOCK),
        small_count in 0u32..300,
    ) {
        let mut payload = small_count.to_le_bytes().to_vec();
        payload.extend_from_slice(&body);
        // The payload encoding is canonical: whatever decodes re-encodes to the same bytes.
        for payload in [payload, body.clone()] {
            let frame = seal_frame(&UUID, 4, &payload);
            if let Ok((t, used)) = decode_transaction(&frame, &UUID, 4) {
                prop_assert_eq!(used, frame.len());
                prop_assert_eq!(encode_transaction(&t), frame);
            }
        }

        let mut sb = encode_superblock(&superblock(0)).unwrap();
        let n = body.len().min(BLOCK - SB_OFF_LOG_FNODE);
        sb[SB_OFF_LOG_FNODE..SB_OFF_LOG_FNODE + n].copy_from_slice(&body[..n]);
        reseal_block(&mut sb, SB_OFF_CRC);
        let _ = decode_superblock(&sb);

        let mut lb = encode_label(&label());
        let n = body.len().min(BLOCK - LABEL_OFF_DEVICE);
        lb[LABEL_OFF_DEVICE..LABEL_OFF_DEVICE + n].copy_from_slice(&body[..n]);
        reseal_block(&mut lb, LABEL_OFF_CRC);
        let _ = decode_label(&lb);
    }

    #[test]
    fn transactions_round_trip(t in arb_transaction()) {
        let frame = encode_transaction(&t);
        prop_assert_eq!(frame.len() % BLOCK, 0);
        prop_assert_eq!(frame_len_from_header(&frame), Some(frame.len()));
        let got = decode_transaction(&frame, &t.uuid, t.seq);
        prop_assert_eq!(got, Ok((t.clone(), frame.len())));
    }

    #[test]
    fn any_flipped_frame_byte_fails(
        t in arb_transaction(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
        anywhere in any::<bool>(),
    ) {
        let mut frame = encode_transaction(&t);
        let payload_end = FRAME_HEADER_LEN + get_u32(&frame, FRAME_OFF_PAYLOAD_LEN) as usize;
        // Half the time inside header + payload, else anywhere (padding included).
        let limit = if anywhere { frame.len() } else { payload_end };
        let i = at.index(limit);
        frame[i] ^= mask;
        let got = decode_transaction(&frame, &t.uuid, t.seq);
        prop_assert!(got.is_err(), "byte {} ^ {:#x} gave {:?}", i, mask, got);
    }

    #[test]
    fn truncated_frames_are_truncated(t in arb_transaction(), at in any::<prop::sample::Index>()) {
        let frame = encode_transaction(&t);
        let len = at.index(frame.len());
        prop_assert_eq!(decode_transaction(&frame[..len], &t.uuid, t.seq), Err(FrameEnd::Truncated));
    }

    #[test]
    fn labels_and_superblocks_round_trip(
        uuid in any::<Uuid>(),
        device in arb_device(),
        a in any::<u64>(),
        b in any::<u64>(),
        units in prop::array::uniform3(0u64..1 << 20),
        fnode in arb_fnode(),
    ) {
        let l = Label { uuid, device, device_size: a, created_ns: b };
        prop_assert_eq!(decode_label(&encode_label(&l)), Ok(l));
        let s = Superblock {
            uuid,
            generation: a,
            block_size: BLOCK_SIZE as u32,
            alloc_units: units.map(|u| u * BLOCK_SIZE),
            log_fnode: fnode,
            log_first_seq: b,
        };
        prop_assert_eq!(decode_superblock(&encode_superblock(&s).unwrap()), Ok(s));
    }

    #[test]
    fn single_extents_round_trip(e in arb_extent()) {
        let t = txn(1, vec![LogOp::FileUpdateDelta { ino: 2, size: 3, mtime_ns: 4, appended: vec![e] }]);
        prop_assert_eq!(decode_transaction(&encode_transaction(&t), &UUID, 1), Ok((t, BLOCK)));
    }
}
