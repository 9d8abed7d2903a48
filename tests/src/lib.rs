//! Integration tests live in tests/tests/*.rs and benchmarks in tests/benches/*.rs (see
//! the README). This library holds what several of them share.
use terrahost::Host;

/// A host made of the four plugins' code linked into this process (no dlopen, no
/// library boundary): what the plugin libraries are compared with.
pub fn in_process_host() -> Host {
    Host::with_plugins(vec![
        (
            terrahost_terratorch::plugin_manifest(),
            terrahost_terratorch::plugin_sources().unwrap(),
        ),
        (
            terrahost_timm::plugin_manifest(),
            terrahost_timm::plugin_sources().unwrap(),
        ),
        (
            terrahost_smp::plugin_manifest(),
            terrahost_smp::plugin_sources().unwrap(),
        ),
        (
            terrahost_mmseg::plugin_manifest(),
            terrahost_mmseg::plugin_sources().unwrap(),
        ),
    ])
    .expect("the four plugins link into one host")
}
