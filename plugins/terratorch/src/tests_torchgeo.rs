//! Tests of the torchgeo-weight backbones (`models/torchgeo_resnet.rs`, `models/swin_v2.rs`):
//! parity with the reference fixtures of `scripts/reference/cases/torchgeo.py` (one per
//! registered name), the position buffers of Swin V2, default sizes, argument errors and
//! checkpoint loading with band selection.

use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};
use terrahost_testkit::{check_fixture, host_with, Fixture};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("a JSON object").clone()
}

fn parity(case: &str) {
    check_fixture(crate::plugin_sources().unwrap(), case);
}

macro_rules! parity_tests {
    ($($test:ident => $case:literal,)*) => {
        $(
            #[test]
            fn $test() {
                parity($case);
            }
        )*
    };
}

parity_tests! {
    parity_ssl4eol_resnet18_landsat_tm_toa_moco => "terratorch_ssl4eol_resnet18_landsat_tm_toa_moco",
    parity_ssl4eol_resnet18_landsat_tm_toa_simclr => "terratorch_ssl4eol_resnet18_landsat_tm_toa_simclr",
    parity_ssl4eol_resnet18_landsat_etm_toa_moco => "terratorch_ssl4eol_resnet18_landsat_etm_toa_moco",
    parity_ssl4eol_resnet18_landsat_etm_toa_simclr => "terratorch_ssl4eol_resnet18_landsat_etm_toa_simclr",
    parity_ssl4eol_resnet18_landsat_etm_sr_moco => "terratorch_ssl4eol_resnet18_landsat_etm_sr_moco",
    parity_ssl4eol_resnet18_landsat_etm_sr_simclr => "terratorch_ssl4eol_resnet18_landsat_etm_sr_simclr",
    parity_ssl4eol_resnet18_landsat_oli_tirs_toa_moco => "terratorch_ssl4eol_resnet18_landsat_oli_tirs_toa_moco",
    parity_ssl4eol_resnet18_landsat_oli_tirs_toa_simclr => "terratorch_ssl4eol_resnet18_landsat_oli_tirs_toa_simclr",
    parity_ssl4eol_resnet18_landsat_oli_sr_moco => "terratorch_ssl4eol_resnet18_landsat_oli_sr_moco",
    parity_ssl4eol_resnet18_landsat_oli_sr_simclr => "terratorch_ssl4eol_resnet18_landsat_oli_sr_simclr",
    parity_ssl4eos12_resnet18_sentinel2_all_moco => "terratorch_ssl4eos12_resnet18_sentinel2_all_moco",
    parity_ssl4eos12_resnet18_sentinel2_rgb_moco => "terratorch_ssl4eos12_resnet18_sentinel2_rgb_moco",
    parity_seco_resnet18_sentinel2_rgb_seco => "terratorch_seco_resnet18_sentinel2_rgb_seco",
    parity_fmow_resnet50_fmow_rgb_gassl => "terratorch_fmow_resnet50_fmow_rgb_gassl",
    parity_ssl4eol_resnet50_landsat_tm_toa_moco => "terratorch_ssl4eol_resnet50_landsat_tm_toa_moco",
    parity_ssl4eol_resnet50_landsat_tm_toa_simclr => "terratorch_ssl4eol_resnet50_landsat_tm_toa_simclr",
    parity_ssl4eol_resnet50_landsat_etm_toa_moco => "terratorch_ssl4eol_resnet50_landsat_etm_toa_moco",
    parity_ssl4eol_resnet50_landsat_etm_toa_simclr => "terratorch_ssl4eol_resnet50_landsat_etm_toa_simclr",
    parity_ssl4eol_resnet50_landsat_etm_sr_moco => "terratorch_ssl4eol_resnet50_landsat_etm_sr_moco",
    parity_ssl4eol_resnet50_landsat_etm_sr_simclr => "terratorch_ssl4eol_resnet50_landsat_etm_sr_simclr",
    parity_ssl4eol_resnet50_landsat_oli_tirs_toa_moco => "terratorch_ssl4eol_resnet50_landsat_oli_tirs_toa_moco",
    parity_ssl4eol_resnet50_landsat_oli_tirs_toa_simclr => "terratorch_ssl4eol_resnet50_landsat_oli_tirs_toa_simclr",
    parity_ssl4eol_resnet50_landsat_oli_sr_moco => "terratorch_ssl4eol_resnet50_landsat_oli_sr_moco",
    parity_ssl4eol_resnet50_landsat_oli_sr_simclr => "terratorch_ssl4eol_resnet50_landsat_oli_sr_simclr",
    parity_ssl4eos12_resnet50_sentinel1_all_decur => "terratorch_ssl4eos12_resnet50_sentinel1_all_decur",
    parity_ssl4eos12_resnet50_sentinel1_all_moco => "terratorch_ssl4eos12_resnet50_sentinel1_all_moco",
    parity_ssl4eos12_resnet50_sentinel2_all_decur => "terratorch_ssl4eos12_resnet50_sentinel2_all_decur",
    parity_ssl4eos12_resnet50_sentinel2_all_dino => "terratorch_ssl4eos12_resnet50_sentinel2_all_dino",
    parity_ssl4eos12_resnet50_sentinel2_all_moco => "terratorch_ssl4eos12_resnet50_sentinel2_all_moco",
    parity_ssl4eos12_resnet50_sentinel2_all_softcon => "terratorch_ssl4eos12_resnet50_sentinel2_all_softcon",
    parity_ssl4eos12_resnet50_sentinel2_rgb_moco => "terratorch_ssl4eos12_resnet50_sentinel2_rgb_moco",
    parity_seco_resnet50_sentinel2_rgb_seco => "terratorch_seco_resnet50_sentinel2_rgb_seco",
    parity_satlas_resnet50_sentinel2_mi_ms_satlas => "terratorch_satlas_resnet50_sentinel2_mi_ms_satlas",
    parity_satlas_resnet50_sentinel2_mi_rgb_satlas => "terratorch_satlas_resnet50_sentinel2_mi_rgb_satlas",
    parity_satlas_resnet50_sentinel2_si_ms_satlas => "terratorch_satlas_resnet50_sentinel2_si_ms_satlas",
    parity_satlas_resnet50_sentinel2_si_rgb_satlas => "terratorch_satlas_resnet50_sentinel2_si_rgb_satlas",
    parity_satlas_resnet152_sentinel2_mi_ms => "terratorch_satlas_resnet152_sentinel2_mi_ms",
    parity_satlas_resnet152_sentinel2_mi_rgb => "terratorch_satlas_resnet152_sentinel2_mi_rgb",
    parity_satlas_resnet152_sentinel2_si_ms_satlas => "terratorch_satlas_resnet152_sentinel2_si_ms_satlas",
    parity_satlas_resnet152_sentinel2_si_rgb_satlas => "terratorch_satlas_resnet152_sentinel2_si_rgb_satlas",
    parity_satlas_swin_t_sentinel2_mi_ms => "terratorch_satlas_swin_t_sentinel2_mi_ms",
    parity_satlas_swin_t_sentinel2_mi_rgb => "terratorch_satlas_swin_t_sentinel2_mi_rgb",
    parity_satlas_swin_t_sentinel2_si_ms => "terratorch_satlas_swin_t_sentinel2_si_ms",
    parity_satlas_swin_t_sentinel2_si_rgb => "terratorch_satlas_swin_t_sentinel2_si_rgb",
    parity_satlas_swin_b_sentinel2_mi_ms => "terratorch_satlas_swin_b_sentinel2_mi_ms",
    parity_satlas_swin_b_sentinel2_mi_rgb => "terratorch_satlas_swin_b_sentinel2_mi_rgb",
    parity_satlas_swin_b_sentinel2_si_ms => "terratorch_satlas_swin_b_sentinel2_si_ms",
    parity_satlas_swin_b_sentinel2_si_rgb => "terratorch_satlas_swin_b_sentinel2_si_rgb",
    parity_satlas_swin_b_naip_mi_rgb => "terratorch_satlas_swin_b_naip_mi_rgb",
    parity_satlas_swin_b_naip_si_rgb => "terratorch_satlas_swin_b_naip_si_rgb",
    parity_satlas_swin_b_landsat_mi_ms => "terratorch_satlas_swin_b_landsat_mi_ms",
    parity_satlas_swin_b_landsat_mi_rgb => "terratorch_satlas_swin_b_landsat_mi_rgb",
    parity_satlas_swin_b_sentinel1_mi => "terratorch_satlas_swin_b_sentinel1_mi",
    parity_satlas_swin_b_sentinel1_si => "terratorch_satlas_swin_b_sentinel1_si",
}

fn build(
    name: &str,
    args: Value,
) -> terrahost_plugin_api::Result<terrahost_plugin_api::sdk::DynModule> {
    let host = host_with(crate::plugin_sources().unwrap());
    host.build("backbone", name, &obj(args), None)
}

fn build_err(name: &str, args: Value) -> String {
    match build(name, args) {
        Ok(_) => panic!("{name}: expected an error"),
        Err(e) => e.to_string(),
    }
}

/// The corpus model of `examples/confs/satlas_sen1floods11_uper.yaml` (pretrained off):
/// EncoderDecoderFactory with the ssl4eol ResNet-18, ReshapeTokensToImage and UperNet,
/// against TerraTorch's output for the same synthetic weights.
#[test]
fn factory_ssl4eol_resnet18_upernet_reproduces_terratorch() {
    let fx = Fixture::load("factory_ssl4eol_resnet18_upernet");
    let host = host_with(crate::plugin_sources().unwrap());
    let module = host
        .build("model_factory", "EncoderDecoderFactory", &fx.args(), None)
        .unwrap();
    // tch's BatchNorm has no `num_batches_tracked` (unused in eval); the rest must match
    let weights: std::collections::HashMap<String, Tensor> = fx
        .weights()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect();
    let sd = module.state_dict();
    assert_eq!(sd.len(), weights.len(), "TerraTorch's state_dict size");
    tch::no_grad(|| {
        for (k, mut t) in sd {
            let w = weights
                .get(&k)
                .unwrap_or_else(|| panic!("`{k}` is not a TerraTorch key"));
            assert_eq!(t.size(), w.size(), "{k}");
            t.copy_(w);
        }
    });
    let y = tch::no_grad(|| module.forward(&fx.inputs)).unwrap();
    terrahost_testkit::assert_close("factory output", &y[0], &fx.outputs[0], 1e-4);
}

/// TerraTorch builds `tests/resources/configs/manufactured-finetune_satlas_upernet.yaml`
/// but its forward fails: SwinEncoderWrapper returns channels-last maps, which
/// ReshapeTokensToImage leaves as they are and UperNetDecoder's convolutions refuse
/// ("expected input[1, 16, 16, 128] to have 128 channels, but got 16"). terrahost builds
/// the same model (same state_dict size) and refuses the same forward.
#[test]
fn satlas_swin_upernet_corpus_config_builds_and_fails_like_terratorch() {
    let args = json!({
        "task": "segmentation", "decoder": "UperNetDecoder", "backbone_pretrained": false,
        "backbone": "satlas_swin_b_sentinel2_si_ms", "decoder_channels": 256,
        "backbone_model_bands": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"],
        "backbone_out_indices": [1, 3, 5, 7], "num_classes": 2, "head_dropout": 0.1,
        "head_channel_list": [256], "necks": [{"name": "ReshapeTokensToImage"}],
    });
    let host = host_with(crate::plugin_sources().unwrap());
    let module = host
        .build("model_factory", "EncoderDecoderFactory", &obj(args), None)
        .unwrap();
    // TerraTorch: 525 state_dict entries, 12 of them the `num_batches_tracked` of the
    // decoder's BatchNorms (which tch's BatchNorm does not have).
    let sd = module.state_dict();
    assert_eq!(sd.len(), 525 - 12);
    assert!(sd
        .iter()
        .any(|(k, t)| k == "encoder.swin_model.features.0.0.weight" && t.size() == [128, 6, 4, 4]));
    let x = Tensor::zeros([1, 6, 64, 64], (Kind::Float, tch::Device::Cpu));
    let err =
        tch::no_grad(|| module.forward(&[x])).expect_err("the forward must fail, as in TerraTorch");
    assert!(err.to_string().contains("channels"), "{err}");
}

#[test]
fn swin_v2_position_buffers_equal_torchvision() {
    for case in [
        "terratorch_satlas_swin_t_sentinel2_mi_ms",
        "terratorch_satlas_swin_b_sentinel2_si_ms",
    ] {
        let fx = Fixture::load(case);
        let m = build(fx.name(), Value::Object(fx.args())).unwrap();
        let sd: std::collections::HashMap<String, Tensor> = m.state_dict().into_iter().collect();
        for blk in ["0", "1"] {
            let idx = &sd[&format!("swin_model.features.1.{blk}.attn.relative_position_index")];
            let tab = &sd[&format!("swin_model.features.1.{blk}.attn.relative_coords_table")];
            assert_eq!(idx.kind(), Kind::Int64);
            assert_eq!(idx.size(), [4096]);
            assert_eq!(tab.size(), [1, 15, 15, 2]);
            let m = &fx.meta;
            assert_eq!(
                idx.sum(Kind::Int64).int64_value(&[]),
                m[format!("block{blk}_relative_position_index_sum")]
                    .as_i64()
                    .unwrap()
            );
            let head: Vec<i64> = Vec::<i64>::try_from(idx.narrow(0, 0, 40)).unwrap();
            let want: Vec<i64> = serde_json::from_value(
                m[format!("block{blk}_relative_position_index_head")].clone(),
            )
            .unwrap();
            assert_eq!(head, want, "{case}: relative_position_index");
            let abs = tab
                .to_kind(Kind::Double)
                .abs()
                .sum(Kind::Double)
                .double_value(&[]);
            let want_abs = m[format!("block{blk}_relative_coords_table_abs_sum")]
                .as_f64()
                .unwrap();
            assert!(
                (abs - want_abs).abs() < 1e-4,
                "{case}: coords table {abs} vs {want_abs}"
            );
            let head: Vec<f64> =
                Vec::<f64>::try_from(tab.reshape([-1]).narrow(0, 0, 40).to_kind(Kind::Double))
                    .unwrap();
            let want: Vec<f64> =
                serde_json::from_value(m[format!("block{blk}_relative_coords_table_head")].clone())
                    .unwrap();
            for (a, e) in head.iter().zip(&want) {
                assert!((a - e).abs() < 1e-6, "{case}: coords table {a} vs {e}");
            }
        }
    }
}

/// The unshrunk ResNet-152 has TerraTorch's parameter and state_dict counts.
#[test]
fn resnet152_default_size_equals_terratorch() {
    let fx = Fixture::load("terratorch_satlas_resnet152_sentinel2_mi_ms");
    let m = build(
        "satlas_resnet152_sentinel2_mi_ms",
        json!({"model_bands": ["RED", "GREEN", "BLUE"]}),
    )
    .unwrap();
    let sd = m.state_dict();
    assert_eq!(
        sd.len() as i64,
        fx.meta["default_n_state_dict_entries"].as_i64().unwrap()
    );
    let params: i64 = m
        .module()
        .named_parameters()
        .iter()
        .map(|nt| nt.tensor.with(|t| t.numel() as i64))
        .sum();
    assert_eq!(params, fx.meta["default_n_params"].as_i64().unwrap());
    let want: Vec<i64> = serde_json::from_value(fx.meta["default_out_channels"].clone()).unwrap();
    assert_eq!(m.out_channels(), want);
}

#[test]
fn out_channels_follow_terratorch_wrappers() {
    let m = build(
        "ssl4eol_resnet50_landsat_tm_toa_moco",
        json!({"model_bands": ["RED"], "out_indices": [4, 0, 9, -1]}),
    )
    .unwrap();
    assert_eq!(m.out_channels(), vec![64, 2048]);
    let m = build(
        "satlas_swin_t_sentinel2_si_rgb",
        json!({"model_bands": ["RED"], "out_indices": [1, 3, 5, 7]}),
    )
    .unwrap();
    assert_eq!(m.out_channels(), vec![96, 192, 384, 768]);
    let m = build("satlas_swin_b_naip_si_rgb", json!({"model_bands": ["RED"]})).unwrap();
    assert_eq!(m.out_channels(), vec![1024]);
}

#[test]
fn argument_errors_name_the_argument() {
    let e = build_err("seco_resnet18_sentinel2_rgb_seco", json!({}));
    assert!(e.contains("model_bands"), "{e}");
    // timm keywords terrahost does not implement are refused, never dropped
    let e = build_err(
        "seco_resnet18_sentinel2_rgb_seco",
        json!({"model_bands": ["RED"], "output_stride": 16}),
    );
    assert!(e.contains("output_stride"), "{e}");
    let e = build_err(
        "satlas_swin_b_sentinel1_si",
        json!({"model_bands": ["VV"], "depths": [2, 2, 2, 2]}),
    );
    assert!(e.contains("depths"), "{e}");
    let e = build_err(
        "seco_resnet18_sentinel2_rgb_seco",
        json!({"model_bands": ["RED"], "global_pool": "median"}),
    );
    assert!(e.contains("global_pool"), "{e}");
    let e = build_err(
        "seco_resnet18_sentinel2_rgb_seco",
        json!({"model_bands": ["RED"], "pretrained": true}),
    );
    assert!(e.contains("ckpt_data") && e.contains("download"), "{e}");
    let e = build_err(
        "ssl4eol_resnet18_landsat_etm_sr_moco",
        json!({"model_bands": ["RED"], "pretrained": true, "ckpt_data": "/nonexistent.pt"}),
    );
    assert!(e.contains("SR_B1") && e.contains("KeyError"), "{e}");
    let e = build_err(
        "satlas_swin_t_sentinel2_mi_rgb",
        json!({"model_bands": ["RED"], "pretrained": true, "ckpt_data": "/x.pt", "weights": "Swin_V2_T_Weights.SENTINEL2_MI_RGB_SATLAS"}),
    );
    assert!(e.contains("weights"), "{e}");
    assert!(build(
        "satlas_swin_t_sentinel2_mi_rgb",
        json!({"model_bands": ["RED"], "weights": "anything"})
    )
    .is_ok());
    let e = build_err("satlas_swin_t_sentinel2_mi_rgb", json!({"model_bands": []}));
    assert!(e.contains("in_chans"), "{e}");
}

/// `pretrained=true` with a local checkpoint of the bare network: the first convolution
/// takes the checkpoint's columns for the bands found among the weights' bands (by
/// TerraTorch's names), a fresh draw for the others; a classifier of another shape is
/// dropped; every other key is loaded.
#[test]
fn checkpoint_loading_selects_first_conv_bands() {
    let dir = tempfile_dir();
    // ResNet-18 with the 11 OLI/TIRS bands (COASTAL_AEROSOL, BLUE, GREEN, RED, ...).
    let src = build(
        "ssl4eol_resnet18_landsat_oli_tirs_toa_moco",
        json!({"model_bands": vec!["x"; 11], "num_classes": 5}),
    )
    .unwrap();
    terrahost_testkit::set_synthetic(&src);
    let sd: Vec<(String, Tensor)> = src
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k.trim_start_matches("resnet_model.").to_owned(), t))
        .collect();
    let file = dir.join("resnet18.safetensors");
    Tensor::write_safetensors(&sd, &file).unwrap();
    let m = build(
        "ssl4eol_resnet18_landsat_oli_tirs_toa_moco",
        json!({"model_bands": ["RED", "NIR_NARROW", "BLUE"], "pretrained": true, "ckpt_data": file.to_str().unwrap()}),
    )
    .unwrap();
    let got: std::collections::HashMap<String, Tensor> = m.state_dict().into_iter().collect();
    let want: std::collections::HashMap<String, Tensor> = sd.into_iter().collect();
    let w = &got["resnet_model.conv1.weight"];
    assert_eq!(w.size(), [64, 3, 7, 7]);
    let c = &want["conv1.weight"];
    assert!(
        w.select(1, 0).equal(&c.select(1, 3)),
        "RED is band 3 of the checkpoint"
    );
    assert!(
        w.select(1, 2).equal(&c.select(1, 1)),
        "BLUE is band 1 of the checkpoint"
    );
    assert!(
        !w.select(1, 1).equal(&c.select(1, 8)),
        "NIR_NARROW is not a band of these weights"
    );
    assert_eq!(
        got["resnet_model.fc.weight"].size(),
        [1000, 512],
        "the 5-class classifier is dropped"
    );
    assert!(got["resnet_model.layer3.1.conv2.weight"].equal(&want["layer3.1.conv2.weight"]));
    assert!(got["resnet_model.bn1.running_var"].equal(&want["bn1.running_var"]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn swin_checkpoint_loading_selects_patch_embedding_bands() {
    let dir = tempfile_dir();
    let src = build(
        "satlas_swin_t_sentinel2_mi_rgb",
        json!({"model_bands": ["a", "b", "c"]}),
    )
    .unwrap();
    terrahost_testkit::set_synthetic(&src);
    let sd: Vec<(String, Tensor)> = src
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k.trim_start_matches("swin_model.").to_owned(), t))
        .collect();
    let file = dir.join("swin.safetensors");
    Tensor::write_safetensors(&sd, &file).unwrap();
    // the weights' bands are B04, B03, B02 = RED, GREEN, BLUE
    let m = build(
        "satlas_swin_t_sentinel2_mi_rgb",
        json!({"model_bands": ["BLUE", "RED"], "pretrained": true, "ckpt_data": file.to_str().unwrap()}),
    )
    .unwrap();
    let got: std::collections::HashMap<String, Tensor> = m.state_dict().into_iter().collect();
    let want: std::collections::HashMap<String, Tensor> = sd.into_iter().collect();
    let w = &got["swin_model.features.0.0.weight"];
    let c = &want["features.0.0.weight"];
    assert_eq!(w.size(), [96, 2, 4, 4]);
    assert!(w.select(1, 0).equal(&c.select(1, 2)));
    assert!(w.select(1, 1).equal(&c.select(1, 0)));
    assert!(got["swin_model.features.3.1.attn.cpb_mlp.0.weight"]
        .equal(&want["features.3.1.attn.cpb_mlp.0.weight"]));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "terrahost-torchgeo-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
