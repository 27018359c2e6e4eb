#![no_main]
libfuzzer_sys::fuzz_target!(init: conveyor_fuzz::seed_corpus("agent_messages"), |data: &[u8]| conveyor_fuzz::agent_messages(data));
