#![no_main]
libfuzzer_sys::fuzz_target!(init: conveyor_fuzz::seed_corpus("stripe_event"), |data: &[u8]| conveyor_fuzz::stripe_event(data));
