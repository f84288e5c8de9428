//! Benchmark presets: the component configs of a LISA-style stack, written as the HF
//! `config.json` objects the models' own parsers read.
//!
//! Every preset keeps the real token geometry — the vision encoder sees 336 px in 14 px patches
//! (24×24 = 576 patch tokens), SAM sees 1024 px in 16 px patches (a 64×64 embedding, 256² mask
//! logits) — and scales only widths and depths, so token counts, attention lengths and the
//! projector comparison mean the same thing at every size.

use serde_json::{json, Value};

use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::superpixels::SuperpixelConfig;

/// Vision encoder input side and patch (CLIP ViT-L/14-336 geometry).
pub const VISION_IMAGE: usize = 336;
pub const VISION_PATCH: usize = 14;
/// SAM input side and patch.
pub const SAM_IMAGE: usize = 1024;
pub const SAM_PATCH: usize = 16;

/// Preset names, in the order they are listed to the user.
pub const PRESET_NAMES: [&str; 5] = ["tiny", "cpu", "lisa-7b", "glamm-7b", "dinov2-lisa-7b"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisionKind {
    Clip,
    Dinov2,
}

#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    /// One line naming the shapes, for the report header.
    pub summary: &'static str,
    pub vision_kind: VisionKind,
    /// `config.json` of the vision tower (`clip_vision_model` or `dinov2`).
    pub vision_config: Value,
    /// Hidden state the patch features come from, indexed as HF's `hidden_states`.
    pub feature_layer: i64,
    /// `config.json` of `SamModel`.
    pub sam_config: Value,
    /// `config.json` of `LlamaForCausalLM`.
    pub llm_config: Value,
    pub weight_dtype: DType,
    /// Superpixel generation on the preset's SAM (`random_weight_superpixels`).
    pub superpixels: SuperpixelConfig,
}

/// Superpixel settings for SAM with random weights (the bench's and `visword init`'s). Random
/// SAM predicts IoUs and stabilities near 0 and masks without meaning, so the trained-model
/// thresholds (IoU ≥ 0.86, stability ≥ 0.92) would reject every mask; these let its masks through
/// so the stage does its real work on the photo. The count is capped at 40, the paper's mean
/// number of visual words, so the svp row shows the token budget the method runs at: the label
/// map and coverage are built from the photo, the cap only bounds how many regions stay.
/// `points_per_side` is the preset's: 32 (the default grid) where the backend can afford it.
pub fn random_weight_superpixels(points_per_side: usize) -> SuperpixelConfig {
    SuperpixelConfig {
        points_per_side,
        pred_iou_thresh: -1000.0,
        stability_thresh: 0.0,
        min_area: 0.0,
        max_superpixels: 40,
        ..SuperpixelConfig::default()
    }
}

/// The preset the backend can run in reasonable time: the small one on the CPU, the real LISA-7B
/// shapes on a GPU.
pub fn default_preset_name(be: &Backend) -> &'static str {
    if be.name() == "cpu" {
        "cpu"
    } else {
        "lisa-7b"
    }
}

pub fn preset(name: &str) -> Result<Preset> {
    Ok(match name {
        "tiny" => tiny(),
        "cpu" => cpu(),
        "lisa-7b" => lisa_7b(),
        "glamm-7b" => glamm_7b(),
        "dinov2-lisa-7b" => dinov2_lisa_7b(),
        _ => {
            return Err(Error::arg("--preset", format!("unknown preset `{name}`; known presets: {}", PRESET_NAMES.join(", "))));
        }
    })
}

fn clip(hidden: usize, intermediate: usize, layers: usize, heads: usize) -> Value {
    json!({
        "model_type": "clip_vision_model",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "image_size": VISION_IMAGE,
        "patch_size": VISION_PATCH,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    })
}

/// SAM with the released prompt encoder / mask decoder layout; `neck` is the embedding width
/// (256 in every released SAM; smaller only for `tiny`).
fn sam(hidden: usize, layers: usize, heads: usize, global: &[usize], neck: usize, decoder_mlp: usize, decoder_heads: usize) -> Value {
    json!({
        "model_type": "sam",
        "vision_config": {
            "hidden_size": hidden,
            "output_channels": neck,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": SAM_IMAGE,
            "patch_size": SAM_PATCH,
            "window_size": 14,
            "global_attn_indexes": global,
            "num_pos_feats": neck / 2,
            "mlp_ratio": 4.0,
        },
        "prompt_encoder_config": { "hidden_size": neck, "image_size": SAM_IMAGE, "patch_size": SAM_PATCH },
        "mask_decoder_config": {
            "hidden_size": neck,
            "mlp_dim": decoder_mlp,
            "num_attention_heads": decoder_heads,
            "iou_head_hidden_dim": neck,
        },
    })
}

#[allow(clippy::too_many_arguments)]
fn llama(hidden: usize, layers: usize, heads: usize, kv_heads: usize, intermediate: usize, vocab: usize, tied: bool, max_pos: usize, theta: f64) -> Value {
    json!({
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "max_position_embeddings": max_pos,
        "rope_theta": theta,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
    })
}

/// The CPU preset's superpixel point grid: SAM's mask decoder costs about 0.1 s per prompt at
/// the `cpu` widths on two cores, so 8×8 = 64 prompts keep `visword bench` around half a
/// minute; `--points-per-side 16|32` measures the larger grids (BENCHMARKS.md).
pub const CPU_POINTS_PER_SIDE: usize = 8;

/// Seconds on any machine: tiny widths and depths, real geometry. For tests and CI.
fn tiny() -> Preset {
    Preset {
        name: "tiny",
        summary: "CLIP-like 32w/2L · SAM 32w/2L · Llama 64h/2L (vocab 4096)",
        vision_kind: VisionKind::Clip,
        vision_config: clip(32, 64, 2, 2),
        feature_layer: -2,
        sam_config: sam(32, 2, 2, &[1], 32, 64, 2),
        llm_config: llama(64, 2, 4, 2, 128, 4096, true, 2048, 10000.0),
        weight_dtype: DType::F32,
        superpixels: random_weight_superpixels(8),
    }
}

/// The CPU default: a CLIP-like and a SAM encoder at 384 wide, SmolLM2-135M's decoder.
fn cpu() -> Preset {
    Preset {
        name: "cpu",
        summary: "CLIP-like 384w/6L · SAM 384w/6L · Llama = SmolLM2-135M shapes (576h/30L)",
        vision_kind: VisionKind::Clip,
        vision_config: clip(384, 1536, 6, 6),
        feature_layer: -2,
        sam_config: sam(384, 6, 6, &[2, 5], 256, 2048, 8),
        llm_config: llama(576, 30, 9, 3, 1536, 49152, true, 8192, 100000.0),
        weight_dtype: DType::BF16,
        // 16 prompts per decoder batch: a 64-prompt batch holds 268 MB per activation at this width.
        superpixels: SuperpixelConfig { points_per_batch: 16, ..random_weight_superpixels(CPU_POINTS_PER_SIDE) },
    }
}

fn sam_vit_h() -> Value {
    sam(1280, 32, 16, &[7, 15, 23, 31], 256, 2048, 8)
}

fn llama_2_7b() -> Value {
    llama(4096, 32, 32, 32, 11008, 32000, false, 4096, 10000.0)
}

/// LISA-7B: CLIP ViT-L/14-336, SAM ViT-H, Llama-2-7B.
fn lisa_7b() -> Preset {
    Preset {
        name: "lisa-7b",
        summary: "CLIP ViT-L/14-336 · SAM ViT-H · Llama-2-7B",
        vision_kind: VisionKind::Clip,
        vision_config: clip(1024, 4096, 24, 16),
        feature_layer: -2,
        sam_config: sam_vit_h(),
        llm_config: llama_2_7b(),
        weight_dtype: DType::BF16,
        superpixels: random_weight_superpixels(32),
    }
}

/// GLaMM-7B: the same CLIP ViT-L/14-336 and SAM ViT-H (its grounding encoder and pixel
/// decoder) around Vicuna-7B v1.5, which has Llama-2-7B's shapes and 4096-token context.
fn glamm_7b() -> Preset {
    Preset { name: "glamm-7b", summary: "CLIP ViT-L/14-336 · SAM ViT-H · Vicuna-7B v1.5", ..lisa_7b() }
}

/// LISA-7B with DINOv2-L/14 in place of CLIP. `image_size` is set to the 336 input so the
/// position table is used as is (the released 518 table would be resized on every call, which
/// is host work this benchmark is not about).
fn dinov2_lisa_7b() -> Preset {
    Preset {
        name: "dinov2-lisa-7b",
        summary: "DINOv2-L/14 @336 · SAM ViT-H · Llama-2-7B",
        vision_kind: VisionKind::Dinov2,
        vision_config: json!({
            "model_type": "dinov2",
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "mlp_ratio": 4.0,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-6,
            "image_size": VISION_IMAGE,
            "patch_size": VISION_PATCH,
            "layerscale_value": 1.0,
        }),
        feature_layer: -2,
        sam_config: sam_vit_h(),
        llm_config: llama_2_7b(),
        weight_dtype: DType::BF16,
        superpixels: random_weight_superpixels(32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_preset_exists() {
        for name in PRESET_NAMES {
            assert_eq!(preset(name).unwrap().name, name);
        }
        let e = preset("huge").unwrap_err().to_string();
        assert!(e.contains("huge") && e.contains("dinov2-lisa-7b"), "{e}");
    }

    /// Every preset's configs pass the models' own parsers with the intended shapes (the 7B
    /// presets are too large to build in a unit test).
    #[test]
    fn configs_parse_with_the_real_geometry() {
        use crate::models::{clip::ClipVisionConfig, dinov2::Dinov2Config, llama::LlamaConfig, sam::SamConfig};
        let path = std::path::Path::new("<test>");
        for name in PRESET_NAMES {
            let p = preset(name).unwrap();
            let (grid, width) = match p.vision_kind {
                VisionKind::Clip => {
                    let c = ClipVisionConfig::from_model_config(path, &p.vision_config).unwrap();
                    (c.grid(), c.hidden_size)
                }
                VisionKind::Dinov2 => {
                    let c = Dinov2Config::from_json(path, &p.vision_config).unwrap();
                    (c.grid(), c.hidden_size)
                }
            };
            assert_eq!(grid, 24, "{name}");
            let sam: SamConfig = serde_json::from_value(p.sam_config.clone()).unwrap();
            sam.validate(path).unwrap();
            assert_eq!(sam.vision_config.grid(), 64, "{name}");
            let llm = LlamaConfig::from_json(p.llm_config.as_object().unwrap(), path).unwrap();
            if name.ends_with("-7b") {
                assert_eq!((width, sam.vision_config.hidden_size, llm.hidden_size, llm.num_hidden_layers), (1024, 1280, 4096, 32));
                assert_eq!((llm.intermediate_size, llm.vocab_size, llm.tie_word_embeddings), (11008, 32000, false));
            }
        }
        let cpu = LlamaConfig::from_json(preset("cpu").unwrap().llm_config.as_object().unwrap(), path).unwrap();
        assert_eq!((cpu.hidden_size, cpu.num_hidden_layers, cpu.num_key_value_heads, cpu.vocab_size), (576, 30, 3, 49152));
    }
}
