//! Reading `torch.save` archives: every fixture written by
//! `scripts/reference/make_torch_save_fixtures.py` holds the tensors of
//! `expected.safetensors`, whatever wraps them.
use std::path::PathBuf;
use tch::Tensor;
use terrahost_layers::checkpoint::read_state_dict;
use terrahost_plugin_api::ErrorKind;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/torch_save")
        .join(name)
}

fn assert_same(file: &str) {
    let expected = Tensor::read_safetensors(fixture("expected.safetensors")).unwrap();
    let got = read_state_dict(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    // torch.save keeps the dict's order.
    assert_eq!(
        names,
        [
            "conv.weight",
            "conv.bias",
            "bn.num_batches_tracked",
            "half",
            "bf16",
            "mask",
            "ints",
            "bytes",
            "view.t",
            "view.row",
            "scalar"
        ],
        "{file}"
    );
    for (k, t) in &got {
        let (_, e) = expected.iter().find(|(n, _)| n == k).unwrap();
        assert_eq!(t.kind(), e.kind(), "{file}: dtype of {k}");
        assert_eq!(t.size(), e.size(), "{file}: shape of {k}");
        assert!(t.equal(e), "{file}: values of {k}");
        assert!(t.is_contiguous(), "{file}: {k} is contiguous");
    }
}

#[test]
fn reads_a_plain_state_dict() {
    assert_same("state_dict.pt");
}

#[test]
fn reads_parameters() {
    assert_same("parameters.pth");
}

#[test]
fn unwraps_a_lightning_checkpoint_with_other_python_objects() {
    assert_same("lightning.ckpt");
}

#[test]
fn refuses_the_legacy_format_with_a_conversion_hint() {
    let e = read_state_dict(&fixture("legacy.pt")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT);
    assert!(
        e.message().contains("not a zip archive") && e.message().contains("safetensors"),
        "{e}"
    );
}

#[test]
fn refuses_an_archive_that_is_not_a_state_dict() {
    let e = read_state_dict(&fixture("list.pt")).unwrap_err();
    assert!(
        e.message().contains("not a state_dict") && e.message().contains("a list"),
        "{e}"
    );
}

#[test]
fn names_a_missing_file_and_an_unknown_format() {
    let e = read_state_dict(&fixture("nope.pt")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NOT_FOUND);
    assert!(e.message().contains("nope.pt"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("w.h5");
    std::fs::write(&odd, b"x").unwrap();
    let e = read_state_dict(&odd).unwrap_err();
    assert!(e.message().contains("unknown format `.h5`"), "{e}");
}

#[test]
fn a_truncated_archive_is_an_error_not_a_crash() {
    let bytes = std::fs::read(fixture("state_dict.pt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [10, bytes.len() / 2, bytes.len() - 30] {
        let p = dir.path().join("cut.pt");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(read_state_dict(&p).is_err(), "cut at {cut}");
    }
}
