//! The necks: parity with TerraTorch for every entry, and their argument errors.

use serde_json::{json, Value};
use terrahost_plugin_api::ErrorKind;
use terrahost_testkit::{build_from, check_fixture};

fn parity(case: &str) {
    check_fixture(crate::plugin_sources().unwrap(), case);
}

#[test]
fn parity_permute_dims() {
    parity("terratorch_PermuteDims");
}

#[test]
fn parity_interpolate_to_pyramidal() {
    parity("terratorch_InterpolateToPyramidal");
    parity("terratorch_InterpolateToPyramidal_bilinear");
}

#[test]
fn parity_maxpool_to_pyramidal() {
    parity("terratorch_MaxpoolToPyramidal");
}

#[test]
fn parity_reshape_tokens_to_image() {
    parity("terratorch_ReshapeTokensToImage");
    parity("terratorch_ReshapeTokensToImage_time");
    // 12 tokens are no square: the grid comes from the image_size keyword argument.
    parity("terratorch_ReshapeTokensToImage_nonsquare");
}

#[test]
fn parity_aggregate_tokens() {
    parity("terratorch_AggregateTokens");
    parity("terratorch_AggregateTokens_max");
    parity("terratorch_AggregateTokens_cls");
}

#[test]
fn parity_add_bottleneck_layer() {
    parity("terratorch_AddBottleneckLayer");
}

#[test]
fn parity_learned_interpolate_to_pyramidal() {
    parity("terratorch_LearnedInterpolateToPyramidal");
}

#[test]
fn parity_feature_pyramid_network_neck() {
    parity("terratorch_FeaturePyramidNetworkNeck");
    parity("terratorch_FeaturePyramidNetworkNeck_dict");
}

fn build_err(name: &str, channels: &[i64], args: Value) -> String {
    match build_from(
        crate::plugin_sources().unwrap(),
        "neck",
        name,
        Some(channels),
        &args,
    ) {
        Ok(_) => panic!("{name} with {args} built"),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT, "{e}");
            e.message().to_owned()
        }
    }
}

fn out_channels(name: &str, channels: &[i64], args: Value) -> Vec<i64> {
    build_from(
        crate::plugin_sources().unwrap(),
        "neck",
        name,
        Some(channels),
        &args,
    )
    .unwrap()
    .out_channels()
}

#[test]
fn channel_bookkeeping_follows_process_channel_list() {
    assert_eq!(
        out_channels("AddBottleneckLayer", &[8, 16], json!({})),
        [8, 16, 8]
    );
    assert_eq!(
        out_channels(
            "LearnedInterpolateToPyramidal",
            &[16, 16, 32, 32],
            json!({})
        ),
        [4, 8, 32, 32]
    );
    assert_eq!(
        out_channels(
            "FeaturePyramidNetworkNeck",
            &[8, 16, 32],
            json!({"out_channel": 4})
        ),
        [4, 4, 4]
    );
    // Upstream's AggregateTokens passes the list on without selecting.
    assert_eq!(
        out_channels("AggregateTokens", &[8, 16], json!({"indices": [1]})),
        [8, 16]
    );
    assert_eq!(
        out_channels("ReshapeTokensToImage", &[8, 8], json!({})),
        [8, 8]
    );
}

#[test]
fn bad_arguments_are_named() {
    let e = build_err("LearnedInterpolateToPyramidal", &[8, 8, 8], json!({}));
    assert!(
        e.contains("exactly 4") && e.contains("SelectIndices"),
        "{e}"
    );
    let e = build_err(
        "AggregateTokens",
        &[8],
        json!({"pooling": "cls", "drop_cls": true}),
    );
    assert!(e.contains("drop_cls") && e.contains("cls"), "{e}");
    let e = build_err("AggregateTokens", &[8], json!({"pooling": "median"}));
    assert!(e.contains("median"), "{e}");
    let e = build_err("AggregateTokens", &[8, 8], json!({"indices": [5]}));
    assert!(e.contains("index 5"), "{e}");
    let e = build_err("InterpolateToPyramidal", &[8], json!({"mode": "cubic"}));
    assert!(e.contains("cubic") && e.contains("bilinear"), "{e}");
    let e = build_err("PermuteDims", &[8], json!({"new_order": [0, 2, 2, 1]}));
    assert!(e.contains("permutation"), "{e}");
    let e = build_err("MaxpoolToPyramidal", &[8], json!({"kernel_size": 0}));
    assert!(e.contains("kernel_size"), "{e}");
}

#[test]
fn reshape_tokens_without_a_grid_is_a_forward_error() {
    let m = build_from(
        crate::plugin_sources().unwrap(),
        "neck",
        "ReshapeTokensToImage",
        Some(&[8]),
        &json!({}),
    )
    .unwrap();
    let x = tch::Tensor::zeros([1, 13, 8], (tch::Kind::Float, tch::Device::Cpu));
    let e = m.forward(&[x]).unwrap_err();
    assert!(e.message().contains("image_size"), "{e}");
}

/// `temporal_inputs` folds time into the batch and back: the same as running each time
/// step on its own.
#[test]
fn temporal_inputs_run_each_time_step() {
    let sources = || crate::plugin_sources().unwrap();
    let temporal = build_from(
        sources(),
        "neck",
        "ReshapeTokensToImage",
        Some(&[8]),
        &json!({"temporal_inputs": true}),
    )
    .unwrap();
    let plain = build_from(
        sources(),
        "neck",
        "ReshapeTokensToImage",
        Some(&[8]),
        &json!({}),
    )
    .unwrap();
    let x = terrahost_testkit::sine_input(0, &[2, 3, 17, 8]);
    let y = temporal.forward(&[x.shallow_clone()]).unwrap().remove(0);
    assert_eq!(y.size(), [2, 3, 8, 4, 4]);
    for t in 0..3 {
        let step = plain.forward(&[x.select(1, t)]).unwrap().remove(0);
        terrahost_testkit::assert_close("time step", &y.select(1, t), &step, 0.0);
    }
    let pooled = build_from(
        sources(),
        "neck",
        "AggregateTokens",
        Some(&[8]),
        &json!({"temporal_inputs": true}),
    )
    .unwrap();
    let y = pooled.forward(&[x.shallow_clone()]).unwrap().remove(0);
    assert_eq!(y.size(), [2, 3, 8]);
    terrahost_testkit::assert_close(
        "mean over tokens",
        &y,
        &x.mean_dim(Some([2i64].as_slice()), false, None),
        1e-6,
    );
}
