//! Tests of the Bottleneck ResNet, ViT and ConvNeXt entries: parity with the reference
//! fixtures (`scripts/reference/cases/timm_a.py`), preset sizes, argument errors and
//! pretrained loading.
//!
//! Parameter / state_dict counts were printed from the reference Python
//! (`BACKBONE_REGISTRY.build("timm_<name>", features_only=True, pretrained=False)`, timm
//! 1.0.31; state_dict entries without `num_batches_tracked`), not from this crate.
use crate::test_support::{build, get, n_params, parity as check, tensor, write_checkpoint};
use serde_json::json;
use tch::{Device, Kind, Tensor};
use terrahost_plugin_api::ErrorKind;

#[test]
fn parity_timm_resnet50() {
    check("timm_resnet50");
}

#[test]
fn parity_timm_resnet101() {
    check("timm_resnet101");
}

#[test]
fn parity_timm_resnet152() {
    check("timm_resnet152");
}

#[test]
fn parity_timm_vit_tiny_patch16_224() {
    check("timm_vit_tiny_patch16_224");
}

#[test]
fn parity_timm_vit_small_patch16_224() {
    check("timm_vit_small_patch16_224");
}

#[test]
fn parity_timm_vit_base_patch16_224_dynamic_img_size() {
    check("timm_vit_base_patch16_224");
}

#[test]
fn parity_timm_vit_large_patch16_224() {
    check("timm_vit_large_patch16_224");
}

#[test]
fn parity_timm_vit_small_register_tokens_layer_scale() {
    check("timm_vit_small_patch16_224_tokens");
}

#[test]
fn parity_timm_convnext_tiny() {
    check("timm_convnext_tiny");
}

#[test]
fn parity_timm_convnext_small() {
    check("timm_convnext_small");
}

#[test]
fn parity_timm_convnext_base() {
    check("timm_convnext_base");
}

/// (name, parameters, state_dict entries, out_channels) of the default features_only build.
const PRESETS: &[(&str, i64, usize, &[i64])] = &[
    ("resnet50", 23_508_032, 265, &[64, 256, 512, 1024, 2048]),
    ("resnet101", 42_500_160, 520, &[64, 256, 512, 1024, 2048]),
    ("resnet152", 58_143_808, 775, &[64, 256, 512, 1024, 2048]),
    ("vit_tiny_patch16_224", 5_524_032, 148, &[192; 3]),
    ("vit_small_patch16_224", 21_664_896, 148, &[384; 3]),
    ("vit_base_patch16_224", 85_797_120, 148, &[768; 3]),
    ("vit_large_patch16_224", 303_299_584, 292, &[1024; 3]),
    ("convnext_tiny", 27_818_592, 178, &[96, 192, 384, 768]),
    ("convnext_small", 49_453_152, 340, &[96, 192, 384, 768]),
    ("convnext_base", 87_564_416, 340, &[128, 256, 512, 1024]),
];

#[test]
fn preset_sizes_match_timm() {
    for &(name, params, entries, channels) in PRESETS {
        let m = build(name, json!({})).unwrap();
        assert_eq!(n_params(&m), params, "{name} parameters");
        assert_eq!(m.state_dict().len(), entries, "{name} state_dict entries");
        assert_eq!(m.out_channels(), channels, "{name} out_channels");
    }
}

#[test]
fn vit_keys_sit_under_model_and_pruned_parts_are_absent() {
    let m = build(
        "vit_tiny_patch16_224",
        json!({"img_size": 32, "out_indices": [0, 2]}),
    )
    .unwrap();
    let sd = m.state_dict();
    let shape = |k: &str| {
        sd.iter()
            .find(|(n, _)| n == k)
            .unwrap_or_else(|| panic!("no {k}"))
            .1
            .size()
    };
    assert_eq!(shape("model.cls_token"), vec![1, 1, 192]);
    assert_eq!(shape("model.pos_embed"), vec![1, 5, 192]);
    assert_eq!(shape("model.patch_embed.proj.weight"), vec![192, 3, 16, 16]);
    assert_eq!(shape("model.blocks.2.attn.qkv.weight"), vec![576, 192]);
    assert!(sd.iter().all(|(k, _)| k.starts_with("model.")));
    assert!(!sd
        .iter()
        .any(|(k, _)| k.starts_with("model.blocks.3.") || k.starts_with("model.norm.")));
    // 4 + 3 blocks * 12 entries.
    assert_eq!(sd.len(), 40);
}

#[test]
fn vit_features_are_nchw_maps() {
    let m = build(
        "vit_tiny_patch16_224",
        json!({"img_size": [32, 64], "depth": 2, "out_indices": 1}),
    )
    .unwrap();
    let x = Tensor::randn([2, 3, 32, 64], (Kind::Float, Device::Cpu));
    let ys = m.forward(&[x]).unwrap();
    assert_eq!(ys.len(), 1);
    assert_eq!(ys[0].size(), vec![2, 192, 2, 4]);
    // A fixed-size ViT refuses another size and says how to fix it.
    let e = m
        .forward(&[Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu))])
        .unwrap_err();
    assert!(
        e.message().contains("img_size") && e.message().contains("dynamic_img_size"),
        "{e}"
    );
}

#[test]
fn argument_errors_name_the_argument() {
    for (name, k, v) in [
        ("vit_tiny_patch16_224", "out_indices", json!([12])),
        ("vit_tiny_patch16_224", "out_indices", json!([3, 3])),
        ("vit_tiny_patch16_224", "out_indices", json!(13)),
        ("vit_tiny_patch16_224", "num_heads", json!(5)),
        ("vit_tiny_patch16_224", "img_size", json!([32, 32, 3])),
        ("vit_tiny_patch16_224", "class_token", json!(false)),
        ("vit_tiny_patch16_224", "drop_path_rate", json!(1.0)),
        ("vit_tiny_patch16_224", "features_only", json!(false)),
        ("convnext_tiny", "out_indices", json!([2, 1])),
        ("convnext_tiny", "out_indices", json!(5)),
        ("convnext_tiny", "depths", json!([1, 1, 1])),
        ("convnext_tiny", "patch_size", json!(8)),
        ("convnext_tiny", "in_chans", json!(0)),
        ("resnet50", "out_indices", json!([5])),
    ] {
        let e = build(name, json!({ k: v }))
            .err()
            .unwrap_or_else(|| panic!("{name} accepted {k}={v}"));
        assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT, "{e}");
        assert!(e.message().contains(k), "{name} {k}={v}: {e}");
    }
    // An argument timm's ViT does not take through this entry is refused by name.
    let e = build("vit_tiny_patch16_224", json!({"output_stride": 16}))
        .err()
        .unwrap();
    assert!(e.message().contains("output_stride"), "{e}");
}

fn write(named: &[(String, Tensor)], file: &str) -> String {
    let path = write_checkpoint(named, "timm-a-test", file);
    path.to_str().unwrap().to_owned()
}

/// A full timm ViT-Ti classifier checkpoint at 224 (keys without `model.`, with norm and
/// head), random values.
fn vit_tiny_checkpoint() -> Vec<(String, Tensor)> {
    let full = build("vit_tiny_patch16_224", json!({})).unwrap();
    let mut named: Vec<(String, Tensor)> = full
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k.strip_prefix("model.").unwrap().to_owned(), t.rand_like()))
        .collect();
    let f = (Kind::Float, Device::Cpu);
    named.push(("norm.weight".into(), Tensor::ones([192], f)));
    named.push(("norm.bias".into(), Tensor::zeros([192], f)));
    named.push(("head.weight".into(), Tensor::zeros([1000, 192], f)));
    named.push(("head.bias".into(), Tensor::zeros([1000], f)));
    named
}

#[test]
fn vit_pretrained_file_loads_with_timm_filters() {
    let named = vit_tiny_checkpoint();
    let src = |k: &str| tensor(&named, k);
    let file = write(&named, "vit_tiny.safetensors");
    let overlay = json!({ "file": file });

    // Same size: loaded as is.
    let m = build(
        "vit_tiny_patch16_224",
        json!({"pretrained": true, "pretrained_cfg_overlay": overlay}),
    )
    .unwrap();
    assert!(get(&m, "model.pos_embed").equal(&src("pos_embed")));
    assert!(get(&m, "model.blocks.11.mlp.fc2.weight").equal(&src("blocks.11.mlp.fc2.weight")));

    // img_size 32: the 14x14 grid is resampled to 2x2; the class token's entry is kept.
    let m = build(
        "vit_tiny_patch16_224",
        json!({"pretrained": true, "pretrained_cfg_overlay": overlay, "img_size": 32, "out_indices": [1]}),
    )
    .unwrap();
    let pe = get(&m, "model.pos_embed");
    assert_eq!(pe.size(), vec![1, 5, 192]);
    assert!(pe.narrow(1, 0, 1).equal(&src("pos_embed").narrow(1, 0, 1)));
    // Downsampling 14 -> 2 averages: every resampled value lies within the source range.
    let grid = src("pos_embed").narrow(1, 1, 196);
    let (lo, hi) = (grid.min().double_value(&[]), grid.max().double_value(&[]));
    let got = pe.narrow(1, 1, 4);
    assert!(got.min().double_value(&[]) > lo - 0.2 && got.max().double_value(&[]) < hi + 0.2);

    // in_chans=1: the patch kernels' three channels are summed (adapt_input_conv).
    let m = build(
        "vit_tiny_patch16_224",
        json!({"pretrained": true, "pretrained_cfg_overlay": overlay, "in_chans": 1}),
    )
    .unwrap();
    let w = src("patch_embed.proj.weight");
    assert!(get(&m, "model.patch_embed.proj.weight").allclose(
        &w.sum_dim_intlist(Some([1i64].as_slice()), true, Kind::Float),
        1e-6,
        1e-6,
        false
    ));

    // patch_size 8: the 16x16 kernels are resampled to 8x8 and the grid to 28x28.
    let m = build(
        "vit_tiny_patch16_224",
        json!({"pretrained": true, "pretrained_cfg_overlay": overlay, "patch_size": 8, "out_indices": [0]}),
    )
    .unwrap();
    assert_eq!(
        get(&m, "model.patch_embed.proj.weight").size(),
        vec![192, 3, 8, 8]
    );
    assert_eq!(get(&m, "model.pos_embed").size(), vec![1, 785, 192]);

    // Another architecture is refused with the offending keys.
    let e = build(
        "vit_small_patch16_224",
        json!({"pretrained": true, "pretrained_cfg_overlay": overlay}),
    )
    .err()
    .unwrap();
    assert!(e.message().contains("shape"), "{e}");
    let e = build(
        "vit_tiny_patch16_224",
        json!({"pretrained": true, "pretrained_cfg_overlay": overlay, "qk_norm": true}),
    )
    .err()
    .unwrap();
    assert!(
        e.message().contains("missing keys") && e.message().contains("q_norm"),
        "{e}"
    );
    // And pretrained=true without a file says why nothing is downloaded.
    let e = build("vit_tiny_patch16_224", json!({"pretrained": true}))
        .err()
        .unwrap();
    assert!(e.message().contains("download"), "{e}");
}

#[test]
fn vit_pos_embed_resampling_matches_torch_interpolate() {
    // Reference: F.interpolate(x, size=(3, 2), mode="bicubic", antialias=True,
    // align_corners=False) of arange(16).reshape(1, 1, 4, 4), printed from torch 2.13.
    let pe = Tensor::arange(16, (Kind::Float, Device::Cpu)).reshape([1, 16, 1]);
    let pe = Tensor::cat(
        &[Tensor::full([1, 1, 1], 7.0, (Kind::Float, Device::Cpu)), pe],
        1,
    );
    let out = crate::models::vit::resample_abs_pos_embed(&pe, (3, 2), (4, 4), 1).unwrap();
    let got = Vec::<f32>::try_from(out.flatten(0, -1)).unwrap();
    let want = [
        7.0f32,
        REF_RESAMPLE[0],
        REF_RESAMPLE[1],
        REF_RESAMPLE[2],
        REF_RESAMPLE[3],
        REF_RESAMPLE[4],
        REF_RESAMPLE[5],
    ];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
    }
}

/// See `vit_pos_embed_resampling_matches_torch_interpolate`.
const REF_RESAMPLE: [f32; 6] = [
    1.346_502_2,
    3.172_948_4,
    6.586_776_7,
    8.413_222,
    11.827_052,
    13.653_499,
];

#[test]
fn convnext_pretrained_file_loads_timm_and_facebook_layouts() {
    let small = json!({"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]});
    let full = build("convnext_tiny", small.clone()).unwrap();
    // timm layout: stem.0 / stages.i, plus the head.
    let mut named: Vec<(String, Tensor)> = full
        .state_dict()
        .into_iter()
        .map(|(k, t)| {
            let k = k
                .replacen("stem_", "stem.", 1)
                .replacen("stages_", "stages.", 1);
            (format!("module.{k}"), t.rand_like())
        })
        .collect();
    let f = (Kind::Float, Device::Cpu);
    named.push(("module.head.norm.weight".into(), Tensor::ones([32], f)));
    named.push(("module.head.fc.weight".into(), Tensor::zeros([10, 32], f)));
    let file = write(&named, "convnext.safetensors");
    let src = |k: &str| tensor(&named, k);
    let mut args = small.clone();
    args["pretrained"] = json!(true);
    args["pretrained_cfg_overlay"] = json!({ "file": file });
    args["out_indices"] = json!([0, 1]);
    let m = build("convnext_tiny", args.clone()).unwrap();
    assert!(
        get(&m, "stages_1.downsample.1.weight").equal(&src("module.stages.1.downsample.1.weight"))
    );
    assert!(get(&m, "stem_1.bias").equal(&src("module.stem.1.bias")));
    assert!(!m
        .state_dict()
        .iter()
        .any(|(k, _)| k.starts_with("stages_2")));
    args["in_chans"] = json!(6);
    let m6 = build("convnext_tiny", args).unwrap();
    assert!(get(&m6, "stem_0.weight").narrow(1, 3, 3).allclose(
        &(src("module.stem.0.weight") * 0.5),
        1e-6,
        1e-6,
        false
    ));

    // Facebook layout: downsample_layers.*, stages.i.j, dwconv, pwconv as 1x1 convs.
    let fb: Vec<(String, Tensor)> = full
        .state_dict()
        .into_iter()
        .map(|(k, t)| {
            let k = k
                .replace("stem_", "downsample_layers.0.")
                .replace(".blocks.", ".")
                .replace("conv_dw", "dwconv")
                .replace("mlp.fc", "pwconv");
            let k = if let Some(rest) = k.strip_prefix("stages_") {
                let (i, tail) = rest.split_once('.').unwrap();
                match tail.strip_prefix("downsample.") {
                    Some(t) => format!("downsample_layers.{i}.{t}"),
                    None => format!("stages.{i}.{tail}"),
                }
            } else {
                k
            };
            (k, t.rand_like())
        })
        .collect();
    let file = write(&fb, "convnext_fb.safetensors");
    let mut args = small;
    args["pretrained"] = json!(true);
    args["pretrained_cfg_overlay"] = json!({ "file": file });
    let m = build("convnext_tiny", args).unwrap();
    let fsrc = |k: &str| tensor(&fb, k);
    assert!(get(&m, "stages_2.blocks.0.mlp.fc1.weight").equal(&fsrc("stages.2.0.pwconv1.weight")));
    assert!(get(&m, "stages_3.downsample.0.weight").equal(&fsrc("downsample_layers.3.0.weight")));
    assert!(get(&m, "stem_0.weight").equal(&fsrc("downsample_layers.0.0.weight")));
}

#[test]
fn resnet50_pretrained_torch_save_path_is_read_or_explained() {
    // The shared helper reads through checkpoint::read_state_dict: a missing file is named.
    let e = build(
        "resnet50",
        json!({"pretrained": true, "pretrained_cfg_overlay": {"file": "/nowhere/r50.pth"}}),
    )
    .err()
    .unwrap();
    assert!(e.message().contains("/nowhere/r50.pth"), "{e}");
}

#[test]
fn drop_path_and_dropout_act_in_train_mode_only() {
    tch::manual_seed(0);
    let mut m = build(
        "vit_tiny_patch16_224",
        json!({"img_size": 32, "depth": 2, "out_indices": 1, "drop_path_rate": 0.5, "proj_drop_rate": 0.3}),
    )
    .unwrap();
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let a = m.forward(&[x.shallow_clone()]).unwrap();
    let b = m.forward(&[x.shallow_clone()]).unwrap();
    assert!(a[0].equal(&b[0]));
    m.set_train(true);
    let c = m.forward(&[x]).unwrap();
    assert!(!a[0].allclose(&c[0], 1e-5, 1e-5, false));
}

#[test]
fn vit_timm_checkpoint_loads_like_timm() {
    // scripts/reference/cases/timm_a.py (run as a script) saved a random timm classifier
    // ViT (embed_dim 32, depth 2, 224 / 16) and the features timm computes after loading
    // it with img_size=48, patch_size=8, in_chans=2: patch kernels resampled 16 -> 8, the
    // 14x14 position grid resampled to 6x6, the RGB kernels adapted to 2 channels.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/timm_vit_tiny_patch16_224_pretrained");
    let io: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("io.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let ck = dir.join("checkpoint.safetensors");
    let m = build(
        "vit_tiny_patch16_224",
        json!({"pretrained": true, "embed_dim": 32, "num_heads": 2, "depth": 2, "img_size": 48, "out_indices": [0, 1],
               "patch_size": 8, "in_chans": 2, "pretrained_cfg_overlay": {"file": ck.to_str().unwrap()}}),
    )
    .unwrap();
    let ys = m.forward(&[io["input.0"].shallow_clone()]).unwrap();
    assert_eq!(ys.len(), 2);
    for (i, y) in ys.iter().enumerate() {
        terrahost_testkit::assert_close(
            &format!("output.{i}"),
            y,
            &io[&format!("output.{i}")],
            1e-4,
        );
    }
}
