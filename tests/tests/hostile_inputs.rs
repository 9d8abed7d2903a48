//! Hostile inputs through the command line, as a stranger's files reach a user: every
//! bad config, input, checkpoint and output path ends the command with exit status 1
//! and one `error:` line that names the file and the problem: no panic, no abort, no
//! backtrace, no libtorch frames, and no quote of a file that is not what it was
//! meant to be. The checkpoint corpus is `tests/fixtures/hostile/checkpoints/` (made by
//! `scripts/hostile/make_checkpoints.py`), the scene corpus is walked in `predict.rs`.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use terrahost_testkit::{build_dir, real_plugins, workspace_root, Fixture, PLUGINS};

fn terrahost(plugins: &Path, cache: &Path, args: &[&str]) -> Output {
    Command::new(build_dir().join("terrahost"))
        .arg("--plugin-dir")
        .arg(plugins)
        .args(args)
        .env("TERRAHOST_CACHE", cache.join("registry.json"))
        // Pinned so the outcome does not depend on the machine's memory.
        .env("TERRAHOST_MAX_TENSOR_GB", "1")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

/// Exit status 1 and exactly one `error:` line that contains `needle`; nothing that
/// looks like a panic or a C++ stack.
fn assert_one_line(what: &str, out: &Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{what}: {err}");
    assert!(errors[0].contains(needle), "{what}: {err}");
    for bad in [
        "panicked",
        "backtrace",
        "frame #",
        "Exception raised from",
        "terminate called",
    ] {
        assert!(!err.contains(bad), "{what}: `{bad}` in {err}");
    }
    errors[0].to_owned()
}

fn fixture_config() -> PathBuf {
    Fixture::load("factory_segmentation")
        .dir
        .join("config.yaml")
}

#[test]
fn hostile_configs_inputs_and_checkpoints_end_in_one_line() {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path();
    let config = fixture_config();
    let config = config.to_str().unwrap();
    let w = |name: &str, bytes: &[u8]| {
        let p = work.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let fifo = work.path().join("fifo.yaml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let deep = w(
        "deep.yaml",
        format!(
            "model_factory: x\nmodel_args:\n  a: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        )
        .as_bytes(),
    );
    let nan = w(
        "nan.yaml",
        b"model_factory: EncoderDecoderFactory\nmodel_args:\n  backbone: timm_resnet18\n  decoder: FCNDecoder\n  num_classes: .nan\n",
    );
    let binary = w("secret.yaml", b"root:$6$secrethash:19000::\n\xff\xfe\x00");
    let shape = "1,3,1000000,1000000";
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "run".into(),
                "--config".into(),
                "/dev/zero".into(),
                "--input-shape".into(),
                "1,3,8,8".into(),
            ],
            "a character device",
        ),
        (
            vec![
                "run".into(),
                "--config".into(),
                fifo.to_str().unwrap().into(),
                "--input-shape".into(),
                "1,3,8,8".into(),
            ],
            "a FIFO",
        ),
        (
            vec![
                "run".into(),
                "--config".into(),
                deep,
                "--input-shape".into(),
                "1,3,8,8".into(),
            ],
            "nested more than 128",
        ),
        (
            vec![
                "run".into(),
                "--config".into(),
                nan,
                "--input-shape".into(),
                "1,3,8,8".into(),
            ],
            "`model_args.num_classes` is .nan",
        ),
        (
            vec![
                "run".into(),
                "--config".into(),
                binary,
                "--input-shape".into(),
                "1,3,8,8".into(),
            ],
            "not UTF-8",
        ),
        (
            vec![
                "run".into(),
                "--config".into(),
                config.into(),
                "--input".into(),
                "/dev/zero".into(),
            ],
            "a character device",
        ),
        (
            vec![
                "run".into(),
                "--config".into(),
                config.into(),
                "--input-shape".into(),
                shape.into(),
            ],
            "10.9 TiB",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = assert_one_line(
            &format!("{args:?}"),
            &terrahost(plugins.path(), cache, &args),
            needle,
        );
        assert!(!line.contains("secrethash"), "{line}");
    }

    // Every hostile checkpoint as --weights: refused in one line naming the file.
    let corpus = workspace_root().join("tests/fixtures/hostile/checkpoints");
    let mut seen = 0;
    for e in std::fs::read_dir(&corpus).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("benign") {
            continue;
        }
        let out = terrahost(
            plugins.path(),
            cache,
            &[
                "run",
                "--config",
                config,
                "--weights",
                p.to_str().unwrap(),
                "--input-shape",
                "1,3,32,32",
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("the checkpoint does not fit") {
            // A well-formed file with other keys (a stride-0 view is legal): the
            // key report lists what is missing, one key per line, after the error.
            assert_eq!(out.status.code(), Some(1), "{name}: {err}");
            assert!(!err.contains("panicked"), "{name}: {err}");
        } else {
            assert_one_line(&name, &out, &name);
        }
        seen += 1;
    }
    assert!(seen >= 20, "{seen} hostile checkpoints");
}

/// The safetensors corpus (`scripts/hostile/make_safetensors.py`), each file as
/// `--input` and as `--weights`: one line naming the file and the broken rule.
#[test]
fn hostile_safetensors_end_in_one_line_naming_the_rule() {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let config = fixture_config();
    let config = config.to_str().unwrap();
    let corpus = workspace_root().join("tests/fixtures/hostile/safetensors");
    let cases = [
        (
            "header_2pow40.safetensors",
            "declare a 1099511627776-byte header",
        ),
        (
            "header_past_end.safetensors",
            "truncated, or not safetensors",
        ),
        ("overlapping.safetensors", "overlapping"),
        ("reversed_offsets.safetensors", "not within"),
        ("dtype_size_mismatch.safetensors", "needs 8 bytes"),
        ("dim_2pow63.safetensors", "2^64"),
        ("not_utf8.safetensors", "not UTF-8"),
        ("nested_1e5.safetensors", "not a JSON object"),
        ("duplicate_keys.safetensors", "names `a` twice"),
        ("negative_dim.safetensors", "negative dimension"),
    ];
    for (name, needle) in cases {
        let p = corpus.join(name);
        let p = p.to_str().unwrap();
        let out = terrahost(
            plugins.path(),
            work.path(),
            &["run", "--config", config, "--input", p],
        );
        assert_one_line(&format!("--input {name}"), &out, needle);
        let out = terrahost(
            plugins.path(),
            work.path(),
            &[
                "run",
                "--config",
                config,
                "--weights",
                p,
                "--input-shape",
                "1,3,32,32",
            ],
        );
        let line = assert_one_line(&format!("--weights {name}"), &out, needle);
        assert!(line.contains(name), "{line}");
    }
    // A torch.save checkpoint given as --input is named as what it is.
    let ckpt = workspace_root().join("tests/fixtures/hostile/checkpoints/benign_state_dict.pt");
    let out = terrahost(
        plugins.path(),
        work.path(),
        &["run", "--config", config, "--input", ckpt.to_str().unwrap()],
    );
    assert_one_line("--input a .pt", &out, "not safetensors");
}

#[test]
fn a_means_file_that_is_not_numbers_is_named_not_quoted() {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let secret = work.path().join("shadow");
    std::fs::write(&secret, "root:$6$secrethash:19000:0:99999:7:::\n").unwrap();
    let cfg = workspace_root().join("tests/fixtures/predict/whole/config.yaml");
    let out = Command::new(build_dir().join("terrahost"))
        .current_dir(workspace_root().join("tests/fixtures/predict/whole"))
        .args([
            "--plugin-dir",
            plugins.path().to_str().unwrap(),
            "predict",
            "--config",
        ])
        .arg(&cfg)
        .args(["--input", "scenes", "--output-dir"])
        .arg(work.path().join("out"))
        .args([
            "--set",
            &format!("data.init_args.means={}", secret.display()),
        ])
        .env("TERRAHOST_CACHE", work.path().join("registry.json"))
        .output()
        .unwrap();
    let line = assert_one_line("means", &out, "shadow");
    assert!(
        line.contains("line 1 holds something else") && !line.contains("secrethash"),
        "{line}"
    );
}

#[test]
fn run_output_replaces_a_symbolic_link_instead_of_writing_through_it() {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let victim = work.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let out_path = work.path().join("out.safetensors");
    std::os::unix::fs::symlink(&victim, &out_path).unwrap();
    let out = terrahost(
        plugins.path(),
        work.path(),
        &[
            "run",
            "--config",
            fixture_config().to_str().unwrap(),
            "--input-shape",
            "1,3,32,32",
            "--output",
            out_path.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    let meta = std::fs::symlink_metadata(&out_path).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the link was replaced by the output"
    );
    assert!(tch::Tensor::read_safetensors(&out_path).is_ok());
}

/// Layer counts and widths a stranger's config or `--args` can set (`num_convs`, a
/// backbone's `depth`, `channels`) are not listed one by one: the engine caps its own
/// memory (`TERRAHOST_MAX_MEMORY_GB`, here 2 GiB), so a model that would not fit fails
/// at the first allocation past the ceiling, in one line that says what to change,
/// instead of building until the OOM killer ends it.
#[test]
fn layer_counts_and_widths_past_the_memory_ceiling_end_in_one_line() {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let with_ceiling = |args: &[&str]| {
        Command::new(build_dir().join("terrahost"))
            .arg("--plugin-dir")
            .arg(plugins.path())
            .args(args)
            .env("TERRAHOST_CACHE", work.path().join("registry.json"))
            .env("TERRAHOST_MAX_MEMORY_GB", "2")
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    };
    for (what, args) in [
        ("num_convs 10^6", r#"{"num_convs": 1000000}"#),
        ("channels 10^8", r#"{"channels": 100000000}"#),
    ] {
        let out = with_ceiling(&[
            "build",
            "decoder",
            "FCNDecoder",
            "--channels",
            "768",
            "--args",
            args,
        ]);
        let line = assert_one_line(what, &out, "out of memory");
        assert!(
            line.contains("TERRAHOST_MAX_MEMORY_GB") && line.contains("FCNDecoder"),
            "{what}: {line}"
        );
    }
    // The same through a config: a ViT backbone a million blocks deep.
    let config = work.path().join("deep.yaml");
    std::fs::write(
        &config,
        "model_factory: EncoderDecoderFactory\nmodel_args:\n  task: segmentation\n  backbone: prithvi_eo_v2_300\n  backbone_depth: 1000000\n  backbone_pretrained: false\n  decoder: FCNDecoder\n  num_classes: 2\n",
    )
    .unwrap();
    let out = with_ceiling(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--input-shape",
        "1,6,224,224",
    ]);
    assert_one_line("backbone_depth 10^6", &out, "TERRAHOST_MAX_MEMORY_GB");
}
