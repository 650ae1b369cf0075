//! The error type of the `models` crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: missing tensor `{name}`")]
    MissingTensor { name: String, file: PathBuf },

    #[error("{file}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch { name: String, file: PathBuf, expected: Vec<i64>, got: Vec<i64> },

    #[error("{file}: tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedDtype { name: String, file: PathBuf, dtype: String },

    #[error("{file}: not a model file diffusiond can read: {reason}")]
    UnknownFormat { file: PathBuf, reason: String },

    #[error("{file}: {reason}")]
    UnknownCheckpoint { file: PathBuf, reason: String },

    #[error("{file}: refused to load: the pickle references the global `{global}`, which is not a tensor-rebuilding function; no code from the file was run")]
    ForbiddenGlobal { file: PathBuf, global: String },

    #[error("{file}: malformed pickle: {reason}")]
    Pickle { file: PathBuf, reason: String },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("noise: {0}")]
    Rng(String),

    #[error("sampling: {0}")]
    Sampling(String),

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
