//! The stable error type: a kind plus a message that says what was wrong and how to
//! fix it.
use abi_stable::{std_types::RString, StableAbi};
use std::fmt;

/// What went wrong. A `u8` newtype rather than an enum so that a later plugin-api can
/// add kinds without breaking the layout; unknown values print as `error`.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u8);

impl ErrorKind {
    /// A registry, entry or file does not exist.
    pub const NOT_FOUND: Self = Self(1);
    /// An argument is missing, unknown, of the wrong type or out of range.
    pub const INVALID_ARGUMENT: Self = Self(2);
    /// The entry exists and the arguments were accepted, but constructing it failed.
    pub const BUILD_FAILED: Self = Self(3);
    /// Running a module failed (shape mismatch, wrong channel count, ...).
    pub const FORWARD_FAILED: Self = Self(4);
    /// Plugin code panicked; the panic was caught at the boundary.
    pub const PANICKED: Self = Self(5);
    /// The name or option is known (the reference has it) but not supported yet; the
    /// message says what instead. Added in plugin-api 0.2.1.
    pub const NOT_SUPPORTED: Self = Self(6);

    /// A short lower-case name for messages and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::NOT_FOUND => "not-found",
            Self::INVALID_ARGUMENT => "invalid-argument",
            Self::BUILD_FAILED => "build-failed",
            Self::FORWARD_FAILED => "forward-failed",
            Self::PANICKED => "panicked",
            Self::NOT_SUPPORTED => "not-supported",
            _ => "error",
        }
    }
}

impl fmt::Debug for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error every ABI call returns. It is also the error type of the SDK and of the
/// models in plugins, so that nothing needs converting at the boundary.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// A message for the user: what, with which name or path, and what to do.
    pub message: RString,
}

/// `Result` with [`PluginError`].
pub type Result<T, E = PluginError> = std::result::Result<T, E>;

impl PluginError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: RString::from(message.into()),
        }
    }
    /// See [`ErrorKind::NOT_FOUND`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NOT_FOUND, message)
    }
    /// See [`ErrorKind::INVALID_ARGUMENT`].
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INVALID_ARGUMENT, message)
    }
    /// See [`ErrorKind::BUILD_FAILED`].
    pub fn build_failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BUILD_FAILED, message)
    }
    /// See [`ErrorKind::FORWARD_FAILED`].
    pub fn forward_failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FORWARD_FAILED, message)
    }
    /// See [`ErrorKind::PANICKED`].
    pub fn panicked(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PANICKED, message)
    }
    /// The message as a `&str`.
    pub fn message(&self) -> &str {
        self.message.as_str()
    }
    /// The same error with `context: ` put in front of the message.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Self::new(self.kind, format!("{context}: {}", self.message))
    }
    /// The same message with another kind.
    pub fn with_kind(self, kind: ErrorKind) -> Self {
        Self { kind, ..self }
    }
    /// A libtorch failure keeps its message but takes `kind`: the build boundary turns
    /// it into build-failed, the forward boundary into forward-failed. Errors of other
    /// kinds (not-found, invalid-argument, panicked) keep theirs.
    pub fn with_kind_if_torch(self, kind: ErrorKind) -> Self {
        if self.kind == ErrorKind::FORWARD_FAILED || self.kind == ErrorKind::BUILD_FAILED {
            self.with_kind(kind)
        } else {
            self
        }
    }
}

impl fmt::Debug for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

/// A libtorch error raised while running tensors; construction code maps it to
/// [`ErrorKind::BUILD_FAILED`] at the build boundary.
impl From<tch::TchError> for PluginError {
    fn from(e: tch::TchError) -> Self {
        Self::forward_failed(format!("libtorch: {e}"))
    }
}

/// Turns a caught panic payload into a message.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Runs `f`, turning a panic into a [`ErrorKind::PANICKED`] error that names `what`.
/// Every function the SDK exports across the boundary goes through this.
pub fn catch<T>(what: impl fmt::Display, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_as(what, ErrorKind::PANICKED, f)
}

/// Like [`catch`], but a panic that carries a libtorch error (tch's infallible methods
/// unwrap `TchError::Torch`, for example on a shape mismatch) becomes an error of
/// `torch_kind` with libtorch's message: it is bad input, not a bug in the plugin.
pub fn catch_as<T>(
    what: impl fmt::Display,
    torch_kind: ErrorKind,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = panic_message(payload.as_ref());
            match torch_message(&msg) {
                Some(torch) => Err(PluginError::new(
                    torch_kind,
                    format!("{what} failed in libtorch: {torch}"),
                )),
                None => Err(PluginError::panicked(format!("{what} panicked: {msg}"))),
            }
        }
    }
}

/// The libtorch message inside a tch panic (`... Torch("message\n...") ...`), first
/// line only, unescaped.
fn torch_message(panic: &str) -> Option<String> {
    let start = panic.find("Torch(\"")? + "Torch(\"".len();
    let rest = &panic[start..];
    let end = rest.find("\\n").or_else(|| rest.rfind("\")"))?;
    Some(rest[..end].replace("\\\"", "\"").replace("\\'", "'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_that_name_the_call() {
        let e = catch("forward of `x`", || -> Result<()> { panic!("boom") }).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PANICKED);
        assert!(e.message().contains("forward of `x` panicked: boom"), "{e}");
    }

    #[test]
    fn libtorch_panics_become_the_given_kind() {
        let e = catch_as(
            "forward of `x`",
            ErrorKind::FORWARD_FAILED,
            || -> Result<()> {
                let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
                let b = tch::Tensor::zeros([4, 5], (tch::Kind::Float, tch::Device::Cpu));
                let _ = a.matmul(&b);
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::FORWARD_FAILED, "{e}");
        assert!(
            e.message().contains("failed in libtorch") && e.message().contains("2x3"),
            "{e}"
        );
    }
}
