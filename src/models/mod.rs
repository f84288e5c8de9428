//! Models written once against the backend op set, shaped like their checkpoints.

pub mod chat_template;
pub mod generate;
pub mod llama;
pub mod sam;
pub mod tokenizer;
