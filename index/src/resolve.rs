//! TerraTorch's name resolution in a multi-source registry, written once for both
//! binaries: the engine's registries (live and lazy plugin sources) and the front's
//! registries as data ([`crate::view`]) implement [`SourceView`] and call [`find`].
//!
//! A prefixed name (`timm_resnet18`) goes to its source and must exist there; a bare
//! name is searched source by source in the search order, which is TerraTorch's
//! (`terratorch`, `timm`, `smp`, `mmseg`, then other prefixes in load order,
//! [`source_rank`]). Stricter than TerraTorch: a known-but-unsupported name answers
//! with the source's reason, an unknown name gets did-you-mean suggestions, and a
//! prefix whose plugin is not installed is named as a missing source.
use crate::common::suggestions;

/// TerraTorch's own sources, in its search order (terratorch first, then the optional
/// sources in the order TerraTorch adds them). They name a source even when its plugin
/// is not installed, so that `mmseg_FCNHead` without the mmseg plugin says "install
/// mmseg" rather than "unknown name"; prefixes declared by any loaded plugin are added
/// at run time.
pub const WELL_KNOWN_PREFIXES: [&str; 4] = ["terratorch", "timm", "smp", "mmseg"];

/// Where a source with `prefix` goes in the search order: TerraTorch's sources in its
/// order, then every other prefix.
pub fn source_rank(prefix: &str) -> usize {
    WELL_KNOWN_PREFIXES
        .iter()
        .position(|p| *p == prefix)
        .unwrap_or(WELL_KNOWN_PREFIXES.len())
}

/// Where a new source with `prefix` is inserted among sources with `prefixes` (in
/// search order): after every source of the same or an earlier rank.
pub fn insertion_index<'a>(prefixes: impl IntoIterator<Item = &'a str>, prefix: &str) -> usize {
    let rank = source_rank(prefix);
    let mut n = 0;
    for (i, p) in prefixes.into_iter().enumerate() {
        if source_rank(p) > rank {
            return i;
        }
        n = i + 1;
    }
    n
}

/// What [`find`] needs to know about one source.
pub trait SourceView {
    /// The prefix (`timm`).
    fn prefix(&self) -> &str;
    /// The plugin that registered it.
    fn plugin(&self) -> &str;
    /// The entry names, in the source's order.
    fn names(&self) -> Vec<String>;
    /// Whether the source builds `name`.
    fn contains(&self, name: &str) -> bool;
    /// The source's reason for not building `name`, when it knows the name but does not
    /// build it.
    fn refusal(&self, name: &str) -> Option<String>;
    /// The source's own message for a name it does not have (asked only for names
    /// with a dot, such as timm's `arch.tag`, whose reason only the source knows).
    fn own_error(&self, name: &str) -> Option<String>;
}

/// Why a name was not resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not there; the message says what is.
    NotFound(String),
    /// Known, but not built; the message is the source's reason.
    NotSupported(String),
}

impl Lookup {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Self::NotFound(m) | Self::NotSupported(m) => m,
        }
    }
}

/// "`what` is not in the `registry` registry; did you mean ...?"
pub fn not_found_message(what: &str, registry: &str, candidates: &[String]) -> String {
    let close = suggestions(what, candidates.iter().map(String::as_str));
    let hint = if close.is_empty() {
        format!("; `terrahost list {registry}` shows what is available")
    } else {
        format!(
            "; did you mean {}?",
            close
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!("`{what}` is not in the {registry} registry{hint}")
}

/// The message for a registry name that is not one of the five.
pub fn unknown_registry_message(name: &str) -> String {
    format!(
        "there is no registry `{name}`; the registries are {}",
        crate::common::registry_names::ALL.join(", ")
    )
}

/// `(source, rest)` when the part of `name` before the first `_` is a source's prefix.
pub fn parse_prefix<'s, 'n, S: SourceView>(
    sources: &'s [S],
    name: &'n str,
) -> Option<(&'s S, &'n str)> {
    let (prefix, rest) = name.split_once('_')?;
    if rest.is_empty() {
        return None;
    }
    sources
        .iter()
        .find(|s| s.prefix() == prefix)
        .map(|s| (s, rest))
}

/// Whether `name` (prefixed or bare) can be built.
pub fn contains<S: SourceView>(sources: &[S], name: &str) -> bool {
    match parse_prefix(sources, name) {
        Some((slot, rest)) => slot.contains(rest),
        None => sources.iter().any(|s| s.contains(name)),
    }
}

/// The source that holds `name` and the name inside it (TerraTorch's `find_registry`),
/// in the registry `registry` whose sources are `sources` (in search order) and whose
/// known source names are `known_prefixes`.
pub fn find<'s, S: SourceView>(
    registry: &str,
    sources: &'s [S],
    known_prefixes: &[String],
    name: &str,
) -> Result<(&'s S, String), Lookup> {
    if let Some((slot, rest)) = parse_prefix(sources, name) {
        if slot.contains(rest) {
            return Ok((slot, rest.to_owned()));
        }
        if let Some(why) = slot.refusal(rest) {
            return Err(Lookup::NotSupported(why));
        }
        // A name with a dot (timm's `arch.tag`) may be refused by the source for a reason
        // only it knows (an unknown pretrained tag): its own message says which.
        if rest.contains('.') {
            if let Some(message) = slot.own_error(rest) {
                return Err(Lookup::NotFound(format!(
                    "{message} (source `{}` of the {registry} registry, plugin `{}`)",
                    slot.prefix(),
                    slot.plugin()
                )));
            }
        }
        let names = slot.names();
        let close = suggestions(rest, names.iter().map(String::as_str));
        let hint = if close.is_empty() {
            String::new()
        } else {
            format!(
                "; did you mean {}?",
                close
                    .iter()
                    .map(|c| format!("`{}_{c}`", slot.prefix()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(Lookup::NotFound(format!(
            "`{rest}` is not in source `{}` of the {registry} registry (plugin `{}`){hint}",
            slot.prefix(),
            slot.plugin()
        )));
    }
    if let Some(slot) = sources.iter().find(|s| s.contains(name)) {
        return Ok((slot, name.to_owned()));
    }
    if let Some(why) = sources.iter().find_map(|s| s.refusal(name)) {
        return Err(Lookup::NotSupported(why));
    }
    if let Some((prefix, _)) = name.split_once('_') {
        if known_prefixes.iter().any(|p| p == prefix) {
            let installed: Vec<&str> = sources.iter().map(|s| s.prefix()).collect();
            return Err(Lookup::NotFound(format!(
                "no source `{prefix}` in the {registry} registry (installed: {}); install the `{prefix}` plugin library into a plugin directory to build `{name}`",
                if installed.is_empty() { "none".to_owned() } else { installed.join(", ") }
            )));
        }
    }
    let all: Vec<String> = sources
        .iter()
        .flat_map(|s| {
            s.names()
                .into_iter()
                .map(move |n| format!("{}_{n}", s.prefix()))
        })
        .chain(sources.iter().flat_map(|s| s.names()))
        .collect();
    Err(Lookup::NotFound(not_found_message(name, registry, &all)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_go_in_terratorchs_order_then_load_order() {
        let mut order: Vec<&str> = Vec::new();
        for p in ["mine", "mmseg", "timm", "other", "terratorch", "smp"] {
            let at = insertion_index(order.iter().copied(), p);
            order.insert(at, p);
        }
        assert_eq!(
            order,
            ["terratorch", "timm", "smp", "mmseg", "mine", "other"]
        );
    }
}
