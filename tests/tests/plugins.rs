//! Integration tests: the real plugin libraries, loaded from a directory the way users
//! install them.
use serde_json::{json, Map};
use terrahost::{Host, RegistryRef};
use terrahost_plugin_api::ErrorKind;
use terrahost_testkit::{plugin_dir, real_plugins, Fixture, PLUGINS};

fn keys(host: &Host, registry: &str) -> Vec<String> {
    match host.registry(registry) {
        Some(RegistryRef::Multi(r)) => r.keys().map(str::to_owned).collect(),
        _ => panic!("{registry} is not multi-source"),
    }
}

#[test]
fn all_four_plugins_load_and_fill_the_registries() {
    let dir = real_plugins(&PLUGINS);
    let host = Host::load(&[dir.path().to_path_buf()]);
    assert!(host.rejected().is_empty(), "{:?}", host.rejected());
    let mut names: Vec<&str> = host
        .plugins()
        .iter()
        .map(|p| p.manifest.name.as_str())
        .collect();
    names.sort();
    assert_eq!(names, vec!["mmseg", "smp", "terratorch", "timm"]);
    // Sources are searched in TerraTorch's order, whatever the load order.
    assert_eq!(keys(&host, "backbone"), vec!["terratorch", "timm"]);
    assert_eq!(keys(&host, "decoder"), vec!["terratorch", "smp", "mmseg"]);
    assert!(host.contains("backbone", "timm_resnet18"));
    assert!(host.contains("backbone", "resnet34"));
    assert!(host.contains("decoder", "smp_Unet"));
    assert!(host.contains("decoder", "mmseg_FCNHead"));
    assert!(host.contains("decoder", "FCNDecoder"));
    assert!(host.contains("neck", "SelectIndices"));
    assert!(host.contains("model_factory", "EncoderDecoderFactory"));
    for p in host.plugins() {
        assert_eq!(
            p.manifest.torch_version.as_str(),
            terrahost_plugin_api::TORCH_VERSION
        );
    }
}

#[test]
fn without_the_mmseg_library_mmseg_is_absent_and_named_as_missing() {
    let dir = real_plugins(&["terratorch", "timm", "smp"]);
    let host = Host::load(&[dir.path().to_path_buf()]);
    assert!(!keys(&host, "decoder").contains(&"mmseg".to_owned()));
    assert!(!host.contains("decoder", "mmseg_FCNHead"));
    let e = host
        .build(
            "decoder",
            "mmseg_FCNHead",
            json!({"num_classes": 2}).as_object().unwrap(),
            Some(&[32]),
        )
        .err()
        .expect("no mmseg");
    assert_eq!(e.kind, ErrorKind::NOT_FOUND);
    assert!(
        e.message()
            .contains("no source `mmseg` in the decoder registry (installed: terratorch, smp)"),
        "{e}"
    );
    assert!(e.message().contains("install the `mmseg` plugin"), "{e}");
}

#[test]
fn files_that_are_not_plugins_are_refused_with_reasons_and_the_rest_load() {
    let dir = plugin_dir(&[
        "terrahost_plugin_timm",
        "terrahost_fixture_not_a_plugin",
        "terrahost_fixture_bad_api",
    ]);
    std::fs::write(
        dir.path()
            .join(format!("garbage.{}", std::env::consts::DLL_EXTENSION)),
        b"not an ELF file",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.txt"), b"ignored: wrong suffix").unwrap();
    let host = Host::load(&[dir.path().to_path_buf()]);
    assert_eq!(host.plugins().len(), 1, "timm still loads");
    let refused = |needle: &str| {
        host.rejected()
            .iter()
            .find(|r| r.path.to_string_lossy().contains(needle))
            .unwrap_or_else(|| panic!("{needle} not rejected: {:?}", host.rejected()))
            .clone()
    };
    let reason = |needle: &str| refused(needle).reason;
    assert_eq!(refused("garbage").kind, "not-a-library");
    assert_eq!(refused("not_a_plugin").kind, "not-a-plugin");
    assert_eq!(refused("bad_api").kind, "incompatible-api");
    assert!(reason("garbage").contains("not a loadable library"));
    assert!(reason("not_a_plugin").contains("not a terrahost plugin"));
    // The hint names the macro that exports the root module, not the one that declares
    // the plugin (a crate with only `declare_plugin!` exports nothing).
    let hint = reason("not_a_plugin");
    assert!(
        hint.contains("export_plugin!") && !hint.contains("declare_plugin!"),
        "{hint}"
    );
    let bad = reason("bad_api");
    assert!(
        bad.contains("plugin-api") && bad.contains(terrahost_plugin_api::API_VERSION),
        "{bad}"
    );
    assert_eq!(host.rejected().len(), 3, "{:?}", host.rejected());
}

#[test]
fn a_duplicate_prefix_is_refused_for_the_second_plugin_naming_both() {
    let first = real_plugins(&["timm"]);
    let second = plugin_dir(&["terrahost_fixture_dup_prefix"]);
    let host = Host::load(&[first.path().to_path_buf(), second.path().to_path_buf()]);
    assert_eq!(host.plugins().len(), 1);
    let r = &host.rejected()[0];
    assert_eq!(r.kind, "duplicate-prefix");
    assert!(
        r.reason.contains("`timm`") && r.reason.contains("`dup-prefix`"),
        "{}",
        r.reason
    );
    // The first plugin's entries are untouched.
    assert!(host.contains("backbone", "timm_resnet18"));
    assert!(!host.contains("backbone", "timm_identity"));
}

/// The refusal of a second file with the same plugin name, as the engine records it.
fn duplicate_refusal(host: &Host) -> terrahost::Rejected {
    assert_eq!(host.rejected().len(), 1, "{:?}", host.rejected());
    let r = host.rejected()[0].clone();
    assert_eq!(r.kind, "duplicate-plugin", "{}", r.reason);
    r
}

/// Two files with the same plugin name at the same version, in one directory: the file
/// whose name comes first loads, whatever order the directory lists them in, and the
/// other's refusal names both files, both versions, which one loaded and why.
#[test]
fn of_two_copies_at_one_version_in_one_directory_the_first_name_loads() {
    let smp = terrahost_testkit::built_library("terrahost_plugin_smp");
    let version = terrahost_smp::plugin_manifest().version.to_string();
    for (first, second) in [
        ("liba_smp.so", "libz_smp.so"),
        ("libz_smp.so", "liba_smp.so"),
    ] {
        // Created in both orders, so the directory's own order cannot decide.
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&smp, dir.path().join(first)).unwrap();
        std::fs::copy(&smp, dir.path().join(second)).unwrap();
        let host = Host::load(&[dir.path().to_path_buf()]);
        let loaded: Vec<_> = host.plugins().iter().map(|p| p.path.clone()).collect();
        let (a, z) = (
            dir.path().join("liba_smp.so"),
            dir.path().join("libz_smp.so"),
        );
        assert_eq!(loaded, [Some(a.clone())]);
        let r = duplicate_refusal(&host);
        assert_eq!(r.path, z);
        assert_eq!(
            r.reason,
            format!(
                "two files declare plugin `smp`: {} (version {version}) is loaded and this one, \
                 {} (version {version}), is not, because at equal versions the file whose name \
                 comes first wins; remove one of the two copies",
                a.display(),
                z.display()
            )
        );
        assert!(host.contains("decoder", "smp_Unet"));
    }
}

/// At equal versions, the file in the earlier plugin directory loads, even when its name
/// sorts later.
#[test]
fn of_two_copies_at_one_version_the_earlier_plugin_directory_wins() {
    let smp = terrahost_testkit::built_library("terrahost_plugin_smp");
    let (early, late) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let chosen = early.path().join("libzz_smp.so");
    let other = late.path().join("libaa_smp.so");
    std::fs::copy(&smp, &chosen).unwrap();
    std::fs::copy(&smp, &other).unwrap();
    let host = Host::load(&[early.path().to_path_buf(), late.path().to_path_buf()]);
    assert_eq!(host.plugins().len(), 1);
    assert_eq!(host.plugins()[0].path.as_deref(), Some(chosen.as_path()));
    let r = duplicate_refusal(&host);
    assert_eq!(r.path, other);
    assert!(
        r.reason
            .contains(&format!("{} (version ", chosen.display()))
            && r.reason.contains(&format!("{} (version ", other.display()))
            && r.reason.contains("is loaded")
            && r.reason
                .contains("the file in the earlier plugin directory wins"),
        "{}",
        r.reason
    );
}

#[test]
fn panics_in_build_and_forward_become_errors_and_the_host_goes_on() {
    let dir = plugin_dir(&["terrahost_fixture_panicky"]);
    let host = Host::load(&[dir.path().to_path_buf()]);
    let none = Map::new();
    let e = host
        .build("backbone", "build_panics", &none, None)
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::PANICKED);
    assert!(e.message().contains("deliberate panic in build"), "{e}");

    let m = host
        .build("backbone", "forward_panics", &none, None)
        .unwrap();
    let x = tch::Tensor::zeros([1, 3, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
    let e = m.forward(&[x.shallow_clone()]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PANICKED);
    assert!(e.message().contains("deliberate panic in forward"), "{e}");

    // The host (and the plugin) still work afterwards.
    let conv = host.build("backbone", "conv", &none, None).unwrap();
    assert_eq!(conv.forward(&[x]).unwrap()[0].size(), vec![1, 4, 6, 6]);
}

#[test]
fn a_forward_with_the_wrong_channel_count_is_an_error_not_an_abort() {
    let dir = real_plugins(&["timm"]);
    let host = Host::load(&[dir.path().to_path_buf()]);
    let m = host
        .build("backbone", "timm_resnet18", &Map::new(), None)
        .unwrap();
    let x = tch::Tensor::zeros([1, 5, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    let e = m.forward(&[x]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::FORWARD_FAILED, "{e}");
    assert!(
        e.message().contains("5"),
        "the message shows the channel count: {e}"
    );
}

#[test]
fn malformed_and_wrong_typed_arguments_name_the_argument() {
    let dir = real_plugins(&["timm"]);
    let host = Host::load(&[dir.path().to_path_buf()]);
    let e = host
        .build(
            "backbone",
            "timm_resnet18",
            json!({"in_chans": "three"}).as_object().unwrap(),
            None,
        )
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT);
    assert!(e.message().contains("`in_chans`"), "{e}");
    let e = host
        .build(
            "backbone",
            "timm_resnet18",
            json!({"in_chan": 3}).as_object().unwrap(),
            None,
        )
        .err()
        .unwrap();
    assert!(
        e.message().contains("`in_chan`") && e.message().contains("did you mean `in_chans`"),
        "{e}"
    );
}

/// The foundation's end-to-end check: timm_resnet18 -> smp_Unet -> terratorch head,
/// composed by the terratorch plugin's EncoderDecoderFactory through the host, from a
/// TerraTorch checkpoint, reproduces TerraTorch's output.
#[test]
fn cross_plugin_factory_model_reproduces_terratorch() {
    let dir = real_plugins(&PLUGINS);
    let host = Host::load(&[dir.path().to_path_buf()]);
    let cases = terrahost_testkit::model_fixtures();
    assert!(cases.len() >= 6, "model fixtures: {cases:?}");
    for case in &cases {
        let fx = Fixture::load(case);
        let cfg = terrahost::config::ModelConfig::from_file(&fx.dir.join("config.yaml")).unwrap();
        let model = host
            .build("model_factory", &cfg.model_factory, &cfg.model_args, None)
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let ckpt_dir = tempfile::tempdir().unwrap();
        let ckpt = terrahost_testkit::write_weights(&fx, ckpt_dir.path());
        terrahost::weights::load_state_dict(
            &model,
            terrahost::weights::read_state_dict(&ckpt).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{case}: {e}"));
        terrahost_testkit::compare_outputs(&fx, &model);
    }
}

/// TerraTorch 1.2.11 cannot build this (it adds a head on the mmseg wrapper); terrahost
/// gives `num_classes` to the decoder, adds no head, and the model is exactly
/// mmseg's FCNHead on the timm features, resized to the input.
#[test]
fn factory_with_an_mmseg_decoder_gives_it_num_classes_and_adds_no_head() {
    let dir = real_plugins(&PLUGINS);
    let host = Host::load(&[dir.path().to_path_buf()]);
    let args = json!({
        "task": "segmentation",
        "backbone": "timm_resnet18",
        "necks": [{"name": "SelectIndices", "indices": [-1]}],
        "decoder": "mmseg_FCNHead",
        "decoder_channels": 16,
        "num_classes": 3,
        "rescale": true,
    });
    let model = host
        .build(
            "model_factory",
            "EncoderDecoderFactory",
            args.as_object().unwrap(),
            None,
        )
        .unwrap();
    assert_eq!(model.out_channels(), vec![3]);
    let keys: Vec<String> = model.state_dict().into_iter().map(|(k, _)| k).collect();
    assert!(
        keys.iter().all(|k| !k.starts_with("head.")),
        "no head: {keys:?}"
    );
    // TerraTorch's mmseg wrapper keeps the head under `decoder`, inside the factory's `decoder`.
    assert!(
        keys.iter().any(|k| k == "decoder.decoder.conv_seg.weight"),
        "{keys:?}"
    );

    // The same computation, part by part.
    let backbone = host
        .build("backbone", "timm_resnet18", &Map::new(), None)
        .unwrap();
    let head = host
        .build(
            "decoder",
            "mmseg_FCNHead",
            json!({"num_classes": 3, "channels": 16})
                .as_object()
                .unwrap(),
            Some(&[512]),
        )
        .unwrap();
    terrahost_testkit::set_synthetic(&model);
    let whole_state: std::collections::HashMap<String, tch::Tensor> =
        model.state_dict().into_iter().collect();
    tch::no_grad(|| {
        for (prefix, part) in [("encoder.", &backbone), ("decoder.", &head)] {
            for (k, mut t) in part.state_dict() {
                t.copy_(&whole_state[&format!("{prefix}{k}")]);
            }
        }
    });
    let x = terrahost_testkit::sine_input(0, &[1, 3, 64, 64]);
    let whole = tch::no_grad(|| model.forward(&[x.shallow_clone()])).unwrap();
    let by_parts = tch::no_grad(|| {
        let features = backbone.forward(&[x]).unwrap();
        let logits = head.forward(&features[4..]).unwrap().remove(0);
        logits.upsample_bilinear2d([64, 64], false, None, None)
    });
    terrahost_testkit::assert_close("factory vs parts", &whole[0], &by_parts, 1e-5);
}

/// No entry is registered without a parity test: every name any plugin registers has a
/// reference fixture built under that name (bare or prefixed), and the plugin's parity
/// tests run every fixture of its entries.
#[test]
fn every_registered_entry_has_a_reference_fixture() {
    let dir = real_plugins(&PLUGINS);
    let host = Host::load(&[dir.path().to_path_buf()]);
    let mut fixture_names: std::collections::HashSet<(String, String)> = Default::default();
    for (case, m) in terrahost_testkit::fixture_metas() {
        let registry = m["registry"]
            .as_str()
            .unwrap_or_else(|| panic!("{case}: meta.registry"));
        let registry = if registry == "model" {
            "model_factory"
        } else {
            registry
        };
        fixture_names.insert((registry.to_owned(), m["name"].as_str().unwrap().to_owned()));
    }
    // The object-detection factory's fixtures (`tests/fixtures/detection_factory`, run by
    // `tests_object_detection` and `cross_plugin`).
    if !terrahost_testkit::detection::fixture_cases().is_empty() {
        fixture_names.insert((
            "model_factory".to_owned(),
            "ObjectDetectionModelFactory".to_owned(),
        ));
    }
    let mut missing = Vec::new();
    let mut count = 0;
    for registry in terrahost_plugin_api::registry_names::ALL {
        for qualified in host.names(registry) {
            count += 1;
            let (prefix, bare) = qualified.split_once('_').unwrap_or(("", &qualified));
            let has = |n: &str| fixture_names.contains(&(registry.to_owned(), n.to_owned()));
            if !(has(&qualified) || has(bare) || (prefix == "timm" && has(&format!("timm_{bare}"))))
            {
                missing.push(format!("{registry}: {qualified}"));
            }
        }
    }
    assert!(count > 90, "only {count} entries registered");
    assert!(
        missing.is_empty(),
        "entries without a reference fixture: {missing:#?}"
    );
}

/// Every component fixture (backbones, necks, decoders, full models) reproduced through
/// the plugin libraries themselves, across the library boundary. Fixtures whose
/// reference needs more than inputs and weights (`meta.parity_test == "custom"`) are
/// checked by their plugin's own tests instead.
#[test]
fn every_component_fixture_reproduces_through_the_plugin_libraries() {
    let dir = real_plugins(&PLUGINS);
    let host = Host::load(&[dir.path().to_path_buf()]);
    let mut checked = 0;
    let mut failures = Vec::new();
    for (case, meta) in terrahost_testkit::fixture_metas() {
        // whole models run in the model tests; training-mode references in their plugin's tests
        let custom = meta["parity_test"] == "custom" || meta["train"] == true;
        if meta["registry"] == "model" || meta["registry"] == "head" || custom {
            continue;
        }
        let fx = Fixture::load(&case);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let module = terrahost_testkit::build_fixture(&host, &fx);
            terrahost_testkit::compare_outputs(&fx, &module);
        }));
        match result {
            Ok(()) => checked += 1,
            Err(p) => failures.push(format!(
                "{case}: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        checked + failures.len(),
        failures.join("\n")
    );
    assert!(checked > 140, "only {checked} fixtures checked");
}

/// Builds the whole-model fixture `case` from `host`, loads its weights and runs it.
fn run_model_fixture(host: &Host, case: &str) -> Vec<tch::Tensor> {
    let fx = Fixture::load(case);
    let cfg = terrahost::config::ModelConfig::from_file(&fx.dir.join("config.yaml")).unwrap();
    let model = host
        .build("model_factory", &cfg.model_factory, &cfg.model_args, None)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    terrahost::weights::load_state_dict(&model, fx.weights())
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    tch::no_grad(|| model.forward(&fx.inputs)).unwrap_or_else(|e| panic!("{case}: {e}"))
}

/// One host shared by 8 threads that build and run different models at once gives
/// exactly the outputs of a sequential run. The concurrent host is fresh, so the
/// threads also race to load the plugin libraries (each is loaded once).
#[test]
fn eight_threads_sharing_one_host_give_the_sequential_results() {
    let dir = real_plugins(&PLUGINS);
    let cases = terrahost_testkit::model_fixtures();
    assert!(cases.len() >= 4, "{cases:?}");
    let jobs: Vec<String> = cases.iter().cycle().take(8).cloned().collect();
    let sequential_host = Host::load(&[dir.path().to_path_buf()]);
    let sequential: Vec<Vec<tch::Tensor>> = jobs
        .iter()
        .map(|c| run_model_fixture(&sequential_host, c))
        .collect();
    let shared = Host::load(&[dir.path().to_path_buf()]);
    let concurrent: Vec<Vec<tch::Tensor>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|c| {
                let host = &shared;
                s.spawn(move || run_model_fixture(host, c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((case, seq), conc) in jobs.iter().zip(&sequential).zip(&concurrent) {
        assert_eq!(seq.len(), conc.len(), "{case}");
        for (i, (a, b)) in seq.iter().zip(conc).enumerate() {
            assert!(
                a.equal(b),
                "{case} output {i} differs between the sequential and the concurrent run"
            );
        }
    }
}
