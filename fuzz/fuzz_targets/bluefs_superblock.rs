//! The BlueFS label and superblock decoders on arbitrary bytes: they never panic, and whatever
//! they accept re-encodes to a block that decodes to the same value.

#![no_main]

use bluepoll::bluefs::format::{decode_label, decode_superblock, encode_label, encode_superblock};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(label) = decode_label(data) {
        assert_eq!(decode_label(&encode_label(&label)), Ok(label));
    }
    if let Ok(superblock) = decode_superblock(data) {
        let block = encode_superblock(&superblock).expect("a decoded superblock re-encodes");
        assert_eq!(decode_superblock(&block), Ok(superblock));
    }
});
