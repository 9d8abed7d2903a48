//! Tests of the plugin's entries through an in-process host: parity with the reference
//! fixtures, the heads against their fixtures, and the EncoderDecoderFactory with a
//! small test-only backbone.

use crate::models::encoder_decoder_factory::{self as factory, Task};
use crate::models::heads::{
    RegressionHead, RegressionHeadConfig, ScalarHead, ScalarHeadConfig, SegmentationHead,
    SegmentationHeadConfig,
};
use serde_json::{json, Map, Value};
use tch::{nn, nn::Module as _, Device, Kind, Tensor};
use terrahost_plugin_api::{
    sdk::{Built, Catalog, Entry, Model},
    ErrorKind, ParamType, Result, SourceEntry,
};
use terrahost_testkit::{
    assert_close, check_fixture, host_with, host_with_plugins, load_varstore, synth, Fixture,
};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("a JSON object").clone()
}

// ---------------------------------------------------------------------------------
// Parity with the reference fixtures
// ---------------------------------------------------------------------------------

#[test]
fn parity_fcn_decoder() {
    check_fixture(crate::plugin_sources().unwrap(), "terratorch_FCNDecoder");
}

#[test]
fn parity_identity_decoder() {
    check_fixture(
        crate::plugin_sources().unwrap(),
        "terratorch_IdentityDecoder",
    );
}

#[test]
fn parity_select_indices() {
    check_fixture(crate::plugin_sources().unwrap(), "terratorch_SelectIndices");
}

/// Builds a head from its fixture's arguments, loads the fixture weights strictly and
/// compares the output.
fn check_head<C, M>(case: &str, make: impl Fn(nn::Path, &C) -> Result<M>)
where
    C: serde::de::DeserializeOwned,
    M: Model,
{
    let fx = Fixture::load(case);
    assert_eq!(fx.registry(), "head", "{case}: registry");
    let cfg: C = serde_json::from_value(Value::Object(fx.args())).expect("head arguments");
    let mut vs = nn::VarStore::new(Device::Cpu);
    let head = make(vs.root(), &cfg).unwrap();
    load_varstore(&mut vs, &fx.weights());
    let out = tch::no_grad(|| head.forward(&fx.inputs, false)).unwrap();
    assert_eq!(out.len(), fx.outputs.len());
    for (i, (a, e)) in out.iter().zip(&fx.outputs).enumerate() {
        assert_close(&format!("{case} output.{i}"), a, e, fx.atol());
    }
}

#[test]
fn parity_segmentation_head() {
    check_head::<SegmentationHeadConfig, _>("head_SegmentationHead", SegmentationHead::new);
}

#[test]
fn parity_regression_head() {
    check_head::<RegressionHeadConfig, _>("head_RegressionHead", RegressionHead::new);
}

#[test]
fn parity_classification_head() {
    check_head::<ScalarHeadConfig, _>("head_ClassificationHead", ScalarHead::new);
}

// ---------------------------------------------------------------------------------
// Entries through the host
// ---------------------------------------------------------------------------------

#[test]
fn entries_are_registered_with_their_parameters() {
    let host = host_with(crate::plugin_sources().unwrap());
    let (_, info) = host.describe("decoder", "FCNDecoder").unwrap();
    assert!(info.takes_channels);
    let params: Vec<(String, Option<Value>)> = info
        .params
        .iter()
        .map(|p| (p.name.to_string(), p.default_value()))
        .collect();
    assert_eq!(
        params,
        vec![
            ("channels".to_owned(), Some(json!(256))),
            ("num_convs".to_owned(), Some(json!(4))),
            ("in_index".to_owned(), Some(json!(-1))),
        ]
    );
    let (_, info) = host
        .describe("decoder", "terratorch_IdentityDecoder")
        .unwrap();
    assert!(
        info.takes_channels
            && info.params.len() == 1
            && info.params[0].name.as_str() == "out_index"
    );
    let (_, info) = host.describe("neck", "SelectIndices").unwrap();
    assert!(info.takes_channels && info.params[0].is_required());
    let (_, info) = host
        .describe("model_factory", "EncoderDecoderFactory")
        .unwrap();
    assert!(info.accepts_extra);
    let names: Vec<&str> = info.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, factory::DECLARED.to_vec());
}

#[test]
fn built_parts_report_upstream_out_channels() {
    let host = host_with(crate::plugin_sources().unwrap());
    let fcn = host
        .build(
            "decoder",
            "FCNDecoder",
            &obj(json!({"channels": 16})),
            Some(&[32, 64, 128]),
        )
        .unwrap();
    assert_eq!(fcn.out_channels(), vec![16]);
    assert!(!fcn.includes_head());
    let id = host
        .build(
            "decoder",
            "IdentityDecoder",
            &Map::new(),
            Some(&[32, 64, 128]),
        )
        .unwrap();
    assert_eq!(id.out_channels(), vec![128]);
    assert!(!id.includes_head());
    let neck = host
        .build(
            "neck",
            "SelectIndices",
            &obj(json!({"indices": [0, -1]})),
            Some(&[16, 32, 64]),
        )
        .unwrap();
    assert_eq!(neck.out_channels(), vec![16, 64]);
}

#[test]
fn bad_decoder_arguments_are_refused() {
    let host = host_with(crate::plugin_sources().unwrap());
    let e = host
        .build(
            "decoder",
            "FCNDecoder",
            &obj(json!({"num_convs": 0})),
            Some(&[8]),
        )
        .err()
        .unwrap();
    assert!(e.to_string().contains("num_convs"), "{e}");
    let e = host
        .build("decoder", "FCNDecoder", &Map::new(), None)
        .err()
        .unwrap();
    assert!(e.to_string().contains("channel list"), "{e}");
    let e = host
        .build("neck", "SelectIndices", &Map::new(), Some(&[8]))
        .err()
        .unwrap();
    assert!(e.to_string().contains("indices"), "{e}");
    let e = host
        .build(
            "neck",
            "SelectIndices",
            &obj(json!({"indices": [5]})),
            Some(&[8, 16]),
        )
        .err()
        .unwrap();
    assert!(e.to_string().contains("index 5"), "{e}");
}

// ---------------------------------------------------------------------------------
// Argument splitting and routing (pure functions)
// ---------------------------------------------------------------------------------

#[test]
fn prefixed_arguments_are_split_by_group() {
    let plan = factory::plan(&obj(json!({
        "task": "Segmentation",
        "backbone": "timm_resnet18",
        "backbone_pretrained": false,
        "backbone_features_only": true,
        "decoder": "smp_Unet",
        "decoder_decoder_channels": [256, 128, 64, 32],
        "head_dropout": 0.1,
        "num_classes": 3,
    })))
    .unwrap();
    assert_eq!(plan.task, Task::Segmentation);
    assert_eq!(
        plan.backbone_kwargs,
        obj(json!({"pretrained": false, "features_only": true}))
    );
    assert_eq!(
        plan.decoder_kwargs,
        obj(json!({"decoder_channels": [256, 128, 64, 32]}))
    );
    assert_eq!(plan.head_kwargs, obj(json!({"dropout": 0.1})));
    assert_eq!(plan.outputs(), Some(("num_classes", 3)));
    assert!(plan.rescale);
    assert_eq!(plan.patch_size, None, "no patch size given");
    assert_eq!(
        plan.padding_mode.as_deref(),
        Some("reflect"),
        "upstream's default padding mode"
    );
}

#[test]
fn explicit_kwargs_dicts_win_and_leave_prefixed_ones_unused() {
    let plan = factory::plan(&obj(json!({
        "task": "classification", "backbone": "b", "decoder": "d",
        "backbone_kwargs": {"features_only": true}, "decoder_kwargs": {}, "decoder_channels": 8,
    })))
    .unwrap();
    assert_eq!(plan.backbone_kwargs, obj(json!({"features_only": true})));
    // an empty dict counts as not given, as in Python
    assert_eq!(plan.decoder_kwargs, obj(json!({"channels": 8})));
    let e = factory::plan(&obj(json!({
        "task": "classification", "backbone": "b", "decoder": "d",
        "backbone_kwargs": {"features_only": true}, "backbone_in_chans": 4,
    })))
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT);
    assert!(
        e.message()
            .contains("arguments {'backbone_in_chans': 4} were passed but not used."),
        "{e}"
    );
}

#[test]
fn unknown_unprefixed_arguments_are_named() {
    let e = factory::plan(&obj(json!({
        "task": "segmentation", "backbone": "b", "decoder": "d", "num_class": 3, "dropout": 0.2,
    })))
    .unwrap_err();
    assert!(
        e.message().contains("'num_class': 3") && e.message().contains("'dropout': 0.2"),
        "{e}"
    );
}

#[test]
fn unsupported_options_are_refused_clearly() {
    let base = json!({"task": "segmentation", "backbone": "b", "decoder": "d"});
    let with = |k: &str, v: Value| {
        let mut m = obj(base.clone());
        m.insert(k.to_owned(), v);
        factory::plan(&m).unwrap_err()
    };
    let e = with(
        "aux_decoders",
        json!([{"name": "aux", "decoder": "FCNDecoder", "decoder_args": {"channels": 8}}]),
    );
    assert!(
        e.message().contains("aux_decoders[0]")
            && e.message()
                .contains("arguments {'channels': 8} were passed but not used."),
        "{e}"
    );
    let e = with(
        "aux_decoders",
        json!([{"name": "a", "decoder": "d"}, {"name": "a", "decoder": "d"}]),
    );
    assert!(
        e.message().contains("`a`") && e.message().contains("unique"),
        "{e}"
    );
    let e = with("aux_decoders", json!([{"decoder": "d"}]));
    assert!(e.message().contains("needs `name`"), "{e}");
    // LoRA needs its targets (PEFT has no defaults for these models); other methods
    // are refused by name.
    let e = with("peft_config", json!({"method": "LORA"}));
    assert!(
        e.message().contains("peft_config") && e.message().contains("target_modules"),
        "{e}"
    );
    let e = with("peft_config", json!({"method": "PROMPT_TUNING"}));
    assert!(e.message().contains("`PROMPT_TUNING`"), "{e}");
    let e = with("backbone_use_temporal", json!("yes"));
    assert!(e.message().contains("use_temporal"), "{e}");
    let mut m = obj(base.clone());
    m.insert("backbone_use_temporal".into(), json!(true));
    m.insert("backbone_temporal_pooling".into(), json!("median"));
    let e = factory::plan(&m).unwrap_err();
    assert!(
        e.message().contains("median") && e.message().contains("concat"),
        "{e}"
    );
    m.insert("backbone_temporal_pooling".into(), json!("diff"));
    m.insert("backbone_temporal_subset_lengths".into(), json!([1, 1, 1]));
    let e = factory::plan(&m).unwrap_err();
    assert!(e.message().contains("exactly two subsets"), "{e}");
    let e = with("task", json!("embedding_generation"));
    assert!(e.message().contains("uses no decoder"), "{e}");
    let e = with("task", json!("detection"));
    assert!(e.message().contains("detection"), "{e}");
    let mut m = obj(base.clone());
    m.insert("num_classes".into(), json!(2));
    m.insert("num_outputs".into(), json!(2));
    assert!(factory::plan(&m)
        .unwrap_err()
        .message()
        .contains("only one"));
    let e = with("necks", json!([{"indices": [1]}]));
    assert!(
        e.message().contains("necks[0]") && e.message().contains("name"),
        "{e}"
    );
    // temporal keys are consumed, never passed to the backbone
    let mut m = obj(base);
    m.insert("backbone_use_temporal".into(), json!(false));
    m.insert("backbone_temporal_pooling".into(), json!("mean"));
    m.insert("backbone_in_chans".into(), json!(4));
    assert_eq!(
        factory::plan(&m).unwrap().backbone_kwargs,
        obj(json!({"in_chans": 4}))
    );
}

#[test]
fn padding_comes_from_backbone_arguments() {
    let plan = factory::plan(&obj(json!({
        "task": "regression", "backbone": "b", "decoder": "d", "backbone_patch_size": [4, 8],
    })))
    .unwrap();
    let p = plan.patch_size.expect("patch size");
    assert_eq!(
        (p.h, p.w, plan.padding_mode.as_deref()),
        (4, 8, Some("reflect"))
    );
    // still passed on to the backbone, as upstream
    assert_eq!(plan.backbone_kwargs.get("patch_size"), Some(&json!([4, 8])));
    let plan = factory::plan(&obj(json!({
        "task": "regression", "backbone": "b", "decoder": "d", "backbone_patch_size": 16, "backbone_padding": null,
    })))
    .unwrap();
    assert_eq!(plan.padding_mode, None, "padding=None disables padding");
    let e = factory::plan(&obj(json!({
        "task": "regression", "backbone": "b", "decoder": "d", "backbone_patch_size": 16, "backbone_padding": "mirror",
    })))
    .unwrap_err();
    assert!(e.message().contains("mirror"), "{e}");
}

fn info_with(
    params: Vec<terrahost_plugin_api::ParamSpec>,
    includes_head: bool,
) -> terrahost_plugin_api::EntryInfo {
    terrahost_plugin_api::EntryInfo {
        name: "X".into(),
        doc: "".into(),
        takes_channels: true,
        params: params.into(),
        accepts_extra: false,
        includes_head,
    }
}

#[test]
fn num_classes_goes_to_decoders_with_their_own_head() {
    use terrahost_plugin_api::ParamSpec;
    let mmseg_like = info_with(
        vec![
            ParamSpec::optional("channels", ParamType::INT, json!(256), ""),
            ParamSpec::required("num_classes", ParamType::INT, ""),
        ],
        true,
    );
    let aspp_like = info_with(
        vec![ParamSpec::optional(
            "num_classes",
            ParamType::INT,
            json!(2),
            "",
        )],
        false,
    );
    // A required num_classes is not enough: TerraTorch routes by the registry's includes_head
    // (terratorch's LinearDecoder requires num_classes and still gets a head).
    let linear_like = info_with(
        vec![ParamSpec::required("num_classes", ParamType::INT, "")],
        false,
    );
    assert!(factory::decoder_takes_num_classes(&mmseg_like));
    assert!(!factory::decoder_takes_num_classes(&aspp_like));
    assert!(!factory::decoder_takes_num_classes(&linear_like));

    let plan = factory::plan(&obj(
        json!({"task": "segmentation", "backbone": "b", "decoder": "d", "num_classes": 5}),
    ))
    .unwrap();
    let mut kw = Map::new();
    assert!(factory::route_to_decoder(&plan, true, &mut kw));
    assert_eq!(kw, obj(json!({"num_classes": 5})));
    // the decoder makes the prediction: no head
    assert_eq!(
        factory::head_kwargs_after_decoder(&plan, &plan.head_kwargs, "d", true, true).unwrap(),
        None
    );
    // a decoder without a head: the head gets the class count
    let mut kw = Map::new();
    assert!(!factory::route_to_decoder(&plan, false, &mut kw));
    assert!(kw.is_empty());
    assert_eq!(
        factory::head_kwargs_after_decoder(&plan, &plan.head_kwargs, "d", false, false).unwrap(),
        Some(obj(json!({"num_classes": 5})))
    );
    // a head-including decoder with head arguments is an error, as upstream
    let plan = factory::plan(&obj(json!({
        "task": "segmentation", "backbone": "b", "decoder": "d", "num_classes": 5, "head_dropout": 0.1,
    })))
    .unwrap();
    let e =
        factory::head_kwargs_after_decoder(&plan, &plan.head_kwargs, "d", true, true).unwrap_err();
    assert!(e.message().contains("head_dropout"), "{e}");
    // regression passes `num_outputs` under its own name
    let plan = factory::plan(&obj(
        json!({"task": "regression", "backbone": "b", "decoder": "d", "num_outputs": 2}),
    ))
    .unwrap();
    assert_eq!(
        factory::head_kwargs_after_decoder(&plan, &plan.head_kwargs, "d", false, false).unwrap(),
        Some(obj(json!({"num_outputs": 2})))
    );
}

#[test]
fn heads_are_built_per_task_with_upstream_checks() {
    let vs = nn::VarStore::new(Device::Cpu);
    let e = factory::build_head(Task::Segmentation, vs.root() / "a", 8, Map::new())
        .err()
        .unwrap();
    assert!(e.message().contains("num_classes"), "{e}");
    let e = factory::build_head(Task::Classification, vs.root() / "b", 8, Map::new())
        .err()
        .unwrap();
    assert!(e.message().contains("num_classes"), "{e}");
    let e = factory::build_head(
        Task::Regression,
        vs.root() / "c",
        8,
        obj(json!({"num_classes": 3})),
    )
    .err()
    .unwrap();
    assert!(
        e.message().contains("RegressionHead") && e.message().contains("num_classes"),
        "{e}"
    );
    let e = factory::build_head(
        Task::Segmentation,
        vs.root() / "d",
        8,
        obj(json!({"num_classes": 3, "in_channels": 4})),
    )
    .err()
    .unwrap();
    assert!(e.message().contains("head_in_channels"), "{e}");
    let e = factory::build_head(
        Task::Segmentation,
        vs.root() / "e",
        8,
        obj(json!({"num_classes": 3, "chanel_list": [4]})),
    )
    .err()
    .unwrap();
    assert!(e.message().contains("chanel_list"), "{e}");
    assert!(factory::build_head(
        Task::ScalarRegression,
        vs.root() / "f",
        8,
        obj(json!({"num_outputs": 1}))
    )
    .is_ok());
}

// ---------------------------------------------------------------------------------
// The factory end to end, with a test-only backbone
// ---------------------------------------------------------------------------------

/// A two-stage conv "backbone": conv3x3/2 (-> 4 ch) then ReLU + conv3x3/2 (-> 8 ch).
/// The same module was registered in TerraTorch's backbone registry as `ToyPyramid` to
/// produce the reference numbers below.
struct ToyPyramid {
    stem: nn::Conv2D,
    down: nn::Conv2D,
}

impl Model for ToyPyramid {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let f0 = self.stem.forward(&xs[0]);
        let f1 = self.down.forward(&f0.relu());
        Ok(vec![f0, f1])
    }
    fn out_channels(&self) -> Vec<i64> {
        vec![4, 8]
    }
}

fn toy_sources() -> Vec<SourceEntry> {
    let catalog = Catalog::new("toy").add(
        Entry::new("ToyPyramid", "test backbone", |ctx| {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = nn::ConvConfig {
                stride: 2,
                padding: 1,
                ..Default::default()
            };
            let c_in: i64 = ctx.args.get("in_chans")?;
            let model = ToyPyramid {
                stem: nn::conv2d(vs.root() / "stem", c_in, 4, 3, cfg),
                down: nn::conv2d(vs.root() / "down", 4, 8, 3, cfg),
            };
            Ok(Built::new(ctx.qualified(), vs, model).boxed())
        })
        .opt("in_chans", ParamType::INT, json!(3), "input channels")
        .opt("patch_size", ParamType::ANY, Value::Null, "ignored")
        .opt("padding", ParamType::ANY, Value::Null, "ignored"),
    );
    vec![SourceEntry {
        registry: "backbone".into(),
        prefix: "toy".into(),
        source: catalog.into_source(),
    }]
}

/// An in-process host with this plugin and the toy backbone (a macro because the host
/// type lives in a crate this one does not name).
macro_rules! toy_host {
    () => {
        host_with_plugins(vec![crate::plugin_sources().unwrap(), toy_sources()])
    };
}

/// `sin(0.37 * i)` over the elements, as the reference script made its input.
fn toy_input(shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (Kind::Double, Device::Cpu)) * 0.37)
        .sin()
        .reshape(shape)
        .to_kind(Kind::Float)
}

struct Expected {
    keys: &'static [&'static str],
    shape: &'static [i64],
    sum: f64,
    abs: f64,
    sq: f64,
    first: [f64; 4],
}

/// Builds the factory with `args`, checks the state_dict keys, loads synthetic weights,
/// runs on `input` and compares with numbers printed by terratorch 1.2.11.
fn check_factory(args: Value, input: &[i64], want: Expected) {
    let host = toy_host!();
    let model = host
        .build("model_factory", "EncoderDecoderFactory", &obj(args), None)
        .unwrap();
    let sd = model.state_dict();
    let mut ours: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
    ours.sort();
    let mut theirs: Vec<&str> = want
        .keys
        .iter()
        .copied()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .collect();
    theirs.sort();
    assert_eq!(ours, theirs);
    tch::no_grad(|| {
        for (k, t) in &sd {
            let mut dst = t.shallow_clone();
            dst.copy_(&synth(k, &t.size(), t.kind()));
        }
    });
    let y = tch::no_grad(|| model.forward(&[toy_input(input)])).unwrap();
    assert_eq!(y.len(), 1);
    let y = y[0].to_kind(Kind::Double);
    assert_eq!(y.size(), want.shape.to_vec());
    let close =
        |what: &str, a: f64, e: f64| assert!((a - e).abs() < 1e-4, "{what}: {a} vs reference {e}");
    close("sum", y.sum(Kind::Double).double_value(&[]), want.sum);
    close(
        "abs sum",
        y.abs().sum(Kind::Double).double_value(&[]),
        want.abs,
    );
    close(
        "square sum",
        (&y * &y).sum(Kind::Double).double_value(&[]),
        want.sq,
    );
    let flat = y.flatten(0, -1);
    for (i, e) in want.first.iter().enumerate() {
        close(&format!("element {i}"), flat.double_value(&[i as i64]), *e);
    }
}

#[test]
fn factory_segmentation_with_fcn_decoder_and_neck() {
    check_factory(
        json!({
            "task": "segmentation", "backbone": "ToyPyramid", "decoder": "FCNDecoder",
            "decoder_channels": 6, "decoder_num_convs": 2, "num_classes": 3, "head_channel_list": [5],
            "necks": [{"name": "SelectIndices", "indices": [0, 1]}],
        }),
        &[1, 3, 10, 10],
        Expected {
            keys: &[
                "encoder.stem.weight",
                "encoder.stem.bias",
                "encoder.down.weight",
                "encoder.down.bias",
                "decoder.convs.0.0.weight",
                "decoder.convs.0.0.bias",
                "decoder.convs.0.1.weight",
                "decoder.convs.0.1.bias",
                "decoder.convs.0.2.ln.weight",
                "decoder.convs.0.2.ln.bias",
                "decoder.convs.1.0.weight",
                "decoder.convs.1.0.bias",
                "decoder.convs.1.1.weight",
                "decoder.convs.1.1.bias",
                "decoder.convs.1.2.ln.weight",
                "decoder.convs.1.2.ln.bias",
                "head.head.0.0.0.weight",
                "head.head.0.0.0.bias",
                "head.head.2.weight",
                "head.head.2.bias",
            ],
            shape: &[1, 3, 10, 10],
            sum: -0.84606665,
            abs: 70.19805164,
            sq: 19.89988667,
            first: [0.07724752, 0.12781242, 0.15503912, 0.17986204],
        },
    );
}

#[test]
fn factory_regression_pads_rescales_squeezes_and_crops() {
    check_factory(
        json!({
            "task": "regression", "backbone": "ToyPyramid", "backbone_patch_size": 4,
            "decoder": "IdentityDecoder", "head_channel_list": [4],
        }),
        &[1, 3, 10, 10],
        Expected {
            keys: &[
                "encoder.stem.weight",
                "encoder.stem.bias",
                "encoder.down.weight",
                "encoder.down.bias",
                "head.head.0.0.0.weight",
                "head.head.0.0.1.weight",
                "head.head.0.0.1.bias",
                "head.head.0.0.1.running_mean",
                "head.head.0.0.1.running_var",
                "head.head.0.0.1.num_batches_tracked",
                "head.head.2.weight",
                "head.head.2.bias",
            ],
            shape: &[1, 10, 10],
            sum: 9.53967635,
            abs: 11.26611907,
            sq: 1.91554178,
            first: [0.11252706, 0.12644115, 0.14035523, 0.15010414],
        },
    );
}

#[test]
fn factory_classification_with_kwargs_dict() {
    check_factory(
        json!({
            "task": "classification", "backbone": "ToyPyramid", "backbone_kwargs": {"in_chans": 2},
            "decoder": "IdentityDecoder", "num_classes": 4, "head_dim_list": [6],
        }),
        &[1, 2, 10, 10],
        Expected {
            keys: &[
                "encoder.stem.weight",
                "encoder.stem.bias",
                "encoder.down.weight",
                "encoder.down.bias",
                "head.head.0.0.0.weight",
                "head.head.0.0.0.bias",
                "head.head.2.weight",
                "head.head.2.bias",
            ],
            shape: &[1, 4],
            sum: -0.22217047,
            abs: 0.30770229,
            sq: 0.05108864,
            first: [0.04276591, -0.21814205, -0.00638385, -0.04041049],
        },
    );
}

#[test]
fn factory_errors_name_the_failing_part() {
    let host = toy_host!();
    let build = |args: Value| {
        host.build("model_factory", "EncoderDecoderFactory", &obj(args), None)
            .err()
            .unwrap()
            .to_string()
    };
    let e = build(
        json!({"task": "segmentation", "backbone": "NoSuchNet", "decoder": "FCNDecoder", "num_classes": 2}),
    );
    assert!(e.contains("NoSuchNet"), "{e}");
    let e = build(
        json!({"task": "segmentation", "backbone": "ToyPyramid", "decoder": "NoSuchDecoder", "num_classes": 2}),
    );
    assert!(e.contains("NoSuchDecoder"), "{e}");
    let e = build(json!({
        "task": "segmentation", "backbone": "ToyPyramid", "decoder": "FCNDecoder", "num_classes": 2,
        "necks": [{"name": "SelectIndices", "indices": [7]}],
    }));
    assert!(e.contains("SelectIndices") && e.contains("7"), "{e}");
    let e =
        build(json!({"task": "segmentation", "backbone": "ToyPyramid", "decoder": "FCNDecoder"}));
    assert!(e.contains("num_classes"), "{e}");
    let e = build(
        json!({"task": "segmentation", "backbone": "ToyPyramid", "decoder": "FCNDecoder", "num_classes": 2, "foo": 1}),
    );
    assert!(
        e.contains("arguments {'foo': 1} were passed but not used."),
        "{e}"
    );
}

#[test]
fn factory_model_switches_train_mode_through_its_children() {
    let host = toy_host!();
    let args = obj(json!({
        "task": "segmentation", "backbone": "ToyPyramid", "decoder": "IdentityDecoder", "num_classes": 2,
        "head_dropout": 0.5, "rescale": false,
    }));
    let mut model = host
        .build("model_factory", "EncoderDecoderFactory", &args, None)
        .unwrap();
    assert_eq!(model.out_channels(), vec![2]);
    assert!(model.includes_head());
    let x = toy_input(&[1, 3, 16, 16]);
    let eval = model.forward(&[x.shallow_clone()]).unwrap().remove(0);
    // no rescale: the 4x4 prediction stays 4x4
    assert_eq!(eval.size(), vec![1, 2, 4, 4]);
    model.set_train(true);
    let train = model.forward(&[x.shallow_clone()]).unwrap().remove(0);
    assert!(
        !train.allclose(&eval, 1e-6, 1e-6, false),
        "dropout must act in train mode"
    );
    model.set_train(false);
    let again = model.forward(&[x]).unwrap().remove(0);
    assert!(again.allclose(&eval, 0.0, 0.0, false));
}

/// `backbone_use_temporal`: each time step goes through the backbone, and a feature
/// permutation is undone after pooling (here: channels-last while pooling).
#[test]
fn temporal_wrapper_pools_time_steps_and_undoes_the_permutation() {
    use crate::models::temporal_wrapper::{TemporalConfig, TemporalWrapper};
    let host = toy_host!();
    let x = toy_input(&[1, 3, 2, 8, 8]);
    for permute in [Value::Null, json!([0, 2, 3, 1])] {
        let cfg = TemporalConfig::from_kwargs(&obj(json!({
            "temporal_pooling": "diff",
            "temporal_features_permute_op": permute,
        })))
        .unwrap();
        let backbone = host
            .build("backbone", "toy_ToyPyramid", &Map::new(), None)
            .unwrap();
        let wrapper = TemporalWrapper::new(backbone, cfg).unwrap();
        let ys = wrapper.forward(&[x.shallow_clone()], false).unwrap();
        // the reference: the wrapped backbone itself on each time step
        let inner = wrapper.children()[0].1;
        let f0 = inner.forward(&[x.select(2, 0)]).unwrap();
        let f1 = inner.forward(&[x.select(2, 1)]).unwrap();
        assert_eq!(ys.len(), f0.len());
        for (i, y) in ys.iter().enumerate() {
            // 1e-5: the wrapper runs the time steps as one batch and the reference one
            // at a time, and libtorch may pick other conv kernels for the two batch
            // sizes; on values near 3 they differ in the last float32 bits (1.2e-6 seen).
            assert_close(
                &format!("permute {permute}, feature {i}"),
                y,
                &(&f0[i] - &f1[i]),
                1e-5,
            );
        }
    }
}
