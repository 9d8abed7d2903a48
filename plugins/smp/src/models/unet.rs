//! The U-Net decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/unet/decoder.py` (`UnetDecoder`,
//! `UnetDecoderBlock`), built from smp's `Conv2dReLU` and `Attention` (see
//! [`super::blocks`]).
//!
//! TerraTorch builds it through `terratorch/registry/smp_registry.py`
//! (`SMPRegistry.build`): a dummy encoder reports the channel list as smp's
//! `encoder_channels`, the encoder depth is `len(channels) - 1`, and only
//! `model.decoder` is kept (see [`super::wrapper`]). TerraTorch's own `UNetDecoder`
//! (`terratorch/models/decoders/unet_decoder.py`) builds this decoder directly, so the
//! `terratorch` plugin builds it too; both take it from `terrahost_layers::smp`.
use super::args;
use super::wrapper::{self, SmpDecoderWrapper};
use serde_json::{json, Value};
use tch::nn;
pub use terrahost_layers::smp::unet_decoder::*;
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, Result};

/// The Unet decoder configuration TerraTorch's `SMPRegistry.build("Unet", channels, **kwargs)` makes.
fn config(ctx: &BuildCtx<'_, '_>) -> Result<Config> {
    let mut cfg = Config::terratorch(&ctx.channels);
    cfg.decoder_channels = ctx.args.get("decoder_channels")?;
    cfg.use_norm = args::use_norm(ctx)?;
    cfg.attention_type = args::attention_type(ctx)?;
    cfg.interpolation_mode = args::interpolation(ctx)?;
    args::in_entry(ctx, cfg.validate())?;
    Ok(cfg)
}

/// The decoder smp's full model builds from `ctx` (the encoder's channels and the model's
/// keyword arguments) under `p`, with the input channels of its segmentation head.
pub(crate) fn full_model_decoder(
    ctx: &BuildCtx<'_, '_>,
    p: nn::Path,
) -> Result<(Box<dyn Model>, i64)> {
    let cfg = config(ctx)?;
    Ok((Box::new(UnetDecoder::new(p, &cfg)?), cfg.out_channels()))
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = config(ctx)?;
    // TerraTorch reads out_channels from smp's segmentation head: decoder_channels[-1].
    SmpDecoderWrapper::build(ctx, cfg.out_channels(), |p| UnetDecoder::new(p, &cfg))
}

/// The `smp_Unet` entry.
pub(crate) fn entry() -> Entry {
    let e = wrapper::entry(
        "Unet",
        "U-Net decoder of segmentation_models_pytorch (smp.Unet's decoder, as TerraTorch's SMPRegistry wraps \
         it): takes the encoder's feature maps, full resolution first (depth = number of maps - 1), upsamples \
         from the deepest one while concatenating the shallower ones, and returns one map with \
         decoder_channels[-1] channels at the first map's resolution.",
        build,
    )
    .opt(
        "decoder_channels",
        ParamType::INT_LIST,
        json!([256, 128, 64, 32, 16]),
        "output channels of each decoder block, deepest first; one per block (len(channels) - 1 values)",
    );
    args::declare_use_norm(e)
        .opt(
            "decoder_attention_type",
            ParamType::STR,
            Value::Null,
            "attention in each decoder block: None or \"scse\"",
        )
        .opt(
            "decoder_interpolation",
            ParamType::STR,
            json!("nearest"),
            "upsampling mode: \"nearest\", \"bilinear\", \"bicubic\", \"area\" or \"nearest-exact\"",
        )
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // reference values as Python printed them
mod tests {
    //! Parity against TerraTorch 1.2.11 + smp 0.6.0. Every expected key, shape, value
    //! and message below was printed by the reference Python (see each constant).
    use crate::plugin_sources;
    use crate::test_support::{assert_running_stats_only, buffer_names, declared_default};
    use serde_json::{json, Value};
    use tch::Tensor;
    use terrahost_plugin_api::sdk::DynModule;
    use terrahost_plugin_api::ErrorKind;
    use terrahost_plugin_api::{PluginError, Result};
    use terrahost_testkit::{
        build_from, keys_and_shapes, sine_input as input, sorted_keys as reference, Case,
    };

    fn build(channels: &[i64], args: Value) -> Result<DynModule> {
        build_from(plugin_sources()?, "decoder", "Unet", Some(channels), &args)
    }

    fn build_err(channels: &[i64], args: Value) -> PluginError {
        build(channels, args).err().expect("the build should fail")
    }

    fn check_case(name: &str, c: &Case) {
        terrahost_testkit::check_case(name, c, build)
    }

    #[test]
    fn parity_smp_unet_fixture() {
        terrahost_testkit::check_fixture(crate::plugin_sources().unwrap(), "smp_Unet");
    }

    #[test]
    fn parity_smp_unet_tiny_fixture() {
        terrahost_testkit::check_fixture(crate::plugin_sources().unwrap(), "smp_Unet_tiny");
    }

    #[test]
    fn state_dict_keys_match_the_reference() {
        let m = build(
            &[16, 16, 32, 64, 128],
            json!({"decoder_channels": [16, 16, 8, 8]}),
        )
        .unwrap();
        assert_eq!(keys_and_shapes(&m), reference(REF_TINY_KEYS));
        let m = build(
            &[16, 16, 32],
            json!({"decoder_channels": [16, 8], "decoder_attention_type": "scse", "decoder_use_norm": false}),
        )
        .unwrap();
        assert_eq!(keys_and_shapes(&m), reference(REF_SCSE_KEYS));
    }

    #[test]
    fn batchnorm_statistics_are_buffers() {
        let m = build(
            &[16, 16, 32, 64, 128],
            json!({"decoder_channels": [16, 16, 8, 8]}),
        )
        .unwrap();
        let buffers = buffer_names(&m);
        assert_eq!(buffers.len(), 16, "{buffers:?}");
        assert_running_stats_only(&buffers);
    }

    #[test]
    fn shapes_and_out_channels() {
        let channels = [16, 16, 32, 64, 128];
        let m = build(&channels, json!({"decoder_channels": [16, 16, 8, 8]})).unwrap();
        assert_eq!(m.out_channels(), vec![8]);
        assert!(!m.includes_head());
        let sizes = [32, 16, 8, 4, 2];
        let xs: Vec<Tensor> = channels
            .iter()
            .zip(sizes)
            .enumerate()
            .map(|(i, (&c, s))| input(i, &[2, c, s, s]))
            .collect();
        let ys = tch::no_grad(|| m.forward(&xs)).unwrap();
        assert_eq!(ys.len(), 1);
        assert_eq!(ys[0].size(), vec![2, 8, 32, 32]);

        // smp's defaults: five blocks for a six-map encoder such as resnet34.
        let m = build(&[3, 64, 64, 128, 256, 512], json!({})).unwrap();
        assert_eq!(m.out_channels(), vec![16]);
    }

    #[test]
    fn extra_configurations_match_the_reference() {
        check_case("SMP_SCSE_BILINEAR", &SMP_SCSE_BILINEAR);
        check_case("SMP_INSTANCENORM_BICUBIC", &SMP_INSTANCENORM_BICUBIC);
        check_case("SMP_LAYERNORM_NEAREST_EXACT", &SMP_LAYERNORM_NEAREST_EXACT);
        check_case("SMP_BATCHNORM_AREA", &SMP_BATCHNORM_AREA);
    }

    #[test]
    fn depth_mismatch_gives_smps_message() {
        // smp's defaults have five decoder channels; five maps make a depth of four.
        let e = build_err(&[64, 64, 128, 256, 512], json!({}));
        assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT);
        assert!(
            e.message()
                .contains("Model depth is 4, but you provide `decoder_channels` for 5 blocks."),
            "{e}"
        );
    }

    #[test]
    fn argument_errors_name_the_argument() {
        let ch = [16, 16, 32];
        let dc = json!([16, 8]);
        let cases = [
            (
                json!({"decoder_channels": dc, "aux_params": {"classes": 3}}),
                "aux_params",
            ),
            (
                json!({"decoder_channels": dc, "decoder_attention_type": "cbam"}),
                "Attention cbam is not implemented",
            ),
            (
                json!({"decoder_channels": dc, "decoder_interpolation": "linear"}),
                "decoder_interpolation",
            ),
            (
                json!({"decoder_channels": dc, "decoder_use_norm": "groupnorm"}),
                "Unrecognized normalization type",
            ),
            (
                json!({"decoder_channels": dc, "decoder_use_norm": "inplace"}),
                "inplace_abn",
            ),
            (
                json!({"decoder_channels": dc, "decoder_use_norm": "instancenorm"}),
                "affine",
            ),
            (
                json!({"decoder_channels": dc, "decoder_use_norm": {"eps": 1e-3}}),
                "\"type\"",
            ),
            (
                json!({"decoder_channels": dc, "decoder_use_batchnorm": 3}),
                "decoder_use_batchnorm",
            ),
            (json!({"decoder_channels": [16, 0]}), "positive"),
            (
                json!({"decoder_channel": dc}),
                "did you mean `decoder_channels`",
            ),
        ];
        for (args, needle) in cases {
            let e = build_err(&ch, args.clone());
            assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT, "{args}: {e}");
            assert!(
                e.message().to_lowercase().contains(&needle.to_lowercase()),
                "{args}: {e}"
            );
        }
        let e = build_err(&[16], json!({"decoder_channels": []}));
        assert!(e.message().contains("at least two feature maps"), "{e}");
    }

    #[test]
    fn forward_checks_its_inputs() {
        let m = build(&[4, 16, 32], json!({"decoder_channels": [8, 4]})).unwrap();
        let e = m
            .forward(&[input(0, &[1, 4, 4, 4]), input(1, &[1, 16, 2, 2])])
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::FORWARD_FAILED);
        assert!(e.message().contains("3 feature maps"), "{e}");
        let e = m
            .forward(&[
                input(0, &[1, 4, 4, 4]),
                input(1, &[1, 8, 2, 2]),
                input(2, &[1, 32, 1, 1]),
            ])
            .unwrap_err();
        assert!(e.message().contains("feature map 1 has 8 channels"), "{e}");
        // The first map only sets the output size, so its channels are free (as in smp).
        let ys = m
            .forward(&[
                input(0, &[1, 3, 5, 5]),
                input(1, &[1, 16, 2, 2]),
                input(2, &[1, 32, 1, 1]),
            ])
            .unwrap();
        assert_eq!(ys[0].size(), vec![1, 4, 5, 5]);
    }

    #[test]
    fn describes_smps_defaults() {
        let default = |name: &str| declared_default("Unet", name);
        assert_eq!(default("decoder_channels"), json!([256, 128, 64, 32, 16]));
        assert_eq!(default("decoder_use_norm"), json!("batchnorm"));
        assert_eq!(default("decoder_attention_type"), Value::Null);
        assert_eq!(default("decoder_interpolation"), json!("nearest"));
    }

    /// `DECODER_REGISTRY.build("smp_Unet", [16, 16, 32, 64, 128], decoder_channels=[16, 16, 8, 8])` (without `num_batches_tracked`).
    const REF_TINY_KEYS: &[(&str, &[i64])] = &[
        ("_smp_decoder.blocks.0.conv1.0.weight", &[16, 192, 3, 3]),
        ("_smp_decoder.blocks.0.conv1.1.weight", &[16]),
        ("_smp_decoder.blocks.0.conv1.1.bias", &[16]),
        ("_smp_decoder.blocks.0.conv1.1.running_mean", &[16]),
        ("_smp_decoder.blocks.0.conv1.1.running_var", &[16]),
        ("_smp_decoder.blocks.0.conv2.0.weight", &[16, 16, 3, 3]),
        ("_smp_decoder.blocks.0.conv2.1.weight", &[16]),
        ("_smp_decoder.blocks.0.conv2.1.bias", &[16]),
        ("_smp_decoder.blocks.0.conv2.1.running_mean", &[16]),
        ("_smp_decoder.blocks.0.conv2.1.running_var", &[16]),
        ("_smp_decoder.blocks.1.conv1.0.weight", &[16, 48, 3, 3]),
        ("_smp_decoder.blocks.1.conv1.1.weight", &[16]),
        ("_smp_decoder.blocks.1.conv1.1.bias", &[16]),
        ("_smp_decoder.blocks.1.conv1.1.running_mean", &[16]),
        ("_smp_decoder.blocks.1.conv1.1.running_var", &[16]),
        ("_smp_decoder.blocks.1.conv2.0.weight", &[16, 16, 3, 3]),
        ("_smp_decoder.blocks.1.conv2.1.weight", &[16]),
        ("_smp_decoder.blocks.1.conv2.1.bias", &[16]),
        ("_smp_decoder.blocks.1.conv2.1.running_mean", &[16]),
        ("_smp_decoder.blocks.1.conv2.1.running_var", &[16]),
        ("_smp_decoder.blocks.2.conv1.0.weight", &[8, 32, 3, 3]),
        ("_smp_decoder.blocks.2.conv1.1.weight", &[8]),
        ("_smp_decoder.blocks.2.conv1.1.bias", &[8]),
        ("_smp_decoder.blocks.2.conv1.1.running_mean", &[8]),
        ("_smp_decoder.blocks.2.conv1.1.running_var", &[8]),
        ("_smp_decoder.blocks.2.conv2.0.weight", &[8, 8, 3, 3]),
        ("_smp_decoder.blocks.2.conv2.1.weight", &[8]),
        ("_smp_decoder.blocks.2.conv2.1.bias", &[8]),
        ("_smp_decoder.blocks.2.conv2.1.running_mean", &[8]),
        ("_smp_decoder.blocks.2.conv2.1.running_var", &[8]),
        ("_smp_decoder.blocks.3.conv1.0.weight", &[8, 8, 3, 3]),
        ("_smp_decoder.blocks.3.conv1.1.weight", &[8]),
        ("_smp_decoder.blocks.3.conv1.1.bias", &[8]),
        ("_smp_decoder.blocks.3.conv1.1.running_mean", &[8]),
        ("_smp_decoder.blocks.3.conv1.1.running_var", &[8]),
        ("_smp_decoder.blocks.3.conv2.0.weight", &[8, 8, 3, 3]),
        ("_smp_decoder.blocks.3.conv2.1.weight", &[8]),
        ("_smp_decoder.blocks.3.conv2.1.bias", &[8]),
        ("_smp_decoder.blocks.3.conv2.1.running_mean", &[8]),
        ("_smp_decoder.blocks.3.conv2.1.running_var", &[8]),
    ];
    /// `DECODER_REGISTRY.build("smp_Unet", [16, 16, 32], decoder_channels=[16, 8], decoder_attention_type="scse", decoder_use_norm=False)`.
    const REF_SCSE_KEYS: &[(&str, &[i64])] = &[
        ("_smp_decoder.blocks.0.conv1.0.weight", &[16, 48, 3, 3]),
        ("_smp_decoder.blocks.0.conv1.0.bias", &[16]),
        (
            "_smp_decoder.blocks.0.attention1.attention.cSE.1.weight",
            &[3, 48, 1, 1],
        ),
        (
            "_smp_decoder.blocks.0.attention1.attention.cSE.1.bias",
            &[3],
        ),
        (
            "_smp_decoder.blocks.0.attention1.attention.cSE.3.weight",
            &[48, 3, 1, 1],
        ),
        (
            "_smp_decoder.blocks.0.attention1.attention.cSE.3.bias",
            &[48],
        ),
        (
            "_smp_decoder.blocks.0.attention1.attention.sSE.0.weight",
            &[1, 48, 1, 1],
        ),
        (
            "_smp_decoder.blocks.0.attention1.attention.sSE.0.bias",
            &[1],
        ),
        ("_smp_decoder.blocks.0.conv2.0.weight", &[16, 16, 3, 3]),
        ("_smp_decoder.blocks.0.conv2.0.bias", &[16]),
        (
            "_smp_decoder.blocks.0.attention2.attention.cSE.1.weight",
            &[1, 16, 1, 1],
        ),
        (
            "_smp_decoder.blocks.0.attention2.attention.cSE.1.bias",
            &[1],
        ),
        (
            "_smp_decoder.blocks.0.attention2.attention.cSE.3.weight",
            &[16, 1, 1, 1],
        ),
        (
            "_smp_decoder.blocks.0.attention2.attention.cSE.3.bias",
            &[16],
        ),
        (
            "_smp_decoder.blocks.0.attention2.attention.sSE.0.weight",
            &[1, 16, 1, 1],
        ),
        (
            "_smp_decoder.blocks.0.attention2.attention.sSE.0.bias",
            &[1],
        ),
        ("_smp_decoder.blocks.1.conv1.0.weight", &[8, 16, 3, 3]),
        ("_smp_decoder.blocks.1.conv1.0.bias", &[8]),
        (
            "_smp_decoder.blocks.1.attention1.attention.cSE.1.weight",
            &[1, 16, 1, 1],
        ),
        (
            "_smp_decoder.blocks.1.attention1.attention.cSE.1.bias",
            &[1],
        ),
        (
            "_smp_decoder.blocks.1.attention1.attention.cSE.3.weight",
            &[16, 1, 1, 1],
        ),
        (
            "_smp_decoder.blocks.1.attention1.attention.cSE.3.bias",
            &[16],
        ),
        (
            "_smp_decoder.blocks.1.attention1.attention.sSE.0.weight",
            &[1, 16, 1, 1],
        ),
        (
            "_smp_decoder.blocks.1.attention1.attention.sSE.0.bias",
            &[1],
        ),
        ("_smp_decoder.blocks.1.conv2.0.weight", &[8, 8, 3, 3]),
        ("_smp_decoder.blocks.1.conv2.0.bias", &[8]),
        (
            "_smp_decoder.blocks.1.attention2.attention.cSE.1.weight",
            &[0, 8, 1, 1],
        ),
        (
            "_smp_decoder.blocks.1.attention2.attention.cSE.1.bias",
            &[0],
        ),
        (
            "_smp_decoder.blocks.1.attention2.attention.cSE.3.weight",
            &[8, 0, 1, 1],
        ),
        (
            "_smp_decoder.blocks.1.attention2.attention.cSE.3.bias",
            &[8],
        ),
        (
            "_smp_decoder.blocks.1.attention2.attention.sSE.0.weight",
            &[1, 8, 1, 1],
        ),
        (
            "_smp_decoder.blocks.1.attention2.attention.sSE.0.bias",
            &[1],
        ),
    ];

    /// `smp_Unet` on channels [4, 16, 32] with {'decoder_channels': [16, 16], 'decoder_attention_type': 'scse', 'decoder_use_norm': False, 'decoder_interpolation': 'bilinear'}; inputs [[1, 4, 4, 4], [1, 16, 2, 2], [1, 32, 1, 1]].
    #[rustfmt::skip]
    const SMP_SCSE_BILINEAR: Case = Case {
        channels: &[4, 16, 32], args: r#"{"decoder_channels": [16, 16], "decoder_attention_type": "scse", "decoder_use_norm": false, "decoder_interpolation": "bilinear"}"#, inputs: &[[1, 4, 4, 4], [1, 16, 2, 2], [1, 32, 1, 1]], n_keys: 32, out_shape: &[1, 16, 4, 4], out: &[
            1.2563004e-01, 1.0447334e-01, 9.9160805e-02, 6.6788800e-02, 7.8688726e-02, 5.3229682e-02,
            3.9638430e-02, 4.8067395e-02, 6.5408245e-02, 3.1957269e-02, 2.2819392e-02, 4.1874632e-02,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 3.9470524e-02, 1.7904410e-01, 2.0143700e-01,
            2.0965704e-01, 1.5787956e-01, 1.2220604e-01, 1.1610644e-01, 1.0580567e-01, 8.3936214e-02,
            1.1945108e-01, 1.0431921e-01, 8.9145280e-02, 7.3296279e-02, 1.8660486e-02, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 1.1614268e-01, 1.6068214e-01, 1.7454299e-01, 1.5382150e-01,
            1.0505016e-01, 1.2449965e-01, 1.2761666e-01, 9.6457407e-02, 1.1564547e-01, 1.3382208e-01,
            1.2736571e-01, 9.1697618e-02, 8.5156098e-02, 4.5654528e-02, 3.1180713e-02, 8.6482577e-03,
            0.0000000e+00, 0.0000000e+00, 5.5374913e-03, 3.5985235e-02, 2.1506691e-02, 4.7632590e-02,
            6.1148770e-02, 5.0905131e-02, 3.5176519e-02, 6.9007590e-02, 7.7517338e-02, 5.6623138e-02,
            1.0435109e-01, 1.2506765e-01, 1.1321387e-01, 5.3521007e-02, 0.0000000e+00, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 2.2783682e-02, 8.2910210e-02,
            8.5035436e-02, 4.6125747e-02, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 1.6336113e-02, 3.3508077e-02,
            4.0166952e-02, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 5.7024326e-02, 9.9742197e-02, 1.1321700e-01, 8.7566845e-02,
            3.9084971e-02, 5.5538386e-02, 5.6865025e-02, 2.6152147e-02, 4.8116762e-02, 6.2211946e-02,
            5.4385200e-02, 2.0475201e-02, 7.3767980e-03, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            4.0059395e-02, 6.7258194e-02, 7.4578121e-02, 9.9482626e-02, 7.9987392e-02, 1.0627027e-01,
            1.1895876e-01, 1.0550443e-01, 9.3801863e-02, 1.2688857e-01, 1.3373804e-01, 1.1003747e-01,
            1.5226164e-01, 1.6562200e-01, 1.5298410e-01, 9.6062690e-02, 1.6085975e-02, 8.5965084e-04,
            0.0000000e+00, 4.7133535e-02, 7.6406665e-02, 8.7116852e-02, 9.9069014e-02, 1.1638730e-01,
            8.1647880e-02, 1.0189280e-01, 1.1707571e-01, 1.2693529e-01, 1.8447021e-01, 2.4277633e-01,
            2.4321401e-01, 1.9933459e-01, 3.2253999e-02, 0.0000000e+00, 0.0000000e+00, 4.1261562e-03,
            5.4800406e-02, 3.9186615e-02, 3.8762487e-02, 7.0591301e-02, 4.6195637e-02, 3.3597257e-02,
            4.2482685e-02, 7.6978803e-02, 9.3862973e-02, 1.4103246e-01, 1.5443186e-01, 1.6685946e-01,
            7.6513417e-02, 4.6536088e-02, 3.8297281e-02, 1.6049538e-02, 3.9212860e-02, 1.2217055e-02,
            0.0000000e+00, 1.5245642e-02, 2.5011044e-02, 0.0000000e+00, 0.0000000e+00, 1.1202324e-02,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 3.1219032e-02, 8.6602628e-02, 9.9377275e-02,
            1.0476120e-01, 5.2530676e-02, 2.5896667e-02, 1.3722128e-02, 1.3286048e-03, 0.0000000e+00,
            1.9887434e-02, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 1.9258119e-02, 6.1922483e-02, 7.5565010e-02, 4.4043697e-02,
            0.0000000e+00, 8.0997646e-03, 7.7274675e-03, 0.0000000e+00, 1.7868764e-03, 1.2440139e-02,
            2.9515391e-03, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00,
            7.2207546e-04, 7.0446357e-03, 0.0000000e+00, 0.0000000e+00,
        ] };
    /// `smp_Unet` on channels [4, 16, 32] with {'decoder_channels': [8, 2], 'decoder_use_norm': {'type': 'instancenorm', 'affine': True, 'track_running_stats': True}, 'decoder_interpolation': 'bicubic'}; inputs [[1, 4, 4, 4], [1, 16, 2, 2], [1, 32, 1, 1]].
    #[rustfmt::skip]
    const SMP_INSTANCENORM_BICUBIC: Case = Case {
        channels: &[4, 16, 32], args: r#"{"decoder_channels": [8, 2], "decoder_use_norm": {"type": "instancenorm", "affine": true, "track_running_stats": true}, "decoder_interpolation": "bicubic"}"#, inputs: &[[1, 4, 4, 4], [1, 16, 2, 2], [1, 32, 1, 1]], n_keys: 20, out_shape: &[1, 2, 4, 4], out: &[
            1.7172325e-01, 1.6864111e-01, 2.2034892e-01, 1.8279770e-01, 1.7199884e-01, 2.0098780e-01,
            2.1184821e-01, 1.6018420e-01, 1.4570120e-01, 1.1231978e-01, 8.4649615e-02, 7.5858749e-02,
            3.1357132e-02, 0.0000000e+00, 0.0000000e+00, 1.7110344e-02, 1.2076836e-01, 1.0228357e-01,
            1.1587696e-01, 1.0277446e-01, 1.8090919e-01, 1.5304427e-01, 9.0905800e-02, 9.1176622e-02,
            1.1792962e-01, 7.9999462e-02, 7.2665118e-02, 1.2633198e-01, 1.2761436e-01, 1.6109802e-01,
            1.7148469e-01, 2.2807246e-01,
        ] };
    /// `smp_Unet` on channels [4, 16, 32] with {'decoder_channels': [2, 4], 'decoder_use_norm': 'layernorm', 'decoder_interpolation': 'nearest-exact'}; inputs [[1, 4, 4, 4], [1, 16, 2, 2], [1, 32, 1, 1]].
    #[rustfmt::skip]
    const SMP_LAYERNORM_NEAREST_EXACT: Case = Case {
        channels: &[4, 16, 32], args: r#"{"decoder_channels": [2, 4], "decoder_use_norm": "layernorm", "decoder_interpolation": "nearest-exact"}"#, inputs: &[[1, 4, 4, 4], [1, 16, 2, 2], [1, 32, 1, 1]], n_keys: 12, out_shape: &[1, 4, 4, 4], out: &[
            6.5893912e-01, 0.0000000e+00, 9.8423022e-01, 0.0000000e+00, 0.0000000e+00, 7.8272468e-01,
            1.1273930e+00, 0.0000000e+00, 1.1092672e+00, 2.8774884e-01, 0.0000000e+00, 3.3723667e-01,
            0.0000000e+00, 0.0000000e+00, 4.3817613e-01, 1.3346577e+00, 0.0000000e+00, 1.4183633e+00,
            0.0000000e+00, 3.6741561e-01, 1.1699241e+00, 3.2601906e-03, 0.0000000e+00, 4.9366748e-01,
            0.0000000e+00, 0.0000000e+00, 1.5009115e+00, 2.0511450e-02, 7.6158446e-01, 1.0758005e+00,
            0.0000000e+00, 0.0000000e+00, 1.3509082e+00, 0.0000000e+00, 5.9244001e-01, 0.0000000e+00,
            0.0000000e+00, 0.0000000e+00, 1.5669715e+00, 0.0000000e+00, 1.0220500e+00, 8.7935668e-01,
            0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 1.8243292e-01, 1.4383100e+00,
            0.0000000e+00, 8.1277400e-01, 0.0000000e+00, 9.3957055e-01, 8.7880933e-01, 6.8232530e-01,
            0.0000000e+00, 2.0596135e-01, 0.0000000e+00, 0.0000000e+00, 1.2305700e+00, 5.8818531e-01,
            5.3161007e-01, 1.1340083e+00, 3.6942735e-02, 0.0000000e+00,
        ] };
    /// `smp_Unet` on channels [4, 16, 32] with {'decoder_channels': [8, 2], 'decoder_use_batchnorm': {'type': 'batchnorm', 'eps': 0.001}, 'decoder_interpolation': 'area'}; inputs [[1, 4, 6, 6], [1, 16, 3, 3], [1, 32, 2, 2]].
    #[rustfmt::skip]
    const SMP_BATCHNORM_AREA: Case = Case {
        channels: &[4, 16, 32], args: r#"{"decoder_channels": [8, 2], "decoder_use_batchnorm": {"type": "batchnorm", "eps": 0.001}, "decoder_interpolation": "area"}"#, inputs: &[[1, 4, 6, 6], [1, 16, 3, 3], [1, 32, 2, 2]], n_keys: 20, out_shape: &[1, 2, 6, 6], out: &[
            1.4563261e-01, 1.1633751e-01, 1.6061991e-01, 1.8740189e-01, 2.1871774e-01, 1.8340081e-01,
            1.7290393e-01, 2.2026505e-01, 2.5849086e-01, 2.6232645e-01, 2.4468328e-01, 1.7709120e-01,
            1.2386448e-01, 7.8187995e-02, 5.4668516e-02, 4.0381577e-02, 3.4341279e-02, 5.2791931e-02,
            1.1844342e-01, 1.1348209e-01, 1.3030609e-01, 1.3443299e-01, 1.3758013e-01, 1.3651007e-01,
            1.6574393e-01, 1.6839205e-01, 1.6861461e-01, 1.4566095e-01, 1.1108560e-01, 9.1294743e-02,
            4.1028205e-02, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 0.0000000e+00, 2.0645080e-02,
            1.0001097e-01, 9.3029536e-02, 1.3705328e-01, 1.3893078e-01, 1.2957540e-01, 1.1613384e-01,
            2.1015976e-01, 2.0349380e-01, 1.5030819e-01, 1.1483316e-01, 7.1613580e-02, 7.7365458e-02,
            9.4038054e-02, 5.6512803e-02, 4.5958467e-02, 4.7587819e-02, 6.6464566e-02, 1.2968320e-01,
            1.8888992e-01, 2.1593489e-01, 2.3184961e-01, 2.2803281e-01, 2.0729004e-01, 1.9585611e-01,
            1.2952253e-01, 9.2642367e-02, 5.3242490e-02, 3.5362259e-02, 4.2660426e-02, 1.0279690e-01,
            1.2668140e-01, 1.4306633e-01, 1.3871762e-01, 1.5607822e-01, 1.7586765e-01, 2.2598012e-01,
        ] };
}
