//! Tests of the factories besides EncoderDecoderFactory (PrithviModelFactory,
//! FullModelFactory, GenericModelFactory) and of the keywords TerraTorch's entries
//! swallow: parity with the `factory_*` fixtures made by `cases/factories.py`, the
//! argument translation, and TerraTorch's errors.

use crate::models::encoder_decoder_factory::{py_repr, unused_arguments_message};
use crate::models::{generic_model_factory, prithvi_model_factory};
use serde_json::{json, Map, Value};
use terrahost_plugin_api::{ErrorKind, ParamType};
use terrahost_testkit::{
    assert_close, compare_outputs, host_with, keys_and_shapes, set_synthetic, Fixture,
};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("a JSON object").clone()
}

/// Builds a whole-model fixture through its factory in an in-process host with this
/// plugin only, checks its state_dict keys and shapes against the reference's, sets the
/// synthetic weights and compares every output (no_grad and inference mode).
fn check_model_fixture(case: &str) {
    let fx = Fixture::load(case);
    assert_eq!(fx.registry(), "model", "{case}");
    let host = host_with(crate::plugin_sources().unwrap());
    let module = host
        .build("model_factory", fx.name(), &fx.args(), None)
        .unwrap_or_else(|e| panic!("{case}: building {} failed: {e}", fx.name()));
    let mut want: Vec<(String, Vec<i64>)> = fx
        .keys
        .iter()
        .filter(|(k, _, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, s, _)| (k.clone(), s.clone()))
        .collect();
    want.sort();
    let got: Vec<(String, Vec<i64>)> = keys_and_shapes(&module)
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect();
    assert_eq!(got, want, "{case}: state_dict keys and shapes");
    set_synthetic(&module);
    compare_outputs(&fx, &module);
}

// ---------------------------------------------------------------------------------
// Parity (the Swin and timm cases need the timm plugin: they run through the plugin
// libraries in tests/tests/cli.rs `run_reproduces_every_model_fixture`)
// ---------------------------------------------------------------------------------

#[test]
fn parity_prithvi_model_factory_segmentation() {
    check_model_fixture("factory_prithvi_mf_segmentation");
}

#[test]
fn parity_prithvi_model_factory_mlp_regression() {
    check_model_fixture("factory_prithvi_mf_mlp_regression");
}

#[test]
fn parity_prithvi_model_factory_classification() {
    check_model_fixture("factory_prithvi_mf_classification");
}

#[test]
fn parity_prithvi_model_factory_scalar_regression() {
    check_model_fixture("factory_prithvi_mf_scalar_regression");
}

#[test]
fn parity_full_model_factory_reconstruction() {
    check_model_fixture("factory_full_reconstruction");
}

/// FullModelFactory returns the registry's full model itself, so the MAE fixture (with
/// its masking noise as the fourth input) is reproduced through the factory unchanged.
#[test]
fn full_model_factory_returns_the_full_model_unwrapped() {
    let fx = Fixture::load("terratorch_prithvi_eo_v1_100_mae");
    let mut args = fx.args();
    args.insert("model".into(), json!("prithvi_eo_v1_100_mae"));
    args.insert("rescale".into(), json!(false));
    args.insert("padding".into(), json!("constant"));
    let host = host_with(crate::plugin_sources().unwrap());
    let module = host
        .build("model_factory", "FullModelFactory", &args, None)
        .unwrap();
    let mut want: Vec<String> = fx.keys.iter().map(|(k, _, _)| k.clone()).collect();
    want.sort();
    let got: Vec<String> = keys_and_shapes(&module)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(got, want);
    set_synthetic(&module);
    compare_outputs(&fx, &module);
}

/// GenericModelFactory: `model.` + the backbone's keys, and the backbone's outputs.
#[test]
fn generic_model_factory_wraps_the_backbone() {
    let host = host_with(crate::plugin_sources().unwrap());
    let backbone_args = json!({"embed_dim": 16, "depth": 2, "num_heads": 2, "img_size": 16,
                               "patch_size": [1, 4, 4], "out_indices": [0, 1]});
    let backbone = host
        .build(
            "backbone",
            "prithvi_eo_tiny",
            &obj(backbone_args.clone()),
            None,
        )
        .unwrap();
    let mut args = Map::new();
    args.insert("backbone".into(), json!("prithvi_eo_tiny"));
    for (k, v) in obj(backbone_args) {
        args.insert(format!("backbone_{k}"), v);
    }
    // taken and not used, and dropped
    args.insert("in_channels".into(), json!(6));
    args.insert("pretrained".into(), json!(true));
    args.insert("loss".into(), json!("mse"));
    let wrapped = host
        .build("model_factory", "GenericModelFactory", &args, None)
        .unwrap();
    let want: Vec<(String, Vec<i64>)> = keys_and_shapes(&backbone)
        .into_iter()
        .map(|(k, s)| (format!("model.{k}"), s))
        .collect();
    assert_eq!(keys_and_shapes(&wrapped), want);
    set_synthetic(&backbone);
    // the synthetic values depend on the key, so copy the backbone's values over
    tch::no_grad(|| {
        let src: std::collections::HashMap<String, tch::Tensor> =
            backbone.state_dict().into_iter().collect();
        for (k, mut t) in wrapped.state_dict() {
            t.copy_(&src[k.strip_prefix("model.").unwrap()]);
        }
    });
    let x = terrahost_testkit::sine_input(0, &[1, 6, 16, 16]);
    let a = tch::no_grad(|| backbone.forward(&[x.shallow_clone()])).unwrap();
    let b = tch::no_grad(|| wrapped.forward(&[x])).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2);
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        assert_close(&format!("output {i}"), b, a, 0.0);
    }
}

// ---------------------------------------------------------------------------------
// PrithviModelFactory's translation and errors
// ---------------------------------------------------------------------------------

/// The validated arguments of the PrithviModelFactory entry for `args`.
fn validated(args: Value) -> Map<String, Value> {
    prithvi_model_factory::entry()
        .info()
        .validate("terratorch_PrithviModelFactory", &obj(args))
        .unwrap()
}

#[test]
fn prithvi_model_factory_translates_its_arguments() {
    let t = prithvi_model_factory::translate(&validated(json!({
        "task": "regression", "backbone": "prithvi_eo_v1_100", "decoder": "UperNetDecoder",
        "bands": ["BLUE", "GREEN", "RED"], "backbone_drop_path_rate": 0.3, "decoder_channels": 64,
        "head_dropout": 0.5, "backbone_pretrained": true, "backbone_in_chans": 9,
    })))
    .unwrap();
    // in_channels defaults to len(bands); bands, pretrained, num_frames overwrite
    assert_eq!(t["backbone_in_chans"], json!(3));
    assert_eq!(t["backbone_bands"], json!(["BLUE", "GREEN", "RED"]));
    assert_eq!(t["backbone_pretrained"], json!(true));
    assert_eq!(t["backbone_num_frames"], json!(1));
    assert_eq!(t["backbone_drop_path_rate"], json!(0.3));
    assert_eq!(t["decoder_channels"], json!(64));
    assert_eq!(t["head_dropout"], json!(0.5));
    assert!(
        !t.contains_key("bands") && !t.contains_key("in_channels") && !t.contains_key("num_frames")
    );
    assert!(!t.contains_key("pretrained") && !t.contains_key("necks"));

    let t = prithvi_model_factory::translate(&validated(json!({
        "task": "segmentation", "backbone": "prithvi_swin_B", "decoder": "UNetDecoder",
        "bands": [0, 1, 2, 3, 4, 5], "in_channels": 6, "pretrained": false, "num_frames": 3, "num_classes": 2,
    })))
    .unwrap();
    assert_eq!(t["backbone_in_chans"], json!(6));
    assert_eq!(t["backbone_pretrained"], json!(false));
    assert_eq!(t["backbone_num_frames"], json!(3));
    assert_eq!(t["num_classes"], json!(2));
    assert_eq!(t["task"], json!("segmentation"));
    assert_eq!(t["backbone"], json!("prithvi_swin_B"));
}

#[test]
fn prithvi_model_factory_raises_as_terratorch() {
    let err = |args: Value| {
        prithvi_model_factory::translate(&validated(args))
            .unwrap_err()
            .message()
            .to_owned()
    };
    let base = json!({"task": "segmentation", "decoder": "FCNDecoder", "bands": [0, 1, 2]});
    let with = |extra: Value| {
        let mut m = obj(base.clone());
        m.extend(obj(extra));
        Value::Object(m)
    };
    let e = err(with(json!({"backbone": "timm_resnet18"})));
    assert!(
        e.contains("This class only handles models for `prithvi` encoders"),
        "{e}"
    );
    let e = err(with(json!({"backbone": "terratorch_prithvi_eo_v1_100"})));
    assert!(e.contains("`prithvi` encoders"), "{e}");
    let e = err(with(
        json!({"backbone": "prithvi_eo_v1_100", "prepare_features_for_image_model": "f"}),
    ));
    assert!(
        e.contains(
            "This functionality is no longer supported. Please migrate to EncoderDecoderFactory"
        ),
        "{e}"
    );
    let e = err(with(
        json!({"backbone": "prithvi_eo_v1_100", "necks": [{"name": "SelectIndices"}]}),
    ));
    assert!(
        e.contains("got multiple values for keyword argument 'necks'"),
        "{e}"
    );
    let e = err(with(
        json!({"backbone": "prithvi_eo_v1_100", "bands": "RGB"}),
    ));
    assert!(e.contains("`bands`"), "{e}");

    // the bands are required; the host names the argument
    let e = prithvi_model_factory::entry()
        .info()
        .validate(
            "terratorch_PrithviModelFactory",
            &obj(json!({"task": "segmentation", "backbone": "prithvi_eo_v1_100", "decoder": "FCNDecoder"})),
        )
        .unwrap_err();
    assert!(e.message().contains("bands"), "{e}");
}

/// Leftover arguments are refused by the EncoderDecoderFactory it calls, with
/// TerraTorch's message; given through `backbone_kwargs`, the translated `backbone_*`
/// ones are left over, as upstream.
#[test]
fn prithvi_model_factory_leftovers_get_terratorchs_message() {
    let host = host_with(crate::plugin_sources().unwrap());
    let args = obj(json!({
        "task": "segmentation", "backbone": "prithvi_eo_tiny", "decoder": "FCNDecoder",
        "bands": [0, 1, 2], "pretrained": false, "num_classes": 2, "dropout": 0.1,
    }));
    let e = host
        .build("model_factory", "PrithviModelFactory", &args, None)
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT);
    assert!(
        e.message()
            .contains("arguments {'dropout': 0.1} were passed but not used."),
        "{e}"
    );
    let mut args = args;
    args.remove("dropout");
    args.insert("backbone_kwargs".into(), json!({"embed_dim": 16}));
    let e = host
        .build("model_factory", "PrithviModelFactory", &args, None)
        .err()
        .unwrap();
    assert!(
        e.message().contains(
            "arguments {'backbone_bands': [0, 1, 2], 'backbone_in_chans': 3, 'backbone_num_frames': 1, \
             'backbone_pretrained': False} were passed but not used."
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------
// FullModelFactory and GenericModelFactory arguments
// ---------------------------------------------------------------------------------

#[test]
fn full_and_generic_factories_refuse_a_task_as_terratorch_does() {
    let host = host_with(crate::plugin_sources().unwrap());
    let e = host
        .build(
            "model_factory",
            "FullModelFactory",
            &obj(json!({"task": "segmentation", "model": "prithvi_eo_v1_100_mae"})),
            None,
        )
        .err()
        .unwrap();
    assert!(
        e.message()
            .contains("got multiple values for argument 'model'"),
        "{e}"
    );
    assert!(e.message().contains("ReconstructionTask"), "{e}");
    let e = host
        .build(
            "model_factory",
            "GenericModelFactory",
            &obj(json!({"task": "segmentation", "backbone": "prithvi_eo_tiny"})),
            None,
        )
        .err()
        .unwrap();
    assert!(
        e.message()
            .contains("got multiple values for argument 'backbone'"),
        "{e}"
    );
    let e = host
        .build(
            "model_factory",
            "FullModelFactory",
            &obj(json!({"model": "prithvi_eo_v1_100_mae", "peft_config": {"method": "LORA"}})),
            None,
        )
        .err()
        .unwrap();
    assert!(
        e.message().contains("peft_config") && e.message().contains("target_modules"),
        "{e}"
    );
    // every other argument goes to the full model, which refuses what it does not know
    let e = host
        .build(
            "model_factory",
            "FullModelFactory",
            &obj(json!({"model": "prithvi_eo_v1_100_mae", "embed_dimm": 16})),
            None,
        )
        .err()
        .unwrap();
    assert!(e.message().contains("embed_dimm"), "{e}");
}

#[test]
fn generic_factory_takes_the_text_up_to_a_second_prefix() {
    let (kw, rest) = generic_model_factory::split_backbone_kwargs(
        &obj(json!({"backbone_depth": 2, "backbone_abackbone_b": 1, "task": "x", "in_chans": 3})),
        "backbone_",
    );
    assert_eq!(kw, obj(json!({"depth": 2, "a": 1})));
    assert_eq!(rest, vec!["in_chans".to_owned(), "task".to_owned()]);
}

// ---------------------------------------------------------------------------------
// Keywords TerraTorch swallows, and its message for unused arguments
// ---------------------------------------------------------------------------------

#[test]
fn prithvi_entries_accept_and_drop_what_prithvi_swallows() {
    let host = host_with(crate::plugin_sources().unwrap());
    for (registry, name) in [
        ("backbone", "prithvi_eo_v2_300"),
        ("full_model", "prithvi_eo_v2_300_mae"),
    ] {
        let info = host.describe(registry, name).unwrap().1;
        for key in [
            "in_channels",
            "pretrain_img_size",
            "band_patch_size",
            "drop_path_rate",
        ] {
            let p = info
                .params
                .iter()
                .find(|p| p.name.as_str() == key)
                .unwrap_or_else(|| panic!("{name}: no parameter {key}"));
            assert_eq!(p.ty, ParamType::IGNORED, "{name}: {key}");
        }
        let tiny = json!({"embed_dim": 16, "depth": 1, "num_heads": 2, "img_size": 16, "patch_size": [1, 8, 8],
                          "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2});
        let mut args = obj(tiny.clone());
        if registry == "backbone" {
            for k in ["decoder_embed_dim", "decoder_depth", "decoder_num_heads"] {
                args.remove(k);
            }
        }
        let plain = host.build(registry, name, &args, None).unwrap();
        args.insert("in_channels".into(), json!(99));
        args.insert("pretrain_img_size".into(), json!(224));
        args.insert("band_patch_size".into(), json!(2));
        args.insert("drop_path_rate".into(), json!(0.3));
        let lenient = host.build(registry, name, &args, None).unwrap();
        assert_eq!(keys_and_shapes(&lenient), keys_and_shapes(&plain), "{name}");
        // an unknown name is still refused, with a suggestion
        args.insert("embed_dimm".into(), json!(8));
        let e = host.build(registry, name, &args, None).err().unwrap();
        assert!(e.message().contains("embed_dimm"), "{name}: {e}");
    }
}

#[test]
fn unused_arguments_are_printed_as_python_prints_the_dict() {
    assert_eq!(
        unused_arguments_message(&obj(json!({"num_class": 3}))),
        "arguments {'num_class': 3} were passed but not used."
    );
    assert_eq!(
        py_repr(&json!({"bar": "x", "baz": null, "qq": [1, 2.5, true, false], "t": "it's"})),
        r#"{'bar': 'x', 'baz': None, 'qq': [1, 2.5, True, False], 't': "it's"}"#
    );
    assert_eq!(py_repr(&json!(1e-5)), "1e-05");
    assert_eq!(py_repr(&json!(2.0)), "2.0");
    assert_eq!(py_repr(&json!(0.5708022831486758)), "0.5708022831486758");
    assert_eq!(py_repr(&json!(1e16)), "1e+16");
    assert_eq!(py_repr(&json!("a\\b")), r"'a\\b'");
}

#[test]
fn the_factories_are_registered() {
    let host = host_with(crate::plugin_sources().unwrap());
    let names = host.names("model_factory");
    for n in [
        "EncoderDecoderFactory",
        "PrithviModelFactory",
        "FullModelFactory",
        "GenericModelFactory",
    ] {
        assert!(names.contains(&n.to_owned()), "{n} not in {names:?}");
    }
    let info = host
        .describe("model_factory", "FullModelFactory")
        .unwrap()
        .1;
    let ty = |n: &str| {
        info.params
            .iter()
            .find(|p| p.name.as_str() == n)
            .map(|p| p.ty)
    };
    assert_eq!(ty("rescale"), Some(ParamType::IGNORED));
    assert_eq!(ty("padding"), Some(ParamType::IGNORED));
}

/// TerraTorch's embedding path (no decoder) never checks its leftover arguments: they
/// are dropped (with a warning here), where every other task refuses them.
#[test]
fn embedding_generation_drops_leftover_arguments_as_terratorch_does() {
    use crate::models::encoder_decoder_factory::plan;
    let args = obj(json!({
        "task": "embedding_generation", "backbone": "b", "foo": 1, "decoder_channels": 3, "head_dropout": 0.1,
        "backbone_in_chans": 4,
    }));
    let p = plan(&args).unwrap();
    assert_eq!(p.backbone_kwargs, obj(json!({"in_chans": 4})));
    assert!(p.decoder_kwargs.is_empty() && p.head_kwargs.is_empty());
    let mut args = args;
    args.insert("task".into(), json!("segmentation"));
    args.insert("decoder".into(), json!("d"));
    args.insert("num_classes".into(), json!(2));
    let e = plan(&args).unwrap_err();
    assert!(
        e.message()
            .contains("arguments {'foo': 1} were passed but not used."),
        "{e}"
    );
}

/// `SatMAEModelFactory`, which TerraTorch cannot build with, is refused by name with the
/// reason, and is not an entry.
#[test]
fn satmae_factory_is_refused_with_the_reason() {
    let host = host_with(crate::plugin_sources().unwrap());
    let e = host
        .build("model_factory", "SatMAEModelFactory", &Map::new(), None)
        .err()
        .expect("SatMAEModelFactory must be refused");
    assert_eq!(e.kind, ErrorKind::NOT_SUPPORTED, "{e}");
    assert!(
        e.message().contains("prepare_features_for_image_model"),
        "{e}"
    );
    assert!(!host.contains("model_factory", "SatMAEModelFactory"));
    assert!(host.contains("model_factory", "ClayModelFactory"));
    assert!(host.contains("model_factory", "Clay1_5ModelFactory"));
}

/// The `Clay1_5ModelFactory` fixtures (`cases/clay15_factory.py`, TerraTorch 1.2.13): every
/// task it supports, TerraTorch's keys and output.
#[test]
fn clay15_factory_parity_segmentation_padded_input() {
    check_model_fixture("factory_clay15_segmentation");
}

#[test]
fn clay15_factory_parity_regression_platform_list_channel_order() {
    check_model_fixture("factory_clay15_regression");
}

#[test]
fn clay15_factory_parity_classification() {
    check_model_fixture("factory_clay15_classification");
}

#[test]
fn clay15_factory_parity_scalar_regression() {
    check_model_fixture("factory_clay15_scalar_regression");
}

/// What `Clay1_5ModelFactory` cannot take: upstream's own errors, and the two departures
/// (no downloads; the channel order named by `band_order`).
#[test]
fn clay15_factory_refusals() {
    let host = host_with(crate::plugin_sources().unwrap());
    let base = json!({"task": "segmentation", "backbone": "clay_v1.5", "in_channels": 2,
        "decoder": "FCNDecoder", "pretrained": false,
        "num_classes": 2, "platform": "s2", "dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "mlp_ratio": 2.0,
        "metadata": {"s2": {"band_order": ["red", "nir"], "gsd": 10,
            "bands": {"wavelength": {"red": 0.665, "nir": 0.842}}}}});
    let err = |patch: Value| {
        let mut a = obj(base.clone());
        for (k, v) in obj(patch) {
            if v.is_null() {
                a.remove(&k);
            } else {
                a.insert(k, v);
            }
        }
        host.build("model_factory", "Clay1_5ModelFactory", &a, None)
            .err()
            .expect("must fail")
            .to_string()
    };
    assert!(err(json!({"task": "embedding_generation"}))
        .contains("Task embedding_generation not supported"));
    assert!(err(json!({"platform": "naip"})).contains("Platform 'naip' not found in metadata"));
    assert!(err(json!({"platform": null})).contains("'platform' is required"));
    assert!(err(json!({"dim": null})).contains("KeyError 'dim'"));
    // positional upstream: build_model() is missing it
    assert!(err(json!({"in_channels": null})).contains("in_channels"));
    let e = err(json!({"pretrained": true}));
    assert!(
        e.contains("downloads nothing")
            && e.contains("checkpoint_path=")
            && e.contains("pretrained: false"),
        "{e}"
    );
    let e = err(json!({"metadata": {"s2": {"gsd": 10, "bands": {"wavelength": {"red": 0.665}}}}}));
    assert!(e.contains("band_order") && e.contains("key order"), "{e}");
    let e = err(json!({"decoder": "smp_Unet"}));
    assert!(e.contains("Decoder smp_Unet was not found"), "{e}");
    // dim - 8 must split into four sin-cos quarters
    let e = err(json!({"dim": 30}));
    assert!(e.contains("multiple of 4"), "{e}");
    // and the base arguments build
    host.build("model_factory", "Clay1_5ModelFactory", &obj(base), None)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `pretrained: true` with a local `checkpoint_path` (`clay15_checkpoint_fixture.py`): the
/// `model.encoder.*` entries of a Lightning checkpoint in `clay-v1.5.ckpt`'s layout (float16 on
/// disk, upstream's own encoder initialisation) load as TerraTorch 1.2.13 loads them, the MAE
/// decoder and teacher entries are ignored, and with the synthetic decoder and head the output
/// is TerraTorch's. Checkpoints that would leave encoder weights random are refused.
#[test]
fn clay15_factory_reads_a_clay_checkpoint() {
    let fx = Fixture::load("factory_clay15_checkpoint");
    let ckpt = fx.dir.join(fx.meta["checkpoint"].as_str().unwrap());
    let mut args = fx.args();
    args.insert("checkpoint_path".into(), json!(ckpt.to_str().unwrap()));
    let host = host_with(crate::plugin_sources().unwrap());
    let m = host
        .build("model_factory", fx.name(), &args, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut want: Vec<(String, Vec<i64>)> = fx
        .keys
        .iter()
        .map(|(k, s, _)| (k.clone(), s.clone()))
        .collect();
    want.sort();
    assert_eq!(keys_and_shapes(&m), want);
    // the decoder and head as the reference set them; the encoder stays the checkpoint's
    tch::no_grad(|| {
        for (k, mut t) in m.state_dict() {
            if !k.starts_with("encoder.encoder_module.") {
                t.copy_(&terrahost_testkit::synth(&k, &t.size(), t.kind()));
            }
        }
    });
    compare_outputs(&fx, &m);

    let build_err = |args: &Map<String, Value>| {
        host.build("model_factory", fx.name(), args, None)
            .err()
            .expect("must fail")
            .to_string()
    };
    // another size: the keys it lacks are named
    let mut a = args.clone();
    a.insert("depth".into(), json!(3));
    let e = build_err(&a);
    assert!(
        e.contains("model.encoder.transformer.layers.2") && e.contains("random"),
        "{e}"
    );
    // a checkpoint of something else: no model.encoder.* entries
    let other = fx
        .dir
        .parent()
        .unwrap()
        .join("factory_clay15_segmentation/io.safetensors");
    a = args.clone();
    a.insert("checkpoint_path".into(), json!(other.to_str().unwrap()));
    let e = build_err(&a);
    assert!(e.contains("model.encoder.") && e.contains("input.0"), "{e}");
    a.insert(
        "checkpoint_path".into(),
        json!("/nonexistent/clay-v1.5.ckpt"),
    );
    assert!(build_err(&a).contains("/nonexistent/clay-v1.5.ckpt"));
    a.insert("checkpoint_path".into(), json!(7));
    assert!(build_err(&a).contains("`checkpoint_path` must be a file path"));
}

/// TerraTorch's `examples/confs/clay15.yaml` (model_args as written, `pretrained: false` as
/// `run --weights` sets it; the metadata cut to its one platform): TerraTorch 1.2.13 builds it
/// with 7,379,594 parameters and 111 state_dict entries (printed from the reference, not from
/// this crate).
#[test]
fn clay15_corpus_config_has_terratorchs_size() {
    let host = host_with(crate::plugin_sources().unwrap());
    let metadata = json!({"sentinel-2-l2a": {
        "band_order": ["blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
                       "swir16", "swir22"],
        "gsd": 10,
        "bands": {"wavelength": {"blue": 0.493, "green": 0.56, "red": 0.665, "rededge1": 0.704,
            "rededge2": 0.74, "rededge3": 0.783, "nir": 0.842, "nir08": 0.865, "swir16": 1.61,
            "swir22": 2.19}}}});
    let mut args = obj(
        json!({"task": "classification", "num_classes": 10, "decoder": "FCNDecoder",
        "backbone_pretrained": true, "backbone": "clay15", "backbone_in_channels": 6, "dim": 192,
        "depth": 6, "heads": 4, "dim_head": 48, "mlp_ratio": 2, "decoder_dim": 96, "decoder_depth": 3,
        "decoder_heads": 2, "decoder_dim_head": 48, "decoder_mlp_ratio": 2, "mask_ratio": 0.75,
        "norm_pix_loss": false, "patch_size": 8, "shuffle": true, "platform": ["sentinel-2-l2a"],
        "batch_size": 64, "in_channels": "None", "pretrained": false}),
    );
    args.insert(
        "teacher".into(),
        json!("vit_large_patch14_reg4_dinov2.lvd142m"),
    );
    args.insert("dolls".into(), json!([16, 32, 64, 128, 256, 768, 1024]));
    args.insert("doll_weights".into(), json!([1, 1, 1, 1, 1, 1, 1]));
    args.insert("metadata".into(), metadata);
    let m = host
        .build("model_factory", "Clay1_5ModelFactory", &args, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let n: i64 = m
        .module()
        .named_parameters()
        .iter()
        .map(|nt| nt.tensor.with(|t| t.numel() as i64))
        .sum();
    assert_eq!(n, 7_379_594);
    assert_eq!(keys_and_shapes(&m).len(), 111);
    let x = tch::Tensor::zeros([1, 10, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    let y = tch::no_grad(|| m.forward(&[x])).unwrap();
    assert_eq!(y[0].size(), [1, 10]);
}
