#![no_main]
//! Fuzz target `entry_args`: see `fuzz/src/lib.rs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| terrahost_fuzz::entry_args(data));
