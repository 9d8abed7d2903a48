//! Parity and argument tests of the decode heads of part A (UPerHead, ASPPHead, ...)
//! against TerraTorch 1.2.11 + mmseg 1.2.2 fixtures (`scripts/reference/cases/mmseg_a.py`).
use crate::test_support::{build, build_err, fixture};
use serde_json::{json, Value};
use terrahost_plugin_api::ErrorKind;

fn check(case: &str) {
    fixture(case);
}

#[test]
fn parity_mmseg_uper_head_fixture() {
    check("mmseg_UPerHead");
}

#[test]
fn parity_mmseg_psp_head_fixture() {
    check("mmseg_PSPHead");
}

#[test]
fn parity_mmseg_aspp_head_fixture() {
    check("mmseg_ASPPHead");
}

#[test]
fn parity_mmseg_depthwise_separable_aspp_head_fixture() {
    check("mmseg_DepthwiseSeparableASPPHead");
}

#[test]
fn parity_mmseg_depthwise_separable_fcn_head_fixture() {
    check("mmseg_DepthwiseSeparableFCNHead");
}

#[test]
fn parity_mmseg_stdc_head_fixture() {
    check("mmseg_STDCHead");
}

#[test]
fn parity_mmseg_segformer_head_fixture() {
    check("mmseg_SegformerHead");
}

#[test]
fn parity_mmseg_fpn_head_fixture() {
    check("mmseg_FPNHead");
}

#[test]
fn parity_mmseg_setr_up_head_fixture() {
    check("mmseg_SETRUPHead");
}

#[test]
fn parity_mmseg_setr_mla_head_fixture() {
    check("mmseg_SETRMLAHead");
}

#[test]
fn parity_mmseg_lraspp_head_fixture() {
    check("mmseg_LRASPPHead");
}

#[test]
fn parity_mmseg_dpt_head_fixture() {
    check("mmseg_DPTHead");
}

#[test]
fn parity_mmseg_part_a_variant_fixtures() {
    for case in [
        "mmseg_UPerHead_gn_leaky_binary",
        "mmseg_SegformerHead_bicubic_bn",
        "mmseg_FPNHead_uneven_strides_gelu",
        "mmseg_SETRUPHead_resize_concat",
        "mmseg_DepthwiseSeparableASPPHead_no_c1",
        "mmseg_DepthwiseSeparableFCNHead_gn",
        "mmseg_DPTHead_add_gelu",
        "mmseg_ASPPHead_resize_concat_syncbn",
    ] {
        check(case);
    }
}

const PART_A: [&str; 12] = [
    "UPerHead",
    "ASPPHead",
    "DepthwiseSeparableASPPHead",
    "DepthwiseSeparableFCNHead",
    "PSPHead",
    "SegformerHead",
    "FPNHead",
    "SETRUPHead",
    "SETRMLAHead",
    "LRASPPHead",
    "STDCHead",
    "DPTHead",
];

/// Asserts an invalid-argument error whose message contains every needle.
fn assert_invalid(name: &str, channels: &[i64], args: Value, needles: &[&str]) {
    let e = build_err(name, channels, args.clone());
    assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT, "{name} {args}: {e}");
    for n in needles {
        assert!(
            e.message().contains(n),
            "{name} {channels:?} {args}: expected {n:?} in: {e}"
        );
    }
}

#[test]
fn every_part_a_head_requires_num_classes_with_terratorchs_message() {
    for name in PART_A {
        let e = build_err(name, &[8, 16, 32, 64], json!({"channels": 16}));
        assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT, "{name}: {e}");
        assert!(
            e.message().contains(crate::NUM_CLASSES_REQUIRED),
            "{name}: {e}"
        );
        let e = build_err(name, &[8, 16, 32, 64], json!({"num_classes": 3}));
        assert!(e.message().contains("`channels`"), "{name}: {e}");
    }
}

#[test]
fn every_part_a_entry_is_registered_in_the_decoder_source() {
    let sources = crate::plugin_sources().unwrap();
    let src = sources
        .iter()
        .find(|s| s.registry.as_str() == "decoder")
        .unwrap();
    assert_eq!(src.prefix.as_str(), "mmseg");
    let e = build_err("UPerHed", &[8], json!({}));
    assert_eq!(e.kind, ErrorKind::NOT_FOUND, "{e}");
    for name in PART_A {
        // a wrong-typed argument is refused by name, which proves the entry exists and declares it
        let e = build_err(name, &[8], json!({"num_classes": "three", "channels": 4}));
        assert!(e.message().contains("num_classes"), "{name}: {e}");
    }
}

#[test]
fn multiple_select_heads_need_a_list_in_index_and_several_maps() {
    for name in ["UPerHead", "SegformerHead", "SETRMLAHead"] {
        // mmseg's default in_index=-1 does not fit a head that reads several maps
        assert_invalid(
            name,
            &[8, 16],
            json!({"num_classes": 3, "channels": 8}),
            &["in_index", "[0, 1]"],
        );
        // a one-entry channel list becomes an int in TerraTorch, which these heads reject
        assert_invalid(
            name,
            &[8],
            json!({"num_classes": 3, "channels": 8, "in_index": [0]}),
            &["one-entry"],
        );
        assert_invalid(
            name,
            &[8, 16],
            json!({"num_classes": 3, "channels": 8, "in_index": [0, 1, 2]}),
            &["in_index"],
        );
        // they fix input_transform themselves: passing it is a Python TypeError, here an unknown argument
        assert_invalid(
            name,
            &[8, 16],
            json!({"num_classes": 3, "channels": 8, "in_index": [0, 1], "input_transform": "multiple_select"}),
            &["unknown argument `input_transform`"],
        );
    }
}

#[test]
fn single_map_heads_refuse_multiple_select_and_several_maps_without_transform() {
    for name in [
        "PSPHead",
        "ASPPHead",
        "SETRUPHead",
        "STDCHead",
        "DepthwiseSeparableFCNHead",
    ] {
        assert_invalid(
            name,
            &[8, 16],
            json!({"num_classes": 3, "channels": 8, "input_transform": "multiple_select", "in_index": [0, 1]}),
            &["multiple_select"],
        );
        assert_invalid(
            name,
            &[8, 16],
            json!({"num_classes": 3, "channels": 8}),
            &["one entry"],
        );
    }
}

#[test]
fn base_decode_head_arguments_are_checked() {
    let ok = |extra: Value| {
        let mut a = json!({"num_classes": 3, "channels": 8});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    assert_invalid(
        "PSPHead",
        &[8],
        ok(json!({"out_channels": 2})),
        &["out_channels", "num_classes"],
    );
    assert_invalid(
        "PSPHead",
        &[8],
        ok(json!({"dropout_ratio": 1.5})),
        &["dropout_ratio"],
    );
    assert_invalid(
        "PSPHead",
        &[8],
        ok(json!({"num_classes": 0})),
        &["num_classes"],
    );
    assert_invalid(
        "PSPHead",
        &[8],
        ok(json!({"norm_cfg": {"type": "LN"}})),
        &["norm_cfg", "LN"],
    );
    assert_invalid(
        "PSPHead",
        &[8],
        ok(json!({"act_cfg": {"type": "PReLU"}})),
        &["act_cfg"],
    );
    assert_invalid(
        "PSPHead",
        &[8],
        ok(json!({"conv_cfg": {"type": "deconv"}})),
        &["conv_cfg"],
    );
    assert_invalid(
        "PSPHead",
        &[8],
        ok(json!({"input_transform": "stack"})),
        &["input_transform"],
    );
    assert_invalid(
        "ASPPHead",
        &[8],
        ok(json!({"norm_cfg": {"type": "GN", "num_groups": 3}})),
        &["num_groups"],
    );
    assert_invalid(
        "PSPHead",
        &[8],
        ok(json!({"pool_scales": []})),
        &["pool_scales"],
    );
    assert_invalid(
        "PSPHead",
        &[8],
        ok(json!({"pool_scales": [1, 0]})),
        &["pool_scales"],
    );
    assert_invalid(
        "ASPPHead",
        &[8],
        ok(json!({"dilations": [1, -2]})),
        &["dilations"],
    );
    assert_invalid(
        "ASPPHead",
        &[8],
        ok(json!({"dilation": [1, 2]})),
        &["did you mean `dilations`"],
    );
}

#[test]
fn head_specific_arguments_are_checked() {
    let pyr = [8, 16, 32, 64];
    let multi = |extra: Value| {
        let mut a = json!({"num_classes": 3, "channels": 16, "in_index": [0, 1, 2, 3]});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    assert_invalid(
        "FPNHead",
        &pyr,
        multi(json!({"feature_strides": [4, 8, 16]})),
        &["feature_strides", "one entry"],
    );
    assert_invalid(
        "FPNHead",
        &pyr,
        multi(json!({"feature_strides": [8, 4, 16, 32]})),
        &["smallest first"],
    );
    assert_invalid("FPNHead", &pyr, multi(json!({})), &["feature_strides"]);
    assert_invalid(
        "SETRMLAHead",
        &pyr,
        multi(json!({"mla_channels": 8})),
        &["channels", "mla_channels"],
    );
    assert_invalid(
        "SETRMLAHead",
        &pyr,
        multi(json!({"mla_channels": 4, "up_scale": 0})),
        &["up_scale"],
    );
    assert_invalid(
        "SegformerHead",
        &pyr,
        multi(json!({"interpolate_mode": "nearest"})),
        &["interpolate_mode", "align_corners"],
    );
    let one = json!({"num_classes": 3, "channels": 8});
    let with = |extra: Value| {
        let mut a = one.clone();
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    assert_invalid(
        "SETRUPHead",
        &[8],
        with(json!({"kernel_size": 5})),
        &["kernel_size", "1 or 3"],
    );
    assert_invalid(
        "SETRUPHead",
        &[8],
        with(json!({"norm_layer": {"type": "BN"}})),
        &["norm_layer", "LN"],
    );
    assert_invalid(
        "SETRUPHead",
        &[16],
        with(json!({"num_convs": 0})),
        &["num_convs"],
    );
    assert_invalid(
        "DepthwiseSeparableFCNHead",
        &[8],
        with(json!({"num_convs": 0})),
        &["num_convs", ">= 1"],
    );
    assert_invalid(
        "DepthwiseSeparableFCNHead",
        &[8],
        with(json!({"dw_act_cfg": "default"})),
        &["dw_act_cfg"],
    );
    assert_invalid(
        "STDCHead",
        &[8],
        with(json!({"dilation": 0})),
        &["dilation"],
    );
    assert_invalid(
        "DepthwiseSeparableASPPHead",
        &[8],
        with(json!({"c1_in_channels": 0, "c1_channels": 4})),
        &["c1_channels", "must be 0"],
    );
    assert_invalid(
        "DepthwiseSeparableASPPHead",
        &[8],
        with(json!({"c1_in_channels": 4})),
        &["c1_channels"],
    );
}

#[test]
fn lraspp_needs_multiple_select_and_matching_branches() {
    let base = |extra: Value| {
        let mut a = json!({"num_classes": 3, "channels": 8, "in_index": [0, 1, 2]});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    // mmseg: "in Lite R-ASPP (LRASPP) head, input_transform must be 'multiple_select'"
    assert_invalid(
        "LRASPPHead",
        &[4, 8, 4],
        base(json!({})),
        &["input_transform", "multiple_select"],
    );
    let ms = json!({"input_transform": "multiple_select"});
    let mut a = base(ms.clone());
    a["branch_channels"] = json!([4]);
    assert_invalid("LRASPPHead", &[4, 8, 4], a, &["branch_channels"]);
    let mut a = base(ms.clone());
    a["in_index"] = json!([0, 1, 2, 3]);
    a["branch_channels"] = json!([4, 4, 4]);
    assert_invalid("LRASPPHead", &[4, 8, 4, 16], a, &["third", "last"]);
    let m = build("LRASPPHead", &[4, 8, 4], base(ms)).unwrap();
    let xs = [
        terrahost_testkit::sine_input(0, &[1, 4, 8, 8]),
        terrahost_testkit::sine_input(1, &[1, 8, 4, 4]),
        terrahost_testkit::sine_input(2, &[1, 4, 16, 16]),
    ];
    let e = m.forward(&xs).unwrap_err();
    assert_eq!(e.kind, ErrorKind::FORWARD_FAILED);
    assert!(e.message().contains("at least that large"), "{e}");
}

fn dpt_args(readout: &str) -> Value {
    json!({
        "num_classes": 3, "channels": 8, "embed_dims": 8, "post_process_channels": [4, 4, 8, 8],
        "readout_type": readout, "input_transform": "multiple_select", "in_index": [0, 1, 2, 3]
    })
}

#[test]
fn dpt_arguments_and_inputs_are_checked() {
    let ch = [8, 8, 8, 8];
    let mut a = dpt_args("ignore");
    a["expand_channels"] = json!(true);
    assert_invalid("DPTHead", &ch, a, &["expand_channels"]);
    assert_invalid("DPTHead", &ch, dpt_args("concat"), &["readout_type"]);
    assert_invalid(
        "DPTHead",
        &[8, 8, 8, 16],
        dpt_args("ignore"),
        &["embed_dims"],
    );
    let mut a = dpt_args("ignore");
    a["post_process_channels"] = json!([4, 4, 8]);
    assert_invalid("DPTHead", &ch, a, &["post_process_channels"]);
    let mut a = dpt_args("ignore");
    a.as_object_mut().unwrap().remove("input_transform");
    a["in_index"] = json!(-1);
    assert_invalid("DPTHead", &ch, a, &["channel list must have one entry"]);

    // with readout "ignore" the tokens are unused: the four maps alone give the same logits
    let m = build("DPTHead", &ch, dpt_args("ignore")).unwrap();
    terrahost_testkit::set_synthetic(&m);
    let maps: Vec<_> = (0..4)
        .map(|i| terrahost_testkit::sine_input(i, &[1, 8, 2, 2]))
        .collect();
    let mut pairs = Vec::new();
    for (i, x) in maps.iter().enumerate() {
        pairs.push(x.shallow_clone());
        pairs.push(terrahost_testkit::sine_input(10 + i, &[1, 8]));
    }
    let a = tch::no_grad(|| m.forward(&maps)).unwrap();
    let b = tch::no_grad(|| m.forward(&pairs)).unwrap();
    // a 2 x 2 patch grid: stage maps 8, 4, 2, 1 px, then four x2 fusions from 1 px
    assert_eq!(a[0].size(), [1, 3, 16, 16]);
    terrahost_testkit::assert_close("ignore readout", &a[0], &b[0], 0.0);

    // "project" needs the tokens
    let m = build("DPTHead", &ch, dpt_args("project")).unwrap();
    let e = m.forward(&maps).unwrap_err();
    assert_eq!(e.kind, ErrorKind::FORWARD_FAILED);
    assert!(e.message().contains("8 tensors"), "{e}");
    let mut bad: Vec<_> = pairs.iter().map(|t| t.shallow_clone()).collect();
    bad[1] = terrahost_testkit::sine_input(0, &[1, 4]);
    let e = m.forward(&bad).unwrap_err();
    assert!(e.message().contains("class token"), "{e}");
}

#[test]
fn heads_report_their_classes_and_include_a_head() {
    let m = build(
        "UPerHead",
        &[8, 16],
        json!({"num_classes": 5, "channels": 8, "in_index": [0, 1]}),
    )
    .unwrap();
    assert_eq!(m.out_channels(), vec![5]);
    assert!(m.includes_head());
    let m = build(
        "PSPHead",
        &[8],
        json!({"num_classes": 2, "out_channels": 1, "channels": 8}),
    )
    .unwrap();
    assert_eq!(m.out_channels(), vec![1]);
    assert!(m.includes_head());
}

#[test]
fn forward_checks_selected_maps() {
    let m = build(
        "SegformerHead",
        &[8, 16],
        json!({"num_classes": 3, "channels": 8, "in_index": [0, 1]}),
    )
    .unwrap();
    let e = m
        .forward(&[terrahost_testkit::sine_input(0, &[1, 8, 4, 4])])
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::FORWARD_FAILED);
    assert!(e.message().contains("in_index 1 is out of range"), "{e}");
    let xs = [
        terrahost_testkit::sine_input(0, &[1, 8, 4, 4]),
        terrahost_testkit::sine_input(1, &[1, 8, 2, 2]),
    ];
    let e = m.forward(&xs).unwrap_err();
    assert!(e.message().contains("[B, 16, H, W]"), "{e}");
    let m = build(
        "DepthwiseSeparableASPPHead",
        &[16],
        json!({"num_classes": 3, "channels": 8, "c1_in_channels": 4, "c1_channels": 4, "dilations": [1, 2]}),
    )
    .unwrap();
    let xs = [
        terrahost_testkit::sine_input(0, &[1, 8, 8, 8]),
        terrahost_testkit::sine_input(1, &[1, 16, 4, 4]),
    ];
    let e = m.forward(&xs).unwrap_err();
    assert!(e.message().contains("c1 map"), "{e}");
}

#[test]
fn stdc_keeps_upstreams_fixed_loss_tensors() {
    let m = build("STDCHead", &[8], json!({"num_classes": 3, "channels": 8})).unwrap();
    let sd: std::collections::HashMap<String, tch::Tensor> = m.state_dict().into_iter().collect();
    // torch.tensor([-1, -1, -1, -1, 8, -1, -1, -1, -1]).reshape(1, 1, 3, 3) and [[.6], [.3], [.1]].reshape(1, 3, 1, 1)
    let lap = &sd["decoder.laplacian_kernel"];
    assert_eq!(lap.size(), [1, 1, 3, 3]);
    assert_eq!(lap.sum(tch::Kind::Float).double_value(&[]), 0.0);
    assert_eq!(lap.double_value(&[0, 0, 1, 1]), 8.0);
    let fusion = &sd["decoder.fusion_kernel"];
    assert_eq!(fusion.size(), [1, 3, 1, 1]);
    assert!((fusion.double_value(&[0, 0, 0, 0]) - 0.6).abs() < 1e-7);
    assert!(!lap.requires_grad() && !fusion.requires_grad());
}
