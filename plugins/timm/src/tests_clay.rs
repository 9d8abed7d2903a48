//! Tests of `clay_v1_base`: parity with the reference fixtures of
//! `scripts/reference/cases/dofa_clay.py` (the backbone with its default bands, with
//! waves / gsd / time / latlon given, with VPT, and the corpus's Clay factory config),
//! its size, `prepare_features_for_image_model`, argument handling and checkpoints.
//!
//! Counts were printed from the reference Python
//! (`BACKBONE_REGISTRY.build("timm_clay_v1_base", img_size=32)`, TerraTorch 1.2.11).
use crate::test_support::{build, get, n_params, parity, write_checkpoint};
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};
use terrahost_plugin_api::sdk::DynModule;
use terrahost_testkit::{set_synthetic, sine_input};

fn build_err(args: Value) -> String {
    match build("clay_v1_base", args) {
        Ok(_) => panic!("expected the build to fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn clay_parity_default_bands_all_layers() {
    parity("timm_clay_v1_base");
}

#[test]
fn clay_parity_waves_gsd_time_latlon_inputs() {
    parity("timm_clay_v1_base_waves_gsd");
}

#[test]
fn clay_parity_visual_prompt_tuning() {
    parity("timm_clay_v1_base_vpt");
}

#[test]
fn clay_has_upstream_size_keys_and_prepares_the_last_feature() {
    let m = build("clay_v1_base", json!({"img_size": 32})).unwrap();
    assert_eq!(n_params(&m), 92_102_144);
    assert_eq!(m.state_dict().len(), 145);
    assert_eq!(m.out_channels(), vec![768; 12]);
    assert_eq!(
        get(
            &m,
            "clay_encoder.patch_embedding.weight_generator.fc_weight.weight"
        )
        .size(),
        vec![8 * 8 * 768, 128]
    );
    assert_eq!(m.meta()["patch_size"], json!(8));
    set_synthetic(&m);
    let x = sine_input(0, &[2, 6, 32, 32]);
    let feats = tch::no_grad(|| m.forward(&[x])).unwrap();
    assert_eq!(feats.len(), 12);
    assert_eq!(feats[3].size(), vec![2, 17, 768]);
    let img = m
        .prepare_features(&feats)
        .unwrap()
        .expect("Clay prepares features");
    assert_eq!(img.len(), 1);
    assert_eq!(img[0].size(), vec![2, 768, 4, 4]);
    // token (row 1, column 2) of the last feature is pixel [1, 2] of the map
    assert!(img[0]
        .select(2, 1)
        .select(2, 2)
        .equal(&feats[11].select(1, 1 + 4 + 2)));
}

#[test]
fn clay_waves_and_gsd_come_as_inputs_or_keywords_and_change_the_output() {
    let m = build(
        "clay_v1_base",
        json!({"img_size": 16, "bands": [0, 1], "out_indices": [-1]}),
    )
    .unwrap();
    set_synthetic(&m);
    let x = sine_input(0, &[1, 2, 16, 16]);
    let empty = Tensor::zeros([0], (Kind::Float, Device::Cpu));
    let waves = Tensor::from_slice(&[0.665f32, 0.842]);
    let run_in = |xs: &[Tensor]| tch::no_grad(|| m.forward(xs)).unwrap().remove(0);
    let by_input = run_in(&[
        x.shallow_clone(),
        empty.shallow_clone(),
        empty.shallow_clone(),
        waves,
        Tensor::from_slice(&[5.0f32]),
    ]);
    let mut kw = Map::new();
    kw.insert("waves".into(), json!([0.665, 0.842]));
    kw.insert("gsd".into(), json!(5.0));
    let by_kw = tch::no_grad(|| m.forward_kw(&[x.shallow_clone()], &kw))
        .unwrap()
        .remove(0);
    terrahost_testkit::assert_close("waves/gsd as keywords", &by_kw, &by_input, 1e-6);
    // integer bands have no wavelength: 0.0 each, another model than with real waves
    let default = run_in(&[x.shallow_clone()]);
    let diff = (&default - &by_input).abs().max().double_value(&[]);
    assert!(diff > 1e-3, "waves and gsd had no effect ({diff})");
    let e = m
        .forward(&[sine_input(0, &[1, 3, 16, 16])])
        .expect_err("3 channels for 2 bands");
    assert!(
        e.message().contains("3 channels") && e.message().contains("2 wavelengths"),
        "{e}"
    );
    let e = m
        .forward(&[sine_input(0, &[1, 2, 24, 24])])
        .expect_err("wrong size");
    assert!(e.message().contains("img_size=16"), "{e}");
    let mut bad = Map::new();
    bad.insert("time".into(), json!([1, 2]));
    let e = m.forward_kw(&[x], &bad).expect_err("unknown keyword");
    assert!(e.message().contains("`time`"), "{e}");
}

#[test]
fn clay_swallows_unknown_keywords_and_refuses_what_upstream_cannot_build() {
    // The Embedder takes **kwargs: anything else is accepted (with a warning) and ignored.
    let m = build(
        "clay_v1_base",
        json!({"img_size": 16, "in_chans": 5, "num_classes": 3, "model_bands": ["a"], "foo": 1}),
    )
    .unwrap();
    assert_eq!(n_params(&m), 92_102_144);
    // features_only=false: TerraTorch's wrapper fails on the Embedder's plain feature_info
    let e = build_err(json!({"features_only": false}));
    assert!(e.contains("features_only"), "{e}");
    // out of range: IndexError upstream
    let e = build_err(json!({"out_indices": [12]}));
    assert!(e.contains("out_indices") && e.contains("12 layers"), "{e}");
    let e = build_err(json!({"vpt": true}));
    assert!(e.contains("vpt_n_tokens"), "{e}");
    // repeats and negative indices are fine, as upstream's list indexing
    let m = build(
        "clay_v1_base",
        json!({"img_size": 8, "out_indices": [-1, 3, 3]}),
    )
    .unwrap();
    assert_eq!(m.out_channels(), vec![768; 3]);
}

#[test]
fn clay_pretrained_loads_a_clay_checkpoint_and_ckpt_path_copies_matching_parameters() {
    let e = build_err(json!({"pretrained": true, "img_size": 8}));
    assert!(e.contains("download"), "{e}");

    let src = build("clay_v1_base", json!({"img_size": 8})).unwrap();
    set_synthetic(&src);
    // a Clay training checkpoint: model.encoder.* (the encoder), model.decoder.* (dropped)
    let mut named: Vec<(String, Tensor)> = src
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k.replacen("clay_encoder.", "model.encoder.", 1), t))
        .collect();
    named.push((
        "model.decoder.extra".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    let path = write_checkpoint(&named, "clay-ckpt", "clay.safetensors");
    let key = "clay_encoder.transformer.layers.4.0.to_qkv.weight";
    let overlay = json!({"file": path.to_str().unwrap()});
    let m = build(
        "clay_v1_base",
        json!({"img_size": 8, "pretrained": true, "pretrained_cfg_overlay": overlay}),
    )
    .unwrap();
    assert!(get(&m, key).equal(&get(&src, key)));

    let m: DynModule = build(
        "clay_v1_base",
        json!({"img_size": 8, "ckpt_path": path.to_str().unwrap()}),
    )
    .unwrap();
    assert!(get(&m, key).equal(&get(&src, key)));
    let e = build_err(json!({"img_size": 8, "ckpt_path": "x.pt", "pretrained": true}));
    assert!(e.contains("ckpt_path"), "{e}");

    // strict: a checkpoint without part of the encoder is refused
    named.retain(|(k, _)| !k.contains("layers.11"));
    let path = write_checkpoint(&named, "clay-ckpt-partial", "clay.safetensors");
    let e = build_err(
        json!({"img_size": 8, "pretrained": true, "pretrained_cfg_overlay": {"file": path.to_str().unwrap()}}),
    );
    assert!(e.contains("missing keys") && e.contains("layers.11"), "{e}");
}
