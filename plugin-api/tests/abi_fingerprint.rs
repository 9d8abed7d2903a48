//! The layout fingerprint: the full abi_stable layout of the root module (and so of every
//! type that crosses the boundary) must equal the committed `plugin-api/abi/<version>.layout`
//! of this crate's version. A layout change without a version bump fails here, before a
//! host built from this tree refuses every plugin built against the previous one. See
//! plugin-api/COMPATIBILITY.md for what may change within 0.y.
//!
//! To commit the fingerprint of a new version (the file must not exist yet):
//! `TERRAHOST_ABI_BLESS=1 cargo test -p terrahost-plugin-api --test abi_fingerprint`.
use abi_stable::StableAbi;
use std::path::{Path, PathBuf};
use terrahost_plugin_api::PluginRoot_Ref;

#[path = "../abi/render.rs"]
mod render;

/// The last version released before the policy in COMPATIBILITY.md: the 0.2 line up to it
/// changed layouts within 0.2 (0.2.0 twice, 0.2.1, 0.2.2), which is history, not a model.
const LAST_VERSION_BEFORE_THE_POLICY: &str = "0.2.3";

fn abi_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("abi")
}

/// A release's version as the fingerprint files name it: `major.minor.patch`, with an
/// optional `+build` (a second layout that went out under the same number, named by its
/// commit: `0.2.0+a367e82`). plugin-api has no semver dependency, and needs no more.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    build: String,
}

impl Version {
    fn parse(s: &str) -> Result<Self, String> {
        let (core, build) = match s.split_once('+') {
            Some((c, b)) => (c, b.to_owned()),
            None => (s, String::new()),
        };
        let parts: Vec<&str> = core.split('.').collect();
        let num = |p: &str| p.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
        match parts.as_slice() {
            [a, b, c] => Ok(Self {
                major: num(a)?,
                minor: num(b)?,
                patch: num(c)?,
                build,
            }),
            _ => Err(format!("{s:?} is not major.minor.patch[+build]")),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.build.is_empty() {
            write!(f, "+{}", self.build)?;
        }
        Ok(())
    }
}

fn version() -> Version {
    Version::parse(env!("CARGO_PKG_VERSION")).expect("the crate's version is major.minor.patch")
}

/// `0.(y+1).0` for 0.y.z, `(x+1).0.0` from 1.0 on: the next semver-incompatible version.
fn next_incompatible(v: &Version) -> String {
    if v.major == 0 {
        format!("0.{}.0", v.minor + 1)
    } else {
        format!("{}.0.0", v.major + 1)
    }
}

/// Where `expected` and `actual` first differ, as a short hint.
fn first_difference(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (e.get(i), a.get(i));
        if x != y {
            return format!(
                "first difference at line {}: committed {:?}, now {:?}",
                i + 1,
                x.copied().unwrap_or("<end of file>"),
                y.copied().unwrap_or("<end of file>")
            );
        }
    }
    "no line differs (line endings?)".to_owned()
}

/// Writes the current rendering where a developer can diff it, and returns that path.
fn write_actual(text: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("plugin-api-{}.layout", env!("CARGO_PKG_VERSION")));
    std::fs::write(&path, text).expect("write the current layout");
    path
}

fn current() -> String {
    render::render(<PluginRoot_Ref as StableAbi>::LAYOUT)
}

#[test]
fn the_layout_is_the_committed_one_of_this_version() {
    let v = version();
    let actual = current();
    let file = abi_dir().join(format!("{v}.layout"));
    let rel = format!("plugin-api/abi/{v}.layout");
    if !file.exists() {
        if std::env::var_os("TERRAHOST_ABI_BLESS").is_some() {
            std::fs::write(&file, &actual).expect("write the layout file");
            eprintln!("wrote {rel}: commit it");
            return;
        }
        let tmp = write_actual(&actual);
        panic!(
            "no layout fingerprint is committed for plugin-api {v} ({rel} does not exist). \
             Commit one: run `TERRAHOST_ABI_BLESS=1 cargo test -p terrahost-plugin-api --test \
             abi_fingerprint` (or copy {}) and `git add {rel}`. If the layout differs from the \
             previous release's, {v} must be a new 0.y (see plugin-api/COMPATIBILITY.md)",
            tmp.display()
        );
    }
    let committed = std::fs::read_to_string(&file).expect("read the layout file");
    if committed != actual {
        let tmp = write_actual(&actual);
        panic!(
            "the layout of plugin-api's boundary types changed, but the version is still {v}: \
             {rel} no longer matches ({}; `diff {rel} {}` shows all of it). A plugin built \
             against {v} before the change would be refused (or worse) by a host built after it: \
             bump plugin-api to {} or revert the layout change",
            first_difference(&committed, &actual),
            tmp.display(),
            next_incompatible(&v)
        );
    }
}

/// The committed fingerprints: (version, file name, contents).
fn committed() -> Vec<(Version, String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(abi_dir()).expect("plugin-api/abi exists") {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".layout") else {
            continue;
        };
        let v = Version::parse(stem)
            .unwrap_or_else(|e| panic!("plugin-api/abi/{name}: not <semver>.layout: {e}"));
        out.push((v, name, std::fs::read_to_string(&path).unwrap()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn a_release_within_the_same_0_y_keeps_the_previous_release_layout() {
    let v = version();
    let policy = Version::parse(LAST_VERSION_BEFORE_THE_POLICY).unwrap();
    if v <= policy {
        return; // the 0.2 history: see COMPATIBILITY.md
    }
    let same_line = |o: &Version| o.major == v.major && (v.major != 0 || o.minor == v.minor);
    let previous = committed().into_iter().rfind(|(o, _, _)| {
        same_line(o)
            && (o.major, o.minor, o.patch) < (v.major, v.minor, v.patch)
            && o.build.is_empty()
    });
    let Some((pv, name, text)) = previous else {
        return; // the first release of this line
    };
    let actual = current();
    if text != actual {
        let tmp = write_actual(&actual);
        panic!(
            "plugin-api {v} has a layout that differs from {pv}'s (plugin-api/abi/{name}; {}; \
             `diff plugin-api/abi/{name} {}`), but both are {}: plugins built against {pv} would \
             be refused by a {v} host as `incompatible-abi` instead of being told to rebuild. \
             Bump plugin-api to {} or revert the layout change",
            first_difference(&text, &actual),
            tmp.display(),
            if v.major == 0 {
                format!("0.{}.x", v.minor)
            } else {
                format!("{}.x", v.major)
            },
            next_incompatible(&pv)
        );
    }
}

#[test]
fn every_committed_fingerprint_is_in_the_current_format() {
    let all = committed();
    assert!(!all.is_empty(), "plugin-api/abi has no *.layout file");
    for (_, name, text) in all {
        let first = text.lines().next().unwrap_or("");
        assert_eq!(
            first,
            format!("# {}", render::FORMAT),
            "plugin-api/abi/{name} was rendered in another format: regenerate it (scripts/abi/build_fixtures.sh renders old releases)"
        );
    }
}

// The fingerprint must see what abi_stable's check sees: a field appended to a
// `#[repr(C)]` struct reachable from the root, and a method appended to a prefix type.

#[allow(dead_code)]
mod v1 {
    use abi_stable::{std_types::RString, StableAbi};
    #[repr(C)]
    #[derive(StableAbi)]
    pub struct Info {
        pub name: RString,
        pub takes_channels: bool,
    }
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix))]
    pub struct Root {
        #[sabi(last_prefix_field)]
        pub info: extern "C" fn() -> Info,
    }
}

#[allow(dead_code)]
mod v2 {
    use abi_stable::{std_types::RString, StableAbi};
    #[repr(C)]
    #[derive(StableAbi)]
    pub struct Info {
        pub name: RString,
        pub takes_channels: bool,
        pub includes_head: bool,
    }
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix))]
    pub struct Root {
        #[sabi(last_prefix_field)]
        pub info: extern "C" fn() -> Info,
    }
}

#[allow(dead_code)]
mod v3 {
    use abi_stable::{std_types::RString, StableAbi};
    #[repr(C)]
    #[derive(StableAbi)]
    pub struct Info {
        pub name: RString,
        pub takes_channels: bool,
    }
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix))]
    pub struct Root {
        #[sabi(last_prefix_field)]
        pub info: extern "C" fn() -> Info,
        pub refusals: extern "C" fn() -> RString,
    }
}

#[test]
fn the_fingerprint_changes_with_a_field_or_a_prefix_method() {
    let a = render::render(<v1::Root_Ref as StableAbi>::LAYOUT);
    let b = render::render(<v2::Root_Ref as StableAbi>::LAYOUT);
    let c = render::render(<v3::Root_Ref as StableAbi>::LAYOUT);
    assert_eq!(
        a,
        render::render(<v1::Root_Ref as StableAbi>::LAYOUT),
        "deterministic"
    );
    assert_ne!(a, b);
    assert!(
        b.contains("field includes_head: bool") && !a.contains("includes_head"),
        "{b}"
    );
    assert_ne!(a, c);
    assert!(
        c.contains("field refusals:") && !a.contains("refusals"),
        "{c}"
    );
}

#[test]
fn the_rendering_names_the_boundary_types_and_their_fields() {
    let text = current();
    for needle in [
        "PluginRoot",
        "field manifest:",
        "field sources:",
        "EntryInfo",
        "field includes_head: bool",
        "Manifest",
        "prefix:",
    ] {
        assert!(
            text.contains(needle),
            "`{needle}` missing from the rendering:\n{text}"
        );
    }
}
