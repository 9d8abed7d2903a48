//! Entries of one plugin that build parts of another through the host, checked with both
//! plugins' code linked into the process: the `timm` plugin's old `prithvi_vit_*` names
//! (built as the `terratorch` plugin's Prithvi encoder) and Clay inside TerraTorch's
//! EncoderDecoderFactory. They live here, not in the `timm` crate, so that no plugin crate
//! depends on another.
use serde_json::json;
use terrahost_plugin_api::sdk::DynModule;
use terrahost_plugin_api::SourceEntry;
use terrahost_testkit::{
    check_fixture_with, compare_outputs, host_with_plugins, keys_and_shapes, set_synthetic, Fixture,
};

/// The number of parameters (not buffers) of `m`.
fn n_params(m: &DynModule) -> i64 {
    m.module()
        .named_parameters()
        .iter()
        .map(|nt| nt.tensor.with(|t| t.numel() as i64))
        .sum()
}

/// The `timm` then the `terratorch` plugin's sources.
fn timm_and_terratorch() -> Vec<Vec<SourceEntry>> {
    vec![
        terrahost_timm::plugin_sources().unwrap(),
        terrahost_terratorch::plugin_sources().unwrap(),
    ]
}

/// The `terratorch` then the `timm` plugin's sources.
fn terratorch_and_timm() -> Vec<Vec<SourceEntry>> {
    vec![
        terrahost_terratorch::plugin_sources().unwrap(),
        terrahost_timm::plugin_sources().unwrap(),
    ]
}

#[test]
fn timm_prithvi_vit_tiny_parity() {
    check_fixture_with(timm_and_terratorch(), "timm_prithvi_vit_tiny");
}

#[test]
fn timm_prithvi_vit_100_parity() {
    check_fixture_with(timm_and_terratorch(), "timm_prithvi_vit_100");
}

#[test]
fn timm_prithvi_vit_300_parity() {
    check_fixture_with(timm_and_terratorch(), "timm_prithvi_vit_300");
}

/// Sizes of the equivalent TerraTorch builders (counted in Python); the LayerNorm eps
/// does not change them.
#[test]
fn timm_prithvi_vit_sizes_and_errors() {
    let host = host_with_plugins(timm_and_terratorch());
    for (name, params) in [
        ("timm_prithvi_vit_tiny", 3_553_280i64),
        ("timm_prithvi_vit_100", 86_237_184),
    ] {
        let m = host
            .build("backbone", name, &serde_json::Map::new(), None)
            .unwrap();
        assert_eq!(n_params(&m), params, "{name}");
        assert_eq!(m.meta()["patch_size"], json!([1, 16, 16]));
    }
    let args = json!({"features_only": false}).as_object().unwrap().clone();
    let e = host
        .build("backbone", "timm_prithvi_vit_tiny", &args, None)
        .err()
        .expect("features_only=false fails");
    assert!(e.to_string().contains("features_only"), "{e}");
}

/// The corpus's Clay config (test_encoderdecoder_clay_v1_base_model_factory.yaml, small):
/// the terratorch plugin's EncoderDecoderFactory with the timm plugin's backbone.
#[test]
fn clay_factory_parity_corpus_unet_config() {
    let fx = Fixture::load("factory_clay_unet");
    let host = host_with_plugins(terratorch_and_timm());
    let m = host
        .build("model_factory", "EncoderDecoderFactory", &fx.args(), None)
        .unwrap_or_else(|e| panic!("{e}"));
    // terrahost keeps no `num_batches_tracked` (a checkpoint's are tolerated on load)
    let mut expected: Vec<(String, Vec<i64>)> = fx
        .keys
        .iter()
        .filter(|(k, _, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, s, _)| (k.clone(), s.clone()))
        .collect();
    expected.sort();
    assert_eq!(keys_and_shapes(&m), expected, "state_dict keys");
    set_synthetic(&m);
    compare_outputs(&fx, &m);
}

/// The corpus's Clay config at full size
/// (integrationtests/configs/test_encoderdecoder_clay_v1_base_model_factory.yaml, pretrained
/// off): TerraTorch's model has these parameter and state_dict counts
/// (`num_batches_tracked` not counted).
#[test]
fn clay_corpus_config_at_full_size_has_terratorchs_sizes() {
    let args = json!({"task": "segmentation", "backbone": "clay_v1_base", "backbone_pretrained": false,
        "num_classes": 3, "backbone_img_size": 512, "backbone_bands": [0, 1, 2, 3, 4, 5],
        "necks": [{"name": "SelectIndices", "indices": [2, 5, 8, 11]}, {"name": "ReshapeTokensToImage"},
                  {"name": "LearnedInterpolateToPyramidal"}],
        "decoder": "UNetDecoder", "decoder_channels": [512, 256, 128, 64], "head_channel_list": [256],
        "head_dropout": 0.1});
    let host = host_with_plugins(terratorch_and_timm());
    let m = host
        .build(
            "model_factory",
            "EncoderDecoderFactory",
            args.as_object().unwrap(),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n_params(&m), 107_775_939);
    assert_eq!(m.state_dict().len(), 199);
}

/// A `ClayModelFactory` fixture (`scripts/reference/cases/clay_factories.py`): the terratorch
/// plugin's factory with the timm plugin's Clay; TerraTorch's keys, then its output from the
/// synthetic weights.
fn clay_model_factory_parity(case: &str) {
    let fx = Fixture::load(case);
    assert_eq!(fx.meta["name"], "ClayModelFactory", "{case}");
    let host = host_with_plugins(terratorch_and_timm());
    let m = host
        .build("model_factory", "ClayModelFactory", &fx.args(), None)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
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
fn clay_model_factory_parity_segmentation_fcn_padded_input() {
    clay_model_factory_parity("factory_clay_mf_segmentation");
}

#[test]
fn clay_model_factory_parity_regression_identity_decoder_out_indices() {
    clay_model_factory_parity("factory_clay_mf_regression");
}

#[test]
fn clay_model_factory_parity_classification() {
    clay_model_factory_parity("factory_clay_mf_classification");
}

#[test]
fn clay_model_factory_parity_scalar_regression() {
    clay_model_factory_parity("factory_clay_mf_scalar_regression");
}

/// Upstream passes no neck, so a decoder that needs every layer's map (UperNetDecoder, built
/// for the 12 feature channels) gets only the last one and fails in the forward; terrahost
/// fails there too instead of building something else.
#[test]
fn clay_model_factory_upernet_fails_in_forward_as_upstream() {
    let args = json!({"task": "segmentation", "backbone": "clay_v1_base", "decoder": "UperNetDecoder",
        "in_channels": 3, "bands": ["blue", "green", "red"], "pretrained": false, "num_classes": 2,
        "backbone_img_size": 16, "decoder_channels": 8});
    let host = host_with_plugins(terratorch_and_timm());
    let m = host
        .build(
            "model_factory",
            "ClayModelFactory",
            args.as_object().unwrap(),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let x = tch::Tensor::zeros([1, 3, 16, 16], (tch::Kind::Float, tch::Device::Cpu));
    assert!(
        m.forward(&[x]).is_err(),
        "UperNetDecoder on one map must fail"
    );
}

/// `bands` defaults to `[]` upstream, which gives Clay's dynamic embedding no wavelengths: the
/// forward fails there ("weight of size [768, 0, 8, 8]"); terrahost's Clay refuses it earlier,
/// at build, naming `bands`, rather than guessing bands.
#[test]
fn clay_model_factory_default_bands_are_refused_as_upstream_fails() {
    let args = json!({"task": "segmentation", "backbone": "clay_v1_base", "decoder": "FCNDecoder",
        "in_channels": 3, "pretrained": false, "num_classes": 2, "backbone_img_size": 16});
    let host = host_with_plugins(terratorch_and_timm());
    let e = host
        .build(
            "model_factory",
            "ClayModelFactory",
            args.as_object().unwrap(),
            None,
        )
        .err()
        .expect("no bands: no wavelengths for 3 channels");
    assert!(e.to_string().contains("`bands` must name"), "{e}");
}

/// TerraTorch's ObjectDetectionModelFactory (`terratorch` plugin) over a `timm` backbone
/// (`timm_resnet18`, `out_indices` [1, 2, 3, 4]) and FeaturePyramidNetworkNeck, Faster
/// R-CNN: TerraTorch 1.2.13's detections, keys `torchvision_model.backbone.backbone.*` the
/// timm model's (`scripts/reference/detection_factory_fixtures.py`).
#[test]
fn object_detection_factory_over_a_timm_backbone_matches_terratorch() {
    let host = host_with_plugins(terratorch_and_timm());
    terrahost_testkit::detection::check_detection_fixture(
        &host,
        "faster_rcnn_timm_resnet18",
        &["boxes", "scores", "labels"],
    );
}

/// The same backbone under TerraTorch's RetinaNet (GroupNorm head, nine anchors per
/// location): boxes within 1e-3 px, scores within 1e-4, labels exact.
#[test]
fn object_detection_retinanet_over_a_timm_backbone_matches_terratorch() {
    let host = host_with_plugins(terratorch_and_timm());
    terrahost_testkit::detection::check_detection_fixture(
        &host,
        "retinanet_timm_resnet18",
        &["boxes", "scores", "labels"],
    );
}
