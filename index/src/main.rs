//! `terrahost`: the light front. It links no libtorch: `plugins`, `list`, `show` and
//! `--version` are answered here from the registry cache; every other command is
//! handed to `terrahost-engine` (beside this binary) with the same arguments.
use clap::Parser;
use std::process::ExitCode;
use terrahost_index::front::{self, Route};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if front::route(&args) == Route::Engine {
        // Returns only if the engine could not be started.
        eprintln!("error: {}", terrahost_index::engine::exec(&args));
        return ExitCode::FAILURE;
    }
    let cli = front::Cli::parse();
    front::init_logging(cli.globals.verbose);
    match front::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`terrahost list | head`): a quiet success.
        Err(e) if e.is_closed_stdout() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
