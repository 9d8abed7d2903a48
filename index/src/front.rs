//! The `terrahost` front: it answers `plugins`, `list`, `show` and `--version` from the
//! registry cache (running the engine's scanner only for new or changed files) and
//! `exec`s `terrahost-engine` for everything else, with the same arguments.
use crate::cache::{self, Validity};
use crate::discover::{self, FileKey};
use crate::engine;
use crate::gather::{self, CacheUse};
use crate::meta::{kind, Outcome, Refusal};
use crate::out::Failure;
use crate::render::{self, Group, LoadedRow, RejectedRow};
use crate::resolve::Lookup;
use crate::scan::{self, Scanned};
use crate::view::{self, RegistryView, View};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

/// The global options, the same for both binaries (the engine flattens this struct
/// into its own command line).
#[derive(clap::Args, Debug)]
pub struct Globals {
    /// A directory to load plugins from (repeatable). Default: $TERRAHOST_PLUGIN_PATH
    /// (colon-separated), else `plugins/` beside the directory of this executable,
    /// then ~/.local/share/terrahost/plugins.
    #[arg(long = "plugin-dir", value_name = "DIR", global = true)]
    pub plugin_dirs: Vec<PathBuf>,

    /// The number of threads libtorch uses for CPU work (default: libtorch's choice,
    /// normally the number of cores).
    #[arg(long, value_name = "N", global = true)]
    pub threads: Option<i32>,

    /// The registry cache file. Default: $TERRAHOST_CACHE, else
    /// $XDG_CACHE_HOME/terrahost/registry.json, else ~/.cache/terrahost/registry.json.
    #[arg(long, value_name = "PATH", global = true)]
    pub cache: Option<PathBuf>,

    /// Use no registry cache: scan every plugin file in a child process.
    #[arg(long, global = true, conflicts_with = "cache")]
    pub no_cache: bool,

    /// Seconds one plugin file may take to scan before it is refused (default
    /// $TERRAHOST_SCAN_TIMEOUT, else 30).
    #[arg(long, value_name = "SECS", global = true)]
    pub scan_timeout: Option<f64>,

    /// More logging on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Load plugin files even when someone other than root or you could have written
    /// them or a directory above them (by default they are refused, as OpenSSH's
    /// StrictModes refuses such key files). Also $TERRAHOST_ALLOW_INSECURE_PLUGINS=1.
    #[arg(long, global = true)]
    pub allow_insecure_plugins: bool,

    /// Load only the libraries whose sha256 is listed in FILE (`sha256sum` lines; write
    /// one with `plugins --allowlist-out FILE`). Also $TERRAHOST_PLUGIN_ALLOWLIST.
    #[arg(long, value_name = "FILE", global = true)]
    pub allowlist: Option<PathBuf>,
}

impl Globals {
    /// Puts the plugin-trust options into the environment, where discovery, the
    /// scanner child and the engine's loader read them. Called first thing, while the
    /// process has one thread.
    pub fn export_trust_options(&self) {
        if self.allow_insecure_plugins {
            std::env::set_var(crate::trust::ALLOW_INSECURE_VAR, "1");
        }
        if let Some(a) = &self.allowlist {
            std::env::set_var(crate::integrity::ALLOWLIST_VAR, a);
        }
    }

    /// Checks that the allowlist in force (flag or environment) can be read, so a typo
    /// is one error instead of every plugin refused.
    pub fn check_allowlist(&self) -> Result<(), String> {
        crate::integrity::Allowlist::from_env().map(|_| ())
    }
}

/// The front's command line: the global options and the commands it answers.
#[derive(Parser, Debug)]
#[command(name = "terrahost", version, about = "A dynamic plugin host for TerraTorch-style model registries.", long_about = None)]
pub struct Cli {
    /// The global options.
    #[command(flatten)]
    pub globals: Globals,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands the front answers itself (the engine has them too, from this enum).
#[derive(Subcommand, Debug)]
pub enum Command {
    /// The plugins that loaded and the files that were refused, with reasons.
    Plugins {
        /// Print JSON only.
        #[arg(long)]
        json: bool,
        /// Forget the registry cache and scan every file again.
        #[arg(long)]
        rescan: bool,
        /// Exit with status 1 when any plugin file is refused (after printing
        /// everything), for deployment checks.
        #[arg(long)]
        strict: bool,
        /// Write the allowlist (`sha256sum` lines) of the libraries that loaded to FILE,
        /// for `--allowlist FILE` later.
        #[arg(long, value_name = "FILE")]
        allowlist_out: Option<PathBuf>,
    },
    /// The registries and their sources (all of them, or one).
    List {
        /// backbone, neck, decoder, full_model or model_factory.
        registry: Option<String>,
        /// Only names matching this glob (matched against `name` and `prefix_name`).
        #[arg(long)]
        filter: Option<String>,
        /// Print JSON only.
        #[arg(long)]
        json: bool,
    },
    /// An entry's documentation and parameters (types, defaults, docs).
    Show {
        /// The registry.
        registry: String,
        /// The name, with or without prefix.
        name: String,
        /// Print JSON only.
        #[arg(long)]
        json: bool,
    },
}

/// The commands the front answers; everything else goes to the engine.
pub const FRONT_COMMANDS: [&str; 3] = ["plugins", "list", "show"];

/// Global options that take a value (as `--opt VALUE`).
const VALUED: [&str; 5] = [
    "--plugin-dir",
    "--cache",
    "--scan-timeout",
    "--threads",
    "--allowlist",
];

/// Who answers `args` (the arguments after the program name).
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// The front: one of [`FRONT_COMMANDS`], or `--version`.
    Front,
    /// The engine, with the same arguments.
    Engine,
}

/// Finds the subcommand in `args`: the first argument that is neither an option nor
/// the value of a global option. `--version` before any subcommand is the front's;
/// anything the front does not know (`--help`, an unknown option) is the engine's.
pub fn route(args: &[OsString]) -> Route {
    let mut i = 0;
    while i < args.len() {
        let Some(a) = args[i].to_str() else {
            return Route::Engine;
        };
        if a == "--" {
            return Route::Engine;
        }
        if VALUED.contains(&a) {
            i += 2;
            continue;
        }
        if a.starts_with("--") && VALUED.iter().any(|v| a.starts_with(&format!("{v}="))) {
            i += 1;
            continue;
        }
        if a == "--no-cache"
            || a == "--allow-insecure-plugins"
            || a == "--verbose"
            || (a.starts_with('-') && a.len() > 1 && a[1..].chars().all(|c| c == 'v'))
        {
            i += 1;
            continue;
        }
        if a == "--version" || a == "-V" {
            return Route::Front;
        }
        if a.starts_with('-') {
            return Route::Engine;
        }
        return if FRONT_COMMANDS.contains(&a) {
            Route::Front
        } else {
            Route::Engine
        };
    }
    Route::Engine
}

/// Sets up `tracing` on stderr: RUST_LOG if set, else warn/info/debug/trace by -v count.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// The cache file from the options and the environment (`None`: no cache).
pub fn cache_path(no_cache: bool, cli: Option<&PathBuf>) -> Option<PathBuf> {
    if no_cache {
        None
    } else if let Some(p) = cli {
        Some(p.clone())
    } else {
        match cache::path_from_env() {
            Some(p) => p,
            None => cache::default_path(),
        }
    }
}

/// The scan timeout from `--scan-timeout` or the environment.
pub fn scan_timeout(cli: Option<f64>) -> Result<std::time::Duration, String> {
    match cli {
        Some(s) if s.is_finite() && s > 0.0 => Ok(std::time::Duration::from_secs_f64(s)),
        Some(s) => Err(format!(
            "--scan-timeout must be a positive number of seconds, got {s}"
        )),
        None => Ok(scan::timeout_from_env()),
    }
}

/// Why every file is refused when there is no scanner at all.
pub fn no_scanner(files: &[PathBuf]) -> Scanned {
    Scanned {
        outcomes: files
            .iter()
            .map(|_| {
                Outcome::Refused(Refusal::new(
                    kind::SCANNER_FAILED,
                    format!(
                        "no plugin scanner: set {} to the terrahost-engine binary that probes new plugin files",
                        scan::SCANNER_VAR
                    ),
                ))
            })
            .collect(),
        versions: None,
    }
}

/// Warns that no plugin loaded from `dirs`, except for the `plugins` command (whose
/// output says so itself). Both binaries call it, so their stderr stays the same.
pub fn warn_if_no_plugins(none_loaded: bool, plugins_command: bool, dirs: &[PathBuf]) {
    if none_loaded && !plugins_command {
        tracing::warn!(
            "no plugins loaded from {}; install plugin libraries there or pass --plugin-dir",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// `plugins --strict`: the error that ends the command with status 1 when `refused`
/// files were refused (`None` when none was). Both binaries use it.
pub fn strict_failure(refused: usize) -> Option<String> {
    match refused {
        0 => None,
        1 => Some("1 plugin file was refused (plugins --strict)".to_owned()),
        n => Some(format!("{n} plugin files were refused (plugins --strict)")),
    }
}

/// Runs a front command. Errors are one line for the user; a closed stdout is
/// [`Failure::is_closed_stdout`], which `main` ends quietly with status 0.
pub fn run(cli: Cli) -> Result<(), Failure> {
    let Cli {
        globals: g,
        command,
    } = cli;
    if let Some(n) = g.threads {
        if n < 1 {
            return Err(format!("--threads must be at least 1, got {n}").into());
        }
    }
    g.export_trust_options();
    g.check_allowlist()?;
    let dirs = discover::plugin_dirs(&g.plugin_dirs);
    let cache = cache_path(g.no_cache, g.cache.as_ref());
    let timeout = scan_timeout(g.scan_timeout)?;
    // The scans and the cache are the engine's: valid while the engine file is the same.
    let engine_key = engine::find_engine().and_then(|e| FileKey::of(&e).ok());
    let scanner = scan::find_scanner();
    let cache_use = CacheUse {
        path: cache.as_deref(),
        rescan: matches!(command, Command::Plugins { rescan: true, .. }),
        validity: Validity::Engine(engine_key),
    };
    let found = gather::gather(&dirs, &cache_use, &mut |files| match &scanner {
        Some(exe) => scan::scan_files(exe, files, timeout),
        None => no_scanner(files),
    });
    let view = View::new(&found);
    warn_if_no_plugins(
        view.plugins().is_empty(),
        matches!(command, Command::Plugins { .. }),
        &dirs,
    );
    match command {
        Command::Plugins {
            json,
            strict,
            allowlist_out,
            ..
        } => {
            let loaded: Vec<LoadedRow> = view
                .plugins()
                .iter()
                .map(|p| LoadedRow {
                    name: &p.manifest.name,
                    version: &p.manifest.version,
                    path: Some(&p.path),
                    api_version: &p.manifest.api_version,
                    torch_version: &p.manifest.torch_version,
                    sources: &p.sources,
                    sha256: p.sha256.as_deref(),
                })
                .collect();
            if let Some(out) = &allowlist_out {
                render::allowlist_out(out, &loaded)?;
            }
            let rejected: Vec<RejectedRow> = view
                .rejected()
                .iter()
                .map(|r| RejectedRow {
                    path: &r.path,
                    kind: &r.refusal.kind,
                    reason: &r.refusal.reason,
                })
                .collect();
            render::plugins(&dirs, cache.as_deref(), &loaded, &rejected, json)?;
            match strict.then(|| strict_failure(rejected.len())).flatten() {
                Some(m) => Err(m.into()),
                None => Ok(()),
            }
        }
        Command::List {
            registry,
            filter,
            json,
        } => render::list(registry.as_deref(), filter.as_deref(), json, &|r| {
            groups(&view, r)
        }),
        Command::Show {
            registry,
            name,
            json,
        } => {
            if view::needs_engine(&name) {
                return Err(engine::exec(&std::env::args_os().skip(1).collect::<Vec<_>>()).into());
            }
            match view.describe(&registry, &name) {
                Ok((qualified, entry)) => Ok(render::show(&registry, &qualified, entry, json)?),
                Err(Lookup::NotFound(m) | Lookup::NotSupported(m)) => Err(m.into()),
            }
        }
    }
}

/// The sources of `registry` as listed.
fn groups(view: &View, registry: &str) -> Option<Vec<Group>> {
    let sources = match view.registry(registry)? {
        RegistryView::Multi(r) => r.sources(),
        RegistryView::Flat(r) => r.sources(),
    };
    Some(
        sources
            .iter()
            .map(|s| Group {
                prefix: s.prefix.clone(),
                plugin: s.plugin.clone(),
                names: crate::resolve::SourceView::names(s),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(args: &[&str]) -> Route {
        route(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn metadata_commands_stay_and_the_rest_goes_to_the_engine() {
        assert_eq!(r(&["list", "--json"]), Route::Front);
        assert_eq!(r(&["--plugin-dir", "list", "show", "x", "y"]), Route::Front);
        assert_eq!(
            r(&["--plugin-dir", "d", "-vv", "--no-cache", "plugins"]),
            Route::Front
        );
        assert_eq!(
            r(&["--cache=/c", "--threads", "2", "show", "neck", "x"]),
            Route::Front
        );
        assert_eq!(r(&["--version"]), Route::Front);
        assert_eq!(r(&["--plugin-dir", "run", "build"]), Route::Engine);
        assert_eq!(r(&["run", "--config", "x"]), Route::Engine);
        assert_eq!(r(&["predict"]), Route::Engine);
        assert_eq!(r(&["--help"]), Route::Engine);
        assert_eq!(r(&["__scan", "--", "a.so"]), Route::Engine);
        assert_eq!(r(&["--frobnicate", "list"]), Route::Engine);
        assert_eq!(r(&[]), Route::Engine);
    }
}
