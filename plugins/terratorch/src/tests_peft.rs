//! LoRA fine-tunes (`peft_config`): checkpoints saved by TerraTorch + PEFT
//! (`scripts/reference/lora_fixtures.py`, `tests/fixtures/lora/`) load unchanged through
//! the host's strict loader and reproduce PEFT's output, merged and unmerged; and the
//! refusals.

use serde_json::{json, Map, Value};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};
use terrahost::weights::{load_state_dict, read_state_dict};
use terrahost_plugin_api::sdk::DynModule;
use terrahost_testkit::{assert_close, host_with, keys_and_shapes, workspace_root};

fn dir(case: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/lora").join(case)
}

/// The factory and model_args of a case, with `peft_config.merge` set to `merge`.
fn config(case: &str, merge: Option<bool>) -> (String, Map<String, Value>) {
    let text = std::fs::read_to_string(dir(case).join("config.json")).unwrap_or_else(|e| {
        panic!("{case}: {e}; regenerate with `.venv-ref/bin/python scripts/reference/lora_fixtures.py`")
    });
    let v: Value = serde_json::from_str(&text).expect("config.json");
    let factory = v["model_factory"]
        .as_str()
        .expect("model_factory")
        .to_owned();
    let mut args = v["model_args"].as_object().expect("model_args").clone();
    if let Some(m) = merge {
        args["peft_config"]["merge"] = json!(m);
    }
    (factory, args)
}

fn build(factory: &str, args: &Map<String, Value>) -> terrahost_plugin_api::Result<DynModule> {
    host_with(crate::plugin_sources().unwrap())
        .build("model_factory", factory, args, None)
        .map_err(|e| terrahost_plugin_api::PluginError::build_failed(e.to_string()))
}

fn io(case: &str) -> (Tensor, Tensor) {
    let io = Tensor::read_safetensors(dir(case).join("io.safetensors")).expect("io.safetensors");
    let get = |n: &str| {
        io.iter()
            .find(|(k, _)| k == n)
            .map(|(_, t)| t.shallow_clone())
            .unwrap_or_else(|| panic!("{case}: no `{n}`"))
    };
    (get("input"), get("output"))
}

/// Builds the case, checks its keys and shapes against the checkpoint's, loads the
/// checkpoint with the host's loader and returns the model.
fn loaded(case: &str, merge: Option<bool>) -> DynModule {
    let (factory, args) = config(case, merge);
    let model = build(&factory, &args).unwrap_or_else(|e| panic!("{case}: {e}"));
    let state = read_state_dict(&dir(case).join("weights.safetensors")).expect("weights");
    let mut want: Vec<(String, Vec<i64>)> =
        state.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    want.sort();
    assert_eq!(
        keys_and_shapes(&model),
        want,
        "{case}: PEFT's keys and shapes"
    );
    load_state_dict(&model, state).unwrap_or_else(|e| panic!("{case}: {e}"));
    model
}

fn check(case: &str, merge: Option<bool>) {
    let model = loaded(case, merge);
    let (x, want) = io(case);
    let got = tch::no_grad(|| model.forward(&[x])).expect("forward");
    assert_close(&format!("{case} (merge {merge:?})"), &got[0], &want, 1e-4);
}

#[test]
fn replace_qkv_merged_reproduces_peft() {
    check("lora_prithvi_replace_qkv", None);
}

#[test]
fn replace_qkv_unmerged_reproduces_peft() {
    check("lora_prithvi_replace_qkv", Some(false));
}

#[test]
fn fused_qkv_rslora_merged_reproduces_peft() {
    check("lora_prithvi_fused_qkv", Some(true));
}

#[test]
fn fused_qkv_rslora_unmerged_reproduces_peft() {
    check("lora_prithvi_fused_qkv", Some(false));
}

/// The adapters matter: the same checkpoint with lora_B zeroed gives another output,
/// which is what the plain backbone with the base weights gives.
#[test]
fn the_adapters_change_the_output() {
    let case = "lora_prithvi_replace_qkv";
    let (factory, args) = config(case, None);
    let model = build(&factory, &args).unwrap();
    let state: Vec<(String, Tensor)> = read_state_dict(&dir(case).join("weights.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let t = if k.contains("lora_B") {
                t.zeros_like()
            } else {
                t
            };
            (k, t)
        })
        .collect();
    load_state_dict(&model, state).unwrap();
    let (x, want) = io(case);
    let got = tch::no_grad(|| model.forward(&[x])).unwrap();
    let diff = (&got[0] - &want).abs().max().double_value(&[]);
    assert!(
        diff > 1e-3,
        "zeroed adapters should change the output, diff {diff}"
    );
}

/// A second load after a forward (which merged the first) merges again from the new
/// base weights instead of adding the adapters twice.
#[test]
fn a_reload_merges_again_once() {
    let case = "lora_prithvi_fused_qkv";
    let model = loaded(case, None);
    let (x, want) = io(case);
    tch::no_grad(|| model.forward(&[x.shallow_clone()])).unwrap();
    let state = read_state_dict(&dir(case).join("weights.safetensors")).unwrap();
    load_state_dict(&model, state).unwrap();
    let got = tch::no_grad(|| model.forward(&[x.shallow_clone()])).unwrap();
    assert_close("after a reload", &got[0], &want, 1e-4);
    let again = tch::no_grad(|| model.forward(&[x])).unwrap();
    assert_close("second forward", &again[0], &want, 1e-4);
}

/// Changing only the LoRA matrices after the merge cannot be folded in: refused.
#[test]
fn adapters_changed_after_a_merge_are_refused() {
    let case = "lora_prithvi_fused_qkv";
    let model = loaded(case, None);
    let (x, _) = io(case);
    tch::no_grad(|| model.forward(&[x.shallow_clone()])).unwrap();
    let sd = model.state_dict();
    let (_, b) = sd
        .iter()
        .find(|(k, _)| k.ends_with("lora_B.default.weight"))
        .unwrap();
    tch::no_grad(|| {
        let _ = b.shallow_clone().fill_(0.5);
    });
    let e = tch::no_grad(|| model.forward(&[x])).unwrap_err();
    assert!(
        e.message().contains("changed after they were merged"),
        "{e}"
    );
}

/// Moving the merged model keeps it merged once (device moves replace the storage).
#[test]
fn a_device_move_keeps_the_merge() {
    let case = "lora_prithvi_replace_qkv";
    let mut model = loaded(case, None);
    let (x, want) = io(case);
    tch::no_grad(|| model.forward(&[x.shallow_clone()])).unwrap();
    model.to_device(Device::Cpu).unwrap();
    let got = tch::no_grad(|| model.forward(&[x])).unwrap();
    assert_close("after to_device", &got[0], &want, 1e-4);
}

fn refusal(peft_config: Value) -> String {
    let (factory, mut args) = config("lora_prithvi_replace_qkv", None);
    args.insert("peft_config".into(), peft_config);
    match build(&factory, &args) {
        Ok(_) => panic!("built with {:?}", args["peft_config"]),
        Err(e) => e.message().to_owned(),
    }
}

#[test]
fn other_methods_are_refused_by_name() {
    let e = refusal(json!({"method": "IA3", "peft_config_kwargs": {"target_modules": ["qkv"]}}));
    assert!(e.contains("`IA3`") && e.contains("LORA"), "{e}");
    assert_eq!(e.lines().count(), 1, "one line: {e}");
}

#[test]
fn unsupported_kwargs_are_refused_by_name() {
    let e = refusal(
        json!({"method": "LORA", "peft_config_kwargs": {"target_modules": ["qkv"], "init_lora_weights": false}}),
    );
    assert!(e.contains("`init_lora_weights`"), "{e}");
    let e = refusal(
        json!({"method": "LORA", "peft_config_kwargs": {"target_modules": ["qkv"], "bias": "some"}}),
    );
    assert!(e.contains("bias"), "{e}");
}

#[test]
fn targets_that_are_not_linear_or_absent_are_refused() {
    let e = refusal(
        json!({"method": "LORA", "peft_config_kwargs": {"target_modules": ["patch_embed.proj"]}}),
    );
    assert!(
        e.contains("`patch_embed.proj`") && e.contains("not a linear layer"),
        "{e}"
    );
    // With replace_qkv, `qkv` is QKVSep, no longer a linear layer (PEFT refuses it too).
    let e = refusal(
        json!({"method": "LORA", "replace_qkv": "qkv", "peft_config_kwargs": {"target_modules": ["qkv"]}}),
    );
    assert!(e.contains("`blocks.0.attn.qkv`"), "{e}");
    let e =
        refusal(json!({"method": "LORA", "peft_config_kwargs": {"target_modules": ["q_linear"]}}));
    assert!(e.contains("not found in the base model"), "{e}");
    let e = refusal(json!({"method": "LORA", "peft_config_kwargs": {}}));
    assert!(e.contains("target_modules"), "{e}");
    let e = refusal(
        json!({"method": "LORA", "replace_qkv": "mlp", "peft_config_kwargs": {"target_modules": ["fc1"]}}),
    );
    assert!(e.contains("only a qkv nn.Linear"), "{e}");
}

/// `all-linear` adapts every linear layer: the key set says which.
#[test]
fn all_linear_adapts_every_linear_layer() {
    let (factory, mut args) = config("lora_prithvi_fused_qkv", None);
    args["peft_config"] = json!({"method": "LORA", "replace_qkv": "qkv", "peft_config_kwargs": {"target_modules": "all-linear", "r": 2}});
    let model = build(&factory, &args).unwrap();
    let adapted: Vec<String> = keys_and_shapes(&model)
        .into_iter()
        .filter_map(|(k, _)| k.strip_suffix(".lora_A.default.weight").map(str::to_owned))
        .collect();
    let per_block = [
        "attn.proj",
        "attn.qkv.k_linear",
        "attn.qkv.q_linear",
        "attn.qkv.v_linear",
        "mlp.fc1",
        "mlp.fc2",
    ];
    let want: Vec<String> = (0..2)
        .flat_map(|b| {
            per_block
                .iter()
                .map(move |m| format!("encoder.base_model.model.blocks.{b}.{m}"))
        })
        .collect();
    assert_eq!(adapted, want);
}

/// FullModelFactory wraps the whole model: its keys start with `base_model.model.`.
#[test]
fn full_model_factory_wraps_the_whole_model() {
    let args: Map<String, Value> = json!({
        "model": "prithvi_eo_v2_300_mae",
        "embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1,
        "decoder_num_heads": 2, "img_size": 16, "patch_size": [1, 4, 4], "in_chans": 6,
        "peft_config": {"method": "LORA", "peft_config_kwargs": {"target_modules": ["qkv"], "r": 2}},
    })
    .as_object()
    .unwrap()
    .clone();
    let model = build("FullModelFactory", &args).unwrap_or_else(|e| panic!("{e}"));
    let keys = keys_and_shapes(&model);
    assert!(
        keys.iter().all(|(k, _)| k.starts_with("base_model.model.")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|(k, s)| k
            == "base_model.model.encoder.blocks.0.attn.qkv.lora_B.default.weight"
            && s == &vec![96, 2]),
        "{keys:?}"
    );
    let x = Tensor::randn([1, 6, 1, 16, 16], (Kind::Float, Device::Cpu));
    assert!(tch::no_grad(|| model.forward(&[x])).is_ok());
}
