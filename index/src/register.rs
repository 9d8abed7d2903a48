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
//!
//! Before any of that, when several plugin files declare the same plugin name, exactly
//! one of them is chosen ([`choose`]): **the highest version wins** (semver precedence;
//! build metadata does not count); at equal versions, **the file found first**, that is
//! the file in the earlier plugin directory and, within one directory, the first file
//! name in byte order. The others are refused as `duplicate-plugin` with a reason that
//! names both files and both versions, which one loaded and why. The choice depends on
//! the files' manifests only, never on the order the directory listing happens to give.
use crate::common::registry_names as names;
use crate::meta::{kind, Refusal};
use std::cmp::Ordering;
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

/// A plugin file as [`choose`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct Declared<'a> {
    /// The plugin name its manifest declares.
    pub plugin: &'a str,
    /// The version its manifest declares.
    pub version: &'a str,
    /// The file, as found in its plugin directory.
    pub path: &'a Path,
}

/// Why the chosen file of two with the same plugin name won.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Won {
    /// Its version is higher.
    HigherVersion,
    /// Same version; it is in an earlier plugin directory.
    EarlierDirectory,
    /// Same version, same directory; its file name comes first.
    FirstName,
}

/// One file that does not load because another file declares the same plugin name.
#[derive(Clone, Debug)]
pub struct Loser {
    /// Its index in the files given to [`choose`].
    pub index: usize,
    /// The index of the file that was chosen instead.
    pub winner: usize,
    /// Why that one was chosen.
    pub why: Won,
}

/// Among `files` (in discovery order: plugin directories in order, then file names in
/// order), the ones that do not load because another file declares the same plugin
/// name: per name, the highest version wins; at equal versions, the file found first.
/// The result is in the order of `files`.
pub fn choose(files: &[Declared<'_>]) -> Vec<Loser> {
    let mut winners: Vec<usize> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        match winners.iter_mut().find(|w| files[**w].plugin == f.plugin) {
            // Strictly higher only: at equal versions the earlier file stays.
            Some(w) if compare_versions(f.version, files[*w].version) == Ordering::Greater => {
                *w = i
            }
            Some(_) => {}
            None => winners.push(i),
        }
    }
    let mut losers = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let Some(&w) = winners.iter().find(|w| files[**w].plugin == f.plugin) else {
            continue;
        };
        if w == i {
            continue;
        }
        let winner = &files[w];
        let why = if compare_versions(winner.version, f.version) == Ordering::Greater {
            Won::HigherVersion
        } else if winner.path.parent() != f.path.parent() {
            Won::EarlierDirectory
        } else {
            Won::FirstName
        };
        losers.push(Loser {
            index: i,
            winner: w,
            why,
        });
    }
    losers
}

/// The refusal of `loser`, which declares the same plugin name as `winner`.
/// `winner_refused` says that the chosen file was then refused itself (a prefix another
/// plugin holds, say), so the message does not claim that it loaded.
pub fn duplicate_refusal(
    loser: &Declared<'_>,
    winner: &Declared<'_>,
    why: Won,
    winner_refused: bool,
) -> Refusal {
    let rule = match why {
        Won::HigherVersion => "the higher version wins",
        Won::EarlierDirectory => "at equal versions the file in the earlier plugin directory wins",
        Won::FirstName => "at equal versions the file whose name comes first wins",
    };
    let chosen = if winner_refused {
        "was chosen (and then refused itself, see its entry)"
    } else {
        "is loaded"
    };
    let advice = match why {
        Won::HigherVersion => "remove the older copy",
        _ => "remove one of the two copies",
    };
    Refusal::new(
        kind::DUPLICATE_PLUGIN,
        format!(
            "two files declare plugin `{}`: {} (version {}) {chosen} and this one, {} (version {}), is not, because {rule}; {advice}",
            loser.plugin,
            winner.path.display(),
            winner.version,
            loser.path.display(),
            loser.version,
        ),
    )
}

/// Semver precedence of two version strings (`1.2.0-rc.1 < 1.2.0 < 1.10.0`; build
/// metadata after `+` is ignored). A string that is not `MAJOR.MINOR.PATCH[-PRE]`
/// sorts below every valid one (a scanned manifest's version is always valid).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (parse_version(a), parse_version(b)) {
        (Some(a), Some(b)) => a.0.cmp(&b.0).then_with(|| compare_pre(&a.1, &b.1)),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    }
}

fn parse_version(v: &str) -> Option<([u64; 3], Vec<&str>)> {
    let v = v.split_once('+').map_or(v, |(core, _)| core);
    let (core, pre) = match v.split_once('-') {
        Some((core, pre)) => (core, pre.split('.').collect()),
        None => (v, Vec::new()),
    };
    let mut numbers = core.split('.').map(|n| n.parse::<u64>().ok());
    let parsed = [numbers.next()??, numbers.next()??, numbers.next()??];
    if numbers.next().is_some() || pre.iter().any(|p: &&str| p.is_empty()) {
        return None;
    }
    Some((parsed, pre))
}

/// Pre-release precedence: none is higher than any; numeric identifiers compare as
/// numbers and below alphanumeric ones; a longer list wins when the shorter is its prefix.
fn compare_pre(a: &[&str], b: &[&str]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    for (x, y) in a.iter().zip(b) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            (Err(_), Err(_)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn versions_compare_by_semver_precedence() {
        use Ordering::*;
        for (a, b, o) in [
            ("0.2.0", "0.2.0", Equal),
            ("0.10.0", "0.9.9", Greater),
            ("1.0.0", "1.0.0-rc.1", Greater),
            ("1.0.0-alpha", "1.0.0-alpha.1", Less),
            ("1.0.0-alpha.1", "1.0.0-alpha.beta", Less),
            ("1.0.0-beta.2", "1.0.0-beta.11", Less),
            ("1.0.0-rc.1", "1.0.0-beta.11", Greater),
            ("1.0.0+build.5", "1.0.0+build.7", Equal),
            ("1.0", "0.0.1", Less),
            ("junk", "junk2", Equal),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    fn files(spec: &[(&str, &str, &str)]) -> Vec<(String, String, PathBuf)> {
        spec.iter()
            .map(|(n, v, p)| (n.to_string(), v.to_string(), PathBuf::from(p)))
            .collect()
    }

    fn declared(f: &[(String, String, PathBuf)]) -> Vec<Declared<'_>> {
        f.iter()
            .map(|(n, v, p)| Declared {
                plugin: n,
                version: v,
                path: p,
            })
            .collect()
    }

    fn losers(spec: &[(&str, &str, &str)]) -> Vec<(usize, usize, Won)> {
        let f = files(spec);
        choose(&declared(&f))
            .into_iter()
            .map(|l| (l.index, l.winner, l.why))
            .collect()
    }

    #[test]
    fn the_higher_version_wins_wherever_it_is_found() {
        assert_eq!(
            losers(&[
                ("smp", "0.2.0", "/a/libsmp.so"),
                ("timm", "0.2.0", "/a/libtimm.so"),
                ("smp", "0.3.0", "/b/libsmp.so"),
                ("smp", "0.3.0-rc.1", "/b/libzz.so"),
            ]),
            [(0, 2, Won::HigherVersion), (3, 2, Won::HigherVersion)]
        );
    }

    #[test]
    fn at_equal_versions_the_earlier_directory_then_the_first_name_wins() {
        assert_eq!(
            losers(&[
                ("smp", "0.2.0", "/a/libzz.so"),
                ("smp", "0.2.0", "/b/libaa.so"),
                ("smp", "0.2.0+other", "/a/libzzz.so"),
            ]),
            [(1, 0, Won::EarlierDirectory), (2, 0, Won::FirstName)]
        );
        assert!(losers(&[("a", "1.0.0", "/a/x.so"), ("b", "1.0.0", "/a/y.so")]).is_empty());
    }

    #[test]
    fn the_refusal_names_both_files_both_versions_and_the_rule() {
        let f = files(&[
            ("smp", "0.2.0", "/a/libsmp.so"),
            ("smp", "0.3.0", "/b/libsmp-new.so"),
        ]);
        let d = declared(&f);
        let r = duplicate_refusal(&d[0], &d[1], Won::HigherVersion, false);
        assert_eq!(r.kind, kind::DUPLICATE_PLUGIN);
        assert_eq!(
            r.reason,
            "two files declare plugin `smp`: /b/libsmp-new.so (version 0.3.0) is loaded and \
             this one, /a/libsmp.so (version 0.2.0), is not, because the higher version wins; \
             remove the older copy"
        );
        let r = duplicate_refusal(&d[0], &d[1], Won::FirstName, true);
        assert!(
            r.reason.contains("was chosen (and then refused itself"),
            "{}",
            r.reason
        );
    }

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
