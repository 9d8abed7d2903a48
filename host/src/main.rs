//! `terrahost`: list, inspect, build and run models from plugin registries.
mod cli;

use clap::Parser;
use std::process::ExitCode;
use std::sync::Mutex;

/// The last panic's message, one line (the hook keeps it; `main` reports it).
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Panics print nothing where they happen: the code that catches one (a scene, a
/// plugin call) turns it into an error of its own, and one that reaches `main` is
/// reported there as one line. Backtraces stay available with `RUST_BACKTRACE` in the
/// debug log (`-vv`).
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        let line = terrahost_index::meta::first_line(&msg);
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::debug!("panic{at}: {msg}");
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{line}{at}"));
    }));
}

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.globals.verbose);
    quiet_panics();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cli::run(args))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        // The reader of stdout went away (`terrahost list | head`): a quiet success.
        Ok(Err(e)) if cli::is_closed_stdout(&e) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!(
                "error: {}",
                terrahost::limits::explain_out_of_memory(&e.to_string())
            );
            ExitCode::FAILURE
        }
        Err(_) => {
            let what = LAST_PANIC
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default();
            if terrahost::limits::is_out_of_memory(&what) {
                eprintln!("error: {}", terrahost::limits::explain_out_of_memory(&what));
                return ExitCode::FAILURE;
            }
            eprintln!("error: terrahost stopped on an internal error ({what}); this is a bug, please report it with the command");
            ExitCode::from(70)
        }
    }
}
