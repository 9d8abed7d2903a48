//! Tests of the DPT, MAnet, Segformer, UPerNet and UnetPlusPlus entries and of the
//! `aux_*` arguments every smp decoder takes: parity with TerraTorch 1.2.11 + smp 0.6.0
//! (fixtures written by `scripts/reference/cases/smp_b.py`), output channels and
//! argument errors (messages as the reference printed them, see the fixtures' meta).
use crate::plugin_sources;
use crate::test_support::declared_default;
use serde_json::{json, Value};
use tch::Tensor;
use terrahost_plugin_api::sdk::DynModule;
use terrahost_plugin_api::{ErrorKind, PluginError, Result};
use terrahost_testkit::{build_from, keys_and_shapes, sine_input as input, Fixture};

fn check(case: &str) {
    terrahost_testkit::check_fixture(plugin_sources().unwrap(), case);
}

fn build(name: &str, channels: &[i64], args: Value) -> Result<DynModule> {
    build_from(plugin_sources()?, "decoder", name, Some(channels), &args)
}

fn build_err(name: &str, channels: &[i64], args: Value) -> PluginError {
    match build(name, channels, args.clone()) {
        Ok(_) => panic!("building {name} on {channels:?} with {args} should fail"),
        Err(e) => e,
    }
}

const TINY: [i64; 5] = [16, 16, 32, 64, 128];

/// One `[B, c, s, s]` map per channel, the first `size` px, each half the previous.
fn maps(channels: &[i64], size: i64) -> Vec<Tensor> {
    channels
        .iter()
        .enumerate()
        .map(|(i, &c)| input(i, &[2, c, size >> i, size >> i]))
        .collect()
}

fn run(m: &DynModule, xs: &[Tensor]) -> Result<Vec<Tensor>> {
    tch::no_grad(|| m.forward(xs))
}

#[test]
fn parity_dpt() {
    check("smp_DPT");
}

#[test]
fn parity_dpt_add() {
    check("smp_DPT_add");
}

#[test]
fn parity_dpt_noprefix() {
    check("smp_DPT_noprefix");
}

#[test]
fn parity_manet() {
    check("smp_MAnet");
}

#[test]
fn parity_manet_bilinear() {
    check("smp_MAnet_bilinear");
}

#[test]
fn parity_segformer() {
    check("smp_Segformer");
}

#[test]
fn parity_upernet() {
    check("smp_UPerNet");
}

#[test]
fn parity_upernet_identity() {
    check("smp_UPerNet_identity");
}

#[test]
fn parity_unetplusplus() {
    check("smp_UnetPlusPlus");
}

#[test]
fn parity_unetplusplus_scse() {
    check("smp_UnetPlusPlus_scse");
}

#[test]
fn parity_unet_aux() {
    check("smp_Unet_aux");
}

#[test]
fn out_channels_match_the_reference() {
    // (entry, channels, args, fixture whose meta recorded TerraTorch's out_channels)
    let cases = [
        (
            "MAnet",
            json!({"decoder_channels": [16, 16, 8, 8], "decoder_pab_channels": 4}),
            "smp_MAnet",
        ),
        (
            "UnetPlusPlus",
            json!({"decoder_channels": [16, 16, 8, 8]}),
            "smp_UnetPlusPlus",
        ),
        (
            "Segformer",
            json!({"decoder_segmentation_channels": 8}),
            "smp_Segformer",
        ),
        ("UPerNet", json!({"decoder_channels": 8}), "smp_UPerNet"),
    ];
    for (name, args, case) in cases {
        let m = build(name, &TINY, args).unwrap();
        let want = Fixture::load(case).meta["out_channels"].as_i64().unwrap();
        assert_eq!(m.out_channels(), vec![want], "{name}");
        assert!(!m.includes_head(), "{name}");
    }
    let m = build(
        "DPT",
        &[16; 4],
        json!({"decoder_intermediate_channels": [8, 8, 16, 16], "decoder_fusion_channels": 8}),
    )
    .unwrap();
    assert_eq!(m.out_channels(), vec![8]);
}

#[test]
fn output_shapes() {
    let xs = maps(&TINY, 32);
    let cases = [
        (
            "MAnet",
            json!({"decoder_channels": [16, 16, 8, 8], "decoder_pab_channels": 4}),
            [2, 8, 32, 32],
        ),
        (
            "UnetPlusPlus",
            json!({"decoder_channels": [16, 16, 8, 4]}),
            [2, 4, 32, 32],
        ),
        // A quarter of the first map's size.
        (
            "Segformer",
            json!({"decoder_segmentation_channels": 8}),
            [2, 8, 8, 8],
        ),
        // The third map's size.
        ("UPerNet", json!({"decoder_channels": 8}), [2, 8, 8, 8]),
    ];
    for (name, args, shape) in cases {
        let m = build(name, &TINY, args).unwrap();
        let ys = run(&m, &xs).unwrap();
        assert_eq!(ys.len(), 1, "{name}");
        assert_eq!(ys[0].size(), shape.to_vec(), "{name}");
    }
}

#[test]
fn smp_defaults_are_declared() {
    let sources = plugin_sources().unwrap();
    let default = declared_default;
    // smp 0.6.0's constructor defaults.
    assert_eq!(default("DPT", "decoder_readout"), json!("cat"));
    assert_eq!(
        default("DPT", "decoder_intermediate_channels"),
        json!([256, 512, 1024, 1024])
    );
    assert_eq!(default("DPT", "decoder_fusion_channels"), json!(256));
    assert_eq!(
        default("MAnet", "decoder_channels"),
        json!([256, 128, 64, 32, 16])
    );
    assert_eq!(default("MAnet", "decoder_pab_channels"), json!(64));
    assert_eq!(default("MAnet", "decoder_use_norm"), json!("batchnorm"));
    assert_eq!(default("MAnet", "decoder_interpolation"), json!("nearest"));
    assert_eq!(
        default("Segformer", "decoder_segmentation_channels"),
        json!(256)
    );
    assert_eq!(default("UPerNet", "decoder_channels"), json!(256));
    assert_eq!(default("UPerNet", "decoder_use_norm"), json!("batchnorm"));
    assert_eq!(
        default("UnetPlusPlus", "decoder_channels"),
        json!([256, 128, 64, 32, 16])
    );
    assert_eq!(
        default("UnetPlusPlus", "decoder_attention_type"),
        Value::Null
    );
    // Every smp decoder takes the aux_* arguments, whoever registered it.
    let names: Vec<String> = sources[0]
        .source
        .names()
        .into_iter()
        .map(|n| n.into_string())
        .collect();
    for mine in [
        "Unet",
        "DPT",
        "MAnet",
        "Segformer",
        "UPerNet",
        "UnetPlusPlus",
    ] {
        assert!(
            names.iter().any(|n| n == mine),
            "{mine} is not registered: {names:?}"
        );
    }
    for entry in names.iter().map(String::as_str) {
        for a in [
            "aux_classes",
            "aux_pooling",
            "aux_dropout",
            "aux_activation",
        ] {
            assert_eq!(default(entry, a), Value::Null, "{entry}.{a}");
        }
    }
}

#[test]
fn argument_errors_name_the_argument() {
    let dc4 = json!([16, 16, 8, 8]);
    let cases: Vec<(&str, Vec<i64>, Value, &str)> = vec![
        // smp's defaults have five decoder channels; five maps make a depth of four.
        (
            "MAnet",
            TINY.to_vec(),
            json!({}),
            "Model depth is 4, but you provide `decoder_channels` for 5 blocks.",
        ),
        (
            "UnetPlusPlus",
            TINY.to_vec(),
            json!({}),
            "Model depth is 4, but you provide `decoder_channels` for 5 blocks.",
        ),
        (
            "UnetPlusPlus",
            vec![16, 32],
            json!({"decoder_channels": [8]}),
            "at least three feature maps",
        ),
        (
            "UnetPlusPlus",
            TINY.to_vec(),
            json!({"decoder_channels": dc4, "decoder_attention_type": "cbam"}),
            "Attention cbam is not implemented",
        ),
        (
            "MAnet",
            TINY.to_vec(),
            json!({"decoder_channels": dc4, "decoder_pab_channels": 0}),
            "decoder_pab_channels",
        ),
        (
            "MAnet",
            TINY.to_vec(),
            json!({"decoder_channels": dc4, "decoder_interpolation": "linear"}),
            "decoder_interpolation",
        ),
        (
            "MAnet",
            TINY.to_vec(),
            json!({"decoder_channels": dc4, "decoder_use_batchnorm": "groupnorm"}),
            "decoder_use_batchnorm",
        ),
        (
            "Segformer",
            vec![16, 32, 64],
            json!({}),
            "Encoder depth for Segformer decoder cannot be less than 3, got 2",
        ),
        (
            "Segformer",
            TINY.to_vec(),
            json!({"decoder_segmentation_channels": 0}),
            "decoder_segmentation_channels",
        ),
        (
            "UPerNet",
            vec![16, 32, 64],
            json!({}),
            "Encoder depth for UPerNet decoder cannot be less than 3, got 2",
        ),
        (
            "UPerNet",
            TINY.to_vec(),
            json!({"decoder_channels": [8]}),
            "decoder_channels",
        ),
        // smp.UPerNet has no deprecated alias: TerraTorch would hand it to the encoder and fail.
        (
            "UPerNet",
            TINY.to_vec(),
            json!({"decoder_use_batchnorm": true}),
            "decoder_use_batchnorm",
        ),
        ("DPT", vec![16; 3], json!({}), "must have the same length"),
        (
            "DPT",
            vec![16; 4],
            json!({"decoder_readout": "mean"}),
            "Invalid decoder readout mode",
        ),
        (
            "DPT",
            vec![16; 2],
            json!({"decoder_intermediate_channels": [8, 0]}),
            "decoder_intermediate_channels",
        ),
        (
            "DPT",
            vec![16; 2],
            json!({"decoder_intermediate_channels": [8, 8], "encoder_output_strides": [16, -1]}),
            "encoder_output_strides",
        ),
    ];
    for (name, ch, args, needle) in cases {
        let e = build_err(name, &ch, args.clone());
        assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT, "{name} {args}: {e}");
        assert!(e.message().contains(needle), "{name} {args}: {e}");
    }
}

#[test]
fn forward_checks_its_inputs() {
    let m = build(
        "MAnet",
        &TINY,
        json!({"decoder_channels": [16, 16, 8, 8], "decoder_pab_channels": 4}),
    )
    .unwrap();
    let e = run(&m, &maps(&TINY, 32)[..4]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::FORWARD_FAILED);
    assert!(e.message().contains("5 feature maps"), "{e}");
    let mut xs = maps(&TINY, 32);
    xs[2] = input(2, &[2, 8, 8, 8]);
    let e = run(&m, &xs).unwrap_err();
    assert!(e.message().contains("feature map 2 has 8 channels"), "{e}");

    // UPerNet never reads the 1/1 and 1/2 maps, so their widths are free (as in smp).
    let m = build("UPerNet", &TINY, json!({"decoder_channels": 8})).unwrap();
    let mut xs = maps(&TINY, 32);
    xs[1] = input(1, &[2, 3, 16, 16]);
    assert_eq!(run(&m, &xs).unwrap()[0].size(), vec![2, 8, 8, 8]);
}

#[test]
fn dpt_needs_prefix_tokens_unless_it_ignores_them() {
    let args = json!({"decoder_intermediate_channels": [4, 4], "decoder_fusion_channels": 4, "encoder_output_strides": [4, 8]});
    let xs = vec![input(0, &[1, 6, 8, 8]), input(1, &[1, 6, 4, 4])];
    let tokens = vec![input(2, &[1, 1, 6]), input(3, &[1, 1, 6])];
    let m = build("DPT", &[6, 6], args.clone()).unwrap();
    let e = run(&m, &xs).unwrap_err();
    assert_eq!(e.kind, ErrorKind::FORWARD_FAILED);
    assert!(e.message().contains("prefix tokens"), "{e}");
    let all: Vec<Tensor> = xs
        .iter()
        .chain(&tokens)
        .map(|t| t.shallow_clone())
        .collect();
    assert_eq!(run(&m, &all).unwrap()[0].size(), vec![1, 4, 16, 16]);

    // "ignore" builds no projection and runs with or without the tokens, identically.
    let mut ignore = args.clone();
    ignore["decoder_readout"] = json!("ignore");
    let m = build("DPT", &[6, 6], ignore).unwrap();
    assert!(keys_and_shapes(&m)
        .iter()
        .all(|(k, _)| !k.contains("projection_blocks")));
    let a = run(&m, &xs).unwrap();
    let b = run(&m, &all).unwrap();
    assert!(a[0].allclose(&b[0], 0.0, 0.0, false));

    let bad = vec![
        xs[0].shallow_clone(),
        xs[1].shallow_clone(),
        input(2, &[1, 1, 5]),
        input(3, &[1, 1, 6]),
    ];
    let m = build("DPT", &[6, 6], args).unwrap();
    let e = run(&m, &bad).unwrap_err();
    assert!(e.message().contains("prefix tokens 0"), "{e}");
}

#[test]
fn dpt_keys_follow_smps_layout() {
    // The fixture's key list came from smp; check the layout choices that depend on the strides.
    let m = build(
        "DPT",
        &[16; 4],
        json!({"decoder_intermediate_channels": [8, 8, 16, 16], "decoder_fusion_channels": 8}),
    )
    .unwrap();
    let keys = keys_and_shapes(&m);
    let find = |k: &str| keys.iter().find(|(n, _)| n == k).map(|(_, s)| s.clone());
    // factor 16/4 = 4: ConvTranspose2d(8, 8, 4, stride 4); 16/16 = 1: no resampling; 16/32: strided conv.
    assert_eq!(
        find("_smp_decoder.reassemble_blocks.0.upsample.weight"),
        Some(vec![8, 8, 4, 4])
    );
    assert_eq!(
        find("_smp_decoder.reassemble_blocks.2.upsample.weight"),
        None
    );
    assert_eq!(
        find("_smp_decoder.reassemble_blocks.3.upsample.weight"),
        Some(vec![16, 16, 3, 3])
    );
    // "cat" with a class token: Linear(2C, C).
    assert_eq!(
        find("_smp_decoder.projection_blocks.0.project.0.weight"),
        Some(vec![16, 32])
    );
}

#[test]
fn aux_arguments_add_nothing_to_the_module() {
    let dc = json!([16, 16, 8, 8]);
    let plain = build("Unet", &TINY, json!({"decoder_channels": dc})).unwrap();
    let aux = build(
        "Unet",
        &TINY,
        json!({"decoder_channels": dc, "aux_classes": 3, "aux_pooling": "max"}),
    )
    .unwrap();
    assert_eq!(keys_and_shapes(&aux), keys_and_shapes(&plain));
    assert!(keys_and_shapes(&aux)
        .iter()
        .all(|(k, _)| !k.contains("classification_head")));
    assert_eq!(aux.out_channels(), plain.out_channels());
    // The head smp would have built (on the deepest map), as the wrapper records it.
    assert_eq!(
        aux.meta()["aux_params"],
        json!({"in_channels": 128, "classes": 3, "pooling": "max", "dropout": 0.2, "activation": null})
    );
    assert!(plain.meta().get("aux_params").is_none());
    // One output, not a (mask, label) pair (the fixture's meta: forward_returns "Tensor").
    assert_eq!(
        Fixture::load("smp_Unet_aux").meta["forward_returns"],
        json!("Tensor")
    );
    let ys = run(&aux, &maps(&TINY, 32)).unwrap();
    assert_eq!(ys.len(), 1);

    // Every smp decoder takes them, including part A's.
    for (name, ch, args) in [
        (
            "MAnet",
            TINY.to_vec(),
            json!({"decoder_channels": dc, "aux_classes": 2}),
        ),
        (
            "UPerNet",
            TINY.to_vec(),
            json!({"decoder_channels": 8, "aux_classes": 2, "aux_dropout": 0.5}),
        ),
        (
            "DPT",
            vec![16; 4],
            json!({"aux_classes": 2, "aux_activation": "softmax"}),
        ),
    ] {
        let m = build(name, &ch, args).unwrap();
        assert_eq!(m.meta()["aux_params"]["classes"], json!(2), "{name}");
    }
}

#[test]
fn aux_argument_errors_match_smp() {
    let dc = json!([16, 16, 8, 8]);
    // Messages of TerraTorch + smp, recorded in the fixture's meta.
    let fx = Fixture::load("smp_Unet_aux");
    let reference = &fx.meta["aux_errors"];
    assert!(reference["bad pooling"]
        .as_str()
        .unwrap()
        .contains("Pooling should be one of ('max', 'avg'), got mean."));
    let cases = [
        (
            json!({"decoder_channels": dc, "aux_params": {"classes": 3}}),
            "aux_classes",
        ),
        (
            json!({"decoder_channels": dc, "aux_pooling": "max"}),
            "no `aux_classes`",
        ),
        (
            json!({"decoder_channels": dc, "aux_classes": 3, "aux_pooling": "mean"}),
            "Pooling should be one of ('max', 'avg'), got \"mean\"",
        ),
        (
            json!({"decoder_channels": dc, "aux_classes": 3, "aux_dropout": 1.5}),
            "aux_dropout",
        ),
        (
            json!({"decoder_channels": dc, "aux_classes": 3, "aux_activation": "foo"}),
            "aux_activation",
        ),
        (
            json!({"decoder_channels": dc, "aux_classes": -1}),
            "aux_classes",
        ),
        (json!({"decoder_channels": dc, "aux_foo": 1}), "aux_foo"),
    ];
    for (args, needle) in cases {
        let e = build_err("Unet", &TINY, args.clone());
        assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT, "{args}: {e}");
        assert!(e.message().contains(needle), "{args}: {e}");
    }
}
