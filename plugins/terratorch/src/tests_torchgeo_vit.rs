//! Tests of the torchgeo SSL4EO ViT-S/16 backbones (`models/torchgeo_vit.rs`): parity with
//! the reference fixtures of `scripts/reference/cases/torchgeo_vit.py` (one per registered
//! name), the full-size counts, argument errors and checkpoint loading with band selection.

use serde_json::{json, Map, Value};
use tch::Tensor;
use terrahost_testkit::{check_fixture, host_with, Fixture};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("a JSON object").clone()
}

fn parity(case: &str) {
    check_fixture(crate::plugin_sources().unwrap(), case);
}

macro_rules! parity_tests {
    ($($test:ident => $case:literal,)*) => {
        $(
            #[test]
            fn $test() {
                parity($case);
            }
        )*
    };
}

parity_tests! {
    parity_vit_landsat_tm_toa_moco => "terratorch_ssl4eol_vit_small_patch16_224_landsat_tm_toa_moco",
    parity_vit_landsat_tm_toa_simclr => "terratorch_ssl4eol_vit_small_patch16_224_landsat_tm_toa_simclr",
    parity_vit_landsat_etm_toa_moco => "terratorch_ssl4eol_vit_small_patch16_224_landsat_etm_toa_moco",
    parity_vit_landsat_etm_toa_simclr => "terratorch_ssl4eol_vit_small_patch16_224_landsat_etm_toa_simclr",
    parity_vit_landsat_etm_sr_moco => "terratorch_ssl4eol_vit_small_patch16_224_landsat_etm_sr_moco",
    parity_vit_landsat_etm_sr_simclr => "terratorch_ssl4eol_vit_small_patch16_224_landsat_etm_sr_simclr",
    parity_vit_landsat_oli_tirs_toa_simclr => "terratorch_ssl4eol_vit_small_patch16_224_landsat_oli_tirs_toa_simclr",
    parity_vit_landsat_oli_sr_moco => "terratorch_ssl4eol_vit_small_patch16_224_landsat_oli_sr_moco",
    parity_vit_landsat_oli_sr_simclr => "terratorch_ssl4eol_vit_small_patch16_224_landsat_oli_sr_simclr",
    parity_vit_sentinel2_all_dino => "terratorch_ssl4eos12_vit_small_patch16_224_sentinel2_all_dino",
    parity_vit_sentinel2_all_moco => "terratorch_ssl4eos12_vit_small_patch16_224_sentinel2_all_moco",
}

fn build(
    name: &str,
    args: Value,
) -> terrahost_plugin_api::Result<terrahost_plugin_api::sdk::DynModule> {
    let host = host_with(crate::plugin_sources().unwrap());
    host.build("backbone", name, &obj(args), None)
}

fn build_err(name: &str, args: Value) -> String {
    match build(name, args) {
        Ok(_) => panic!("{name}: expected an error"),
        Err(e) => e.to_string(),
    }
}

const TM_MOCO: &str = "ssl4eol_vit_small_patch16_224_landsat_tm_toa_moco";

/// The unshrunk ViT-S/16 has TerraTorch's parameter and state_dict counts and out_channels.
#[test]
fn vit_small_default_size_equals_terratorch() {
    let fx = Fixture::load(&format!("terratorch_{TM_MOCO}"));
    let m = build(TM_MOCO, json!({"model_bands": ["RED", "GREEN", "BLUE"]})).unwrap();
    assert_eq!(
        m.state_dict().len() as i64,
        fx.meta["default_n_state_dict_entries"].as_i64().unwrap()
    );
    let params: i64 = m
        .module()
        .named_parameters()
        .iter()
        .map(|nt| nt.tensor.with(|t| t.numel() as i64))
        .sum();
    assert_eq!(params, fx.meta["default_n_params"].as_i64().unwrap());
    let want: Vec<i64> = serde_json::from_value(fx.meta["default_out_channels"].clone()).unwrap();
    assert_eq!(m.out_channels(), want);
}

#[test]
fn argument_and_input_errors_name_the_cause() {
    let e = build_err(TM_MOCO, json!({}));
    assert!(e.contains("model_bands"), "{e}");
    // timm keywords terrahost does not implement are refused, never dropped
    let e = build_err(
        TM_MOCO,
        json!({"model_bands": ["RED"], "dynamic_img_size": true}),
    );
    assert!(e.contains("dynamic_img_size"), "{e}");
    let e = build_err(
        TM_MOCO,
        json!({"model_bands": ["RED"], "embed_dim": 30, "num_heads": 4}),
    );
    assert!(e.contains("num_heads"), "{e}");
    let e = build_err(TM_MOCO, json!({"model_bands": ["RED"], "pretrained": true}));
    assert!(e.contains("ckpt_data") && e.contains("download"), "{e}");
    // the ETM/OLI surface-reflectance bands (SR_B1, ...) have no name in TerraTorch's table
    let e = build_err(
        "ssl4eol_vit_small_patch16_224_landsat_oli_sr_moco",
        json!({"model_bands": ["RED"], "pretrained": true, "ckpt_data": "/nonexistent.pt"}),
    );
    assert!(e.contains("SR_B1") && e.contains("KeyError"), "{e}");
    let e = build_err(
        "ssl4eol_vit_small_patch16_224_landsat_etm_toa_moco",
        json!({"model_bands": ["RED"], "pretrained": true, "ckpt_data": "/nonexistent.pt"}),
    );
    assert!(e.contains("B6_VCID_1"), "{e}");
    // timm's PatchEmbed asserts the input size
    let m = build(
        TM_MOCO,
        json!({"model_bands": ["RED", "GREEN"], "img_size": 32, "embed_dim": 8, "depth": 1, "num_heads": 2}),
    )
    .unwrap();
    let x = Tensor::zeros([1, 2, 48, 32], (tch::Kind::Float, tch::Device::Cpu));
    let e = tch::no_grad(|| m.forward(&[x])).expect_err("a 48x32 input on img_size 32");
    assert!(e.to_string().contains("img_size"), "{e}");
}

/// `pretrained=true` with a local checkpoint of the bare timm ViT: the patch embedding takes
/// the checkpoint's columns for the bands found among the weights' bands (by TerraTorch's
/// names), a fresh draw for the others; a classifier of another shape is dropped; every
/// other key is loaded.
#[test]
fn checkpoint_loading_selects_patch_embedding_bands() {
    let dir = std::env::temp_dir().join(format!("terrahost-tgvit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let small = json!({"img_size": 32, "embed_dim": 16, "depth": 2, "num_heads": 2});
    let mut src_args = obj(small.clone());
    // the 13 Sentinel-2 bands of SENTINEL2_ALL_DINO, with a 5-class head
    src_args.insert("model_bands".into(), json!(vec!["x"; 13]));
    src_args.insert("num_classes".into(), json!(5));
    let name = "ssl4eos12_vit_small_patch16_224_sentinel2_all_dino";
    let src = build(name, Value::Object(src_args)).unwrap();
    terrahost_testkit::set_synthetic(&src);
    let sd: Vec<(String, Tensor)> = src
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k.trim_start_matches("vit_model.").to_owned(), t))
        .collect();
    let file = dir.join("vit.safetensors");
    Tensor::write_safetensors(&sd, &file).unwrap();
    let mut args = obj(small);
    args.insert("model_bands".into(), json!(["RED", "NIR_NARROW", "VV"]));
    args.insert("pretrained".into(), json!(true));
    args.insert("ckpt_data".into(), json!(file.to_str().unwrap()));
    let m = build(name, Value::Object(args)).unwrap();
    let got: std::collections::HashMap<String, Tensor> = m.state_dict().into_iter().collect();
    let want: std::collections::HashMap<String, Tensor> = sd.into_iter().collect();
    let w = &got["vit_model.patch_embed.proj.weight"];
    let c = &want["patch_embed.proj.weight"];
    assert_eq!(w.size(), [16, 3, 16, 16]);
    assert!(w.select(1, 0).equal(&c.select(1, 3)), "RED is B4, band 3");
    assert!(
        w.select(1, 1).equal(&c.select(1, 8)),
        "NIR_NARROW is B8a, band 8"
    );
    assert!(
        !w.select(1, 2).equal(&c.select(1, 0)),
        "VV is not a band of these weights"
    );
    assert_eq!(
        got["vit_model.head.weight"].size(),
        [1000, 16],
        "the 5-class head is dropped"
    );
    assert!(got["vit_model.blocks.1.attn.qkv.weight"].equal(&want["blocks.1.attn.qkv.weight"]));
    assert!(got["vit_model.pos_embed"].equal(&want["pos_embed"]));
    assert!(got["vit_model.cls_token"].equal(&want["cls_token"]));
    let _ = std::fs::remove_dir_all(&dir);
}
