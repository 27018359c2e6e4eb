#![no_main]
libfuzzer_sys::fuzz_target!(init: conveyor_fuzz::seed_corpus("packer_manifest"), |data: &[u8]| conveyor_fuzz::packer_manifest(data));
