//! Registration: which plugins register and which are refused, decided once for both
//! binaries. The engine's `terrahost::Host` (live and lazy sources) and the front's
//! [`crate::view::View`] (the scans' data) each describe what they already hold through
//! [`Registered`] and call [`check`]; the messages and kind codes come from here alone.
//!
//! The rules, in the order they are checked:
//!
//! * a plugin name that is already registered is `duplicate-plugin`;
//! * a source the manifest does not declare, a source the plugin registers twice, an
//!   invalid prefix or an unknown registry is `invalid-manifest`;
//! * a prefix another plugin holds in a multi-source registry, or a name another plugin
//!   (or the host) holds in the flat `model_factory` registry, is `duplicate-prefix`;
//! * a refused plugin registers nothing (all of its sources or none).
use crate::common::registry_names as names;
use crate::meta::{kind, Refusal};
use std::collections::HashSet;
use std::path::Path;

/// One source a plugin asks to register.
#[derive(Clone, Debug)]
pub struct SourceClaim<'a> {
    /// The registry (`backbone`).
    pub registry: &'a str,
    /// The prefix (`timm`).
    pub prefix: &'a str,
    /// Its entry names (the flat `model_factory` registry checks each one).
    pub names: Vec<String>,
}

/// A plugin asking to register: its name, what its manifest declares and the sources
/// it brings.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    /// The plugin's name.
    pub plugin: &'a str,
    /// `(registry, prefix)` for each source its manifest declares.
    pub declared: Vec<(&'a str, &'a str)>,
    /// The sources it registers.
    pub sources: Vec<SourceClaim<'a>>,
}

/// What is registered already, as [`check`] needs to know it.
pub trait Registered {
    /// `Some(file)` when a plugin called `name` is registered (`Some(None)` for a plugin
    /// linked into the process).
    fn plugin_file(&self, name: &str) -> Option<Option<&Path>>;
    /// The plugin that holds `prefix` in the multi-source registry `registry`.
    fn prefix_holder(&self, registry: &str, prefix: &str) -> Option<&str>;
    /// The plugin (`host` for an in-process entry) that holds `name` in the flat
    /// `model_factory` registry.
    fn name_holder(&self, name: &str) -> Option<&str>;
}

/// The multi-source registries, in the order the host creates them.
pub const MULTI: [&str; 4] = [
    names::BACKBONE,
    names::NECK,
    names::DECODER,
    names::FULL_MODEL,
];

/// Whether `registry` is one of the multi-source registries.
pub fn is_multi(registry: &str) -> bool {
    MULTI.contains(&registry)
}

/// Whether `candidate` may register, given what is `registered`: `Ok` means all of its
/// sources can be added; a refusal means none may be.
pub fn check(registered: &dyn Registered, candidate: &Candidate<'_>) -> Result<(), Refusal> {
    let plugin = candidate.plugin;
    if let Some(file) = registered.plugin_file(plugin) {
        return Err(already_loaded(plugin, file));
    }
    let mut claimed: HashSet<(&str, &str)> = HashSet::new();
    let mut flat_names: HashSet<&str> = HashSet::new();
    for s in &candidate.sources {
        let (registry, prefix) = (s.registry, s.prefix);
        if !candidate.declared.contains(&(registry, prefix)) {
            return Err(Refusal::new(kind::INVALID_MANIFEST, format!(
                "plugin `{plugin}` registers `{prefix}` in `{registry}` but its manifest does not declare it"
            )));
        }
        if !claimed.insert((registry, prefix)) {
            return Err(Refusal::new(
                kind::INVALID_MANIFEST,
                format!("plugin `{plugin}` registers `{prefix}` in `{registry}` twice"),
            ));
        }
        if registry == names::MODEL_FACTORY {
            check_names(registry, &s.names, plugin, |n| {
                if flat_names.contains(n) {
                    Some(plugin)
                } else {
                    registered.name_holder(n)
                }
            })?;
            flat_names.extend(s.names.iter().map(String::as_str));
        } else if is_multi(registry) {
            check_prefix(
                registry,
                prefix,
                plugin,
                registered.prefix_holder(registry, prefix),
            )?;
        } else {
            return Err(Refusal::new(
                kind::INVALID_MANIFEST,
                format!(
                    "plugin `{plugin}`: {}",
                    crate::resolve::unknown_registry_message(registry)
                ),
            ));
        }
    }
    Ok(())
}

/// The refusal of a plugin whose name is already registered (from `file`, or linked in).
pub fn already_loaded(plugin: &str, file: Option<&Path>) -> Refusal {
    let at = file
        .map(|p| format!(" ({})", p.display()))
        .unwrap_or_default();
    Refusal::new(
        kind::DUPLICATE_PLUGIN,
        format!("a plugin named `{plugin}` is already loaded{at}; remove one of the two copies"),
    )
}

/// Whether `plugin` may add a source with `prefix` to the multi-source `registry`, whose
/// current holder of that prefix (if any) is `holder`: an invalid prefix is
/// `invalid-manifest`, a taken one `duplicate-prefix`.
pub fn check_prefix(
    registry: &str,
    prefix: &str,
    plugin: &str,
    holder: Option<&str>,
) -> Result<(), Refusal> {
    if prefix.is_empty() || prefix.contains('_') || prefix.chars().any(char::is_whitespace) {
        return Err(Refusal::new(kind::INVALID_MANIFEST, format!(
            "plugin `{plugin}` declares an invalid prefix {prefix:?} for the {registry} registry: a prefix is a non-empty word without `_`"
        )));
    }
    if let Some(existing) = holder {
        return Err(Refusal::new(kind::DUPLICATE_PREFIX, format!(
            "Source for prefix {prefix} already exists in the {registry} registry: plugin `{existing}` registered it first, so plugin `{plugin}` cannot register it again"
        )));
    }
    Ok(())
}

/// Whether `plugin` may add `names` to the flat `registry`, where `holder(name)` is who
/// holds a name already: the first taken name is `duplicate-prefix`.
pub fn check_names<'h>(
    registry: &str,
    names: &[String],
    plugin: &str,
    holder: impl Fn(&str) -> Option<&'h str>,
) -> Result<(), Refusal> {
    for name in names {
        if let Some(existing) = holder(name) {
            return Err(Refusal::new(kind::DUPLICATE_PREFIX, format!(
                "`{name}` is already in the {registry} registry from plugin `{existing}`, so plugin `{plugin}` cannot register it again"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Held {
        plugins: Vec<&'static str>,
        prefixes: Vec<(&'static str, &'static str, &'static str)>,
        flat: Vec<(&'static str, &'static str)>,
    }

    impl Registered for Held {
        fn plugin_file(&self, name: &str) -> Option<Option<&Path>> {
            self.plugins
                .contains(&name)
                .then(|| Some(Path::new("/p/held.so")))
        }
        fn prefix_holder(&self, registry: &str, prefix: &str) -> Option<&str> {
            self.prefixes
                .iter()
                .find(|(r, p, _)| *r == registry && *p == prefix)
                .map(|(_, _, h)| *h)
        }
        fn name_holder(&self, name: &str) -> Option<&str> {
            self.flat.iter().find(|(n, _)| *n == name).map(|(_, h)| *h)
        }
    }

    fn claim<'a>(registry: &'a str, prefix: &'a str, names: &[&str]) -> SourceClaim<'a> {
        SourceClaim {
            registry,
            prefix,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn registration_conflicts_have_their_kinds() {
        let held = Held {
            plugins: vec!["timm"],
            prefixes: vec![("backbone", "timm", "timm")],
            flat: vec![("TimmModelFactory", "timm")],
        };
        let decl = vec![
            ("backbone", "x"),
            ("model_factory", "x"),
            ("backbone", "timm"),
            ("nope", "x"),
            ("backbone", "a_b"),
        ];
        let try_ = |plugin: &'static str, sources: Vec<SourceClaim<'static>>| {
            check(
                &held,
                &Candidate {
                    plugin,
                    declared: decl.clone(),
                    sources,
                },
            )
        };
        let e = try_("timm", vec![]).unwrap_err();
        assert_eq!(e.kind, kind::DUPLICATE_PLUGIN);
        assert!(e.reason.contains("(/p/held.so)"), "{}", e.reason);
        assert!(try_("x", vec![claim("backbone", "x", &["a"])]).is_ok());
        let e = try_("x", vec![claim("neck", "x", &[])]).unwrap_err();
        assert_eq!(e.kind, kind::INVALID_MANIFEST);
        assert!(e.reason.contains("does not declare"), "{}", e.reason);
        let e = try_(
            "x",
            vec![claim("backbone", "x", &[]), claim("backbone", "x", &[])],
        )
        .unwrap_err();
        assert_eq!(e.kind, kind::INVALID_MANIFEST);
        assert!(e.reason.ends_with("twice"), "{}", e.reason);
        let e = try_("x", vec![claim("backbone", "timm", &[])]).unwrap_err();
        assert_eq!(e.kind, kind::DUPLICATE_PREFIX);
        assert!(
            e.reason.contains("plugin `timm` registered it first"),
            "{}",
            e.reason
        );
        let e = try_("x", vec![claim("backbone", "a_b", &[])]).unwrap_err();
        assert_eq!(e.kind, kind::INVALID_MANIFEST);
        let e = try_("x", vec![claim("nope", "x", &[])]).unwrap_err();
        assert_eq!(e.kind, kind::INVALID_MANIFEST);
        let e = try_(
            "x",
            vec![claim("model_factory", "x", &["TimmModelFactory"])],
        )
        .unwrap_err();
        assert_eq!(e.kind, kind::DUPLICATE_PREFIX);
        assert!(e.reason.contains("from plugin `timm`"), "{}", e.reason);
    }
}
