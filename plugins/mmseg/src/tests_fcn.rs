//! FCNHead: parity against TerraTorch 1.2.11 + mmseg 1.2.2 / mmcv 2.1. Every expected key,
//! shape, value and message below was printed by the reference Python.
#![allow(clippy::excessive_precision)] // reference values as Python printed them
use crate::plugin_sources;
use serde_json::{json, Value};
use terrahost_plugin_api::{PluginError, Result};

use terrahost_plugin_api::sdk::DynModule;
use terrahost_plugin_api::ErrorKind;
use terrahost_testkit::{
    build_from, keys_and_shapes, sine_input as input, sorted_keys as reference, Case,
};

fn build(channels: &[i64], args: Value) -> Result<DynModule> {
    build_from(
        plugin_sources()?,
        "decoder",
        "FCNHead",
        Some(channels),
        &args,
    )
}

fn build_err(channels: &[i64], args: Value) -> PluginError {
    build(channels, args).err().expect("the build should fail")
}

fn check_case(name: &str, c: &Case) {
    terrahost_testkit::check_case(name, c, build)
}

#[test]
fn parity_mmseg_fcn_head_fixture() {
    terrahost_testkit::check_fixture(crate::plugin_sources().unwrap(), "mmseg_FCNHead");
}

#[test]
fn missing_num_classes_carries_terratorchs_message_from_the_fixture() {
    let fx = terrahost_testkit::Fixture::load("mmseg_FCNHead");
    let text = fx.meta["missing_num_classes_error"]
        .as_str()
        .expect("missing_num_classes_error");
    let text = text.strip_prefix("ValueError: ").unwrap_or(text);
    let e = build_err(&[32], json!({"channels": 16}));
    assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT);
    assert!(e.message().contains(text), "{e}");
}

#[test]
fn missing_num_classes_is_reported_before_missing_channels() {
    // TerraTorch checks num_classes before mmseg sees the other arguments.
    let e = build_err(&[8], json!({}));
    assert!(
        e.message().contains(
            "num_classes is a required argument for mmseg decoders. If you are using an mmseg decoder for a \
             regression task please include num_classes=1."
        ),
        "{e}"
    );
    let e = build_err(&[8], json!({"num_classes": 3}));
    assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT);
    assert!(e.message().contains("`channels`"), "{e}");
}

#[test]
fn state_dict_keys_match_the_reference() {
    let m = build(
        &[32],
        json!({"num_classes": 3, "channels": 16, "norm_cfg": {"type": "BN"}}),
    )
    .unwrap();
    assert_eq!(keys_and_shapes(&m), reference(REF_BN_KEYS));
    let m = build(
        &[8, 16],
        json!({"num_classes": 2, "channels": 8, "input_transform": "resize_concat", "in_index": [0, 1],
               "norm_cfg": {"type": "GN", "num_groups": 2}, "num_convs": 1}),
    )
    .unwrap();
    assert_eq!(keys_and_shapes(&m), reference(REF_GN_KEYS));
    let buffers: Vec<String> = build(
        &[32],
        json!({"num_classes": 3, "channels": 16, "norm_cfg": {"type": "SyncBN"}}),
    )
    .unwrap()
    .module()
    .named_buffers()
    .into_iter()
    .map(|n| n.name.into_string())
    .collect();
    assert_eq!(buffers.len(), 6, "{buffers:?}");
}

#[test]
fn includes_head_and_logits_at_feature_resolution() {
    let m = build(&[32], json!({"num_classes": 3, "channels": 16})).unwrap();
    assert!(m.includes_head());
    assert_eq!(m.out_channels(), vec![3]);
    // in_index -1 picks the last map; no resize to any input size.
    let ys =
        tch::no_grad(|| m.forward(&[input(0, &[2, 5, 16, 16]), input(1, &[2, 32, 7, 9])])).unwrap();
    assert_eq!(ys.len(), 1);
    assert_eq!(ys[0].size(), vec![2, 3, 7, 9]);
    let m = build(
        &[32],
        json!({"num_classes": 2, "out_channels": 1, "channels": 16}),
    )
    .unwrap();
    assert_eq!(m.out_channels(), vec![1]);
}

#[test]
fn extra_configurations_match_the_reference() {
    check_case("MMSEG_BN_DILATED", &MMSEG_BN_DILATED);
    check_case("MMSEG_RESIZE_CONCAT_GN", &MMSEG_RESIZE_CONCAT_GN);
    check_case("MMSEG_RESIZE_CONCAT_ALIGN", &MMSEG_RESIZE_CONCAT_ALIGN);
    check_case("MMSEG_NO_CONVS_NO_ACT", &MMSEG_NO_CONVS_NO_ACT);
}

#[test]
fn dropout_acts_in_training_only() {
    let mut m = build(
        &[8],
        json!({"num_classes": 2, "channels": 8, "dropout_ratio": 0.5}),
    )
    .unwrap();
    let x = [input(0, &[1, 8, 6, 6])];
    let a = tch::no_grad(|| m.forward(&x)).unwrap().remove(0);
    let b = tch::no_grad(|| m.forward(&x)).unwrap().remove(0);
    assert!(a.equal(&b), "eval mode is deterministic");
    m.set_train(true);
    tch::manual_seed(0);
    let c = tch::no_grad(|| m.forward(&x)).unwrap().remove(0);
    assert!(
        !a.allclose(&c, 1e-6, 1e-6, false),
        "Dropout2d changes the training output"
    );
}

#[test]
fn argument_errors_say_what_to_change() {
    let base = |extra: Value| {
        let mut a = json!({"num_classes": 2, "channels": 8});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    let cases: Vec<(&[i64], Value, &str)> = vec![
        (&[8, 16], base(json!({})), "must have one entry"),
        (&[8], base(json!({"in_index": [0]})), "in_index"),
        (
            &[8, 16],
            base(json!({"input_transform": "multiple_select", "in_index": [0, 1]})),
            "multiple_select",
        ),
        (
            &[8],
            base(json!({"input_transform": "resize_concat", "in_index": [0]})),
            "resize_concat",
        ),
        (
            &[8, 16],
            base(json!({"input_transform": "resize_concat", "in_index": [0]})),
            "in_index",
        ),
        (
            &[8, 16],
            base(json!({"input_transform": "resize_concat", "in_index": 0})),
            "in_index",
        ),
        (
            &[8, 16],
            base(json!({"input_transform": "concat", "in_index": [0, 1]})),
            "input_transform",
        ),
        (&[8], base(json!({"out_channels": 3})), "out_channels"),
        (&[4], base(json!({"num_convs": 0})), "num_convs"),
        (&[8], base(json!({"dilation": 0})), "dilation"),
        (&[8], base(json!({"dropout_ratio": 1.5})), "dropout_ratio"),
        (&[8], base(json!({"norm_cfg": {"type": "LN"}})), "norm_cfg"),
        (
            &[8],
            base(json!({"norm_cfg": {"type": "GN"}})),
            "num_groups",
        ),
        (
            &[8],
            base(json!({"norm_cfg": {"type": "GN", "num_groups": 3}})),
            "divide",
        ),
        (
            &[8],
            base(json!({"norm_cfg": {"type": "BN", "epsilon": 1e-3}})),
            "epsilon",
        ),
        (&[8], base(json!({"act_cfg": {"type": "PReLU"}})), "act_cfg"),
        (
            &[8],
            base(json!({"conv_cfg": {"type": "deconv"}})),
            "conv_cfg",
        ),
        (
            &[8],
            base(json!({"num_clases": 2})),
            "did you mean `num_classes`",
        ),
    ];
    for (channels, args, needle) in cases {
        let e = build_err(channels, args.clone());
        assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT, "{args}: {e}");
        assert!(e.message().contains(needle), "{channels:?} {args}: {e}");
    }
}

#[test]
fn forward_checks_its_inputs() {
    let m = build(
        &[8],
        json!({"num_classes": 2, "channels": 8, "in_index": 2}),
    )
    .unwrap();
    let e = m.forward(&[input(0, &[1, 8, 4, 4])]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::FORWARD_FAILED);
    assert!(e.message().contains("in_index 2 is out of range"), "{e}");
    let e = m
        .forward(&[
            input(0, &[1, 8, 4, 4]),
            input(1, &[1, 8, 4, 4]),
            input(2, &[1, 4, 4, 4]),
        ])
        .unwrap_err();
    assert!(e.message().contains("[B, 8, H, W]"), "{e}");
}

/// `DECODER_REGISTRY.build("mmseg_FCNHead", [32], num_classes=3, channels=16, norm_cfg={"type": "BN"})` (without `num_batches_tracked`).
const REF_BN_KEYS: &[(&str, &[i64])] = &[
    ("decoder.conv_seg.weight", &[3, 16, 1, 1]),
    ("decoder.conv_seg.bias", &[3]),
    ("decoder.convs.0.conv.weight", &[16, 32, 3, 3]),
    ("decoder.convs.0.bn.weight", &[16]),
    ("decoder.convs.0.bn.bias", &[16]),
    ("decoder.convs.0.bn.running_mean", &[16]),
    ("decoder.convs.0.bn.running_var", &[16]),
    ("decoder.convs.1.conv.weight", &[16, 16, 3, 3]),
    ("decoder.convs.1.bn.weight", &[16]),
    ("decoder.convs.1.bn.bias", &[16]),
    ("decoder.convs.1.bn.running_mean", &[16]),
    ("decoder.convs.1.bn.running_var", &[16]),
    ("decoder.conv_cat.conv.weight", &[16, 48, 3, 3]),
    ("decoder.conv_cat.bn.weight", &[16]),
    ("decoder.conv_cat.bn.bias", &[16]),
    ("decoder.conv_cat.bn.running_mean", &[16]),
    ("decoder.conv_cat.bn.running_var", &[16]),
];
/// `DECODER_REGISTRY.build("mmseg_FCNHead", [8, 16], num_classes=2, channels=8, input_transform="resize_concat", in_index=[0, 1], norm_cfg={"type": "GN", "num_groups": 2}, num_convs=1)`.
const REF_GN_KEYS: &[(&str, &[i64])] = &[
    ("decoder.conv_seg.weight", &[2, 8, 1, 1]),
    ("decoder.conv_seg.bias", &[2]),
    ("decoder.convs.0.conv.weight", &[8, 24, 3, 3]),
    ("decoder.convs.0.gn.weight", &[8]),
    ("decoder.convs.0.gn.bias", &[8]),
    ("decoder.conv_cat.conv.weight", &[8, 32, 3, 3]),
    ("decoder.conv_cat.gn.weight", &[8]),
    ("decoder.conv_cat.gn.bias", &[8]),
];

/// `mmseg_FCNHead` on channels [8] with {'num_classes': 3, 'channels': 4, 'norm_cfg': {'type': 'BN'}, 'num_convs': 1, 'concat_input': False, 'dilation': 2, 'in_index': 0}; inputs [[1, 8, 4, 4], [1, 2, 2, 2]].
#[rustfmt::skip]
const MMSEG_BN_DILATED: Case = Case {
    channels: &[8], args: r#"{"num_classes": 3, "channels": 4, "norm_cfg": {"type": "BN"}, "num_convs": 1, "concat_input": false, "dilation": 2, "in_index": 0}"#, inputs: &[[1, 8, 4, 4], [1, 2, 2, 2]], n_keys: 7, out_shape: &[1, 3, 4, 4], out: &[
        -5.6374335e-01, -1.0689846e+00, -1.1903284e+00, -1.5920835e+00, -1.5854909e+00,
        -1.2842665e+00, -1.3202107e+00, -7.9232121e-01, -1.0060415e+00, -7.8004313e-01,
        -3.3818537e-01, -1.2418583e-01, -1.9742429e-02, 7.8950375e-02, 7.8950375e-02, 7.8950375e-02,
        1.0470331e-02, 3.1705397e-01, 5.5813760e-01, 9.2744726e-01, 1.0001633e+00, 9.8142850e-01,
        1.1631072e+00, 8.3806193e-01, 9.6269161e-01, 8.7338907e-01, 5.0499737e-01, 3.0977595e-01,
        2.0187162e-01, 9.9908441e-02, 9.9908441e-02, 9.9908441e-02, 8.6685431e-01, 8.9132655e-01,
        6.3461536e-01, 4.5723781e-01, 3.3661556e-01, 6.4770073e-02, -1.8418495e-01, -2.0235495e-01,
        -1.8407249e-01, -2.7003133e-01, -1.3419592e-01, -4.2059183e-02, 2.2707492e-02,
        8.3908156e-02, 8.3908156e-02, 8.3908156e-02,
    ] };
/// `mmseg_FCNHead` on channels [4, 8] with {'num_classes': 2, 'out_channels': 1, 'channels': 4, 'input_transform': 'resize_concat', 'in_index': [1, 2], 'norm_cfg': {'type': 'GN', 'num_groups': 2}, 'act_cfg': {'type': 'LeakyReLU', 'negative_slope': 0.2}}; inputs [[1, 3, 2, 2], [1, 4, 4, 4], [1, 8, 2, 2]].
#[rustfmt::skip]
const MMSEG_RESIZE_CONCAT_GN: Case = Case {
    channels: &[4, 8], args: r#"{"num_classes": 2, "out_channels": 1, "channels": 4, "input_transform": "resize_concat", "in_index": [1, 2], "norm_cfg": {"type": "GN", "num_groups": 2}, "act_cfg": {"type": "LeakyReLU", "negative_slope": 0.2}}"#, inputs: &[[1, 3, 2, 2], [1, 4, 4, 4], [1, 8, 2, 2]], n_keys: 11, out_shape: &[1, 1, 4, 4], out: &[
        -6.0174656e-01, -3.6502105e-01, 6.4025819e-03, 2.3390102e-01, 2.9536545e-01, 3.9921334e-01,
        3.0346280e-01, 1.1113688e-02, 9.7009867e-02, -3.2760948e-01, -6.5344256e-01, -6.6119814e-01,
        -6.6234320e-01, -1.2395574e+00, -1.2856295e+00, -8.5391581e-01,
    ] };
/// `mmseg_FCNHead` on channels [4, 8] with {'num_classes': 2, 'channels': 6, 'input_transform': 'resize_concat', 'in_index': [-2, -1], 'align_corners': True, 'act_cfg': {'type': 'GELU'}, 'kernel_size': 1}; inputs [[1, 4, 4, 4], [1, 8, 3, 3]].
#[rustfmt::skip]
const MMSEG_RESIZE_CONCAT_ALIGN: Case = Case {
    channels: &[4, 8], args: r#"{"num_classes": 2, "channels": 6, "input_transform": "resize_concat", "in_index": [-2, -1], "align_corners": true, "act_cfg": {"type": "GELU"}, "kernel_size": 1}"#, inputs: &[[1, 4, 4, 4], [1, 8, 3, 3]], n_keys: 8, out_shape: &[1, 2, 4, 4], out: &[
        -5.2627269e-02, 2.2164520e-02, 6.1855309e-02, 6.3607857e-02, 4.6782270e-02, 2.2922907e-02,
        7.8979526e-03, 6.4005293e-03, 1.2156035e-02, 1.3459508e-02, -2.1102177e-03, -3.8393427e-02,
        -8.4830038e-02, -1.1875290e-01, -1.2754355e-01, -1.0673542e-01, 1.4345196e-01,
        1.0007187e-01, 8.3234563e-02, 9.4487153e-02, 1.1640681e-01, 1.4455876e-01, 1.6363342e-01,
        1.6976148e-01, 1.6857481e-01, 1.6566482e-01, 1.6973896e-01, 1.8324336e-01, 2.0432079e-01,
        2.1102709e-01, 2.0184079e-01, 1.7623749e-01,
    ] };
/// `mmseg_FCNHead` on channels [4] with {'num_classes': 2, 'channels': 4, 'num_convs': 0, 'act_cfg': None, 'dropout_ratio': 0.0}; inputs [[1, 4, 4, 4]].
#[rustfmt::skip]
const MMSEG_NO_CONVS_NO_ACT: Case = Case {
    channels: &[4], args: r#"{"num_classes": 2, "channels": 4, "num_convs": 0, "act_cfg": null, "dropout_ratio": 0.0}"#, inputs: &[[1, 4, 4, 4]], n_keys: 4, out_shape: &[1, 2, 4, 4], out: &[
        2.5727662e-01, 3.9443940e-01, 3.4253868e-01, 1.4616369e-01, 1.2084219e-01, -1.0012954e-01,
        -3.0739197e-01, -3.1662828e-01, -3.9267388e-01, -5.9242344e-01, -5.3211570e-01,
        -2.3297229e-01, -5.9580177e-02, 9.9685781e-02, 2.2529832e-01, 2.3551853e-01, 8.6783111e-02,
        -3.7051655e-02, -5.9450500e-02, 3.0078039e-02, 1.7592497e-03, 5.2074283e-02, 1.9374743e-01,
        3.0141646e-01, 3.4853598e-01, 5.3402019e-01, 5.6778276e-01, 4.3005440e-01, 3.0980319e-01,
        2.7315730e-01, 1.8506953e-01, 1.0640834e-01,
    ] };
