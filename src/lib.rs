//! visword: an inference engine for referring image segmentation with multimodal LLMs.
//!
//! Layers, bottom up: `tensor`/`dtype` (data), `weights` (mmap'd safetensors), `backend` (the op
//! set and its CPU/GPU implementations), `models` (CLIP, DINOv2, Llama, SAM written once against
//! the op set), `gguf` (import of llama.cpp checkpoints), `bench` (stage timings on random
//! weights), `cli` (the `visword` commands).

pub mod backend;
pub mod bench;
pub mod cli;
pub mod dtype;
pub mod error;
pub mod gguf;
pub mod image_io;
pub mod models;
pub mod preprocess;
pub mod superpixels;
pub mod tensor;
pub mod weights;

pub use backend::{Activation, AttnBias, AttnParams, Backend, BackendKind, Mlp, TwoWayParams, MASK_STATS_HEADER};
pub use dtype::DType;
pub use error::{Error, Result};
pub use tensor::Tensor;
pub use weights::{VarView, Weights};
