#![no_main]
//! Fuzz target `safetensors`: see `fuzz/src/lib.rs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| terrahost_fuzz::safetensors(data));
