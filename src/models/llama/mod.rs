//! Llama-architecture causal LM (HF `LlamaForCausalLM`): config, rotary tables, the decoder.

pub mod config;
pub mod model;

pub use config::{GenerationDefaults, LlamaConfig, RopeScaling};
pub use model::{Input, KvCache, Llama, Logits, Output};
