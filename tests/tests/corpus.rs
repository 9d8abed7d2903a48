//! TerraTorch's own configs, run unchanged: every YAML of TerraTorch's `examples/confs`,
//! `integrationtests/configs` and `tests/resources/configs` (copied into
//! `tests/corpus/terratorch/`) whose model TerraTorch builds offline (1.2.11's references; 1.2.13
//! gives the same, `tests/corpus/README.md`) goes through
//! the `terrahost run` binary from the original file, with the synthetic weights, and
//! must give TerraTorch's numbers.
//!
//! The references come from `scripts/reference/corpus.py`: PyTorch's float32 output and
//! the same model run in float64. The float64 output is the truth (PyTorch's own float32
//! CPU kernels can be off by far more than terrahost on some shapes); the tolerance is
//! 1e-4 relative to the output's magnitude (absolute below magnitude 1). Both errors are
//! reported. Object-detection configs are compared per image and detection
//! ([`compare_detections`]).
//!
//! `tests/corpus/known_gaps.json` names the buildable configs terrahost does not run yet,
//! each with its reason. The test fails when any other config fails, and when a known
//! gap starts to pass (remove it from the list then), so the list and the README's score
//! stay true. The run writes its table to `target/corpus-report.json`.
//! `TERRAHOST_CORPUS_ONLY=<part of a slug>` runs only the matching configs.
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Tensor;
use terrahost_testkit::detection::{hashed, max_abs_diff};
use terrahost_testkit::{build_dir, kind_of, real_plugins, synth, workspace_root, PLUGINS};

/// The relative tolerance against the float64 reference.
const RTOL: f64 = 1e-4;

fn corpus_dir() -> PathBuf {
    workspace_root().join("tests/corpus")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The synthetic weights of a corpus fixture, written as a `.safetensors` checkpoint: refkit's
/// `synth`, and for the keys under one of `hashed_prefixes` with two or more dimensions (the
/// detection heads' matrices, see `scripts/reference/corpus.py`) the script's `hashed`.
fn write_weights(fixture: &Path, hashed_prefixes: &[&str], out: &Path) {
    let keys = read_json(&fixture.join("state_dict.json"));
    let tensors: Vec<(String, Tensor)> = keys
        .as_array()
        .expect("state_dict.json is a list")
        .iter()
        .map(|e| {
            let key = e[0].as_str().expect("key").to_owned();
            let shape: Vec<i64> = e[1]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_i64().expect("dim"))
                .collect();
            let kind = kind_of(e[2].as_str().expect("dtype"));
            let t = if shape.len() >= 2 && hashed_prefixes.iter().any(|p| key.starts_with(p)) {
                hashed(&shape).to_kind(kind)
            } else {
                synth(&key, &shape, kind)
            };
            (key, t)
        })
        .collect();
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    terrahost::weights::write_tensors(out, &named).expect("write weights");
}

/// What happened to one config.
struct Outcome {
    passed: bool,
    detail: Value,
}

/// What the binary wrote for one config, beside the fixture's tensors (inputs and
/// references).
struct Ran {
    io: Vec<(String, Tensor)>,
    got: Vec<(String, Tensor)>,
}

impl Ran {
    /// The fixture's tensor `name`.
    fn get(&self, name: &str) -> Option<Tensor> {
        self.io
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, t)| t.shallow_clone())
    }
}

/// Runs one buildable config through the binary, with `extra` arguments to `run`; the
/// last line of its stderr when it fails.
fn run_binary(plugins: &Path, meta: &Map<String, Value>, extra: &[&str]) -> Result<Ran, String> {
    let slug = meta["slug"].as_str().unwrap();
    let fixture = corpus_dir().join("fixtures").join(slug);
    let work = tempfile::tempdir().unwrap();
    let weights = work.path().join("weights.safetensors");
    let hashed_prefixes: Vec<&str> = meta
        .get("hashed_prefixes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    write_weights(&fixture, &hashed_prefixes, &weights);

    // Only the inputs go into the input file (the fixture also holds the references).
    let io = Tensor::read_safetensors(fixture.join("io.safetensors")).unwrap();
    let get = |name: &str| -> Option<Tensor> {
        io.iter()
            .find(|(k, _)| k == name)
            .map(|(_, t)| t.shallow_clone())
    };
    let input_names: Vec<String> = meta["input_shapes"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let inputs: Vec<(String, Tensor)> = input_names
        .iter()
        .map(|n| (n.clone(), get(n).expect("input tensor")))
        .collect();
    let input_file = work.path().join("input.safetensors");
    let named: Vec<(&str, &Tensor)> = inputs.iter().map(|(k, t)| (k.as_str(), t)).collect();
    terrahost::weights::write_tensors(&input_file, &named).unwrap();

    let output_file = work.path().join("out.safetensors");
    let config = workspace_root().join(meta["config"].as_str().unwrap());
    let out = Command::new(build_dir().join("terrahost"))
        .arg("--plugin-dir")
        .arg(plugins)
        .args(["run", "--device", "cpu", "--json", "--config"])
        .arg(&config)
        .arg("--weights")
        .arg(&weights)
        .arg("--input")
        .arg(&input_file)
        .arg("--output")
        .arg(&output_file)
        .args(extra)
        // the seed TerraTorch's forward ran under, for a model that draws random numbers
        .args(
            meta.get("draws_random")
                .and_then(Value::as_bool)
                .filter(|d| *d)
                .map(|_| vec!["--seed".to_owned(), meta["forward_seed"].to_string()])
                .unwrap_or_default(),
        )
        // a registry cache of this test's own (beside the plugins; not a `.so`), never the user's
        .env("TERRAHOST_CACHE", plugins.join("registry-cache.json"))
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("RUST_LOG")
        .output()
        .expect("run terrahost");
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(no message)")
            .trim()
            .to_owned();
        return Err(reason);
    }
    let got = Tensor::read_safetensors(&output_file).unwrap();
    Ok(Ran { io, got })
}

/// Runs one buildable config through the binary and compares every output.
fn run_config(plugins: &Path, meta: &Map<String, Value>) -> Outcome {
    let ran = match run_binary(plugins, meta, &[]) {
        Ok(ran) => ran,
        Err(reason) => {
            return Outcome {
                passed: false,
                detail: json!({"error": reason}),
            }
        }
    };
    let slug = meta["slug"].as_str().unwrap();
    let get = |name: &str| ran.get(name);
    let got = &ran.got;
    if meta.get("task").and_then(Value::as_str) == Some("object_detection") {
        return compare_detections(meta, &get, got);
    }
    let mut passed = true;
    let mut per_output = Map::new();
    for name in meta["output_names"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let (Some(ref32), Some(ref64)) = (get(name), get(&format!("f64.{name}"))) else {
            panic!("{slug}: the fixture lacks `{name}` or `f64.{name}`");
        };
        let Some(out) = got.iter().find(|(k, _)| k == name).map(|(_, t)| t) else {
            passed = false;
            per_output.insert(
                name.into(),
                json!({"error": "terrahost wrote no such output"}),
            );
            continue;
        };
        if out.size() != ref64.size() {
            passed = false;
            per_output.insert(
                name.into(),
                json!({"error": format!("shape {:?}, TerraTorch's is {:?}", out.size(), ref64.size())}),
            );
            continue;
        }
        let max_abs = |a: &Tensor, b: &Tensor| {
            (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
                .abs()
                .max()
                .double_value(&[])
        };
        let scale = ref64.abs().max().double_value(&[]);
        let err64 = max_abs(out, &ref64);
        let err32 = max_abs(out, &ref32);
        let ok = err64 <= RTOL * scale.max(1.0);
        passed &= ok;
        per_output.insert(
            name.into(),
            json!({"max_abs_vs_f64": err64, "max_abs_vs_f32": err32, "magnitude": scale, "ok": ok}),
        );
    }
    Outcome {
        passed,
        detail: Value::Object(per_output),
    }
}

/// An `ObjectDetectionTask` config's detections, image by image (`boxes.{i}`, `scores.{i}`,
/// `labels.{i}`, the first `masks_kept` of `masks.{i}`), as issue 18 asks: the same labels in
/// the same order, boxes within 1e-3 px and scores and masks within 1e-4 of TerraTorch's
/// float32 output. PyTorch's own float32 boxes are often farther than that from its float64
/// ones (float32 rounding in a ViT backbone moves the synthetic model's box regression by up to
/// 0.014 px at 224 x 224), and that error is one draw: another summation order in the backbone
/// draws again. So terrahost also passes when it is no farther from float64 than twice
/// PyTorch's float32 error, than the rest of the corpus allows (1e-4 of the output's magnitude:
/// 0.022 px for boxes in 224 px), or than PyTorch's own float32 runs fall with the backbone's
/// rounding redrawn at its measured size (`float32_spread`, `corpus.py`'s `float32_spread`:
/// 0.069 px on `aed_elephants_small`).
/// Only the leading detections of an image on which PyTorch's float32 and float64 runs agree
/// are compared (`compared_detections`; all of them for most configs): past a near tie of the
/// synthetic model, float32 rounding decides which detections follow (`corpus.py`). The same
/// holds before a documented float32 tie that PyTorch's two runs happen to break alike
/// (`float32_ties`: `corpus.py`'s `FLOAT32_TIES`, shown by `detection_float32_ties.py`).
fn compare_detections(
    meta: &Map<String, Value>,
    get: &dyn Fn(&str) -> Option<Tensor>,
    got: &[(String, Tensor)],
) -> Outcome {
    let counts = |key: &str| -> Vec<i64> {
        meta[key]
            .as_array()
            .unwrap_or_else(|| panic!("the fixture's meta lacks `{key}`"))
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    let (detections, compared) = (
        counts("detections_per_image"),
        counts("compared_detections"),
    );
    let mut passed = true;
    let mut per_output = Map::new();
    for name in meta["output_names"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let (kind, image) = name.split_once('.').unwrap();
        let image: usize = image.parse().unwrap();
        let (Some(ref32), Some(ref64)) = (get(name), get(&format!("f64.{name}"))) else {
            panic!("the fixture lacks `{name}` or `f64.{name}`");
        };
        let Some(out) = got.iter().find(|(k, _)| k == name).map(|(_, t)| t) else {
            passed = false;
            per_output.insert(
                name.into(),
                json!({"error": "terrahost wrote no such output"}),
            );
            continue;
        };
        // All of the image's detections when PyTorch's float32 and float64 runs agree on all of
        // them, else at least the leading ones they agree on; those are compared.
        let rows = out.size().first().copied().unwrap_or(0);
        let whole = compared[image] == detections[image];
        if (whole && kind != "masks" && rows != detections[image]) || rows < ref32.size()[0] {
            passed = false;
            per_output.insert(
                name.into(),
                json!({"error": format!("{rows} detections, TerraTorch's {}", detections[image])}),
            );
            continue;
        }
        let out = out.narrow(0, 0, ref32.size()[0]);
        if out.size() != ref32.size() {
            passed = false;
            per_output.insert(
                name.into(),
                json!({"error": format!("shape {:?}, TerraTorch's is {:?}", out.size(), ref32.size())}),
            );
            continue;
        }
        if kind == "labels" {
            let same = out.equal(&ref32);
            passed &= same;
            per_output.insert(name.into(), json!({"same": same}));
            continue;
        }
        let tol = if kind == "boxes" { 1e-3 } else { 1e-4 };
        let err32 = max_abs_diff(&out, &ref32);
        let err64 = max_abs_diff(&out, &ref64);
        let pytorch_err = max_abs_diff(&ref32, &ref64);
        let magnitude = if ref64.numel() == 0 {
            0.0
        } else {
            ref64.abs().max().double_value(&[])
        };
        let spread = meta
            .get("float32_spread")
            .and_then(|s| s.get(name))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let ok = err32 <= tol || err64 <= (2.0 * pytorch_err).max(RTOL * magnitude).max(spread);
        passed &= ok;
        per_output.insert(
            name.into(),
            json!({"max_abs_vs_f32": err32, "max_abs_vs_f64": err64, "pytorch_f32_vs_f64": pytorch_err,
                   "pytorch_f32_spread": spread, "magnitude": magnitude, "ok": ok}),
        );
    }
    Outcome {
        passed,
        detail: Value::Object(per_output),
    }
}

/// Writes a run's table to `target/NAME`; its path.
fn write_report(name: &str, summary: &Value) -> PathBuf {
    let path = build_dir().join("..").join(name);
    std::fs::write(&path, serde_json::to_string_pretty(summary).unwrap()).unwrap();
    path
}

fn count_yamls(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            if p.is_dir() {
                count_yamls(&p)
            } else {
                usize::from(p.extension().is_some_and(|e| e == "yaml"))
            }
        })
        .sum()
}

#[test]
fn terratorchs_own_configs_run_unchanged() {
    let results = read_json(&corpus_dir().join("results.json"));
    let results = results.as_object().expect("results.json is an object");
    let gaps = read_json(&corpus_dir().join("known_gaps.json"));
    let gaps: BTreeMap<String, String> = gaps
        .as_object()
        .expect("known_gaps.json is an object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("reason").to_owned()))
        .collect();
    for slug in gaps.keys() {
        assert!(
            results.get(slug).is_some_and(|r| r["status"] == "built"),
            "known_gaps.json names `{slug}`, which is not a config TerraTorch builds"
        );
    }

    let plugins = real_plugins(&PLUGINS);
    let mut report = Map::new();
    let mut unexpected_failures = Vec::new();
    let mut unexpected_passes = Vec::new();
    let (mut built, mut ran) = (0, 0);
    // `TERRAHOST_CORPUS_ONLY=object_detection` runs only the configs whose slug contains it
    // (a developer's shortcut; the whole corpus runs otherwise).
    let only = std::env::var("TERRAHOST_CORPUS_ONLY").ok();
    for (slug, rec) in results {
        if only.as_deref().is_some_and(|o| !slug.contains(o)) {
            continue;
        }
        if rec["status"] != "built" {
            report.insert(
                slug.clone(),
                json!({"terrahost": "not applicable", "terratorch": rec["error"]}),
            );
            continue;
        }
        built += 1;
        let meta = read_json(&corpus_dir().join("fixtures").join(slug).join("meta.json"));
        let outcome = run_config(plugins.path(), meta.as_object().unwrap());
        eprintln!(
            "{} {slug}: {}",
            if outcome.passed { "ok  " } else { "FAIL" },
            outcome.detail
        );
        ran += usize::from(outcome.passed);
        match (outcome.passed, gaps.get(slug)) {
            (false, None) => unexpected_failures.push(format!("{slug}: {}", outcome.detail)),
            (true, Some(_)) => unexpected_passes.push(slug.clone()),
            _ => {}
        }
        report.insert(
            slug.clone(),
            json!({"terrahost": if outcome.passed { "runs" } else { "fails" }, "detail": outcome.detail,
                   "known_gap": gaps.get(slug)}),
        );
    }
    let summary = json!({"configs": results.len(), "terratorch_builds": built, "terrahost_runs": ran, "configs_detail": report});
    let report_path = write_report("corpus-report.json", &summary);
    eprintln!(
        "corpus: {ran} of {built} configs TerraTorch builds run through terrahost ({} in the corpus); report: {}",
        results.len(),
        report_path.display()
    );
    let yamls = count_yamls(&corpus_dir().join("terratorch"));
    assert_eq!(
        results.len(),
        yamls,
        "results.json covers {} configs, the corpus has {yamls}; rerun scripts/reference/corpus.py",
        results.len()
    );
    assert!(
        unexpected_failures.is_empty(),
        "configs that fail and are not in known_gaps.json:\n{}",
        unexpected_failures.join("\n")
    );
    assert!(
        unexpected_passes.is_empty(),
        "configs in known_gaps.json that now run; remove them from the list: {unexpected_passes:?}"
    );
}

/// What `--precision bf16` or `int8` costs on one config: per output, the largest error against
/// float64 relative to the output's magnitude (as [`RTOL`] measures it: absolute below
/// magnitude 1), beside PyTorch's own float32 error; and for the class scores of
/// segmentation and classification tasks, how many argmax decisions agree with float64's.
/// Detection outputs: whether the labels are the same, and the boxes' largest error when
/// the detections line up.
fn precision_cost(meta: &Map<String, Value>, ran: &Ran) -> Value {
    if meta.get("task").and_then(Value::as_str) == Some("object_detection") {
        return detection_cost(meta, ran);
    }
    let task = meta
        .get("task_class")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let classes = task.contains("Segmentation") || task.contains("Classification");
    let mut per_output = Map::new();
    for name in meta["output_names"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let (Some(ref32), Some(ref64)) = (ran.get(name), ran.get(&format!("f64.{name}"))) else {
            continue;
        };
        let Some(out) = ran.got.iter().find(|(k, _)| k == name).map(|(_, t)| t) else {
            per_output.insert(name.into(), json!({"error": "no such output"}));
            continue;
        };
        if out.kind() != tch::Kind::Float && out.is_floating_point() {
            per_output.insert(
                name.into(),
                json!({"error": format!("written as {:?}, not float32", out.kind())}),
            );
            continue;
        }
        if out.size() != ref64.size() {
            per_output.insert(
                name.into(),
                json!({"error": format!("shape {:?}, TerraTorch's is {:?}", out.size(), ref64.size())}),
            );
            continue;
        }
        let magnitude = if ref64.numel() == 0 {
            0.0
        } else {
            ref64.abs().max().double_value(&[])
        };
        let mut entry = json!({
            "rel_err_vs_f64": max_abs_diff(out, &ref64) / magnitude.max(1.0),
            "pytorch_f32_rel_err": max_abs_diff(&ref32, &ref64) / magnitude.max(1.0),
            "max_abs_vs_f64": max_abs_diff(out, &ref64),
        });
        if classes && out.dim() >= 2 && out.size()[1] >= 2 {
            let same = out.argmax(1, false).eq_tensor(&ref64.argmax(1, false));
            entry["argmax_agree"] = json!(same.sum(tch::Kind::Int64).int64_value(&[]));
            entry["argmax_total"] = json!(same.numel());
        }
        per_output.insert(name.into(), entry);
    }
    Value::Object(per_output)
}

/// The rows of a `[N, 4]` box tensor.
fn box_rows(t: &Tensor) -> Vec<[f64; 4]> {
    let v = Vec::<f64>::try_from(&t.to_kind(tch::Kind::Double).reshape([-1])).unwrap();
    v.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter).max(f64::MIN_POSITIVE)
}

/// [`precision_cost`] for detection: per image, each of float64's leading detections (the
/// `compared_detections` on which PyTorch's float32 and float64 agree) is matched, in
/// score order, to the unmatched bf16 detection of the same label that overlaps it
/// most; it is found when that IoU is at least 0.5. Reported: found of compared, the
/// mean IoU of the found and their largest coordinate error. (Detections are not
/// compared row by row: rounding reorders near-ties of the synthetic models' scores.)
fn detection_cost(meta: &Map<String, Value>, ran: &Ran) -> Value {
    let compared: Vec<i64> = meta["compared_detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let mut per_image = Map::new();
    for (i, &n) in compared.iter().enumerate() {
        let got = |k: &str| {
            ran.got
                .iter()
                .find(|(name, _)| *name == format!("{k}.{i}"))
                .map(|(_, t)| t.shallow_clone())
        };
        let (Some(boxes), Some(labels)) = (got("boxes"), got("labels")) else {
            per_image.insert(format!("image.{i}"), json!({"error": "no boxes or labels"}));
            continue;
        };
        let ref_boxes = box_rows(&ran.get(&format!("f64.boxes.{i}")).unwrap());
        let ref_labels =
            Vec::<i64>::try_from(&ran.get(&format!("f64.labels.{i}")).unwrap()).unwrap();
        let (boxes, labels) = (box_rows(&boxes), Vec::<i64>::try_from(&labels).unwrap());
        let mut used = vec![false; boxes.len()];
        let (mut found, mut iou_sum, mut err) = (0usize, 0.0, 0.0f64);
        for (r, l) in ref_boxes.iter().zip(&ref_labels).take(n as usize) {
            let best = (0..boxes.len())
                .filter(|&j| !used[j] && labels[j] == *l)
                .map(|j| (iou(r, &boxes[j]), j))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((o, j)) = best.filter(|(o, _)| *o >= 0.5) {
                used[j] = true;
                found += 1;
                iou_sum += o;
                err = (0..4).fold(err, |e, k| e.max((r[k] - boxes[j][k]).abs()));
            }
        }
        per_image.insert(
            format!("image.{i}"),
            json!({"compared": n, "found": found, "detections": boxes.len(),
                   "mean_iou": if found > 0 { iou_sum / found as f64 } else { 0.0 },
                   "max_box_err_px": err}),
        );
    }
    Value::Object(per_image)
}

/// `--precision bf16` on every config terrahost runs: the accuracy cost against float64,
/// written to `target/corpus-bf16-report.json` (`scripts/bench/precision_accuracy.sh bf16`
/// runs it and prints the summary the README quotes). Every config that runs in float32
/// must run in bfloat16 and write float32 outputs; the numbers themselves are measured, not
/// asserted here, except that segmentation and classification keep at least 99 % of
/// float64's argmax decisions over the corpus. Not in the default run: on a CPU without
/// native bfloat16 it takes long (`cargo test ... -- --ignored bf16`).
#[test]
#[ignore]
fn bf16_accuracy_on_the_corpus() {
    precision_accuracy_on_the_corpus("bf16", 0.99);
}

/// `--precision int8` on every config terrahost runs, written to
/// `target/corpus-int8-report.json` (`scripts/bench/precision_accuracy.sh int8`), held to
/// issue 19's bar for offering int8: at least 99.9 % of float64's argmax decisions over the
/// corpus. The corpus' synthetic weights are rank-2 matrices, which hide much of int8's
/// rounding (`cli::run_precision_int8_is_pytorchs_dynamic_quantization` and the catalog
/// benchmark measure it on full-rank weights). Not in the default run.
#[test]
#[ignore]
fn int8_accuracy_on_the_corpus() {
    precision_accuracy_on_the_corpus("int8", 0.999);
}

/// Runs the corpus under `--precision precision` and writes its report; every config must
/// run, and at least `min_agree` of the argmax decisions must agree with float64's.
fn precision_accuracy_on_the_corpus(precision: &str, min_agree: f64) {
    let results = read_json(&corpus_dir().join("results.json"));
    let gaps = read_json(&corpus_dir().join("known_gaps.json"));
    let plugins = real_plugins(&PLUGINS);
    let only = std::env::var("TERRAHOST_CORPUS_ONLY").ok();
    let mut report = Map::new();
    let mut failures = Vec::new();
    let (mut agree, mut total) = (0i64, 0i64);
    for (slug, rec) in results.as_object().unwrap() {
        if rec["status"] != "built" || gaps.get(slug).is_some() {
            continue;
        }
        if only.as_deref().is_some_and(|o| !slug.contains(o)) {
            continue;
        }
        let meta = read_json(&corpus_dir().join("fixtures").join(slug).join("meta.json"));
        let meta = meta.as_object().unwrap();
        let started = std::time::Instant::now();
        let detail = match run_binary(plugins.path(), meta, &["--precision", precision]) {
            Ok(ran) => precision_cost(meta, &ran),
            Err(reason) => json!({"error": reason}),
        };
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("{slug} ({seconds:.1} s): {detail}");
        for (name, entry) in detail.as_object().into_iter().flatten() {
            if entry.get("error").is_some() {
                failures.push(format!("{slug} {name}: {entry}"));
            }
            agree += entry["argmax_agree"].as_i64().unwrap_or(0);
            total += entry["argmax_total"].as_i64().unwrap_or(0);
        }
        if detail.get("error").is_some() {
            failures.push(format!("{slug}: {detail}"));
        }
        report.insert(slug.clone(), json!({"seconds": seconds, "outputs": detail}));
    }
    let summary = json!({"precision": precision, "argmax_agree": agree, "argmax_total": total, "configs": report});
    let path = write_report(&format!("corpus-{precision}-report.json"), &summary);
    eprintln!(
        "{precision}: {} configs, argmax {agree} of {total} agree with float64; report: {}",
        report.len(),
        path.display()
    );
    assert!(
        failures.is_empty(),
        "configs that fail in {precision}:\n{}",
        failures.join("\n")
    );
    assert!(
        total == 0 || agree as f64 >= min_agree * total as f64,
        "{precision} keeps only {agree} of {total} argmax decisions"
    );
}
