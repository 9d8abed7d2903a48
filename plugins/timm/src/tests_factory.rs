//! Tests of TimmModelFactory (the timm classifiers, `scripts/reference/cases/timm_factory.py`),
//! of timm's `name.tag` names and of the big ConvNeXts (`cases/timm_convnext.py`).
//!
//! Expected keys, shapes and messages come from the reference Python (timm 1.0.31,
//! TerraTorch 1.2.11), not from this crate.
use crate::test_support::{build, get, parity};
use serde_json::{json, Value};
use terrahost_plugin_api::sdk::DynModule;
use terrahost_plugin_api::{ErrorKind, PluginError};
use terrahost_testkit::{compare_outputs, host_with, keys_and_shapes, set_synthetic, Fixture};

// ---- the big ConvNeXts and tagged names -------------------------------------------------

#[test]
fn parity_timm_convnext_large() {
    parity("timm_convnext_large");
}

#[test]
fn parity_timm_convnext_xlarge() {
    parity("timm_convnext_xlarge");
}

#[test]
fn parity_timm_convnext_large_fb_in22k() {
    parity("timm_convnext_large.fb_in22k");
}

#[test]
fn parity_timm_convnext_xlarge_fb_in22k() {
    parity("timm_convnext_xlarge.fb_in22k");
}

/// The timm backbone source, as the host sees it.
fn backbone_source() -> terrahost_plugin_api::SourceEntry {
    crate::plugin_sources()
        .unwrap()
        .into_iter()
        .find(|s| s.registry.as_str() == "backbone")
        .unwrap()
}

#[test]
fn a_tag_resolves_to_its_architecture_in_contains_describe_and_build() {
    let src = backbone_source().source;
    for name in [
        "convnext_large.fb_in22k",
        "convnext_xlarge.fb_in22k_ft_in1k_384",
        "resnet18.a1_in1k",
        "vit_base_patch16_224.mae",
        "swin_tiny_patch4_window7_224.ms_in22k",
    ] {
        assert!(src.contains(name.into()), "{name}");
        let info = src.describe(name.into()).into_result().unwrap();
        assert_eq!(info.name.as_str(), name);
        let (arch, tag) = name.split_once('.').unwrap();
        assert!(
            info.doc.contains(&format!("pretrained tag `{tag}`")),
            "{}",
            info.doc
        );
        // the architecture's parameters, unchanged
        let plain = src.describe(arch.into()).into_result().unwrap();
        assert_eq!(info.params, plain.params, "{name}");
    }
    // the in22k tag's num_classes (timm's pretrained cfg) is reported
    let info = src
        .describe("convnext_large.fb_in22k".into())
        .into_result()
        .unwrap();
    assert!(info.doc.contains("num_classes=21841"), "{}", info.doc);
    // built as the architecture, labelled with the tag
    let m = build(
        "convnext_large.fb_in22k",
        json!({"out_indices": [0], "in_chans": 6}),
    )
    .unwrap();
    assert_eq!(m.out_channels(), vec![192]);
    assert_eq!(get(&m, "stem_0.weight").size(), vec![192, 6, 4, 4]);
    assert_eq!(
        m.module().named_parameters().len(),
        2 + 2 + 3 * 9, // stem conv + norm, three blocks of nine tensors (timm: 31)
    );
}

#[test]
fn a_tag_timm_does_not_know_is_refused_everywhere() {
    let src = backbone_source().source;
    for name in [
        "convnext_large.nope",
        "resnet18.fb_in22k",
        "prithvi_swin_B.foo",
        "prithvi_vit_100.x",
    ] {
        assert!(!src.contains(name.into()), "{name}");
        let e = src.describe(name.into()).into_result().unwrap_err();
        assert_eq!(e.kind, ErrorKind::NOT_FOUND, "{name}: {e}");
        let e = build(name, json!({})).err().unwrap();
        assert_eq!(e.kind, ErrorKind::NOT_FOUND, "{name}: {e}");
    }
    // timm's message, with the valid tags listed
    let e = build("convnext_large.nope", json!({})).err().unwrap();
    assert!(
        e.message
            .contains("Invalid pretrained tag (nope) for convnext_large."),
        "{e}"
    );
    assert!(e.message.contains("fb_in22k_ft_in1k_384"), "{e}");
}

#[test]
fn names_list_the_architectures_once_not_each_tag() {
    let src = backbone_source().source;
    let names: Vec<String> = src.names().into_iter().map(|n| n.into_string()).collect();
    assert!(names.iter().all(|n| !n.contains('.')), "{names:?}");
    for n in ["convnext_large", "convnext_xlarge"] {
        assert!(names.iter().any(|x| x == n), "{n}");
    }
}

#[test]
fn the_host_reports_an_unknown_tag_with_the_sources_reason() {
    let host = host_with(crate::plugin_sources().unwrap());
    assert!(host.contains("backbone", "timm_convnext_large.fb_in22k"));
    let (q, info) = host
        .describe("backbone", "timm_convnext_large.fb_in22k")
        .unwrap();
    assert_eq!(q, "timm_convnext_large.fb_in22k");
    assert!(info.doc.contains("fb_in22k"), "{}", info.doc);
    assert!(!host.contains("backbone", "timm_convnext_large.nope"));
    let e = host
        .describe("backbone", "timm_convnext_large.nope")
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NOT_FOUND);
    assert!(e.message.contains("Invalid pretrained tag (nope)"), "{e}");
    assert!(e.message.contains("fb_in22k"), "{e}");
}

// ---- TimmModelFactory --------------------------------------------------------------------

/// The parity test of the model fixture `case`: TimmModelFactory built from the fixture's
/// `model_args` through an in-process host, its keys and shapes equal to the reference's
/// state_dict (`num_batches_tracked` aside), the synthetic weights set, every output
/// reproduced (`terrahost run` reproduces the same fixtures from their `config.yaml`).
fn model_parity(case: &str) {
    let fx = Fixture::load(case);
    assert_eq!(fx.name(), "TimmModelFactory");
    let host = host_with(crate::plugin_sources().unwrap());
    let m = host
        .build("model_factory", fx.name(), &fx.args(), None)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let mut want: Vec<(String, Vec<i64>)> = fx
        .keys
        .iter()
        .filter(|(k, _, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, s, _)| (k.clone(), s.clone()))
        .collect();
    want.sort();
    let got: Vec<(String, Vec<i64>)> = keys_and_shapes(&m)
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect();
    assert_eq!(got, want, "{case}: state_dict keys and shapes");
    set_synthetic(&m);
    compare_outputs(&fx, &m);
}

#[test]
fn parity_timm_factory_resnet18() {
    model_parity("timm_factory_resnet18");
}

#[test]
fn parity_timm_factory_resnet34_tag_catavgmax_dropout() {
    model_parity("timm_factory_resnet34_catavgmax");
}

#[test]
fn parity_timm_factory_vit_base_mae() {
    model_parity("timm_factory_vit_base_mae");
}

#[test]
fn parity_timm_factory_vit_tiny_avg_pool_fc_norm_register_tokens() {
    model_parity("timm_factory_vit_tiny_avg");
}

#[test]
fn parity_timm_factory_convnext_tiny() {
    model_parity("timm_factory_convnext_tiny");
}

#[test]
fn parity_timm_factory_convnext_large_tag_max_pool() {
    model_parity("timm_factory_convnext_large_in22k");
}

#[test]
fn parity_timm_factory_prithvi_swin_b() {
    model_parity("timm_factory_prithvi_swin_B");
}

#[test]
fn parity_timm_factory_swin_tiny() {
    model_parity("timm_factory_swin_tiny");
}

/// Builds TimmModelFactory with `args` through an in-process host of this plugin.
fn factory(args: Value) -> Result<DynModule, PluginError> {
    let host = host_with(crate::plugin_sources().unwrap());
    host.build(
        "model_factory",
        "TimmModelFactory",
        args.as_object().unwrap(),
        None,
    )
}

fn base(backbone: &str) -> serde_json::Map<String, Value> {
    json!({"task": "classification", "backbone": backbone, "in_channels": 3, "num_classes": 4, "pretrained": false})
        .as_object()
        .unwrap()
        .clone()
}

fn with(backbone: &str, extra: Value) -> Value {
    let mut m = base(backbone);
    m.extend(extra.as_object().unwrap().clone());
    Value::Object(m)
}

#[test]
fn the_factory_builds_timm_classifiers_with_timms_keys() {
    // keys and shapes as printed from timm.create_model(..., num_classes=4, in_chans=3) under
    // TimmModelWrapper
    let m = factory(with("resnet18", json!({}))).unwrap();
    assert_eq!(get(&m, "timm_model.fc.weight").size(), vec![4, 512]);
    assert_eq!(get(&m, "timm_model.conv1.weight").size(), vec![64, 3, 7, 7]);
    let m = factory(with(
        "convnext_tiny",
        json!({"backbone_depths": [1, 1, 1, 1]}),
    ))
    .unwrap();
    assert_eq!(get(&m, "timm_model.head.fc.weight").size(), vec![4, 768]);
    assert_eq!(get(&m, "timm_model.head.norm.weight").size(), vec![768]);
    assert_eq!(
        get(&m, "timm_model.stem.0.weight").size(),
        vec![96, 3, 4, 4]
    );
    assert_eq!(
        get(&m, "timm_model.stages.3.downsample.1.weight").size(),
        vec![768, 384, 2, 2]
    );
    let m = factory(with(
        "vit_tiny_patch16_224",
        json!({"backbone_global_pool": "avg", "backbone_depth": 1}),
    ))
    .unwrap();
    let keys: Vec<String> = m.state_dict().into_iter().map(|(k, _)| k).collect();
    assert!(
        keys.contains(&"timm_model.fc_norm.weight".to_owned()),
        "{keys:?}"
    );
    assert!(
        !keys.contains(&"timm_model.norm.weight".to_owned()),
        "{keys:?}"
    );
    assert_eq!(get(&m, "timm_model.head.weight").size(), vec![4, 192]);
    let x = tch::Tensor::randn([2, 3, 224, 224], (tch::Kind::Float, tch::Device::Cpu));
    let y = tch::no_grad(|| m.forward(&[x])).unwrap();
    assert_eq!(y[0].size(), vec![2, 4]);
    // resnet18 at timm's default 1000 classes: 11,689,512 parameters
    let mut a = base("resnet18");
    a.insert("num_classes".into(), json!(1000));
    let m = factory(Value::Object(a)).unwrap();
    let n: i64 = m
        .module()
        .named_parameters()
        .iter()
        .map(|t| t.tensor.with(|t| t.numel() as i64))
        .sum();
    assert_eq!(n, 11_689_512);
}

#[test]
fn num_classes_zero_returns_the_pooled_features() {
    let m = factory(with("resnet18", json!({"num_classes": 0}))).unwrap();
    assert!(m
        .state_dict()
        .iter()
        .all(|(k, _)| !k.starts_with("timm_model.fc")));
    let x = tch::Tensor::randn([1, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    assert_eq!(
        tch::no_grad(|| m.forward(&[x])).unwrap()[0].size(),
        vec![1, 512]
    );
}

#[test]
fn the_factory_refuses_what_upstream_refuses() {
    let msg = |args: Value| factory(args).err().expect("must fail").to_string();
    let e = msg(with("resnet18", json!({"task": "segmentation"})));
    assert!(
        e.contains("timm models can only perform classification, but got task segmentation"),
        "{e}"
    );
    // upstream's default pretrained=True downloads
    let mut a = base("resnet18");
    a.remove("pretrained");
    let e = msg(Value::Object(a));
    assert!(
        e.contains("pretrained=true") && e.contains("--weights"),
        "{e}"
    );
    let e = msg(with("resnet18", json!({"backbone_in_chans": 4})));
    assert!(
        e.contains("multiple values for keyword argument 'in_chans'"),
        "{e}"
    );
    // an argument timm's ResNet does not take (TypeError upstream)
    let e = msg(with("resnet18", json!({"backbone_foo": 1})));
    assert!(e.contains("foo"), "{e}");
    let e = msg(with("timm_resnet18", json!({})));
    assert!(e.contains("drop the registry prefix: `resnet18`"), "{e}");
    let e = msg(with("resnet18.nope", json!({})));
    assert!(
        e.contains("Invalid pretrained tag (nope) for resnet18."),
        "{e}"
    );
    let e = msg(with("prithvi_vit_100", json!({})));
    assert!(e.contains("not a timm model"), "{e}");
    // TerraTorch sets in_chans = len(bands) (6 HLS bands by default) whatever in_channels says;
    // terrahost refuses the contradiction instead of ignoring in_channels
    let e = msg(with("prithvi_swin_B", json!({"in_channels": 4})));
    assert!(e.contains("len(bands)"), "{e}");
    let e = msg(with("prithvi_swin_B.foo", json!({})));
    assert!(e.contains("has no pretrained tags"), "{e}");
    let e = msg(with(
        "convnext_tiny",
        json!({"backbone_global_pool": "catavgmax"}),
    ));
    assert!(e.contains("global_pool"), "{e}");
    let e = msg(with("resnet18", json!({"backbone_global_pool": ""})));
    assert!(e.contains("num_classes=0"), "{e}");
}

#[test]
fn arguments_upstream_swallows_are_accepted() {
    // build_model(**kwargs) keeps what is not backbone_* and never reads it
    let m = factory(with(
        "resnet18",
        json!({"aux_decoders": null, "decoder": "UNetDecoder", "bands": [1, 2, 3]}),
    ))
    .unwrap();
    assert_eq!(get(&m, "timm_model.fc.weight").size(), vec![4, 512]);
}

#[test]
fn the_factory_declares_what_the_tasks_always_pass_as_ignored() {
    let host = host_with(crate::plugin_sources().unwrap());
    // bare name: found through the host's search order
    assert!(host.contains("model_factory", "TimmModelFactory"));
    let (_, info) = host.describe("model_factory", "TimmModelFactory").unwrap();
    let p = info
        .params
        .iter()
        .find(|p| p.name.as_str() == "aux_decoders")
        .expect("aux_decoders declared");
    assert_eq!(p.ty, terrahost_plugin_api::ParamType::IGNORED);
    for req in ["task", "backbone", "in_channels", "num_classes"] {
        let p = info.params.iter().find(|p| p.name.as_str() == req).unwrap();
        assert!(p.default.is_none(), "{req} is required upstream");
    }
}
