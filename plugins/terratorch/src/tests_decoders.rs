//! Tests of TerraTorch's decoders beyond FCNDecoder/IdentityDecoder: parity with the
//! reference fixtures of `scripts/reference/cases/decoders.py`, the channels and head
//! flags each one reports, and the argument errors.

use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};
use terrahost_testkit::{assert_close, build_fixture, check_fixture, host_with, Fixture};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("a JSON object").clone()
}

fn parity(case: &str) {
    check_fixture(crate::plugin_sources().unwrap(), case);
}

// ---------------------------------------------------------------------------------
// Parity with the reference fixtures
// ---------------------------------------------------------------------------------

#[test]
fn parity_unet_decoder() {
    parity("terratorch_UNetDecoder");
}

#[test]
fn parity_unet_decoder_scse_identity() {
    parity("terratorch_UNetDecoder_scse_identity");
}

#[test]
fn parity_upernet_decoder_defaults() {
    parity("terratorch_UperNetDecoder");
}

#[test]
fn parity_upernet_decoder_scale_modules() {
    parity("terratorch_UperNetDecoder_scale_modules");
}

/// TerraTorch 1.2.13's UperNetDecoder (no `scale_modules`; otherwise 1.2.11's): the
/// fixture was written by the 1.2.13 reference environment.
#[test]
fn parity_upernet_decoder_terratorch_1_2_13() {
    let fx = Fixture::load("terratorch_UperNetDecoder_1213");
    assert_eq!(fx.meta["versions"]["terratorch"], json!("1.2.13"));
    parity("terratorch_UperNetDecoder_1213");
}

/// The warnings a build of UperNetDecoder recorded (the SDK's `meta.warnings`).
fn upernet_warnings(args: Value, channels: &[i64]) -> Vec<String> {
    let host = host_with(crate::plugin_sources().unwrap());
    let m = host
        .build("decoder", "UperNetDecoder", &obj(args), Some(channels))
        .unwrap();
    terrahost_plugin_api::warnings::from_meta(&m.meta())
}

/// `scale_modules` (any value) builds TerraTorch 1.2.11's model with a warning that 1.2.12
/// and later refuse it; without it there is no warning.
#[test]
fn upernet_scale_modules_warns_that_terratorch_1_2_12_refuses_it() {
    let w = upernet_warnings(json!({"scale_modules": true, "channels": 16}), &[32; 4]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("1.2.12") && w[0].contains("LearnedInterpolateToPyramidal"),
        "{w:?}"
    );
    let w = upernet_warnings(json!({"scale_modules": false, "channels": 16}), &[32; 4]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("1.2.12") && w[0].contains("drop it"), "{w:?}");
    assert!(upernet_warnings(json!({"channels": 16}), &[32; 4]).is_empty());
    assert!(upernet_warnings(json!({"scale_modules": null}), &[32; 4]).is_empty());
}

#[test]
fn parity_linear_decoder() {
    parity("terratorch_LinearDecoder");
}

#[test]
fn parity_mlp_decoder() {
    parity("terratorch_MLPDecoder");
}

#[test]
fn parity_mlp_decoder_flat_gelu() {
    parity("terratorch_MLPDecoder_flat_gelu");
}

#[test]
fn parity_aspp_module() {
    parity("terratorch_ASPPModule");
}

#[test]
fn parity_aspp_head() {
    parity("terratorch_ASPPHead");
}

#[test]
fn parity_aspp_segmentation_head() {
    parity("terratorch_ASPPSegmentationHead");
}

#[test]
fn parity_aspp_segmentation_head_resize_concat() {
    parity("terratorch_ASPPSegmentationHead_resize_concat");
}

#[test]
fn parity_aspp_regression_head() {
    parity("terratorch_ASPPRegressionHead");
}

/// SatMAEHead's second input is `ids_restore` (int64). Fixtures store float inputs, so
/// the case stores noise and both sides turn it into `argsort(noise, dim=1)` (as MAE
/// does) before calling the decoder.
#[test]
fn parity_satmae_head() {
    let fx = Fixture::load("terratorch_SatMAEHead");
    let host = host_with(crate::plugin_sources().unwrap());
    let module = build_fixture(&host, &fx);
    let ids_restore = fx.inputs[1].argsort(1, false);
    assert_eq!(ids_restore.kind(), Kind::Int64);
    let out =
        tch::no_grad(|| module.forward(&[fx.inputs[0].shallow_clone(), ids_restore])).unwrap();
    assert_eq!(out.len(), fx.outputs.len());
    for (i, (a, e)) in out.iter().zip(&fx.outputs).enumerate() {
        assert_close(
            &format!("terratorch_SatMAEHead output.{i}"),
            a,
            e,
            fx.atol(),
        );
    }
}

// ---------------------------------------------------------------------------------
// Parameters, out_channels, includes_head
// ---------------------------------------------------------------------------------

fn params(name: &str) -> Vec<(String, Option<Value>)> {
    let host = host_with(crate::plugin_sources().unwrap());
    let (_, info) = host.describe("decoder", name).unwrap();
    assert!(info.takes_channels, "{name} takes the channel list");
    info.params
        .iter()
        .map(|p| (p.name.to_string(), p.default_value()))
        .collect()
}

#[test]
fn entries_declare_the_upstream_signatures() {
    let s = |v: &[(&str, Option<Value>)]| -> Vec<(String, Option<Value>)> {
        v.iter().map(|(k, d)| (k.to_string(), d.clone())).collect()
    };
    assert_eq!(
        params("UNetDecoder"),
        s(&[
            ("channels", None),
            ("use_batchnorm", Some(json!("batchnorm"))),
            ("attention_type", Some(Value::Null))
        ])
    );
    assert_eq!(
        params("UperNetDecoder"),
        s(&[
            ("pool_scales", Some(json!([1, 2, 3, 6]))),
            ("channels", Some(json!(256))),
            ("align_corners", Some(json!(true))),
            ("scale_modules", Some(Value::Null)),
        ])
    );
    assert_eq!(
        params("LinearDecoder"),
        s(&[
            ("num_classes", None),
            ("upsampling_size", None),
            ("in_index", Some(json!(-1)))
        ])
    );
    assert_eq!(
        params("MLPDecoder"),
        s(&[
            ("channels", Some(json!(100))),
            ("out_dim", Some(json!(100))),
            ("activation", Some(json!("ReLU"))),
            ("out_index", Some(json!(-1))),
        ])
    );
    let tail = [
        ("align_corners", Some(json!(false))),
        ("head_dropout_ratio", Some(json!(0.3))),
        ("input_transform", Some(Value::Null)),
        ("in_index", Some(json!(-1))),
    ];
    let mut seg = vec![
        ("dilations", Some(json!([1, 6, 12, 18]))),
        ("in_channels", None),
        ("channels", None),
        ("num_classes", Some(json!(2))),
    ];
    seg.extend(tail.clone());
    assert_eq!(params("ASPPSegmentationHead"), s(&seg));
    let mut reg = seg.clone();
    reg[3] = ("out_channels", Some(json!(1)));
    assert_eq!(params("ASPPRegressionHead"), s(&reg));
    // ASPPHead's first positional parameter is `dilations`: the channel list.
    let mut head = vec![
        ("in_channels", None),
        ("channels", None),
        ("out_dim", Some(json!(3))),
    ];
    head.extend(tail);
    assert_eq!(params("ASPPHead"), s(&head));
    let names: Vec<String> = params("ASPPModule").into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        ["in_channels", "channels", "conv_cfg", "norm_cfg", "act_cfg"]
    );
    let names: Vec<String> = params("SatMAEHead").into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "out_channels",
            "bias",
            "num_heads",
            "mlp_ratio",
            "patch_size",
            "num_patches",
            "depth",
            "in_chans"
        ]
    );
}

#[test]
fn built_decoders_report_upstream_out_channels_and_heads() {
    let host = host_with(crate::plugin_sources().unwrap());
    let ch: &[i64] = &[16, 32, 64, 128];
    // (entry, arguments, channel list, expected out_channels, expected includes_head)
    type Expect<'a> = (&'a str, Value, &'a [i64], Vec<i64>, bool);
    let cases: Vec<Expect> = vec![
        (
            "UNetDecoder",
            json!({"channels": [32, 16, 8, 4]}),
            ch,
            vec![4],
            false,
        ),
        (
            "UperNetDecoder",
            json!({"channels": 24}),
            ch,
            vec![24],
            false,
        ),
        ("UperNetDecoder", json!({}), ch, vec![256], false),
        (
            "LinearDecoder",
            json!({"num_classes": 5, "upsampling_size": 2}),
            ch,
            vec![5],
            true,
        ),
        ("MLPDecoder", json!({}), ch, vec![128], false),
        ("MLPDecoder", json!({"out_index": 1}), ch, vec![32], false),
        (
            "ASPPModule",
            json!({"in_channels": 8, "channels": 4}),
            &[1, 2, 3],
            vec![4, 4, 4],
            false,
        ),
        (
            "ASPPHead",
            json!({"in_channels": 8, "channels": 4}),
            &[1, 2],
            vec![4],
            false,
        ),
        (
            "ASPPSegmentationHead",
            json!({"in_channels": 128, "channels": 4}),
            ch,
            vec![2],
            false,
        ),
        (
            "ASPPRegressionHead",
            json!({"in_channels": 128, "channels": 4, "out_channels": 3}),
            ch,
            vec![3],
            false,
        ),
        (
            "SatMAEHead",
            json!({"out_channels": 8, "num_heads": 2, "mlp_ratio": 2.0, "patch_size": 2, "depth": 1, "in_chans": 3}),
            &[16],
            vec![8],
            false,
        ),
    ];
    for (name, args, channels, out, head) in cases {
        let m = host
            .build("decoder", name, &obj(args), Some(channels))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.out_channels(), out, "{name} out_channels");
        assert_eq!(m.includes_head(), head, "{name} includes_head");
    }
}

#[test]
fn shapes_follow_the_features() {
    let host = host_with(crate::plugin_sources().unwrap());
    let maps = |b: i64| -> Vec<Tensor> {
        [(16, 16), (32, 8), (64, 4), (128, 2)]
            .iter()
            .map(|&(c, s)| Tensor::randn([b, c, s, s], (Kind::Float, Device::Cpu)))
            .collect()
    };
    let ch: &[i64] = &[16, 32, 64, 128];
    let run = |name: &str, args: Value, channels: &[i64], xs: &[Tensor]| -> Vec<Vec<i64>> {
        let m = host
            .build("decoder", name, &obj(args), Some(channels))
            .unwrap();
        tch::no_grad(|| m.forward(xs))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .iter()
            .map(Tensor::size)
            .collect()
    };
    assert_eq!(
        run(
            "UNetDecoder",
            json!({"channels": [8, 8, 4, 4]}),
            ch,
            &maps(2)
        ),
        [vec![2, 4, 16, 16]]
    );
    assert_eq!(
        run("UperNetDecoder", json!({"channels": 8}), ch, &maps(2)),
        [vec![2, 8, 16, 16]]
    );
    assert_eq!(
        run(
            "LinearDecoder",
            json!({"num_classes": 3, "upsampling_size": 8}),
            ch,
            &maps(1)
        ),
        [vec![1, 3, 16, 16]]
    );
    let xs = maps(1);
    assert_eq!(
        run(
            "ASPPModule",
            json!({"in_channels": 64, "channels": 4}),
            &[1, 2],
            &xs[2..3]
        ),
        [vec![1, 4, 4, 4], vec![1, 4, 4, 4]]
    );
    // UNet: one block per map (4), each doubling, ending at the first map's size.
    let m = host
        .build(
            "decoder",
            "UNetDecoder",
            &obj(json!({"channels": [8, 8, 4, 4]})),
            Some(ch),
        )
        .unwrap();
    let n_convs = m
        .state_dict()
        .iter()
        .filter(|(k, _)| k.ends_with(".0.weight"))
        .count();
    assert_eq!(n_convs, 8, "two convs per block, four blocks");
}

// ---------------------------------------------------------------------------------
// Argument errors
// ---------------------------------------------------------------------------------

fn build_err(name: &str, args: Value, channels: &[i64]) -> String {
    let host = host_with(crate::plugin_sources().unwrap());
    match host.build("decoder", name, &obj(args), Some(channels)) {
        Ok(_) => panic!("{name}: expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_arguments_name_what_is_wrong() {
    let ch: &[i64] = &[16, 32, 64, 128];
    let e = build_err("UNetDecoder", json!({"channels": [8, 4]}), ch);
    assert!(e.contains("`channels`") && e.contains("same length"), "{e}");
    let e = build_err(
        "UNetDecoder",
        json!({"channels": [8, 8, 8, 8], "use_batchnorm": "groupnorm"}),
        ch,
    );
    assert!(
        e.contains("use_batchnorm") && e.contains("groupnorm"),
        "{e}"
    );
    let e = build_err(
        "UNetDecoder",
        json!({"channels": [8, 8, 8, 8], "use_batchnorm": "inplace"}),
        ch,
    );
    assert!(e.contains("inplace_abn"), "{e}");
    let e = build_err(
        "UNetDecoder",
        json!({"channels": [8, 8, 8, 8], "attention_type": "cbam"}),
        ch,
    );
    assert!(e.contains("attention_type") && e.contains("cbam"), "{e}");
    let e = build_err(
        "UperNetDecoder",
        json!({"scale_modules": true}),
        &[16, 32, 64],
    );
    assert!(e.contains("scale_modules") && e.contains("four"), "{e}");
    let e = build_err("UperNetDecoder", json!({"pool_scales": [1, 0]}), ch);
    assert!(e.contains("pool_scales"), "{e}");
    let e = build_err("UperNetDecoder", json!({"feature_multiplier": 2}), ch);
    assert!(e.contains("unknown argument `feature_multiplier`"), "{e}");
    let e = build_err("LinearDecoder", json!({"upsampling_size": 4}), ch);
    assert!(e.contains("num_classes"), "{e}");
    let e = build_err(
        "LinearDecoder",
        json!({"num_classes": 2, "upsampling_size": 4, "in_index": 4}),
        ch,
    );
    assert!(e.contains("in_index"), "{e}");
    let e = build_err("MLPDecoder", json!({"activation": "Swish"}), ch);
    assert!(e.contains("activation") && e.contains("Swish"), "{e}");
    let e = build_err(
        "ASPPModule",
        json!({"in_channels": 8, "channels": 4}),
        &[1, 0],
    );
    assert!(e.contains("dilations"), "{e}");
    // The channel list *is* ASPPHead's dilation list, so `dilations` is no keyword.
    let e = build_err(
        "ASPPHead",
        json!({"in_channels": 8, "channels": 4, "dilations": [1, 2]}),
        &[1, 2],
    );
    assert!(e.contains("unknown argument `dilations`"), "{e}");
    let e = build_err("ASPPSegmentationHead", json!({"channels": 4}), ch);
    assert!(e.contains("in_channels"), "{e}");
    let args = json!({"in_channels": 8, "channels": 4, "input_transform": "multiple_select", "in_index": [0, 1]});
    let e = build_err("ASPPSegmentationHead", args, ch);
    assert!(e.contains("multiple_select"), "{e}");
    let args = json!({"in_channels": 8, "channels": 4, "input_transform": "resize_concat"});
    let e = build_err("ASPPRegressionHead", args, ch);
    assert!(e.contains("in_index") && e.contains("list"), "{e}");
    let args = json!({"in_channels": 8, "channels": 4, "head_dropout_ratio": 1.5});
    let e = build_err("ASPPSegmentationHead", args, ch);
    assert!(e.contains("head_dropout_ratio"), "{e}");
    let sat = json!({"out_channels": 8, "num_heads": 3, "mlp_ratio": 2.0, "patch_size": 2, "depth": 1, "in_chans": 3});
    let e = build_err("SatMAEHead", sat.clone(), &[16]);
    assert!(e.contains("num_heads") && e.contains("divisible"), "{e}");
    let e = build_err("SatMAEHead", sat, &[16, 32]);
    assert!(e.contains("one-element channel list"), "{e}");
}

#[test]
fn bad_inputs_are_forward_errors() {
    let host = host_with(crate::plugin_sources().unwrap());
    let x = Tensor::zeros([1, 8, 4, 4], (Kind::Float, Device::Cpu));
    let m = host
        .build(
            "decoder",
            "ASPPModule",
            &obj(json!({"in_channels": 8, "channels": 4})),
            Some(&[1]),
        )
        .unwrap();
    let e = m
        .forward(&[x.shallow_clone(), x.shallow_clone()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("one feature map"), "{e}");
    let m = host
        .build(
            "decoder",
            "UperNetDecoder",
            &obj(json!({"channels": 4})),
            Some(&[8, 8]),
        )
        .unwrap();
    let e = m.forward(&[x.shallow_clone()]).err().unwrap().to_string();
    assert!(e.contains("2 feature maps"), "{e}");
    let sat = json!({"out_channels": 8, "num_heads": 2, "mlp_ratio": 2.0, "patch_size": 2, "num_patches": 4,
                     "depth": 1, "in_chans": 3});
    let m = host
        .build("decoder", "SatMAEHead", &obj(sat), Some(&[16]))
        .unwrap();
    let tokens = Tensor::zeros([1, 3, 16], (Kind::Float, Device::Cpu));
    let e = m
        .forward(&[
            tokens.shallow_clone(),
            Tensor::zeros([1, 4], (Kind::Float, Device::Cpu)),
        ])
        .err()
        .unwrap();
    assert!(e.to_string().contains("integer"), "{e}");
    let ids = Tensor::from_slice(&[2i64, 0, 3, 1]).reshape([1, 4]);
    let y = tch::no_grad(|| m.forward(&[tokens, ids])).unwrap();
    assert_eq!(y[0].size(), vec![1, 3, 4, 4]);
}

/// TerraTorch 1.2.13's `SklearnDecoder` is refused by name with the reason (not "not
/// found"), alone and as the decoder of the EncoderDecoderFactory.
#[test]
fn sklearn_decoder_is_refused_with_the_reason() {
    use terrahost_plugin_api::ErrorKind;
    let host = host_with(crate::plugin_sources().unwrap());
    for name in ["SklearnDecoder", "terratorch_SklearnDecoder"] {
        let e = host
            .build("decoder", name, &obj(json!({"num_classes": 2})), Some(&[8]))
            .err()
            .expect("SklearnDecoder must be refused");
        assert_eq!(e.kind, ErrorKind::NOT_SUPPORTED, "{name}: {e}");
        assert!(
            e.message().contains("scikit-learn") && e.message().contains("joblib"),
            "{name}: {e}"
        );
        assert!(!host.contains("decoder", name), "{name} is not an entry");
    }
    let args = obj(json!({
        "task": "classification", "backbone": "prithvi_eo_tiny", "backbone_pretrained": false,
        "backbone_depth": 1, "backbone_embed_dim": 16, "backbone_num_heads": 2, "backbone_img_size": 16,
        "decoder": "SklearnDecoder", "num_classes": 2,
    }));
    let e = host
        .build("model_factory", "EncoderDecoderFactory", &args, None)
        .err()
        .expect("a factory with SklearnDecoder must be refused");
    assert!(
        e.to_string().contains("SklearnDecoder") && e.to_string().contains("scikit-learn"),
        "{e}"
    );
}
