//! The engine's command line (`terrahost-engine`, which the `terrahost` front `exec`s
//! with the user's arguments). Every command writes its result to stdout (only JSON
//! with `--json`) and its diagnostics to stderr. Results are written with `writeln!`
//! on a locked stdout and a failed write is returned as [`stdout_error`]; when the
//! reader went away (`| head`), `main` ends quietly with status 0
//! ([`terrahost_index::out`]). `plugins`, `list` and `show` are
//! normally answered by the front; the engine answers them too (the front hands it
//! names only a live source resolves), printing through the same code.
mod build;
mod list;
mod new_plugin;
mod plugins;
mod predict;
mod run;
mod show;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use terrahost::{
    plugins::{discover, scan, LoadOptions, Scanner},
    Host, HostError,
};
use terrahost_index::front;

/// A dynamic plugin host for TerraTorch-style model registries.
#[derive(Parser, Debug)]
#[command(name = "terrahost", bin_name = "terrahost", version, about, long_about = None)]
pub struct Cli {
    /// The global options (the front's, so both parse the same).
    #[command(flatten)]
    pub globals: front::Globals,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// `plugins`, `list`, `show`: the front's definitions.
    #[command(flatten)]
    Meta(front::Command),
    /// Builds an entry and reports what was built.
    Build {
        /// The registry.
        registry: String,
        /// The name, with or without prefix.
        name: String,
        /// The channel list decoders and necks take first, e.g. 64,128,256,512.
        #[arg(long, value_name = "C1,C2,...")]
        channels: Option<String>,
        /// Keyword arguments as a JSON object, e.g. '{"num_classes": 3}'.
        #[arg(long, value_name = "JSON")]
        args: Option<String>,
        /// Print JSON only.
        #[arg(long)]
        json: bool,
    },
    /// Builds a model from a TerraTorch config and runs it.
    Run(run::RunArgs),
    /// The plugin scanner terrahost runs in a child process (reports on fd 3).
    #[command(name = "__scan", hide = true)]
    Scan {
        /// The library files to probe.
        #[arg(trailing_var_arg = true)]
        files: Vec<PathBuf>,
    },
    /// Predicts GeoTIFF scenes as `terratorch predict` does (tiled, streamed).
    Predict(predict::PredictArgs),
    /// Creates a plugin crate (outside any workspace) with one entry and its tests.
    NewPlugin(new_plugin::NewPluginArgs),
}

/// Sets up `tracing` on stderr, as the front does.
pub fn init_logging(verbose: u8) {
    terrahost_index::front::init_logging(verbose);
}

/// The load options from the command line and the environment.
fn load_options(cli: &Cli) -> Result<LoadOptions, HostError> {
    let g = &cli.globals;
    let cache = front::cache_path(g.no_cache, g.cache.as_ref());
    let scan_timeout = front::scan_timeout(g.scan_timeout).map_err(HostError::Usage)?;
    let scanner = match std::env::var_os(scan::SCANNER_VAR).filter(|v| !v.is_empty()) {
        Some(p) => Scanner::Exe(p.into()),
        None => std::env::current_exe()
            .map(Scanner::Exe)
            .unwrap_or(Scanner::Auto),
    };
    Ok(LoadOptions {
        cache,
        rescan: matches!(
            cli.command,
            Command::Meta(front::Command::Plugins { rescan: true, .. })
        ),
        scan_timeout,
        scanner,
    })
}

/// Loads the plugins and runs the command.
pub fn run(cli: Cli) -> Result<(), HostError> {
    // Before any plugin runs: a model too large for the machine then fails at its first
    // allocation past the ceiling, with an error, instead of meeting the OOM killer.
    terrahost::limits::cap_process_memory();
    cli.globals.export_trust_options();
    if let Command::Scan { files } = &cli.command {
        scan::serve(files);
    }
    if let Command::NewPlugin(args) = &cli.command {
        return new_plugin::run(args);
    }
    if let Some(n) = cli.globals.threads {
        if n < 1 {
            return Err(HostError::Usage(format!(
                "--threads must be at least 1, got {n}"
            )));
        }
        tch::set_num_threads(n);
    }
    cli.globals.check_allowlist().map_err(HostError::Usage)?;
    let dirs = discover::plugin_dirs(&cli.globals.plugin_dirs);
    let options = load_options(&cli)?;
    let host = Host::load_with(&dirs, &options);
    front::warn_if_no_plugins(
        host.plugins().is_empty(),
        matches!(cli.command, Command::Meta(front::Command::Plugins { .. })),
        &dirs,
    );
    match cli.command {
        Command::Meta(front::Command::Plugins {
            json,
            strict,
            allowlist_out,
            ..
        }) => plugins::run(
            &host,
            &dirs,
            options.cache.as_deref(),
            json,
            strict,
            allowlist_out.as_deref(),
        ),
        Command::Meta(front::Command::List {
            registry,
            filter,
            json,
        }) => list::run(&host, registry.as_deref(), filter.as_deref(), json),
        Command::Meta(front::Command::Show {
            registry,
            name,
            json,
        }) => show::run(&host, &registry, &name, json),
        Command::Build {
            registry,
            name,
            channels,
            args,
            json,
        } => build::run(
            &host,
            &registry,
            &name,
            channels.as_deref(),
            args.as_deref(),
            json,
        ),
        Command::Run(args) => run::run(&host, &args),
        Command::Scan { .. } | Command::NewPlugin(_) => unreachable!("handled above"),
        Command::Predict(args) => predict::run(&host, &args),
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) -> Result<(), HostError> {
    terrahost_index::render::print_json(value).map_err(stdout_error)
}

/// The path a failed write to stdout names in [`HostError::Io`].
const STDOUT: &str = "<stdout>";

/// A failed write to stdout.
pub fn stdout_error(e: std::io::Error) -> HostError {
    HostError::io(STDOUT, e)
}

/// Whether `e` is stdout closed by its reader (`terrahost-engine list | head`): the
/// command ends quietly with status 0, as ripgrep does.
pub fn is_closed_stdout(e: &HostError) -> bool {
    matches!(e, HostError::Io { path, source }
        if path.as_os_str() == STDOUT && terrahost_index::out::is_closed(source))
}
