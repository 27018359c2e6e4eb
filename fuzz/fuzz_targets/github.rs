#![no_main]
libfuzzer_sys::fuzz_target!(init: conveyor_fuzz::seed_corpus("github"), |data: &[u8]| conveyor_fuzz::github(data));
