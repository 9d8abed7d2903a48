#![no_main]
//! Fuzz target `model_config`: see `fuzz/src/lib.rs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| terrahost_fuzz::model_config(data));
