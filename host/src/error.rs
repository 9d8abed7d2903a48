//! The host's errors. Registry and build errors keep the plugin-api's [`PluginError`]
//! (its kind tells not-found from build-failed); the rest are host-only.
use std::path::PathBuf;
use terrahost_plugin_api::PluginError;

/// Everything that can go wrong in the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A registry lookup, build or forward failed (the kind says which).
    #[error("{0}")]
    Plugin(#[from] PluginError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A checkpoint does not fit the model (missing/unexpected keys, shapes) or cannot be read.
    #[error("{0}")]
    Weights(String),
    /// A model config (YAML) is malformed or incomplete.
    #[error("{0}")]
    Config(String),
    /// An input or output tensor file is malformed, or a command-line value is invalid.
    #[error("{0}")]
    Usage(String),
}

impl HostError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`HostError`].
pub type Result<T, E = HostError> = std::result::Result<T, E>;
