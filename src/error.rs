//! The one error type of the crate. Every variant carries the file, tensor, field or
//! flag at fault and what was expected, so a message alone tells the user what to fix.

use std::path::PathBuf;
use std::sync::Arc;

pub type Result<T> = std::result::Result<T, Error>;

/// Cloneable, so that one failure (a model call, a reward evaluation) can be
/// reported to every sample it hit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}: {source}")]
    Io {
        path: PathBuf,
        message: String,
        #[source]
        source: Arc<std::io::Error>,
    },

    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },

    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },

    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },

    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument { name: String, message: String },

    #[error("shape mismatch in {op}: {message}")]
    Shape { op: String, message: String },

    #[error(
        "non-finite values (NaN or Inf) in {what} at sampling step {step} (timestep {timestep})"
    )]
    NonFinite {
        what: String,
        step: usize,
        timestep: f64,
    },

    #[error("CUDA: {0}")]
    Cuda(String),
}

impl Error {
    pub fn io(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            path: path.into(),
            message: message.into(),
            source: Arc::new(source),
        }
    }

    pub fn config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Config {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn tensor(
        path: impl Into<PathBuf>,
        name: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Tensor {
            path: path.into(),
            name: name.into(),
            message: message.into(),
        }
    }

    pub fn invalid(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            message: message.into(),
        }
    }

    pub fn shape(op: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Shape {
            op: op.into(),
            message: message.into(),
        }
    }
}
