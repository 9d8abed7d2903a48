//! The split binary: `terrahost` (the front) links no libtorch, answers `plugins`,
//! `list` and `show` from the registry cache without opening a plugin library or
//! libtorch, gives the same answers as `terrahost-engine` (the heavy binary, beside it)
//! for a corpus of names, and hands every other command to the engine with its
//! arguments, exit code and output unchanged.
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use terrahost_testkit::{build_dir, built_library, PLUGINS};

fn exe(name: &str) -> PathBuf {
    let p = build_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built (cargo build --workspace)",
        p.display()
    );
    p
}

/// A directory with the four real plugins, as symbolic links to the built libraries.
fn plugin_links(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for p in names {
        let lib = built_library(&format!("terrahost_plugin_{p}"));
        std::os::unix::fs::symlink(&lib, dir.path().join(lib.file_name().unwrap())).unwrap();
    }
    dir
}

fn cmd(bin: &str, dir: &Path, cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(exe(bin));
    c.arg("--plugin-dir")
        .arg(dir)
        .args(args)
        .env("TERRAHOST_CACHE", cache)
        .env_remove("TERRAHOST_SCANNER")
        .env_remove("TERRAHOST_ENGINE")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("RUST_LOG");
    c
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
            "{what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The DT_NEEDED entries of an ELF file, from `readelf -d`.
fn needed(path: &Path) -> Vec<String> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(path)
        .output()
        .expect("readelf (binutils) is needed for this test");
    assert!(out.status.success(), "readelf -d {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_owned()))
        .collect()
}

fn is_torch(lib: &str) -> bool {
    ["libtorch", "libc10", "libtch", "libgomp"]
        .iter()
        .any(|t| lib.starts_with(t))
}

#[test]
fn the_front_links_no_libtorch_and_the_engine_does() {
    let front = needed(&exe("terrahost"));
    assert!(!front.is_empty(), "readelf found no DT_NEEDED at all");
    assert!(
        !front.iter().any(|l| is_torch(l)),
        "terrahost needs {front:?}"
    );
    let engine = needed(&exe("terrahost-engine"));
    assert!(
        engine.iter().any(|l| l.starts_with("libtorch")),
        "the check would not see libtorch: terrahost-engine needs {engine:?}"
    );
}

/// Every shared object the dynamic loader opened in the process, from `LD_DEBUG=files`.
fn opened(mut c: Command) -> (Output, Vec<String>) {
    let out = c.env("LD_DEBUG", "files").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let files = stderr
        .lines()
        .filter_map(|l| l.split("file=").nth(1))
        .filter_map(|f| f.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    (out, files)
}

#[test]
fn with_a_warm_cache_metadata_commands_open_no_plugin_and_no_libtorch() {
    let dir = plugin_links(&PLUGINS);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("registry.json");
    // Cold: the front runs the engine's scanner and writes the cache.
    let cold = json_of(
        "cold list",
        &cmd("terrahost", dir.path(), &cache, &["list", "--json"])
            .output()
            .unwrap(),
    );
    assert!(cache.exists());
    for args in [
        &["list", "--json"][..],
        &["plugins", "--json"],
        &["show", "backbone", "timm_resnet18", "--json"],
        &["show", "decoder", "UPerHead"],
    ] {
        let (out, files) = opened(cmd("terrahost", dir.path(), &cache, args));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The check sees what the loader opens: libc at least.
        assert!(
            files.iter().any(|f| f.contains("libc.so")),
            "{args:?}: {files:?}"
        );
        let bad: Vec<&String> = files
            .iter()
            .filter(|f| f.contains("terrahost_plugin") || is_torch(f.rsplit('/').next().unwrap()))
            .collect();
        assert!(bad.is_empty(), "{args:?} opened {bad:?}");
        if args == ["list", "--json"] {
            let warm: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(warm, cold);
        }
    }
}

/// What a command printed and how it ended, to compare the two binaries.
fn answer(out: &Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A corpus of names through the front (from the cache) and through the engine (its
/// own registries, lazy sources from the same cache): identical answers, byte for byte.
#[test]
fn front_and_engine_answer_a_corpus_of_names_identically() {
    let cache_dir = tempfile::tempdir().unwrap();
    for plugins in [&PLUGINS[..], &["terratorch", "timm", "smp"]] {
        let dir = plugin_links(plugins);
        let cache = cache_dir
            .path()
            .join(format!("registry-{}.json", plugins.len()));
        json_of(
            "scan",
            &cmd("terrahost", dir.path(), &cache, &["plugins", "--json"])
                .output()
                .unwrap(),
        );
        let shows: &[(&str, &str)] = &[
            ("backbone", "resnet18"),
            ("backbone", "timm_resnet18"),
            ("backbone", "terratorch_prithvi_eo_v2_300"),
            ("backbone", "resnet81"),
            ("backbone", "timm_resnet81"),
            ("backbone", "zzzzzzzzzzzz"),
            ("backbone", "terramind_v1_base_tim"),
            ("backbone", "terratorch_terramind_v1_base_tim"),
            ("backbone", "timm_convnext_large.fb_in22k"),
            ("backbone", "timm_convnext_large.no_such_tag"),
            ("decoder", "UPerHead"),
            ("decoder", "ASPPHead"),
            ("decoder", "mmseg_ASPPHead"),
            ("decoder", "mmseg_FCNHead"),
            ("decoder", "smp_Unet"),
            ("decoder", "foo_bar"),
            ("neck", "mmseg_SelectIndices"),
            ("neck", "SelectIndicse"),
            ("model_factory", "EncoderDecoderFactory"),
            ("model_factory", "EncoderDecoderFactroy"),
            ("nope", "x"),
        ];
        let mut cases: Vec<Vec<&str>> = shows
            .iter()
            .flat_map(|(r, n)| [vec!["show", r, n], vec!["show", r, n, "--json"]])
            .collect();
        cases.extend([
            vec!["list"],
            vec!["list", "--json"],
            vec!["list", "decoder", "--filter", "*Head"],
            vec!["list", "nope"],
            vec!["plugins"],
            vec!["plugins", "--json"],
            vec!["plugins", "--strict"],
            vec!["plugins", "--help"],
            vec!["list", "--help"],
            vec!["show", "--help"],
            vec!["--version"],
        ]);
        for args in &cases {
            let front = answer(&cmd("terrahost", dir.path(), &cache, args).output().unwrap());
            let engine = answer(
                &cmd("terrahost-engine", dir.path(), &cache, args)
                    .output()
                    .unwrap(),
            );
            assert_eq!(front, engine, "{plugins:?} {args:?}");
        }
    }
}

/// `Catalog::refuses` names survive the scan and the cache: the warm answer is the
/// live plugin's reason, not "not found".
#[test]
fn a_refused_name_answers_its_reason_from_the_cache_as_live() {
    let live = terrahost_integration_tests::in_process_host();
    let live_err = live
        .describe("backbone", "terramind_v1_base_tim")
        .unwrap_err();
    assert_eq!(live_err.kind, terrahost::api::ErrorKind::NOT_SUPPORTED);
    let dir = plugin_links(&PLUGINS);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("registry.json");
    for run in ["cold", "warm"] {
        let out = cmd(
            "terrahost",
            dir.path(),
            &cache,
            &["show", "backbone", "terramind_v1_base_tim"],
        )
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(1), "{run}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim_end(),
            format!("error: {}", live_err.message()),
            "{run}"
        );
    }
    let stored = std::fs::read_to_string(&cache).unwrap();
    assert!(stored.contains("terramind_v1_base_tim"), "not in the cache");
}

/// Commands the front does not answer reach the engine with their exit codes and
/// output; without an engine, the front says where it looked.
#[test]
fn other_commands_are_handed_to_the_engine_unchanged() {
    let dir = plugin_links(&["timm"]);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("registry.json");
    // (A successful build reports its own timing, so it is checked on its own below.)
    for args in [
        &["build", "backbone", "timm_resnet81"][..],
        &["build", "backbone"],
        &["run", "--config", "/nonexistent.yaml"],
        &["--help"],
        &["frobnicate"],
    ] {
        let front = cmd("terrahost", dir.path(), &cache, args).output().unwrap();
        let engine = cmd("terrahost-engine", dir.path(), &cache, args)
            .output()
            .unwrap();
        assert_eq!(answer(&front), answer(&engine), "{args:?}");
    }
    let ok = cmd(
        "terrahost",
        dir.path(),
        &cache,
        &["build", "backbone", "timm_resnet18", "--json"],
    )
    .output()
    .unwrap();
    assert_eq!(json_of("build", &ok)["resolved"], "timm_resnet18");
    let bad = cmd(
        "terrahost",
        dir.path(),
        &cache,
        &["build", "backbone", "timm_resnet81"],
    )
    .output()
    .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("did you mean"));

    let missing = cmd("terrahost", dir.path(), &cache, &["build", "backbone", "x"])
        .env("TERRAHOST_ENGINE", "/nonexistent/terrahost-engine")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let e = String::from_utf8_lossy(&missing.stderr);
    assert!(
        e.contains("/nonexistent/terrahost-engine") && e.contains("TERRAHOST_ENGINE"),
        "{e}"
    );
}

/// stderr without tracing's timestamps (the first word of each warning line).
fn untimed(stderr: &str) -> String {
    stderr
        .lines()
        .map(|l| match l.split_once(" WARN ") {
            Some((_, rest)) => format!("WARN {rest}"),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Registration conflicts (a prefix another plugin holds, a second copy of a plugin) and
/// files that are not plugins are decided the same way by both binaries.
#[test]
fn front_and_engine_refuse_the_same_plugins_for_the_same_reasons() {
    let dir = plugin_links(&PLUGINS);
    std::fs::copy(
        built_library("terrahost_fixture_dup_prefix"),
        dir.path().join("libdup.so"),
    )
    .unwrap();
    std::fs::copy(
        built_library("terrahost_plugin_smp"),
        dir.path().join("libzz_second_smp.so"),
    )
    .unwrap();
    std::fs::copy(
        built_library("terrahost_fixture_not_a_plugin"),
        dir.path().join("libnot.so"),
    )
    .unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("registry.json");
    let first = cmd("terrahost", dir.path(), &cache, &["plugins", "--json"])
        .output()
        .unwrap();
    let v = json_of("plugins", &first);
    let kinds: Vec<&str> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    // Files load by name: libdup.so takes `timm` before the real timm library does.
    assert_eq!(
        kinds,
        ["not-a-plugin", "duplicate-prefix", "duplicate-plugin"],
        "{v:#}"
    );
    // The second smp names both files and says which one loaded and why.
    let dup = v["rejected"][2]["reason"].as_str().unwrap();
    let first_smp = dir.path().join("libterrahost_plugin_smp.so");
    let second_smp = dir.path().join("libzz_second_smp.so");
    assert!(
        dup.contains(&format!("{} (version ", first_smp.display()))
            && dup.contains(&format!("{} (version ", second_smp.display()))
            && dup.contains("is loaded")
            && dup.contains("the file whose name comes first wins"),
        "{dup}"
    );
    for args in [
        &["plugins", "--json"][..],
        &["plugins"],
        &["plugins", "--strict"],
        &["list", "--json"],
        &["show", "decoder", "smp_Unet", "--json"],
    ] {
        let front = cmd("terrahost", dir.path(), &cache, args).output().unwrap();
        let engine = cmd("terrahost-engine", dir.path(), &cache, args)
            .output()
            .unwrap();
        assert_eq!(front.status.code(), engine.status.code(), "{args:?}");
        assert_eq!(front.stdout, engine.stdout, "{args:?}");
        let (f, e) = (
            untimed(&String::from_utf8_lossy(&front.stderr)),
            untimed(&String::from_utf8_lossy(&engine.stderr)),
        );
        assert!(f.contains("plugin refused"), "{f}");
        assert_eq!(f, e, "{args:?}");
    }
}
