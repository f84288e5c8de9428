//! Models written once against the backend op set, shaped like their checkpoints.

pub mod chat_template;
pub mod clip;
pub mod dinov2;
pub mod generate;
pub mod llama;
pub mod projector;
pub mod sam;
pub mod segmenter;
pub mod tokenizer;
pub mod vit;
