//! The crate's error type. Every message names the file, tensor or argument at fault and says
//! what was expected, so the CLI can print it as is.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A malformed or inconsistent safetensors file (or shard index).
    #[error("{path}: malformed safetensors: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    #[error("{path}: tensor `{name}` not found")]
    MissingTensor { name: String, path: PathBuf },

    #[error("tensor `{name}`: expected shape {expected:?}, found {got:?}")]
    TensorShape { name: String, expected: Vec<usize>, got: Vec<usize> },

    #[error("tensor `{name}`: unsupported dtype {dtype} ({msg})")]
    TensorDtype { name: String, dtype: String, msg: String },

    /// A missing, unreadable or inconsistent config.json / tokenizer_config.json / model directory.
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error("{path}: malformed GGUF: {msg}")]
    Gguf { path: PathBuf, msg: String },

    #[error("tokenizer: {msg}")]
    Tokenizer { msg: String },

    #[error("chat template: {msg}")]
    Template { msg: String },

    #[error("{path}: {msg}")]
    Image { path: PathBuf, msg: String },

    /// A bad command-line or API argument (empty prompt, out-of-range token id, point outside
    /// the image, ...). `arg` names the argument.
    #[error("invalid {arg}: {msg}")]
    InvalidArgument { arg: String, msg: String },

    /// An op called with inconsistent shapes or dtypes: a bug in the caller, reported, not
    /// panicked on.
    #[error("op `{op}`: {msg}")]
    Shape { op: &'static str, msg: String },

    #[error("backend `{backend}` is not available: {reason}")]
    BackendUnavailable { backend: String, reason: String },

    #[error("{path}: could not write output: {msg}")]
    Output { path: PathBuf, msg: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn arg(arg: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { arg: arg.into(), msg: msg.into() }
    }
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config { path: path.into(), msg: msg.into() }
    }
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
}
