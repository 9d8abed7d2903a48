//! The integration tests: one test binary (every binary here links libtch, so one
//! link instead of one per file), a module per area. They load the built plugin
//! libraries from a directory and run the built `terrahost` binaries, as users do.
mod abi_matrix;
mod cli;
mod corpus;
mod cross_plugin;
mod front;
mod fuzz_replay;
mod hostile;
mod hostile_inputs;
mod in_process;
mod peft;
mod plugins;
mod predict;
mod predict_detection;
mod scaffold;
mod terratorch_1213;
mod trust;
