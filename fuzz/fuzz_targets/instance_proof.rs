#![no_main]
libfuzzer_sys::fuzz_target!(init: conveyor_fuzz::seed_corpus("instance_proof"), |data: &[u8]| conveyor_fuzz::instance_proof(data));
