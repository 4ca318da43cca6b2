//! The BlueFS log frame decoder on arbitrary bytes, two ways:
//! 1. as a log, walked frame by frame the way replay does;
//! 2. as a payload behind a valid header and checksums (layout from docs/format.md, "Log frame"),
//!    so the op decoder itself is exercised.
//! Whatever decodes must re-encode to something that decodes the same (byte for byte, for 2).

#![no_main]

use bluepoll::bluefs::format::{
    BLOCK_SIZE, FRAME_HEADER_LEN, decode_transaction, encode_transaction, frame_len_from_header,
};
use libfuzzer_sys::fuzz_target;

const UUID: [u8; 16] = *b"bluepoll-fuzzing";

/// A version-1 frame around `payload` with correct checksums.
fn seal(seq: u64, payload: &[u8]) -> Vec<u8> {
    let block = BLOCK_SIZE as usize;
    let mut frame = vec![0u8; FRAME_HEADER_LEN];
    frame.extend_from_slice(payload);
    frame.resize(frame.len().div_ceil(block) * block, 0);
    frame[0..8].copy_from_slice(b"BPFSJRNL");
    frame[8..10].copy_from_slice(&1u16.to_le_bytes());
    frame[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    frame[16..32].copy_from_slice(&UUID);
    frame[32..40].copy_from_slice(&seq.to_le_bytes());
    let payload_crc = crc32c::crc32c(&frame[FRAME_HEADER_LEN..]);
    frame[40..44].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&frame[..44]);
    frame[44..48].copy_from_slice(&header_crc.to_le_bytes());
    frame
}

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    let mut seq = 1;
    while at < data.len() {
        let rest = &data[at..];
        let len = frame_len_from_header(rest);
        match decode_transaction(rest, &UUID, seq) {
            Ok((t, used)) => {
                assert_eq!(len, Some(used));
                assert!(used > 0 && used % BLOCK_SIZE as usize == 0);
                let again = encode_transaction(&t);
                assert_eq!(decode_transaction(&again, &UUID, seq), Ok((t, again.len())));
                at += used;
                seq += 1;
            }
            Err(_) => break,
        }
    }

    if data.len() <= u32::MAX as usize {
        let frame = seal(7, data);
        if let Ok((t, used)) = decode_transaction(&frame, &UUID, 7) {
            assert_eq!(used, frame.len());
            assert_eq!(encode_transaction(&t), frame);
        }
    }
});
