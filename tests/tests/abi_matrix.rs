//! The ABI matrix on real old binaries: the fixture plugin (tests/abi-fixture) built
//! against plugin-api as it was at each release (scripts/abi/build_fixtures.sh, committed
//! stripped under tests/fixtures/abi/plugin-api-<variant>/), all dropped into one plugin
//! directory and loaded by today's host the way users load plugins (`Host::load`: the
//! scan in a `terrahost-engine __scan` child, then the library opened in this process
//! on the first build). Every variant that loads must build its `Scale` neck and run a
//! forward (output = input * init); every refused one must be refused with the expected
//! kind and a one-line reason naming what differs. The matrix is asserted exactly: a
//! variant that starts or stops loading fails this test. plugin-api/COMPATIBILITY.md
//! says what the matrix means.
use serde_json::json;
use std::collections::BTreeSet;
use std::path::PathBuf;
use terrahost::Host;
use terrahost_testkit::workspace_root;

/// What today's host does with a variant.
enum Expect {
    /// It loads, builds and runs.
    Loads,
    /// It is refused with this kind; the reason contains every needle.
    Refused {
        kind: &'static str,
        needles: &'static [&'static str],
    },
}

struct Variant {
    /// The directory under tests/fixtures/abi (`plugin-api-<variant>`).
    dir: &'static str,
    /// The plugin's name (its library is `lib<name>.so`).
    name: &'static str,
    /// Its neck source's prefix.
    prefix: &'static str,
    expect: Expect,
}

/// The observed matrix, oldest first.
fn matrix() -> Vec<Variant> {
    use Expect::*;
    vec![
        // 0.2.0 as released (a367e82): EntryInfo had 5 fields. db7cf7e added the sixth,
        // `includes_head`, without a version bump, so abi_stable refuses the layout; the
        // version check passes (0.2.0 is semver-compatible with 0.2.x).
        Variant {
            dir: "plugin-api-0.2.0",
            name: "abi_0_2_0",
            prefix: "abi020",
            expect: Refused {
                kind: "incompatible-abi",
                needles: &[
                    "at `EntryInfo`",
                    "field count 5, host has 6",
                    "`includes_head` missing",
                    "built against plugin-api 0.2.0 (an early 0.2.0",
                    "rebuild it against plugin-api",
                ],
            },
        },
        // The last 0.2.0 (cc63041, EntryInfo with includes_head).
        Variant {
            dir: "plugin-api-0.2.0+cc63041",
            name: "abi_0_2_0_cc63041",
            prefix: "abi020cc63041",
            expect: Loads,
        },
        // 0.2.1 as released (20f5b01): its Module vtable has one method more
        // (forward_named), which abi_stable accepts from a library.
        Variant {
            dir: "plugin-api-0.2.1",
            name: "abi_0_2_1",
            prefix: "abi021",
            expect: Loads,
        },
        // The last 0.2.1 (d0a0b5d): forward_named out of the vtable again.
        Variant {
            dir: "plugin-api-0.2.1+d0a0b5d",
            name: "abi_0_2_1_d0a0b5d",
            prefix: "abi021d0a0b5d",
            expect: Loads,
        },
        // 0.2.2 (54533c3): Source::refusals appended; one method more in the library.
        Variant {
            dir: "plugin-api-0.2.2",
            name: "abi_0_2_2",
            prefix: "abi022",
            expect: Loads,
        },
        // 0.2.3 (564d946).
        Variant {
            dir: "plugin-api-0.2.3",
            name: "abi_0_2_3",
            prefix: "abi023",
            expect: Loads,
        },
        // 0.2.4: plugin-api as the boundary only (kernels moved to terrahost-layers),
        // the same layout as 0.2.3.
        Variant {
            dir: "plugin-api-0.2.4",
            name: "abi_0_2_4",
            prefix: "abi024",
            expect: Loads,
        },
        // The current sources with plugin-api's version set to 0.3.0 and a method
        // appended to Source: refused by version, before (and instead of) the layout.
        Variant {
            dir: "plugin-api-0.3.0",
            name: "abi_0_3_0",
            prefix: "abi030",
            expect: Refused {
                kind: "incompatible-api",
                needles: &[
                    "built against plugin-api 0.3.0",
                    "this host loads 0.2.x",
                    "rebuild the plugin against plugin-api 0.2",
                ],
            },
        },
    ]
}

fn fixtures_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/abi")
}

/// Every committed fixture library: (variant directory, file).
fn committed_fixtures() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(fixtures_dir()).expect("tests/fixtures/abi exists") {
        let d = d.unwrap().path();
        if !d.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&d).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "so") {
                out.push((d.file_name().unwrap().to_string_lossy().into_owned(), f));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_committed_fixture_is_in_the_matrix() {
    let committed: BTreeSet<(String, String)> = committed_fixtures()
        .into_iter()
        .map(|(d, f)| (d, f.file_name().unwrap().to_string_lossy().into_owned()))
        .collect();
    let expected: BTreeSet<(String, String)> = matrix()
        .iter()
        .map(|v| (v.dir.to_owned(), format!("lib{}.so", v.name)))
        .collect();
    assert_eq!(
        committed, expected,
        "tests/fixtures/abi and the matrix in this test disagree: add the new variant's expected outcome here"
    );
}

#[test]
fn plugins_built_against_every_released_plugin_api_load_or_are_refused_as_observed() {
    let dir = tempfile::tempdir().unwrap();
    for (_, f) in committed_fixtures() {
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let host = Host::load(&[dir.path().to_path_buf()]);

    let loaded: BTreeSet<String> = host
        .plugins()
        .iter()
        .map(|p| p.manifest.name.to_string())
        .collect();
    let refused: BTreeSet<String> = host
        .rejected()
        .iter()
        .map(|r| {
            r.path
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("lib")
                .to_owned()
        })
        .collect();
    let matrix = matrix();
    let want_loaded: BTreeSet<String> = matrix
        .iter()
        .filter(|v| matches!(v.expect, Expect::Loads))
        .map(|v| v.name.to_owned())
        .collect();
    let want_refused: BTreeSet<String> = matrix
        .iter()
        .filter(|v| !matches!(v.expect, Expect::Loads))
        .map(|v| v.name.to_owned())
        .collect();
    let rejected: Vec<String> = host
        .rejected()
        .iter()
        .map(|r| format!("{}: {} ({})", r.path.display(), r.kind, r.reason))
        .collect();
    assert_eq!(
        (&loaded, &refused),
        (&want_loaded, &want_refused),
        "the ABI matrix changed; refusals: {rejected:#?}"
    );

    for v in &matrix {
        match v.expect {
            Expect::Loads => {
                let plugin = host
                    .plugins()
                    .iter()
                    .find(|p| p.manifest.name.as_str() == v.name)
                    .unwrap();
                assert_eq!(
                    plugin.sources,
                    vec![("neck".to_owned(), v.prefix.to_owned(), 1)],
                    "{}",
                    v.dir
                );
                let init = 2.5;
                let entry = format!("{}_Scale", v.prefix);
                let args = json!({ "init": init });
                let m = host
                    .build("neck", &entry, args.as_object().unwrap(), Some(&[3]))
                    .unwrap_or_else(|e| panic!("{}: building {entry}: {e}", v.dir));
                let x = tch::Tensor::arange(24, (tch::Kind::Float, tch::Device::Cpu))
                    .reshape([1, 3, 2, 4]);
                let y = tch::no_grad(|| m.forward(&[x.shallow_clone(), &x * -1.0]))
                    .unwrap_or_else(|e| panic!("{}: forward of {entry}: {e}", v.dir));
                assert_eq!(y.len(), 2, "{}", v.dir);
                for (out, input) in y.iter().zip([&x, &(&x * -1.0)]) {
                    assert_eq!(out.size(), input.size(), "{}", v.dir);
                    let want = input * init;
                    let diff = (out - &want).abs().max().double_value(&[]);
                    assert!(
                        diff == 0.0,
                        "{}: output != input * {init} (max |diff| {diff})",
                        v.dir
                    );
                }
                // The parameter crossed with its PyTorch name and the init value.
                let sd = m.state_dict();
                assert_eq!(sd.len(), 1, "{}", v.dir);
                assert_eq!(sd[0].0, "weight", "{}", v.dir);
                assert_eq!(sd[0].1.double_value(&[0]), init, "{}", v.dir);
            }
            Expect::Refused { kind, needles } => {
                let r = host
                    .rejected()
                    .iter()
                    .find(|r| {
                        r.path.file_name().unwrap().to_string_lossy() == format!("lib{}.so", v.name)
                    })
                    .unwrap();
                assert_eq!(r.kind, kind, "{}: {}", v.dir, r.reason);
                assert!(
                    !r.reason.contains('\n'),
                    "{}: not one line: {}",
                    v.dir,
                    r.reason
                );
                for n in needles {
                    assert!(
                        r.reason.contains(n),
                        "{}: `{n}` not in: {}",
                        v.dir,
                        r.reason
                    );
                }
                assert!(
                    !host.contains("neck", &format!("{}_Scale", v.prefix)),
                    "{}: a refused plugin registered its entry",
                    v.dir
                );
            }
        }
    }
}
