//! The registry semantics: a Rust port of every case in TerraTorch's
//! `tests/test_registry.py` and `tests/test_multi_source_registry.py`, then the cases
//! where terrahost is deliberately stricter.
use serde_json::{json, Map, Value};
use tch::{nn, Tensor};
use terrahost::{MultiSourceRegistry, Registry};
use terrahost_plugin_api::{
    params::ParamType,
    sdk::{Built, Catalog, Entry, Model, NoHost},
    BuildRequest, ErrorKind, ModuleBox, Result, SourceBox,
};

/// TerraTorch's `DummyModel(param)`: remembers its parameter, reported as out_channels.
struct Dummy(i64);

impl Model for Dummy {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        Ok(xs.iter().map(|x| x * self.0).collect())
    }
    fn out_channels(&self) -> Vec<i64> {
        vec![self.0]
    }
}

fn dummy(name: &str, param: i64) -> ModuleBox {
    Built::new(name, nn::VarStore::new(tch::Device::Cpu), Dummy(param)).boxed()
}

/// An entry `name` whose build returns `Dummy(param)`.
fn entry(name: &str) -> Entry {
    Entry::new(name, "a test entry", |ctx| {
        Ok(dummy(&ctx.qualified(), ctx.args.get("param")?))
    })
    .opt("param", ParamType::INT, json!(0), "the parameter")
}

/// An entry whose build always fails (the entry exists, construction does not work).
fn failing(name: &str) -> Entry {
    Entry::new(name, "always fails", |_| {
        Err(terrahost_plugin_api::PluginError::build_failed(
            "construction failed on purpose",
        ))
    })
}

fn source(prefix: &str, entries: Vec<Entry>) -> SourceBox {
    entries
        .into_iter()
        .fold(Catalog::new(prefix), Catalog::add)
        .into_source()
}

fn args(v: Value) -> BuildRequest {
    BuildRequest::new(v.as_object().unwrap(), None)
}

fn no_args() -> BuildRequest {
    BuildRequest::new(&Map::new(), None)
}

// ---- tests/test_registry.py ----

#[test]
fn test_register_function() {
    let mut r = Registry::new("test");
    r.register(entry("dummy_function")).unwrap();
    assert!(r.contains("dummy_function"));
}

#[test]
fn test_register_class() {
    let mut r = Registry::new("test");
    r.register(entry("DummyClass")).unwrap();
    assert!(r.contains("DummyClass"));
    let m = r
        .build("DummyClass", args(json!({"param": 5})), NoHost::handle())
        .unwrap();
    assert_eq!(m.out_channels().to_vec(), vec![5]);
}

#[test]
fn test_build_model() {
    let mut r = Registry::new("test");
    r.register(entry("build_dummy_model")).unwrap();
    let m = r
        .build(
            "build_dummy_model",
            args(json!({"param": 42})),
            NoHost::handle(),
        )
        .unwrap();
    assert_eq!(m.out_channels().to_vec(), vec![42]);
}

#[test]
fn test_build_nonexistent_model() {
    let r = Registry::new("test");
    let e = r
        .build("build_nonexistent_model", no_args(), NoHost::handle())
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::NOT_FOUND);
    assert!(e.message().contains("build_nonexistent_model"), "{e}");
}

#[test]
fn test_len_and_iter() {
    let mut r = Registry::new("test");
    r.register(entry("model_a")).unwrap();
    r.register(entry("model_b")).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r.iter().collect::<Vec<_>>(), vec!["model_a", "model_b"]);
}

#[test]
fn test_invalid_registration() {
    // Python refuses a non-callable; the Rust type system rules that out, so the
    // invalid registrations left are bad names.
    let mut r = Registry::new("test");
    assert_eq!(
        r.register(entry("")).unwrap_err().kind,
        ErrorKind::INVALID_ARGUMENT
    );
    assert!(r.register(entry("not a name")).is_err());
}

#[test]
fn test_contains_method() {
    let mut r = Registry::new("test");
    r.register(entry("model_x")).unwrap();
    assert!(r.contains("model_x"));
    assert!(!r.contains("nonexistent_model"));
}

// ---- tests/test_multi_source_registry.py ----

fn simple_with_my_model() -> SourceBox {
    source("simple", vec![entry("my_model")])
}

#[test]
fn test_register_source() {
    let mut m = MultiSourceRegistry::new("test");
    m.register_source("simple", "p", simple_with_my_model())
        .unwrap();
    assert!(m.keys().any(|k| k == "simple"));
}

#[test]
fn test_build_from_registered_source() {
    let mut m = MultiSourceRegistry::new("test");
    m.register_source("simple", "p", simple_with_my_model())
        .unwrap();
    let (qualified, module) = m
        .build(
            "simple_my_model",
            args(json!({"param": 7})),
            NoHost::handle(),
        )
        .unwrap();
    assert_eq!(qualified, "simple_my_model");
    assert_eq!(module.out_channels().to_vec(), vec![7]);
}

#[test]
fn test_build_without_prefix() {
    let mut m = MultiSourceRegistry::new("test");
    m.register_source("simple", "p", simple_with_my_model())
        .unwrap();
    let (qualified, _) = m.build("my_model", no_args(), NoHost::handle()).unwrap();
    assert_eq!(qualified, "simple_my_model");
}

#[test]
fn test_build_fails_if_not_found() {
    let m = MultiSourceRegistry::new("test");
    let e = m
        .build("nonexistent_model", no_args(), NoHost::handle())
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::NOT_FOUND);
    assert!(
        e.message()
            .contains("`nonexistent_model` is not in the test registry"),
        "{e}"
    );
}

#[test]
fn test_register_duplicate_source() {
    let mut m = MultiSourceRegistry::new("test");
    m.register_source("simple", "first", simple_with_my_model())
        .unwrap();
    let e = m
        .register_source("simple", "second", simple_with_my_model())
        .unwrap_err();
    assert!(
        e.message()
            .contains("Source for prefix simple already exists"),
        "{e}"
    );
    assert!(
        e.message().contains("`first`") && e.message().contains("`second`"),
        "{e}"
    );
}

#[test]
fn test_contains_method_multi() {
    let mut m = MultiSourceRegistry::new("test");
    m.register_source("simple", "p", simple_with_my_model())
        .unwrap();
    assert!(m.contains("simple_my_model"));
    assert!(m.contains("my_model"));
}

#[test]
fn test_getitem_method() {
    let mut m = MultiSourceRegistry::new("test");
    m.register_source("simple", "p", simple_with_my_model())
        .unwrap();
    let slot = m.get("simple").expect("registry[prefix]");
    assert_eq!(slot.prefix, "simple");
    assert_eq!(slot.names(), vec!["my_model"]);
}

#[test]
fn test_find_registry_method() {
    let mut m = MultiSourceRegistry::new("test");
    m.register_source("other", "p", source("other", vec![entry("x")]))
        .unwrap();
    m.register_source("simple", "p", simple_with_my_model())
        .unwrap();
    let (slot, name) = m.find("my_model").unwrap();
    assert_eq!(
        (slot.prefix.as_str(), name.as_str()),
        ("simple", "my_model")
    );
}

// ---- the rest of TerraTorch's documented behaviour ----

#[test]
fn iteration_len_and_keys_follow_registration_order() {
    let mut m = MultiSourceRegistry::new("decoder");
    m.register_source(
        "terratorch",
        "terratorch",
        source(
            "terratorch",
            vec![entry("FCNDecoder"), entry("UNetDecoder")],
        ),
    )
    .unwrap();
    m.register_source("smp", "smp", source("smp", vec![entry("Unet")]))
        .unwrap();
    assert_eq!(m.keys().collect::<Vec<_>>(), vec!["terratorch", "smp"]);
    assert_eq!(
        m.iter().collect::<Vec<_>>(),
        vec![
            "terratorch_FCNDecoder",
            "terratorch_UNetDecoder",
            "smp_Unet"
        ]
    );
    assert_eq!(m.len(), 3);
}

#[test]
fn a_bare_name_goes_to_the_first_source_that_has_it() {
    let mut m = MultiSourceRegistry::new("backbone");
    m.register_source("a", "a", source("a", vec![entry("shared")]))
        .unwrap();
    m.register_source(
        "b",
        "b",
        source("b", vec![entry("shared"), entry("only_b")]),
    )
    .unwrap();
    assert_eq!(
        m.build("shared", no_args(), NoHost::handle()).unwrap().0,
        "a_shared"
    );
    assert_eq!(
        m.build("only_b", no_args(), NoHost::handle()).unwrap().0,
        "b_only_b"
    );
    assert_eq!(
        m.build("b_shared", no_args(), NoHost::handle()).unwrap().0,
        "b_shared"
    );
}

#[test]
fn a_name_whose_first_word_is_not_a_prefix_is_a_bare_name() {
    // `prithvi_vit_100` starts with `prithvi`, which is not a source.
    let mut m = MultiSourceRegistry::new("backbone");
    m.register_source(
        "timm",
        "timm",
        source("timm", vec![entry("prithvi_vit_100")]),
    )
    .unwrap();
    assert!(m.contains("prithvi_vit_100"));
    assert!(m.contains("timm_prithvi_vit_100"));
}

// ---- stricter than TerraTorch ----

#[test]
fn not_found_and_build_failed_are_different_errors() {
    let mut m = MultiSourceRegistry::new("backbone");
    m.register_source("a", "a", source("a", vec![failing("broken")]))
        .unwrap();
    let e = m
        .build("broken", no_args(), NoHost::handle())
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::BUILD_FAILED, "{e}");
    assert!(
        e.message().contains("construction failed on purpose"),
        "{e}"
    );
    let e = m
        .build("absent", no_args(), NoHost::handle())
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::NOT_FOUND, "{e}");
}

#[test]
fn a_failed_build_does_not_fall_through_to_the_next_source() {
    // TerraTorch would swallow the first source's error and build `b`'s entry.
    let mut m = MultiSourceRegistry::new("backbone");
    m.register_source("a", "a", source("a", vec![failing("model")]))
        .unwrap();
    m.register_source("b", "b", source("b", vec![entry("model")]))
        .unwrap();
    let e = m.build("model", no_args(), NoHost::handle()).err().unwrap();
    assert_eq!(e.kind, ErrorKind::BUILD_FAILED, "{e}");
}

#[test]
fn a_prefixed_name_is_checked_for_existence_with_suggestions() {
    let mut m = MultiSourceRegistry::new("backbone");
    m.register_source(
        "timm",
        "timm",
        source("timm", vec![entry("resnet18"), entry("resnet34")]),
    )
    .unwrap();
    assert!(!m.contains("timm_resnet19"));
    let e = m
        .build("timm_resnet19", no_args(), NoHost::handle())
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::NOT_FOUND);
    assert!(e.message().contains("did you mean `timm_resnet18`"), "{e}");
}

#[test]
fn an_unknown_bare_name_gets_did_you_mean() {
    let mut m = MultiSourceRegistry::new("decoder");
    m.register_source(
        "terratorch",
        "terratorch",
        source("terratorch", vec![entry("FCNDecoder")]),
    )
    .unwrap();
    let e = m
        .build("FCNDecoderr", no_args(), NoHost::handle())
        .err()
        .unwrap();
    assert!(
        e.message().contains("did you mean") && e.message().contains("FCNDecoder"),
        "{e}"
    );
}

#[test]
fn a_missing_plugin_is_named() {
    let mut m = MultiSourceRegistry::new("decoder");
    m.register_source(
        "terratorch",
        "terratorch",
        source("terratorch", vec![entry("FCNDecoder")]),
    )
    .unwrap();
    m.register_source("smp", "smp", source("smp", vec![entry("Unet")]))
        .unwrap();
    assert!(!m.contains("mmseg_FCNHead"));
    let e = m
        .build("mmseg_FCNHead", no_args(), NoHost::handle())
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::NOT_FOUND);
    assert!(
        e.message()
            .contains("no source `mmseg` in the decoder registry (installed: terratorch, smp)"),
        "{e}"
    );
}

#[test]
fn arguments_are_validated_before_the_entry_runs() {
    let mut r = Registry::new("test");
    r.register(entry("m")).unwrap();
    let e = r
        .build("m", args(json!({"param": "many"})), NoHost::handle())
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENT);
    assert!(e.message().contains("`param`"), "{e}");
    let e = r
        .build("m", args(json!({"parm": 1})), NoHost::handle())
        .err()
        .unwrap();
    assert!(e.message().contains("did you mean `param`"), "{e}");
}

#[test]
fn a_plain_registry_refuses_duplicates_and_names_both_plugins() {
    let mut r = Registry::new("model_factory");
    r.register_source(
        "terratorch",
        "terratorch",
        source("terratorch", vec![entry("EncoderDecoderFactory")]),
    )
    .unwrap();
    let e = r
        .register_source(
            "other",
            "other",
            source("other", vec![entry("EncoderDecoderFactory")]),
        )
        .unwrap_err();
    assert!(
        e.message().contains("`terratorch`") && e.message().contains("`other`"),
        "{e}"
    );
    assert!(r.register(entry("EncoderDecoderFactory")).is_err());
    assert_eq!(r.len(), 1);
}

#[test]
fn a_prefix_with_an_underscore_is_refused() {
    let mut m = MultiSourceRegistry::new("backbone");
    assert!(m
        .register_source("my_src", "p", source("my_src", vec![]))
        .is_err());
}

/// A plugin for [`terrahost::Host::try_add_plugin`]: `name` declaring each
/// `(registry, prefix)` of `sources`, with one entry (`entry_name`) per source.
fn plugin(
    name: &str,
    sources: &[(&str, &str, &str)],
) -> (
    terrahost_plugin_api::Manifest,
    Vec<terrahost_plugin_api::SourceEntry>,
) {
    let manifest = terrahost_plugin_api::Manifest::current(
        name,
        "1.0.0",
        sources
            .iter()
            .map(|(r, p, _)| terrahost_plugin_api::SourceDecl {
                registry: (*r).into(),
                prefix: (*p).into(),
            })
            .collect(),
    );
    let entries = sources
        .iter()
        .map(|(r, p, e)| terrahost_plugin_api::SourceEntry {
            registry: (*r).into(),
            prefix: (*p).into(),
            source: source(p, vec![entry(e)]),
        })
        .collect();
    (manifest, entries)
}

/// The engine's registration is the index's rule (`terrahost_index::register`): each
/// conflict has its kind, and a refused plugin registers none of its sources.
#[test]
fn host_registration_refuses_conflicts_with_their_kinds_and_all_or_nothing() {
    let mut host = terrahost::Host::new();
    let add = |host: &mut terrahost::Host, name: &str, sources: &[(&str, &str, &str)]| {
        let (m, s) = plugin(name, sources);
        host.try_add_plugin(m, None, s)
    };
    add(
        &mut host,
        "timm",
        &[
            ("backbone", "timm", "resnet18"),
            ("model_factory", "timm", "TimmModelFactory"),
        ],
    )
    .unwrap();

    let e = add(&mut host, "timm", &[("backbone", "other", "x")]).unwrap_err();
    assert_eq!(e.kind, "duplicate-plugin");
    assert_eq!(
        e.reason,
        "a plugin named `timm` is already loaded; remove one of the two copies"
    );

    let e = add(
        &mut host,
        "late",
        &[("neck", "late", "n"), ("backbone", "timm", "x")],
    )
    .unwrap_err();
    assert_eq!(e.kind, "duplicate-prefix");
    assert!(
        e.reason
            .contains("plugin `timm` registered it first, so plugin `late` cannot"),
        "{}",
        e.reason
    );
    assert!(
        !host.contains("neck", "late_n"),
        "a refused plugin registers none of its sources"
    );

    let e = add(
        &mut host,
        "flat",
        &[("model_factory", "flat", "TimmModelFactory")],
    )
    .unwrap_err();
    assert_eq!(e.kind, "duplicate-prefix");
    assert!(e.reason.contains("from plugin `timm`"), "{}", e.reason);

    // The same prefix twice in one plugin was half registered before; now it is refused
    // as a whole.
    let e = add(
        &mut host,
        "twice",
        &[("decoder", "twice", "a"), ("decoder", "twice", "b")],
    )
    .unwrap_err();
    assert_eq!(e.kind, "invalid-manifest");
    assert!(e.reason.ends_with("twice"), "{}", e.reason);
    assert!(!host.contains("decoder", "twice_a"));

    let e = add(&mut host, "odd", &[("head", "odd", "a")]).unwrap_err();
    assert_eq!(e.kind, "invalid-manifest");
    assert!(e.reason.starts_with("plugin `odd`: "), "{}", e.reason);

    let (m, mut s) = plugin("undeclared", &[("backbone", "undeclared", "a")]);
    s.push(terrahost_plugin_api::SourceEntry {
        registry: "neck".into(),
        prefix: "undeclared".into(),
        source: source("undeclared", vec![entry("n")]),
    });
    let e = host.try_add_plugin(m, None, s).unwrap_err();
    assert_eq!(e.kind, "invalid-manifest");
    assert!(e.reason.contains("does not declare"), "{}", e.reason);
    assert!(!host.contains("backbone", "undeclared_a"));

    assert_eq!(
        host.plugins()
            .iter()
            .map(|p| p.manifest.name.as_str())
            .collect::<Vec<_>>(),
        ["timm"]
    );
}
