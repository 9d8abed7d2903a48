#![no_main]
//! Fuzz target `torch_save`: see `fuzz/src/lib.rs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| terrahost_fuzz::torch_save(data));
