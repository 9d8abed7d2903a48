//! Tests of the Prithvi entries: parity with the reference fixtures of
//! `scripts/reference/cases/prithvi.py`, preset sizes, argument errors, features for
//! image models and pretrained loading with band selection.

use crate::models::prithvi_checkpoint::{self as ckpt, Band};
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};
use terrahost_plugin_api::sdk::DynModule;
use terrahost_testkit::{assert_close, check_fixture, host_with, Fixture};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("a JSON object").clone()
}

fn parity(case: &str) {
    check_fixture(crate::plugin_sources().unwrap(), case);
}

#[test]
fn prithvi_parity_eo_tiny() {
    parity("terratorch_prithvi_eo_tiny");
}

#[test]
fn prithvi_parity_eo_tiny_vpt() {
    parity("terratorch_prithvi_eo_tiny_vpt");
}

#[test]
fn prithvi_parity_eo_v1_100_two_frames() {
    parity("terratorch_prithvi_eo_v1_100");
}

#[test]
fn prithvi_parity_eo_v2_tiny_tl_coords() {
    parity("terratorch_prithvi_eo_v2_tiny_tl");
}

#[test]
fn prithvi_parity_eo_v2_100_tl_out_indices() {
    parity("terratorch_prithvi_eo_v2_100_tl");
}

#[test]
fn prithvi_parity_eo_v2_300_bands_interpolated() {
    parity("terratorch_prithvi_eo_v2_300");
}

#[test]
fn prithvi_parity_eo_v2_300_tl_location_only() {
    parity("terratorch_prithvi_eo_v2_300_tl");
}

#[test]
fn prithvi_parity_eo_v2_600_rectangular() {
    parity("terratorch_prithvi_eo_v2_600");
}

#[test]
fn prithvi_parity_eo_v2_600_tl_more_frames() {
    parity("terratorch_prithvi_eo_v2_600_tl");
}

#[test]
fn prithvi_parity_mae_v1_100() {
    parity("terratorch_prithvi_eo_v1_100_mae");
}

#[test]
fn prithvi_parity_mae_v2_tiny_tl() {
    parity("terratorch_prithvi_eo_v2_tiny_tl_mae");
}

#[test]
fn prithvi_parity_mae_v2_100_tl() {
    parity("terratorch_prithvi_eo_v2_100_tl_mae");
}

#[test]
fn prithvi_parity_mae_v2_300_tubelet_norm_pix() {
    parity("terratorch_prithvi_eo_v2_300_mae");
}

#[test]
fn prithvi_parity_mae_v2_300_tl_interpolated() {
    parity("terratorch_prithvi_eo_v2_300_tl_mae");
}

#[test]
fn prithvi_parity_mae_v2_600() {
    parity("terratorch_prithvi_eo_v2_600_mae");
}

#[test]
fn prithvi_parity_mae_v2_600_tl() {
    parity("terratorch_prithvi_eo_v2_600_tl_mae");
}

fn build(registry: &str, name: &str, args: Value) -> Result<DynModule, String> {
    let host = host_with(crate::plugin_sources().unwrap());
    host.build(registry, name, &obj(args), None)
        .map_err(|e| e.to_string())
}

fn n_params(m: &DynModule) -> i64 {
    m.module()
        .named_parameters()
        .iter()
        .map(|nt| nt.tensor.with(|t| t.numel() as i64))
        .sum()
}

/// Parameter counts of TerraTorch 1.2.11's builders with default arguments (counted
/// in Python with `sum(p.numel() for p in model.parameters())`).
#[test]
fn prithvi_preset_parameter_counts() {
    let expected: [(&str, i64, i64, usize); 8] = [
        ("prithvi_eo_tiny", 3_553_280, 256, 4),
        ("prithvi_eo_v1_100", 86_237_184, 768, 12),
        ("prithvi_eo_v2_tiny_tl", 5_634_050, 192, 12),
        ("prithvi_eo_v2_100_tl", 86_237_186, 768, 12),
        ("prithvi_eo_v2_300", 303_886_336, 1024, 24),
        ("prithvi_eo_v2_300_tl", 303_886_338, 1024, 24),
        ("prithvi_eo_v2_600", 631_188_480, 1280, 32),
        ("prithvi_eo_v2_600_tl", 631_188_482, 1280, 32),
    ];
    for (name, params, width, depth) in expected {
        let m = build("backbone", &format!("terratorch_{name}"), json!({})).unwrap();
        assert_eq!(n_params(&m), params, "{name}: parameters");
        assert_eq!(m.out_channels(), vec![width; depth], "{name}: out_channels");
    }
    for (name, params) in [
        ("prithvi_eo_v1_100_mae", 112_639_488),
        ("prithvi_eo_v2_tiny_tl_mae", 31_741_444),
    ] {
        let m = build("full_model", &format!("terratorch_{name}"), json!({})).unwrap();
        assert_eq!(n_params(&m), params, "{name}: parameters");
    }
}

#[test]
fn prithvi_meta_and_prepare_features() {
    let m = build(
        "backbone",
        "terratorch_prithvi_eo_v1_100",
        json!({"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": [32, 48], "patch_size": [1, 8, 8], "num_frames": 2}),
    )
    .unwrap();
    let meta = m.meta();
    assert_eq!(meta["patch_size"], json!([1, 8, 8]));
    assert_eq!(meta["img_size"], json!([32, 48]));
    assert_eq!(meta["num_frames"], json!(2));
    assert_eq!(meta["embed_dim"], json!(32));
    // out_channels = embed_dim * frames, as TerraTorch's
    assert_eq!(m.out_channels(), vec![64, 64]);
    let x = Tensor::randn([1, 6, 2, 32, 48], tch::kind::FLOAT_CPU);
    let feats = tch::no_grad(|| m.forward(&[x])).unwrap();
    assert_eq!(feats[0].size(), vec![1, 1 + 2 * 4 * 6, 32]);
    let maps = m
        .prepare_features(&feats)
        .unwrap()
        .expect("Prithvi prepares features");
    assert_eq!(maps.len(), 2);
    assert_eq!(maps[1].size(), vec![1, 64, 4, 6]);
    // [B, (t h w), E] -> [B, (t E), h, w]: channel t*E + e of pixel (h, w) is token 1 + t*24 + h*6 + w
    let tok = feats[1].get(0).get(1 + 24 + 2 * 6 + 3);
    let pix = maps[1].get(0).narrow(0, 32, 32).select(1, 2).select(1, 3);
    assert_close("prepare_features layout", &pix, &tok, 0.0);
}

#[test]
fn prithvi_argument_errors_name_the_argument() {
    let tiny = |extra: Value| {
        let mut a = obj(
            json!({"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": [1, 8, 8]}),
        );
        a.extend(obj(extra));
        Value::Object(a)
    };
    let err = |name: &str, registry: &str, extra: Value| match build(registry, name, tiny(extra)) {
        Ok(_) => panic!("{name} built"),
        Err(e) => e,
    };
    let e = err(
        "terratorch_prithvi_eo_tiny",
        "backbone",
        json!({"pretrained": true}),
    );
    assert!(e.contains("ckpt_path") && e.contains("download"), "{e}");
    let e = err(
        "terratorch_prithvi_eo_tiny",
        "backbone",
        json!({"in_chans": 4}),
    );
    assert!(e.contains("in_chans") && e.contains("bands"), "{e}");
    let e = err(
        "terratorch_prithvi_eo_tiny",
        "backbone",
        json!({"embed_dim": 40}),
    );
    assert!(e.contains("embed_dim"), "{e}");
    let e = err(
        "terratorch_prithvi_eo_tiny",
        "backbone",
        json!({"out_indices": [2]}),
    );
    assert!(e.contains("out_indices"), "{e}");
    let e = err(
        "terratorch_prithvi_eo_tiny",
        "backbone",
        json!({"vit_adapter": true}),
    );
    assert!(e.contains("vit_adapter"), "{e}");
    let e = err(
        "terratorch_prithvi_eo_v2_tiny_tl",
        "backbone",
        json!({"patch_size": [2, 8, 8], "num_frames": 2}),
    );
    assert!(e.contains("patch_size"), "{e}");
    let e = err(
        "terratorch_prithvi_eo_v2_300_mae",
        "full_model",
        json!({"encoder_only": true}),
    );
    assert!(
        e.contains("prithvi_eo_v2_300") && e.contains("encoder_only"),
        "{e}"
    );
    let e = err(
        "terratorch_prithvi_eo_tiny",
        "backbone",
        json!({"bands": [["BLUE"]]}),
    );
    assert!(e.contains("bands"), "{e}");
    // a 4-D input for a multi-frame model
    let m = build(
        "backbone",
        "terratorch_prithvi_eo_tiny",
        tiny(json!({"num_frames": 2})),
    )
    .unwrap();
    let e = m
        .forward(&[Tensor::zeros([1, 6, 32, 32], tch::kind::FLOAT_CPU)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("num_frames=2"), "{e}");
}

#[test]
fn prithvi_bands_set_in_chans() {
    let m = build(
        "backbone",
        "terratorch_prithvi_eo_tiny",
        json!({"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 16, "patch_size": 8, "bands": ["RED", 7, "VV"]}),
    )
    .unwrap();
    let sd = m.state_dict();
    let w = sd
        .iter()
        .find(|(k, _)| k == "patch_embed.proj.weight")
        .unwrap();
    assert_eq!(w.1.size(), vec![32, 3, 1, 8, 8]);
    assert_eq!(m.meta()["model_bands"], json!(["RED", 7, "VV"]));
}

/// The MAE's random masking without given noise: the mask keeps `int(L * (1 - r))`
/// patches, and the reconstruction has the input's shape.
#[test]
fn prithvi_mae_random_mask() {
    let m = build(
        "full_model",
        "terratorch_prithvi_eo_v2_300_mae",
        json!({"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32, "patch_size": [1, 8, 8],
               "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}),
    )
    .unwrap();
    let x = Tensor::randn([2, 6, 32, 32], tch::kind::FLOAT_CPU);
    let out = tch::no_grad(|| m.forward(&[x.shallow_clone()])).unwrap();
    assert_eq!(out[0].dim(), 0);
    assert_eq!(out[1].size(), vec![2, 6, 32, 32]);
    assert_eq!(out[2].size(), vec![2, 32, 32]);
    // 16 patches of 64 pixels; 0.75 masked -> 12 patches per sample
    assert_eq!(
        out[2].sum(Kind::Double).double_value(&[]),
        2.0 * 12.0 * 64.0
    );
    let out = tch::no_grad(|| m.forward_kw(&[x], &obj(json!({"mask_ratio": 0.5})))).unwrap();
    assert_eq!(out[2].sum(Kind::Double).double_value(&[]), 2.0 * 8.0 * 64.0);
}

/// `mask_ratio` follows TerraTorch 1.2.13: a null keyword means the model's own ratio,
/// 0.0 is refused (as a keyword, and as the model's ratio) with the reason.
#[test]
fn prithvi_mae_mask_ratio_follows_terratorch_1_2_13() {
    let args = |ratio: f64| {
        json!({"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32, "patch_size": [1, 8, 8],
               "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2, "mask_ratio": ratio})
    };
    let m = build("full_model", "terratorch_prithvi_eo_v2_300_mae", args(0.5)).unwrap();
    let x = Tensor::randn([2, 6, 32, 32], tch::kind::FLOAT_CPU);
    // null: the model's 0.5 -> 8 of 16 patches masked per sample
    let out =
        tch::no_grad(|| m.forward_kw(&[x.shallow_clone()], &obj(json!({"mask_ratio": null}))))
            .unwrap();
    assert_eq!(out[2].sum(Kind::Double).double_value(&[]), 2.0 * 8.0 * 64.0);
    let out =
        tch::no_grad(|| m.forward_kw(&[x.shallow_clone()], &obj(json!({"mask_ratio": 0.25}))))
            .unwrap();
    assert_eq!(out[2].sum(Kind::Double).double_value(&[]), 2.0 * 4.0 * 64.0);
    let e = tch::no_grad(|| m.forward_kw(&[x.shallow_clone()], &obj(json!({"mask_ratio": 0.0}))))
        .expect_err("mask_ratio 0.0 must be refused")
        .to_string();
    assert!(
        e.contains("mask_ratio 0.0") && e.contains("1.2.12") && e.contains("null"),
        "{e}"
    );
    // a model whose own ratio is 0 builds (a 1.2.11 config loads) and refuses to run
    let m = build("full_model", "terratorch_prithvi_eo_v2_300_mae", args(0.0)).unwrap();
    let e = tch::no_grad(|| m.forward(&[x.shallow_clone()]))
        .expect_err("refused")
        .to_string();
    assert!(e.contains("mask_ratio 0.0"), "{e}");
}

/// Pretrained loading against TerraTorch: the checkpoint is the synthetic state_dict
/// of a 6-band MAE (MAE key layout), loaded into a 3-band encoder with a band subset.
#[test]
fn prithvi_pretrained_band_selection_matches_terratorch() {
    let fx = Fixture::load("terratorch_prithvi_pretrained");
    let dir = tempfile_dir();
    let path = dir.join("ckpt.safetensors");
    let weights = fx.weights();
    let named: Vec<(&str, &Tensor)> = weights.iter().map(|(k, t)| (k.as_str(), t)).collect();
    Tensor::write_safetensors(&named, &path).unwrap();
    let mut args = fx.args();
    args.insert("pretrained".into(), json!(true));
    args.insert("ckpt_path".into(), json!(path.to_str().unwrap()));
    let host = host_with(crate::plugin_sources().unwrap());
    let m = host.build(fx.registry(), fx.name(), &args, None).unwrap();
    // band columns picked from the checkpoint: SWIR_2 (5), BLUE (0), NIR_NARROW (3)
    let sd: std::collections::HashMap<String, Tensor> = m.state_dict().into_iter().collect();
    let ck: std::collections::HashMap<&str, &Tensor> = named.iter().copied().collect();
    let w = &sd["patch_embed.proj.weight"];
    let src = ck["encoder.patch_embed.proj.weight"];
    for (i, j) in [(0, 5), (1, 0), (2, 3)] {
        assert_close(
            &format!("band column {i}"),
            &w.select(1, i),
            &src.select(1, j),
            0.0,
        );
    }
    assert_close(
        "qkv",
        &sd["blocks.1.attn.qkv.weight"],
        ck["encoder.blocks.1.attn.qkv.weight"],
        0.0,
    );
    assert!(!sd
        .keys()
        .any(|k| k.contains("decoder") || k.contains("mask_token")));
    let out = tch::no_grad(|| m.forward(&fx.inputs)).unwrap();
    assert_eq!(out.len(), fx.outputs.len());
    for (i, (a, e)) in out.iter().zip(&fx.outputs).enumerate() {
        assert_close(&format!("pretrained output.{i}"), a, e, fx.atol());
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The same pretrained load from the checkpoint as PyTorch's `torch.save` wrote it
/// (`ckpt.pt`), through `pretrained_cfg_overlay={"file": ...}` this time.
#[test]
fn prithvi_pretrained_reads_a_torch_save_checkpoint() {
    let fx = Fixture::load("terratorch_prithvi_pretrained");
    let mut args = fx.args();
    args.insert("pretrained".into(), json!(true));
    args.insert(
        "pretrained_cfg_overlay".into(),
        json!({"file": fx.dir.join("ckpt.pt").to_str().unwrap()}),
    );
    let host = host_with(crate::plugin_sources().unwrap());
    let m = host.build(fx.registry(), fx.name(), &args, None).unwrap();
    let out = tch::no_grad(|| m.forward(&fx.inputs)).unwrap();
    for (i, (a, e)) in out.iter().zip(&fx.outputs).enumerate() {
        assert_close(&format!("pretrained from .pt, output.{i}"), a, e, fx.atol());
    }
}

/// Pretrained loading into the MAE: an MAE checkpoint in V1 layout (no `encoder.` /
/// `decoder.` prefixes) lands on the right keys, and the patch embedding and the
/// decoder's prediction layer keep their shapes.
#[test]
fn prithvi_mae_pretrained_from_v1_layout() {
    let args = json!({"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 16, "patch_size": [1, 8, 8],
                      "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2});
    let src = build(
        "full_model",
        "terratorch_prithvi_eo_v1_100_mae",
        args.clone(),
    )
    .unwrap();
    let dir = tempfile_dir();
    let path = dir.join("v1.safetensors");
    let v1: Vec<(String, Tensor)> = src
        .state_dict()
        .into_iter()
        .map(|(k, t)| {
            (
                k.trim_start_matches("encoder.")
                    .trim_start_matches("decoder.")
                    .to_owned(),
                t,
            )
        })
        .collect();
    let named: Vec<(&str, &Tensor)> = v1.iter().map(|(k, t)| (k.as_str(), t)).collect();
    Tensor::write_safetensors(&named, &path).unwrap();
    let mut a = obj(args);
    a.insert("pretrained".into(), json!(true));
    a.insert("ckpt_path".into(), json!(path.to_str().unwrap()));
    let m = build(
        "full_model",
        "terratorch_prithvi_eo_v1_100_mae",
        Value::Object(a),
    )
    .unwrap();
    let got: std::collections::HashMap<String, Tensor> = m.state_dict().into_iter().collect();
    for (k, t) in src.state_dict() {
        if k == "encoder.patch_embed.proj.weight" {
            continue; // re-selected band by band (all six bands: same values)
        }
        assert_close(&k, &got[&k], &t, 0.0);
    }
    assert_close(
        "patch embed",
        &got["encoder.patch_embed.proj.weight"],
        &src.state_dict()
            .into_iter()
            .find(|(k, _)| k == "encoder.patch_embed.proj.weight")
            .unwrap()
            .1,
        0.0,
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The MAE filter keeps MAE keys and moves V1-style keys under `encoder.`/`decoder.`;
/// the encoder filter strips `encoder.` and drops decoder keys.
#[test]
fn prithvi_checkpoint_filters() {
    let t = || Tensor::zeros([1], tch::kind::FLOAT_CPU);
    let vars = std::collections::HashMap::new();
    let info = ckpt::FilterInfo {
        temporal_encoding: false,
        location_encoding: true,
    };
    let v1 = vec![
        ("_timm_module.blocks.0.norm1.weight".to_owned(), t()),
        ("mask_token".to_owned(), t()),
        ("decoder_embed.weight".to_owned(), t()),
        ("temporal_embed_enc.scale".to_owned(), t()),
        ("location_embed_enc.scale".to_owned(), t()),
    ];
    let mae = ckpt::filter_mae(
        v1.iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect(),
        &vars,
        &info,
    );
    let keys: Vec<&str> = mae.keys().collect();
    assert_eq!(
        keys,
        [
            "encoder.blocks.0.norm1.weight",
            "decoder.mask_token",
            "decoder.decoder_embed.weight",
            "encoder.location_embed_enc.scale"
        ]
    );
    let vit = ckpt::filter_vit(v1, &vars, &info);
    let keys: Vec<&str> = vit.keys().collect();
    assert_eq!(keys, ["blocks.0.norm1.weight", "location_embed_enc.scale"]);
    let b = ckpt::parse_bands(&json!(["BLUE", "VV", 3]), "bands", true).unwrap();
    assert_eq!(
        b,
        vec![
            Band::Hls("BLUE".into()),
            Band::Name("VV".into()),
            Band::Index(3)
        ]
    );
    // user-given pretrained band names stay strings and do not equal HLS bands (as upstream)
    let p = ckpt::parse_bands(&json!(["BLUE"]), "pretrained_bands", false).unwrap();
    assert_ne!(p[0], b[0]);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "terrahost-prithvi-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
