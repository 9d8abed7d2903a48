//! Helpers the smp plugin's tests share.
use crate::plugin_sources;
use serde_json::Value;
use terrahost_plugin_api::sdk::DynModule;

/// The names of a built module's buffers.
pub(crate) fn buffer_names(m: &DynModule) -> Vec<String> {
    m.module()
        .named_buffers()
        .into_iter()
        .map(|n| n.name.into_string())
        .collect()
}

/// Asserts that every buffer is a BatchNorm running statistic.
pub(crate) fn assert_running_stats_only(buffers: &[String]) {
    assert!(
        buffers
            .iter()
            .all(|b| b.ends_with("running_mean") || b.ends_with("running_var")),
        "{buffers:?}"
    );
}

/// The default the smp entry `entry` declares for `param` (after checking the entry
/// takes the channel list, as every smp decoder does).
pub(crate) fn declared_default(entry: &str, param: &str) -> Value {
    let sources = plugin_sources().unwrap();
    let info = sources[0]
        .source
        .describe(entry.into())
        .into_result()
        .unwrap();
    assert!(info.takes_channels, "{entry}");
    info.params
        .iter()
        .find(|p| p.name.as_str() == param)
        .unwrap_or_else(|| panic!("{entry}.{param} is not declared"))
        .default_value()
        .unwrap_or_else(|| panic!("{entry}.{param} has no default"))
}
