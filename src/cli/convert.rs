//! `visword convert MODEL.gguf OUT_DIR`: turn a llama.cpp Llama checkpoint into a Hugging Face
//! model directory that visword (and transformers) can load.

use std::path::PathBuf;

use crate::dtype::DType;
use crate::error::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF file to convert (Llama architecture; F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors).
    pub gguf: PathBuf,
    /// The directory to create; its parent must exist and it must not (or be empty).
    pub out_dir: PathBuf,
    /// Weight dtype in model.safetensors: f32 (default), f16 or bf16.
    #[arg(long)]
    pub dtype: Option<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let dtype = match args.dtype.as_deref() {
        None => DType::F32,
        Some(s) => DType::parse(s).ok_or_else(|| Error::arg("--dtype", format!("`{s}`: expected f32, f16 or bf16")))?,
    };
    let s = crate::gguf::convert_llama(&args.gguf, &args.out_dir, dtype)?;
    println!(
        "converted {} -> {}: {} tensors, {} parameters as {}, {} layers, hidden {}, vocab {}{}",
        args.gguf.display(),
        s.out_dir.display(),
        s.tensors,
        s.parameters,
        s.dtype,
        s.num_hidden_layers,
        s.hidden_size,
        s.vocab_size,
        if s.tie_word_embeddings { ", tied embeddings" } else { "" },
    );
    for f in &s.files {
        println!("  wrote {}", s.out_dir.join(f).display());
    }
    Ok(())
}
