//! Tests of the DOFA entries: parity with the reference fixtures of
//! `scripts/reference/cases/dofa_clay.py` (backbones and the corpus's two DOFA factory
//! configs), preset sizes, `model_bands`, argument handling and checkpoint loading.
//!
//! Parameter counts and key counts were printed from the reference Python
//! (`BACKBONE_REGISTRY.build("terratorch_dofa_*", model_bands=[...], img_size=32)`,
//! TerraTorch 1.2.11, torchgeo 0.7), not from this crate.
use crate::models::dofa_vit;
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};
use terrahost_plugin_api::sdk::DynModule;
use terrahost_testkit::{
    check_fixture, compare_outputs, host_with, keys_and_shapes, set_synthetic, Fixture,
};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("a JSON object").clone()
}

fn build(name: &str, args: Value) -> Result<DynModule, String> {
    let host = host_with(crate::plugin_sources().unwrap());
    host.build("backbone", name, &obj(args), None)
        .map_err(|e| e.to_string())
}

fn build_err(name: &str, args: Value) -> String {
    match build(name, args) {
        Ok(_) => panic!("{name}: expected the build to fail"),
        Err(e) => e,
    }
}

fn n_params(m: &DynModule) -> i64 {
    m.module()
        .named_parameters()
        .iter()
        .map(|nt| nt.tensor.with(|t| t.numel() as i64))
        .sum()
}

#[test]
fn dofa_parity_small_four_bands_three_outputs() {
    check_fixture(
        crate::plugin_sources().unwrap(),
        "terratorch_dofa_small_patch16_224",
    );
}

#[test]
fn dofa_parity_base_norm_no_head_out_of_order_indices() {
    check_fixture(
        crate::plugin_sources().unwrap(),
        "terratorch_dofa_base_patch16_224",
    );
}

#[test]
fn dofa_parity_large_sar_bands() {
    check_fixture(
        crate::plugin_sources().unwrap(),
        "terratorch_dofa_large_patch16_224",
    );
}

/// A whole-model fixture built through this plugin's EncoderDecoderFactory: the keys must
/// be the reference's, then the synthetic weights must give the reference output.
fn factory_parity(case: &str) {
    let fx = Fixture::load(case);
    let host = host_with(crate::plugin_sources().unwrap());
    let m = host
        .build("model_factory", "EncoderDecoderFactory", &fx.args(), None)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    // terrahost keeps no `num_batches_tracked` (a checkpoint's are tolerated on load)
    let mut expected: Vec<(String, Vec<i64>)> = fx
        .keys
        .iter()
        .filter(|(k, _, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, s, _)| (k.clone(), s.clone()))
        .collect();
    expected.sort();
    assert_eq!(keys_and_shapes(&m), expected, "{case}: state_dict keys");
    set_synthetic(&m);
    compare_outputs(&fx, &m);
}

#[test]
fn dofa_factory_parity_corpus_fcn_config() {
    factory_parity("factory_dofa_fcn");
}

#[test]
fn dofa_factory_parity_corpus_uper_config_padded_input() {
    factory_parity("factory_dofa_uper");
}

/// (name, parameters, state_dict entries) at img_size=32 with three bands, defaults
/// otherwise (45-class head, fc_norm).
const PRESETS: &[(&str, i64, usize, i64)] = &[
    ("dofa_small_patch16_224", 34_687_277, 172, 384),
    ("dofa_base_patch16_224", 111_199_277, 172, 768),
    ("dofa_large_patch16_224", 336_954_925, 316, 1024),
];

#[test]
fn dofa_presets_have_upstream_sizes_and_default_to_the_last_block() {
    for &(name, params, keys, dim) in PRESETS {
        let m = build(
            name,
            json!({"model_bands": ["RED", "GREEN", "BLUE"], "img_size": 32}),
        )
        .unwrap();
        assert_eq!(n_params(&m), params, "{name}: parameters");
        assert_eq!(m.state_dict().len(), keys, "{name}: state_dict entries");
        assert_eq!(m.out_channels(), vec![dim], "{name}: out_channels");
        let meta = m.meta();
        assert_eq!(meta["patch_size"], json!(16), "{name}");
        assert_eq!(meta["wavelengths"], json!([0.665, 0.56, 0.49]), "{name}");
    }
}

#[test]
fn dofa_model_bands_map_to_terratorch_wavelengths() {
    let w = dofa_vit::wavelengths(&[
        "COASTAL_AEROSOL".into(),
        "HLSBands.SWIR_2".into(),
        "VV-VH".into(),
        "THERMAL_INFRARED_12".into(),
    ])
    .unwrap();
    assert_eq!(w, vec![0.44, 2.20, 5.405, 12.0]);
    let e = dofa_vit::wavelengths(&["red".into()]).unwrap_err();
    assert!(
        e.message().contains("\"red\"") && e.message().contains("NIR_NARROW"),
        "{e}"
    );
    let e = build_err("dofa_small_patch16_224", json!({"img_size": 32}));
    assert!(e.contains("model_bands"), "{e}");
}

#[test]
fn dofa_one_model_takes_any_band_set_through_its_wavelengths() {
    // Same weights, two band lists: the generated kernels differ, and the 2-band model
    // refuses a 3-band image with a message naming its bands.
    let a = build(
        "dofa_small_patch16_224",
        json!({"model_bands": ["RED", "NIR_NARROW"], "img_size": 32}),
    )
    .unwrap();
    let b = build(
        "dofa_small_patch16_224",
        json!({"model_bands": ["SWIR_1", "NIR_NARROW"], "img_size": 32}),
    )
    .unwrap();
    set_synthetic(&a);
    set_synthetic(&b);
    let x = terrahost_testkit::sine_input(0, &[1, 2, 32, 32]);
    let ya = tch::no_grad(|| a.forward(&[x.shallow_clone()])).unwrap();
    let yb = tch::no_grad(|| b.forward(&[x])).unwrap();
    assert_eq!(ya[0].size(), vec![1, 5, 384]);
    let diff = (&ya[0] - &yb[0]).abs().max().double_value(&[]);
    assert!(diff > 1e-3, "band wavelengths had no effect ({diff})");
    let e = a
        .forward(&[Tensor::zeros(
            [1, 3, 32, 32],
            (Kind::Float, tch::Device::Cpu),
        )])
        .unwrap_err();
    assert!(
        e.message().contains("RED, NIR_NARROW") && e.message().contains("[B, 2, H, W]"),
        "{e}"
    );
}

#[test]
fn dofa_refuses_an_input_other_than_img_size_and_silent_out_indices() {
    let m = build(
        "dofa_base_patch16_224",
        json!({"model_bands": ["RED"], "img_size": 32}),
    )
    .unwrap();
    let e = m
        .forward(&[Tensor::zeros(
            [1, 1, 48, 48],
            (Kind::Float, tch::Device::Cpu),
        )])
        .unwrap_err();
    assert!(
        e.message().contains("img_size=32") && e.message().contains("9 patches"),
        "{e}"
    );
    for bad in [json!([-2]), json!([12]), json!([11, -1]), json!([3, 3])] {
        let e = build_err(
            "dofa_base_patch16_224",
            json!({"model_bands": ["RED"], "img_size": 32, "out_indices": bad}),
        );
        assert!(e.contains("out_indices"), "{bad}: {e}");
    }
}

#[test]
fn dofa_swallows_what_torchgeo_overrides_and_refuses_what_it_rejects() {
    // torchgeo's preset overwrites depth / embed_dim / num_heads / patch_size: accepted,
    // and the model keeps the preset's size.
    let m = build(
        "dofa_small_patch16_224",
        json!({"model_bands": ["RED"], "img_size": 32, "depth": 2, "embed_dim": 64,
               "num_heads": 2, "patch_size": 8, "dynamic_embed_dim": 64, "drop_rate": 0.5,
               "input_size": 512}),
    )
    .unwrap();
    assert_eq!(n_params(&m), 34_687_277);
    assert_eq!(m.out_channels(), vec![384]);
    // DOFA.__init__ raises on anything else (TypeError), and `input_size` is a parameter
    // of the small entry only.
    for (name, arg) in [
        ("dofa_small_patch16_224", "bands"),
        ("dofa_base_patch16_224", "input_size"),
        ("dofa_large_patch16_224", "in_chans"),
    ] {
        let mut args = json!({"model_bands": ["RED"], "img_size": 32});
        args[arg] = json!(3);
        let e = build_err(name, args);
        assert!(e.contains(&format!("`{arg}`")), "{name} {arg}: {e}");
    }
}

#[test]
fn dofa_pretrained_refuses_downloads_and_loads_a_local_checkpoint() {
    let e = build_err(
        "dofa_base_patch16_224",
        json!({"model_bands": ["RED"], "img_size": 32, "pretrained": true}),
    );
    assert!(e.contains("no downloads") && e.contains("ckpt_data"), "{e}");

    // A checkpoint of a 224 model with another head: the head is dropped, the position
    // embedding resized (bilinear) to img_size 32, everything else loaded.
    let src = build(
        "dofa_small_patch16_224",
        json!({"model_bands": ["RED"], "num_classes": 10}),
    )
    .unwrap();
    set_synthetic(&src);
    let sd: Vec<(String, Tensor)> = src
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k.strip_prefix("dofa_model.").unwrap().to_owned(), t))
        .collect();
    let dir = std::env::temp_dir().join(format!("dofa-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dofa.safetensors");
    Tensor::write_safetensors(&sd, &path).unwrap();
    let m = build(
        "dofa_small_patch16_224",
        json!({"model_bands": ["RED"], "img_size": 32, "pretrained": true,
               "ckpt_data": path.to_str().unwrap()}),
    )
    .unwrap();
    let get = |m: &DynModule, k: &str| {
        m.state_dict()
            .into_iter()
            .find(|(n, _)| n == k)
            .unwrap_or_else(|| panic!("no {k}"))
            .1
    };
    let key = "dofa_model.blocks.3.attn.qkv.weight";
    assert!(get(&m, key).equal(&get(&src, key)));
    assert_eq!(get(&m, "dofa_model.head.weight").size(), vec![45, 384]);
    let pos = get(&src, "dofa_model.pos_embed");
    let resized = dofa_vit::resize_pos_embed(&pos, (2, 2), 14, "bilinear").unwrap();
    assert!(get(&m, "dofa_model.pos_embed").allclose(&resized, 0.0, 0.0, false));
    // the class token's slot is kept, the grid is a resize of the 14x14 one
    assert!(resized.narrow(1, 0, 1).equal(&pos.narrow(1, 0, 1)));
    std::fs::remove_dir_all(&dir).ok();
}

/// The corpus's two DOFA configs at full size (examples/confs/dofa_sen1floods11_{fcn,uper}.yaml,
/// pretrained off): TerraTorch's model has these parameter and state_dict counts
/// (`num_batches_tracked` not counted).
#[test]
fn dofa_corpus_configs_at_full_size_have_terratorchs_sizes() {
    let bands = json!(["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]);
    let fcn = json!({"task": "segmentation", "decoder": "FCNDecoder", "backbone_pretrained": false,
        "backbone_img_size": 512, "backbone": "dofa_large_patch16_224", "decoder_channels": 256,
        "backbone_model_bands": bands, "num_classes": 2, "head_dropout": 0.1, "head_channel_list": [256],
        "necks": [{"name": "SelectIndices", "indices": [-1]}, {"name": "ReshapeTokensToImage"}]});
    let uper = json!({"task": "segmentation", "decoder": "UperNetDecoder", "backbone_pretrained": false,
        "backbone": "dofa_large_patch16_224", "decoder_channels": 256, "backbone_model_bands": bands,
        "backbone_out_indices": [5, 11, 17, 23], "num_classes": 2, "head_dropout": 0.1,
        "head_channel_list": [256], "necks": [{"name": "ReshapeTokensToImage"}]});
    let host = host_with(crate::plugin_sources().unwrap());
    for (what, args, params, keys) in [
        ("fcn", fcn, 342_788_399, 344),
        ("uper", uper, 348_430_639, 380),
    ] {
        let m = host
            .build("model_factory", "EncoderDecoderFactory", &obj(args), None)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(n_params(&m), params, "{what}: parameters");
        assert_eq!(m.state_dict().len(), keys, "{what}: state_dict entries");
    }
}
