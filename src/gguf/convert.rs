//! A llama.cpp Llama checkpoint (GGUF) → a Hugging Face model directory: config.json,
//! generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
//! special_tokens_map.json.
//!
//! Two things differ from HF beyond names. GGUF lists dims fastest first (`ne[0]` is a row's
//! length), so a `[ne0, ne1]` tensor is the row-major `[ne1, ne0]` HF matrix. And llama.cpp's
//! converter reorders the rows of q_proj and k_proj within each head so that its rotary
//! embedding can rotate adjacent pairs (x[2i], x[2i+1]); HF's `rotate_half` pairs x[i] with
//! x[i + d/2]. `unpermute_rows` puts the rows back, per head: n_head heads for q, n_head_kv for k.
//!
//! The directory appears atomically: everything is written into a hidden temporary sibling
//! that is renamed into place at the end, and removed on any error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Value as Json};

use super::reader::{GgufFile, TensorInfo};
use super::tokenizer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::weights::{save_safetensors, write_atomic};

/// What `convert_llama` wrote.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    pub out_dir: PathBuf,
    /// File names inside `out_dir`.
    pub files: Vec<String>,
    pub tensors: usize,
    pub parameters: usize,
    pub dtype: DType,
    pub tie_word_embeddings: bool,
    pub num_hidden_layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
}

/// Llama hyper-parameters from the `llama.*` metadata.
#[derive(Debug, Clone)]
struct Hparams {
    layers: usize,
    hidden: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    rope_theta: f64,
    /// Linear rope scaling factor, when the file asks for it.
    rope_linear_factor: Option<f64>,
    context: usize,
    vocab: usize,
}

/// The one GGUF → HF name table for Llama: per-layer parts, then the global tensors.
const LAYER_PARTS: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];
const GLOBALS: &[(&str, &str)] = &[("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head")];

/// How a GGUF tensor becomes an HF one.
struct Plan<'a> {
    info: &'a TensorInfo,
    hf_name: String,
    shape: Vec<usize>,
    /// Undo llama.cpp's rotary row order with this many heads.
    unpermute_heads: Option<usize>,
}

/// The HF name of a Llama GGUF tensor and the layer it belongs to, or None if it is not one.
fn hf_name(gguf: &str) -> Option<(String, Option<usize>)> {
    let stem = gguf.strip_suffix(".weight")?;
    if let Some(&(_, hf)) = GLOBALS.iter().find(|(g, _)| *g == stem) {
        return Some((format!("{hf}.weight"), None));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let &(_, hf) = LAYER_PARTS.iter().find(|(g, _)| *g == part)?;
    Some((format!("model.layers.{layer}.{hf}.weight"), Some(layer)))
}

fn read_hparams(g: &GgufFile) -> Result<Hparams> {
    let arch = g.req_str("general.architecture")?;
    if arch != "llama" {
        return Err(g.err(format!("general.architecture is `{arch}`; only `llama` can be converted")));
    }
    let hidden = g.req_usize("llama.embedding_length")?;
    let heads = g.req_usize("llama.attention.head_count")?;
    let kv_heads = g.opt_usize("llama.attention.head_count_kv")?.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(g.err(format!("{heads} attention heads cannot be shared by {kv_heads} key/value heads")));
    }
    let head_dim = match g.opt_usize("llama.attention.key_length")? {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => return Err(g.err(format!("embedding_length {hidden} is not a multiple of head_count {heads}"))),
    };
    if let Some(v) = g.opt_usize("llama.attention.value_length")? {
        if v != head_dim {
            return Err(g.err(format!("attention.value_length {v} differs from key_length {head_dim}; not a Llama layout")));
        }
    }
    if head_dim % 2 != 0 {
        return Err(g.err(format!("head dim {head_dim} is odd; rotary embeddings need an even head dim")));
    }
    if let Some(r) = g.opt_usize("llama.rope.dimension_count")? {
        if r != head_dim {
            return Err(g.err(format!("llama.rope.dimension_count {r} differs from the head dim {head_dim} (partial rotary is not supported)")));
        }
    }
    let rope_linear_factor = match g.opt_str("llama.rope.scaling.type")? {
        None | Some("none") => None,
        Some("linear") => Some(g.req_f64("llama.rope.scaling.factor")?),
        Some(other) => return Err(g.err(format!("llama.rope.scaling.type `{other}` is not supported (none, linear)"))),
    };
    let embd = g
        .tensor("token_embd.weight")
        .ok_or_else(|| g.err("tensor `token_embd.weight` is missing"))?;
    let vocab = embd.shape().first().copied().unwrap_or(0);
    if let Some(v) = g.opt_usize("llama.vocab_size")? {
        if v != vocab {
            return Err(g.err(format!("llama.vocab_size is {v} but token_embd.weight has {vocab} rows")));
        }
    }
    Ok(Hparams {
        layers: g.req_usize("llama.block_count")?,
        hidden,
        ffn: g.req_usize("llama.feed_forward_length")?,
        heads,
        kv_heads,
        head_dim,
        eps: g.req_f64("llama.attention.layer_norm_rms_epsilon")?,
        rope_theta: g.opt_f64("llama.rope.freq_base")?.unwrap_or(10000.0),
        rope_linear_factor,
        context: g.req_usize("llama.context_length")?,
        vocab,
    })
}

/// Map every tensor to its HF name and check its shape; all tensors must be known.
fn plan<'a>(g: &'a GgufFile, hp: &Hparams) -> Result<(Vec<Plan<'a>>, bool)> {
    let (h, q, kv) = (hp.hidden, hp.heads * hp.head_dim, hp.kv_heads * hp.head_dim);
    let mut plans = Vec::new();
    for info in g.tensors() {
        if info.name == "rope_freqs.weight" {
            return Err(g.err("tensor `rope_freqs.weight` (Llama 3 rope frequency scaling) is not supported"));
        }
        let (hf, layer) = hf_name(&info.name).ok_or_else(|| g.err(format!("tensor `{}` is not part of a Llama model", info.name)))?;
        if let Some(l) = layer {
            if l >= hp.layers {
                return Err(g.err(format!("tensor `{}` is for layer {l}, but llama.block_count is {}", info.name, hp.layers)));
            }
        }
        let part = hf.trim_start_matches("model.").split('.').rev().nth(1).unwrap_or("");
        let (shape, unpermute_heads) = match part {
            "embed_tokens" | "lm_head" => (vec![hp.vocab, h], None),
            "norm" | "input_layernorm" | "post_attention_layernorm" => (vec![h], None),
            "q_proj" => (vec![q, h], Some(hp.heads)),
            "k_proj" => (vec![kv, h], Some(hp.kv_heads)),
            "v_proj" => (vec![kv, h], None),
            "o_proj" => (vec![h, q], None),
            "gate_proj" | "up_proj" => (vec![hp.ffn, h], None),
            "down_proj" => (vec![h, hp.ffn], None),
            _ => return Err(g.err(format!("tensor `{}`: no shape rule for `{hf}`", info.name))),
        };
        if info.shape() != shape {
            return Err(Error::TensorShape { name: format!("{} (GGUF `{}`)", hf, info.name), expected: shape, got: info.shape() });
        }
        if !info.ggml_type.is_supported() {
            return Err(g.err(format!(
                "tensor `{}` is {}, which cannot be imported (supported: {})",
                info.name,
                info.ggml_type.name,
                super::dequant::SUPPORTED_NAMES
            )));
        }
        plans.push(Plan { info, hf_name: hf, shape, unpermute_heads });
    }
    let mut required: Vec<(String, String)> = vec![
        ("model.embed_tokens.weight".into(), "token_embd.weight".into()),
        ("model.norm.weight".into(), "output_norm.weight".into()),
    ];
    for l in 0..hp.layers {
        required.extend(LAYER_PARTS.iter().map(|(g, hf)| (format!("model.layers.{l}.{hf}.weight"), format!("blk.{l}.{g}.weight"))));
    }
    for (hf, gguf) in &required {
        if !plans.iter().any(|p| &p.hf_name == hf) {
            return Err(g.err(format!("tensor `{gguf}` (HF `{hf}`) is missing")));
        }
    }
    let tied = !plans.iter().any(|p| p.hf_name == "lm_head.weight");
    plans.sort_by(|a, b| a.hf_name.cmp(&b.hf_name));
    Ok((plans, tied))
}

/// Undo llama.cpp's per-head row order: within each head of `2·half` rows, GGUF row `2d + j`
/// is HF row `j·half + d` (j ∈ {0, 1}, d < half).
fn unpermute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for j in 0..2 {
            for d in 0..half {
                let dst = (h * 2 * half + j * half + d) * cols;
                let src = (h * 2 * half + 2 * d + j) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    out
}

fn convert_tensor(g: &GgufFile, p: &Plan, dtype: DType) -> Result<(String, Tensor)> {
    let mut data = g.dequantize(p.info)?;
    if let Some(heads) = p.unpermute_heads {
        let (rows, cols) = (p.shape[0], p.shape[1]);
        if rows % (2 * heads) != 0 {
            return Err(g.err(format!("tensor `{}`: {rows} rows do not split into {heads} heads of rotary pairs", p.info.name)));
        }
        data = unpermute_rows(&data, rows, cols, heads);
    }
    let t = Tensor::from_f32(data, p.shape.clone())?.to_dtype(dtype)?;
    Ok((p.hf_name.clone(), t))
}

fn torch_dtype(d: DType) -> &'static str {
    match d {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

fn config_json(hp: &Hparams, tied: bool, dtype: DType, tok: &tokenizer::TokenizerFiles) -> Json {
    let mut rope = json!({"rope_type": "default", "rope_theta": hp.rope_theta});
    let mut rope_scaling = Json::Null;
    if let Some(f) = hp.rope_linear_factor {
        rope = json!({"rope_type": "linear", "rope_theta": hp.rope_theta, "factor": f});
        rope_scaling = json!({"rope_type": "linear", "type": "linear", "factor": f});
    }
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hp.hidden,
        "intermediate_size": hp.ffn,
        "num_hidden_layers": hp.layers,
        "num_attention_heads": hp.heads,
        "num_key_value_heads": hp.kv_heads,
        "head_dim": hp.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": hp.eps,
        // transformers 5 reads `rope_parameters`; transformers 4 reads `rope_theta` / `rope_scaling`.
        "rope_parameters": rope,
        "rope_theta": hp.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": hp.context,
        "vocab_size": hp.vocab,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "use_cache": true,
        "torch_dtype": torch_dtype(dtype),
        "dtype": torch_dtype(dtype),
    })
}

/// Check where the output goes before any work: the parent must exist and the directory itself
/// must not (an empty directory is allowed and replaced). Returns the temporary sibling to use.
fn temp_sibling(out_dir: &Path) -> Result<PathBuf> {
    let out_err = |msg: String| Error::Output { path: out_dir.to_path_buf(), msg };
    let name = out_dir
        .file_name()
        .ok_or_else(|| out_err("the output path has no directory name".into()))?
        .to_string_lossy()
        .to_string();
    let parent = out_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(out_err(format!("parent directory {} does not exist", parent.display())));
    }
    if out_dir.exists() {
        let empty = out_dir.is_dir() && std::fs::read_dir(out_dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty {
            return Err(out_err("already exists and is not an empty directory; refusing to overwrite it".into()));
        }
    }
    Ok(parent.join(format!(".{name}.tmp{}", std::process::id())))
}

fn write_json(path: &Path, v: &Json) -> Result<()> {
    write_atomic(path, |f| {
        serde_json::to_writer_pretty(&mut *f, v)?;
        std::io::Write::write_all(f, b"\n")
    })
}

/// Convert a Llama GGUF file into an HF directory at `out_dir`, with weights in `dtype`
/// (f32, f16 or bf16).
pub fn convert_llama(gguf_path: impl AsRef<Path>, out_dir: impl AsRef<Path>, dtype: DType) -> Result<ConvertSummary> {
    let out_dir = out_dir.as_ref();
    if !dtype.is_float() {
        return Err(Error::arg("dtype", format!("{dtype} is not a float type (f32, f16, bf16)")));
    }
    let tmp = temp_sibling(out_dir)?;
    let g = GgufFile::open(gguf_path)?;
    let hp = read_hparams(&g)?;
    let (plans, tied) = plan(&g, &hp)?;
    let tok = tokenizer::build(&g, hp.context)?;
    if tok.n_tokens > hp.vocab {
        return Err(g.err(format!("{} tokens but only {} embedding rows", tok.n_tokens, hp.vocab)));
    }

    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let res = write_dir(&g, &hp, &plans, tied, dtype, &tok, &tmp).and_then(|files| {
        if out_dir.is_dir() {
            // The empty directory temp_sibling allowed; rename cannot replace it on every platform.
            std::fs::remove_dir(out_dir).map_err(|e| Error::io(out_dir, e))?;
        }
        std::fs::rename(&tmp, out_dir).map_err(|e| Error::Output { path: out_dir.to_path_buf(), msg: format!("rename from {}: {e}", tmp.display()) })?;
        Ok(files)
    });
    let files = match res {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    Ok(ConvertSummary {
        out_dir: out_dir.to_path_buf(),
        files,
        tensors: plans.len(),
        parameters: plans.iter().map(|p| p.info.numel()).sum(),
        dtype,
        tie_word_embeddings: tied,
        num_hidden_layers: hp.layers,
        hidden_size: hp.hidden,
        vocab_size: hp.vocab,
    })
}

fn write_dir(
    g: &GgufFile,
    hp: &Hparams,
    plans: &[Plan],
    tied: bool,
    dtype: DType,
    tok: &tokenizer::TokenizerFiles,
    dir: &Path,
) -> Result<Vec<String>> {
    let tensors: Vec<(String, Tensor)> = plans.par_iter().map(|p| convert_tensor(g, p, dtype)).collect::<Result<_>>()?;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_safetensors(&dir.join("model.safetensors"), &tensors, Some(&meta))?;
    drop(tensors);

    let generation = json!({
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "_from_model_config": true,
    });
    let files = [
        ("config.json", config_json(hp, tied, dtype, tok)),
        ("generation_config.json", generation),
        ("tokenizer.json", tok.tokenizer.clone()),
        ("tokenizer_config.json", tok.tokenizer_config.clone()),
        ("special_tokens_map.json", tok.special_tokens_map.clone()),
    ];
    let mut names = vec!["model.safetensors".to_string()];
    for (name, v) in &files {
        write_json(&dir.join(name), v)?;
        names.push(name.to_string());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways_of_the_table() {
        assert_eq!(hf_name("token_embd.weight").unwrap().0, "model.embed_tokens.weight");
        assert_eq!(hf_name("output.weight").unwrap().0, "lm_head.weight");
        assert_eq!(hf_name("blk.12.ffn_down.weight").unwrap(), ("model.layers.12.mlp.down_proj.weight".into(), Some(12)));
        assert!(hf_name("blk.x.attn_q.weight").is_none());
        assert!(hf_name("blk.0.attn_q.bias").is_none());
        assert!(hf_name("blk.0.attn_qkv.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_row_order() {
        // One head of 6 rotary rows (half = 3), one column: llama.cpp stores HF rows
        // [0, 3, 1, 4, 2, 5] (pairs interleaved); unpermuting gives 0..6 back.
        let stored = [0.0, 3.0, 1.0, 4.0, 2.0, 5.0];
        assert_eq!(unpermute_rows(&stored, 6, 1, 1), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        // Two heads keep their own rows.
        let stored2 = [0.0, 1.0, 10.0, 11.0];
        assert_eq!(unpermute_rows(&stored2, 4, 1, 2), vec![0.0, 1.0, 10.0, 11.0]);
    }
}
