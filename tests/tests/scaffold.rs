//! `terrahost new-plugin`: the crate it writes builds outside the workspace on the first
//! try, passes its own tests (one runs it through the real host), loads next to the real
//! plugins, and serves as a neck between a `timm` backbone and an `smp` decoder in
//! TerraTorch's EncoderDecoderFactory.
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use terrahost_testkit::{build_dir, real_plugins, workspace_root};

fn exe(name: &str) -> PathBuf {
    let exe = build_dir().join(name);
    assert!(
        exe.exists(),
        "{} is not built; run `cargo build --workspace` first",
        exe.display()
    );
    exe
}

fn checked(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn terrahost(plugins: &Path, cache: &Path, args: &[&str]) -> Output {
    Command::new(exe("terrahost"))
        .arg("--plugin-dir")
        .arg(plugins)
        .args(args)
        .env("TERRAHOST_CACHE", cache.join("registry.json"))
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("RUST_LOG")
        .output()
        .expect("run terrahost")
}

/// The segmentation model with the new plugin's neck between the timm backbone and the
/// smp decoder, its scales initialised to `init`.
fn config(dir: &Path, init: f64) -> PathBuf {
    let path = dir.join(format!("scaled_{init}.yaml"));
    let text = format!(
        "model_factory: EncoderDecoderFactory
model_args:
  task: segmentation
  backbone: timm_resnet18
  backbone_pretrained: false
  backbone_features_only: true
  necks:
    - name: geoscale_Scale
      init: {init:?}
  decoder: smp_Unet
  decoder_decoder_channels: [64, 32, 16, 8]
  num_classes: 3
"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_new_plugin_builds_loads_and_composes_with_the_real_plugins() {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(exe("terrahost-engine"))
        .args(["new-plugin", "geoscale", "--dir"])
        .arg(work.path())
        .output()
        .unwrap();
    checked("terrahost new-plugin", out);
    let krate = work.path().join("geoscale");
    for f in [
        "Cargo.toml",
        ".cargo/config.toml",
        "src/lib.rs",
        "tests/plugin.rs",
    ] {
        assert!(krate.join(f).is_file(), "new-plugin wrote no {f}");
    }
    // The same dependency versions and build directory as the workspace, so that tch and
    // libtorch's bindings are not compiled a second time: a test-only shortcut; the crate
    // builds on its own as well (it resolves the same crates).
    std::fs::copy(
        workspace_root().join("Cargo.lock"),
        krate.join("Cargo.lock"),
    )
    .unwrap();
    let target = build_dir().parent().unwrap().to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Its own tests: the entry in process, and the built library through `terrahost`.
    let out = Command::new(&cargo)
        .args(["test", "--offline"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &target)
        .env("TERRAHOST", exe("terrahost"))
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "cargo test of the new plugin failed:\n{log}"
    );
    assert!(log.contains("test result: ok. 2 passed"), "{log}");

    // Next to the real plugins.
    let plugins = real_plugins(&["terratorch", "timm", "smp"]);
    let so = target.join("debug").join("libgeoscale.so");
    std::fs::copy(&so, plugins.path().join("libgeoscale.so")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let listed = checked(
        "terrahost list neck",
        terrahost(plugins.path(), cache.path(), &["list", "neck", "--json"]),
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let source = listed["neck"]
        .as_array()
        .and_then(|sources| sources.iter().find(|s| s["prefix"] == "geoscale"))
        .unwrap_or_else(|| panic!("no geoscale source among the necks: {listed}"));
    assert_eq!(source["names"], serde_json::json!(["Scale"]), "{listed}");

    // Across plugin boundaries: timm backbone -> geoscale neck -> smp decoder ->
    // terratorch head. With every scale at 0 the decoder sees zeros and the output is
    // one value everywhere; at 1 it varies, so the neck is really in the forward.
    // The largest spatial standard deviation of any output channel.
    let spread = |init: f64| -> f64 {
        let cfg = config(work.path(), init);
        let output = work.path().join(format!("out_{init}.safetensors"));
        let (cfg, out_file) = (cfg.to_str().unwrap(), output.to_str().unwrap());
        let args = [
            "run",
            "--config",
            cfg,
            "--input-shape",
            "1,3,64,64",
            "--output",
            out_file,
            "--json",
        ];
        let out = checked(
            "terrahost run",
            terrahost(plugins.path(), cache.path(), &args),
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["output_shape"], serde_json::json!([1, 3, 64, 64]), "{v}");
        let tensors = tch::Tensor::read_safetensors(&output).unwrap();
        let (_, y) = tensors
            .iter()
            .find(|(n, _)| n == "output")
            .expect("output tensor");
        let per_channel = y.flatten(2, 3).std_dim([2i64].as_slice(), false, false);
        per_channel.max().double_value(&[])
    };
    let (zeroed, live) = (spread(0.0), spread(1.0));
    assert!(
        zeroed < 1e-6,
        "scales of 0 should leave a constant output, std {zeroed}"
    );
    assert!(
        live > 1e-4,
        "scales of 1 should pass the features on, std {live}"
    );
}
