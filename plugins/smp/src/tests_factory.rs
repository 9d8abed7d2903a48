//! Tests of `SMPModelFactory` (TerraTorch 1.2.11's `smp_model_factory.py`) and smp 0.6.0's
//! whole models. Parity: every `smp_factory_*` fixture (made by
//! `scripts/reference/cases/smp_factory.py`) is rebuilt from its `model_args`, given the
//! synthetic weights under the reference's exact key set, and must reproduce TerraTorch's
//! output. Every expected error text below was printed by TerraTorch / smp in Python
//! (`SMPModelFactory().build_model(...)` with the arguments of each test).
use crate::plugin_sources;
use serde_json::{json, Map, Value};
use tch::Tensor;
use terrahost_plugin_api::sdk::DynModule;
use terrahost_plugin_api::{ErrorKind, PluginError, Result};
use terrahost_testkit::{host_with, keys_and_shapes, Fixture};

const FIXTURES: [&str; 15] = [
    "smp_factory_burnscars",
    "smp_factory_resnet34_corpus",
    "smp_factory_unet_ignored",
    "smp_factory_unet_depth3",
    "smp_factory_unet_rescale",
    "smp_factory_fpn_aux",
    "smp_factory_deeplabv3",
    "smp_factory_deeplabv3plus_resnext",
    "smp_factory_pspnet_rescale",
    "smp_factory_pan",
    "smp_factory_linknet",
    "smp_factory_manet",
    "smp_factory_unetplusplus",
    "smp_factory_upernet",
    "smp_factory_segformer",
];

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn build(args: Value) -> Result<DynModule> {
    let host = host_with(plugin_sources()?);
    host.build("model_factory", "SMPModelFactory", &obj(args), None)
}

fn build_err(args: Value) -> PluginError {
    build(args).err().expect("the build should fail")
}

/// A small valid configuration with `extra` merged in.
fn args(extra: Value) -> Value {
    let mut m = obj(json!({
        "task": "segmentation", "backbone": "resnet18", "model": "Unet",
        "bands": ["RED", "GREEN", "BLUE"], "pretrained": false,
    }));
    m.extend(obj(extra));
    Value::Object(m)
}

fn assert_msg(e: &PluginError, want: &str) {
    assert!(e.message().contains(want), "expected {want:?} in: {e}");
}

/// Builds the fixture's model, checks its keys and shapes against the reference's
/// `state_dict` (buffers included, `num_batches_tracked` aside), gives it the synthetic
/// weights and compares the outputs.
fn check(case: &str) {
    let fx = Fixture::load(case);
    let host = host_with(plugin_sources().unwrap());
    let m = host
        .build("model_factory", "SMPModelFactory", &fx.args(), None)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let mut want: Vec<(String, Vec<i64>)> = fx
        .keys
        .iter()
        .filter(|(k, _, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, s, _)| (k.clone(), s.clone()))
        .collect();
    want.sort();
    assert_eq!(
        keys_and_shapes(&m),
        want,
        "{case}: state_dict keys and shapes"
    );
    terrahost_testkit::set_synthetic(&m);
    terrahost_testkit::compare_outputs(&fx, &m);
}

#[test]
fn parity_every_smp_factory_fixture() {
    for case in FIXTURES {
        check(case);
    }
}

#[test]
fn every_smp_factory_fixture_is_listed() {
    let on_disk: Vec<String> = terrahost_testkit::fixture_metas()
        .into_iter()
        .filter(|(_, m)| m["name"] == "SMPModelFactory")
        .map(|(c, _)| c)
        .collect();
    let mut listed: Vec<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn registered_in_the_model_factory_registry_under_smp() {
    let sources = plugin_sources().unwrap();
    let s = sources
        .iter()
        .find(|s| s.registry.as_str() == "model_factory")
        .expect("a model_factory source");
    assert_eq!(s.prefix.as_str(), "smp");
    let host = host_with(plugin_sources().unwrap());
    assert!(host.contains("model_factory", "SMPModelFactory"));
    let (_, info) = host.describe("model_factory", "SMPModelFactory").unwrap();
    assert!(
        info.accepts_extra,
        "TerraTorch's build_model takes **kwargs"
    );
}

#[test]
fn output_follows_the_input_size_and_classes() {
    let m = build(args(json!({"num_classes": 5}))).unwrap();
    assert_eq!(m.out_channels(), vec![5]);
    assert!(m.includes_head());
    let y =
        tch::no_grad(|| m.forward(&[Tensor::zeros([2, 3, 64, 96], tch::kind::FLOAT_CPU)])).unwrap();
    assert_eq!(y.len(), 1);
    assert_eq!(y[0].size(), vec![2, 5, 64, 96]);
}

#[test]
fn swallowed_arguments_are_named_and_change_nothing() {
    let m = build(args(json!({
        "decoder_channels": [8, 8, 8, 8, 8], "rescale": false, "backbone_out_indices": [1],
        "aux_classes": 3, "head_dropout": 0.5, "padding": "reflect", "aux_decoders": [],
        "smp_no_such_arg": 1, "smp_upsampling": 2,
    })))
    .unwrap();
    let ignored: Vec<String> = m.meta()["ignored_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for k in [
        "decoder_channels",
        "backbone_out_indices",
        "aux_classes",
        "head_dropout",
        "smp_no_such_arg",
        // smp.Unet has no `upsampling`: it lands in get_encoder's **kwargs
        "smp_upsampling",
    ] {
        assert!(ignored.iter().any(|i| i == k), "{k} not in {ignored:?}");
    }
    // These three are declared ignored: the host warns naming them and drops them.
    let host = host_with(plugin_sources().unwrap());
    let (_, info) = host.describe("model_factory", "SMPModelFactory").unwrap();
    let given = obj(args(
        json!({"rescale": false, "padding": "reflect", "aux_decoders": []}),
    ));
    assert_eq!(
        info.ignored_in(&given),
        vec!["aux_decoders", "padding", "rescale"]
    );
    let plain = build(args(json!({}))).unwrap();
    assert_eq!(keys_and_shapes(&m), keys_and_shapes(&plain));
}

#[test]
fn smp_arguments_override_the_factorys() {
    // {"in_channels": ..., **smp_kwargs}: smp_in_channels wins over bands.
    let m = build(args(json!({"smp_in_channels": 5, "smp_classes": 4}))).unwrap();
    let keys = keys_and_shapes(&m);
    let conv1 = keys
        .iter()
        .find(|(k, _)| k == "smp_model.encoder.conv1.weight")
        .unwrap();
    assert_eq!(conv1.1, vec![64, 5, 7, 7]);
    assert_eq!(m.out_channels(), vec![4]);
}

#[test]
fn only_segmentation() {
    let e = build_err(args(json!({"task": "regression"})));
    assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT);
    assert_msg(
        &e,
        "SMP models can only perform segmentation, but got task regression",
    );
}

#[test]
fn refusals_with_terratorchs_and_smps_messages() {
    let cases = [
        (json!({"model": "Unet3"}), "Decoder Unet3 is not supported in SMP."),
        (
            json!({"model": "DPT"}),
            "Only Timm encoders are supported for DPT. Encoder name must start with 'tu-', got resnet18",
        ),
        (json!({"backbone": "my.Encoder"}), "Config must include the 'encoder_depth' parameter"),
        (
            json!({"backbone": "my.Encoder", "smp_encoder_depth": 4}),
            "Config must include the 'out_channels' parameter",
        ),
        (
            json!({"backbone": "resnet34", "pretrained": "ssl"}),
            "Wrong pretrained weights `ssl` for encoder `resnet34`. Available options are: ['imagenet']",
        ),
        (
            json!({"smp_encoder_depth": 6, "smp_decoder_channels": [8, 8, 8, 8, 8, 8]}),
            "ResNetEncoder depth should be in range [1, 5], got 6",
        ),
        (
            json!({"model": "DeepLabV3", "smp_encoder_output_stride": 4}),
            "DeeplabV3 support output stride 8 or 16, got 4",
        ),
        (
            json!({"smp_aux_params": {"classes": 2, "pooling": "sum"}}),
            "Pooling should be one of ('max', 'avg'), got sum.",
        ),
    ];
    for (extra, want) in cases {
        let e = build_err(args(extra.clone()));
        assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT, "{extra}: {e}");
        assert_msg(&e, want);
    }
    let mut no_bands = obj(args(json!({})));
    no_bands.remove("bands");
    assert_msg(
        &build_err(Value::Object(no_bands)),
        "SMPModelFactory.build_model() missing 1 required positional argument: 'bands'",
    );
}

#[test]
fn what_terrahost_cannot_build_is_refused_by_name() {
    // TerraTorch would download smp's imagenet weights (pretrained defaults to true).
    let mut m = obj(args(json!({})));
    m.remove("pretrained");
    let e = build_err(Value::Object(m));
    assert_msg(&e, "makes no downloads");
    assert_msg(&e, "pretrained: false");
    assert_msg(
        &build_err(args(json!({"backbone": "efficientnet-b0"}))),
        "not ported",
    );
    assert_msg(
        &build_err(args(json!({"backbone": "tu-resnet18"}))),
        "timm universal encoder",
    );
}

#[test]
fn input_size_must_divide_the_output_stride_except_for_unet() {
    let m = build(args(json!({"model": "FPN"}))).unwrap();
    let e = tch::no_grad(|| m.forward(&[Tensor::zeros([1, 3, 40, 56], tch::kind::FLOAT_CPU)]))
        .expect_err("FPN checks the input size");
    assert_msg(
        &e,
        "Wrong input shape height=40, width=56. Expected image height and width divisible by 32. Consider pad \
         your images to shape (64, 64).",
    );
    let unet = build(args(json!({}))).unwrap();
    let y = tch::no_grad(|| unet.forward(&[Tensor::zeros([1, 3, 40, 56], tch::kind::FLOAT_CPU)]))
        .unwrap();
    assert_eq!(y[0].size(), vec![1, 1, 40, 56]);
}

#[test]
fn get_encoders_own_parameters_through_smp_kwargs() {
    // smp.Unet(**kwargs) -> get_encoder(..., output_stride=32, **kwargs): `output_stride` dilates.
    let m = build(args(json!({"smp_output_stride": 16}))).unwrap();
    assert!(m.meta()["ignored_args"].as_array().unwrap().is_empty());
    let y =
        tch::no_grad(|| m.forward(&[Tensor::zeros([1, 3, 64, 64], tch::kind::FLOAT_CPU)])).unwrap();
    assert_eq!(y[0].size(), vec![1, 1, 64, 64]);
    assert_msg(
        &build_err(args(json!({"smp_output_stride": 4}))),
        "Output stride should be 16 or 8, got 4.",
    );
    assert_msg(
        &build_err(args(json!({"smp_depth": 3}))),
        "got multiple values for keyword argument 'depth'",
    );
    assert_msg(
        &build_err(args(json!({"model": "DeepLabV3", "smp_output_stride": 16}))),
        "got multiple values for keyword argument 'output_stride'",
    );
}

/// The deeper encoders have no fixture (their weights would be large); their structure is
/// checked against smp's `get_encoder(name, in_channels=4, depth=5, weights=None)`:
/// parameter count, number of state_dict entries without `num_batches_tracked`, and the
/// shape of `layer3.22.conv2.weight` (printed by the reference Python).
#[test]
fn deeper_encoders_match_smps_structure() {
    for (name, n_params, n_keys, conv) in [
        ("resnet101", 42_503_296, 520, [256, 256, 3, 3]),
        ("resnet152", 58_146_944, 775, [256, 256, 3, 3]),
        ("resnext101_32x4d", 42_131_840, 520, [512, 16, 3, 3]),
    ] {
        let m = build(args(json!({"backbone": name, "bands": [1, 2, 3, 4]}))).unwrap();
        let enc: Vec<(String, Vec<i64>)> = keys_and_shapes(&m)
            .into_iter()
            .filter_map(|(k, s)| {
                k.strip_prefix("smp_model.encoder.")
                    .map(|k| (k.to_owned(), s))
            })
            .collect();
        assert_eq!(enc.len(), n_keys, "{name}: state_dict entries");
        let params: i64 = m
            .module()
            .named_parameters()
            .into_iter()
            .filter(|p| p.name.as_str().starts_with("smp_model.encoder."))
            .map(|p| p.tensor.with(|t| t.numel() as i64))
            .sum();
        assert_eq!(params, n_params, "{name}: parameters");
        let c = enc
            .iter()
            .find(|(k, _)| k == "layer3.22.conv2.weight")
            .unwrap();
        assert_eq!(c.1, conv.to_vec(), "{name}");
    }
}
