//! `terrahost predict` on `ObjectDetectionTask` configs, run as users run it: the built
//! binary, the real plugins, GeoTIFF scenes in, GeoPackage / GeoJSON detections out.
//!
//! The models are the `detection_factory` fixtures' (TerraTorch 1.2.13's factory with
//! synthetic weights), their checkpoints written here; each fixture image is a 64 x 64
//! scene, which fits one tile, so terrahost must give what TerraTorch's
//! `ObjectDetectionTask.predict_step` gives on the same tensor:
//! `tests/fixtures/detection_predict/` (`scripts/reference/detection_predict_fixtures.py`).
//! Tiling and merging across tile edges are checked in `terrahost::predict::detection`'s
//! unit tests, with a detector whose outputs depend on each object's pixels only.
use gdal::spatial_ref::SpatialRef;
use gdal::vector::{Geometry, LayerAccess, OGRFieldType};
use gdal::{Dataset, DriverManager};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{Kind, Tensor};
use terrahost_testkit::detection::{fixture, set_weights};
use terrahost_testkit::{build_dir, real_plugins, workspace_root, PLUGINS};

/// The scenes' geotransform: UTM 33N, 10 m pixels.
const GT: [f64; 6] = [500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0];
const EPSG: u32 = 32633;

/// TerraTorch's `predict_step` output for a fixture's images.
fn expected(case: &str) -> HashMap<String, Tensor> {
    let path = workspace_root()
        .join("tests/fixtures/detection_predict")
        .join(format!("{case}.safetensors"));
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// A float32 GeoTIFF of `x` `[C, H, W]` with [`GT`] and EPSG:32633.
fn write_scene(path: &Path, x: &Tensor) {
    let size = x.size();
    let (c, h, w) = (size[0] as usize, size[1] as usize, size[2] as usize);
    let driver = DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut ds = driver
        .create_with_band_type::<f32, _>(path, w, h, c)
        .unwrap();
    ds.set_geo_transform(&GT).unwrap();
    ds.set_spatial_ref(&SpatialRef::from_epsg(EPSG).unwrap())
        .unwrap();
    for b in 0..c {
        let px = Vec::<f32>::try_from(x.get(b as i64).to_kind(Kind::Float).flatten(0, -1)).unwrap();
        let mut buf = gdal::raster::Buffer::new((w, h), px);
        ds.rasterband(b + 1)
            .unwrap()
            .write((0, 0), (w, h), &mut buf)
            .unwrap();
    }
}

/// The case's model as a config and checkpoint in `dir`, with the fixture's thresholds,
/// `class_names` and TerraTorch's object-detection datamodule (no scaling, no
/// normalisation: the scene's values are the model's input).
fn model_files(case: &str, dir: &Path, extra_data: Value) -> (PathBuf, PathBuf) {
    let (meta, _) = fixture(case);
    let want = expected(case);
    let mut model_args = meta["args"].as_object().unwrap().clone();
    let host = terrahost_testkit::host_with_plugins(vec![
        terrahost_terratorch::plugin_sources().unwrap(),
        terrahost_timm::plugin_sources().unwrap(),
    ]);
    let module = host
        .build(
            "model_factory",
            "ObjectDetectionModelFactory",
            &model_args,
            None,
        )
        .unwrap();
    set_weights(&module);
    model_args.remove("task");
    let weights: Vec<(String, Tensor)> = module.state_dict();
    let named: Vec<(&str, &Tensor)> = weights.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let weights_path = dir.join(format!("{case}.safetensors"));
    terrahost::weights::write_tensors(&weights_path, &named).unwrap();
    let mut data =
        json!({"batch_size": 2, "num_workers": 0, "num_classes": meta["args"]["num_classes"]});
    for (k, v) in extra_data.as_object().unwrap() {
        data[k] = v.clone();
    }
    let config = json!({
        "model": {"class_path": "terratorch.tasks.ObjectDetectionTask",
                  "init_args": {"model_factory": "ObjectDetectionModelFactory", "model_args": model_args,
                                "iou_threshold": want["iou_threshold"].double_value(&[0]),
                                "score_threshold": want["score_threshold"].double_value(&[0]),
                                "class_names": ["background", "ship", "tank"]}},
        "data": {"class_path": "terratorch.datamodules.GenericNonGeoObjectDetectionDataModule",
                 "init_args": data}});
    let config_path = dir.join(format!("{case}.yaml"));
    std::fs::write(&config_path, config.to_string()).unwrap();
    (config_path, weights_path)
}

/// The fixture's images as scenes `img0.tif`, `img1.tif` in `dir/scenes`.
fn scenes(case: &str, dir: &Path) -> PathBuf {
    let (_, tensors) = fixture(case);
    let scenes = dir.join("scenes");
    std::fs::create_dir_all(&scenes).unwrap();
    for i in 0..tensors["input"].size()[0] {
        write_scene(
            &scenes.join(format!("img{i}.tif")),
            &tensors["input"].get(i),
        );
    }
    scenes
}

fn cache() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// `terrahost --plugin-dir PLUGINS predict --config C --weights W --device cpu ARGS`.
fn predict(plugins: &Path, config: &Path, weights: &Path, args: &[&str]) -> Output {
    let exe = build_dir().join("terrahost");
    assert!(
        exe.exists(),
        "{} is not built; run `cargo build --workspace` first",
        exe.display()
    );
    Command::new(exe)
        .arg("--plugin-dir")
        .arg(plugins)
        .arg("predict")
        .arg("--config")
        .arg(config)
        .arg("--weights")
        .arg(weights)
        .args(["--device", "cpu"])
        .args(args)
        .env("TERRAHOST_CACHE", cache().join("registry.json"))
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("RUST_LOG")
        .output()
        .expect("run terrahost")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON lines of `--json-lines`.
fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// One feature as read back: label, class_name, score, scene and geometry.
struct Read {
    label: i64,
    class_name: Option<String>,
    score: f64,
    scene: String,
    geometry: Geometry,
}

/// Opens a detections file with OGR: its one layer's CRS, field names and types, features.
fn read(
    path: &Path,
) -> (
    Option<SpatialRef>,
    Vec<(String, OGRFieldType::Type)>,
    Vec<Read>,
) {
    let ds = Dataset::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(ds.layer_count(), 1, "{}", path.display());
    let mut layer = ds.layer(0).unwrap();
    let fields = layer
        .defn()
        .fields()
        .map(|f| (f.name(), f.field_type()))
        .collect();
    let srs = layer.spatial_ref();
    let features = layer
        .features()
        .map(|f| Read {
            label: f
                .field_as_integer64(f.field_index("label").unwrap())
                .unwrap()
                .unwrap(),
            class_name: f
                .field_as_string(f.field_index("class_name").unwrap())
                .unwrap(),
            score: f
                .field_as_double(f.field_index("score").unwrap())
                .unwrap()
                .unwrap(),
            scene: f
                .field_as_string(f.field_index("scene").unwrap())
                .unwrap()
                .unwrap(),
            geometry: f.geometry().unwrap().clone(),
        })
        .collect();
    (srs, fields, features)
}

/// `GT` applied to a pixel box: the box's corners in the CRS, as (min x, min y, max x, max y).
fn crs_box(b: &[f64]) -> [f64; 4] {
    let x = |c: f64| GT[0] + c * GT[1];
    let y = |r: f64| GT[3] + r * GT[5];
    [x(b[0]), y(b[3]), x(b[2]), y(b[1])]
}

/// Checks `path` against TerraTorch's detections of image `i`: the CRS, the schema, one
/// feature per detection in TerraTorch's order, labels, class names, scores within 1e-4,
/// box corners (or, for masks, the mask's area) from the geotransform.
fn check_against_terratorch(path: &Path, want: &HashMap<String, Tensor>, i: usize, scene: &Path) {
    let what = path.display().to_string();
    let (srs, fields, got) = read(path);
    assert_eq!(
        srs.expect("a CRS").auth_code().unwrap(),
        EPSG as i32,
        "{what}: CRS"
    );
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["label", "class_name", "score", "scene"],
        "{what}: fields"
    );
    // GeoJSON reads small integers back as 32-bit ones.
    assert!(
        [OGRFieldType::OFTInteger64, OGRFieldType::OFTInteger].contains(&fields[0].1),
        "{what}: label type {}",
        fields[0].1
    );
    assert_eq!(fields[2].1, OGRFieldType::OFTReal, "{what}: score type");
    let labels = Vec::<i64>::try_from(&want[&format!("labels.{i}")]).unwrap();
    let scores = Vec::<f64>::try_from(want[&format!("scores.{i}")].to_kind(Kind::Double)).unwrap();
    let boxes = Vec::<f64>::try_from(
        want[&format!("boxes.{i}")]
            .to_kind(Kind::Double)
            .flatten(0, -1),
    )
    .unwrap();
    let pixels = want
        .get(&format!("mask_pixels.{i}"))
        .map(|t| Vec::<i64>::try_from(t).unwrap());
    assert_eq!(got.len(), labels.len(), "{what}: one feature per detection");
    let names = ["background", "ship", "tank"];
    for (j, f) in got.iter().enumerate() {
        assert_eq!(f.label, labels[j], "{what}: label {j}");
        assert_eq!(
            f.class_name.as_deref(),
            names.get(labels[j] as usize).copied(),
            "{what}: class_name {j}"
        );
        assert!(
            (f.score - scores[j]).abs() <= 1e-4,
            "{what}: score {j}: {} vs {}",
            f.score,
            scores[j]
        );
        assert_eq!(f.scene, scene.display().to_string(), "{what}: scene");
        match &pixels {
            None => {
                let env = f.geometry.envelope();
                let b = crs_box(&boxes[4 * j..4 * j + 4]);
                let got = [env.MinX, env.MinY, env.MaxX, env.MaxY];
                // Boxes within 1e-3 pixels, as the factory fixtures check them: 1e-2 m here.
                for k in 0..4 {
                    assert!(
                        (got[k] - b[k]).abs() <= 1e-2,
                        "{what}: box {j}: {got:?} vs {b:?}"
                    );
                }
                assert_eq!(
                    f.geometry.geometry_type(),
                    gdal::vector::OGRwkbGeometryType::wkbPolygon
                );
            }
            Some(px) => {
                // The mask above 0.5, polygonised: its area is its pixel count times 100 m².
                let area = f.geometry.area();
                assert!(
                    (area - px[j] as f64 * 100.0).abs() < 1e-6,
                    "{what}: mask {j}: {area} m² vs {} pixels",
                    px[j]
                );
            }
        }
    }
}

/// A scene that fits one tile gives TerraTorch's detections after its task's NMS, in the
/// scene's CRS, one GeoPackage feature each (boxes for Faster R-CNN, polygonised masks for
/// Mask R-CNN).
#[test]
fn detections_of_a_scene_that_fits_one_tile_are_terratorchs() {
    let plugins = real_plugins(&PLUGINS);
    for case in [
        "faster_rcnn_timm_resnet18",
        "faster_rcnn_prithvi",
        "mask_rcnn_prithvi",
    ] {
        let work = tempfile::tempdir().unwrap();
        let (config, weights) = model_files(case, work.path(), json!({}));
        let scenes = scenes(case, work.path());
        let out = work.path().join("out");
        let o = predict(
            plugins.path(),
            &config,
            &weights,
            &[
                "--input",
                scenes.to_str().unwrap(),
                "--output-dir",
                out.to_str().unwrap(),
                "--json",
            ],
        );
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
        let want = expected(case);
        for i in 0..2 {
            let r = &summary["scenes"][i];
            assert_eq!(r["chips"], 1, "{case}: one tile");
            assert_eq!(
                r["detections"].as_u64().unwrap() as i64,
                want[&format!("labels.{i}")].size()[0]
            );
            let path = out.join(format!("img{i}_pred.gpkg"));
            assert_eq!(r["outputs"][0], path.display().to_string());
            check_against_terratorch(&path, &want, i, &scenes.join(format!("img{i}.tif")));
        }
    }
}

/// `predict --precision int8` on a detector: the backbone's linear layers (a Prithvi ViT)
/// are quantized, the heads stay float32, and the scenes get their detection files.
#[test]
fn int8_predicts_detections() {
    let plugins = real_plugins(&PLUGINS);
    let case = "faster_rcnn_prithvi";
    let work = tempfile::tempdir().unwrap();
    let (config, weights) = model_files(case, work.path(), json!({}));
    let scenes = scenes(case, work.path());
    let out = work.path().join("out");
    let o = predict(
        plugins.path(),
        &config,
        &weights,
        &[
            "--input",
            scenes.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--precision",
            "int8",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["precision"], "int8");
    assert!(
        summary["linears_in_int8"].as_u64().unwrap() > 0,
        "{summary}"
    );
    for i in 0..2 {
        assert_eq!(summary["scenes"][i]["status"], "written", "{summary}");
        assert!(out.join(format!("img{i}_pred.gpkg")).exists());
    }
}

/// `--vector-format geojson` writes `<stem>_pred.geojson` with the same features, fields
/// and CRS.
#[test]
fn geojson_on_request() {
    let plugins = real_plugins(&PLUGINS);
    let case = "faster_rcnn_prithvi";
    let work = tempfile::tempdir().unwrap();
    let (config, weights) = model_files(case, work.path(), json!({}));
    let scenes = scenes(case, work.path());
    let out = work.path().join("out");
    let scene = scenes.join("img1.tif");
    let o = predict(
        plugins.path(),
        &config,
        &weights,
        &[
            "--input",
            scene.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--vector-format",
            "geojson",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let path = out.join("img1_pred.geojson");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"FeatureCollection\""), "{text}");
    check_against_terratorch(&path, &expected(case), 1, &scene);
    let bad = predict(
        plugins.path(),
        &config,
        &weights,
        &[
            "--input",
            scene.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--vector-format",
            "shp",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("--vector-format `shp`: use gpkg"),
        "{}",
        stderr(&bad)
    );
}

/// A scene larger than the tile goes through the model tile by tile (3 x 3 tiles of 64
/// pixels overlapping by 16 on a 128 x 128 mosaic of the fixture images); the detections
/// lie in the scene, in the scene's CRS, and no two of one class overlap by more than the
/// IoU threshold (the scene-wide class-wise NMS).
#[test]
fn a_scene_larger_than_the_tile_is_tiled_and_merged() {
    let plugins = real_plugins(&PLUGINS);
    let case = "faster_rcnn_timm_resnet18";
    let work = tempfile::tempdir().unwrap();
    let (config, weights) = model_files(case, work.path(), json!({}));
    let (_, tensors) = fixture(case);
    let x = &tensors["input"];
    let top = Tensor::cat(&[x.get(0), x.get(1)], 2);
    let bottom = Tensor::cat(&[x.get(1), x.get(0)], 2);
    let scene = work.path().join("mosaic.tif");
    write_scene(&scene, &Tensor::cat(&[top, bottom], 1));
    let out = work.path().join("out");
    let o = predict(
        plugins.path(),
        &config,
        &weights,
        &[
            "--input",
            scene.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--tile-size",
            "64",
            "--tile-overlap",
            "16",
            "--json-lines",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines[0]["chips"], 9, "{lines:?}");
    let (srs, _, got) = read(&out.join("mosaic_pred.gpkg"));
    assert_eq!(srs.unwrap().auth_code().unwrap(), EPSG as i32);
    assert_eq!(lines[0]["detections"].as_u64().unwrap() as usize, got.len());
    assert!(!got.is_empty(), "the tiles give detections");
    let scene_extent = [GT[0], GT[3] - 1280.0, GT[0] + 1280.0, GT[3]];
    let mut envs = Vec::new();
    for f in &got {
        let e = f.geometry.envelope();
        assert!(
            e.MinX >= scene_extent[0] - 1e-6
                && e.MinY >= scene_extent[1] - 1e-6
                && e.MaxX <= scene_extent[2] + 1e-6
                && e.MaxY <= scene_extent[3] + 1e-6,
            "a box outside the scene: {e:?}"
        );
        envs.push((f.label, e));
    }
    let iou = |a: &gdal::vector::Envelope, b: &gdal::vector::Envelope| {
        let w = (a.MaxX.min(b.MaxX) - a.MinX.max(b.MinX)).max(0.0);
        let h = (a.MaxY.min(b.MaxY) - a.MinY.max(b.MinY)).max(0.0);
        let area = |e: &gdal::vector::Envelope| (e.MaxX - e.MinX) * (e.MaxY - e.MinY);
        w * h / (area(a) + area(b) - w * h)
    };
    for (i, (la, a)) in envs.iter().enumerate() {
        for (lb, b) in &envs[i + 1..] {
            assert!(
                la != lb || iou(a, b) <= 0.5,
                "two detections of class {la} overlap by IoU {}",
                iou(a, b)
            );
        }
    }
    // A scene with no detection at all still gets a valid, empty layer with the schema
    // and the CRS: no score passes a threshold of 1.
    let out2 = work.path().join("out2");
    let o = predict(
        plugins.path(),
        &config,
        &weights,
        &[
            "--input",
            scene.to_str().unwrap(),
            "--output-dir",
            out2.to_str().unwrap(),
            "--set",
            "model.init_args.score_threshold=1.0",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (srs, fields, got) = read(&out2.join("mosaic_pred.gpkg"));
    assert!(got.is_empty());
    assert_eq!(srs.unwrap().auth_code().unwrap(), EPSG as i32);
    assert_eq!(fields.len(), 4);
}

/// Many scenes: `--json-lines` reports each as it is done, a second run skips the scenes
/// whose file exists (resume), `--shard 1/2` takes every second scene, and a bad scene
/// (not a raster, a band count that disagrees with `dataset_bands`) is one `error:` line
/// while the others are written.
#[test]
fn resume_shard_json_lines_and_bad_scenes() {
    let plugins = real_plugins(&PLUGINS);
    let case = "faster_rcnn_prithvi";
    let work = tempfile::tempdir().unwrap();
    let (config, weights) = model_files(
        case,
        work.path(),
        json!({"dataset_bands": ["RED", "GREEN", "BLUE"]}),
    );
    let scenes = scenes(case, work.path());
    let out = work.path().join("out");
    let args = [
        "--input",
        scenes.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--json-lines",
    ];
    let o = predict(plugins.path(), &config, &weights, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["status"] == "written"), "{lines:?}");
    let again = json_lines(&predict(plugins.path(), &config, &weights, &args));
    assert!(again.iter().all(|l| l["status"] == "skipped"), "{again:?}");
    let mut shard = args.to_vec();
    shard.extend(["--shard", "1/2", "--overwrite"]);
    let one = json_lines(&predict(plugins.path(), &config, &weights, &shard));
    assert_eq!(one.len(), 1);
    assert_eq!(
        one[0]["input"],
        scenes.join("img1.tif").display().to_string()
    );
    assert_eq!(one[0]["status"], "written");

    std::fs::write(scenes.join("broken.tif"), b"II*\0not really a tiff").unwrap();
    let (_, tensors) = fixture(case);
    write_scene(
        &scenes.join("two_bands.tif"),
        &tensors["input"].get(0).narrow(0, 0, 2),
    );
    let fresh = work.path().join("fresh");
    let o = predict(
        plugins.path(),
        &config,
        &weights,
        &[
            "--input",
            scenes.to_str().unwrap(),
            "--output-dir",
            fresh.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success(), "a failed scene makes the exit code 1");
    let err = stderr(&o);
    let line = |name: &str| {
        err.lines()
            .find(|l| l.starts_with("error:") && l.contains(name))
            .unwrap_or_else(|| panic!("no error line names {name}: {err}"))
            .to_owned()
    };
    assert!(line("broken.tif").contains("not a raster"), "{err}");
    let two = line("two_bands.tif");
    assert!(
        two.contains("2 bands") && two.contains("dataset_bands names 3"),
        "{two}"
    );
    for i in 0..2 {
        assert!(fresh.join(format!("img{i}_pred.gpkg")).is_file());
    }
    let left: Vec<String> = std::fs::read_dir(&fresh)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "no partial files left behind: {left:?}");
}

/// Mask R-CNN on a tiled scene: each mask is polygonised in its own tile and placed in the
/// scene through the tile's offset, so every feature is a multipolygon inside the scene,
/// of whole pixels (its area a multiple of the 100 m² pixel).
#[test]
fn mask_rcnn_masks_of_a_tiled_scene_land_in_the_scene() {
    let plugins = real_plugins(&PLUGINS);
    let case = "mask_rcnn_prithvi";
    let work = tempfile::tempdir().unwrap();
    let (config, weights) = model_files(case, work.path(), json!({}));
    let (_, tensors) = fixture(case);
    let x = &tensors["input"];
    let scene = work.path().join("strip.tif");
    write_scene(&scene, &Tensor::cat(&[x.get(0), x.get(1)], 2));
    let out = work.path().join("out");
    let o = predict(
        plugins.path(),
        &config,
        &weights,
        &[
            "--input",
            scene.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--tile-overlap",
            "16",
            "--json-lines",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // The tile is the model's input, backbone_img_size 64: 1 x 3 tiles on 64 x 128.
    assert_eq!(json_lines(&o)[0]["chips"], 3);
    let (_, _, got) = read(&out.join("strip_pred.gpkg"));
    assert!(!got.is_empty());
    for f in &got {
        assert_eq!(
            f.geometry.geometry_type(),
            gdal::vector::OGRwkbGeometryType::wkbMultiPolygon
        );
        let e = f.geometry.envelope();
        assert!(
            e.MinX >= GT[0]
                && e.MaxX <= GT[0] + 1280.0
                && e.MinY >= GT[3] - 640.0
                && e.MaxY <= GT[3],
            "{e:?}"
        );
        let pixels = f.geometry.area() / 100.0;
        assert!(
            (pixels - pixels.round()).abs() < 1e-6 && pixels >= 1.0,
            "{pixels}"
        );
    }
}
