//! Parity and argument tests of the second-wave decode heads against TerraTorch 1.2.11 +
//! mmseg 1.2.2 fixtures (`scripts/reference/cases/mmseg_c.py`).
use crate::test_support::{build, expect_errors, fixture};
use serde_json::{json, Value};

#[test]
fn parity_segmenter_mask_transformer_head() {
    fixture("mmseg_SegmenterMaskTransformerHead");
    fixture("mmseg_SegmenterMaskTransformerHead_relu_3fcs_no_bias");
}

#[test]
fn segmenter_masks_have_num_classes_channels() {
    let args = json!({"num_classes": 2, "out_channels": 1, "channels": 4, "num_layers": 1, "num_heads": 2,
                      "embed_dims": 8});
    let m = build("SegmenterMaskTransformerHead", &[6], args).unwrap();
    assert!(m.includes_head());
    assert_eq!(m.out_channels(), vec![2]);
    let y = tch::no_grad(|| m.forward(&[terrahost_testkit::sine_input(0, &[1, 6, 3, 4])])).unwrap();
    assert_eq!(y[0].size(), vec![1, 2, 3, 4]);
}

#[test]
fn segmenter_checks_its_arguments() {
    let base = |extra: Value| {
        let mut a = json!({"num_classes": 3, "channels": 8, "num_layers": 1, "num_heads": 2, "embed_dims": 8});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    let s = "SegmenterMaskTransformerHead";
    expect_errors(&[
        (
            s,
            &[8],
            json!({"num_classes": 3, "channels": 8, "num_heads": 2, "embed_dims": 8}),
            "num_layers",
        ),
        (s, &[8], base(json!({"num_heads": 3})), "num_heads"),
        (s, &[8], base(json!({"num_fcs": 1})), "num_fcs"),
        (
            s,
            &[8],
            base(json!({"norm_cfg": {"type": "BN"}})),
            "norm_cfg",
        ),
        (s, &[8], base(json!({"act_cfg": null})), "act_cfg"),
        (s, &[8], base(json!({"drop_rate": 1.0})), "drop_rate"),
        (
            s,
            &[8, 8],
            base(json!({"input_transform": "resize_concat", "in_index": [0, 1]})),
            "input_transform",
        ),
    ]);
}

/// Runs a fixture whose reference ran in training mode (BN on batch statistics,
/// no dropout) and compares every output.
fn fixture_in_training(case: &str) {
    let fx = terrahost_testkit::Fixture::load(case);
    assert_eq!(
        fx.meta["train"],
        json!(true),
        "{case} is a training-mode fixture"
    );
    let host = terrahost_testkit::host_with(crate::plugin_sources().unwrap());
    let mut m = terrahost_testkit::build_fixture(&host, &fx);
    m.set_train(true);
    let ys = tch::no_grad(|| m.forward(&fx.inputs)).unwrap();
    assert_eq!(ys.len(), fx.outputs.len(), "{case}: number of outputs");
    for (i, (a, e)) in ys.iter().zip(&fx.outputs).enumerate() {
        terrahost_testkit::assert_close(&format!("{case} output.{i}"), a, e, fx.atol());
    }
}

#[test]
fn parity_pid_head_in_eval_and_training() {
    fixture("mmseg_PIDHead");
    fixture_in_training("mmseg_PIDHead_train");
}

#[test]
fn parity_ddr_head_in_eval_and_training() {
    fixture("mmseg_DDRHead");
    fixture_in_training("mmseg_DDRHead_train");
}

#[test]
fn pid_and_ddr_heads_check_their_inputs_and_arguments() {
    let args = json!({"num_classes": 3, "channels": 8});
    let m = build("PIDHead", &[16], args.clone()).unwrap();
    let x = |c: i64| terrahost_testkit::sine_input(0, &[1, c, 4, 4]);
    let e = m.forward(&[x(8), x(16), x(8)]).unwrap_err();
    assert!(
        e.message().contains("takes 1 map(s) (i) in eval mode"),
        "{e}"
    );
    let m = build("DDRHead", &[16], args.clone()).unwrap();
    let e = m.forward(&[x(8)]).unwrap_err();
    assert!(e.message().contains("[B, 16, H, W]"), "{e}");
    expect_errors(&[
        ("PIDHead", &[2], args.clone(), "at least 4 channels"),
        (
            "PIDHead",
            &[16],
            json!({"num_classes": 3, "channels": 8, "norm_cfg": null}),
            "norm_cfg",
        ),
        (
            "DDRHead",
            &[16],
            json!({"num_classes": 3, "channels": 8, "act_cfg": null}),
            "act_cfg",
        ),
        (
            "DDRHead",
            &[8, 8],
            json!({"num_classes": 3, "channels": 8, "input_transform": "resize_concat", "in_index": [0, 1]}),
            "one map",
        ),
    ]);
}

#[test]
fn segmenter_drops_paths_in_training_only() {
    let args = json!({"num_classes": 3, "channels": 8, "num_layers": 2, "num_heads": 2, "embed_dims": 8,
                      "drop_path_rate": 0.9, "drop_rate": 0.2});
    let mut m = build("SegmenterMaskTransformerHead", &[8], args).unwrap();
    let x = [terrahost_testkit::sine_input(0, &[4, 8, 3, 3])];
    let a = tch::no_grad(|| m.forward(&x)).unwrap().remove(0);
    let b = tch::no_grad(|| m.forward(&x)).unwrap().remove(0);
    assert!(a.equal(&b), "eval mode is deterministic");
    m.set_train(true);
    let c = tch::no_grad(|| m.forward(&x)).unwrap().remove(0);
    assert!(
        !a.allclose(&c, 1e-6, 1e-6, false),
        "dropout and DropPath change the training output"
    );
}
