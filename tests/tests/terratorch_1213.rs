//! TerraTorch 1.2.13 as the reference (issue 16): the re-published Sen1Floods11 300M-TL
//! layout (LearnedInterpolateToPyramidal neck) loads from TerraTorch's Lightning
//! checkpoint through `terrahost run` and gives the float64 reference's numbers, and a
//! 1.2.11 config with `decoder_scale_modules` still runs, with a warning that 1.2.12 and
//! later refuse it, giving the same numbers from the same weights.
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use tch::{Kind, Tensor};
use terrahost_testkit::{assert_close, build_dir, real_plugins, Fixture};

const CASE: &str = "factory_sen1floods11_tl_lip";

fn run(dir: &Path, cache: &Path, args: &[&str]) -> Output {
    Command::new(build_dir().join("terrahost"))
        .arg("--plugin-dir")
        .arg(dir)
        .args(args)
        .env("TERRAHOST_CACHE", cache.join("registry.json"))
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("RUST_LOG")
        .output()
        .expect("run terrahost")
}

/// `terrahost run --json` of `config` with `weights` on the fixture's inputs: the report,
/// the `output` tensor and stderr.
fn run_model(dir: &Path, fx: &Fixture, config: &Path, weights: &Path) -> (Value, Tensor, String) {
    let work = tempfile::tempdir().unwrap();
    let output = work.path().join("out.safetensors");
    let input = fx.dir.join("io.safetensors");
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
    let out = run(dir, work.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "terrahost {args:?} failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let got = Tensor::read_safetensors(&output)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "output")
        .expect("an `output` tensor")
        .1;
    (v, got, stderr)
}

/// The fixture's float64 reference output.
fn f64_output(fx: &Fixture) -> Tensor {
    Tensor::read_safetensors(fx.dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "f64.output.0")
        .expect("f64.output.0 in io.safetensors")
        .1
}

#[test]
fn the_republished_sen1floods11_checkpoint_loads_and_gives_terratorchs_numbers() {
    let fx = Fixture::load(CASE);
    assert_eq!(fx.meta["versions"]["terratorch"], "1.2.13");
    let dir = real_plugins(&["terratorch"]);
    let (v, got, stderr) = run_model(
        dir.path(),
        &fx,
        &fx.dir.join("lightning.yaml"),
        &fx.dir.join("checkpoint.ckpt"),
    );
    let n_keys = fx
        .keys
        .iter()
        .filter(|(k, _, _)| !k.ends_with("num_batches_tracked"))
        .count() as u64;
    assert!(v["weights_loaded"].as_u64().unwrap() >= n_keys, "{v}");
    assert!(
        !stderr.contains("1.2.12"),
        "no scale_modules warning: {stderr}"
    );
    assert_close("against float64", &got, &f64_output(&fx), fx.atol());
    assert_close("against float32", &got, &fx.outputs[0], fx.atol());
}

/// The same network in TerraTorch 1.2.11's layout (`decoder_scale_modules: true`, no
/// LearnedInterpolateToPyramidal neck) with the checkpoint's neck layers moved under
/// `decoder.`: it runs, warns that TerraTorch 1.2.12 and later refuse the config, and gives
/// the re-published layout's numbers.
#[test]
fn decoder_scale_modules_runs_the_1_2_11_model_with_a_warning() {
    let fx = Fixture::load(CASE);
    let dir = real_plugins(&["terratorch"]);
    let work = tempfile::tempdir().unwrap();
    // the 1.2.11 config: the same arguments, the last neck folded into the decoder
    let text = std::fs::read_to_string(fx.dir.join("lightning.yaml")).unwrap();
    let mut cfg: Value = terrahost::yaml::parse(&text).unwrap();
    let args = &mut cfg["model"]["init_args"]["model_args"];
    let necks = args["necks"].as_array_mut().unwrap();
    assert_eq!(
        necks.pop().unwrap()["name"],
        "LearnedInterpolateToPyramidal"
    );
    let lip_index = necks.len();
    args["decoder_scale_modules"] = Value::Bool(true);
    let config = work.path().join("sen1floods11_1_2_11.json");
    // JSON is YAML: the config reader takes it as it is.
    std::fs::write(&config, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let neck_prefix = format!("model.neck.{lip_index}.");
    let renamed: Vec<(String, Tensor)> =
        terrahost::weights::read_state_dict(&fx.dir.join("checkpoint.ckpt"))
            .unwrap()
            .into_iter()
            .map(|(k, t)| match k.strip_prefix(&neck_prefix) {
                Some(rest) => (format!("model.decoder.{rest}"), t),
                None => (k, t),
            })
            .collect();
    assert!(
        renamed
            .iter()
            .any(|(k, _)| k.starts_with("model.decoder.fpn1.")),
        "the checkpoint's neck keys are not under {neck_prefix}"
    );
    let weights = work.path().join("old_layout.safetensors");
    let named: Vec<(&str, &Tensor)> = renamed.iter().map(|(k, t)| (k.as_str(), t)).collect();
    terrahost::weights::write_tensors(&weights, &named).unwrap();
    let (_, got, stderr) = run_model(dir.path(), &fx, &config, &weights);
    assert!(
        stderr.contains("scale_modules") && stderr.contains("1.2.12"),
        "a warning naming the argument and the release: {stderr}"
    );
    assert_close("1.2.11 layout", &got, &f64_output(&fx), fx.atol());
    assert_eq!(got.kind(), Kind::Float);
}
