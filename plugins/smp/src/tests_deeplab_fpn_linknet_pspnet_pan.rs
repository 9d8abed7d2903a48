//! Tests of the DeepLabV3, DeepLabV3Plus, FPN, Linknet, PSPNet and PAN entries:
//! parity with TerraTorch 1.2.11 + smp 0.6.0 (fixtures written by
//! `scripts/reference/cases/smp_a.py`), output channels and argument errors.
use crate::plugin_sources;

fn check(case: &str) {
    terrahost_testkit::check_fixture(plugin_sources().unwrap(), case);
}

#[test]
fn parity_deeplabv3() {
    check("smp_DeepLabV3");
}

#[test]
fn parity_deeplabv3_separable() {
    check("smp_DeepLabV3_separable");
}

#[test]
fn parity_deeplabv3plus() {
    check("smp_DeepLabV3Plus");
}

#[test]
fn parity_deeplabv3plus_os8() {
    check("smp_DeepLabV3Plus_os8");
}

#[test]
fn parity_deeplabv3plus_depth3() {
    check("smp_DeepLabV3Plus_depth3");
}

#[test]
fn parity_fpn() {
    check("smp_FPN");
}

#[test]
fn parity_fpn_cat_bilinear() {
    check("smp_FPN_cat_bilinear");
}

#[test]
fn parity_linknet() {
    check("smp_Linknet");
}

#[test]
fn parity_linknet_identity() {
    check("smp_Linknet_identity");
}

#[test]
fn parity_pspnet() {
    check("smp_PSPNet");
}

#[test]
fn parity_pspnet_instancenorm() {
    check("smp_PSPNet_instancenorm");
}

#[test]
fn parity_pan() {
    check("smp_PAN");
}

#[test]
fn parity_pan_depth5_nearest() {
    check("smp_PAN_depth5_nearest");
}

mod units {
    //! Expected counts, channels and messages below were printed by the reference
    //! Python (TerraTorch 1.2.11's `DECODER_REGISTRY.build("smp_<Name>", channels, ...)`
    //! on smp 0.6.0), or are smp's documented defaults.
    use crate::plugin_sources;
    use crate::test_support::{assert_running_stats_only, buffer_names, declared_default};
    use serde_json::{json, Value};
    use tch::Tensor;
    use terrahost_plugin_api::sdk::DynModule;
    use terrahost_plugin_api::{ErrorKind, PluginError, Result};
    use terrahost_testkit::{build_from, keys_and_shapes, set_synthetic, sine_input as input};

    const STD: [i64; 5] = [16, 16, 32, 64, 128];
    /// smp's default encoder (resnet34), depth 5.
    const R34: [i64; 6] = [3, 64, 64, 128, 256, 512];

    fn build(name: &str, channels: &[i64], args: Value) -> Result<DynModule> {
        build_from(plugin_sources()?, "decoder", name, Some(channels), &args)
    }

    fn build_err(name: &str, channels: &[i64], args: Value) -> PluginError {
        build(name, channels, args)
            .err()
            .unwrap_or_else(|| panic!("building {name} should fail"))
    }

    /// Parameter count (PyTorch's `parameters()`: no running statistics).
    fn n_params(m: &DynModule) -> i64 {
        m.state_dict()
            .iter()
            .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    fn inputs(channels: &[i64], sizes: &[i64]) -> Vec<Tensor> {
        channels
            .iter()
            .zip(sizes)
            .enumerate()
            .map(|(i, (&c, &s))| input(i, &[1, c, s, s]))
            .collect()
    }

    #[test]
    fn smp_defaults_give_the_reference_sizes_and_out_channels() {
        // (entry, args, channels, out_channels, parameters)
        let cases: [(&str, Value, &[i64], i64, i64); 14] = [
            ("DeepLabV3", json!({}), &STD, 256, 1871360),
            ("DeepLabV3Plus", json!({}), &STD, 256, 649104),
            ("FPN", json!({}), &STD, 128, 1686272),
            ("Linknet", json!({}), &STD, 32, 30604),
            ("PSPNet", json!({}), &STD, 512, 148704),
            ("PAN", json!({}), &STD, 32, 44871),
            ("DeepLabV3", json!({}), &R34, 256, 4722176),
            ("DeepLabV3Plus", json!({}), &R34, 256, 1152528),
            ("FPN", json!({}), &R34, 128, 1870592),
            (
                "FPN",
                json!({"decoder_merge_policy": "cat"}),
                &R34,
                512,
                1870592,
            ),
            ("Linknet", json!({}), &R34, 32, 487232),
            ("PSPNet", json!({}), &R34, 512, 788352),
            ("PAN", json!({}), &R34, 32, 190855),
            ("DeepLabV3", json!({}), &[16], 256, 1039872),
        ];
        for (name, args, channels, out, params) in cases {
            let m = build(name, channels, args.clone())
                .unwrap_or_else(|e| panic!("{name} {args}: {e}"));
            assert_eq!(m.out_channels(), vec![out], "{name} {args} on {channels:?}");
            assert_eq!(n_params(&m), params, "{name} {args} on {channels:?}");
            assert!(!m.includes_head());
            assert!(
                keys_and_shapes(&m)
                    .iter()
                    .all(|(k, _)| k.starts_with("_smp_decoder.")),
                "{name}"
            );
        }
    }

    #[test]
    fn aux_arguments_add_nothing_to_the_wrapper() {
        // TerraTorch builds smp's classification head from aux_* and then drops it.
        let m = build("FPN", &STD, json!({"aux_classes": 3})).unwrap();
        assert_eq!(m.out_channels(), vec![128]);
        assert_eq!(n_params(&m), 1686272);
    }

    #[test]
    fn output_shapes() {
        // (entry, args, channels, sizes, output shape)
        type ShapeCase<'a> = (&'a str, Value, &'a [i64], &'a [i64], [i64; 4]);
        let cases: [ShapeCase; 6] = [
            (
                "DeepLabV3",
                json!({"decoder_channels": 8}),
                &STD,
                &[32, 16, 8, 4, 4],
                [1, 8, 4, 4],
            ),
            (
                "DeepLabV3Plus",
                json!({"decoder_channels": 8}),
                &STD,
                &[32, 16, 8, 4, 2],
                [1, 8, 8, 8],
            ),
            (
                "FPN",
                json!({"decoder_pyramid_channels": 8, "decoder_segmentation_channels": 32}),
                &STD,
                &[32, 16, 8, 4, 2],
                [1, 32, 16, 16],
            ),
            (
                "Linknet",
                json!({}),
                &STD,
                &[16, 8, 4, 2, 1],
                [1, 32, 16, 16],
            ),
            (
                "PSPNet",
                json!({"psp_out_channels": 4}),
                &STD,
                &[32, 16, 8, 4, 2],
                [1, 4, 2, 2],
            ),
            (
                "PAN",
                json!({"decoder_channels": 4}),
                &STD,
                &[64, 32, 16, 8, 8],
                [1, 4, 16, 16],
            ),
        ];
        for (name, args, channels, sizes, want) in cases {
            let m = build(name, channels, args).unwrap();
            let ys = tch::no_grad(|| m.forward(&inputs(channels, sizes))).unwrap();
            assert_eq!(ys.len(), 1, "{name}");
            assert_eq!(ys[0].size(), want.to_vec(), "{name}");
        }
    }

    #[test]
    fn argument_errors_name_the_problem() {
        let cases: Vec<(&str, &[i64], Value, &str)> = vec![
            (
                "DeepLabV3",
                &STD,
                json!({"encoder_output_stride": 4}),
                "output stride 8 or 16, got 4",
            ),
            (
                "DeepLabV3",
                &STD,
                json!({"decoder_atrous_rates": [1, 2]}),
                "decoder_atrous_rates",
            ),
            (
                "DeepLabV3",
                &STD,
                json!({"decoder_channels": 0}),
                "decoder_channels",
            ),
            (
                "DeepLabV3",
                &STD,
                json!({"decoder_aspp_dropout": 2.0}),
                "decoder_aspp_dropout",
            ),
            (
                "DeepLabV3Plus",
                &[8, 16, 32],
                json!({}),
                "Encoder depth for DeepLabV3Plus decoder cannot be less than 3, got 2.",
            ),
            (
                "DeepLabV3Plus",
                &STD,
                json!({"encoder_output_stride": 32}),
                "output stride 8 or 16, got 32",
            ),
            (
                "FPN",
                &[16, 16, 32],
                json!({}),
                "Encoder depth for FPN decoder cannot be less than 3, got 2.",
            ),
            (
                "FPN",
                &STD,
                json!({"decoder_segmentation_channels": 16}),
                "num_channels (16) must be divisible by num_groups (32)",
            ),
            (
                "FPN",
                &STD,
                json!({"decoder_merge_policy": "max"}),
                "must be one of: ['add', 'cat'], got \"max\"",
            ),
            (
                "FPN",
                &STD,
                json!({"decoder_dropout": 1.5}),
                "decoder_dropout",
            ),
            (
                "FPN",
                &STD,
                json!({"decoder_interpolation": "linear"}),
                "decoder_interpolation",
            ),
            (
                "FPN",
                &STD,
                json!({"decoder_channels": 16}),
                "decoder_channels",
            ),
            ("Linknet", &[16], json!({}), "at least 2 feature maps"),
            (
                "Linknet",
                &STD,
                json!({"decoder_use_norm": "groupnorm"}),
                "unrecognized normalization type",
            ),
            (
                "Linknet",
                &STD,
                json!({"decoder_use_batchnorm": 3}),
                "decoder_use_batchnorm",
            ),
            ("PSPNet", &[8, 16, 30], json!({}), "multiple of 4"),
            (
                "PSPNet",
                &STD,
                json!({"psp_out_channels": -1}),
                "psp_out_channels",
            ),
            ("PSPNet", &STD, json!({"psp_dropout": -0.1}), "psp_dropout"),
            (
                "PSPNet",
                &STD,
                json!({"psp_use_batchnorm": "inplace"}),
                "inplace_abn",
            ),
            (
                "PAN",
                &STD,
                json!({"encoder_output_stride": 8}),
                "output stride 16 or 32, got 8",
            ),
            (
                "PAN",
                &[16, 16, 32],
                json!({}),
                "Encoder depth for PAN decoder cannot be less than 3, got 2.",
            ),
            (
                "PAN",
                &STD,
                json!({"upscale_mode": "cubic"}),
                "upscale_mode",
            ),
            (
                "PAN",
                &STD,
                json!({"decoder_channels": 0}),
                "decoder_channels",
            ),
            ("PAN", &[16, 16, 0, 64, 128], json!({}), "positive"),
        ];
        for (name, channels, args, needle) in cases {
            let e = build_err(name, channels, args.clone());
            assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT, "{name} {args}: {e}");
            assert!(
                e.message().to_lowercase().contains(&needle.to_lowercase()),
                "{name} {args}: {e}"
            );
        }
    }

    #[test]
    fn forward_errors_explain_the_shape_problem() {
        let fail = |name: &str, channels: &[i64], args: Value, xs: Vec<Tensor>, needle: &str| {
            let m = build(name, channels, args).unwrap();
            let e = tch::no_grad(|| m.forward(&xs)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::FORWARD_FAILED, "{name}: {e}");
            assert!(e.message().contains(needle), "{name}: {e}");
        };
        let fpn = json!({"decoder_pyramid_channels": 8, "decoder_segmentation_channels": 32});
        // GroupNorm(32, 32) on a 1x1 map of one sample: PyTorch refuses it too.
        fail(
            "FPN",
            &STD,
            fpn.clone(),
            inputs(&STD, &[16, 8, 4, 2, 1]),
            "single value per group",
        );
        fail(
            "FPN",
            &STD,
            fpn,
            inputs(&STD, &[32, 16, 8, 5, 2]),
            "half the size",
        );
        fail(
            "PAN",
            &STD,
            json!({"decoder_channels": 4}),
            inputs(&STD, &[32, 16, 8, 4, 4]),
            "at least 8x8",
        );
        fail(
            "DeepLabV3Plus",
            &STD,
            json!({"decoder_channels": 8}),
            inputs(&STD, &[32, 16, 8, 4, 4]),
            "1/4",
        );
        fail(
            "Linknet",
            &STD,
            json!({}),
            inputs(&STD, &[16, 8, 4, 3, 1]),
            "half the size",
        );
        fail(
            "PSPNet",
            &STD,
            json!({}),
            inputs(&STD[1..], &[16, 8, 4, 2]),
            "5 feature maps",
        );
        fail(
            "DeepLabV3",
            &STD,
            json!({}),
            inputs(&[16, 16, 32, 64, 96], &[32, 16, 8, 4, 4]),
            "feature map 4 has 96 channels",
        );
    }

    /// The state_dict keys and shapes, and the output for synthetic weights.
    type KeysAndOutput = (Vec<(String, Vec<i64>)>, Tensor);

    fn run_synthetic(name: &str, channels: &[i64], args: Value, sizes: &[i64]) -> KeysAndOutput {
        let m = build(name, channels, args).unwrap();
        set_synthetic(&m);
        let y = tch::no_grad(|| m.forward(&inputs(channels, sizes)))
            .unwrap()
            .remove(0);
        (keys_and_shapes(&m), y)
    }

    #[test]
    fn deprecated_aliases_override_the_new_arguments() {
        // PSPNet: psp_use_batchnorm=False wins over decoder_use_norm (biases, no norms).
        let a = run_synthetic(
            "PSPNet",
            &[8, 16, 32],
            json!({"psp_out_channels": 8, "psp_use_batchnorm": false}),
            &[8, 4, 4],
        );
        let b = run_synthetic(
            "PSPNet",
            &[8, 16, 32],
            json!({"psp_out_channels": 8, "decoder_use_norm": false}),
            &[8, 4, 4],
        );
        assert_eq!(a.0, b.0);
        assert!(
            a.0.iter().any(|(k, _)| k == "_smp_decoder.conv.0.bias"),
            "{:?}",
            a.0
        );
        assert!(a.1.equal(&b.1));
        // PAN: upscale_mode wins over decoder_interpolation.
        let pan = |args: Value| run_synthetic("PAN", &STD, args, &[32, 16, 16, 8, 8]).1;
        let alias = pan(
            json!({"decoder_channels": 4, "upscale_mode": "nearest", "decoder_interpolation": "bilinear"}),
        );
        let nearest = pan(json!({"decoder_channels": 4, "decoder_interpolation": "nearest"}));
        let bilinear = pan(json!({"decoder_channels": 4}));
        assert!(alias.equal(&nearest));
        assert!(!alias.equal(&bilinear));
    }

    #[test]
    fn batchnorm_statistics_are_buffers() {
        for name in ["DeepLabV3", "DeepLabV3Plus", "Linknet", "PSPNet", "PAN"] {
            let m = build(name, &STD, json!({})).unwrap();
            let buffers = buffer_names(&m);
            assert!(!buffers.is_empty(), "{name}");
            assert_running_stats_only(&buffers);
        }
        // FPN normalises with GroupNorm only.
        assert!(buffer_names(&build("FPN", &STD, json!({})).unwrap()).is_empty());
    }

    #[test]
    fn describes_smps_defaults() {
        let defaults = |entry: &'static str| move |name: &str| declared_default(entry, name);
        // smp 0.6.0's signatures (decoders/<name>/model.py).
        let d = defaults("DeepLabV3");
        assert_eq!(d("decoder_channels"), json!(256));
        assert_eq!(d("decoder_atrous_rates"), json!([12, 24, 36]));
        assert_eq!(d("decoder_aspp_separable"), json!(false));
        assert_eq!(d("decoder_aspp_dropout"), json!(0.5));
        assert_eq!(d("encoder_output_stride"), json!(8));
        let d = defaults("DeepLabV3Plus");
        assert_eq!(d("decoder_aspp_separable"), json!(true));
        assert_eq!(d("encoder_output_stride"), json!(16));
        let d = defaults("FPN");
        assert_eq!(d("decoder_pyramid_channels"), json!(256));
        assert_eq!(d("decoder_segmentation_channels"), json!(128));
        assert_eq!(d("decoder_merge_policy"), json!("add"));
        assert_eq!(d("decoder_dropout"), json!(0.2));
        assert_eq!(d("decoder_interpolation"), json!("nearest"));
        let d = defaults("Linknet");
        assert_eq!(d("decoder_use_norm"), json!("batchnorm"));
        assert_eq!(d("decoder_use_batchnorm"), Value::Null);
        let d = defaults("PSPNet");
        assert_eq!(d("psp_out_channels"), json!(512));
        assert_eq!(d("decoder_use_norm"), json!("batchnorm"));
        assert_eq!(d("psp_dropout"), json!(0.2));
        assert_eq!(d("psp_use_batchnorm"), Value::Null);
        let d = defaults("PAN");
        assert_eq!(d("decoder_channels"), json!(32));
        assert_eq!(d("decoder_interpolation"), json!("bilinear"));
        assert_eq!(d("encoder_output_stride"), json!(16));
        assert_eq!(d("upscale_mode"), Value::Null);
    }
}
