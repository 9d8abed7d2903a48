//! The hostile-plugin corpus: files that break a plugin host in every way we know of,
//! each dropped next to the four real plugins. For each, `terrahost plugins --json`
//! exits 0 with JSON only on stdout, the file is refused with the expected `kind`, the
//! four real plugins are listed, and a cross-plugin model still builds and runs. The
//! C fixtures are compiled by `tests/build.rs` from `tests/fixture-plugins/c/`; the
//! Rust ones are crates under `tests/fixture-plugins/`.
//!
//! Every command runs with its own temporary registry cache (`TERRAHOST_CACHE`), never
//! the user's.
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use terrahost_testkit::{build_dir, built_library, Fixture, PLUGINS};

/// The scan timeout the tests use (seconds), so the endless loop costs little.
const TIMEOUT_S: &str = "10";

/// How a corpus file is made.
#[derive(Clone, Copy)]
enum Make {
    /// A C library from `tests/fixture-plugins/c` (by stem).
    C(&'static str),
    /// A Rust fixture crate's library (by crate name).
    Crate(&'static str),
    /// The first 4096 bytes of the real timm plugin.
    Truncated,
    /// An empty file.
    Empty,
    /// A directory with a library's name.
    Directory,
    /// A symbolic link to itself.
    LinkLoop,
}

struct Case {
    /// The name in the plugin directory.
    file: &'static str,
    make: Make,
    /// The expected `kind`.
    kind: &'static str,
    /// Text the reason must contain.
    needle: &'static str,
}

const fn case(file: &'static str, make: Make, kind: &'static str, needle: &'static str) -> Case {
    Case {
        file,
        make,
        kind,
        needle,
    }
}

fn corpus() -> Vec<Case> {
    use Make::*;
    vec![
        case("ctor_abort.so", C("ctor_abort"), "crashed", "SIGABRT"),
        case("ctor_null.so", C("ctor_null"), "crashed", "SIGSEGV"),
        case("ctor_exit.so", C("ctor_exit"), "exited", "status 0"),
        case("ctor_loop.so", C("ctor_loop"), "timed-out", "within 10 s"),
        case(
            "ctor_stdout.so",
            C("ctor_stdout"),
            "not-a-plugin",
            "no abi_stable root module",
        ),
        case(
            "pipe_garbage.so",
            C("pipe_garbage"),
            "protocol",
            "malformed",
        ),
        case(
            "garbage_root.so",
            C("garbage_root"),
            "incompatible-abi",
            "not an abi_stable",
        ),
        case(
            "needs_dep.so",
            C("needs_dep"),
            "missing-dependency",
            "`libterrahost_missing_dep.so`",
        ),
        case("truncated.so", Truncated, "not-a-library", "truncated"),
        case("empty.so", Empty, "not-a-library", "empty"),
        case("x.so", Directory, "not-a-file", "directory"),
        case("loop.so", LinkLoop, "unreadable", "loops"),
        case(
            "sources_panic.so",
            Crate("terrahost_fixture_sources_panic"),
            "sources-failed",
            "deliberate panic in sources()",
        ),
        case(
            "sources_error.so",
            Crate("terrahost_fixture_sources_error"),
            "sources-failed",
            "deliberate error",
        ),
        case(
            "wrong_api.so",
            Crate("terrahost_fixture_bad_api"),
            "incompatible-api",
            terrahost_plugin_api::API_VERSION,
        ),
        case(
            "wrong_layout.so",
            Crate("terrahost_fixture_wrong_layout"),
            "incompatible-abi",
            "laid out differently",
        ),
        // Named to sort after the real timm plugin: the second holder of a prefix is refused.
        case(
            "zz_dup_prefix.so",
            Crate("terrahost_fixture_dup_prefix"),
            "duplicate-prefix",
            "`timm`",
        ),
    ]
}

fn hostile_lib(stem: &str) -> PathBuf {
    let p = Path::new(env!("TERRAHOST_HOSTILE_DIR")).join(format!("lib{stem}.so"));
    assert!(
        p.exists(),
        "{} is not built (tests/build.rs builds it)",
        p.display()
    );
    p
}

fn make(dir: &Path, c: &Case) {
    let dest = dir.join(c.file);
    match c.make {
        Make::C(stem) => {
            std::fs::copy(hostile_lib(stem), &dest).unwrap();
        }
        Make::Crate(name) => {
            std::fs::copy(built_library(name), &dest).unwrap();
        }
        Make::Truncated => {
            let real = std::fs::read(built_library("terrahost_plugin_timm")).unwrap();
            std::fs::write(&dest, &real[..4096]).unwrap();
        }
        Make::Empty => std::fs::write(&dest, b"").unwrap(),
        Make::Directory => std::fs::create_dir(&dest).unwrap(),
        Make::LinkLoop => std::os::unix::fs::symlink(c.file, &dest).unwrap(),
    }
}

/// A directory with the four real plugins, as symbolic links to the built libraries
/// (so their canonical paths, and cache entries, are shared between directories).
fn real_plugin_links() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for p in PLUGINS {
        let lib = built_library(&format!("terrahost_plugin_{p}"));
        std::os::unix::fs::symlink(&lib, dir.path().join(lib.file_name().unwrap())).unwrap();
    }
    dir
}

fn terrahost(dir: &Path, cache: &Path, args: &[&str]) -> Command {
    let exe = build_dir().join("terrahost");
    assert!(exe.exists(), "{} is not built", exe.display());
    let mut cmd = Command::new(exe);
    cmd.arg("--plugin-dir")
        .arg(dir)
        .args(args)
        .env("TERRAHOST_CACHE", cache)
        .env("TERRAHOST_SCAN_TIMEOUT", TIMEOUT_S)
        .env_remove("TERRAHOST_SCANNER")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("RUST_LOG");
    cmd
}

fn json_of(what: &str, out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{what}: exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not JSON only ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn plugins_json(cmd: &mut Command) -> Value {
    json_of("plugins --json", &cmd.output().unwrap())
}

/// The four real plugins are loaded, and nothing else.
fn assert_real_plugins(v: &Value) {
    let mut names: Vec<&str> = v["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["mmseg", "smp", "terratorch", "timm"], "{v:#}");
}

/// `c.file` is refused with the expected kind and a one-line reason.
fn assert_refused(v: &Value, c: &Case) {
    let r = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["path"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{}", c.file))
        })
        .unwrap_or_else(|| panic!("{} is not refused: {v:#}", c.file));
    let reason = r["reason"].as_str().unwrap();
    assert_eq!(r["kind"], c.kind, "{}: {reason}", c.file);
    assert!(reason.contains(c.needle), "{}: {reason}", c.file);
    assert!(
        !reason.contains('\n') && reason.len() < 400,
        "{}: the reason is not one short line: {reason}",
        c.file
    );
}

/// `run` on the cross-plugin fixture model (timm backbone, smp decoder, terratorch
/// factory and head) reproduces the reference output.
fn assert_model_runs(dir: &Path, cache: &Path, extra_env: &[(&str, &str)]) {
    let fx = Fixture::load("factory_segmentation");
    let work = tempfile::tempdir().unwrap();
    let weights = terrahost_testkit::write_weights(&fx, work.path());
    let output = work.path().join("out.safetensors");
    let mut cmd = terrahost(
        dir,
        cache,
        &[
            "run",
            "--config",
            fx.dir.join("config.yaml").to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            fx.dir.join("io.safetensors").to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
        ],
    );
    cmd.envs(extra_env.iter().copied());
    let v = json_of("run", &cmd.output().unwrap());
    assert_eq!(v["output_shape"], serde_json::json!(fx.outputs[0].size()));
    let got = tch::Tensor::read_safetensors(&output).unwrap();
    let out = &got.iter().find(|(k, _)| k == "output").unwrap().1;
    terrahost_testkit::assert_close("factory_segmentation", out, &fx.outputs[0], fx.atol());
}

/// The whole corpus in one directory: scanned cold, then answered from the cache
/// (with no scanner available at all, so nothing can have been probed again).
#[test]
fn the_whole_corpus_is_refused_file_by_file_cold_and_warm() {
    let dir = real_plugin_links();
    let cases = corpus();
    for c in &cases {
        make(dir.path(), c);
    }
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("registry.json");
    let cold = plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
    assert_real_plugins(&cold);
    for c in &cases {
        assert_refused(&cold, c);
    }
    assert_eq!(
        cold["rejected"].as_array().unwrap().len(),
        cases.len(),
        "{cold:#}"
    );

    let warm = plugins_json(
        terrahost(dir.path(), &cache, &["plugins", "--json"])
            .env("TERRAHOST_SCANNER", "/nonexistent"),
    );
    assert_eq!(
        warm, cold,
        "the warm cache answers exactly what the scan found"
    );
    assert_model_runs(dir.path(), &cache, &[("TERRAHOST_SCANNER", "/nonexistent")]);

    // Without a cache, the same (everything scanned again, in one go).
    let uncached = plugins_json(&mut terrahost(
        dir.path(),
        &cache,
        &["--no-cache", "plugins", "--json"],
    ));
    assert_real_plugins(&uncached);
    for c in &cases {
        assert_refused(&uncached, c);
    }
}

/// Each file alone beside the real plugins (one shared cache, so the real plugins are
/// scanned once): refused with its kind, and the cross-plugin model still runs.
#[test]
fn each_hostile_file_alone_is_refused_and_the_model_still_runs() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("registry.json");
    for c in corpus() {
        let dir = real_plugin_links();
        make(dir.path(), &c);
        let v = plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
        assert_real_plugins(&v);
        assert_refused(&v, &c);
        assert_eq!(v["rejected"].as_array().unwrap().len(), 1, "{v:#}");
        assert_model_runs(dir.path(), &cache, &[]);
    }
}

/// A file that changes after it was cached is scanned again; a cached refusal stays
/// until then; `--rescan` forgets the cache and probes everything.
#[test]
fn a_file_changed_after_it_was_cached_is_scanned_again() {
    let dir = real_plugin_links();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("registry.json");
    let extra = dir.path().join("extra.so");
    let refused_kind = |v: &Value| {
        v["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"].as_str().unwrap().ends_with("/extra.so"))
            .map(|r| r["kind"].as_str().unwrap().to_owned())
    };
    let no_scanner = |args: &[&str]| {
        plugins_json(terrahost(dir.path(), &cache, args).env("TERRAHOST_SCANNER", "/nonexistent"))
    };

    std::fs::copy(built_library("terrahost_fixture_sources_error"), &extra).unwrap();
    let v = plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
    assert_eq!(refused_kind(&v).as_deref(), Some("sources-failed"));

    // Replaced by a working plugin: scanned again, and it loads.
    std::fs::copy(built_library("terrahost_fixture_panicky"), &extra).unwrap();
    let v = plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
    assert_eq!(refused_kind(&v), None, "{v:#}");
    assert!(
        v["loaded"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "panicky"),
        "{v:#}"
    );

    // Replaced by one that crashes the scanner: refused, and it stays refused from the
    // cache without being probed (there is no scanner to probe it with).
    std::fs::copy(hostile_lib("ctor_abort"), &extra).unwrap();
    let v = plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
    assert_eq!(refused_kind(&v).as_deref(), Some("crashed"));
    assert_real_plugins(&v);
    let v = no_scanner(&["plugins", "--json"]);
    assert_eq!(refused_kind(&v).as_deref(), Some("crashed"));
    assert_real_plugins(&v);

    // --rescan forgets the cache: with no scanner, every file is now unscannable...
    let v = no_scanner(&["plugins", "--rescan", "--json"]);
    assert!(v["loaded"].as_array().unwrap().is_empty(), "{v:#}");
    assert!(
        v["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["kind"] == "scanner-failed"),
        "{v:#}"
    );
    // ...and that refusal is not cached: with the scanner back, all is as before.
    let v = plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
    assert_real_plugins(&v);
    assert_eq!(refused_kind(&v).as_deref(), Some("crashed"));
}

/// A damaged, truncated or foreign cache is ignored with one warning and rebuilt.
#[test]
fn a_damaged_cache_is_ignored_with_one_warning_and_rebuilt() {
    let dir = real_plugin_links();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("registry.json");
    let v = plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
    assert_real_plugins(&v);
    let good = std::fs::read(&cache).unwrap();
    let mut foreign: Value = serde_json::from_slice(&good).unwrap();
    foreign["protocol"] = Value::from(999);
    let foreign = serde_json::to_string(&foreign).unwrap();
    for (what, bytes) in [
        ("garbage", b"\x7fELF garbage".to_vec()),
        ("truncated", good[..good.len() / 3].to_vec()),
        ("foreign", foreign.into_bytes()),
    ] {
        std::fs::write(&cache, &bytes).unwrap();
        let out = terrahost(dir.path(), &cache, &["plugins", "--json"])
            .output()
            .unwrap();
        let v = json_of(what, &out);
        assert_real_plugins(&v);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("plugin cache"))
            .collect();
        assert_eq!(warnings.len(), 1, "{what}: {stderr}");
        assert!(warnings[0].contains("ignoring"), "{what}: {stderr}");
        // Rebuilt: the next run reads it without a warning.
        let out = terrahost(dir.path(), &cache, &["plugins", "--json"])
            .output()
            .unwrap();
        assert_real_plugins(&json_of(what, &out));
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("plugin cache"),
            "{what}"
        );
    }
}

/// The plugin libraries the dynamic loader opened in a terrahost process, from
/// `LD_DEBUG=files` (glibc's loader reports every file it maps).
/// The real plugins `cmd` loaded. The engine loads a library from a sealed copy of its
/// bytes (`/proc/self/fd/N`, see `terrahost::plugins::sealed`), so the dynamic loader's
/// log names no plugin file: each load is matched to its file by the engine's
/// `plugin library loaded` event, and the loader's log must show exactly as many
/// libraries opened from sealed copies.
fn dlopened(cmd: &mut Command) -> (Output, Vec<&'static str>) {
    let out = cmd
        .env("LD_DEBUG", "files")
        .env("RUST_LOG", "terrahost=info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let opened: Vec<&'static str> = PLUGINS
        .iter()
        .copied()
        .filter(|p| {
            stderr.lines().any(|l| {
                (l.contains("dynamically loaded by") || l.contains("plugin library loaded"))
                    && l.contains(&format!("libterrahost_plugin_{p}.so"))
            })
        })
        .collect();
    let sealed: std::collections::HashSet<&str> = stderr
        .lines()
        .filter(|l| l.contains("dynamically loaded by"))
        .filter_map(|l| l.split("file=").nth(1)?.split_whitespace().next())
        .filter(|f| f.starts_with("/proc/self/fd/"))
        .collect();
    assert_eq!(sealed.len(), opened.len(), "{stderr}");
    (out, opened)
}

/// With a warm cache, `plugins`, `list` and `show` load no plugin library and answer
/// as before (search order, did-you-mean, a missing source named as such); `build` and
/// `run` load exactly the libraries whose sources the model needs.
#[test]
fn a_warm_cache_loads_no_library_for_metadata_and_only_the_needed_ones_to_build() {
    let dir = real_plugin_links();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("registry.json");
    plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));

    let (out, opened) = dlopened(&mut terrahost(dir.path(), &cache, &["list", "--json"]));
    let v = json_of("list", &out);
    assert!(opened.is_empty(), "list loaded {opened:?}");
    let prefixes: Vec<&str> = v["decoder"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, vec!["terratorch", "smp", "mmseg"]);

    let (out, opened) = dlopened(&mut terrahost(
        dir.path(),
        &cache,
        &["show", "backbone", "resnet18", "--json"],
    ));
    let v = json_of("show", &out);
    assert!(opened.is_empty(), "show loaded {opened:?}");
    assert_eq!(v["name"], "timm_resnet18");
    assert!(v["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "in_chans"));

    let (out, opened) = dlopened(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
    assert_real_plugins(&json_of("plugins", &out));
    assert!(opened.is_empty(), "plugins loaded {opened:?}");

    let (out, opened) = dlopened(&mut terrahost(
        dir.path(),
        &cache,
        &["show", "backbone", "resnet81"],
    ));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("did you mean") && e.contains("`resnet18`"),
        "{e}"
    );
    assert!(opened.is_empty(), "show loaded {opened:?}");

    let (out, opened) = dlopened(&mut terrahost(
        dir.path(),
        &cache,
        &["build", "backbone", "timm_resnet18", "--json"],
    ));
    assert_eq!(json_of("build", &out)["resolved"], "timm_resnet18");
    assert_eq!(opened, vec!["timm"]);

    let fx = Fixture::load("factory_segmentation");
    let (out, opened) = dlopened(&mut terrahost(
        dir.path(),
        &cache,
        &[
            "run",
            "--config",
            fx.dir.join("config.yaml").to_str().unwrap(),
            "--input-shape",
            "1,3,64,64",
            "--json",
        ],
    ));
    json_of("run", &out);
    assert_eq!(
        opened,
        vec!["terratorch", "timm", "smp"],
        "timm backbone, smp decoder, terratorch factory"
    );

    // Without the mmseg library, from the cache too: the source is named as missing.
    std::fs::remove_file(dir.path().join("libterrahost_plugin_mmseg.so")).unwrap();
    let (out, opened) = dlopened(&mut terrahost(
        dir.path(),
        &cache,
        &["show", "decoder", "mmseg_FCNHead"],
    ));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("no source `mmseg` in the decoder registry (installed: terratorch, smp)"),
        "{e}"
    );
    assert!(opened.is_empty(), "{opened:?}");
}
