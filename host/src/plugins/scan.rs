//! The out-of-process scan. The host side (spawning the scanner, the protocol, blame
//! and replay) is [`terrahost_index::scan`], re-exported here, which the front uses
//! too; this module adds the scanner child itself: `terrahost-engine __scan FILE...`.
use super::load;
use std::io::Write;
use std::path::PathBuf;
pub use terrahost_index::scan::*;

/// The plugin-api and libtorch versions this engine checks plugins against.
pub fn versions() -> terrahost_index::scan::Versions {
    terrahost_index::scan::Versions {
        api_version: terrahost_plugin_api::API_VERSION.to_owned(),
        torch_version: terrahost_plugin_api::TORCH_VERSION.to_owned(),
    }
}

/// The scanner's main: probes `files` in order and reports on fd 3. Never returns.
pub fn serve(files: &[PathBuf]) -> ! {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl on a descriptor number only queries it.
    if unsafe { libc::fcntl(PROTOCOL_FD, libc::F_GETFD) } < 0 {
        eprintln!(
            "terrahost-engine {SCAN_COMMAND} is the plugin scanner that terrahost runs itself; it reports on file descriptor {PROTOCOL_FD}, which is not open"
        );
        std::process::exit(2);
    }
    // SAFETY: fd 3 is open (checked above) and owned by nothing else in this process.
    let mut out = unsafe { std::fs::File::from_raw_fd(PROTOCOL_FD) };
    let mut send = |m: &Message| {
        let mut line = serde_json::to_vec(m).expect("messages serialize");
        line.push(b'\n');
        if out.write_all(&line).is_err() {
            // The host went away: nothing left to report to.
            unsafe { libc::_exit(3) };
        }
    };
    let v = versions();
    send(&Message::Hello {
        protocol: PROTOCOL,
        host_version: env!("CARGO_PKG_VERSION").to_owned(),
        api_version: v.api_version,
        torch_version: v.torch_version,
    });
    for (index, file) in files.iter().enumerate() {
        send(&Message::Begin { index });
        let outcome = load::describe(file);
        send(&Message::Done { index, outcome });
    }
    send(&Message::End);
    // _exit: the libraries' destructors and atexit handlers do not run; whatever they
    // would do can no longer change the report.
    unsafe { libc::_exit(0) }
}
