//! The `terrahost` command line, run as a user runs it: the built binary with
//! `--plugin-dir` pointing at a directory of plugin libraries.
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use terrahost_testkit::{build_dir, real_plugins, workspace_root, Fixture, PLUGINS};

fn terrahost() -> PathBuf {
    let exe = build_dir().join("terrahost");
    assert!(
        exe.exists(),
        "{} is not built; run `cargo build --workspace` first",
        exe.display()
    );
    exe
}

/// One registry cache for this test binary, in a temporary directory: never the
/// user's, and warm after the first command.
fn cache() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(terrahost())
        .arg("--plugin-dir")
        .arg(dir)
        .args(args)
        .env("TERRAHOST_CACHE", cache().join("registry.json"))
        // The binary must find libtorch through its rpath alone.
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("RUST_LOG")
        .output()
        .expect("run terrahost")
}

fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "terrahost {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout of terrahost {args:?} is not JSON only ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn err_text(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(!out.status.success(), "terrahost {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn plugins_json_lists_the_four_plugins_and_their_sources() {
    let dir = real_plugins(&PLUGINS);
    let v = ok_json(dir.path(), &["plugins", "--json"]);
    let loaded = v["loaded"].as_array().unwrap();
    assert_eq!(loaded.len(), 4);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 0);
    let timm = loaded.iter().find(|p| p["name"] == "timm").unwrap();
    assert_eq!(timm["torch_version"], terrahost_plugin_api::TORCH_VERSION);
    assert_eq!(timm["api_version"], terrahost_plugin_api::API_VERSION);
    assert!(timm["path"]
        .as_str()
        .unwrap()
        .ends_with("libterrahost_plugin_timm.so"));
    let src = &timm["sources"][0];
    assert_eq!(
        (src["registry"].as_str(), src["prefix"].as_str()),
        (Some("backbone"), Some("timm"))
    );
    assert!(src["count"].as_u64().unwrap() >= 2);
}

#[test]
fn list_json_has_every_registry_with_sources_in_order() {
    let dir = real_plugins(&PLUGINS);
    let v = ok_json(dir.path(), &["list", "--json"]);
    for r in ["backbone", "neck", "decoder", "full_model", "model_factory"] {
        assert!(v[r].is_array(), "{r} missing");
    }
    let prefixes: Vec<&str> = v["decoder"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["prefix"].as_str().unwrap())
        .collect();
    // TerraTorch's search order, whatever order the libraries load in.
    assert_eq!(prefixes, vec!["terratorch", "smp", "mmseg"]);
    let timm = &v["backbone"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["prefix"] == "timm")
        .unwrap();
    assert_eq!(timm["plugin"], "timm");
    assert!(timm["names"]
        .as_array()
        .unwrap()
        .contains(&Value::from("resnet18")));

    let only = ok_json(
        dir.path(),
        &["list", "backbone", "--filter", "*34", "--json"],
    );
    assert_eq!(only.as_object().unwrap().len(), 1);
    let names: Vec<&Value> = only["backbone"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["names"].as_array().unwrap())
        .collect();
    assert_eq!(names, vec![&Value::from("resnet34")]);
}

#[test]
fn show_prints_parameters_with_types_and_defaults() {
    let dir = real_plugins(&PLUGINS);
    let v = ok_json(dir.path(), &["show", "backbone", "resnet18", "--json"]);
    assert_eq!(v["name"], "timm_resnet18");
    let in_chans = v["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "in_chans")
        .unwrap();
    assert_eq!(in_chans["type"], "int");
    assert_eq!(in_chans["default"], 3);
    let text = run(dir.path(), &["show", "decoder", "mmseg_FCNHead"]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("num_classes"));
}

/// A name a plugin knows and refuses is answered with its reason by `show` (the front)
/// and `build` (the engine) alike, in every registry, the flat model_factory included.
#[test]
fn refused_names_get_the_plugins_reason_from_show_and_build() {
    let dir = real_plugins(&PLUGINS);
    for (registry, name, why) in [
        ("model_factory", "SatMAEModelFactory", "builds no model"),
        ("decoder", "SklearnDecoder", "scikit-learn"),
        ("decoder", "mmseg_CCHead", "CrissCrossAttention"),
        ("backbone", "terramind_v1_tokenizer_s2l2a", "tokenizers"),
    ] {
        for command in ["show", "build"] {
            let e = err_text(dir.path(), &[command, registry, name]);
            assert!(
                e.contains(why) && !e.contains("did you mean"),
                "{command} {registry} {name}: {e}"
            );
        }
    }
}

#[test]
fn build_reports_what_it_built() {
    let dir = real_plugins(&PLUGINS);
    let v = ok_json(
        dir.path(),
        &[
            "build",
            "backbone",
            "resnet18",
            "--args",
            r#"{"in_chans": 6}"#,
            "--json",
        ],
    );
    assert_eq!(v["resolved"], "timm_resnet18");
    assert_eq!(
        v["out_channels"],
        serde_json::json!([64, 64, 128, 256, 512])
    );
    assert_eq!(v["includes_head"], false);
    // timm's resnet18 feature extractor with 6 input channels: 11,176,512 parameters
    // for 3 channels (the reference fixture) plus 3*64*7*7 for the extra channels.
    assert_eq!(v["parameters"], 11_176_512 + 3 * 64 * 49);

    let v = ok_json(
        dir.path(),
        &[
            "build",
            "decoder",
            "mmseg_FCNHead",
            "--channels",
            "32",
            "--args",
            r#"{"num_classes": 3, "channels": 16}"#,
            "--json",
        ],
    );
    assert_eq!(v["includes_head"], true);
}

#[test]
fn bad_input_gets_errors_that_name_what_was_wrong() {
    let dir = real_plugins(&PLUGINS);
    let e = err_text(
        dir.path(),
        &["build", "backbone", "resnet18", "--args", "{not json"],
    );
    assert!(e.contains("--args is not valid JSON"), "{e}");
    let e = err_text(
        dir.path(),
        &[
            "build",
            "backbone",
            "resnet18",
            "--args",
            r#"{"in_chans": [3]}"#,
        ],
    );
    assert!(e.contains("`in_chans`"), "{e}");
    let e = err_text(
        dir.path(),
        &["build", "decoder", "FCNDecoder", "--channels", "32,abc"],
    );
    assert!(e.contains("`abc`"), "{e}");
    let e = err_text(dir.path(), &["build", "decoder", "FCNDecoder"]);
    assert!(e.contains("channel list"), "{e}");
    let e = err_text(dir.path(), &["build", "backbone", "resnet81"]);
    assert!(e.contains("did you mean"), "{e}");
    let e = err_text(dir.path(), &["list", "decoders"]);
    assert!(e.contains("no registry `decoders`"), "{e}");
}

/// `terrahost run --json` on a fixture's `config`, `weights` and input file; returns the
/// JSON report and the tensors it wrote.
fn run_fixture(
    dir: &Path,
    fx: &Fixture,
    config: &str,
    weights: &Path,
    extra: &[&str],
) -> (Value, Vec<(String, tch::Tensor)>) {
    let work = tempfile::tempdir().unwrap();
    let output = work.path().join("out.safetensors");
    let (config, input) = (fx.dir.join(config), fx.dir.join("io.safetensors"));
    let args = [
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
        ],
        extra,
    ]
    .concat();
    let v = ok_json(dir, &args);
    (v, tch::Tensor::read_safetensors(&output).unwrap())
}

/// Compares what `run` wrote with every reference output, by the names the CLI uses.
fn assert_outputs(what: &str, fx: &Fixture, v: &Value, got: &[(String, tch::Tensor)]) {
    let names = terrahost_testkit::output_names(fx);
    assert_eq!(names.len(), fx.outputs.len(), "{what}: output names");
    assert_eq!(
        v["outputs"].as_array().map(Vec::len),
        Some(names.len()),
        "{what}: {v}"
    );
    assert_eq!(
        v["output_shape"],
        serde_json::json!(fx.outputs[0].size()),
        "{what}"
    );
    for (name, expected) in names.iter().zip(&fx.outputs) {
        let out = &got
            .iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("{what}: no tensor `{name}`"))
            .1;
        terrahost_testkit::assert_close(&format!("{what} {name}"), out, expected, fx.atol());
    }
}

/// Every whole-model fixture through the binary: its TerraTorch config (plain and, where
/// there is one, LightningCLI), the checkpoint and the input file give the reference
/// outputs, auxiliary heads and Prithvi coordinates included.
#[test]
fn run_reproduces_every_model_fixture() {
    let dir = real_plugins(&PLUGINS);
    for case in terrahost_testkit::model_fixtures() {
        let fx = Fixture::load(&case);
        let work = tempfile::tempdir().unwrap();
        let weights = terrahost_testkit::write_weights(&fx, work.path());
        for config in ["config.yaml", "lightning.yaml"] {
            if fx.dir.join(config).is_file() {
                let (v, got) = run_fixture(dir.path(), &fx, config, &weights, &[]);
                assert_outputs(&format!("{case} ({config})"), &fx, &v, &got);
            }
        }
    }
}

/// Every whole-model fixture under `--precision bf16`: it runs (no operator meets a
/// bfloat16 weight outside autocast), writes float32 outputs of the reference's shapes,
/// and stays near the float32 reference: the error relative to the outputs' magnitude
/// (absolute below magnitude 1) has a median of at most 1 % over all outputs and is
/// below 0.5 for each (garbage would be ~1 or more). Some fixtures are sensitive to
/// bfloat16 by themselves: `factory_aux`'s `aux_fcn` is 0.40 from float32 here and 0.39
/// under PyTorch's own bf16 autocast, `factory_temporal_vit_diff` 0.095 and 0.155,
/// `smp_factory_fpn_aux` 0.0461 and 0.0461 (`scripts/reference/bf16_autocast_errors.py`).
/// Detectors are compared by their own test
/// (`object_detection_under_bf16_keeps_its_heads_in_float32`): bfloat16 reorders their
/// detections.
#[test]
fn bf16_runs_every_model_fixture() {
    runs_every_model_fixture("bf16");
}

/// Every whole-model fixture under `--precision int8`, held to the same bounds: no model
/// calls a linear layer int8 cannot run (a vector, a batch of matrices) or fails with it.
/// The synthetic weights' rank-2 matrices make int8's rounding smaller here than on
/// trained or randomly initialised weights
/// (`run_precision_int8_is_pytorchs_dynamic_quantization` measures that).
#[test]
fn int8_runs_every_model_fixture() {
    runs_every_model_fixture("int8");
}

fn runs_every_model_fixture(precision: &str) {
    let dir = real_plugins(&PLUGINS);
    let mut worst = (0.0f64, String::new());
    let mut errors = Vec::new();
    for case in terrahost_testkit::model_fixtures() {
        let fx = Fixture::load(&case);
        let work = tempfile::tempdir().unwrap();
        let weights = terrahost_testkit::write_weights(&fx, work.path());
        let (v, got) = run_fixture(
            dir.path(),
            &fx,
            "config.yaml",
            &weights,
            &["--precision", precision],
        );
        assert_eq!(v["precision"], precision, "{case}");
        let names = terrahost_testkit::output_names(&fx);
        if names.iter().any(|n| n.starts_with("boxes")) {
            continue;
        }
        for (name, expected) in names.iter().zip(&fx.outputs) {
            let out = &got
                .iter()
                .find(|(k, _)| k == name)
                .unwrap_or_else(|| panic!("{case}: no tensor `{name}`"))
                .1;
            assert_eq!(out.size(), expected.size(), "{case} {name}");
            if !expected.is_floating_point() {
                continue;
            }
            assert_eq!(out.kind(), tch::Kind::Float, "{case} {name}");
            let magnitude = expected.abs().max().double_value(&[]).max(1.0);
            let err = (out.to_kind(tch::Kind::Double) - expected.to_kind(tch::Kind::Double))
                .abs()
                .max()
                .double_value(&[])
                / magnitude;
            if err > worst.0 {
                worst = (err, format!("{case} {name}"));
            }
            errors.push(err);
            assert!(
                err < 0.5,
                "{case} {name}: {precision} is {err} of the magnitude from float32"
            );
        }
    }
    errors.sort_by(f64::total_cmp);
    let median = errors[errors.len() / 2];
    eprintln!(
        "{precision} over {} outputs of the model fixtures: median relative error {median:.2e}, largest {:.2e} ({})",
        errors.len(),
        worst.0,
        worst.1
    );
    assert!(
        median <= 0.01,
        "{precision}'s median relative error is {median}"
    );
}

#[test]
fn run_refuses_a_checkpoint_that_does_not_fit_and_lists_the_keys() {
    let dir = real_plugins(&PLUGINS);
    let fx = Fixture::load("factory_segmentation");
    let work = tempfile::tempdir().unwrap();
    let mut weights = fx.weights();
    weights.retain(|(k, _)| k != "head.head.2.weight");
    weights.push((
        "head.extra.weight".into(),
        tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)),
    ));
    let named: Vec<(&str, &tch::Tensor)> = weights.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let path = work.path().join("bad.safetensors");
    terrahost::weights::write_tensors(&path, &named).unwrap();
    let e = err_text(
        dir.path(),
        &[
            "run",
            "--config",
            fx.dir.join("config.yaml").to_str().unwrap(),
            "--weights",
            path.to_str().unwrap(),
            "--input-shape",
            "1,3,64,64",
        ],
    );
    assert!(e.contains("missing keys (1): head.head.2.weight"), "{e}");
    assert!(e.contains("unexpected keys (1): head.extra.weight"), "{e}");
}

/// A Lightning checkpoint as TerraTorch training writes it (`torch.save` of a dict whose
/// `state_dict` has the task's `model.` keys) loads unchanged and reproduces the reference.
#[test]
fn run_loads_a_terratorch_lightning_checkpoint() {
    let dir = real_plugins(&PLUGINS);
    let fx = Fixture::load("factory_prithvi_unet");
    for config in ["config.yaml", "lightning.yaml"] {
        let (v, got) = run_fixture(
            dir.path(),
            &fx,
            config,
            &fx.dir.join("checkpoint.ckpt"),
            &[],
        );
        assert!(v["weights_loaded"].as_u64().unwrap() > 50, "{v}");
        assert_outputs(&format!("checkpoint.ckpt ({config})"), &fx, &v, &got);
    }
}

/// `run --profile FILE` writes a Chrome trace of the forward's libtorch operators, the
/// plugin's included (the model is built and run inside the terratorch plugin), and says
/// where; a trace that cannot be written is refused before the model is built.
#[test]
fn run_profile_writes_a_trace_of_the_plugins_operators() {
    let dir = real_plugins(&PLUGINS);
    let fx = Fixture::load("factory_segmentation");
    let work = tempfile::tempdir().unwrap();
    let trace = work.path().join("ops.json");
    let config = fx.dir.join("config.yaml");
    let v = ok_json(
        dir.path(),
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--input-shape",
            "1,3,64,64",
            "--device",
            "cpu",
            "--profile",
            trace.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(v["profile_file"].as_str(), trace.to_str(), "{v}");
    let events: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap())
        .expect("the profile is JSON");
    let names: Vec<&str> = events
        .as_array()
        .expect("a Chrome trace: a list of events")
        .iter()
        .filter(|e| e["ph"] == "X")
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.iter().any(|n| n.contains("convolution")),
        "the plugin's convolutions are recorded: {names:?}"
    );
    let missing = work.path().join("no-such-dir").join("ops.json");
    let e = err_text(
        dir.path(),
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--input-shape",
            "1,3,64,64",
            "--profile",
            missing.to_str().unwrap(),
        ],
    );
    assert!(e.contains("--profile: directory"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
}

/// `run --precision bf16`: the matrix weights are stored in bfloat16, the outputs are
/// written as float32 and stay close to the float32 forward's without being the same
/// numbers; an unsupported precision gets one line naming it and the choices.
#[test]
fn run_precision_bf16_is_close_to_fp32_and_unknown_precisions_are_refused() {
    let dir = real_plugins(&PLUGINS);
    let fx = Fixture::load("factory_segmentation");
    let work = tempfile::tempdir().unwrap();
    let config = fx.dir.join("config.yaml");
    let mut outputs = Vec::new();
    for precision in ["fp32", "bf16"] {
        let out = work.path().join(format!("{precision}.safetensors"));
        let v = ok_json(
            dir.path(),
            &[
                "run",
                "--config",
                config.to_str().unwrap(),
                "--input-shape",
                "1,3,64,64",
                "--device",
                "cpu",
                "--precision",
                precision,
                "--output",
                out.to_str().unwrap(),
                "--json",
            ],
        );
        assert_eq!(v["precision"], precision, "{v}");
        outputs.push((v, tch::Tensor::read_safetensors(&out).unwrap()));
    }
    assert!(outputs[0].0["weights_in_bf16"].is_null());
    assert!(
        outputs[1].0["weights_in_bf16"].as_u64().unwrap() > 0,
        "{}",
        outputs[1].0
    );
    let (a, b) = (&outputs[0].1[0].1, &outputs[1].1[0].1);
    assert_eq!(b.kind(), tch::Kind::Float, "written as float32");
    let magnitude = a.abs().max().double_value(&[]).max(1.0);
    let err = (a - b).abs().max().double_value(&[]) / magnitude;
    assert!(err > 0.0 && err < 0.05, "bf16 against fp32: {err}");
    for (bad, says) in [
        ("fp16", "not supported on the CPU"),
        ("fp64", "unknown precision `fp64`"),
    ] {
        let e = err_text(
            dir.path(),
            &[
                "run",
                "--config",
                config.to_str().unwrap(),
                "--input-shape",
                "1,3,64,64",
                "--precision",
                bad,
            ],
        );
        assert!(e.contains(says) && e.contains("--precision"), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    }
}

/// `--precision int8` computes what PyTorch's dynamic quantization computes: on a small
/// model of the catalog's shape with full-rank weights (its own random initialisation,
/// `scripts/reference/int8_fixtures.py`), terrahost's int8 output is PyTorch's
/// `quantize_dynamic` output (per-channel weights, FBGEMM) up to float32 rounding, ten
/// times closer to it than to float32's, with every linear layer quantized once.
#[test]
fn run_precision_int8_is_pytorchs_dynamic_quantization() {
    let dir = real_plugins(&PLUGINS);
    let fx = workspace_root().join("tests/fixtures/int8/prithvi_unet_small");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("meta.json")).unwrap()).unwrap();
    let io: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(fx.join("io.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let work = tempfile::tempdir().unwrap();
    let mut got = Vec::new();
    for precision in ["fp32", "int8"] {
        let out = work.path().join(format!("{precision}.safetensors"));
        let v = ok_json(
            dir.path(),
            &[
                "run",
                "--config",
                fx.join("config.yaml").to_str().unwrap(),
                "--weights",
                fx.join("weights.safetensors").to_str().unwrap(),
                "--input",
                fx.join("io.safetensors").to_str().unwrap(),
                "--device",
                "cpu",
                "--precision",
                precision,
                "--output",
                out.to_str().unwrap(),
                "--json",
            ],
        );
        assert_eq!(v["precision"], precision, "{v}");
        got.push((v, tch::Tensor::read_safetensors(&out).unwrap().remove(0).1));
    }
    assert!(got[0].0["linears_in_int8"].is_null());
    assert_eq!(
        got[1].0["linears_in_int8"], meta["linear_layers_quantized"],
        "every linear layer quantized, once"
    );
    let diff = |a: &tch::Tensor, b: &tch::Tensor| (a - b).abs().max().double_value(&[]);
    let (fp32, int8) = (&got[0].1, &got[1].1);
    assert!(diff(fp32, &io["output"]) < 1e-4, "float32 is PyTorch's");
    let vs_pytorch = diff(int8, &io["int8.output"]);
    let vs_fp32 = diff(int8, &io["output"]);
    assert!(
        vs_pytorch < 2e-3 && vs_fp32 > 10.0 * vs_pytorch,
        "int8: {vs_pytorch} from PyTorch's int8, {vs_fp32} from float32"
    );
    let same = int8
        .argmax(1, false)
        .eq_tensor(&io["int8.output"].argmax(1, false))
        .to_kind(tch::Kind::Double)
        .mean(tch::Kind::Double)
        .double_value(&[]);
    assert!(same >= 0.999, "argmax agrees with PyTorch's int8 on {same}");
}

/// `--precision int8` on a model without linear layers (a ResNet with a U-Net decoder)
/// runs as fp32 would, and says so: `linears_in_int8` is 0 and a warning names why.
#[test]
fn run_precision_int8_says_when_it_changes_nothing() {
    let dir = real_plugins(&PLUGINS);
    let fx = Fixture::load("factory_segmentation");
    let config = fx.dir.join("config.yaml");
    let out = run(
        dir.path(),
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--input-shape",
            "1,3,64,64",
            "--device",
            "cpu",
            "--precision",
            "int8",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["linears_in_int8"], 0, "{v}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("int8 changed nothing") && stderr.contains("no linear layers"),
        "{stderr}"
    );
}

/// `--input` without a tensor `input` holds tensors named by modality: they reach the
/// model as TerraTorch's dict, in the model's order (`input_names`), whatever order the
/// file has; a tensor the model does not take is dropped with a warning naming it, and
/// a file with none it takes is refused.
#[test]
fn run_takes_inputs_named_by_modality() {
    let dir = real_plugins(&PLUGINS);
    let fx = Fixture::load("factory_terramind_multimodal");
    let work = tempfile::tempdir().unwrap();
    let weights = terrahost_testkit::write_weights(&fx, work.path());
    // S1GRD first in the file, plus a tensor the model does not take.
    let extra = tch::Tensor::zeros([1, 3, 30, 30], (tch::Kind::Float, tch::Device::Cpu));
    let input = work.path().join("named.safetensors");
    terrahost::weights::write_tensors(
        &input,
        &[
            ("S1GRD", &fx.inputs[1]),
            ("junk", &extra),
            ("S2L2A", &fx.inputs[0]),
        ],
    )
    .unwrap();
    let output = work.path().join("out.safetensors");
    let config = fx.dir.join("config.yaml");
    let args = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
    ];
    let out = run(dir.path(), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`junk` is not an input of this model (it takes S2L2A, S1GRD)"),
        "{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["input_names"],
        serde_json::json!(["S2L2A", "S1GRD"]),
        "{v}"
    );
    let got = tch::Tensor::read_safetensors(&output).unwrap();
    let (_, y) = got.iter().find(|(k, _)| k == "output").expect("output");
    terrahost_testkit::assert_close("named inputs", y, &fx.outputs[0], fx.atol());

    terrahost::weights::write_tensors(&input, &[("junk", &extra)]).unwrap();
    let e = err_text(
        dir.path(),
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
    );
    assert!(
        e.contains("none of its tensors (junk) is an input of this model; it takes S2L2A, S1GRD"),
        "{e}"
    );
}

/// `bin` (`terrahost` or `terrahost-engine`) with `--plugin-dir dir`, this binary's
/// cache and no inherited logging.
fn command(bin: &str, dir: &Path, args: &[&str]) -> Command {
    let exe = build_dir().join(bin);
    assert!(exe.exists(), "{} is not built", exe.display());
    let mut c = Command::new(exe);
    c.arg("--plugin-dir")
        .arg(dir)
        .args(args)
        .env("TERRAHOST_CACHE", cache().join("registry.json"))
        .env_remove("TERRAHOST_SCANNER")
        .env_remove("TERRAHOST_ENGINE")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("RUST_LOG");
    c
}

/// A reader that goes away (`terrahost list | head -c 10`) ends both binaries quietly
/// with status 0, as ripgrep does, instead of a "failed printing to stdout" panic
/// (status 101). Each command runs twice: with stdout already closed before it starts
/// (a socket whose other end is gone, so the first write fails, every time), and with a
/// pipe read for 10 bytes and then closed.
#[test]
fn a_closed_stdout_ends_both_binaries_quietly_with_status_0() {
    use std::io::Read;
    use std::os::fd::OwnedFd;
    use std::process::Stdio;
    let dir = real_plugins(&["timm"]);
    let commands: [&[&str]; 6] = [
        &["list"],
        &["list", "--json"],
        &["plugins"],
        &["show", "backbone", "timm_resnet18"],
        &["build", "backbone", "timm_resnet18"],
        &["--version"],
    ];
    for bin in ["terrahost", "terrahost-engine"] {
        for args in commands {
            let what = format!("{bin} {}", args.join(" "));
            let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
            drop(reader);
            let out = command(bin, dir.path(), args)
                .stdout(Stdio::from(OwnedFd::from(writer)))
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            assert_eq!(
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).as_ref()
                ),
                (Some(0), ""),
                "{what}, stdout closed before the start"
            );

            let mut child = command(bin, dir.path(), args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdout = child.stdout.take().unwrap();
            let mut first = [0u8; 10];
            stdout.read_exact(&mut first).unwrap();
            drop(stdout);
            let out = child.wait_with_output().unwrap();
            assert_eq!(
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).as_ref()
                ),
                (Some(0), ""),
                "{what}, stdout closed after 10 bytes"
            );
        }
    }
}

/// `plugins --strict` (a deployment check) fails with status 1 when any file is
/// refused, after printing the whole report, in both binaries alike; without refusals,
/// or without `--strict`, it succeeds.
#[test]
fn plugins_strict_fails_with_status_1_when_any_file_is_refused() {
    let clean = real_plugins(&["timm"]);
    let dirty =
        terrahost_testkit::plugin_dir(&["terrahost_plugin_timm", "terrahost_fixture_not_a_plugin"]);
    for bin in ["terrahost", "terrahost-engine"] {
        let out = command(bin, clean.path(), &["plugins", "--strict"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{bin}: {out:?}");

        let out = command(bin, dirty.path(), &["plugins"]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{bin} without --strict: {out:?}"
        );

        let out = command(bin, dirty.path(), &["plugins", "--strict"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bin}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.lines().any(|l| l.starts_with("timm ")) && stdout.contains("[not-a-plugin]"),
            "{bin}: the whole report is printed: {stdout}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.lines().last(),
            Some("error: 1 plugin file was refused (plugins --strict)"),
            "{bin}: {stderr}"
        );

        let out = command(bin, dirty.path(), &["plugins", "--strict", "--json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bin} --json: {out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON only");
        assert_eq!(v["rejected"][0]["kind"], "not-a-plugin");
    }
}

/// An `ObjectDetectionTask` config run as a user runs it: the Mask R-CNN of the
/// `mask_rcnn_prithvi` detection fixture, its weights as a checkpoint, two images in; `run`
/// writes each image's `boxes.{i}`, `scores.{i}`, `labels.{i}`, `masks.{i}`, which match
/// TerraTorch 1.2.13.
#[test]
fn run_writes_the_detections_of_each_image() {
    run_detection_fixture(
        "mask_rcnn_prithvi",
        &["bg", "a", "b"],
        &[
            "boxes.0", "boxes.1", "labels.0", "labels.1", "masks.0", "masks.1", "scores.0",
            "scores.1",
        ],
    );
}

/// The same for a single-stage framework: the FCOS of the `fcos_prithvi` fixture.
#[test]
fn run_writes_the_fcos_detections_of_each_image() {
    run_detection_fixture(
        "fcos_prithvi",
        &["a", "b", "c"],
        &[
            "boxes.0", "boxes.1", "labels.0", "labels.1", "scores.0", "scores.1",
        ],
    );
}

fn run_detection_fixture(case: &str, class_names: &[&str], outputs: &[&str]) {
    use terrahost_testkit::detection::{fixture, max_abs_diff, set_weights};
    let dir = real_plugins(&PLUGINS);
    let (meta, want) = fixture(case);
    let mut model_args = meta["args"].as_object().unwrap().clone();
    model_args.remove("task");
    let host = terrahost_testkit::host_with(terrahost_terratorch::plugin_sources().unwrap());
    let mut build_args = model_args.clone();
    build_args.insert("task".into(), serde_json::json!("object_detection"));
    let module = host
        .build(
            "model_factory",
            "ObjectDetectionModelFactory",
            &build_args,
            None,
        )
        .unwrap();
    set_weights(&module);
    let work = tempfile::tempdir().unwrap();
    let weights: Vec<(String, tch::Tensor)> = module.state_dict();
    let named: Vec<(&str, &tch::Tensor)> = weights.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let weights_path = work.path().join("w.safetensors");
    terrahost::weights::write_tensors(&weights_path, &named).unwrap();
    let input_path = work.path().join("in.safetensors");
    terrahost::weights::write_tensors(&input_path, &[("input", &want["input"])]).unwrap();
    let config = serde_json::json!({"model": {
        "class_path": "terratorch.tasks.ObjectDetectionTask",
        "init_args": {"model_factory": "ObjectDetectionModelFactory", "model_args": model_args,
                      "score_threshold": 0.5, "class_names": class_names}}});
    let config_path = work.path().join("od.yaml");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let output = work.path().join("out.safetensors");
    ok_json(
        dir.path(),
        &[
            "run",
            "--config",
            config_path.to_str().unwrap(),
            "--weights",
            weights_path.to_str().unwrap(),
            "--input",
            input_path.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
        ],
    );
    let got: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(&output)
            .unwrap()
            .into_iter()
            .collect();
    let mut names: Vec<&String> = got.keys().collect();
    names.sort();
    assert_eq!(names, outputs, "{case}: outputs");
    for (name, t) in &got {
        let w = &want[name];
        assert_eq!(t.size(), w.size(), "{name}");
        let tol = match name.split('.').next() {
            Some("labels") => 0.0,
            Some("boxes") => 1e-3,
            _ => 1e-4,
        };
        let d = max_abs_diff(t, w);
        assert!(d <= tol, "{case}: {name} differs by {d}");
    }
}

/// The same for `deformable-detr` (the `deformable_detr_prithvi` fixture of
/// `scripts/reference/detr_fixtures.py`): TerraTorch's state_dict keys as a checkpoint load
/// unchanged, and `run` writes each image's top 100 detections as TerraTorch 1.2.13 does.
#[test]
fn run_writes_the_detections_of_deformable_detr() {
    use terrahost_testkit::detection::max_abs_diff;
    let dir = real_plugins(&PLUGINS);
    let fixtures = terrahost_testkit::workspace_root().join("tests/fixtures/detr");
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("deformable_detr_prithvi.json")).unwrap(),
    )
    .unwrap();
    let want: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(fixtures.join("deformable_detr_prithvi.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let build_args = meta["args"].as_object().unwrap().clone();
    let mut model_args = build_args.clone();
    model_args.remove("task");
    let host = terrahost_testkit::host_with(terrahost_terratorch::plugin_sources().unwrap());
    let module = host
        .build(
            "model_factory",
            "ObjectDetectionModelFactory",
            &build_args,
            None,
        )
        .unwrap();
    // Synthetic backbone and necks, the fixture's stored head weights.
    let weights: Vec<(String, tch::Tensor)> = tch::no_grad(|| {
        module
            .state_dict()
            .into_iter()
            .map(|(k, t)| {
                let v = if k.starts_with("torchvision_model.backbone.") {
                    terrahost_testkit::synth(&k, &t.size(), t.kind())
                } else {
                    want[&format!("sd.{k}")].shallow_clone()
                };
                (k, v)
            })
            .collect()
    });
    let work = tempfile::tempdir().unwrap();
    let named: Vec<(&str, &tch::Tensor)> = weights.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let weights_path = work.path().join("w.safetensors");
    terrahost::weights::write_tensors(&weights_path, &named).unwrap();
    let input_path = work.path().join("in.safetensors");
    terrahost::weights::write_tensors(&input_path, &[("input", &want["input"])]).unwrap();
    let config = serde_json::json!({"model": {
        "class_path": "terratorch.tasks.ObjectDetectionTask",
        "init_args": {"model_factory": "ObjectDetectionModelFactory", "model_args": model_args}}});
    let config_path = work.path().join("od.yaml");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let output = work.path().join("out.safetensors");
    ok_json(
        dir.path(),
        &[
            "run",
            "--config",
            config_path.to_str().unwrap(),
            "--weights",
            weights_path.to_str().unwrap(),
            "--input",
            input_path.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
        ],
    );
    let got: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(&output)
            .unwrap()
            .into_iter()
            .collect();
    let mut names: Vec<&String> = got.keys().collect();
    names.sort();
    assert_eq!(
        names,
        ["boxes.0", "boxes.1", "labels.0", "labels.1", "scores.0", "scores.1"]
    );
    for (name, t) in &got {
        let w = &want[name];
        assert_eq!(t.size(), w.size(), "{name}");
        let tol = match name.split('.').next() {
            Some("labels") => 0.0,
            Some("boxes") => 1e-3,
            _ => 1e-4,
        };
        let d = max_abs_diff(t, w);
        assert!(d <= tol, "{name} differs by {d}");
    }
}
