//! Test support shared by the plugins' unit tests, the integration tests and the
//! benchmarks: reference fixtures, the synthetic-weights convention, in-process hosts
//! and numeric comparison.
//!
//! A fixture (`tests/fixtures/<case>/`, written by `scripts/reference/make_fixtures.py`
//! with the real Python libraries) holds `meta.json` (what to build), `state_dict.json`
//! (the reference's keys and shapes), `io.safetensors` (`input.N`, `output.N`) and, for
//! small cases, `weights.safetensors`. Weights follow a formula both sides compute with
//! libtorch (see [`synth`]), so large models need no committed weight file.
pub mod detection;

use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use tch::{nn, Kind, Tensor};
use terrahost::Host;
use terrahost_plugin_api::{sdk::DynModule, Manifest, SourceEntry};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// `tests/fixtures/<case>`.
pub fn fixture_dir(case: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(case)
}

/// The synthetic value of state_dict entry `key` with `shape` and `kind`: a sine
/// sequence in float64 whose phase depends on the key, scaled like an initialiser
/// (1/sqrt(fan_in) for weights, positive variances, near-one norm weights).
/// `scripts/reference/make_fixtures.py` computes the same thing in PyTorch.
pub fn synth(key: &str, shape: &[i64], kind: Kind) -> Tensor {
    if !matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        return Tensor::zeros(shape, (kind, tch::Device::Cpu));
    }
    let n: i64 = shape.iter().product();
    let phase = (key.bytes().map(u64::from).sum::<u64>() % 997) as f64 * 0.01;
    let v = (Tensor::arange(n, (Kind::Double, tch::Device::Cpu)) * 0.618 + phase).sin();
    let v = if key.ends_with("running_var") {
        v * 0.5 + 1.0
    } else if key.ends_with("running_mean") {
        v * 0.1
    } else if shape.len() >= 2 {
        let fan_in = n as f64 / shape[0] as f64;
        v / fan_in.sqrt()
    } else if key.ends_with("weight") {
        v * 0.1 + 1.0
    } else {
        v * 0.1
    };
    v.reshape(shape).to_kind(kind)
}

/// The libtorch kind of a dtype name as the reference scripts write it (`float32`, ...).
pub fn kind_of(name: &str) -> Kind {
    match name {
        "float64" => Kind::Double,
        "float16" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "int64" => Kind::Int64,
        "int32" => Kind::Int,
        "bool" => Kind::Bool,
        _ => Kind::Float,
    }
}

/// Every fixture case (a directory of `tests/fixtures` with a `meta.json`), sorted, with
/// its parsed `meta.json`.
pub fn fixture_metas() -> Vec<(String, Value)> {
    let mut cases: Vec<(String, Value)> =
        std::fs::read_dir(workspace_root().join("tests/fixtures"))
            .expect("tests/fixtures")
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path().join("meta.json")).ok()?;
                let case = e.file_name().to_string_lossy().into_owned();
                let meta: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|err| panic!("{case}/meta.json: {err}"));
                // Op-level fixture groups (`detection_ops`) keep a meta.json of versions
                // only: they are no registry entry's fixture.
                meta.get("registry")?;
                Some((case, meta))
            })
            .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

/// The fixture cases of whole models (those with a `config.yaml`), sorted.
pub fn model_fixtures() -> Vec<String> {
    let root = workspace_root().join("tests/fixtures");
    fixture_metas()
        .into_iter()
        .map(|(case, _)| case)
        .filter(|case| root.join(case).join("config.yaml").is_file())
        .collect()
}

/// The names a model fixture's outputs are written under by `terrahost run`:
/// `meta.output_names`, else `output`, `output.1`, ... as the CLI names them.
pub fn output_names(fx: &Fixture) -> Vec<String> {
    match fx.meta.get("output_names").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .map(|v| v.as_str().expect("output name").to_owned())
            .collect(),
        None => (0..fx.outputs.len())
            .map(|i| {
                if i == 0 {
                    "output".to_owned()
                } else {
                    format!("output.{i}")
                }
            })
            .collect(),
    }
}

/// The names of a fixture's inputs when the reference took them by name (TerraTorch's
/// dict of tensors by modality): `meta.input_names`, one per `input.i`. `None` for
/// positional inputs (a model fixture's `["input", ...]` CLI names included).
pub fn input_names(fx: &Fixture) -> Option<Vec<String>> {
    let names: Vec<String> = fx
        .meta
        .get("input_names")?
        .as_array()?
        .iter()
        .map(|v| v.as_str().expect("input name").to_owned())
        .collect();
    (names.first().map(String::as_str) != Some("input")).then_some(names)
}

/// One reference fixture.
pub struct Fixture {
    /// The case name (directory name).
    pub case: String,
    /// Its directory.
    pub dir: PathBuf,
    /// `meta.json`.
    pub meta: Value,
    /// `(key, shape, dtype)` from `state_dict.json`, in the reference's order.
    pub keys: Vec<(String, Vec<i64>, String)>,
    /// `input.0`, `input.1`, ...
    pub inputs: Vec<Tensor>,
    /// `output.0`, `output.1`, ...
    pub outputs: Vec<Tensor>,
}

impl Fixture {
    /// Loads `tests/fixtures/<case>`; panics with the command that makes it if absent.
    pub fn load(case: &str) -> Self {
        let dir = fixture_dir(case);
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| {
                panic!(
                    "fixture {case}: cannot read {}: {e}; regenerate with `.venv-ref/bin/python scripts/reference/make_fixtures.py --only {case}`",
                    dir.join(f).display()
                )
            })
        };
        let meta: Value = serde_json::from_str(&read("meta.json")).expect("meta.json is JSON");
        let keys_json: Value =
            serde_json::from_str(&read("state_dict.json")).expect("state_dict.json is JSON");
        let keys = keys_json
            .as_array()
            .expect("state_dict.json is a list")
            .iter()
            .map(|e| {
                let e = e.as_array().expect("[key, shape, dtype]");
                let shape = e[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_i64().unwrap())
                    .collect();
                (
                    e[0].as_str().unwrap().to_owned(),
                    shape,
                    e[2].as_str().unwrap_or("float32").to_owned(),
                )
            })
            .collect();
        let io = Tensor::read_safetensors(dir.join("io.safetensors")).expect("io.safetensors");
        let take = |prefix: &str| {
            let mut v: Vec<(usize, Tensor)> = io
                .iter()
                .filter_map(|(k, t)| {
                    k.strip_prefix(prefix)
                        .and_then(|i| i.parse().ok())
                        .map(|i| (i, t.shallow_clone()))
                })
                .collect();
            v.sort_by_key(|(i, _)| *i);
            v.into_iter().map(|(_, t)| t).collect::<Vec<_>>()
        };
        let inputs = take("input.");
        let outputs = take("output.");
        Self {
            case: case.to_owned(),
            dir,
            meta,
            keys,
            inputs,
            outputs,
        }
    }

    /// The terrahost name to build (`timm_resnet18`).
    pub fn name(&self) -> &str {
        self.meta["name"].as_str().expect("meta.name")
    }

    /// The registry (`backbone`, `decoder`, ...).
    pub fn registry(&self) -> &str {
        self.meta["registry"].as_str().expect("meta.registry")
    }

    /// The keyword arguments.
    pub fn args(&self) -> Map<String, Value> {
        self.meta
            .get("args")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    /// The channel list, for decoders and necks.
    pub fn channels(&self) -> Option<Vec<i64>> {
        self.meta
            .get("channels")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_i64().unwrap()).collect())
    }

    /// The tolerance: `meta.atol`, else 1e-4.
    pub fn atol(&self) -> f64 {
        self.meta
            .get("atol")
            .and_then(Value::as_f64)
            .unwrap_or(1e-4)
    }

    /// The reference weights: synthetic, and checked against `weights.safetensors`
    /// (written by Python) when the fixture has one.
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        let synthetic: Vec<(String, Tensor)> = self
            .keys
            .iter()
            .map(|(k, shape, dtype)| (k.clone(), synth(k, shape, kind_of(dtype))))
            .collect();
        let file = self.dir.join("weights.safetensors");
        if file.exists() {
            let written: std::collections::HashMap<String, Tensor> =
                Tensor::read_safetensors(&file)
                    .expect("weights.safetensors")
                    .into_iter()
                    .collect();
            for (k, t) in &synthetic {
                let w = written
                    .get(k)
                    .unwrap_or_else(|| panic!("{}: weights.safetensors lacks {k}", self.case));
                assert!(
                    w.size() == t.size()
                        && w.to_kind(Kind::Double).allclose(
                            &t.to_kind(Kind::Double),
                            0.0,
                            1e-7,
                            false
                        ),
                    "{}: the synthetic value of {k} differs from the one Python wrote",
                    self.case
                );
            }
        }
        synthetic
    }

    /// The Python-written weight file, if the fixture has one.
    pub fn weights_file(&self) -> Option<PathBuf> {
        Some(self.dir.join("weights.safetensors")).filter(|p| p.exists())
    }
}

/// An in-process host made of `sources` (one plugin called "under-test").
pub fn host_with(sources: Vec<SourceEntry>) -> Host {
    host_with_plugins(vec![sources])
}

/// An in-process host made of several plugins' sources.
pub fn host_with_plugins(plugins: Vec<Vec<SourceEntry>>) -> Host {
    let list = plugins
        .into_iter()
        .enumerate()
        .map(|(i, sources)| {
            let decls = sources
                .iter()
                .map(|s| terrahost_plugin_api::SourceDecl {
                    registry: s.registry.clone(),
                    prefix: s.prefix.clone(),
                })
                .collect();
            (
                Manifest::current(&format!("under-test-{i}"), "0.0.0", decls),
                sources,
            )
        })
        .collect();
    Host::with_plugins(list).expect("in-process host")
}

/// Builds the fixture's entry from `host`, loads its weights strictly and returns it.
pub fn build_fixture(host: &Host, fx: &Fixture) -> DynModule {
    let module = host
        .build(
            fx.registry(),
            fx.name(),
            &fx.args(),
            fx.channels().as_deref(),
        )
        .unwrap_or_else(|e| panic!("{}: building {} failed: {e}", fx.case, fx.name()));
    terrahost::weights::load_state_dict(&module, fx.weights())
        .unwrap_or_else(|e| panic!("{}: loading weights failed: {e}", fx.case));
    module
}

/// Runs `module` on the fixture's inputs in eval mode, with the keyword arguments of
/// `meta.forward_kwargs` if the reference got some (`image_size` for a neck), and
/// compares every output. It runs twice: without autograd (`no_grad`) and in
/// libtorch's inference mode, where models may take fused inference-only kernels.
pub fn compare_outputs(fx: &Fixture, module: &DynModule) {
    let kwargs = fx.meta.get("forward_kwargs").and_then(Value::as_object);
    let run = || match (input_names(fx), kwargs) {
        (Some(names), kwargs) => {
            let named: Vec<(String, Tensor)> = names
                .into_iter()
                .zip(fx.inputs.iter().map(Tensor::shallow_clone))
                .collect();
            module.forward_named(&named, &kwargs.cloned().unwrap_or_default())
        }
        (None, Some(kwargs)) => module.forward_kw(&fx.inputs, kwargs),
        (None, None) => module.forward(&fx.inputs),
    };
    for (mode, outputs) in [
        ("no_grad", tch::no_grad(run)),
        (
            "inference_mode",
            terrahost_layers::inference::inference_mode(run),
        ),
    ] {
        let outputs =
            outputs.unwrap_or_else(|e| panic!("{} ({mode}): forward failed: {e}", fx.case));
        assert_eq!(
            outputs.len(),
            fx.outputs.len(),
            "{} ({mode}): number of outputs",
            fx.case
        );
        for (i, (a, e)) in outputs.iter().zip(&fx.outputs).enumerate() {
            assert_close(&format!("{} ({mode}) output.{i}", fx.case), a, e, fx.atol());
        }
    }
}

/// The whole parity check: build `meta.name` from `sources`, load the synthetic
/// weights strictly, run, compare.
pub fn check_fixture(sources: Vec<SourceEntry>, case: &str) {
    check_fixture_with(vec![sources], case);
}

/// [`check_fixture`] for an entry that builds parts of other plugins: the host holds
/// every plugin's sources, in the given order.
pub fn check_fixture_with(plugins: Vec<Vec<SourceEntry>>, case: &str) {
    let fx = Fixture::load(case);
    let host = host_with_plugins(plugins);
    let module = build_fixture(&host, &fx);
    compare_outputs(&fx, &module);
}

/// Copies `weights` into the variables of `vs`, strictly (same key set, same shapes;
/// `num_batches_tracked` ignored).
pub fn load_varstore(vs: &mut nn::VarStore, weights: &[(String, Tensor)]) {
    let vars = vs.variables();
    let given: std::collections::HashMap<&str, &Tensor> = weights
        .iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, t)| (k.as_str(), t))
        .collect();
    let mut missing: Vec<&String> = vars
        .keys()
        .filter(|k| !given.contains_key(k.as_str()))
        .collect();
    let mut unexpected: Vec<&&str> = given.keys().filter(|k| !vars.contains_key(**k)).collect();
    missing.sort();
    unexpected.sort();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "missing {missing:?}, unexpected {unexpected:?}"
    );
    tch::no_grad(|| {
        for (k, v) in vars {
            let src = given[k.as_str()];
            assert_eq!(v.size(), src.size(), "shape of {k}");
            let mut dst = v;
            dst.copy_(&src.to_kind(dst.kind()));
        }
    });
}

/// Asserts `actual` and `expected` have the same shape and differ by at most `atol`.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, atol: f64) {
    assert_eq!(actual.size(), expected.size(), "{what}: shape");
    let diff = (actual.to_kind(Kind::Double) - expected.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    let scale = expected.abs().max().double_value(&[]);
    assert!(
        diff <= atol,
        "{what}: max abs difference {diff:.3e} > {atol:.0e} (reference max |x| = {scale:.3e})"
    );
}

/// The directory cargo puts the workspace's libraries in for the running test's profile
/// (`target/debug`): the test executable lives in its `deps/`.
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().unwrap().to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// The built shared library of crate `crate_name` (`terrahost_plugin_timm`).
pub fn built_library(crate_name: &str) -> PathBuf {
    let file = format!("lib{crate_name}.{}", std::env::consts::DLL_EXTENSION);
    let path = build_dir().join(&file);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The four real plugins.
pub const PLUGINS: [&str; 4] = ["terratorch", "timm", "smp", "mmseg"];

/// A fresh temporary directory holding copies of the named libraries (crate names).
pub fn plugin_dir(crates: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for c in crates {
        let src = built_library(c);
        std::fs::copy(&src, dir.path().join(src.file_name().unwrap())).expect("copy plugin");
    }
    dir
}

/// A temporary directory with the real plugins named (`timm`, `smp`, ...).
pub fn real_plugins(names: &[&str]) -> tempfile::TempDir {
    let crates: Vec<String> = names
        .iter()
        .map(|n| format!("terrahost_plugin_{n}"))
        .collect();
    plugin_dir(&crates.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Writes the fixture's synthetic weights as a `.safetensors` checkpoint in `dir`.
pub fn write_weights(fx: &Fixture, dir: &Path) -> PathBuf {
    let path = dir.join(format!("{}.safetensors", fx.case));
    let weights = fx.weights();
    let named: Vec<(&str, &Tensor)> = weights.iter().map(|(k, t)| (k.as_str(), t)).collect();
    terrahost::weights::write_tensors(&path, &named).expect("write weights");
    path
}

/// A deterministic test input, `sin(0.37 k + 0.5 i + 0.1)` over the elements of input
/// `i`; the reference scripts that printed hard-coded expected values use the same.
pub fn sine_input(i: usize, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (Kind::Double, tch::Device::Cpu)) * 0.37 + (0.5 * i as f64 + 0.1))
        .sin()
        .reshape(shape)
        .to_kind(Kind::Float)
}

/// Overwrites every parameter and buffer of `m` with its [`synth`] value.
pub fn set_synthetic(m: &DynModule) {
    tch::no_grad(|| {
        for (k, mut t) in m.state_dict() {
            let v = synth(&k, &t.size(), t.kind());
            t.copy_(&v);
        }
    });
}

/// `(key, shape)` of `m`'s state_dict, sorted.
pub fn keys_and_shapes(m: &DynModule) -> Vec<(String, Vec<i64>)> {
    let mut v: Vec<(String, Vec<i64>)> = m
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k, t.size()))
        .collect();
    v.sort();
    v
}

/// A hard-coded reference key list in the form of [`keys_and_shapes`].
pub fn sorted_keys(keys: &[(&str, &[i64])]) -> Vec<(String, Vec<i64>)> {
    let mut v: Vec<(String, Vec<i64>)> = keys
        .iter()
        .map(|(k, s)| (k.to_string(), s.to_vec()))
        .collect();
    v.sort();
    v
}

/// Builds `name` from the `registry` source among `sources`, with no host behind it.
pub fn build_from(
    sources: Vec<SourceEntry>,
    registry: &str,
    name: &str,
    channels: Option<&[i64]>,
    args: &Value,
) -> terrahost_plugin_api::Result<DynModule> {
    let source = sources
        .into_iter()
        .find(|s| s.registry.as_str() == registry)
        .expect("a source for the registry");
    let req =
        terrahost_plugin_api::BuildRequest::new(args.as_object().expect("args object"), channels);
    let module = source
        .source
        .build(
            name.into(),
            req,
            terrahost_plugin_api::sdk::NoHost::handle(),
        )
        .into_result()?;
    Ok(DynModule::new(format!("{}_{name}", source.prefix), module))
}

/// A configuration with the output the reference printed for synthetic weights and
/// [`sine_input`]s.
pub struct Case {
    /// The channel list.
    pub channels: &'static [i64],
    /// The keyword arguments, as JSON text.
    pub args: &'static str,
    /// The input shapes.
    pub inputs: &'static [[i64; 4]],
    /// The number of state_dict entries.
    pub n_keys: usize,
    /// The output's shape.
    pub out_shape: &'static [i64],
    /// The output's values, flattened.
    pub out: &'static [f32],
}

/// Builds `case` with `build`, sets synthetic weights, runs it and compares (1e-4).
pub fn check_case(
    name: &str,
    case: &Case,
    build: impl Fn(&[i64], Value) -> terrahost_plugin_api::Result<DynModule>,
) {
    let args: Value = serde_json::from_str(case.args).unwrap();
    let m = build(case.channels, args).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        m.state_dict().len(),
        case.n_keys,
        "{name}: number of state_dict entries"
    );
    set_synthetic(&m);
    let xs: Vec<Tensor> = case
        .inputs
        .iter()
        .enumerate()
        .map(|(i, s)| sine_input(i, s))
        .collect();
    let ys = tch::no_grad(|| m.forward(&xs)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(ys.len(), 1, "{name}: one output");
    let expected = Tensor::from_slice(case.out).reshape(case.out_shape);
    assert_close(name, &ys[0], &expected, 1e-4);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_weights_follow_the_convention() {
        // Values computed by hand from the formula in scripts/reference/README.md.
        let t = synth("a", &[3], Kind::Float); // bias-like: 0.1 * sin(i*0.618 + 0.97)
        let v = Vec::<f32>::try_from(&t).unwrap();
        let phase = (b'a' as f64 % 997.0) * 0.01;
        for (i, x) in v.iter().enumerate() {
            assert!((*x as f64 - 0.1 * (i as f64 * 0.618 + phase).sin()).abs() < 1e-7);
        }
        let var = synth("bn.running_var", &[100], Kind::Float);
        assert!(var.min().double_value(&[]) >= 0.5);
        assert_eq!(
            synth("bn.num_batches_tracked", &[], Kind::Int64).int64_value(&[]),
            0
        );
    }

    #[test]
    fn assert_close_fails_on_a_real_difference() {
        let a = Tensor::from_slice(&[1.0f32, 2.0]);
        let b = Tensor::from_slice(&[1.0f32, 2.001]);
        assert!(std::panic::catch_unwind(|| assert_close("x", &a, &b, 1e-4)).is_err());
        assert_close("x", &a, &a, 0.0);
    }
}
