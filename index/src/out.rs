//! How both binaries write their results to stdout, and end when nobody reads them.
//!
//! A reader that stops early (`terrahost list | head -c 10`) closes the pipe. Rust
//! starts every program with SIGPIPE ignored, and terrahost leaves it that way: the
//! scanner child must learn that its host went away from a failed write on its pipe
//! and end on its own terms, and a signal would kill a process without a word. So the
//! next write to stdout fails with [`io::ErrorKind::BrokenPipe`]; every command writes
//! through `writeln!` on a locked stdout and passes that error up, and `main` ends the
//! process quietly with exit status 0, as ripgrep does (`println!` would panic with
//! "failed printing to stdout" and exit 101). Any other write error is an error.
use std::fmt;
use std::io::{self, Write};

/// Whether `e` says that the reader of stdout has gone away.
pub fn is_closed(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// Writes `text` and a newline to stdout, flushed.
pub fn line(text: impl fmt::Display) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

/// Why a command of the front stopped.
#[derive(Debug)]
pub enum Failure {
    /// A message for the user (`error: ...` on stderr, exit status 1).
    Message(String),
    /// Writing to stdout failed; [`Failure::is_closed_stdout`] tells a reader that went
    /// away (a quiet exit 0) from a real error.
    Stdout(io::Error),
}

impl Failure {
    /// Whether this is stdout closed by its reader: the command ends quietly, status 0.
    pub fn is_closed_stdout(&self) -> bool {
        matches!(self, Failure::Stdout(e) if is_closed(e))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Message(m) => f.write_str(m),
            Failure::Stdout(e) => write!(f, "writing to stdout: {e}"),
        }
    }
}

impl From<String> for Failure {
    fn from(m: String) -> Self {
        Failure::Message(m)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Stdout(e)
    }
}
