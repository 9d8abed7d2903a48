//! `terrahost new-plugin NAME [--dir DIR]`: writes a plugin crate outside any workspace
//! that builds on the first try: one real entry (a neck), a test that runs it in
//! process and through the installed host, and a `.cargo/config.toml` that points tch's
//! build at the libtorch this engine links.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use terrahost::HostError;

/// The plugin-api version this engine loads; the crate depends on it.
const API_VERSION: &str = terrahost_plugin_api::API_VERSION;

/// What `new-plugin` was asked for.
#[derive(clap::Args, Debug)]
pub struct NewPluginArgs {
    /// The plugin's name: its crate name and its registry prefix (lowercase letters,
    /// digits and `_`; it must start with a letter).
    pub name: String,
    /// The directory the crate is created in (as DIR/NAME); default: the current one.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The plugin-api sources to depend on by path; default: those this engine was built
    /// from, when they are still there (otherwise the crate depends on the version alone).
    #[arg(long, value_name = "DIR")]
    pub plugin_api: Option<PathBuf>,
}

/// Writes the crate and says what to do next.
pub fn run(args: &NewPluginArgs) -> Result<(), HostError> {
    check_name(&args.name)?;
    let parent = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let root = parent.join(&args.name);
    if root.exists() {
        return Err(HostError::Usage(format!(
            "{} already exists; choose another name or --dir, or remove it",
            root.display()
        )));
    }
    let api = match &args.plugin_api {
        Some(p) => Some(canonical_api_dir(p)?),
        None => default_api_dir(),
    };
    let libtorch = libtorch_dir();
    let files = [
        ("Cargo.toml", cargo_toml(&args.name, api.as_deref())),
        (".cargo/config.toml", cargo_config(&libtorch)),
        (".gitignore", "/target\n".to_owned()),
        ("build.rs", BUILD_RS.to_owned()),
        ("src/lib.rs", lib_rs(&args.name)),
        ("tests/plugin.rs", test_rs(&args.name)),
    ];
    for (rel, text) in &files {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        fs::write(&path, text).map_err(|e| io_error(&path, e))?;
    }
    let so = format!("lib{}.so", args.name);
    let print = || -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        let (dir, name) = (root.display(), &args.name);
        writeln!(
            out,
            "created {dir} (plugin `{name}`, plugin-api {API_VERSION})"
        )?;
        writeln!(
            out,
            "  cd {dir} && cargo test          # runs the entry in process and through terrahost"
        )?;
        writeln!(
            out,
            "  cargo build --release && cp target/release/{so} ~/.local/share/terrahost/plugins/"
        )?;
        writeln!(out, "  terrahost list neck            # {name}_Scale")?;
        if api.is_none() {
            writeln!(
                out,
                "note: no plugin-api sources found; Cargo.toml depends on terrahost-plugin-api {API_VERSION} \
                 from a registry (pass --plugin-api DIR to use a checkout)"
            )?;
        }
        Ok(())
    };
    print().map_err(crate::cli::stdout_error)?;
    Ok(())
}

/// A name that is a crate name, a library file name and a registry prefix at once.
fn check_name(name: &str) -> Result<(), HostError> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let reserved = ["terratorch", "timm", "smp", "mmseg", "test", "core", "std"];
    if !ok || reserved.contains(&name) {
        return Err(HostError::Usage(format!(
            "plugin name `{name}` is not usable: it is the crate name and the registry prefix, so it must start \
             with a lowercase letter, hold only lowercase letters, digits and `_`, and not be one of {}",
            reserved.join(", ")
        )));
    }
    Ok(())
}

fn io_error(path: &Path, e: std::io::Error) -> HostError {
    HostError::Usage(format!("cannot write {}: {e}", path.display()))
}

fn canonical_api_dir(p: &Path) -> Result<PathBuf, HostError> {
    let dir = p
        .canonicalize()
        .map_err(|e| HostError::Usage(format!("--plugin-api {}: {e}", p.display())))?;
    if !dir.join("Cargo.toml").is_file() {
        return Err(HostError::Usage(format!(
            "--plugin-api {}: no Cargo.toml there; give the plugin-api directory of a terrahost checkout",
            p.display()
        )));
    }
    Ok(dir)
}

/// The plugin-api sources of the checkout this engine was built from, if still there.
fn default_api_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
    dir.join("Cargo.toml")
        .is_file()
        .then(|| dir.canonicalize().ok())
        .flatten()
}

/// The libtorch directory (with `lib/` and `include/`) this engine links, spelled as
/// its build spelled it (tch's build script compares the value, so the same string lets
/// a build directory shared with the engine's reuse libtorch's compiled bindings).
fn libtorch_dir() -> PathBuf {
    let lib = Path::new(terrahost_plugin_api::TORCH_LIB_DIR);
    lib.parent().unwrap_or(lib).to_path_buf()
}

fn toml_str(p: &Path) -> String {
    serde_json::Value::String(p.display().to_string()).to_string()
}

fn cargo_toml(name: &str, api: Option<&Path>) -> String {
    let dep = match api {
        Some(p) => format!("{{ version = \"{API_VERSION}\", path = {} }}", toml_str(p)),
        None => format!("\"{API_VERSION}\""),
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# cdylib: the plugin library terrahost loads; rlib: what this crate's tests link.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The plugin ABI and SDK; tch (=0.26.0, libtorch 2.13.0) and serde_json come re-exported.
terrahost-plugin-api = {dep}

# tch's Rust glue is much faster with optimisations, and debug info of the
# dependencies only makes the build big.
[profile.dev.package."*"]
opt-level = 1
debug = false

[profile.dev]
debug = "line-tables-only"

# A crate of its own, even when created inside another workspace's directory.
[workspace]
"#
    )
}

fn cargo_config(libtorch: &Path) -> String {
    format!(
        r#"# Where tch's build finds libtorch: the one terrahost-engine links (libtorch 2.13.0).
# A plugin must link the very same libtorch as the host that loads it.
[env]
LIBTORCH = {}
"#,
        toml_str(libtorch)
    )
}

/// The crate's build script: an rpath to libtorch, so that its test binaries (which link
/// libtorch) run without `LD_LIBRARY_PATH`; inside the host libtorch is already loaded.
const BUILD_RS: &str = r#"//! Embeds an rpath to the libtorch of `LIBTORCH` (.cargo/config.toml), so that this
//! crate's test binaries find it without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
    }
}
"#;

fn lib_rs(name: &str) -> String {
    format!(
        r#"//! The `{name}` terrahost plugin: a neck registered as `{name}_Scale`.
use terrahost_plugin_api::reexports::serde_json::json;
use terrahost_plugin_api::reexports::tch::{{nn, Device, Tensor}};
use terrahost_plugin_api::sdk::{{Built, Catalog, Entry, Model}};
use terrahost_plugin_api::{{ParamType, Result}};

/// Multiplies every feature map by a learned scale per channel.
struct Scale {{
    weights: Vec<Tensor>,
    channels: Vec<i64>,
}}

impl Model for Scale {{
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {{
        // [B, C, H, W] * [1, C, 1, 1], map by map.
        xs.iter()
            .zip(&self.weights)
            .map(|(x, w)| Ok(x.f_mul(&w.f_view([1, -1, 1, 1])?)?))
            .collect()
    }}

    /// A neck reports the channels of what it returns: here, what it was given.
    fn out_channels(&self) -> Vec<i64> {{
        self.channels.clone()
    }}
}}

fn necks() -> Catalog {{
    Catalog::new("{name}").add(
        Entry::new(
            "Scale",
            "multiplies each feature map by a learned per-channel scale",
            |ctx| {{
                let init: f64 = ctx.args.get("init")?;
                let vs = nn::VarStore::new(Device::Cpu);
                let scales = vs.root() / "scales";
                let weights = ctx
                    .channels
                    .iter()
                    .enumerate()
                    // state_dict keys `scales.0`, `scales.1`, ...
                    .map(|(i, &c)| scales.var(&i.to_string(), &[c], nn::Init::Const(init)))
                    .collect();
                let model = Scale {{
                    weights,
                    channels: ctx.channels.clone(),
                }};
                Ok(Built::new(ctx.qualified(), vs, model).boxed())
            }},
        )
        .takes_channels()
        .opt(
            "init",
            ParamType::FLOAT,
            json!(1.0),
            "initial value of every scale",
        ),
    )
}}

terrahost_plugin_api::declare_plugin! {{
    name: "{name}",
    version: env!("CARGO_PKG_VERSION"),
    sources: [("neck", "{name}", necks())],
}}
terrahost_plugin_api::export_plugin!(crate);
"#
    )
}

fn test_rs(name: &str) -> String {
    format!(
        r#"//! The entry, run in process and through the terrahost that is installed.
use std::path::PathBuf;
use std::process::Command;
use terrahost_plugin_api::reexports::serde_json::json;
use terrahost_plugin_api::reexports::tch::{{Device, Kind, Tensor}};
use terrahost_plugin_api::sdk;

/// The entry, as users name it: prefix and name.
const ENTRY: &str = "{name}_Scale";
/// The library `cargo build` makes of this crate.
const LIBRARY: &str = "lib{name}.so";

#[test]
fn scale_multiplies_every_map_by_its_channels_scales() {{
    let args = json!({{"init": 2.0}})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let sources = {name}::plugin_sources().unwrap();
    let scale = sdk::build_in_process(&sources, "neck", ENTRY, &args, Some(&[4, 8])).unwrap();
    assert_eq!(scale.out_channels(), vec![4, 8]);
    let xs = [
        Tensor::randn([2, 4, 3, 3], (Kind::Float, Device::Cpu)),
        Tensor::randn([2, 8, 1, 1], (Kind::Float, Device::Cpu)),
    ];
    let ys = scale.forward(&xs).unwrap();
    for (x, y) in xs.iter().zip(&ys) {{
        assert!(y.allclose(&(x * 2.0), 1e-6, 1e-6, false));
    }}
    let keys: Vec<String> = scale.state_dict().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["scales.0", "scales.1"]);
}}

/// The library `cargo test` built, loaded by the real host: `terrahost` on PATH, or the
/// one `TERRAHOST` names. Skipped (with a note) when there is none.
#[test]
fn the_host_loads_and_builds_the_library() {{
    let terrahost = std::env::var_os("TERRAHOST").unwrap_or_else(|| "terrahost".into());
    // `cargo test` links the rlib; the plugin library is built here.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--lib"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(built.success(), "cargo build --lib failed");
    // target/debug/deps/<test> -> target/debug/lib{name}.so
    let exe = std::env::current_exe().unwrap();
    let so: PathBuf = exe.parent().and_then(|d| d.parent()).unwrap().join(LIBRARY);
    assert!(so.is_file(), "{{}} was not built", so.display());
    let dir = std::env::temp_dir().join(format!("{{ENTRY}}-test-{{}}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&so, dir.join(LIBRARY)).unwrap();
    let out = Command::new(&terrahost)
        .arg("--plugin-dir")
        .arg(&dir)
        .args([
            "--no-cache",
            "build",
            "neck",
            ENTRY,
            "--channels",
            "4,8",
            "--json",
        ])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = match out {{
        Ok(out) => out,
        Err(e) => {{
            eprintln!(
                "note: {{}} not run ({{e}}); set TERRAHOST to a terrahost binary",
                terrahost.to_string_lossy()
            );
            return;
        }}
    }};
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{{}}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built: terrahost_plugin_api::reexports::serde_json::Value =
        terrahost_plugin_api::reexports::serde_json::from_str(&stdout).unwrap();
    assert_eq!(built["out_channels"], json!([4, 8]), "{{stdout}}");
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_crate_names_and_prefixes() {
        for good in ["mine", "geo_net2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Mine", "2net", "my-net", "timm", "a b"] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("lowercase"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_crate_depends_on_plugin_api_alone() {
        let toml = cargo_toml("mine", Some(Path::new("/src/terrahost/plugin-api")));
        let deps = toml.split("[dependencies]").nth(1).unwrap();
        let deps = deps.split("\n[").next().unwrap();
        let lines: Vec<&str> = deps
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(
            lines,
            [format!(
                "terrahost-plugin-api = {{ version = \"{API_VERSION}\", path = \"/src/terrahost/plugin-api\" }}"
            )]
        );
    }
}
