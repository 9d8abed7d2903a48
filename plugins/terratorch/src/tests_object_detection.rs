//! ObjectDetectionModelFactory (`faster-rcnn`, `mask-rcnn`): parity with TerraTorch 1.2.13
//! on the fixtures of `scripts/reference/detection_factory_fixtures.py` (a tiny Prithvi ViT
//! with TerraTorch's detection necks, synthetic weights with the heads' matrices hashed, two
//! 64x64 images with detections), TerraTorch's state_dict keys, and the arguments
//! TerraTorch and torchvision refuse. The timm-backbone case is in the integration tests
//! (`cross_plugin.rs`).

use serde_json::{json, Map, Value};
use terrahost_plugin_api::sdk::DynModule;
use terrahost_testkit::detection::{check_detection_fixture, fixture, max_abs_diff, set_weights};
use terrahost_testkit::host_with;

fn build(args: &Map<String, Value>) -> terrahost_plugin_api::Result<DynModule> {
    let host = host_with(crate::plugin_sources().unwrap());
    host.build("model_factory", "ObjectDetectionModelFactory", args, None)
}

fn check_parity(case: &str, per_image: &[&str]) {
    let host = host_with(crate::plugin_sources().unwrap());
    check_detection_fixture(&host, case, per_image);
}

#[test]
fn object_detection_faster_rcnn_matches_terratorch() {
    check_parity("faster_rcnn_prithvi", &["boxes", "scores", "labels"]);
}

#[test]
fn object_detection_mask_rcnn_matches_terratorch() {
    check_parity("mask_rcnn_prithvi", &["boxes", "scores", "labels", "masks"]);
}

fn base_args(framework: &str) -> Map<String, Value> {
    let (meta, _) = fixture("faster_rcnn_prithvi");
    let mut args = meta["args"].as_object().unwrap().clone();
    args.insert("framework".into(), json!(framework));
    args
}

fn refusal(args: &Map<String, Value>) -> String {
    match build(args) {
        Ok(_) => panic!("built, but should be refused: {args:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn object_detection_refuses_frameworks_not_ported_with_the_reason() {
    for (fw, what) in [
        ("fcos", "FCOS"),
        ("retinanet", "RetinaNet"),
        ("rf-detr", "RF-DETR"),
    ] {
        let e = refusal(&base_args(fw));
        assert!(e.contains(what) && e.contains("not ported"), "{fw}: {e}");
    }
    let e = refusal(&base_args("Faster-RCNN"));
    assert!(
        e.contains("Framework type 'Faster-RCNN' is not valid."),
        "{e}"
    );
}

#[test]
fn object_detection_refuses_what_terratorch_and_torchvision_refuse() {
    let mut a = base_args("faster-rcnn");
    a.insert("task".into(), json!("Segmentation"));
    let e = refusal(&a);
    assert!(
        e.contains("Task segmentation not supported. Please choose one of ['object_detection']"),
        "{e}"
    );

    let mut a = base_args("faster-rcnn");
    a.remove("num_classes");
    let e = refusal(&a);
    assert!(e.contains("num_classes should not be None"), "{e}");

    let mut a = base_args("faster-rcnn");
    a.remove("backbone_bands");
    let e = refusal(&a);
    assert!(e.contains("KeyError: 'bands'"), "{e}");

    let mut a = base_args("faster-rcnn");
    a.insert("framework_image_mean".into(), json!([0.5]));
    let e = refusal(&a);
    assert!(
        e.contains("FasterRCNN() got multiple values for keyword argument 'image_mean'"),
        "{e}"
    );
    let mut a = base_args("faster-rcnn");
    a.insert("framework_num_classes".into(), json!(3));
    let e = refusal(&a);
    assert!(
        e.contains("FasterRCNN.__init__() got multiple values for argument 'num_classes'"),
        "{e}"
    );
    let mut a = base_args("mask-rcnn");
    a.insert("framework_rpn_head".into(), json!("RPNHead"));
    let e = refusal(&a);
    assert!(
        e.contains("MaskRCNN() got multiple values for keyword argument 'rpn_head'"),
        "{e}"
    );
    let mut a = base_args("faster-rcnn");
    a.insert("framework_box_head".into(), json!("TwoMLPHead"));
    let e = refusal(&a);
    assert!(e.contains("torch module"), "{e}");

    // Without FeaturePyramidNetworkNeck last, torchvision gets a list and fails.
    let mut a = base_args("faster-rcnn");
    let mut necks = a["necks"].as_array().unwrap().clone();
    necks.pop();
    a.insert("necks".into(), Value::Array(necks));
    let e = refusal(&a);
    assert!(
        e.contains("FeaturePyramidNetworkNeck") && e.contains("'list'"),
        "{e}"
    );
}

/// TerraTorch 1.2.13 does not check leftover arguments, and torchvision's transform
/// swallows unknown `framework_*` ones: both build (with a warning), as upstream.
#[test]
fn object_detection_accepts_the_arguments_terratorch_ignores() {
    let mut a = base_args("faster-rcnn");
    a.insert("framework_not_an_argument".into(), json!(1));
    a.insert("unprefixed".into(), json!("x"));
    a.insert("framework_rpn_fg_iou_thresh".into(), json!(0.6));
    a.insert("in_channels".into(), json!(3));
    build(&a).unwrap();
}

/// `framework_*` thresholds reach torchvision's inference: a score threshold above every
/// score leaves no detections, and `box_detections_per_img` caps them.
#[test]
fn object_detection_framework_arguments_reach_the_heads() {
    let (meta, want) = fixture("faster_rcnn_prithvi");
    let x = want["input"].shallow_clone();
    let run = |key: &str, v: Value| {
        let mut a = meta["args"].as_object().unwrap().clone();
        a.insert(key.into(), v);
        let m = build(&a).unwrap();
        set_weights(&m);
        tch::no_grad(|| m.forward(&[x.shallow_clone()])).unwrap()
    };
    let out = run("framework_box_score_thresh", json!(1.0));
    assert_eq!(out[0].size(), vec![0, 4]);
    assert_eq!(out[3].size(), vec![0, 4]);
    let out = run("framework_box_detections_per_img", json!(2));
    assert_eq!(out[0].size(), vec![2, 4]);
    assert!(max_abs_diff(&out[0], &want["boxes.0"].narrow(0, 0, 2)) <= 1e-3);
}
