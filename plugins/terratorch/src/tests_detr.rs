//! ObjectDetectionModelFactory's `detr` and `deformable-detr`: parity with TerraTorch 1.2.13
//! on the fixtures of `scripts/reference/detr_fixtures.py` (the tiny Prithvi ViT and necks of
//! the R-CNN fixtures, refkit's synthetic backbone weights, seeded head weights stored in the
//! fixture, two 64x64 images), step by step (input projections, position encodings, encoder
//! memory, decoder output, logits and boxes) and per image (boxes, scores, labels), plus
//! TerraTorch's state_dict keys and the arguments TerraTorch refuses.

use crate::models::object_detection::args::front;
use crate::models::object_detection::backbone_wrapper::BackboneWrapper;
use crate::models::object_detection::detr::{read_config, DetrModel, PER_IMAGE_NAMES};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::sdk::DynModule;
use terrahost_testkit::detection::max_abs_diff;
use terrahost_testkit::{host_with, keys_and_shapes, synth, workspace_root};

/// A fixture's meta and tensors (`tests/fixtures/detr/<case>.{json,safetensors}`).
fn fixture(case: &str) -> (Value, HashMap<String, Tensor>) {
    let dir = workspace_root().join("tests/fixtures/detr");
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

fn args_of(meta: &Value) -> Map<String, Value> {
    meta["args"].as_object().unwrap().clone()
}

fn build(args: &Map<String, Value>) -> terrahost_plugin_api::Result<DynModule> {
    let host = host_with(crate::plugin_sources().unwrap());
    host.build("model_factory", "ObjectDetectionModelFactory", args, None)
}

/// The fixture's weights: refkit's `synth` on the backbone and necks, the stored `sd.<key>`
/// on the rest (every key of the head must be stored).
fn set_weights(state: Vec<(String, Tensor)>, want: &HashMap<String, Tensor>) {
    tch::no_grad(|| {
        for (k, mut t) in state {
            if k.starts_with("torchvision_model.backbone.") {
                t.copy_(&synth(&k, &t.size(), t.kind()));
            } else {
                let v = want
                    .get(&format!("sd.{k}"))
                    .unwrap_or_else(|| panic!("no stored weight for {k}"));
                t.copy_(v);
            }
        }
    });
}

fn close(got: &Tensor, want: &Tensor, tol: f64, what: &str) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let d = max_abs_diff(got, want);
    eprintln!("{what}: max abs difference {d:.3e}");
    assert!(d <= tol, "{what}: differs by {d} (tolerance {tol})");
}

/// The whole model through the host: TerraTorch's state_dict keys and shapes, then every
/// image's boxes within 1e-3 px, scores within 1e-4 and the same labels in the same order.
fn check_parity(case: &str) {
    let (meta, want) = fixture(case);
    let module = build(&args_of(&meta)).unwrap_or_else(|e| panic!("{case}: {e}"));
    let mut want_keys: Vec<(String, Vec<i64>)> = meta["state_dict"]
        .as_object()
        .unwrap()
        .iter()
        // BatchNorm's step counter is not a parameter terrahost keeps.
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
    let got_keys = keys_and_shapes(&module);
    let missing: Vec<_> = want_keys.iter().filter(|k| !got_keys.contains(k)).collect();
    let extra: Vec<_> = got_keys.iter().filter(|k| !want_keys.contains(k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{case}: state_dict keys and shapes: missing {missing:?}, unexpected {extra:?}"
    );
    assert_eq!(
        module.meta()["output_names_per_image"],
        json!(PER_IMAGE_NAMES),
        "{case}: output names"
    );
    set_weights(module.state_dict(), &want);
    let out = tch::no_grad(|| module.forward(&[want["input"].shallow_clone()])).unwrap();
    let counts = meta["detections_per_image"].as_array().unwrap();
    assert_eq!(out.len(), counts.len() * 3, "{case}: outputs");
    let mut labels_seen = std::collections::BTreeSet::new();
    for i in 0..counts.len() {
        let (boxes, scores, labels) = (&out[3 * i], &out[3 * i + 1], &out[3 * i + 2]);
        close(
            boxes,
            &want[&format!("boxes.{i}")],
            1e-3,
            &format!("{case}: boxes.{i}"),
        );
        close(
            scores,
            &want[&format!("scores.{i}")],
            1e-4,
            &format!("{case}: scores.{i}"),
        );
        let w = &want[&format!("labels.{i}")];
        assert_eq!(labels.kind(), w.kind(), "{case}: labels.{i} dtype");
        assert!(labels.equal(w), "{case}: labels.{i}: got {labels} want {w}");
        labels_seen.extend(Vec::<i64>::try_from(labels).unwrap());
    }
    assert!(
        labels_seen.len() > 1,
        "{case}: the fixture must have several labels"
    );
}

/// The model built piece by piece (backbone and necks through the host, the head here), so
/// each intermediate can be compared with TerraTorch's.
fn check_intermediates(case: &str, tol: f64) {
    let (meta, want) = fixture(case);
    let args = args_of(&meta);
    let host = host_with(crate::plugin_sources().unwrap());
    let f = front(&args).unwrap();
    let backbone = host
        .build("backbone", &f.backbone, &f.backbone_kwargs, None)
        .unwrap();
    let mut channels = backbone.out_channels();
    let mut necks = Vec::new();
    for n in &f.necks {
        let neck = host
            .build("neck", &n.name, &n.args, Some(&channels))
            .unwrap();
        channels = neck.out_channels();
        necks.push(neck);
    }
    let wrapper =
        BackboneWrapper::new("torchvision_model.backbone", backbone, necks, channels).unwrap();
    let mut state: Vec<(String, Tensor)> = Vec::new();
    for (prefix, m) in wrapper.children() {
        state.extend(
            m.state_dict()
                .into_iter()
                .map(|(k, t)| (format!("{prefix}.{k}"), t)),
        );
    }
    let cfg = read_config(f.framework, f.num_classes.as_ref(), &f.framework_kwargs).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = DetrModel::new(&vs, wrapper, &cfg).unwrap();
    state.extend(vs.variables());
    set_weights(state, &want);

    let parts = tch::no_grad(|| model.forward_parts(&want["input"])).unwrap();
    for (name, t) in &parts.named {
        close(t, &want[name], tol, &format!("{case}: {name}"));
    }
    // TerraTorch's `hs` stacks the decoder layers: the last one is the output.
    let hs = want["hs"].get(want["hs"].size()[0] - 1);
    close(&parts.hs, &hs, tol, &format!("{case}: hs[-1]"));
    close(
        &parts.pred_logits,
        &want["pred_logits"],
        tol,
        &format!("{case}: pred_logits"),
    );
    close(
        &parts.pred_boxes,
        &want["pred_boxes"],
        tol,
        &format!("{case}: pred_boxes"),
    );
}

#[test]
fn detr_matches_terratorch() {
    check_parity("detr_prithvi");
}

#[test]
fn detr_intermediates_match_terratorch() {
    check_intermediates("detr_prithvi", 1e-4);
}

#[test]
fn deformable_detr_matches_terratorch() {
    check_parity("deformable_detr_prithvi");
}

#[test]
fn deformable_detr_intermediates_match_terratorch() {
    check_intermediates("deformable_detr_prithvi", 1e-4);
}

fn refusal(args: &Map<String, Value>) -> String {
    match build(args) {
        Ok(_) => panic!("built, but should be refused: {args:?}"),
        Err(e) => e.to_string(),
    }
}

fn with(case: &str, key: &str, v: Value) -> Map<String, Value> {
    let (meta, _) = fixture(case);
    let mut a = args_of(&meta);
    a.insert(key.into(), v);
    a
}

/// What Python refuses with a TypeError at the wrappers' call, and what terrahost does not
/// port, are refused before anything is built, with the argument named.
#[test]
fn detr_refuses_what_terratorch_refuses() {
    let e = refusal(&with("detr_prithvi", "framework_not_an_argument", json!(1)));
    assert!(
        e.contains(
            "TerraTorchDETR.__init__() got an unexpected keyword argument 'not_an_argument'"
        ),
        "{e}"
    );
    // n_points belongs to Deformable DETR only.
    let e = refusal(&with("detr_prithvi", "framework_n_points", json!(2)));
    assert!(e.contains("unexpected keyword argument 'n_points'"), "{e}");
    let e = refusal(&with(
        "deformable_detr_prithvi",
        "framework_num_classes",
        json!(2),
    ));
    assert!(
        e.contains(
            "TerraTorchDeformableDETR.__init__() got multiple values for argument 'num_classes'"
        ),
        "{e}"
    );
    let e = refusal(&with("detr_prithvi", "framework_in_channels", json!(3)));
    assert!(
        e.contains("multiple values for keyword argument 'in_channels'"),
        "{e}"
    );
    let e = refusal(&with("detr_prithvi", "framework_masks", json!(true)));
    assert!(e.contains("mask head") && e.contains("not ported"), "{e}");
    let e = refusal(&with("detr_prithvi", "framework_nhead", json!(3)));
    assert!(e.contains("divisible"), "{e}");
    let e = refusal(&with(
        "deformable_detr_prithvi",
        "framework_d_model",
        json!(48),
    ));
    assert!(e.contains("GroupNorm(32"), "{e}");
    let e = refusal(&with(
        "deformable_detr_prithvi",
        "framework_num_feature_levels",
        json!(3),
    ));
    assert!(
        e.contains("num_feature_levels") && e.contains("4 feature maps"),
        "{e}"
    );
    let e = refusal(&with("detr_prithvi", "num_classes", Value::Null));
    assert!(e.contains("num_classes"), "{e}");
    let e = refusal(&with(
        "detr_prithvi",
        "framework_num_queries",
        json!("many"),
    ));
    assert!(
        e.contains("framework_num_queries") && e.contains("integer"),
        "{e}"
    );
}

/// Loss-only arguments are accepted (and warned about), as TerraTorch accepts them.
#[test]
fn detr_accepts_the_training_only_arguments() {
    let mut a = with("detr_prithvi", "framework_eos_coef", json!(0.2));
    a.insert("framework_dropout".into(), json!(0.0));
    build(&a).unwrap();
}

/// DETR reads the feature maps as a list: without the FPN neck (TerraTorch's R-CNNs need its
/// named maps) it runs on the last reshaped token map, every query a detection per image.
#[test]
fn detr_runs_without_the_fpn_neck() {
    let (meta, want) = fixture("detr_prithvi");
    let mut a = args_of(&meta);
    let mut necks = a["necks"].as_array().unwrap().clone();
    necks.truncate(2); // SelectIndices, ReshapeTokensToImage: four [B, 32, 4, 4] maps
    a.insert("necks".into(), Value::Array(necks));
    let module = build(&a).unwrap();
    let out = tch::no_grad(|| module.forward(&[want["input"].shallow_clone()])).unwrap();
    assert_eq!(out.len(), 6);
    for i in 0..2 {
        assert_eq!(out[3 * i].size(), [7, 4], "boxes.{i}");
        assert_eq!(out[3 * i + 1].size(), [7], "scores.{i}");
        let labels = Vec::<i64>::try_from(&out[3 * i + 2]).unwrap();
        assert!(
            labels.iter().all(|l| (0..3).contains(l)),
            "labels.{i}: {labels:?}"
        );
    }
}

/// Deformable DETR's PostProcess keeps 100 detections: fewer queries x classes fail upstream
/// (torch.topk) and here, at the forward, with the reason.
#[test]
fn deformable_detr_needs_100_candidates() {
    let (meta, want) = fixture("deformable_detr_prithvi");
    let mut a = args_of(&meta);
    a.insert("framework_num_queries".into(), json!(24));
    let module = build(&a).unwrap();
    let e = tch::no_grad(|| module.forward(&[want["input"].shallow_clone()]))
        .expect_err("24 x 4 < 100 candidates must fail")
        .to_string();
    assert!(e.contains("top 100") && e.contains("24 x 4"), "{e}");
}
