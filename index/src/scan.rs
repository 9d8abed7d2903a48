//! The out-of-process scan, host side. A library that is new, or changed since it was
//! last scanned, is probed by a child process (the scanner: `terrahost-engine __scan
//! FILE...`, whose side is `terrahost::plugins::scan::serve`), never by the host
//! itself: whatever its initialisers do (abort, crash, `exit`, loop, print) happens to
//! the child. Both the front and the engine run scans through this module.
//!
//! **Protocol.** The child writes one JSON message per line to file descriptor 3, a
//! pipe only it and the host share; its stdout goes to /dev/null and its stderr to the
//! host, which keeps the last lines for the reason. The messages are `hello` (protocol
//! version, and the plugin-api and libtorch versions it checks against), then per file
//! `begin` and `done` (the [`Outcome`]), then `end`.
//!
//! **Blame and replay** (GStreamer's way). One child scans every file in turn. If it
//! dies, exits, stalls past the timeout or writes anything that is not a well-formed
//! message, the file it had begun is refused with the reason (the signal, the exit
//! status, the timeout, the protocol error), the child is killed, and a fresh one
//! carries on with the files after it. A child that fails before beginning any file
//! is the scanner's fault, not a file's: those files are refused as `scanner-failed`
//! and that refusal is never cached.
use crate::meta::{first_line, kind, Outcome, Refusal};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The plugin-api and libtorch versions a scanner checks plugins against (it says
/// them in its `hello`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// The plugin-api version.
    pub api_version: String,
    /// The libtorch version.
    pub torch_version: String,
}

/// The protocol's version; a scanner that speaks another is refused. 2: `hello` names
/// the scanner's plugin-api and libtorch versions, sources carry their refused names.
/// 3: a described plugin carries the sha256 of the bytes the scanner loaded.
pub const PROTOCOL: u32 = 3;

/// The hidden subcommand that runs the scanner.
pub const SCAN_COMMAND: &str = "__scan";

/// The file descriptor the scanner writes its messages to.
pub const PROTOCOL_FD: i32 = 3;

/// The environment variable with the scan timeout per file, in seconds.
pub const TIMEOUT_VAR: &str = "TERRAHOST_SCAN_TIMEOUT";

/// The environment variable naming the scanner executable (default: the
/// `terrahost-engine` binary, see [`find_scanner`]).
pub const SCANNER_VAR: &str = "TERRAHOST_SCANNER";

/// The default scan timeout per file.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the scanner itself may take to start (map libtorch, say hello) before it
/// is given up on: its own cost, not a file's, so not the per-file timeout.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// One message of the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case")]
pub enum Message {
    /// The first message: who is speaking, and what it checks plugins against.
    Hello {
        /// [`PROTOCOL`].
        protocol: u32,
        /// The scanner's terrahost version.
        host_version: String,
        /// The plugin-api version it checks plugins against.
        #[serde(default)]
        api_version: String,
        /// The libtorch version it checks plugins against.
        #[serde(default)]
        torch_version: String,
    },
    /// The child starts on file `index` (of its argument list).
    Begin {
        /// The file's position in the argument list.
        index: usize,
    },
    /// What the child found for file `index`.
    Done {
        /// The file's position in the argument list.
        index: usize,
        /// What it found.
        outcome: Outcome,
    },
    /// Every file is done.
    End,
}

/// The scan timeout: `TERRAHOST_SCAN_TIMEOUT` (seconds, may be fractional) if set and
/// valid, else 30 s.
pub fn timeout_from_env() -> Duration {
    std::env::var(TIMEOUT_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// The scanner executable: `TERRAHOST_SCANNER` if set; else this executable if it is
/// `terrahost-engine`; else the engine [`crate::engine::find_engine`] finds (beside
/// this executable, or one directory up, where cargo puts it relative to test binaries
/// in `target/<profile>/deps`).
pub fn find_scanner() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(SCANNER_VAR).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    if exe
        .file_name()
        .is_some_and(|n| n == crate::engine::engine_file_name().as_str())
    {
        return Some(exe);
    }
    crate::engine::find_engine()
}

// ---------------------------------------------------------------- the host side

/// What a scan found: one outcome per file, in order, and the versions the scanner
/// checked them against (`None` when no scanner said hello).
pub struct Scanned {
    /// One outcome per file.
    pub outcomes: Vec<Outcome>,
    /// The scanner's versions, from its `hello`.
    pub versions: Option<Versions>,
}

/// Scans `files` with the scanner executable `scanner`; one outcome per file, in order.
pub fn scan(scanner: &Path, files: &[PathBuf], timeout: Duration) -> Vec<Outcome> {
    scan_files(scanner, files, timeout).outcomes
}

/// [`scan`], with the scanner's versions. With no files, it only asks the scanner who
/// it is (hello, end).
pub fn scan_files(scanner: &Path, files: &[PathBuf], timeout: Duration) -> Scanned {
    let _span = tracing::info_span!("scan", files = files.len()).entered();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; files.len()];
    let mut versions = None;
    let mut next = 0;
    loop {
        let batch: Vec<usize> = (next..files.len()).collect();
        let run = run_child(scanner, &files[next..], timeout);
        versions = versions.or(run.versions);
        for (i, o) in run.done {
            outcomes[next + i] = Some(o);
        }
        match run.failure {
            None => break,
            Some(Failure::Blame(i, refusal)) => {
                tracing::warn!(file = %files[next + i].display(), reason = %refusal.reason, "scan failed");
                outcomes[next + i] = Some(Outcome::Refused(refusal));
                next += i + 1;
                if next >= files.len() {
                    break;
                }
            }
            Some(Failure::Scanner(reason)) => {
                for &i in &batch {
                    outcomes[i].get_or_insert_with(|| {
                        Outcome::Refused(Refusal::new(kind::SCANNER_FAILED, reason.clone()))
                    });
                }
                break;
            }
        }
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Outcome::Refused(Refusal::new(
                    kind::PROTOCOL,
                    "the scanner ended without reporting on this file",
                ))
            })
        })
        .collect();
    Scanned { outcomes, versions }
}

enum Failure {
    /// File `i` of the batch is to blame.
    Blame(usize, Refusal),
    /// The scanner itself failed.
    Scanner(String),
}

struct Run {
    done: Vec<(usize, Outcome)>,
    failure: Option<Failure>,
    versions: Option<Versions>,
}

enum Event {
    Line(Vec<u8>),
    Eof,
}

fn spawn(scanner: &Path, files: &[PathBuf]) -> std::io::Result<(Child, std::io::PipeReader)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (reader, writer) = std::io::pipe()?;
    let fd = writer.as_raw_fd();
    let mut cmd = Command::new(scanner);
    cmd.arg(SCAN_COMMAND)
        .arg("--")
        .args(files)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe calls: dup2 and fcntl.
    unsafe {
        cmd.pre_exec(move || {
            if fd == PROTOCOL_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, PROTOCOL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(writer); // the child holds the only write end now: EOF when it exits
    Ok((child, reader))
}

/// One child over `files`: what it reported, and how it ended.
fn run_child(scanner: &Path, files: &[PathBuf], timeout: Duration) -> Run {
    let mut run = Run {
        done: Vec::new(),
        failure: None,
        versions: None,
    };
    let (mut child, reader) = match spawn(scanner, files) {
        Ok(c) => c,
        Err(e) => {
            run.failure = Some(Failure::Scanner(format!(
                "cannot start the plugin scanner {}: {e}; set {SCANNER_VAR} to the terrahost-engine binary",
                scanner.display()
            )));
            return run;
        }
    };
    let stderr = Arc::new(Mutex::new(Vec::<u8>::new()));
    if let Some(mut pipe) = child.stderr.take() {
        let keep = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut k = keep.lock().unwrap();
                k.extend_from_slice(&buf[..n]);
                let len = k.len();
                if len > 16 * 1024 {
                    k.drain(..len - 8 * 1024);
                }
            }
        });
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(reader);
        loop {
            let mut line = Vec::new();
            match lines.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Event::Eof);
                    return;
                }
                Ok(_) => {
                    if tx.send(Event::Line(line)).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let mut hello = false;
    let mut current: Option<usize> = None;
    let mut last_begun: Option<usize> = None;
    let mut deadline = Instant::now() + timeout.max(STARTUP_TIMEOUT);
    let blame = |at: Option<usize>, refusal: Refusal, hello: bool| match at {
        Some(i) => Failure::Blame(i, refusal),
        None if hello => Failure::Scanner(format!(
            "the plugin scanner failed between files: {}",
            refusal.reason
        )),
        None => Failure::Scanner(format!(
            "the plugin scanner failed before scanning anything: {}",
            refusal.reason
        )),
    };
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let event = match rx.recv_timeout(wait) {
            Ok(e) => e,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                let secs = timeout.as_secs_f64();
                if !hello {
                    run.failure = Some(Failure::Scanner(format!(
                        "the plugin scanner {} did not start within {} s",
                        scanner.display(),
                        timeout.max(STARTUP_TIMEOUT).as_secs()
                    )));
                    return run;
                }
                let r = Refusal::new(
                    kind::TIMED_OUT,
                    format!(
                        "loading it did not finish within {secs} s (its initialisers hang?); it stays refused until the file changes (raise the limit with --scan-timeout or {TIMEOUT_VAR})"
                    ),
                );
                run.failure = Some(blame(current, r, hello));
                return run;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Event::Eof,
        };
        let line = match event {
            Event::Line(l) => l,
            Event::Eof => {
                // The child closed the pipe: it exited or died. Give it a moment to be reaped.
                let status = wait_briefly(&mut child);
                let tail = tail_line(&stderr);
                let r = ended_refusal(status, &tail);
                run.failure = Some(blame(current, r, hello));
                return run;
            }
        };
        let message = serde_json::from_slice::<Message>(&line);
        let protocol_error = |what: String| {
            Refusal::new(
                kind::PROTOCOL,
                format!("the scanner's report while loading it was malformed ({what}); the library writes to the scanner's private pipe"),
            )
        };
        let bad = match (message, hello) {
            (
                Ok(Message::Hello {
                    protocol,
                    host_version,
                    api_version,
                    torch_version,
                }),
                false,
            ) => {
                if protocol != PROTOCOL {
                    let _ = child.kill();
                    let _ = child.wait();
                    run.failure = Some(Failure::Scanner(format!(
                        "the plugin scanner {} speaks protocol {protocol} (terrahost {host_version}), this host speaks {PROTOCOL}; set {SCANNER_VAR} to this version's terrahost-engine binary",
                        scanner.display()
                    )));
                    return run;
                }
                hello = true;
                run.versions = Some(Versions {
                    api_version,
                    torch_version,
                });
                None
            }
            (Ok(Message::Begin { index }), true) if current.is_none() && index < files.len() => {
                current = Some(index);
                last_begun = Some(index);
                deadline = Instant::now() + timeout;
                None
            }
            (Ok(Message::Done { index, outcome }), true) if current == Some(index) => {
                run.done.push((index, outcome));
                current = None;
                deadline = Instant::now() + timeout;
                None
            }
            (Ok(Message::End), true) if current.is_none() => {
                let _ = wait_briefly(&mut child);
                if run.done.len() < files.len() {
                    run.failure = Some(Failure::Scanner(
                        "the plugin scanner ended before reporting on every file".to_owned(),
                    ));
                }
                return run;
            }
            (Ok(m), _) => Some(protocol_error(format!("unexpected message {m:?}"))),
            (Err(e), _) => Some(protocol_error(format!(
                "{e} in {:?}",
                String::from_utf8_lossy(&line[..line.len().min(80)])
            ))),
        };
        if let Some(r) = bad {
            let _ = child.kill();
            let _ = child.wait();
            run.failure = Some(blame(current.or(last_begun), r, hello));
            return run;
        }
    }
}

/// Waits up to a second for the child to be reaped, then kills it.
fn wait_briefly(child: &mut Child) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                return child.wait().ok();
            }
        }
    }
}

/// The last non-empty line the child wrote to stderr, shortened.
fn tail_line(stderr: &Mutex<Vec<u8>>) -> String {
    // Let the reader thread catch up with what the child wrote just before it ended.
    std::thread::sleep(Duration::from_millis(20));
    let bytes = stderr.lock().unwrap();
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(first_line)
        .unwrap_or_default()
}

/// Why a child that closed its pipe ended.
fn ended_refusal(status: Option<std::process::ExitStatus>, tail: &str) -> Refusal {
    use std::os::unix::process::ExitStatusExt;
    let said = if tail.is_empty() {
        String::new()
    } else {
        format!(" (it printed: {tail})")
    };
    match status {
        Some(s) if s.signal().is_some() => {
            let sig = s.signal().unwrap();
            Refusal::new(
                kind::CRASHED,
                format!(
                    "loading it crashed the scanner with {}{said}; the library is broken or was not built for this system, and stays refused until the file changes",
                    signal_name(sig)
                ),
            )
        }
        Some(s) => Refusal::new(
            kind::EXITED,
            format!(
                "loading it made the scanner exit with status {}{said} (its initialisers call exit); it stays refused until the file changes",
                s.code().unwrap_or(-1)
            ),
        ),
        None => Refusal::new(kind::CRASHED, format!("loading it ended the scanner{said}")),
    }
}

/// `SIGSEGV (segmentation fault)` for 11, and so on.
pub fn signal_name(sig: i32) -> String {
    let (name, what) = match sig {
        libc::SIGHUP => ("SIGHUP", "hangup"),
        libc::SIGINT => ("SIGINT", "interrupt"),
        libc::SIGQUIT => ("SIGQUIT", "quit"),
        libc::SIGILL => ("SIGILL", "illegal instruction"),
        libc::SIGTRAP => ("SIGTRAP", "trace trap"),
        libc::SIGABRT => ("SIGABRT", "abort"),
        libc::SIGBUS => ("SIGBUS", "bus error"),
        libc::SIGFPE => ("SIGFPE", "arithmetic exception"),
        libc::SIGKILL => ("SIGKILL", "killed"),
        libc::SIGSEGV => ("SIGSEGV", "segmentation fault"),
        libc::SIGPIPE => ("SIGPIPE", "broken pipe"),
        libc::SIGALRM => ("SIGALRM", "alarm"),
        libc::SIGTERM => ("SIGTERM", "terminated"),
        libc::SIGSYS => ("SIGSYS", "bad system call"),
        _ => return format!("signal {sig}"),
    };
    format!("{name} ({what})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn messages_are_one_json_object_per_line() {
        let m = Message::Done {
            index: 2,
            outcome: Outcome::Refused(Refusal::new(kind::NOT_A_PLUGIN, "no")),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(!text.contains('\n'));
        assert!(text.contains(r#""msg":"done""#), "{text}");
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
        assert!(serde_json::from_str::<Message>(r#"{"hijacked": true}"#).is_err());
    }

    #[test]
    fn endings_name_the_signal_or_the_status() {
        let r = ended_refusal(Some(std::process::ExitStatus::from_raw(libc::SIGSEGV)), "");
        assert_eq!(r.kind, kind::CRASHED);
        assert!(
            r.reason.contains("SIGSEGV (segmentation fault)"),
            "{}",
            r.reason
        );
        let r = ended_refusal(Some(std::process::ExitStatus::from_raw(0)), "bye");
        assert_eq!(r.kind, kind::EXITED);
        assert!(
            r.reason.contains("status 0") && r.reason.contains("bye"),
            "{}",
            r.reason
        );
        assert_eq!(signal_name(6), "SIGABRT (abort)");
        assert_eq!(signal_name(64), "signal 64");
    }

    /// A stand-in scanner (a shell script) that misbehaves in each way the host must
    /// survive: garbage on the pipe, dying mid-file, hanging.
    fn fake_scanner(dir: &Path, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("scanner.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn files(n: usize) -> Vec<PathBuf> {
        (0..n).map(|i| PathBuf::from(format!("/f{i}.so"))).collect()
    }

    fn refused(o: &Outcome) -> &Refusal {
        match o {
            Outcome::Refused(r) => r,
            other => panic!("not refused: {other:?}"),
        }
    }

    const HELLO: &str = r#"{"msg":"hello","protocol":3,"host_version":"x"}"#;

    #[test]
    fn garbage_on_the_pipe_blames_the_file_in_progress_and_the_rest_are_replayed() {
        let dir = tempfile::tempdir().unwrap();
        // Each run: hello, then for its first file garbage if it is /f1.so, else a refusal.
        let script = format!(
            r#"shift 2; echo '{HELLO}' >&3; i=0; for f in "$@"; do
  echo '{{"msg":"begin","index":'$i'}}' >&3
  if [ "$f" = /f1.so ]; then echo 'hijacked' >&3; sleep 5; fi
  echo '{{"msg":"done","index":'$i',"outcome":{{"refused":{{"kind":"not-a-plugin","reason":"'$f'"}}}}}}' >&3
  i=$((i+1)); done; echo '{{"msg":"end"}}' >&3"#
        );
        let scanner = fake_scanner(dir.path(), &script);
        let out = scan(&scanner, &files(3), Duration::from_secs(10));
        assert_eq!(refused(&out[0]).reason, "/f0.so");
        assert_eq!(refused(&out[1]).kind, kind::PROTOCOL);
        assert!(refused(&out[1]).reason.contains("hijacked"), "{:?}", out[1]);
        assert_eq!(refused(&out[2]).reason, "/f2.so", "replayed in a new child");
    }

    #[test]
    fn a_child_that_dies_or_hangs_is_blamed_on_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            r#"shift 2; echo '{HELLO}' >&3; i=0; for f in "$@"; do
  echo '{{"msg":"begin","index":'$i'}}' >&3
  case "$f" in /f0.so) kill -SEGV $$;; /f1.so) echo 'about to exit' >&2; exit 7;; /f2.so) sleep 30;; esac
  echo '{{"msg":"done","index":'$i',"outcome":{{"refused":{{"kind":"not-a-plugin","reason":"ok"}}}}}}' >&3
  i=$((i+1)); done; echo '{{"msg":"end"}}' >&3"#
        );
        let scanner = fake_scanner(dir.path(), &script);
        let start = Instant::now();
        let out = scan(&scanner, &files(4), Duration::from_millis(700));
        let r0 = refused(&out[0]);
        assert_eq!(r0.kind, kind::CRASHED);
        assert!(r0.reason.contains("SIGSEGV"), "{}", r0.reason);
        let r1 = refused(&out[1]);
        assert_eq!(r1.kind, kind::EXITED);
        assert!(
            r1.reason.contains("status 7") && r1.reason.contains("about to exit"),
            "{}",
            r1.reason
        );
        let r2 = refused(&out[2]);
        assert_eq!(r2.kind, kind::TIMED_OUT);
        assert!(r2.reason.contains("0.7 s"), "{}", r2.reason);
        assert_eq!(refused(&out[3]).reason, "ok");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_scanner_that_cannot_start_refuses_everything_as_its_own_failure() {
        let dir = tempfile::tempdir().unwrap();
        let out = scan(
            &dir.path().join("missing"),
            &files(2),
            Duration::from_secs(5),
        );
        assert!(out.iter().all(|o| refused(o).kind == kind::SCANNER_FAILED));
        let scanner = fake_scanner(dir.path(), "echo 'no libtorch' >&2; exit 127");
        let out = scan(&scanner, &files(2), Duration::from_secs(5));
        let r = refused(&out[1]);
        assert_eq!(r.kind, kind::SCANNER_FAILED);
        assert!(
            r.reason.contains("before scanning anything") && r.reason.contains("no libtorch"),
            "{}",
            r.reason
        );
        let other = fake_scanner(
            dir.path(),
            r#"echo '{"msg":"hello","protocol":99,"host_version":"9"}' >&3"#,
        );
        let r = scan(&other, &files(1), Duration::from_secs(5));
        assert!(refused(&r[0]).reason.contains("protocol 99"), "{:?}", r[0]);
    }
}
