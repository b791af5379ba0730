#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_bolt::fuzzing::bolt_read(data));
