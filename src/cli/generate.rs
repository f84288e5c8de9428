//! `visword generate`: run a Llama-architecture model directory on a prompt and stream the answer.
//!
//! The prompt goes through the model's chat template (a user turn, plus `--system` if given)
//! unless `--no-chat-template`; `--input-ids 1,2,3` bypasses the tokenizer altogether. With
//! `--dump OUT.safetensors` the command also writes `input_ids`, `logits` (`[seq, vocab]` f32,
//! one forward over the prompt ids) and, when generating, `generated_ids` (i64), written atomically.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};
use crate::models::chat_template::ChatMessage;
use crate::models::generate::{generate, GenerateParams, Sampling, StopReason};
use crate::models::llama::{Input, Llama, Logits};
use crate::models::tokenizer::Tokenizer;
use crate::tensor::Tensor;
use crate::weights::save_safetensors;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Model directory (config.json, safetensors weights, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The user message (or raw text with --no-chat-template).
    #[arg(long)]
    pub prompt: Option<String>,
    /// A system message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Always take the most likely token.
    #[arg(long)]
    pub greedy: bool,
    /// Sampling temperature (default: generation_config.json's, else 1.0); 0 means greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass (default: generation_config.json's, else 1.0).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// RNG seed for sampling (default: from the clock; printed with the timings).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Tokenize the prompt as raw text instead of applying the chat template.
    #[arg(long)]
    pub no_chat_template: bool,
    /// Comma-separated token ids used as the prompt as is (no tokenizer needed).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub input_ids: Option<Vec<u32>>,
    /// Write input_ids, logits and generated_ids to this safetensors file.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// auto, cpu, cuda or wgpu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Keep generating past end-of-sequence tokens (fixed-length runs for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let started = std::time::Instant::now();
    let be = Backend::new(BackendKind::from_str(&args.backend)?)?;
    let model = Llama::load(&args.model, &be)?;
    let tokenizer = if args.input_ids.is_some() && !args.model.join("tokenizer.json").exists() {
        None
    } else {
        Some(Tokenizer::from_dir(&args.model)?)
    };
    let ids = prompt_ids(args, tokenizer.as_ref())?;
    let cfg = &model.config;
    if ids.len() > cfg.max_position_embeddings {
        return Err(Error::arg(
            "prompt",
            format!("{} tokens exceed the model's context of {} tokens", ids.len(), cfg.max_position_embeddings),
        ));
    }

    let mut dump: Vec<(String, Tensor)> = Vec::new();
    if args.dump.is_some() {
        let mut cache = model.new_cache(&be, ids.len())?;
        let out = model.forward(&be, Input::Ids(&ids), &mut cache, Logits::All, false)?;
        let logits = out.logits.ok_or_else(|| Error::shape("generate", "forward returned no logits"))?;
        dump.push(("input_ids".into(), Tensor::from_i64(ids.iter().map(|&i| i as i64).collect(), vec![ids.len()])?));
        dump.push(("logits".into(), be.to_host(&logits)?));
    }

    if args.max_new_tokens > 0 {
        let seed = args.seed.unwrap_or_else(clock_seed);
        let sampling = if args.greedy || cfg.generation.do_sample == Some(false) && args.temperature.is_none() && args.top_p.is_none() {
            Sampling::Greedy
        } else {
            Sampling::top_p(
                args.temperature.or(cfg.generation.temperature).unwrap_or(1.0),
                args.top_p.or(cfg.generation.top_p).unwrap_or(1.0),
            )?
        };
        let mut stop_tokens = if args.ignore_eos { Vec::new() } else { cfg.eos_token_ids.clone() };
        if let Some(eos) = tokenizer.as_ref().and_then(|t| t.eos_token_id()).filter(|_| !args.ignore_eos) {
            if !stop_tokens.contains(&eos) {
                stop_tokens.push(eos);
            }
        }
        let params = GenerateParams { max_new_tokens: args.max_new_tokens, sampling, seed, stop_tokens };
        let context = (ids.len() + args.max_new_tokens).min(cfg.max_position_embeddings);
        let mut cache = model.new_cache(&be, context)?;

        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut stream = tokenizer.as_ref().map(|t| t.stream());
        let mut first_token_ms: Option<f64> = None;
        let mut emit = |id: u32| -> Result<()> {
            first_token_ms.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
            let piece = match stream.as_mut() {
                Some(s) => s.push(id)?,
                None => Some(format!("{id} ")),
            };
            if let Some(p) = piece {
                out.write_all(p.as_bytes()).and_then(|_| out.flush()).map_err(|e| Error::io("<stdout>", e))?;
            }
            Ok(())
        };
        let gen = generate(&model, &be, Input::Ids(&ids), &mut cache, &params, &mut emit)?;
        if let Some(rest) = stream.as_mut().map(|s| s.finish()).transpose()?.flatten() {
            out.write_all(rest.as_bytes()).map_err(|e| Error::io("<stdout>", e))?;
        }
        out.write_all(b"\n").and_then(|_| out.flush()).map_err(|e| Error::io("<stdout>", e))?;

        let why = match gen.stop {
            StopReason::StopToken(t) => format!("stop token {t}"),
            StopReason::MaxNewTokens => "max new tokens".to_string(),
            StopReason::ContextFull => "context full".to_string(),
        };
        eprintln!(
            "first token after {:.0} ms | prefill: {} tokens, {:.1} tok/s | decode: {} tokens, {:.1} tok/s | stopped on {why} | seed {seed} | backend {}",
            first_token_ms.unwrap_or(0.0),
            gen.prompt_tokens,
            gen.prefill_tokens_per_sec(),
            gen.tokens.len(),
            gen.decode_tokens_per_sec(),
            be.name()
        );
        if crate::backend::profile::enabled() {
            eprintln!("{}", crate::backend::profile::report());
        }
        if args.dump.is_some() {
            let g: Vec<i64> = gen.tokens.iter().map(|&t| t as i64).collect();
            let n = g.len();
            dump.push(("generated_ids".into(), Tensor::from_i64(g, vec![n])?));
        }
    }

    if let Some(path) = &args.dump {
        save_safetensors(path, &dump, None)?;
    }
    Ok(())
}

/// The prompt as token ids: `--input-ids` verbatim, or `--prompt` through the chat template (or
/// raw, with the tokenizer's special-token post-processing, under `--no-chat-template`).
fn prompt_ids(args: &Args, tokenizer: Option<&Tokenizer>) -> Result<Vec<u32>> {
    if let Some(ids) = &args.input_ids {
        if args.prompt.is_some() {
            return Err(Error::arg("--input-ids", "give either --prompt or --input-ids, not both"));
        }
        if ids.is_empty() {
            return Err(Error::arg("--input-ids", "is empty"));
        }
        return Ok(ids.clone());
    }
    let prompt = args.prompt.as_deref().ok_or_else(|| Error::arg("--prompt", "is required (or --input-ids)"))?;
    if prompt.is_empty() {
        return Err(Error::arg("--prompt", "is empty"));
    }
    let tok = tokenizer.ok_or_else(|| Error::config(Path::new(&args.model).join("tokenizer.json"), "missing"))?;
    let ids = if args.no_chat_template {
        tok.encode(prompt, true)?
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system.as_str()));
        }
        messages.push(ChatMessage::new("user", prompt));
        let text = tok.apply_chat_template(&messages, true)?;
        tok.encode(&text, false)?
    };
    if ids.is_empty() {
        return Err(Error::arg("--prompt", "tokenizes to no tokens"));
    }
    Ok(ids)
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}
