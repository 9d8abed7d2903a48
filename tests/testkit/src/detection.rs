//! The object-detection factory fixtures of `scripts/reference/detection_factory_fixtures.py`
//! (`tests/fixtures/detection_factory/<case>.{json,safetensors}`): TerraTorch 1.2.13's
//! ObjectDetectionModelFactory with refkit's synthetic weights, the detection heads' weight
//! matrices from the script's `hashed`, and each image's detections.

use crate::{keys_and_shapes, set_synthetic, workspace_root};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use tch::{Kind, Tensor};
use terrahost::Host;
use terrahost_plugin_api::sdk::DynModule;

/// A fixture's meta (`args`, `state_dict`, `hashed_weights`, `detections_per_image`) and
/// tensors (`input`, `boxes.{i}`, `scores.{i}`, `labels.{i}`, `masks.{i}`).
pub fn fixture(case: &str) -> (Value, HashMap<String, Tensor>) {
    let dir = workspace_root().join("tests/fixtures/detection_factory");
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

/// The fixture cases (`<case>.json` files), sorted.
pub fn fixture_cases() -> Vec<String> {
    let dir = workspace_root().join("tests/fixtures/detection_factory");
    let mut cases: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json").map(str::to_owned)
        })
        .collect();
    cases.sort();
    cases
}

/// The script's `hashed`: `((i * i) mod 10007)` mapped to [-1, 1), times
/// `3 / sqrt(fan_in)`, integer arithmetic then float64 as there.
pub fn hashed(shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let i = Tensor::arange(n, (Kind::Int64, tch::Device::Cpu));
    let v = (&i * &i).remainder(10007).to_kind(Kind::Double) / 10007.0 * 2.0 - 1.0;
    let fan_in = (n as f64 / shape[0] as f64).powf(0.5);
    (v * 3.0 / fan_in).reshape(shape).to_kind(Kind::Float)
}

/// Whether the script sets `key` with [`hashed`] (its `is_hashed`): the R-CNN box and mask
/// heads' and the FCOS / RetinaNet heads' weight matrices and kernels.
pub fn is_hashed(key: &str, t: &Tensor) -> bool {
    (key.starts_with("torchvision_model.roi_heads.") || key.starts_with("torchvision_model.head."))
        && t.dim() >= 2
}

/// The fixtures' weights: refkit's synthetic ones, [`is_hashed`] keys from [`hashed`].
pub fn set_weights(m: &DynModule) {
    set_synthetic(m);
    tch::no_grad(|| {
        for (k, mut t) in m.state_dict() {
            if is_hashed(&k, &t) {
                t.copy_(&hashed(&t.size()));
            }
        }
    });
}

/// The largest absolute difference (0 for empty tensors).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    if a.numel() == 0 {
        return 0.0;
    }
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Builds the fixture's model through `host`'s ObjectDetectionModelFactory, checks
/// TerraTorch's state_dict keys and shapes, sets the weights and compares every image's
/// detections: boxes within 1e-3 px, scores within 1e-4, labels (and their order) exact,
/// masks within 1e-4. `per_image` are the output names of one image.
pub fn check_detection_fixture(host: &Host, case: &str, per_image: &[&str]) {
    check_detection_fixture_within(host, case, per_image, 1e-3);
}

/// [`check_detection_fixture`] with the boxes within `box_tol` px (for a fixture whose
/// float32 reference is itself further than 1e-3 px from its float64 run).
pub fn check_detection_fixture_within(host: &Host, case: &str, per_image: &[&str], box_tol: f64) {
    let (meta, want) = fixture(case);
    let args: Map<String, Value> = meta["args"].as_object().unwrap().clone();
    let module = host
        .build("model_factory", "ObjectDetectionModelFactory", &args, None)
        .unwrap_or_else(|e| panic!("{case}: {e}"));

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

    let mut hashed_keys: Vec<String> = module
        .state_dict()
        .into_iter()
        .filter(|(k, t)| is_hashed(k, t))
        .map(|(k, _)| k)
        .collect();
    hashed_keys.sort();
    let mut want_hashed: Vec<String> = meta["hashed_weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    want_hashed.sort();
    assert_eq!(
        hashed_keys, want_hashed,
        "{case}: the weights set by `hashed`"
    );

    assert_eq!(
        module.meta()["output_names_per_image"],
        json!(per_image),
        "{case}: output names"
    );
    set_weights(&module);
    let out = tch::no_grad(|| module.forward(&[want["input"].shallow_clone()])).unwrap();
    let counts = meta["detections_per_image"].as_array().unwrap();
    assert_eq!(out.len(), counts.len() * per_image.len(), "{case}: outputs");
    for (i, n) in counts.iter().enumerate() {
        assert!(
            n.as_i64().unwrap() > 0,
            "{case}: the fixture must have detections"
        );
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
                    assert!(d <= box_tol, "{case}: {key} differs by {d} px");
                }
                _ => {
                    let d = max_abs_diff(got, w);
                    assert!(d <= 1e-4, "{case}: {key} differs by {d}");
                }
            }
        }
    }
}
