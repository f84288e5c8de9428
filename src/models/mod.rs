pub mod chat_template;
pub mod generate;
pub mod llama;
pub mod tokenizer;
