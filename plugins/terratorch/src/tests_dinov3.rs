//! Tests of the DINOv3 ViT entries (`models/dinov3.rs`): parity with the fixtures of
//! `scripts/reference/dinov3_fixtures.py` (TerraTorch's real `DinoV3Wrapper` over the
//! facebookresearch/dinov3 network, presets reduced in width and depth), the presets
//! against the hub's arguments and full-size parameter counts as the reference printed
//! them, a Meta-layout checkpoint loaded unchanged, argument handling and the memory
//! refusal.
use crate::models::dinov3::{
    self, check_memory, Config, DinoV3Backbone, DinoVisionTransformer, Ffn, PREFIX,
};
use crate::models::dinov3_convnext;
use serde_json::{json, Map, Value};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};
use terrahost_layers::rope::NormalizeCoords;
use terrahost_plugin_api::sdk::{Built, DynModule};
use terrahost_testkit::{assert_close, compare_outputs, host_with, load_varstore, synth, Fixture};

/// Every fixture the script writes: one per registered name, plus vits16 without the
/// class token.
const CASES: [&str; 8] = [
    "terratorch_dinov3_vits16",
    "terratorch_dinov3_vits16_no_cls",
    "terratorch_dinov3_vits16plus",
    "terratorch_dinov3_vitb16",
    "terratorch_dinov3_vitl16plus",
    "terratorch_dinov3_vitl16",
    "terratorch_dinov3_vith16plus",
    "terratorch_dinov3_vit7b16",
];

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("a JSON object").clone()
}

/// The preset of the fixture's entry with the fixture's reduced width and depth.
fn reduced_config(fx: &Fixture) -> Config {
    let bare = fx.name().strip_prefix("terratorch_").unwrap();
    let r = &fx.meta["reduced"];
    Config {
        embed_dim: r["embed_dim"].as_i64().unwrap(),
        num_heads: r["num_heads"].as_i64().unwrap(),
        depth: r["depth"].as_i64().unwrap(),
        ..Config::preset(bare).unwrap()
    }
}

/// The fixture's reduced model, built by this crate, with the same keys as the reference.
fn build_reduced(fx: &Fixture) -> (nn::VarStore, DinoVisionTransformer) {
    let vs = nn::VarStore::new(Device::Cpu);
    let vit = DinoVisionTransformer::new(vs.root() / PREFIX, &reduced_config(fx)).unwrap();
    let mut ours: Vec<(String, Vec<i64>)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.size()))
        .collect();
    let mut theirs: Vec<(String, Vec<i64>)> = fx
        .keys
        .iter()
        .map(|(k, s, _)| (k.clone(), s.clone()))
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "{}: state_dict keys and shapes", fx.case);
    (vs, vit)
}

fn kept_buffer(key: &str) -> bool {
    key.ends_with("rope_embed.periods") || key.ends_with("bias_mask")
}

fn into_module(fx: &Fixture, vs: nn::VarStore, vit: DinoVisionTransformer) -> DynModule {
    let cls = fx.meta["args"]["return_cls_token"].as_bool().unwrap();
    let model = DinoV3Backbone {
        vit,
        return_cls_token: cls,
    };
    DynModule::new(fx.name(), Built::new(fx.name(), vs, model).boxed())
}

/// The fixture's reduced model with the reference's weights (synthetic, the buffers the
/// model computes itself checked against the reference's).
fn loaded_reduced(fx: &Fixture) -> (nn::VarStore, DinoVisionTransformer) {
    let case = &fx.case;
    let (mut vs, vit) = build_reduced(fx);
    let io = Tensor::read_safetensors(fx.dir.join("io.safetensors")).unwrap();
    let vars = vs.variables();
    let mut weights = Vec::new();
    for (k, shape, _) in &fx.keys {
        if kept_buffer(k) {
            // The buffers this crate computes must be the reference's.
            let reference = io
                .iter()
                .find(|(n, _)| n == &format!("buffer.{k}"))
                .unwrap_or_else(|| panic!("{case}: io.safetensors lacks buffer.{k}"));
            assert_close(&format!("{case} {k}"), &vars[k], &reference.1, 1e-5);
            weights.push((k.clone(), vars[k].copy()));
        } else {
            weights.push((k.clone(), synth(k, shape, Kind::Float)));
        }
    }
    load_varstore(&mut vs, &weights);
    (vs, vit)
}

/// Builds the reduced model with the reference's weights and compares every block's
/// output and the channel list.
fn parity(case: &str) {
    let fx = Fixture::load(case);
    let (vs, vit) = loaded_reduced(&fx);
    let m = into_module(&fx, vs, vit);
    let expected: Vec<i64> = fx.meta["out_channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(m.out_channels(), expected, "{case}: out_channels");
    compare_outputs(&fx, &m);
}

#[test]
fn dinov3_parity_vits16_mlp_with_cls_token() {
    parity("terratorch_dinov3_vits16");
}

#[test]
fn dinov3_parity_vits16_without_cls_token() {
    parity("terratorch_dinov3_vits16_no_cls");
}

#[test]
fn dinov3_parity_vits16plus_swiglu() {
    parity("terratorch_dinov3_vits16plus");
}

#[test]
fn dinov3_parity_vitb16_three_blocks_without_cls_token() {
    parity("terratorch_dinov3_vitb16");
}

#[test]
fn dinov3_parity_vitl16plus_swiglu() {
    parity("terratorch_dinov3_vitl16plus");
}

#[test]
fn dinov3_parity_vitl16() {
    parity("terratorch_dinov3_vitl16");
}

#[test]
fn dinov3_parity_vith16plus_swiglu_three_blocks() {
    parity("terratorch_dinov3_vith16plus");
}

#[test]
fn dinov3_parity_vit7b16_swiglu64_no_qkv_bias_untied_norm() {
    parity("terratorch_dinov3_vit7b16");
}

/// The presets equal the arguments the hub passed to `DinoVisionTransformer` (recorded by
/// the fixture script), and their parameter counts the full-size reference models'.
#[test]
fn dinov3_presets_are_the_hub_arguments_and_sizes() {
    let mut names = Vec::new();
    for case in CASES {
        let fx = Fixture::load(case);
        let bare = fx.name().strip_prefix("terratorch_").unwrap();
        names.push(bare.to_owned());
        let c = Config::preset(bare).unwrap();
        let h = &fx.meta["hub_preset"];
        let int = |k: &str| h[k].as_i64().unwrap_or_else(|| panic!("{case}: {k}"));
        let num = |k: &str| h[k].as_f64();
        let flag = |k: &str| h[k].as_bool().unwrap_or(false);
        assert_eq!(c.patch_size, int("patch_size"), "{case}");
        assert_eq!(c.in_chans, int("in_chans"), "{case}");
        assert_eq!(c.embed_dim, int("embed_dim"), "{case}");
        assert_eq!(c.depth, int("depth"), "{case}");
        assert_eq!(c.num_heads, int("num_heads"), "{case}");
        assert_eq!(Some(c.ffn_ratio), num("ffn_ratio"), "{case}");
        assert_eq!(c.qkv_bias, flag("qkv_bias"), "{case}");
        assert_eq!(c.proj_bias, flag("proj_bias"), "{case}");
        assert_eq!(c.ffn_bias, flag("ffn_bias"), "{case}");
        assert_eq!(c.layerscale_init, num("layerscale_init"), "{case}");
        assert_eq!(num("drop_path_rate"), Some(0.0), "{case}");
        let eps = match h["norm_layer"].as_str().unwrap() {
            "layernormbf16" => 1e-5,
            "layernorm" => 1e-6,
            other => panic!("{case}: norm_layer {other}"),
        };
        assert_eq!(c.norm_eps, eps, "{case}");
        assert_eq!(
            c.ffn,
            Ffn::parse(h["ffn_layer"].as_str().unwrap()).unwrap(),
            "{case}"
        );
        assert_eq!(c.n_storage_tokens, int("n_storage_tokens"), "{case}");
        assert_eq!(c.mask_k_bias, flag("mask_k_bias"), "{case}");
        assert_eq!(
            c.untie_global_and_local_cls_norm,
            flag("untie_global_and_local_cls_norm"),
            "{case}"
        );
        assert!(!flag("untie_cls_and_patch_norms"), "{case}");
        assert_eq!(c.rope.base, num("pos_embed_rope_base"), "{case}");
        assert_eq!(
            c.rope.min_period,
            num("pos_embed_rope_min_period"),
            "{case}"
        );
        assert_eq!(
            c.rope.max_period,
            num("pos_embed_rope_max_period"),
            "{case}"
        );
        assert_eq!(
            c.rope.shift_coords,
            num("pos_embed_rope_shift_coords"),
            "{case}"
        );
        assert_eq!(
            c.rope.jitter_coords,
            num("pos_embed_rope_jitter_coords"),
            "{case}"
        );
        assert_eq!(
            c.rope.rescale_coords,
            num("pos_embed_rope_rescale_coords"),
            "{case}"
        );
        assert_eq!(
            c.rope.normalize_coords,
            NormalizeCoords::parse(h["pos_embed_rope_normalize_coords"].as_str().unwrap()).unwrap(),
            "{case}"
        );
        assert_eq!(h["pos_embed_rope_dtype"], "fp32", "{case}");
        assert_eq!(
            c.n_params(),
            fx.meta["full_size"]["n_params"].as_i64().unwrap(),
            "{case}: full-size parameters"
        );
        if bare == "dinov3_vitl16" {
            let sat = Config {
                untie_global_and_local_cls_norm: true,
                ..c
            };
            assert_eq!(
                sat.n_params(),
                fx.meta["full_size_sat493m"]["n_params"].as_i64().unwrap(),
                "{case}: SAT-493M parameters"
            );
        }
    }
    names.dedup();
    assert_eq!(
        names,
        dinov3::NAMES,
        "one fixture per registered name, in order"
    );
}

/// The Meta-layout `checkpoint.pth` (torch.save of the network's own state_dict, which
/// the reference wrapper loads through `ckpt_path`) loads unchanged and reproduces the
/// outputs.
#[test]
fn dinov3_meta_checkpoint_loads_unchanged() {
    let fx = Fixture::load("terratorch_dinov3_vits16");
    let file = fx.dir.join(fx.meta["checkpoint"].as_str().unwrap());
    let (vs, vit) = build_reduced(&fx);
    let pairs = terrahost_layers::checkpoint::read_state_dict(&file).unwrap();
    assert!(pairs
        .iter()
        .any(|(k, _)| k == "blocks.0.attn.qkv.bias_mask"));
    assert!(pairs.iter().any(|(k, _)| k == "rope_embed.periods"));
    assert!(pairs.iter().all(|(k, _)| !k.starts_with("dinov3.")));
    dinov3::load_strict(&vs, pairs, PREFIX, "checkpoint.pth").unwrap();
    compare_outputs(&fx, &into_module(&fx, vs, vit));
}

/// A checkpoint that does not fit is refused with what is wrong, as a strict load.
#[test]
fn dinov3_strict_load_names_what_does_not_fit() {
    let fx = Fixture::load("terratorch_dinov3_vits16");
    let (vs, _vit) = build_reduced(&fx);
    let mut pairs =
        terrahost_layers::checkpoint::read_state_dict(&fx.dir.join("checkpoint.pth")).unwrap();
    pairs.retain(|(k, _)| k != "storage_tokens");
    pairs.push((
        "head.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    pairs.iter_mut().for_each(|(k, t)| {
        if k == "cls_token" {
            *t = Tensor::zeros([1, 1, 7], (Kind::Float, Device::Cpu));
        }
    });
    let e = dinov3::load_strict(&vs, pairs, PREFIX, "x.pth").unwrap_err();
    let m = e.message();
    assert!(
        m.contains("missing keys: storage_tokens")
            && m.contains("unexpected keys: head.weight")
            && m.contains("cls_token (checkpoint [1, 1, 7], model [1, 1, 32])"),
        "{m}"
    );
    assert!(!m.contains('\n'), "{m}");
}

fn build(name: &str, args: Value) -> Result<DynModule, String> {
    let host = host_with(crate::plugin_sources().unwrap());
    host.build("backbone", name, &obj(args), None)
        .map_err(|e| e.to_string())
}

/// The full-size `dinov3_vits16` entry: one output per block with the wrapper's layout,
/// TerraTorch's out_channels and patch size; its own state_dict, saved in Meta's layout
/// (without `dinov3.`), loads back through `ckpt_path` and gives the same outputs.
#[test]
fn dinov3_vits16_entry_outputs_and_ckpt_path_round_trip() {
    tch::manual_seed(0);
    let m = build("terratorch_dinov3_vits16", json!({})).unwrap();
    assert_eq!(m.out_channels(), vec![384; 12]);
    assert_eq!(m.meta()["patch_size"], json!(16));
    let n: i64 = m
        .module()
        .named_parameters()
        .iter()
        .map(|nt| nt.tensor.with(|t| t.numel() as i64))
        .sum();
    assert_eq!(n, 21_601_152, "parameters (the reference's count)");
    let x = Tensor::randn([1, 3, 32, 48], (Kind::Float, Device::Cpu));
    let ys = tch::no_grad(|| m.forward(&[x.shallow_clone()])).unwrap();
    assert_eq!(ys.len(), 12);
    assert!(ys.iter().all(|y| y.size() == vec![1, 2 * 3 + 1, 384]));

    let dir = tempfile_dir();
    let file = dir.join("dinov3_vits16_pretrain_test.safetensors");
    let sd: Vec<(String, Tensor)> = m
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k.strip_prefix("dinov3.").unwrap().to_owned(), t))
        .collect();
    Tensor::write_safetensors(&sd, &file).unwrap();
    let path = file.to_str().unwrap();
    let again = build(
        "terratorch_dinov3_vits16",
        json!({"ckpt_path": path, "return_cls_token": false}),
    )
    .unwrap();
    let zs = tch::no_grad(|| again.forward(&[x.shallow_clone()])).unwrap();
    for (y, z) in ys.iter().zip(&zs) {
        // without the class token: the same patch tokens, the last token dropped
        assert_close("ckpt_path round trip", z, &y.narrow(1, 0, 6), 1e-6);
    }
    // a checkpoint of another size is refused, naming the keys
    let small = Fixture::load("terratorch_dinov3_vits16");
    let e = build_err(
        "terratorch_dinov3_vits16",
        json!({"ckpt_path": small.dir.join("checkpoint.pth").to_str().unwrap()}),
    );
    assert!(e.contains("wrong shapes") && e.contains("cls_token"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The error of a build that must fail.
fn build_err(name: &str, args: Value) -> String {
    match build(name, args) {
        Ok(_) => panic!("{name}: expected the build to fail"),
        Err(e) => e,
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("terrahost-dinov3-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Keywords DinoV3Wrapper swallows are refused by name (`pretrained` excepted: factory
/// configs pass it); a missing checkpoint and a wrong input are clear errors.
#[test]
fn dinov3_arguments_and_inputs_are_checked() {
    for arg in ["in_chans", "bands", "depth", "img_size"] {
        let e = build_err("terratorch_dinov3_vits16", json!({ arg: 4 }));
        assert!(e.contains(arg), "{arg}: {e}");
    }
    let e = build_err(
        "terratorch_dinov3_vitb16",
        json!({"ckpt_path": "/nonexistent/dinov3.pth"}),
    );
    assert!(e.contains("/nonexistent/dinov3.pth"), "{e}");
    let m = build("terratorch_dinov3_vits16", json!({"pretrained": true})).unwrap();
    let x = Tensor::zeros([1, 4, 32, 32], (Kind::Float, Device::Cpu));
    let e = tch::no_grad(|| m.forward(&[x])).unwrap_err().to_string();
    assert!(
        e.contains("[B, 3, H, W]") && e.contains("[1, 4, 32, 32]"),
        "{e}"
    );
}

/// In train mode the RoPE coordinates are rescaled at random (the hub presets'
/// `rescale_coords=2`), so two passes differ; in eval mode they do not.
#[test]
fn dinov3_train_mode_rescales_rope_coordinates() {
    let fx = Fixture::load("terratorch_dinov3_vits16");
    let (_vs, vit) = loaded_reduced(&fx);
    let x = &fx.inputs[0];
    let run = |train| tch::no_grad(|| vit.wrapper_outputs(x, true, train)).unwrap();
    let (a, b) = (run(false), run(false));
    assert!(a[1].equal(&b[1]));
    tch::manual_seed(3);
    let (c, d) = (run(true), run(true));
    assert!(!c[1].allclose(&d[1], 1e-6, 1e-6, false));
    assert!(!c[1].allclose(&a[1], 1e-6, 1e-6, false));
}

/// The 7B model needs about 26.9 GB of float32 parameters: refused in one line on a
/// 24 GiB machine, built where memory suffices.
#[test]
fn dinov3_vit7b16_memory_estimate_refuses_when_it_cannot_fit() {
    let n = Config::preset("dinov3_vit7b16").unwrap().n_params();
    assert_eq!(n, 6_716_043_264);
    let gib = 1u64 << 30;
    let e = check_memory("terratorch_dinov3_vit7b16", n, 0, Some(24 * gib)).unwrap_err();
    let m = e.message();
    assert!(
        m.contains("26.9 GB") && m.contains("6716043264") && m.contains("25.8 GB"),
        "{m}"
    );
    assert!(!m.contains('\n'));
    // fits alone in 26 GiB, not with a 2 GiB checkpoint read next to it
    assert!(check_memory("x", n, 0, Some(26 * gib)).is_ok());
    let e = check_memory("x", n, 2 * gib, Some(26 * gib)).unwrap_err();
    assert!(e.message().contains("checkpoint"), "{}", e.message());
    assert!(check_memory("x", n, 0, Some(64 * gib)).is_ok());
    assert!(check_memory("x", n, 0, None).is_ok());
    // Through the entry, on a machine where the estimate does not fit.
    if dinov3::available_memory().is_some_and(|a| a < n as u64 * 4) {
        let e = build_err("terratorch_dinov3_vit7b16", json!({}));
        assert!(e.contains("needs about 26.9 GB"), "{e}");
    }
}

/// `dinov3_vitl16` has a `local_cls_norm` for the SAT-493M checkpoint only: upstream
/// reads the hash in the file name; without one the keys decide.
#[test]
fn dinov3_vitl16_sat_checkpoint_is_recognised() {
    let none: Vec<String> = Vec::new();
    let with = vec!["local_cls_norm.weight".to_owned()];
    let f = |n: &str, k: &[String]| dinov3::vitl16_unties_cls_norm(Path::new(n), k);
    assert!(f("/w/dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth", &none));
    assert!(!f("/w/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth", &with));
    assert!(f("/w/finetuned.safetensors", &with));
    assert!(!f("/w/finetuned.safetensors", &none));
}

// ---------------------------------------------------------------------------------------
// ConvNeXt (`models/dinov3_convnext.rs`)
// ---------------------------------------------------------------------------------------

/// The ConvNeXt fixtures, one per registered name.
const CONVNEXT_CASES: [&str; 4] = [
    "terratorch_dinov3_convnext_base",
    "terratorch_dinov3_convnext_large",
    "terratorch_dinov3_convnext_small",
    "terratorch_dinov3_convnext_tiny",
];

fn int4(v: &Value) -> [i64; 4] {
    let a: Vec<i64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    a.try_into().unwrap()
}

/// Builds the fixture's reduced ConvNeXt, checks its keys, loads the reference's weights
/// (synthetic; keys that share one tensor upstream hold the value of the last of them)
/// and compares every stage's output.
fn convnext_parity(case: &str) {
    use crate::models::dinov3_convnext::{ConvNeXt, DinoV3ConvNeXtBackbone};
    let fx = Fixture::load(case);
    let bare = fx.name().strip_prefix("terratorch_").unwrap();
    let cfg = dinov3_convnext::Config {
        depths: int4(&fx.meta["reduced"]["depths"]),
        dims: int4(&fx.meta["reduced"]["dims"]),
        ..dinov3_convnext::Config::preset(bare).unwrap()
    };
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = ConvNeXt::new(vs.root() / PREFIX, &cfg).unwrap();
    let mut ours: Vec<(String, Vec<i64>)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.size()))
        .collect();
    let mut theirs: Vec<(String, Vec<i64>)> = fx
        .keys
        .iter()
        .map(|(k, s, _)| (k.clone(), s.clone()))
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "{case}: state_dict keys and shapes");
    let aliases: Vec<Vec<String>> = serde_json::from_value(fx.meta["aliases"].clone()).unwrap();
    assert_eq!(
        aliases,
        vec![
            vec![
                "dinov3.norm.weight".to_owned(),
                "dinov3.norms.3.weight".to_owned()
            ],
            vec![
                "dinov3.norm.bias".to_owned(),
                "dinov3.norms.3.bias".to_owned()
            ]
        ],
        "{case}"
    );
    let source = |k: &str| {
        aliases
            .iter()
            .find(|g| g.iter().any(|a| a == k))
            .map_or(k.to_owned(), |g| g.last().unwrap().clone())
    };
    let weights: Vec<(String, Tensor)> = fx
        .keys
        .iter()
        .map(|(k, s, _)| (k.clone(), synth(&source(k), s, Kind::Float)))
        .collect();
    load_varstore(&mut vs, &weights);
    let cls = fx.meta["args"]["return_cls_token"].as_bool().unwrap();
    let model = DinoV3ConvNeXtBackbone {
        net,
        return_cls_token: cls,
    };
    let m = DynModule::new(fx.name(), Built::new(fx.name(), vs, model).boxed());
    let expected = int4(&fx.meta["out_channels"]);
    assert_eq!(m.out_channels(), expected.to_vec(), "{case}: out_channels");
    compare_outputs(&fx, &m);
}

#[test]
fn dinov3_convnext_parity_base() {
    convnext_parity("terratorch_dinov3_convnext_base");
}

#[test]
fn dinov3_convnext_parity_large_without_cls_token() {
    convnext_parity("terratorch_dinov3_convnext_large");
}

#[test]
fn dinov3_convnext_parity_small() {
    convnext_parity("terratorch_dinov3_convnext_small");
}

#[test]
fn dinov3_convnext_parity_tiny() {
    convnext_parity("terratorch_dinov3_convnext_tiny");
}

/// The presets equal the hub's arguments, and their parameter counts the full-size
/// reference models'.
#[test]
fn dinov3_convnext_presets_are_the_hub_arguments_and_sizes() {
    let mut names = Vec::new();
    for case in CONVNEXT_CASES {
        let fx = Fixture::load(case);
        let bare = fx.name().strip_prefix("terratorch_").unwrap();
        names.push(bare.to_owned());
        let c = dinov3_convnext::Config::preset(bare).unwrap();
        let h = &fx.meta["hub_preset"];
        assert_eq!(c.depths, int4(&h["depths"]), "{case}");
        assert_eq!(c.dims, int4(&h["dims"]), "{case}");
        assert_eq!(c.in_chans, h["in_chans"].as_i64().unwrap(), "{case}");
        assert_eq!(
            Some(c.layer_scale_init_value),
            h["layer_scale_init_value"].as_f64(),
            "{case}"
        );
        assert_eq!(h["drop_path_rate"].as_f64(), Some(0.0), "{case}");
        assert_eq!(
            c.n_params(),
            fx.meta["full_size"]["n_params"].as_i64().unwrap(),
            "{case}: full-size parameters"
        );
    }
    assert_eq!(
        names,
        dinov3_convnext::NAMES,
        "one fixture per registered name, in order"
    );
}

/// The full-size `dinov3_convnext_tiny` entry: four stage outputs with the pooled token
/// last, the stage widths as out_channels, no patch size; `norm` and `norms.3` are one
/// tensor.
#[test]
fn dinov3_convnext_tiny_entry_outputs_and_shared_final_norm() {
    let m = build("terratorch_dinov3_convnext_tiny", json!({})).unwrap();
    assert_eq!(m.out_channels(), vec![96, 192, 384, 768]);
    assert!(m.meta().get("patch_size").is_none());
    let x = Tensor::randn([1, 3, 64, 32], (Kind::Float, Device::Cpu));
    let ys = tch::no_grad(|| m.forward(&[x])).unwrap();
    let shapes: Vec<Vec<i64>> = ys.iter().map(Tensor::size).collect();
    assert_eq!(
        shapes,
        vec![
            vec![1, 16 * 8 + 1, 96],
            vec![1, 8 * 4 + 1, 192],
            vec![1, 4 * 2 + 1, 384],
            vec![1, 2 + 1, 768]
        ]
    );
    let sd: std::collections::HashMap<String, Tensor> = m.state_dict().into_iter().collect();
    assert_eq!(sd.len(), 182, "state_dict entries (the reference's count)");
    tch::no_grad(|| {
        let _ = sd["dinov3.norm.weight"].shallow_clone().fill_(2.5);
    });
    assert_eq!(sd["dinov3.norms.3.weight"].double_value(&[0]), 2.5);
    let e = build_err(
        "terratorch_dinov3_convnext_base",
        json!({"depths": [1, 1, 1, 1]}),
    );
    assert!(e.contains("depths"), "{e}");
}
