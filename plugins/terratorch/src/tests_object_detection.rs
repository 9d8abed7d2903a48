//! ObjectDetectionModelFactory (`faster-rcnn`, `mask-rcnn`): parity with TerraTorch 1.2.13
//! on the fixtures of `scripts/reference/detection_factory_fixtures.py` (a tiny Prithvi ViT
//! with TerraTorch's detection necks, synthetic weights (the heads' matrices hashed), two 64x64 images with detections),
//! TerraTorch's state_dict keys, and the arguments TerraTorch and torchvision refuse.

use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};
use terrahost_plugin_api::sdk::DynModule;
use terrahost_testkit::{host_with, keys_and_shapes, set_synthetic};

fn fixture(case: &str) -> (Value, HashMap<String, Tensor>) {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/detection_factory");
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{case}.json")))
            .unwrap_or_else(|e| panic!("{case}.json: {e}")),
    )
    .unwrap();
    let tensors = Tensor::read_safetensors(dir.join(format!("{case}.safetensors")))
        .unwrap()
        .into_iter()
        .collect();
    (meta, tensors)
}

fn build(args: &Map<String, Value>) -> terrahost_plugin_api::Result<DynModule> {
    let host = host_with(crate::plugin_sources().unwrap());
    host.build("model_factory", "ObjectDetectionModelFactory", args, None)
}

/// The fixture script's `hashed`: `((i * i) mod 10007)` mapped to [-1, 1), times
/// `3 / sqrt(fan_in)`, integer arithmetic then float64 as there.
fn hashed(shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let i = Tensor::arange(n, (Kind::Int64, tch::Device::Cpu));
    let v = (&i * &i).remainder(10007).to_kind(Kind::Double) / 10007.0 * 2.0 - 1.0;
    let fan_in = (n as f64 / shape[0] as f64).powf(0.5);
    (v * 3.0 / fan_in).reshape(shape).to_kind(Kind::Float)
}

/// The fixtures' weights: refkit's synthetic ones, the R-CNN heads' weight matrices
/// from [`hashed`] (the script's `is_hashed`).
fn set_weights(m: &DynModule) {
    set_synthetic(m);
    tch::no_grad(|| {
        for (k, mut t) in m.state_dict() {
            if k.starts_with("torchvision_model.roi_heads.") && t.dim() >= 2 {
                t.copy_(&hashed(&t.size()));
            }
        }
    });
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    if a.numel() == 0 {
        return 0.0;
    }
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Builds the fixture's model through the factory, checks TerraTorch's state_dict keys and
/// shapes, sets the synthetic weights and compares every image's detections: boxes within
/// 1e-3 px, scores within 1e-4, labels (and their order) exact, masks within 1e-4.
fn check_parity(case: &str, per_image: &[&str]) {
    let (meta, want) = fixture(case);
    let args = meta["args"].as_object().unwrap().clone();
    let module = build(&args).unwrap_or_else(|e| panic!("{case}: {e}"));

    let mut want_keys: Vec<(String, Vec<i64>)> = meta["state_dict"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, v)| {
            let shape = v
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            (k.clone(), shape)
        })
        .collect();
    want_keys.sort();
    let got_keys: Vec<(String, Vec<i64>)> = keys_and_shapes(&module)
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect();
    assert_eq!(got_keys, want_keys, "{case}: state_dict keys and shapes");

    assert_eq!(
        module.meta()["output_names_per_image"],
        json!(per_image),
        "{case}: output names"
    );
    let hashed_keys: Vec<String> = module
        .state_dict()
        .into_iter()
        .filter(|(k, t)| k.starts_with("torchvision_model.roi_heads.") && t.dim() >= 2)
        .map(|(k, _)| k)
        .collect();
    let mut want_hashed: Vec<String> = meta["hashed_weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    want_hashed.sort();
    let mut hashed_keys = hashed_keys;
    hashed_keys.sort();
    assert_eq!(
        hashed_keys, want_hashed,
        "{case}: the weights set by `hashed`"
    );
    set_weights(&module);
    let out = tch::no_grad(|| module.forward(&[want["input"].shallow_clone()])).unwrap();
    let counts = meta["detections_per_image"].as_array().unwrap();
    assert_eq!(out.len(), counts.len() * per_image.len(), "{case}: outputs");
    for (i, n) in counts.iter().enumerate() {
        let n = n.as_i64().unwrap();
        assert!(n > 0, "{case}: the fixture must have detections");
        for (j, name) in per_image.iter().enumerate() {
            let key = format!("{name}.{i}");
            let got = &out[i * per_image.len() + j];
            let w = &want[&key];
            assert_eq!(got.size(), w.size(), "{case}: {key} shape");
            assert_eq!(got.kind(), w.kind(), "{case}: {key} dtype");
            match *name {
                "labels" => assert!(got.equal(w), "{case}: {key}: got {got} want {w}"),
                "boxes" => {
                    let d = max_abs_diff(got, w);
                    assert!(d <= 1e-3, "{case}: {key} differs by {d} px");
                }
                _ => {
                    let d = max_abs_diff(got, w);
                    assert!(d <= 1e-4, "{case}: {key} differs by {d}");
                }
            }
        }
    }
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
        ("detr", "DETR"),
        ("deformable-detr", "Deformable DETR"),
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
