#![no_main]
libfuzzer_sys::fuzz_target!(init: conveyor_fuzz::seed_corpus("stripe_signature"), |data: &[u8]| conveyor_fuzz::stripe_signature(data));
