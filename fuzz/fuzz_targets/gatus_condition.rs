#![no_main]
libfuzzer_sys::fuzz_target!(init: conveyor_fuzz::seed_corpus("gatus_condition"), |data: &[u8]| conveyor_fuzz::gatus_condition(data));
