//! Tests of the TerraMind entries: parity with the reference fixtures of
//! `scripts/reference/cases/terramind.py` (the four backbones and a two-modality
//! factory model), named inputs, argument errors, and the refused registrations.

use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};
use terrahost_plugin_api::{sdk::DynModule, ErrorKind, PluginError};
use terrahost_testkit::{
    assert_close, check_fixture, compare_outputs, host_with, set_synthetic, Fixture,
};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("a JSON object").clone()
}

fn parity(case: &str) {
    check_fixture(crate::plugin_sources().unwrap(), case);
}

fn build(registry: &str, name: &str, args: Value) -> Result<DynModule, PluginError> {
    let host = host_with(crate::plugin_sources().unwrap());
    host.build(registry, name, &obj(args), None)
}

fn err(r: Result<DynModule, PluginError>) -> PluginError {
    match r {
        Ok(m) => panic!("`{}` was built, expected an error", m.label()),
        Err(e) => e,
    }
}

fn named(xs: &[(&str, &Tensor)]) -> Vec<(String, Tensor)> {
    xs.iter()
        .map(|(n, t)| ((*n).to_owned(), t.shallow_clone()))
        .collect()
}

#[test]
fn terramind_parity_v1_tiny_three_modalities_unmerged() {
    parity("terratorch_terramind_v1_tiny");
}

#[test]
fn terramind_parity_v1_small_bands_single_tensor_qk_norm() {
    parity("terratorch_terramind_v1_small");
}

#[test]
fn terramind_parity_v1_base_concat_with_a_missing_modality() {
    parity("terratorch_terramind_v1_base");
}

#[test]
fn terramind_parity_v1_large_max() {
    parity("terratorch_terramind_v1_large");
}

/// The whole model, built from the fixture's `model_args`, called with the dict
/// `{"S2L2A": .., "S1GRD": ..}` (the fixture's `input_names`).
#[test]
fn terramind_parity_factory_two_modalities_by_name() {
    let fx = Fixture::load("factory_terramind_multimodal");
    assert_eq!(fx.meta["input_names"], json!(["S2L2A", "S1GRD"]));
    let host = host_with(crate::plugin_sources().unwrap());
    let model = host
        .build("model_factory", "EncoderDecoderFactory", &fx.args(), None)
        .unwrap();
    let mut ours: Vec<String> = model.state_dict().into_iter().map(|(k, _)| k).collect();
    let mut theirs: Vec<String> = fx
        .keys
        .iter()
        .map(|(k, _, _)| k.clone())
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "state_dict keys");
    set_synthetic(&model);
    assert_eq!(model.meta()["input_names"], json!(["S2L2A", "S1GRD"]));
    compare_outputs(&fx, &model);
}

/// One tensor is the first modality: the same as passing it by that name.
#[test]
fn one_tensor_goes_to_the_first_modality_and_unknown_names_are_dropped() {
    let m = build(
        "backbone",
        "terramind_v1_tiny",
        json!({"modalities": ["S1GRD", "DEM"], "img_size": 32}),
    )
    .unwrap();
    let x = Tensor::randn([1, 2, 32, 32], (Kind::Float, tch::Device::Cpu));
    let a = tch::no_grad(|| m.forward(std::slice::from_ref(&x))).unwrap();
    let b = tch::no_grad(|| m.forward_named(&named(&[("S1GRD", &x)]), &Map::new())).unwrap();
    assert_eq!(a.len(), 12);
    assert_eq!(a[0].size(), vec![1, 4, 192]);
    for (a, b) in a.iter().zip(&b) {
        assert_close("positional vs named", a, b, 0.0);
    }
    // An input the model does not know is dropped, as upstream warns and drops it.
    let junk = Tensor::zeros([1, 5, 32, 32], (Kind::Float, tch::Device::Cpu));
    let c =
        tch::no_grad(|| m.forward_named(&named(&[("S1GRD", &x), ("junk", &junk)]), &Map::new()))
            .unwrap();
    assert_close("junk dropped", &c[11], &a[11], 0.0);
    // Only unknown names: an error that names what the model takes.
    let e = m
        .forward_named(&named(&[("junk", &junk)]), &Map::new())
        .unwrap_err();
    assert!(
        e.message().contains("No valid inputs") && e.message().contains("S1GRD, DEM"),
        "{e}"
    );
    // A wrong channel count is named with the modality.
    let e = m
        .forward_named(&named(&[("DEM", &x)]), &Map::new())
        .unwrap_err();
    assert!(
        e.message().contains("`DEM`") && e.message().contains("2 channels"),
        "{e}"
    );
}

#[test]
fn meta_reports_patch_size_and_input_names_and_concat_widens_out_channels() {
    let m = build(
        "backbone",
        "terramind_v1_small",
        json!({"modalities": ["S2L2A", "S1GRD", "RGB"], "merge_method": "concat"}),
    )
    .unwrap();
    let meta = m.meta();
    assert_eq!(meta["patch_size"], json!([16, 16]));
    assert_eq!(meta["input_names"], json!(["S2L2A", "S1GRD", "RGB"]));
    assert_eq!(m.out_channels(), vec![3 * 384; 12]);
    let keys: Vec<String> = m.state_dict().into_iter().map(|(k, _)| k).collect();
    for k in [
        "encoder_embeddings.untok_sen2l2a@224.proj.weight",
        "encoder_embeddings.untok_sen1grd@224.pos_emb",
        "encoder_embeddings.untok_sen2rgb@224.mod_emb",
        "missing_mod_token",
        "encoder.11.mlp.fc2.bias",
        "encoder_norm.bias",
    ] {
        assert!(keys.iter().any(|x| x == k), "missing {k}");
    }
}

#[test]
fn unsupported_modalities_and_options_are_refused_clearly() {
    let e = err(build(
        "backbone",
        "terramind_v1_base",
        json!({"modalities": ["S2L2A", "NDVI"]}),
    ));
    assert_eq!(e.kind, ErrorKind::NOT_SUPPORTED, "{e}");
    assert!(
        e.message().contains("`NDVI`")
            && e.message().contains("tok_ndvi@224")
            && e.message().contains("not supported yet"),
        "{e}"
    );
    let e = err(build(
        "backbone",
        "terramind_v1_base",
        json!({"modalities": ["S2L2A"], "merge_method": "dict"}),
    ));
    assert!(
        e.message().contains("dict") && e.message().contains("not supported yet"),
        "{e}"
    );
    let e = err(build(
        "backbone",
        "terramind_v1_base",
        json!({"pretrained": true}),
    ));
    assert!(e.message().contains("no downloads"), "{e}");
    // The presets fix the architecture (upstream: "got multiple values for keyword argument").
    let e = err(build("backbone", "terramind_v1_tiny", json!({"dim": 32})));
    assert!(e.message().contains("`dim`"), "{e}");
    let e = err(build(
        "backbone",
        "terramind_v1_tiny",
        json!({"modalities": ["S2L2A"], "bands": {"S1GRD": ["VV"]}}),
    ));
    assert!(e.message().contains("`S1GRD`"), "{e}");
    let e = err(build(
        "backbone",
        "terramind_v1_tiny",
        json!({"modalities": ["Hyperspectral"]}),
    ));
    assert!(
        e.message()
            .contains("unknown TerraMind modality `Hyperspectral`"),
        "{e}"
    );
}

/// The `_tim` variants, TerraMind 0.1, the encoder-decoder and generation models and the
/// tokenizers are not entries, and asking for them says so, by name, with or without
/// the source prefix.
#[test]
fn other_terramind_registrations_are_refused_by_name() {
    let host = host_with(crate::plugin_sources().unwrap());
    for (registry, name) in [
        ("backbone", "terramind_v1_base_tim"),
        ("backbone", "terratorch_terramind_v01_base"),
        ("full_model", "terramind_v1_large_encdec"),
        ("full_model", "terratorch_terramind_v1_tokenizer_s2l2a"),
        ("full_model", "terramind_v1_small_generate"),
    ] {
        let e = err(host.build(registry, name, &Map::new(), None));
        assert_eq!(e.kind, ErrorKind::NOT_SUPPORTED, "{name}: {e}");
        let bare = name.trim_start_matches("terratorch_");
        assert!(
            e.message().contains(&format!("`{bare}`"))
                && e.message().contains("not support")
                && e.message().contains("terramind_v1_base"),
            "{name}: {e}"
        );
        assert!(!host.contains(registry, name), "{name} is not an entry");
    }
    let names = host.names("backbone");
    assert!(names.iter().any(|n| n == "terratorch_terramind_v1_large"));
    assert!(!names
        .iter()
        .any(|n| n.contains("_tim") || n.contains("v01")));
}

/// A module that takes one tensor refuses named inputs, naming them (the same default
/// answers a module of a plugin built before named inputs existed).
#[test]
fn a_single_tensor_module_refuses_named_inputs() {
    let host = host_with(crate::plugin_sources().unwrap());
    let m = host
        .build(
            "neck",
            "SelectIndices",
            &obj(json!({"indices": [0]})),
            Some(&[8]),
        )
        .unwrap();
    let x = Tensor::zeros([1, 8, 4, 4], (Kind::Float, tch::Device::Cpu));
    let e = m
        .forward_named(&named(&[("S2L2A", &x)]), &Map::new())
        .unwrap_err();
    assert!(
        e.message().contains("no named inputs") && e.message().contains("`S2L2A`"),
        "{e}"
    );
}

/// A factory model built on TerraMind takes its modalities by name, padding each.
#[test]
fn factory_model_reports_input_names_and_pads_each_modality() {
    let host = host_with(crate::plugin_sources().unwrap());
    let m = host
        .build(
            "model_factory",
            "EncoderDecoderFactory",
            &obj(json!({
                "task": "classification",
                "backbone": "terramind_v1_tiny",
                "backbone_modalities": ["S2L2A", "S1GRD"],
                "necks": [{"name": "SelectIndices", "indices": [-1]}, {"name": "ReshapeTokensToImage"}],
                "decoder": "IdentityDecoder",
                "num_classes": 3,
            })),
            None,
        )
        .unwrap();
    assert_eq!(m.meta()["input_names"], json!(["S2L2A", "S1GRD"]));
    let s2 = Tensor::randn([2, 12, 20, 20], (Kind::Float, tch::Device::Cpu));
    let s1 = Tensor::randn([2, 2, 20, 20], (Kind::Float, tch::Device::Cpu));
    let y =
        tch::no_grad(|| m.forward_named(&named(&[("S2L2A", &s2), ("S1GRD", &s1)]), &Map::new()))
            .unwrap();
    assert_eq!(y[0].size(), vec![2, 3]);
}
