#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_journal::fuzzing::frame(data));
