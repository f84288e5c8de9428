//! Import of llama.cpp checkpoints (GGUF): a validating, memory-mapped reader, dequantization of
//! the common ggml types, and conversion of Llama models into Hugging Face model directories.

pub mod convert;
pub mod dequant;
pub mod reader;
pub mod tokenizer;

pub use convert::{convert_llama, ConvertSummary};
pub use dequant::GgmlType;
pub use reader::{GgufFile, TensorInfo, Value};
