//! LoRA fine-tunes across plugin libraries: TerraTorch's EncoderDecoderFactory
//! (terratorch plugin) wraps a timm ViT (timm plugin, loaded from its own library) in
//! PEFT's model. The checkpoint saved by TerraTorch + PEFT
//! (`scripts/reference/lora_fixtures.py`, `tests/fixtures/lora/lora_timm_vit_replace_qkv`)
//! loads unchanged and, merged, reproduces PEFT's output; unmerged adapters cannot reach
//! linear layers in another library, and the first forward says so.
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use tch::Tensor;
use terrahost::weights::{load_state_dict, read_state_dict};
use terrahost::Host;
use terrahost_testkit::{assert_close, real_plugins, workspace_root};

const CASE: &str = "lora_timm_vit_replace_qkv";

fn dir() -> PathBuf {
    workspace_root().join("tests/fixtures/lora").join(CASE)
}

fn args(merge: bool) -> Map<String, Value> {
    let text = std::fs::read_to_string(dir().join("config.json")).expect("config.json");
    let v: Value = serde_json::from_str(&text).expect("json");
    let mut args = v["model_args"].as_object().expect("model_args").clone();
    args["peft_config"]["merge"] = json!(merge);
    args
}

fn io() -> (Tensor, Tensor) {
    let io = Tensor::read_safetensors(dir().join("io.safetensors")).expect("io");
    let get = |n: &str| {
        io.iter()
            .find(|(k, _)| k == n)
            .map(|(_, t)| t.shallow_clone())
            .expect("tensor")
    };
    (get("input"), get("output"))
}

fn run(merge: bool) -> terrahost_plugin_api::Result<Tensor> {
    let plugins = real_plugins(&["terratorch", "timm"]);
    let host = Host::load(&[plugins.path().to_path_buf()]);
    assert!(host.rejected().is_empty(), "{:?}", host.rejected());
    let model = host
        .build("model_factory", "EncoderDecoderFactory", &args(merge), None)
        .expect("build");
    let state = read_state_dict(&dir().join("weights.safetensors")).expect("weights");
    load_state_dict(&model, state).expect("PEFT's checkpoint loads unchanged");
    let (x, _) = io();
    let ys = tch::no_grad(|| model.forward(&[x]))?;
    Ok(ys[0].shallow_clone())
}

#[test]
fn a_timm_vit_lora_checkpoint_merged_reproduces_peft() {
    let (_, want) = io();
    let got = run(true).expect("forward");
    assert_close(CASE, &got, &want, 1e-4);
}

#[test]
fn unmerged_adapters_on_another_librarys_vit_are_refused_naming_the_layer() {
    let e = run(false).expect_err("the timm library's linears never see the adapters");
    assert!(
        e.message().contains("model.blocks.0.attn.qkv.q_linear") && e.message().contains("merge"),
        "{e}"
    );
}
