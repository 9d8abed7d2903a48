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
