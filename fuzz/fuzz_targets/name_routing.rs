#![no_main]
//! Fuzz target `name_routing`: see `fuzz/src/lib.rs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| terrahost_fuzz::name_routing(data));
