//! `terrahost predict` against TerraTorch's own predict: the fixtures of
//! `scripts/reference/predict_fixtures.py` hold small GeoTIFF scenes, the LightningCLI
//! config, the synthetic weights' keys and the GeoTIFFs TerraTorch 1.2.11 wrote for them
//! (its datamodule, its task's `predict_step` with `tiled_inference`, its
//! `CustomWriter` / `save_prediction`). The binary runs on the same scenes with the same
//! weights; its files must have the same size, CRS, transform, dtype, nodata and
//! compression, class maps equal except at near-ties, values within 1e-4.
//!
//! Then the many-scenes behaviour (directories, globs, shards, skipping existing
//! outputs) and every bad input of the issue, each named in a one-line error.
use gdal::raster::GdalDataType;
use gdal::{Dataset, DriverManager, Metadata};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::Tensor;
use terrahost_testkit::{build_dir, kind_of, real_plugins, synth, workspace_root, PLUGINS};

const ATOL: f64 = 1e-4;

fn fixture(case: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/predict").join(case)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The case's synthetic weights (from state_dict.json, the shared formula) as a checkpoint.
fn weights(case: &str, dir: &Path) -> PathBuf {
    let keys = read_json(&fixture(case).join("state_dict.json"));
    let tensors: Vec<(String, Tensor)> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let key = e[0].as_str().unwrap().to_owned();
            let shape: Vec<i64> = e[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            let t = synth(&key, &shape, kind_of(e[2].as_str().unwrap()));
            (key, t)
        })
        .collect();
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let path = dir.join(format!("{case}.safetensors"));
    terrahost::weights::write_tensors(&path, &named).unwrap();
    path
}

/// `terrahost --plugin-dir PLUGINS predict`, to run in `cwd`, ready for its arguments.
fn predict_command(plugins: &Path, cwd: &Path) -> Command {
    let exe = build_dir().join("terrahost");
    assert!(
        exe.exists(),
        "{} is not built; run `cargo build --workspace` first",
        exe.display()
    );
    let mut c = Command::new(exe);
    c.current_dir(cwd)
        .arg("--plugin-dir")
        .arg(plugins)
        .arg("predict")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("RUST_LOG");
    c
}

/// Runs `terrahost --plugin-dir PLUGINS predict ARGS` in `cwd`.
fn predict(plugins: &Path, cwd: &Path, args: &[&str]) -> Output {
    predict_command(plugins, cwd)
        .args(args)
        .output()
        .expect("run terrahost")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `error:` line of `o`'s stderr that names `name`.
fn error_line(o: &Output, name: &str) -> String {
    let err = stderr(o);
    err.lines()
        .find(|l| l.starts_with("error:") && l.contains(name))
        .unwrap_or_else(|| panic!("no error line names {name}: {err}"))
        .to_owned()
}

/// All bands of a file, `[bands, h, w]` float64.
fn read_all(ds: &Dataset) -> Tensor {
    let (w, h) = ds.raster_size();
    let bands: Vec<Tensor> = (1..=ds.raster_count())
        .map(|b| {
            let buf = ds
                .rasterband(b)
                .unwrap()
                .read_as::<f64>((0, 0), (w, h), (w, h), None)
                .unwrap();
            Tensor::from_slice(buf.data()).view([h as i64, w as i64])
        })
        .collect();
    Tensor::stack(&bands, 0)
}

/// Compares terrahost's file with TerraTorch's; `logits` (TerraTorch's logits of the
/// same scene, when the case wrote them) tells near-ties in a class map.
fn compare(expected: &Path, got: &Path, logits: Option<&Path>) {
    let what = got.display().to_string();
    let e = Dataset::open(expected).unwrap();
    let g = Dataset::open(got).unwrap_or_else(|err| panic!("{what}: {err}"));
    assert_eq!(g.raster_size(), e.raster_size(), "{what}: size");
    assert_eq!(g.raster_count(), e.raster_count(), "{what}: band count");
    let (eb, gb) = (e.rasterband(1).unwrap(), g.rasterband(1).unwrap());
    assert_eq!(gb.band_type(), eb.band_type(), "{what}: dtype");
    assert_eq!(gb.no_data_value(), eb.no_data_value(), "{what}: nodata");
    assert_eq!(
        g.geo_transform().ok(),
        e.geo_transform().ok(),
        "{what}: transform"
    );
    let (es, gs) = (e.spatial_ref().ok(), g.spatial_ref().ok());
    assert_eq!(es.is_some(), gs.is_some(), "{what}: CRS presence");
    if let (Some(es), Some(gs)) = (es, gs) {
        assert!(
            es == gs,
            "{what}: CRS {} vs {}",
            gs.to_wkt().unwrap(),
            es.to_wkt().unwrap()
        );
    }
    assert_eq!(
        g.metadata_item("COMPRESSION", "IMAGE_STRUCTURE"),
        e.metadata_item("COMPRESSION", "IMAGE_STRUCTURE"),
        "{what}: compression"
    );
    let (ev, gv) = (read_all(&e), read_all(&g));
    let is_class_map = what.ends_with("_pred.tif") && logits.is_some();
    if is_class_map {
        let l = read_all(&Dataset::open(logits.unwrap()).unwrap());
        let top2 = l.topk(2, 0, true, true).0;
        let margin = top2.get(0) - top2.get(1);
        let differ = ev.get(0).ne_tensor(&gv.get(0));
        let bad = differ
            .logical_and(&margin.gt(ATOL))
            .sum(tch::Kind::Int64)
            .int64_value(&[]);
        assert_eq!(bad, 0, "{what}: {bad} pixels with a clear argmax differ");
    } else {
        let diff = (&ev - &gv).abs().max().double_value(&[]);
        assert!(
            diff <= ATOL,
            "{what}: max |terrahost - TerraTorch| = {diff:e} > {ATOL:e}"
        );
    }
}

/// The cases of `scripts/reference/predict_fixtures.py`.
const CASES: [&str; 7] = [
    "average",
    "last_wins",
    "blend",
    "regression",
    "whole",
    "temporal",
    "temporal_means",
];

/// Predicts fixture `case` with its synthetic weights into `work/<case>`, with `extra`
/// arguments; its meta, the output directory and the `--json` summary.
fn predict_fixture(
    plugins: &Path,
    work: &Path,
    case: &str,
    extra: &[&str],
) -> (Value, PathBuf, Value) {
    let dir = fixture(case);
    let meta = read_json(&dir.join("meta.json"));
    let w = weights(case, work);
    let out = work.join(case);
    let dtype = meta["out_dtype"].as_str().unwrap();
    let (w, out_s) = (w.display().to_string(), out.display().to_string());
    let mut args = vec![
        "--config",
        "config.yaml",
        "--weights",
        &w,
        "--output-dir",
        &out_s,
        "--json",
    ];
    // The default dtype is TerraTorch's int16 for class maps; the float cases pass
    // what the reference was written with.
    if dtype != "int16" {
        args.extend(["--out-dtype", dtype]);
    }
    args.extend(extra);
    let o = predict(plugins, &dir, &args);
    assert!(o.status.success(), "{case}: {}", stderr(&o));
    let summary: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{case}: stdout is not JSON only ({e})"));
    assert_eq!(summary["failed"], 0, "{case}");
    (meta, out, summary)
}

#[test]
fn every_predict_fixture_matches_terratorchs_geotiffs() {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    for case in CASES {
        let dir = fixture(case);
        let (meta, out, _) = predict_fixture(plugins.path(), work.path(), case, &[]);
        let outputs: Vec<String> = meta["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let mut produced: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        produced.sort();
        assert_eq!(
            produced, outputs,
            "{case}: the files written (no temporary left over)"
        );
        for name in &outputs {
            let logits_name = name.replace("_pred.tif", "_logits.tif");
            let logits = outputs
                .contains(&logits_name)
                .then(|| dir.join("expected").join(&logits_name));
            compare(
                &dir.join("expected").join(name),
                &out.join(name),
                logits.as_deref(),
            );
        }
    }
}

/// A GeoTIFF written with GDAL: `bands` uint16 bands of a smooth pattern.
fn write_tif(path: &Path, bands: usize, h: usize, w: usize, georeferenced: bool) {
    let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut ds = driver
        .create_with_band_type::<u16, _>(path, w, h, bands)
        .unwrap();
    if georeferenced {
        ds.set_geo_transform(&[500000.0, 30.0, 0.0, 4100000.0, 0.0, -30.0])
            .unwrap();
        ds.set_spatial_ref(&gdal::spatial_ref::SpatialRef::from_epsg(32633).unwrap())
            .unwrap();
    }
    for b in 1..=bands {
        let data: Vec<u16> = (0..h * w)
            .map(|i| (300 + (i * (b + 3)) % 2000) as u16)
            .collect();
        let mut band = ds.rasterband(b).unwrap();
        band.set_no_data_value(Some(0.0)).unwrap();
        let mut buf = gdal::raster::Buffer::new((w, h), data);
        band.write((0, 0), (w, h), &mut buf).unwrap();
    }
}

/// The `whole` case's config (no tiling: one forward per scene, the cheapest) and
/// weights, run on `input`.
fn run_whole(plugins: &Path, w: &Path, input: &Path, out: &Path, extra: &[&str]) -> Output {
    let cfg = fixture("whole").join("config.yaml");
    let mut args = vec![
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    predict(plugins, &fixture("whole"), &args)
}

#[test]
fn bad_scenes_are_named_with_their_reason_while_the_others_are_predicted() {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let w = weights("whole", work.path());
    let scenes = work.path().join("scenes");
    std::fs::create_dir(&scenes).unwrap();
    std::fs::copy(
        fixture("whole").join("scenes/w.tif"),
        scenes.join("good.tif"),
    )
    .unwrap();
    std::fs::write(scenes.join("notes.tif"), "this is not a raster\n").unwrap();
    write_tif(&scenes.join("four_bands.tif"), 4, 20, 20, true);
    let bytes = std::fs::read(fixture("whole").join("scenes/w.tif")).unwrap();
    std::fs::write(scenes.join("truncated.tif"), &bytes[..bytes.len() / 2]).unwrap();
    let out = work.path().join("out");
    let o = run_whole(plugins.path(), &w, &scenes, &out, &["--json"]);
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "a failed scene must make the exit code non-zero"
    );
    let line = |name: &str| error_line(&o, name);
    assert!(line("notes.tif").contains("not a raster"), "{err}");
    let four = line("four_bands.tif");
    assert!(
        four.contains("4 bands") && four.contains("dataset_bands names 6"),
        "{four}"
    );
    assert!(
        line("truncated.tif").len() > "error: truncated.tif".len() + 10,
        "{err}"
    );
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (summary["written"].as_i64(), summary["failed"].as_i64()),
        (Some(1), Some(3))
    );
    assert!(out.join("good_pred.tif").is_file());
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec!["good_pred.tif".to_owned()],
        "no partial or temporary file is left"
    );
}

#[test]
fn an_unknown_band_name_is_refused_naming_the_band() {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let w = weights("whole", work.path());
    let scene = fixture("whole").join("scenes/w.tif");
    let o = run_whole(
        plugins.path(),
        &w,
        &scene,
        &work.path().join("out"),
        &[
            "--set",
            "data.init_args.predict_output_bands=[BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_3]",
        ],
    );
    assert!(!o.status.success());
    let line = error_line(&o, "w.tif");
    assert!(
        line.contains("`SWIR_3`") && line.contains("did you mean `SWIR_1`"),
        "{line}"
    );
}

#[test]
fn a_multi_temporal_scene_that_is_not_whole_frames_is_refused_naming_it() {
    // The `temporal` case reads frames of 7 dataset_bands; 20 bands are not whole frames
    // (TerraTorch's rearrange fails on it).
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let w = weights("temporal", work.path());
    let scene = work.path().join("twenty.tif");
    write_tif(&scene, 20, 40, 40, true);
    let cfg = fixture("temporal").join("config.yaml");
    let o = predict(
        plugins.path(),
        &fixture("temporal"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
            "--input",
            scene.to_str().unwrap(),
            "--output-dir",
            work.path().join("out").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    let line = error_line(&o, "twenty.tif");
    assert!(
        line.contains("20 bands") && line.contains("not a whole number of frames of the 7"),
        "{line}"
    );
}

#[test]
fn a_scene_smaller_than_the_crop_is_padded_and_predicted() {
    // TerraTorch's tiled_inference fails on a scene lower than the crop but wider:
    // terrahost mirrors it to one crop and predicts.
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let w = weights("average", work.path());
    let scene = work.path().join("thin.tif");
    write_tif(&scene, 6, 20, 70, true);
    let out = work.path().join("out");
    let cfg = fixture("average").join("config.yaml");
    let o = predict(
        plugins.path(),
        &fixture("average"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
            "--input",
            scene.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let ds = Dataset::open(out.join("thin_logits.tif")).unwrap();
    assert_eq!(ds.raster_size(), (70, 20));
    assert_eq!(ds.rasterband(1).unwrap().band_type(), GdalDataType::Float32);
    let v = read_all(&ds);
    assert!(
        v.isfinite().all().int64_value(&[]) != 0,
        "finite logits everywhere"
    );
    let pred = read_all(&Dataset::open(out.join("thin_pred.tif")).unwrap());
    // the class map is the argmax of the logits
    assert!(
        pred.get(0)
            .eq_tensor(&v.argmax(0, false).to_kind(tch::Kind::Double))
            .all()
            .int64_value(&[])
            != 0
    );
}

#[test]
fn a_scene_without_crs_is_predicted_with_a_warning() {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let w = weights("whole", work.path());
    let scene = work.path().join("nocrs.tif");
    write_tif(&scene, 6, 24, 30, false);
    let out = work.path().join("out");
    let o = run_whole(plugins.path(), &w, &scene, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nocrs.tif: the scene has no CRS"),
        "{}",
        stderr(&o)
    );
    let ds = Dataset::open(out.join("nocrs_pred.tif")).unwrap();
    assert!(ds.projection().is_empty());
    assert_eq!(ds.raster_size(), (30, 24));
}

#[test]
fn an_output_directory_that_cannot_be_written_is_refused_before_any_work() {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let w = weights("whole", work.path());
    let blocker = work.path().join("a_file");
    std::fs::write(&blocker, "").unwrap();
    let out = blocker.join("out");
    let o = run_whole(
        plugins.path(),
        &w,
        &fixture("whole").join("scenes/w.tif"),
        &out,
        &[],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("--output-dir {}", out.display())),
        "{err}"
    );
}

#[test]
fn directories_globs_shards_and_resuming() {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let w = weights("whole", work.path());
    let scenes = work.path().join("scenes");
    std::fs::create_dir(&scenes).unwrap();
    for n in ["s0", "s1", "s2", "s3", "s4"] {
        std::fs::copy(
            fixture("whole").join("scenes/w.tif"),
            scenes.join(format!("{n}.tif")),
        )
        .unwrap();
    }
    std::fs::write(scenes.join("readme.txt"), "not matched by img_grep *.tif").unwrap();
    let out = work.path().join("out");
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|r| {
                r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    // Two shards of a directory: disjoint, together everything.
    let o = run_whole(
        plugins.path(),
        &w,
        &scenes,
        &out,
        &["--shard", "0/2", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        names(&out),
        vec!["s0_pred.tif", "s2_pred.tif", "s4_pred.tif"]
    );
    let glob = format!("{}/s*.tif", scenes.display());
    let o = run_whole(
        plugins.path(),
        &w,
        Path::new(&glob),
        &out,
        &["--shard", "1/2", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (s["written"].as_i64(), s["inputs_total"].as_i64()),
        (Some(2), Some(5))
    );
    assert_eq!(names(&out).len(), 5);
    // Again: every output exists, so every scene is skipped; --overwrite redoes them.
    let o = run_whole(plugins.path(), &w, &scenes, &out, &["--json"]);
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (s["written"].as_i64(), s["skipped"].as_i64()),
        (Some(0), Some(5))
    );
    let o = run_whole(
        plugins.path(),
        &w,
        &scenes,
        &out,
        &["--json", "--overwrite", "--shard", "0/5"],
    );
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["written"].as_i64(), Some(1));
    // the class maps of identical scenes are identical
    let a = read_all(&Dataset::open(out.join("s0_pred.tif")).unwrap());
    let b = read_all(&Dataset::open(out.join("s3_pred.tif")).unwrap());
    assert!(a.equal(&b));
}

/// `--input -`: scene paths from stdin, each predicted as its line arrives, with
/// `--json-lines` printing each scene's result as soon as it is done. The test holds
/// stdin open after the first path and waits for that scene's line before it sends the
/// next one, so a run that collected its inputs first would hang here, not pass.
#[test]
fn scene_paths_from_stdin_are_predicted_as_they_arrive() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let w = weights("whole", work.path());
    let scene = fixture("whole").join("scenes/w.tif");
    let out = work.path().join("out");
    let cfg = fixture("whole").join("config.yaml");
    let mut child = predict_command(plugins.path(), work.path())
        .arg("--config")
        .arg(&cfg)
        .arg("--weights")
        .arg(&w)
        .args(["--input", "-", "--json-lines", "--output-dir"])
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run terrahost");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || -> Value {
        let line = lines.next().expect("a line per scene").unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    let a = work.path().join("a.tif");
    std::fs::copy(&scene, &a).unwrap();
    writeln!(stdin, "{}", a.display()).unwrap();
    stdin.flush().unwrap();
    let first = next();
    assert_eq!(first["status"], "written", "{first}");
    assert!(out.join("a_pred.tif").is_file());
    // The second line: a scene that is not there, then a blank line, then a good one.
    writeln!(
        stdin,
        "{}\n\n{}",
        work.path().join("missing.tif").display(),
        a.display()
    )
    .unwrap();
    drop(stdin);
    let missing = next();
    assert_eq!(missing["status"], "failed", "{missing}");
    assert!(missing["error"].as_str().unwrap().contains("missing.tif"));
    let again = next();
    assert_eq!(again["status"], "skipped", "outputs exist: {again}");
    assert!(lines.next().is_none(), "nothing but one line per scene");
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "a failed scene makes the exit code non-zero"
    );
}

/// The hostile-scene corpus (`scripts/hostile/make_scenes.py`) among two good scenes:
/// each hostile scene is refused in one line naming it and the reason, before anything
/// is allocated or anything outside the scene's directory is read, and both good
/// scenes are predicted. Remote paths from `--input -` are refused the same way.
#[test]
fn hostile_scenes_are_refused_in_one_line_each_and_the_others_are_predicted() {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    let w = weights("whole", work.path());
    let scenes = work.path().join("scenes");
    std::fs::create_dir(&scenes).unwrap();
    let corpus = workspace_root().join("tests/fixtures/hostile/scenes");
    for e in std::fs::read_dir(&corpus).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, scenes.join(p.file_name().unwrap())).unwrap();
    }
    for name in ["a_good.tif", "z_good.tif"] {
        std::fs::copy(fixture("whole").join("scenes/w.tif"), scenes.join(name)).unwrap();
    }
    let out = work.path().join("out");
    // The ceiling is pinned so the outcome does not depend on the machine's memory.
    let o = predict_command(plugins.path(), &fixture("whole"))
        .env("TERRAHOST_MAX_TENSOR_GB", "1")
        .args([
            "--config",
            fixture("whole").join("config.yaml").to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
            "--input",
            scenes.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--json",
            "--set",
            "data.init_args.img_grep='*'",
        ])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    let line = |name: &str| error_line(&o, name);
    for (name, needle) in [
        ("declares_1e6x64.tif", "would need 2.9 GiB"),
        ("sparse_1e6x1e6.tif", "would need 43.7 TiB"),
        ("vsicurl.vrt", "remote or virtual source"),
        (
            "raw_passwd.vrt",
            "/etc/passwd, outside the scene's directory",
        ),
        ("outside.tif", "outside the scene's directory"),
        ("truncated.tif", "truncated or corrupt"),
    ] {
        let l = line(name);
        assert!(l.contains(needle), "{name}: {l}");
        assert!(!l.contains("root:"), "{name} quotes a file: {l}");
    }
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (summary["written"].as_i64(), summary["failed"].as_i64()),
        (Some(2), Some(6)),
        "{err}"
    );
    // Nothing near the declared sizes was allocated.
    let rss = summary["peak_rss_mib"].as_f64().unwrap();
    assert!(rss < 1500.0, "peak RSS {rss} MiB");
    assert!(out.join("a_good_pred.tif").is_file() && out.join("z_good_pred.tif").is_file());

    // Paths from stdin go through the same check: no URL or virtual path reaches GDAL.
    let mut child = predict_command(plugins.path(), &fixture("whole"))
        .args([
            "--config",
            fixture("whole").join("config.yaml").to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
            "--input",
            "-",
            "--output-dir",
            work.path().join("out2").to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "/vsicurl/http://127.0.0.1:9/x.tif").unwrap();
        writeln!(stdin, "{}", scenes.join("a_good.tif").display()).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    let l = error_line(&o, "/vsicurl/http://127.0.0.1:9/x.tif");
    assert!(l.contains("remote or virtual path"), "{l}");
    assert!(work.path().join("out2/a_good_pred.tif").is_file());
}

/// `--precision bf16` on every predict fixture: the files keep TerraTorch's size, dtype
/// and georeferencing, the class maps agree with TerraTorch's float32 ones on at least
/// 99 % of the pixels, and float outputs stay within 2 % of their magnitude. The cost
/// is printed per file (the README quotes it).
#[test]
fn bf16_predicts_every_fixture_close_to_terratorchs_float32() {
    predicts_every_fixture_close_to_terratorchs_float32("bf16");
}

/// The same with `--precision int8` (only the linear layers change, so a model without
/// any, a convolutional UNet, predicts float32's numbers).
#[test]
fn int8_predicts_every_fixture_close_to_terratorchs_float32() {
    predicts_every_fixture_close_to_terratorchs_float32("int8");
}

fn predicts_every_fixture_close_to_terratorchs_float32(precision: &str) {
    let plugins = real_plugins(&PLUGINS);
    let work = tempfile::tempdir().unwrap();
    for case in CASES {
        let dir = fixture(case);
        let (meta, out, summary) = predict_fixture(
            plugins.path(),
            work.path(),
            case,
            &["--precision", precision],
        );
        assert_eq!(summary["precision"], precision, "{case}");
        assert_eq!(
            summary["linears_in_int8"].is_u64(),
            precision == "int8",
            "{case}: {summary}"
        );
        for name in meta["outputs"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            let (e, g) = (
                Dataset::open(dir.join("expected").join(name)).unwrap(),
                Dataset::open(out.join(name)).unwrap(),
            );
            assert_eq!(g.raster_size(), e.raster_size(), "{case} {name}");
            let (eb, gb) = (e.rasterband(1).unwrap(), g.rasterband(1).unwrap());
            assert_eq!(gb.band_type(), eb.band_type(), "{case} {name}: dtype");
            assert_eq!(
                g.geo_transform().ok(),
                e.geo_transform().ok(),
                "{case} {name}"
            );
            let (ev, gv) = (read_all(&e), read_all(&g));
            if name.ends_with("_pred.tif") && meta["task"] != "regression" {
                let agree = ev
                    .eq_tensor(&gv)
                    .to_kind(tch::Kind::Double)
                    .mean(tch::Kind::Double);
                let agree = agree.double_value(&[]);
                eprintln!(
                    "{precision} {case} {name}: {:.4} % of the class map agrees",
                    100.0 * agree
                );
                assert!(
                    agree >= 0.99,
                    "{case} {name}: only {agree} of the class map agrees"
                );
            } else {
                let magnitude = ev.abs().max().double_value(&[]).max(1.0);
                let err = (&ev - &gv).abs().max().double_value(&[]) / magnitude;
                eprintln!(
                    "{precision} {case} {name}: max error {err:.2e} of the magnitude {magnitude:.3}"
                );
                assert!(
                    err > 0.0 || precision == "int8",
                    "{case} {name}: bf16 gave float32's numbers exactly"
                );
                assert!(
                    err <= 0.02,
                    "{case} {name}: max error {err} of the magnitude"
                );
            }
        }
    }
}
