//! Tests of the MMEarth ConvNeXtV2 backbones (`models/mmearth_convnextv2.rs`) against the
//! custom fixtures of `scripts/reference/mmearth_convnextv2_fixtures.py`, one per registered
//! name: TerraTorch's state_dict keys, shapes and parameter count, its forward error (the
//! whole forward fails in TerraTorch for every input), and the numbers of the parts that run
//! there (a block of each stage with its GlobalResponseNormMlp, the head, the stem and the
//! first downsampling on inputs whose width equals the channels).

use crate::models::mmearth_convnextv2::{Config, ConvNeXtV2};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use tch::{nn, Kind, Tensor};
use terrahost_plugin_api::sdk::Model;
use terrahost_testkit::{assert_close, host_with, synth, Fixture};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("a JSON object").clone()
}

/// The fixture's arguments applied to the preset, as the entry applies them.
fn config(fx: &Fixture, preset: &str) -> Config {
    let a = fx.args();
    let mut c = Config::named(preset).expect("a preset");
    let int = |k: &str, d: i64| a.get(k).and_then(Value::as_i64).unwrap_or(d);
    c.patch_size = int("patch_size", c.patch_size);
    c.img_size = int("img_size", c.img_size);
    c.in_chans = int("in_chans", c.in_chans);
    c.num_classes = int("num_classes", c.num_classes);
    c.drop_path_rate = a
        .get("drop_path_rate")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    c.head_init_scale = a
        .get("head_init_scale")
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    c.use_orig_stem = a
        .get("use_orig_stem")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    c
}

fn parts(fx: &Fixture) -> Vec<Value> {
    fx.meta["parts"].as_array().expect("meta.parts").clone()
}

/// Presets small enough to build whole in a test (at most ~130M parameters).
const WHOLE: [&str; 5] = [
    "convnextv2_atto",
    "convnextv2_femto",
    "convnext_pico",
    "convnextv2_nano",
    "convnextv2_tiny",
];

fn check(preset: &str) {
    let case = format!("terratorch_{preset}");
    let fx = Fixture::load(&case);
    let cfg = config(&fx, preset);
    assert_eq!(
        cfg.n_params(),
        fx.meta["n_params"].as_i64().unwrap(),
        "{case}: parameter count"
    );
    let want: HashMap<String, Vec<i64>> = fx
        .keys
        .iter()
        .map(|(k, s, _)| (k.clone(), s.clone()))
        .collect();

    // The whole preset through the registry, with TerraTorch's arguments: same state_dict.
    if WHOLE.contains(&preset) {
        let host = host_with(crate::plugin_sources().unwrap());
        let m = host.build("backbone", fx.name(), &fx.args(), None).unwrap();
        let got: HashMap<String, Vec<i64>> = m
            .state_dict()
            .into_iter()
            .map(|(k, t)| (k, t.size()))
            .collect();
        assert_eq!(got, want, "{case}: state_dict keys and shapes");
        assert_eq!(m.out_channels(), vec![cfg.num_classes]);
    }

    // A network of the preset's widths with one block in each stage the fixture runs (none in
    // the others): its keys are TerraTorch's, its weights the synthetic ones of those keys.
    let io: HashMap<String, Tensor> = Tensor::read_safetensors(fx.dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let run_stages: Vec<i64> = parts(&fx)
        .iter()
        .filter(|p| p["part"] == "stage_block")
        .map(|p| p["index"].as_i64().unwrap())
        .collect();
    let reduced = Config {
        depths: (0..4).map(|i| i64::from(run_stages.contains(&i))).collect(),
        ..cfg.clone()
    };
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let model = ConvNeXtV2::new(vs.root(), &reduced).unwrap();
    let vars = vs.variables();
    let dropped: i64 = cfg.depths.iter().sum::<i64>() - reduced.depths.iter().sum::<i64>();
    assert_eq!(
        vars.len() as i64 + dropped * 14,
        want.len() as i64,
        "{case}: number of keys"
    );
    tch::no_grad(|| {
        for (k, mut v) in vars {
            let shape = want
                .get(&k)
                .unwrap_or_else(|| panic!("{case}: `{k}` is not a TerraTorch key"));
            assert_eq!(&v.size(), shape, "{case}: shape of {k}");
            v.copy_(&synth(&k, shape, Kind::Float));
        }
    });
    for p in parts(&fx) {
        let x = &io[p["input"].as_str().unwrap()];
        let e = &io[p["output"].as_str().unwrap()];
        let i = p["index"].as_u64().unwrap_or(0) as usize;
        let y = tch::no_grad(|| match p["part"].as_str().unwrap() {
            "stage_block" => model.stage(i, x, false),
            "head" => model.head(x),
            "initial_conv" => model.initial_conv(x).expect("the preset has initial_conv"),
            "stem_orig" => model.stem(x),
            "downsample" => model.downsample(i, x),
            other => panic!("{case}: unknown part {other}"),
        })
        .unwrap_or_else(|err| panic!("{case} {p}: {err}"));
        assert_close(&format!("{case} {}", p["output"]), &y, e, fx.atol());
    }

    // The whole forward fails where and as TerraTorch's does, with and without a mask.
    let shape: Vec<i64> = serde_json::from_value(fx.meta["forward_input_shape"].clone()).unwrap();
    let reference = fx.meta["forward_error"].as_str().unwrap();
    let reference = reference.lines().next().unwrap();
    let x = Tensor::zeros(shape.as_slice(), (Kind::Float, tch::Device::Cpu));
    let err = tch::no_grad(|| model.forward(&[x], false))
        .expect_err("TerraTorch's forward fails")
        .to_string();
    assert!(
        err.contains(reference),
        "{case}: `{err}` does not contain TerraTorch's `{reference}`"
    );
    // forward(x, mask): a 4x4 patch mask over an img_size input reaches the same stem norm
    let side = cfg.img_size;
    let x = Tensor::zeros(
        [1, cfg.in_chans, side, side],
        (Kind::Float, tch::Device::Cpu),
    );
    let mask = Tensor::zeros([1, 16], (Kind::Float, tch::Device::Cpu));
    let err = tch::no_grad(|| model.forward(&[x, mask], false))
        .expect_err("TerraTorch's masked forward fails")
        .to_string();
    let want = format!("Given normalized_shape=[{}]", cfg.dims[0]);
    assert!(err.contains(&want), "{case}: masked forward: `{err}`");
}

macro_rules! parity_tests {
    ($($test:ident => $preset:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check($preset);
            }
        )*
    };
}

parity_tests! {
    convnextv2_atto_matches_terratorch => "convnextv2_atto",
    convnextv2_femto_matches_terratorch => "convnextv2_femto",
    convnext_pico_matches_terratorch => "convnext_pico",
    convnextv2_nano_matches_terratorch => "convnextv2_nano",
    convnextv2_tiny_matches_terratorch => "convnextv2_tiny",
    convnextv2_base_matches_terratorch => "convnextv2_base",
    convnextv2_large_matches_terratorch => "convnextv2_large",
    convnextv2_huge_matches_terratorch => "convnextv2_huge",
}

/// What ConvNeXtV2's constructor raises TypeError on is refused by name; bad values too.
#[test]
fn arguments_terratorch_refuses_are_refused_by_name() {
    let host = host_with(crate::plugin_sources().unwrap());
    for (arg, value) in [
        ("pretrained", json!(false)),
        ("model_bands", json!(["RED"])),
        ("out_indices", json!([1])),
        ("dims", json!([8, 16, 32, 64])),
    ] {
        let mut a = Map::new();
        a.insert(arg.into(), value);
        let e = host
            .build("backbone", "convnextv2_atto", &a, None)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains(arg), "{arg}: {e}");
    }
    let e = host
        .build(
            "backbone",
            "convnextv2_atto",
            &obj(json!({"patch_size": 4})),
            None,
        )
        .err()
        .expect("patch_size // 8 == 0")
        .to_string();
    assert!(e.contains("patch_size"), "{e}");
}
