//! `visword init --random`: a random-weight segmenter directory at a preset's shapes
//! (docs/svp.md "Random-weight models"), for tests, benchmarks and trying the pipeline.
//!
//! The components' configs are the benchmark presets' (`bench::presets`), so a random model has
//! the real token geometry. Weights are drawn from the tensor plan, then one residual channel is
//! steered so the random LLM answers `[SEG]` and then stops (see `steer`). Everything is a
//! function of (preset, seed): same inputs, byte-identical files.
//!
//! Large presets are gigabytes, so `model.safetensors` is streamed: the header is computed from
//! the plan, then each tensor is generated, converted and written in turn (peak memory: the
//! largest tensor in f32). The directory is assembled under a temporary name beside the target
//! and renamed at the end, so a failed run leaves nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Value};

use crate::bench::presets::{self, random_weight_superpixels, VisionKind};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::chat_template::ChatTemplate;
use crate::models::projector::{ProjectorKind, SvpConfig};
use crate::weights::write_atomic;

use super::config::{SegmenterConfig, DEFAULT_MAX_NEW_TOKENS, DEFAULT_QUESTION_TEMPLATE, LLAVA_V1_CHAT_TEMPLATE, MODEL_TYPE};
use super::prompt::user_message;
use super::tensor_plan::{plan, Init, Planned};
use super::tokenizer_json::{self as tj, BYTE_BASE};

pub const PRESETS: [&str; 4] = ["tiny", "cpu", "lisa-7b", "glamm-7b"];
/// The seed `init` uses unless told otherwise.
pub const DEFAULT_SEED: u64 = 0x5e6_5eed;
/// The steered logits of `[SEG]` (after the prompt) and EOS (after `[SEG]`).
pub const STEER_LOGIT: f32 = 10.0;

/// A random segmenter's `config.json` and weight dtype for `preset`.
pub fn preset_config(preset: &str) -> Result<(Value, DType)> {
    if !PRESETS.contains(&preset) {
        return Err(Error::arg("--preset", format!("unknown preset `{preset}`; known presets: {}", PRESETS.join(", "))));
    }
    let p = presets::preset(preset)?;
    let tiny = preset == "tiny";
    let mut llm = p.llm_config.clone();
    if let Some(m) = llm.as_object_mut() {
        let vocab = m.get("vocab_size").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        // tiny: just the byte tokenizer's tokens (rounded up to a multiple of 64); larger
        // presets keep their real vocabulary size, of which the tokenizer uses the first ids.
        let vocab = if tiny { tj::VOCAB.div_ceil(64) * 64 } else { vocab.max(tj::VOCAB) };
        m.insert("vocab_size".into(), json!(vocab));
        // Steering needs an output projection of its own (LISA's is untied anyway).
        m.insert("tie_word_embeddings".into(), json!(false));
        m.insert("bos_token_id".into(), json!(tj::BOS_ID));
        m.insert("eos_token_id".into(), json!(tj::EOS_ID));
    }
    let vision_type = match p.vision_kind {
        VisionKind::Clip => "clip_vision_model",
        VisionKind::Dinov2 => "dinov2",
    };
    let mut vision = p.vision_config.clone();
    if let Some(m) = vision.as_object_mut() {
        m.insert("model_type".into(), json!(vision_type));
    }
    // Random SAM predicts IoUs and stabilities near 0: the bench's thresholds let its masks
    // through, so the superpixel stage does real work (the regions are SAM's, not real objects).
    let superpixels = random_weight_superpixels(if tiny { 8 } else { 32 });
    let svp = SvpConfig::default();
    let config = json!({
        "model_type": MODEL_TYPE,
        "vision": vision,
        "vision_feature_layer": p.feature_layer,
        "llm": llm,
        "sam": p.sam_config,
        "projector": ProjectorKind::Svp.name(),
        "svp": {"ssa_heads": svp.ssa_heads, "mlp_ratio": svp.mlp_ratio, "pos_temperature": svp.pos_temperature, "ln_eps": svp.ln_eps},
        "superpixels": serde_json::to_value(&superpixels).map_err(|e| Error::shape("init", e.to_string()))?,
        "seg_token_id": tj::SEG_ID,
        "image_start_token_id": tj::IM_START_ID,
        "image_end_token_id": tj::IM_END_ID,
        "question_template": DEFAULT_QUESTION_TEMPLATE,
        "chat_template": LLAVA_V1_CHAT_TEMPLATE,
        "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
    });
    Ok((config, p.weight_dtype))
}

/// The token ids steering needs.
#[derive(Clone, Copy, Debug)]
struct SteerIds {
    /// The prompt's last token (the end of " ASSISTANT:").
    prompt_end: u32,
    seg: u32,
    eos: u32,
}

/// The last token of the rendered prompt under the byte tokenizer: its last byte.
fn prompt_end_id(cfg: &SegmenterConfig) -> Result<u32> {
    let specials = [("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>")].map(|(a, b)| (a.to_string(), b.to_string()));
    let template = ChatTemplate::new(&cfg.chat_template, specials)?;
    let message = user_message(&cfg.question_template, "the object")?;
    let text = template.render(&[crate::models::chat_template::ChatMessage::new("user", message)], true)?;
    let last = *text.as_bytes().last().ok_or_else(|| Error::Template { msg: "the prompt renders empty".into() })?;
    Ok(BYTE_BASE + last as u32)
}

/// Channel 0 of the residual stream becomes a clean signal (docs/svp.md): no layer writes it
/// (row 0 of every `o_proj` / `down_proj` is zero), the embedding puts +a on the prompt's last
/// token and −a on `[SEG]`, and `lm_head` reads it as +10 for `[SEG]`, −10 for EOS. So the
/// model says `[SEG]` after the prompt and EOS after `[SEG]`. a = √d: a random residual stream
/// grows with depth (about 2·√layers per channel at 7B width), and a unit signal would drown in
/// it after the final norm; √d keeps channel 0 dominant at every preset.
fn steer(name: &str, shape: &[usize], data: &mut [f32], ids: SteerIds) {
    let d = shape.last().copied().unwrap_or(0);
    let a = (d as f32).sqrt();
    let column0 = |data: &mut [f32], set: &[(u32, f32)]| {
        for row in data.chunks_mut(d) {
            row[0] = 0.0;
        }
        for &(id, v) in set {
            if let Some(x) = data.get_mut(id as usize * d) {
                *x = v;
            }
        }
    };
    if name == "model.embed_tokens.weight" {
        column0(data, &[(ids.prompt_end, a), (ids.seg, -a)]);
    } else if name == "lm_head.weight" {
        column0(data, &[(ids.seg, STEER_LOGIT), (ids.eos, -STEER_LOGIT)]);
    } else if name.starts_with("model.layers.") && (name.ends_with("self_attn.o_proj.weight") || name.ends_with("mlp.down_proj.weight")) {
        data[..d].fill(0.0);
    }
}

/// SplitMix64: a counter-based stream, so every chunk of a tensor can start independently.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_hash(seed: u64, name: &str) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Values per independently seeded chunk (the result does not depend on the thread count).
const CHUNK: usize = 1 << 16;

/// The tensor's values in f32.
fn generate(t: &Planned, seed: u64) -> Vec<f32> {
    let n: usize = t.shape.iter().product();
    match t.init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Normal(std) => {
            let base = name_hash(seed, &t.name);
            let mut v = vec![0f32; n];
            v.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, chunk)| {
                let mut s = base ^ (ci as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
                // Box–Muller: two normals per pair of uniforms in (0, 1].
                for pair in chunk.chunks_mut(2) {
                    let u1 = ((splitmix(&mut s) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                    let u2 = (splitmix(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
                    let r = (-2.0 * u1.ln()).sqrt() * std as f64;
                    let th = 2.0 * std::f64::consts::PI * u2;
                    pair[0] = (r * th.cos()) as f32;
                    if let Some(x) = pair.get_mut(1) {
                        *x = (r * th.sin()) as f32;
                    }
                }
            });
            v
        }
    }
}

fn to_bytes(v: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::BF16 => v.par_iter().flat_map_iter(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        DType::F16 => v.par_iter().flat_map_iter(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        _ => bytemuck::cast_slice(v).to_vec(),
    }
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir` (None: unknown).
#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized, writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

/// Refuse before writing anything when the model cannot fit (`free`: None when unknown).
fn check_space(out: &Path, preset: &str, needed: u64, free: Option<u64>) -> Result<()> {
    match free {
        Some(free) if free < needed => Err(Error::Output {
            path: out.into(),
            msg: format!("the {preset} model needs {} of disk space, but only {} is free there", human(needed), human(free)),
        }),
        _ => Ok(()),
    }
}

fn human(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

/// What `init` wrote.
#[derive(Clone, Debug)]
pub struct InitSummary {
    pub dir: PathBuf,
    pub tensors: usize,
    pub parameters: u64,
    pub bytes: u64,
    pub dtype: DType,
}

/// Write a random `preset` segmenter into `out` (which must not exist, or be an empty
/// directory). `progress(done_bytes, total_bytes)` is called as tensors are written.
pub fn init_random(preset: &str, out: &Path, seed: u64, progress: &dyn Fn(u64, u64)) -> Result<InitSummary> {
    let (config_json, dtype) = preset_config(preset)?;
    let config_path = out.join("config.json");
    let cfg = SegmenterConfig::from_json(&config_path, &config_json)?;
    if out.exists() {
        let empty = out.is_dir() && std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
        if !empty {
            return Err(Error::Output { path: out.into(), msg: "already exists and is not an empty directory; choose a new path".into() });
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::Output { path: out.into(), msg: format!("parent directory {} does not exist", parent.display()) });
    }

    let mut tensors = plan(&cfg, true);
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let sizes: Vec<u64> = tensors.iter().map(|t| t.shape.iter().product::<usize>() as u64 * dtype.size() as u64).collect();
    let parameters: u64 = tensors.iter().map(|t| t.shape.iter().product::<usize>() as u64).sum();
    let data_bytes: u64 = sizes.iter().sum();
    let header = safetensors_header(&tensors, &sizes, dtype)?;
    let total = 8 + header.len() as u64 + data_bytes;
    // Room for the weights, the small JSON files and some slack for the filesystem.
    let needed = total + total / 100 + (16 << 20);
    check_space(out, preset, needed, free_bytes(&parent))?;

    let ids = SteerIds { prompt_end: prompt_end_id(&cfg)?, seg: cfg.seg_token_id, eos: tj::EOS_ID };
    let fname = out.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "segmenter".into());
    let tmp = parent.join(format!(".{fname}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| Error::Output { path: tmp.clone(), msg: e.to_string() })?;
    let written = (|| -> Result<()> {
        write_json(&tmp.join("config.json"), &config_json)?;
        write_json(&tmp.join("tokenizer.json"), &tj::tokenizer_json())?;
        write_json(&tmp.join("tokenizer_config.json"), &tj::tokenizer_config_json(cfg.llm.max_position_embeddings))?;
        write_atomic(&tmp.join("model.safetensors"), |f| {
            f.write_all(&(header.len() as u64).to_le_bytes())?;
            f.write_all(&header)?;
            let mut done = 0u64;
            for (t, &size) in tensors.iter().zip(&sizes) {
                let mut v = generate(t, seed);
                steer(&t.name, &t.shape, &mut v, ids);
                let bytes = to_bytes(&v, dtype);
                debug_assert_eq!(bytes.len() as u64, size);
                f.write_all(&bytes)?;
                done += size;
                progress(done, data_bytes);
            }
            Ok(())
        })?;
        if out.exists() {
            std::fs::remove_dir(out).map_err(|e| Error::Output { path: out.into(), msg: e.to_string() })?;
        }
        std::fs::rename(&tmp, out).map_err(|e| Error::Output { path: out.into(), msg: e.to_string() })
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(InitSummary { dir: out.to_path_buf(), tensors: tensors.len(), parameters, bytes: total, dtype })
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Output { path: path.into(), msg: e.to_string() })?;
    write_atomic(path, |f| f.write_all(text.as_bytes()).and_then(|_| f.write_all(b"\n")))
}

/// The safetensors header for the tensors in order, padded to 8 bytes as the format requires.
fn safetensors_header(tensors: &[Planned], sizes: &[u64], dtype: DType) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for (t, &size) in tensors.iter().zip(sizes) {
        header.insert(t.name.clone(), json!({"dtype": dtype.safetensors_name(), "shape": t.shape, "data_offsets": [offset, offset + size]}));
        offset += size;
    }
    let mut bytes = serde_json::to_vec(&Value::Object(header)).map_err(|e| Error::shape("init", e.to_string()))?;
    while !(8 + bytes.len()).is_multiple_of(8) {
        bytes.push(b' ');
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_the_asked_spread_and_repeat() {
        let t = Planned { name: "x.weight".into(), shape: vec![300, 1000], init: Init::Normal(0.02) };
        let v = generate(&t, 7);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 2e-4 && (std - 0.02).abs() < 2e-4, "mean {mean} std {std}");
        assert_eq!(v, generate(&t, 7));
        assert_ne!(v, generate(&t, 8));
    }

    #[test]
    fn refuses_a_model_larger_than_the_free_space() {
        let e = check_space(Path::new("out"), "lisa-7b", 15_500_000_000, Some(9_000_000_000)).unwrap_err().to_string();
        assert!(e.contains("out") && e.contains("lisa-7b") && e.contains("15.50 GB") && e.contains("9.00 GB"), "{e}");
        assert!(check_space(Path::new("out"), "tiny", 10, Some(11)).is_ok());
        assert!(check_space(Path::new("out"), "tiny", 10, None).is_ok());
        assert!(free_bytes(Path::new(".")).is_some_and(|b| b > 0));
    }

    #[test]
    fn every_preset_config_parses() {
        for p in PRESETS {
            let (json, _) = preset_config(p).unwrap();
            let cfg = SegmenterConfig::from_json(Path::new("config.json"), &json).unwrap();
            assert_eq!(cfg.grid, 24, "{p}");
            assert_eq!(prompt_end_id(&cfg).unwrap(), BYTE_BASE + b':' as u32);
        }
        assert!(preset_config("huge").unwrap_err().to_string().contains("tiny"));
    }
}
