//! Which plugin files terrahost trusts: ownership and modes (OpenSSH's `StrictModes`),
//! the sha256 allowlist, and the guarantee that the bytes loaded are the bytes scanned.
//! Every command runs the built `terrahost` binaries with their own registry cache.
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use terrahost_testkit::{build_dir, built_library, PLUGINS};

fn terrahost(dir: &Path, cache: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(build_dir().join("terrahost"));
    cmd.arg("--plugin-dir")
        .arg(dir)
        .args(args)
        .env("TERRAHOST_CACHE", cache)
        .env("TERRAHOST_SCAN_TIMEOUT", "10")
        .env_remove("TERRAHOST_SCANNER")
        .env_remove("TERRAHOST_ALLOW_INSECURE_PLUGINS")
        .env_remove("TERRAHOST_PLUGIN_ALLOWLIST")
        .env_remove("RUST_LOG");
    cmd
}

fn json(what: &str, out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{what}: exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn plugins_json(cmd: &mut Command) -> Value {
    json("plugins --json", &cmd.output().unwrap())
}

fn loaded(v: &Value) -> Vec<String> {
    let mut names: Vec<String> = v["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// `(kind, reason)` of the refused file whose path ends in `/file`.
fn refusal(v: &Value, file: &str) -> Option<(String, String)> {
    v["rejected"].as_array().unwrap().iter().find_map(|r| {
        r["path"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/{file}"))
            .then(|| {
                (
                    r["kind"].as_str().unwrap().to_owned(),
                    r["reason"].as_str().unwrap().to_owned(),
                )
            })
    })
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A private directory (mode 0755) with copies of the four real plugins.
fn plugin_copies() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    for p in PLUGINS {
        let lib = built_library(&format!("terrahost_plugin_{p}"));
        std::fs::copy(&lib, dir.path().join(lib.file_name().unwrap())).unwrap();
    }
    dir
}

fn hostile_lib(stem: &str) -> std::path::PathBuf {
    Path::new(env!("TERRAHOST_HOSTILE_DIR")).join(format!("lib{stem}.so"))
}

#[test]
fn writable_plugin_files_and_directories_are_refused_before_loading_unless_allowed() {
    let dir = plugin_copies();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("registry.json");
    // The aborting constructor would kill the scanner if it were opened at all.
    let abort = dir.path().join("ctor_abort.so");
    std::fs::copy(hostile_lib("ctor_abort"), &abort).unwrap();
    set_mode(&abort, 0o666);
    let v = plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
    assert_eq!(loaded(&v), ["mmseg", "smp", "terratorch", "timm"], "{v:#}");
    let (kind, reason) = refusal(&v, "ctor_abort.so").unwrap();
    assert_eq!(kind, "insecure-permissions", "{reason}");
    assert!(
        reason.contains("plugin file")
            && reason.contains("mode 0666")
            && reason.contains(&format!("chmod go-w {}", abort.display())),
        "{reason}"
    );
    std::fs::remove_file(&abort).unwrap();

    // A world-writable plugin directory: every file in it is refused, cold and warm.
    set_mode(dir.path(), 0o777);
    for _ in 0..2 {
        let v = plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
        assert!(loaded(&v).is_empty(), "{v:#}");
        let (kind, reason) = refusal(&v, "libterrahost_plugin_smp.so").unwrap();
        assert_eq!(kind, "insecure-permissions");
        assert!(
            reason.contains("directory") && reason.contains("mode 0777"),
            "{reason}"
        );
    }
    // The flag and the variable opt out.
    let v = plugins_json(&mut terrahost(
        dir.path(),
        &cache,
        &["--allow-insecure-plugins", "plugins", "--json"],
    ));
    assert_eq!(loaded(&v).len(), 4, "{v:#}");
    let v = plugins_json(
        terrahost(dir.path(), &cache, &["plugins", "--json"])
            .env("TERRAHOST_ALLOW_INSECURE_PLUGINS", "1"),
    );
    assert_eq!(loaded(&v).len(), 4, "{v:#}");
    // `build` is refused too: the engine applies the same rule.
    let out = terrahost(
        dir.path(),
        &cache,
        &["build", "decoder", "smp_Unet", "--channels", "8,16"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    set_mode(dir.path(), 0o755);

    // A file owned by someone else (only root can make one).
    if unsafe { libc::geteuid() } == 0 {
        let other = dir.path().join("libterrahost_plugin_smp.so");
        std::os::unix::fs::chown(&other, Some(12345), None).unwrap();
        let v = plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
        let (kind, reason) = refusal(&v, "libterrahost_plugin_smp.so").unwrap();
        assert_eq!(kind, "insecure-permissions");
        assert!(reason.contains("owned by uid 12345"), "{reason}");
    }
}

#[test]
fn with_an_allowlist_only_listed_libraries_load_and_others_are_never_opened() {
    let dir = plugin_copies();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("registry.json");
    let list = cache_dir.path().join("allow.txt");
    let v = plugins_json(&mut terrahost(
        dir.path(),
        &cache,
        &[
            "plugins",
            "--json",
            "--allowlist-out",
            list.to_str().unwrap(),
        ],
    ));
    // `plugins --json` reports each library's sha256, and the allowlist holds them.
    let text = std::fs::read_to_string(&list).unwrap();
    for p in v["loaded"].as_array().unwrap() {
        let sha = p["sha256"].as_str().unwrap();
        assert_eq!(sha.len(), 64);
        let path = p["path"].as_str().unwrap();
        assert_eq!(
            sha,
            terrahost_index::integrity::sha256_file(Path::new(path)).unwrap()
        );
        assert!(text.contains(&format!("{sha}  {path}")), "{text}");
    }
    // A library that is not listed, and whose constructor aborts: refused by its hash,
    // without being scanned (a scan would report `crashed`).
    std::fs::copy(hostile_lib("ctor_abort"), dir.path().join("ctor_abort.so")).unwrap();
    let want = terrahost_index::integrity::sha256_file(&hostile_lib("ctor_abort")).unwrap();
    for cmd in [
        terrahost(
            dir.path(),
            &cache,
            &["--allowlist", list.to_str().unwrap(), "plugins", "--json"],
        ),
        {
            let mut c = terrahost(dir.path(), &cache, &["plugins", "--json"]);
            c.env("TERRAHOST_PLUGIN_ALLOWLIST", &list);
            c
        },
    ] {
        let mut cmd = cmd;
        let v = plugins_json(&mut cmd);
        assert_eq!(loaded(&v).len(), 4, "{v:#}");
        let (kind, reason) = refusal(&v, "ctor_abort.so").unwrap();
        assert_eq!(kind, "not-allowed", "{reason}");
        assert!(reason.contains(&want), "{reason}");
    }
    // The engine applies it when building, and a model from a listed plugin builds.
    let out = terrahost(
        dir.path(),
        &cache,
        &[
            "--allowlist",
            list.to_str().unwrap(),
            "build",
            "decoder",
            "smp_Unet",
            "--channels",
            "3,8,16,32,64,128",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An allowlist that lists none of them refuses all four; one that cannot be read is
    // one error.
    let empty = cache_dir.path().join("empty.txt");
    std::fs::write(&empty, "# nothing\n").unwrap();
    let v = plugins_json(&mut terrahost(
        dir.path(),
        &cache,
        &["--allowlist", empty.to_str().unwrap(), "plugins", "--json"],
    ));
    assert!(loaded(&v).is_empty(), "{v:#}");
    let out = terrahost(
        dir.path(),
        &cache,
        &["--allowlist", "/nonexistent/allow.txt", "plugins"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/nonexistent/allow.txt") && err.lines().count() == 1,
        "{err}"
    );
}

/// The attack from issue 17: after a scan, the library is rewritten in place with a
/// different one padded to the same size, and its mtime is set back, so size, inode
/// and mtime all match the cache. The status-change time cannot be set back: the file
/// is scanned again (and its aborting constructor is caught by the scanner), never
/// loaded unscanned by the engine.
#[test]
fn an_in_place_rewrite_with_size_inode_and_mtime_restored_is_scanned_again() {
    use std::io::{Seek, Write};
    use std::os::unix::fs::MetadataExt;
    let dir = plugin_copies();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("registry.json");
    let extra = dir.path().join("extra.so");
    std::fs::copy(built_library("terrahost_fixture_panicky"), &extra).unwrap();
    let v = plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
    assert!(loaded(&v).contains(&"panicky".to_owned()), "{v:#}");

    let before = std::fs::metadata(&extra).unwrap();
    let mut bytes = std::fs::read(hostile_lib("ctor_abort")).unwrap();
    assert!(bytes.len() as u64 <= before.len());
    bytes.resize(before.len() as usize, 0);
    // Wait for the clock to move on, so the status-change time differs.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&extra)
        .unwrap();
    f.rewind().unwrap();
    f.write_all(&bytes).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    let after = std::fs::metadata(&extra).unwrap();
    assert_eq!(
        (after.len(), after.ino(), after.mtime(), after.mtime_nsec()),
        (
            before.len(),
            before.ino(),
            before.mtime(),
            before.mtime_nsec()
        )
    );

    // `build` of the rewritten plugin's entry: the engine rescans (the scanner dies,
    // not the engine) and reports the entry as missing, in one line.
    let out = terrahost(
        dir.path(),
        &cache,
        &[
            "build",
            "backbone",
            "panicky_conv",
            "--args",
            r#"{"in_channels": 3}"#,
        ],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("panicky"), "{err}");
    let v = plugins_json(&mut terrahost(dir.path(), &cache, &["plugins", "--json"]));
    let (kind, reason) = refusal(&v, "extra.so").unwrap();
    assert_eq!(kind, "crashed", "{reason}");
    assert_eq!(loaded(&v), ["mmseg", "smp", "terratorch", "timm"]);
}
