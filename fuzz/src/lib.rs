//! One input through each parser that reads untrusted bytes. The fuzz targets
//! (`fuzz_targets/`) call these, and the integration tests replay the committed corpus
//! through the same functions (`tests/tests/fuzz_replay.rs` includes this file), so a
//! crash found once is guarded by `cargo test` from then on.
//!
//! Each function must return (an `Ok` or an error value) for every input: a panic, an
//! abort, a hang or an allocation beyond the budgets is a bug.
use std::path::Path;

/// The names of the targets, as directories under `fuzz/corpus/`.
pub const TARGETS: [&str; 6] = [
    "torch_save",
    "safetensors",
    "model_config",
    "predict_config",
    "entry_args",
    "name_routing",
];

/// Runs target `name` on `data`. Panics on an unknown name.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "torch_save" => torch_save(data),
        "safetensors" => safetensors(data),
        "model_config" => model_config(data),
        "predict_config" => predict_config(data),
        "entry_args" => entry_args(data),
        "name_routing" => name_routing(data),
        other => panic!("no fuzz target `{other}`"),
    }
}

/// The `torch.save` reader, on `data` written to a file (it reads paths), with a
/// 64 MiB budget.
pub fn torch_save(data: &[u8]) {
    thread_local! {
        static FILE: std::path::PathBuf = {
            let dir = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm").to_path_buf() } else { std::env::temp_dir() };
            dir.join(format!("terrahost-fuzz-{}-{:?}.pt", std::process::id(), std::thread::current().id()))
        };
    }
    FILE.with(|f| {
        std::fs::write(f, data).expect("write the input");
        let _ = terrahost_layers::checkpoint::read_state_dict_with_budget(f, Some(64 << 20));
    });
}

/// The safetensors reader.
pub fn safetensors(data: &[u8]) {
    let _ = terrahost_layers::checkpoint::safetensors::parse(data, "fuzz.safetensors");
}

/// A model config (YAML), parsed into the factory and its arguments.
pub fn model_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = terrahost::config::ModelConfig::from_yaml(text);
    }
}

/// A predict config (YAML): the `data:` section with bands, nodata, scaling and
/// means/stds, and the task's inference keys. Relative means/stds files resolve in an
/// empty directory.
pub fn predict_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = terrahost::predict::data_config::PredictConfig::from_yaml(
            text,
            Path::new("/nonexistent-fuzz-dir"),
        );
    }
}

/// `--args` JSON checked against an entry's parameters of every type.
pub fn entry_args(data: &[u8]) {
    use terrahost_plugin_api::{EntryInfo, ParamSpec, ParamType};
    let Ok(serde_json::Value::Object(args)) = serde_json::from_slice::<serde_json::Value>(data)
    else {
        return;
    };
    let info = EntryInfo {
        name: "e".into(),
        doc: "".into(),
        takes_channels: false,
        params: vec![
            ParamSpec::optional("num_classes", ParamType::INT, serde_json::json!(2), ""),
            ParamSpec::optional("rate", ParamType::FLOAT, serde_json::json!(0.1), ""),
            ParamSpec::optional("flag", ParamType::BOOL, serde_json::json!(false), ""),
            ParamSpec::optional("name", ParamType::STR, serde_json::json!("x"), ""),
            ParamSpec::optional(
                "indices",
                ParamType::INT_LIST,
                serde_json::json!([1, 2]),
                "",
            ),
            ParamSpec::optional("any", ParamType::ANY, serde_json::json!(null), ""),
            ParamSpec::required("bands", ParamType::STR_LIST, ""),
            ParamSpec::optional(
                "sizes",
                ParamType::INT_OR_INT_LIST,
                serde_json::json!(2),
                "",
            ),
            ParamSpec::optional("cfg", ParamType::DICT, serde_json::json!({}), ""),
            ParamSpec::ignored("pretrained", "no weights are downloaded"),
        ]
        .into(),
        accepts_extra: false,
        includes_head: false,
    };
    let _ = info.validate("terratorch_e", &args);
}

/// Registry name routing: prefixes, did-you-mean, missing sources, over a view with
/// two plugins. The first byte picks the registry, the rest is the name.
pub fn name_routing(data: &[u8]) {
    use terrahost_index::gather::Found;
    use terrahost_index::meta::{EntryMeta, ManifestMeta, Outcome, PluginInfo, SourceMeta};
    let Some((&pick, name)) = data.split_first() else {
        return;
    };
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    let registries = [
        "backbone",
        "neck",
        "decoder",
        "full_model",
        "model_factory",
        "nonsense",
    ];
    let registry = registries[pick as usize % registries.len()];
    let plugin = |name: &str, prefix: &str, registry: &str, entries: &[&str]| Found {
        path: format!("/p/lib{name}.so").into(),
        key: None,
        outcome: Outcome::Plugin(PluginInfo {
            manifest: ManifestMeta {
                name: name.into(),
                version: "1.0.0".into(),
                api_version: "0.2.4".into(),
                torch_version: "2.13.0".into(),
                tch_version: "0.26.0".into(),
                cxx11_abi: true,
                target: "x".into(),
                sources: vec![(registry.into(), prefix.into())],
            },
            sources: vec![SourceMeta {
                registry: registry.into(),
                prefix: prefix.into(),
                entries: entries
                    .iter()
                    .map(|e| EntryMeta {
                        name: (*e).into(),
                        doc: String::new(),
                        takes_channels: false,
                        accepts_extra: false,
                        includes_head: false,
                        params: vec![],
                    })
                    .collect(),
                refusals: vec![],
            }],
            sha256: None,
        }),
    };
    let found = vec![
        plugin(
            "timm",
            "timm",
            "backbone",
            &["resnet18", "vit_base_patch16_224", "prithvi_vit_100"],
        ),
        plugin(
            "terratorch",
            "terratorch",
            "backbone",
            &["prithvi_eo_v2_300", "resnet18"],
        ),
        plugin("smp", "smp", "decoder", &["Unet", "FPN"]),
    ];
    let view = terrahost_index::view::View::new(&found);
    let _ = view.describe(registry, name);
}
