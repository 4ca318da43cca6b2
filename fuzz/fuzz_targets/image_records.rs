#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bluepoll::fuzzing::image_records(data));
