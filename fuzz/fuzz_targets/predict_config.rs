#![no_main]
//! Fuzz target `predict_config`: see `fuzz/src/lib.rs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| terrahost_fuzz::predict_config(data));
