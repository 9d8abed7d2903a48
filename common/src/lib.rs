//! The few definitions that plugins and the libtorch-free front must agree on: the
//! registry names, the parameter type names and the did-you-mean suggestions.
//!
//! Both `terrahost-plugin-api` and `terrahost-index` depend on this crate. Neither may
//! depend on the other (the front must not link libtorch; plugins need nothing of the
//! host), and a copy in each would drift.

/// The names of the registries a source can contribute to, in the order the host
/// creates them. `model_factory` is a plain registry; the others are multi-source.
pub mod registry_names {
    /// Feature extractors (encoders).
    pub const BACKBONE: &str = "backbone";
    /// Modules between backbone and decoder.
    pub const NECK: &str = "neck";
    /// Decoders (which may include their own head).
    pub const DECODER: &str = "decoder";
    /// Complete models.
    pub const FULL_MODEL: &str = "full_model";
    /// Model factories (a plain registry, not multi-source).
    pub const MODEL_FACTORY: &str = "model_factory";
    /// All registries, in display order.
    pub const ALL: [&str; 5] = [BACKBONE, NECK, DECODER, FULL_MODEL, MODEL_FACTORY];
}

/// The Python-style name `terrahost show` prints for a parameter type code
/// (plugin-api's `ParamType`).
pub fn param_type_name(code: u8) -> &'static str {
    match code {
        1 => "bool",
        2 => "int",
        3 => "float",
        4 => "str",
        5 => "list[int]",
        6 => "list[float]",
        7 => "list[str]",
        8 => "dict",
        9 => "list[dict]",
        10 => "int | list[int]",
        11 => "ignored",
        _ => "any",
    }
}

/// Levenshtein distance, for did-you-mean suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidates closest to `name` (at most three), if any is close enough to be a
/// plausible typo: within a third of the name's length, or containing it.
pub fn suggestions<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let limit = (name.chars().count() / 3).max(2);
    let lower = name.to_lowercase();
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .filter_map(|c| {
            let d = edit_distance(name, c);
            let contains = lower.len() >= 3 && c.to_lowercase().contains(&lower);
            (d <= limit || contains).then_some((if contains { d.min(limit) } else { d }, c))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, c)| c).collect()
}

/// The single closest candidate, if any.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    suggestions(name, candidates).into_iter().next()
}
