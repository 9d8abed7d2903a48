//! Tests of TerraTorch's `UNet` and `IdentityBackbone` backbones (`models/unet.rs`,
//! `models/identity_backbone.rs`): parity with the fixtures of
//! `scripts/reference/cases/unet_identity.py`, out_channels and argument errors.

use serde_json::{json, Map, Value};
use terrahost_testkit::{check_fixture, host_with};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("a JSON object").clone()
}

fn parity(case: &str) {
    check_fixture(crate::plugin_sources().unwrap(), case);
}

#[test]
fn unet_default_stages_match_terratorch() {
    parity("terratorch_UNet");
}

#[test]
fn unet_strided_dilated_matches_terratorch() {
    parity("terratorch_UNet_strided_dilated");
}

#[test]
fn unet_without_pooling_matches_terratorch() {
    parity("terratorch_UNet_no_pool");
}

#[test]
fn identity_backbone_matches_terratorch() {
    parity("terratorch_IdentityBackbone");
}

fn build_err(name: &str, args: Value) -> String {
    let host = host_with(crate::plugin_sources().unwrap());
    match host.build("backbone", name, &obj(args), None) {
        Ok(_) => panic!("{name}: expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unet_channels_and_refusals() {
    let host = host_with(crate::plugin_sources().unwrap());
    let m = host.build("backbone", "UNet", &Map::new(), None).unwrap();
    assert_eq!(m.out_channels(), vec![1024, 512, 256, 128, 64]);
    let e = build_err("UNet", json!({"num_stages": 3}));
    assert!(e.contains("strides"), "{e}");
    let e = build_err("UNet", json!({"pretrained": false}));
    assert!(e.contains("pretrained") && e.contains("str or None"), "{e}");
    let e = build_err("UNet", json!({"dcn": {"type": "DCN"}}));
    assert!(e.contains("dcn"), "{e}");
    let e = build_err("UNet", json!({"upsample_cfg": {"type": "InterpConv"}}));
    assert!(e.contains("upsample_cfg"), "{e}");
    let e = build_err("UNet", json!({"out_chans": 8}));
    assert!(e.contains("out_chans"), "{e}");
    // the input must be divisible by the downsampling rate (16 with 5 stages)
    let x = tch::Tensor::zeros([1, 3, 24, 24], (tch::Kind::Float, tch::Device::Cpu));
    let e = tch::no_grad(|| m.forward(&[x])).expect_err("24 is not divisible by 16");
    assert!(e.to_string().contains("divisible"), "{e}");
}

#[test]
fn identity_backbone_reports_given_channels() {
    let host = host_with(crate::plugin_sources().unwrap());
    let m = host
        .build("backbone", "IdentityBackbone", &Map::new(), None)
        .unwrap();
    assert!(m.out_channels().is_empty());
    let e = build_err("IdentityBackbone", json!({"in_chans": 3}));
    assert!(e.contains("in_chans"), "{e}");
}

/// GenericUnetModelFactory against TerraTorch's model for the same synthetic weights.
fn generic_unet_reproduces(case: &str) {
    let fx = terrahost_testkit::Fixture::load(case);
    let host = host_with(crate::plugin_sources().unwrap());
    let module = host
        .build("model_factory", "GenericUnetModelFactory", &fx.args(), None)
        .unwrap();
    // tch's BatchNorm has no `num_batches_tracked` (unused in eval); the rest must match
    let weights: std::collections::HashMap<String, tch::Tensor> = fx
        .weights()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect();
    let sd = module.state_dict();
    assert_eq!(
        sd.len(),
        weights.len(),
        "{case}: TerraTorch's state_dict size"
    );
    tch::no_grad(|| {
        for (k, mut t) in sd {
            let w = weights
                .get(&k)
                .unwrap_or_else(|| panic!("{case}: `{k}` is not a TerraTorch key"));
            assert_eq!(t.size(), w.size(), "{k}");
            t.copy_(w);
        }
    });
    let y = tch::no_grad(|| module.forward(&fx.inputs)).unwrap();
    assert_eq!(y.len(), 1);
    terrahost_testkit::assert_close(case, &y[0], &fx.outputs[0], 1e-4);
}

#[test]
fn generic_unet_factory_segmentation_matches_terratorch() {
    generic_unet_reproduces("factory_generic_unet_segmentation");
}

#[test]
fn generic_unet_factory_regression_squeezes_like_terratorch() {
    generic_unet_reproduces("factory_generic_unet_regression");
}

#[test]
fn generic_unet_factory_refusals() {
    let host = host_with(crate::plugin_sources().unwrap());
    let build_err = |args: Value| {
        host.build("model_factory", "GenericUnetModelFactory", &obj(args), None)
            .err()
            .expect("refused")
            .to_string()
    };
    let e = build_err(json!({"task": "classification", "backbone": "UNet"}));
    assert!(e.contains("pixel wise"), "{e}");
    let e = build_err(json!({"backbone": "timm_resnet18"}));
    assert!(e.contains("backbone") && e.contains("UNet"), "{e}");
    let e = build_err(json!({"backbone": "UNet", "decoder": "UNetDecoder"}));
    assert!(e.contains("decoder"), "{e}");
    let e = build_err(json!({"task": "segmentation"}));
    assert!(e.contains("backbone"), "{e}");
    let m = host
        .build(
            "model_factory",
            "GenericUnetModelFactory",
            &obj(json!({"task": "regression", "backbone": "UNet", "regression_relu": true,
                        "backbone_num_stages": 1, "backbone_strides": [1], "backbone_enc_num_convs": [1],
                        "backbone_dec_num_convs": [], "backbone_downsamples": [], "backbone_enc_dilations": [1],
                        "backbone_dec_dilations": [], "backbone_out_channels": 2})),
            None,
        )
        .unwrap();
    let x = tch::Tensor::zeros([1, 3, 4, 4], (tch::Kind::Float, tch::Device::Cpu));
    let e = tch::no_grad(|| m.forward(&[x])).expect_err("ReLU on a list fails upstream");
    assert!(e.to_string().contains("regression_relu"), "{e}");
}
