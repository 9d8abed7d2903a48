//! Helpers shared by the plugin's test modules: building a decoder of this plugin by
//! name, checking a parity fixture, and asserting argument errors.
use serde_json::Value;
use terrahost_plugin_api::sdk::DynModule;
use terrahost_plugin_api::{ErrorKind, PluginError, Result};

/// Builds decoder `name` of this plugin on `channels` with `args`.
pub(crate) fn build(name: &str, channels: &[i64], args: Value) -> Result<DynModule> {
    terrahost_testkit::build_from(
        crate::plugin_sources()?,
        "decoder",
        name,
        Some(channels),
        &args,
    )
}

/// The error of a build that must fail.
pub(crate) fn build_err(name: &str, channels: &[i64], args: Value) -> PluginError {
    build(name, channels, args)
        .err()
        .unwrap_or_else(|| panic!("building {name} should fail"))
}

/// The parity check of fixture `case` against this plugin.
pub(crate) fn fixture(case: &str) {
    terrahost_testkit::check_fixture(crate::plugin_sources().unwrap(), case);
}

/// Every `(head, channels, args, needle)` must fail with an invalid-argument error
/// whose message contains `needle`.
pub(crate) fn expect_errors(cases: &[(&str, &[i64], Value, &str)]) {
    for (name, channels, a, needle) in cases {
        let e = build_err(name, channels, a.clone());
        assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT, "{name} {a}: {e}");
        assert!(e.message().contains(needle), "{name} {channels:?} {a}: {e}");
    }
}
