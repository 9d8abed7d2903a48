//! Unit tests of the `timm` plugin, through its root module's sources (no dlopen), and
//! parity tests against the reference fixtures.
//!
//! Expected key lists and shapes were printed from the reference Python
//! (`timm.create_model(name, features_only=True, ...).state_dict()`, timm 1.0.31, without
//! `num_batches_tracked`), not from this crate.
use crate::models::resnet::{self, BlockKind, Config, ResNet};
use crate::test_support::{build, n_params, parity, scratch_dir, tensor as get};
use serde_json::{json, Value};
use tch::{nn, Device, Kind, Tensor};
use terrahost_plugin_api::sdk::Model;
use terrahost_plugin_api::ErrorKind;
use terrahost_testkit::{keys_and_shapes, sorted_keys as ks};

fn sorted(mut v: Vec<(String, Vec<i64>)>) -> Vec<(String, Vec<i64>)> {
    v.sort();
    v
}

fn bn(prefix: &str, c: i64) -> Vec<(String, Vec<i64>)> {
    ["weight", "bias", "running_mean", "running_var"]
        .iter()
        .map(|s| (format!("{prefix}.{s}"), vec![c]))
        .collect()
}

#[test]
fn registers_the_resnet_entries() {
    let sources = crate::plugin_sources().unwrap();
    // backbone, and model_factory (TimmModelFactory)
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[1].registry.as_str(), "model_factory");
    assert_eq!(sources[0].registry.as_str(), "backbone");
    assert_eq!(sources[0].prefix.as_str(), "timm");
    let names: Vec<String> = sources[0]
        .source
        .names()
        .into_iter()
        .map(|s| s.into_string())
        .collect();
    // Other families add entries; the ResNet ones must be there.
    for n in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    let info = sources[0]
        .source
        .describe("resnet18".into())
        .into_result()
        .unwrap();
    let params: Vec<&str> = info.params.iter().map(|p| p.name.as_str()).collect();
    for p in [
        "features_only",
        "pretrained",
        "pretrained_cfg_overlay",
        "in_chans",
        "out_indices",
        "drop_rate",
        "drop_path_rate",
    ] {
        assert!(params.contains(&p), "missing parameter {p} in {params:?}");
    }
    let default = |n: &str| {
        info.params
            .iter()
            .find(|p| p.name.as_str() == n)
            .unwrap()
            .default_value()
            .unwrap()
    };
    assert_eq!(default("features_only"), json!(true));
    assert_eq!(default("pretrained"), json!(false));
    assert_eq!(default("pretrained_cfg_overlay"), Value::Null);
    assert_eq!(default("in_chans"), json!(3));
    assert_eq!(default("out_indices"), json!([0, 1, 2, 3, 4]));
    assert_eq!(default("drop_path_rate"), json!(0.0));
}

#[test]
fn resnet18_stem_and_layer1_keys_match_timm() {
    let m = build("resnet18", json!({"out_indices": [0, 1]})).unwrap();
    let c3: &[i64] = &[64, 64, 3, 3];
    let expected = ks(&[
        ("conv1.weight", &[64, 3, 7, 7]),
        ("bn1.weight", &[64]),
        ("bn1.bias", &[64]),
        ("bn1.running_mean", &[64]),
        ("bn1.running_var", &[64]),
        ("layer1.0.conv1.weight", c3),
        ("layer1.0.bn1.weight", &[64]),
        ("layer1.0.bn1.bias", &[64]),
        ("layer1.0.bn1.running_mean", &[64]),
        ("layer1.0.bn1.running_var", &[64]),
        ("layer1.0.conv2.weight", c3),
        ("layer1.0.bn2.weight", &[64]),
        ("layer1.0.bn2.bias", &[64]),
        ("layer1.0.bn2.running_mean", &[64]),
        ("layer1.0.bn2.running_var", &[64]),
        ("layer1.1.conv1.weight", c3),
        ("layer1.1.bn1.weight", &[64]),
        ("layer1.1.bn1.bias", &[64]),
        ("layer1.1.bn1.running_mean", &[64]),
        ("layer1.1.bn1.running_var", &[64]),
        ("layer1.1.conv2.weight", c3),
        ("layer1.1.bn2.weight", &[64]),
        ("layer1.1.bn2.bias", &[64]),
        ("layer1.1.bn2.running_mean", &[64]),
        ("layer1.1.bn2.running_var", &[64]),
    ]);
    assert_eq!(keys_and_shapes(&m), expected);
    assert_eq!(m.out_channels(), vec![64, 64]);
}

/// `timm.create_model("resnet18", features_only=True).state_dict()` keys, in timm's order.
const RESNET18_KEYS: &str = "conv1.weight bn1.weight bn1.bias bn1.running_mean bn1.running_var layer1.0.conv1.weight layer1.0.bn1.weight layer1.0.bn1.bias layer1.0.bn1.running_mean layer1.0.bn1.running_var layer1.0.conv2.weight layer1.0.bn2.weight layer1.0.bn2.bias layer1.0.bn2.running_mean layer1.0.bn2.running_var layer1.1.conv1.weight layer1.1.bn1.weight layer1.1.bn1.bias layer1.1.bn1.running_mean layer1.1.bn1.running_var layer1.1.conv2.weight layer1.1.bn2.weight layer1.1.bn2.bias layer1.1.bn2.running_mean layer1.1.bn2.running_var layer2.0.conv1.weight layer2.0.bn1.weight layer2.0.bn1.bias layer2.0.bn1.running_mean layer2.0.bn1.running_var layer2.0.conv2.weight layer2.0.bn2.weight layer2.0.bn2.bias layer2.0.bn2.running_mean layer2.0.bn2.running_var layer2.0.downsample.0.weight layer2.0.downsample.1.weight layer2.0.downsample.1.bias layer2.0.downsample.1.running_mean layer2.0.downsample.1.running_var layer2.1.conv1.weight layer2.1.bn1.weight layer2.1.bn1.bias layer2.1.bn1.running_mean layer2.1.bn1.running_var layer2.1.conv2.weight layer2.1.bn2.weight layer2.1.bn2.bias layer2.1.bn2.running_mean layer2.1.bn2.running_var layer3.0.conv1.weight layer3.0.bn1.weight layer3.0.bn1.bias layer3.0.bn1.running_mean layer3.0.bn1.running_var layer3.0.conv2.weight layer3.0.bn2.weight layer3.0.bn2.bias layer3.0.bn2.running_mean layer3.0.bn2.running_var layer3.0.downsample.0.weight layer3.0.downsample.1.weight layer3.0.downsample.1.bias layer3.0.downsample.1.running_mean layer3.0.downsample.1.running_var layer3.1.conv1.weight layer3.1.bn1.weight layer3.1.bn1.bias layer3.1.bn1.running_mean layer3.1.bn1.running_var layer3.1.conv2.weight layer3.1.bn2.weight layer3.1.bn2.bias layer3.1.bn2.running_mean layer3.1.bn2.running_var layer4.0.conv1.weight layer4.0.bn1.weight layer4.0.bn1.bias layer4.0.bn1.running_mean layer4.0.bn1.running_var layer4.0.conv2.weight layer4.0.bn2.weight layer4.0.bn2.bias layer4.0.bn2.running_mean layer4.0.bn2.running_var layer4.0.downsample.0.weight layer4.0.downsample.1.weight layer4.0.downsample.1.bias layer4.0.downsample.1.running_mean layer4.0.downsample.1.running_var layer4.1.conv1.weight layer4.1.bn1.weight layer4.1.bn1.bias layer4.1.bn1.running_mean layer4.1.bn1.running_var layer4.1.conv2.weight layer4.1.bn2.weight layer4.1.bn2.bias layer4.1.bn2.running_mean layer4.1.bn2.running_var";

#[test]
fn resnet18_keys_match_timm_and_have_no_classifier() {
    let m = build("resnet18", json!({})).unwrap();
    let mut ours: Vec<String> = m.state_dict().into_iter().map(|(k, _)| k).collect();
    let mut theirs: Vec<String> = RESNET18_KEYS.split(' ').map(str::to_owned).collect();
    assert_eq!(theirs.len(), 100);
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    // 11,176,512 parameters (the reference's n_params, buffers not counted).
    assert_eq!(n_params(&m), 11_176_512);
}

#[test]
fn resnet34_has_timm_counts() {
    // Reference: 216 state_dict entries with 36 num_batches_tracked, 21,294,080
    // parameters for in_chans=6.
    let m = build("resnet34", json!({"in_chans": 6})).unwrap();
    let sd = m.state_dict();
    assert_eq!(sd.len(), 216 - 36);
    assert_eq!(n_params(&m), 21_294_080);
    let conv1 = sd.iter().find(|(k, _)| k == "conv1.weight").unwrap();
    assert_eq!(conv1.1.size(), vec![64, 6, 7, 7]);
}

#[test]
fn resnet50_bottleneck_keys_match_timm() {
    // Checks the Bottleneck layout through the model type directly (the registered entry
    // has its parity fixture). Reference: resnet50 features_only out_indices=(2,).
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = Config {
        out_indices: vec![2],
        ..Config::resnet50()
    };
    let m = ResNet::new(vs.root(), &cfg).unwrap();
    assert_eq!(m.out_channels(), vec![512]);
    let vars = vs.variables();
    assert_eq!(vars.len(), 120);
    let mut layer20: Vec<(String, Vec<i64>)> = vars
        .iter()
        .filter(|(k, _)| k.starts_with("layer2.0."))
        .map(|(k, t)| (k.clone(), t.size()))
        .collect();
    layer20.sort();
    let mut expected = vec![
        ("layer2.0.conv1.weight".to_owned(), vec![128, 256, 1, 1]),
        ("layer2.0.conv2.weight".to_owned(), vec![128, 128, 3, 3]),
        ("layer2.0.conv3.weight".to_owned(), vec![512, 128, 1, 1]),
        (
            "layer2.0.downsample.0.weight".to_owned(),
            vec![512, 256, 1, 1],
        ),
    ];
    expected.extend(bn("layer2.0.bn1", 128));
    expected.extend(bn("layer2.0.bn2", 128));
    expected.extend(bn("layer2.0.bn3", 512));
    expected.extend(bn("layer2.0.downsample.1", 512));
    assert_eq!(layer20, sorted(expected));
    assert!(!vars
        .keys()
        .any(|k| k.starts_with("layer3") || k.starts_with("fc")));
    // Full resnet50 features: [64, 256, 512, 1024, 2048].
    assert_eq!(
        Config::resnet50().feature_channels(),
        vec![64, 256, 512, 1024, 2048]
    );
}

#[test]
fn deep_stem_and_avg_down_keys_match_timm() {
    // Reference: resnet18, stem_type="deep", avg_down=True, out_indices=(2,): 65 entries.
    let m = build(
        "resnet18",
        json!({"stem_type": "deep", "avg_down": true, "out_indices": [2]}),
    )
    .unwrap();
    let all = keys_and_shapes(&m);
    assert_eq!(all.len(), 65);
    let picked: Vec<_> = all
        .into_iter()
        .filter(|(k, _)| !k.starts_with("layer1") && !k.contains(".1."))
        .collect();
    let mut expected = vec![
        ("conv1.0.weight".to_owned(), vec![64, 3, 3, 3]),
        ("conv1.3.weight".to_owned(), vec![64, 64, 3, 3]),
        ("conv1.6.weight".to_owned(), vec![128, 64, 3, 3]),
        ("layer2.0.conv1.weight".to_owned(), vec![128, 64, 3, 3]),
        ("layer2.0.conv2.weight".to_owned(), vec![128, 128, 3, 3]),
    ];
    expected.extend(bn("conv1.4", 64));
    expected.extend(bn("bn1", 128));
    expected.extend(bn("layer2.0.bn1", 128));
    expected.extend(bn("layer2.0.bn2", 128));
    expected.extend(bn("layer2.0.downsample.2", 128));
    assert_eq!(picked, sorted(expected));
    assert_eq!(m.out_channels(), vec![128]);
}

#[test]
fn features_have_timm_strides_and_channels() {
    let m = build("resnet18", json!({})).unwrap();
    assert_eq!(m.out_channels(), vec![64, 64, 128, 256, 512]);
    let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
    let ys = m.forward(&[x]).unwrap();
    let shapes: Vec<Vec<i64>> = ys.iter().map(Tensor::size).collect();
    assert_eq!(
        shapes,
        vec![
            vec![2, 64, 32, 32],
            vec![2, 64, 16, 16],
            vec![2, 128, 8, 8],
            vec![2, 256, 4, 4],
            vec![2, 512, 2, 2]
        ]
    );
}

#[test]
fn output_stride_dilates_the_last_stages() {
    // timm feature_info reductions: output_stride=16 -> [2, 4, 8, 16, 16]; 8 -> [2, 4, 8, 8, 8].
    let x = Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    for (os, sides) in [(16, [32, 16, 8, 4, 4]), (8, [32, 16, 8, 8, 8])] {
        let m = build("resnet34", json!({"output_stride": os})).unwrap();
        let ys = m.forward(&[x.shallow_clone()]).unwrap();
        let got: Vec<i64> = ys.iter().map(|y| y.size()[3]).collect();
        assert_eq!(got, sides.to_vec(), "output_stride {os}");
    }
    let e = build("resnet18", json!({"output_stride": 4}))
        .err()
        .unwrap();
    assert!(e.message().contains("output_stride"), "{e}");
}

#[test]
fn out_indices_select_features_and_channels() {
    let x = Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    let m = build("resnet18", json!({"out_indices": [1, 3]})).unwrap();
    assert_eq!(m.out_channels(), vec![64, 256]);
    let ys = m.forward(&[x.shallow_clone()]).unwrap();
    assert_eq!(
        ys.iter().map(Tensor::size).collect::<Vec<_>>(),
        vec![vec![1, 64, 16, 16], vec![1, 256, 4, 4]]
    );
    // FeatureListNet drops the modules after the last tap.
    assert!(!m.state_dict().iter().any(|(k, _)| k.starts_with("layer4")));

    // Negative indices count from the end; an int n means the last n.
    assert_eq!(
        build("resnet18", json!({"out_indices": [-2, -1]}))
            .unwrap()
            .out_channels(),
        vec![256, 512]
    );
    assert_eq!(
        build("resnet18", json!({"out_indices": 2}))
            .unwrap()
            .out_channels(),
        vec![256, 512]
    );
    let stem_only = build("resnet18", json!({"out_indices": [0]})).unwrap();
    assert_eq!(
        stem_only.forward(&[x]).unwrap()[0].size(),
        vec![1, 64, 32, 32]
    );
    assert!(stem_only
        .state_dict()
        .iter()
        .all(|(k, _)| !k.starts_with("layer")));

    for bad in [
        json!([5]),
        json!([-6]),
        json!([3, 1]),
        json!([1, 1]),
        json!([]),
        json!(0),
        json!(6),
    ] {
        let e = build("resnet18", json!({ "out_indices": bad }))
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT, "{e}");
        assert!(e.message().contains("out_indices"), "{e}");
    }
}

#[test]
fn wrong_channel_count_is_an_error_not_a_panic() {
    let m = build("resnet18", json!({"in_chans": 3})).unwrap();
    let x = Tensor::randn([1, 4, 32, 32], (Kind::Float, Device::Cpu));
    let e = m.forward(&[x]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::FORWARD_FAILED, "{e}");
    assert!(
        e.message().contains("4 channels") && e.message().contains("in_chans=3"),
        "{e}"
    );
    // Wrong rank and wrong arity are errors too.
    assert!(m
        .forward(&[Tensor::randn([3, 32, 32], (Kind::Float, Device::Cpu))])
        .is_err());
    assert!(m.forward(&[]).is_err());
    // Past the explicit check, libtorch's own error comes back as an error as well.
    let vs = nn::VarStore::new(Device::Cpu);
    let r = ResNet::new(vs.root(), &Config::resnet18()).unwrap();
    let w = Tensor::randn([1, 4, 32, 32], (Kind::Float, Device::Cpu));
    assert!(r
        .features(&w.narrow(1, 0, 3).to_kind(Kind::Int64), false)
        .is_err());
}

#[test]
fn features_only_false_and_pretrained_downloads_are_refused() {
    let e = build("resnet18", json!({"features_only": false}))
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT);
    assert!(e.message().contains("features_only"), "{e}");

    let e = build("resnet34", json!({"pretrained": true}))
        .err()
        .unwrap();
    assert!(
        e.message().contains("--weights") && e.message().contains("download"),
        "{e}"
    );
    let e = build(
        "resnet34",
        json!({"pretrained": true, "pretrained_cfg_overlay": {"hf_hub_id": "x/y"}}),
    )
    .err()
    .unwrap();
    assert!(e.message().contains("--weights"), "{e}");

    // The overlay alone changes nothing when nothing is loaded.
    assert!(build(
        "resnet18",
        json!({"pretrained_cfg_overlay": {"file": "/nowhere.safetensors"}})
    )
    .is_ok());
    let e = build(
        "resnet18",
        json!({"pretrained": true, "pretrained_cfg_overlay": {"file": "/nowhere.safetensors"}}),
    )
    .err()
    .unwrap();
    assert!(e.message().contains("/nowhere.safetensors"), "{e}");

    for (k, v) in [
        ("in_chans", json!(0)),
        ("drop_path_rate", json!(1.5)),
        ("stem_type", json!("wide")),
    ] {
        let e = build("resnet18", json!({ k: v })).err().unwrap();
        assert!(e.message().contains(k), "{e}");
    }
}

#[test]
fn pretrained_file_loads_like_timm() {
    // A classifier checkpoint of the full timm model (with fc.* and a DDP prefix),
    // written from a model with random weights.
    let src_vs = nn::VarStore::new(Device::Cpu);
    let _src = ResNet::new(src_vs.root(), &Config::resnet18()).unwrap();
    let mut named: Vec<(String, Tensor)> = src_vs
        .variables()
        .into_iter()
        .map(|(k, t)| (format!("module.{k}"), t.detach().rand_like()))
        .collect();
    named.push((
        "module.fc.weight".into(),
        Tensor::zeros([1000, 512], (Kind::Float, Device::Cpu)),
    ));
    named.push((
        "module.fc.bias".into(),
        Tensor::zeros([1000], (Kind::Float, Device::Cpu)),
    ));
    named.push(("module.bn1.num_batches_tracked".into(), Tensor::from(0i64)));
    let dir = scratch_dir("timm-plugin-test");
    let file = dir.join("resnet18.safetensors");
    Tensor::write_safetensors(&named, &file).unwrap();
    let src = |k: &str| {
        named
            .iter()
            .find(|(n, _)| n == &format!("module.{k}"))
            .unwrap()
            .1
            .shallow_clone()
    };

    let overlay = json!({"file": file.to_str().unwrap()});
    let m = build(
        "resnet18",
        json!({"pretrained": true, "pretrained_cfg_overlay": overlay, "out_indices": [0, 1, 2]}),
    )
    .unwrap();
    let sd = m.state_dict();
    assert!(get(&sd, "conv1.weight").equal(&src("conv1.weight")));
    assert!(get(&sd, "layer2.1.bn2.running_var").equal(&src("layer2.1.bn2.running_var")));

    // adapt_input_conv: one channel sums the three; six repeat them scaled by 3/6.
    let w = src("conv1.weight");
    let m1 = build(
        "resnet18",
        json!({"pretrained": true, "pretrained_cfg_overlay": overlay, "in_chans": 1}),
    )
    .unwrap();
    let got = get(&m1.state_dict(), "conv1.weight");
    let want = w.narrow(1, 0, 1) + w.narrow(1, 1, 1) + w.narrow(1, 2, 1);
    assert!(got.allclose(&want, 1e-6, 1e-6, false));
    let m6 = build(
        "resnet18",
        json!({"pretrained": true, "pretrained_cfg_overlay": overlay, "in_chans": 6}),
    )
    .unwrap();
    let got = get(&m6.state_dict(), "conv1.weight");
    assert_eq!(got.size(), vec![64, 6, 7, 7]);
    assert!(got
        .narrow(1, 4, 1)
        .allclose(&(w.narrow(1, 1, 1) * 0.5), 1e-6, 1e-6, false));

    // A checkpoint of another architecture is refused with the offending keys.
    let e = build(
        "resnet34",
        json!({"pretrained": true, "pretrained_cfg_overlay": overlay}),
    )
    .err()
    .unwrap();
    assert!(
        e.message().contains("missing keys") && e.message().contains("layer1.2."),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn init_follows_timm() {
    // zero_init_last zeroes the last BN weight of each residual branch only.
    let m = build("resnet18", json!({})).unwrap();
    let sd = m.state_dict();
    assert_eq!(
        get(&sd, "layer3.1.bn2.weight")
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
    assert_eq!(
        get(&sd, "layer3.1.bn1.weight")
            .mean(Kind::Float)
            .double_value(&[]),
        1.0
    );
    assert_eq!(
        get(&sd, "layer3.0.downsample.1.weight")
            .mean(Kind::Float)
            .double_value(&[]),
        1.0
    );
    let m = build("resnet18", json!({"zero_init_last": false})).unwrap();
    assert_eq!(
        get(&m.state_dict(), "layer3.1.bn2.weight")
            .mean(Kind::Float)
            .double_value(&[]),
        1.0
    );
    // Kaiming normal, fan_out, ReLU gain: std sqrt(2 / (512 * 3 * 3)).
    let std = get(&m.state_dict(), "layer4.1.conv1.weight")
        .std(true)
        .double_value(&[]);
    let want = (2.0f64 / (512.0 * 9.0)).sqrt();
    assert!((std - want).abs() < 0.05 * want, "std {std} vs {want}");
}

#[test]
fn drop_path_acts_in_train_mode_only() {
    tch::manual_seed(0);
    // zero_init_last would make every residual branch output zero, and dropping a zero
    // branch changes nothing.
    let cfg = |rate: f64| Config {
        drop_path_rate: rate,
        zero_init_last: false,
        ..Config::resnet18()
    };
    let vs_a = nn::VarStore::new(Device::Cpu);
    let a = ResNet::new(vs_a.root(), &cfg(0.5)).unwrap();
    let mut vs_b = nn::VarStore::new(Device::Cpu);
    let b = ResNet::new(vs_b.root(), &cfg(0.0)).unwrap();
    vs_b.copy(&vs_a).unwrap();
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let ea = Model::forward(&a, &[x.shallow_clone()], false).unwrap();
    let eb = Model::forward(&b, &[x.shallow_clone()], false).unwrap();
    assert!(
        ea[4].equal(&eb[4]),
        "drop path must be the identity in eval mode"
    );
    let ta = Model::forward(&a, &[x.shallow_clone()], true).unwrap();
    let tb = Model::forward(&b, &[x], true).unwrap();
    // The stem has no drop path; the deeper features differ once a path is dropped.
    assert!(ta[0].equal(&tb[0]));
    assert!(!ta[4].allclose(&tb[4], 1e-5, 1e-5, false));
}

#[test]
fn config_presets_and_validation() {
    assert_eq!(Config::resnet18().layers, vec![2, 2, 2, 2]);
    assert_eq!(Config::resnet34().layers, vec![3, 4, 6, 3]);
    assert_eq!(Config::resnet101().layers, vec![3, 4, 23, 3]);
    assert_eq!(Config::resnet152().layers, vec![3, 8, 36, 3]);
    assert_eq!(Config::resnet152().block, BlockKind::Bottleneck);
    assert_eq!(Config::preset("resnet18"), Some(Config::resnet18()));
    assert_eq!(Config::preset("resnet19"), None);
    assert_eq!(
        Config::resnet34().feature_channels(),
        vec![64, 64, 128, 256, 512]
    );
    let vs = nn::VarStore::new(Device::Cpu);
    let e = ResNet::new(
        vs.root(),
        &Config {
            cardinality: 32,
            ..Config::resnet18()
        },
    )
    .unwrap_err();
    assert!(e.message().contains("BasicBlock"), "{e}");
    // The config round-trips through serde.
    let text = serde_json::to_string(&Config::resnet50()).unwrap();
    assert_eq!(
        serde_json::from_str::<Config>(&text).unwrap(),
        Config::resnet50()
    );
    assert_eq!(resnet::NUM_FEATURES, 5);
}

#[test]
fn parity_timm_resnet18() {
    parity("timm_resnet18");
}

#[test]
fn parity_timm_resnet34_in_chans_6() {
    parity("timm_resnet34");
}
