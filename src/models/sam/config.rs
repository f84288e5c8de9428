//! SAM's config.json (transformers `SamConfig`): a vision encoder, a prompt encoder and a mask
//! decoder section. Absent keys take transformers' defaults (the ViT-H values), so a partial
//! config reads the way transformers reads it.

use std::path::Path;

use serde::Deserialize;

use crate::backend::Activation;
use crate::error::{Error, Result};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SamVisionConfig {
    pub hidden_size: usize,
    pub output_channels: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub qkv_bias: bool,
    pub mlp_ratio: f64,
    pub use_abs_pos: bool,
    pub use_rel_pos: bool,
    pub window_size: usize,
    pub global_attn_indexes: Vec<usize>,
    pub num_pos_feats: usize,
    pub mlp_dim: Option<usize>,
}

impl Default for SamVisionConfig {
    fn default() -> Self {
        SamVisionConfig {
            hidden_size: 768,
            output_channels: 256,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 1024,
            patch_size: 16,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-6,
            qkv_bias: true,
            mlp_ratio: 4.0,
            use_abs_pos: true,
            use_rel_pos: true,
            window_size: 14,
            global_attn_indexes: vec![2, 5, 8, 11],
            num_pos_feats: 128,
            mlp_dim: None,
        }
    }
}

impl SamVisionConfig {
    /// Side of the patch grid (64 for a 1024 input with 16-pixel patches).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// The MLP width: `mlp_dim`, or `hidden_size · mlp_ratio` truncated as transformers does.
    pub fn mlp_width(&self) -> usize {
        self.mlp_dim.unwrap_or((self.hidden_size as f64 * self.mlp_ratio) as usize)
    }
    /// Window size of layer `i`: 0 for the global-attention layers.
    pub fn layer_window(&self, i: usize) -> usize {
        if self.global_attn_indexes.contains(&i) {
            0
        } else {
            self.window_size
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SamPromptEncoderConfig {
    pub hidden_size: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub mask_input_channels: usize,
    pub num_point_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for SamPromptEncoderConfig {
    fn default() -> Self {
        SamPromptEncoderConfig {
            hidden_size: 256,
            image_size: 1024,
            patch_size: 16,
            mask_input_channels: 16,
            num_point_embeddings: 4,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-6,
        }
    }
}

impl SamPromptEncoderConfig {
    /// Side of the image embedding grid the dense prompt must match.
    pub fn image_embedding_size(&self) -> usize {
        self.image_size / self.patch_size
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SamMaskDecoderConfig {
    pub hidden_size: usize,
    pub hidden_act: String,
    pub mlp_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub attention_downsample_rate: usize,
    pub num_multimask_outputs: usize,
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
    pub layer_norm_eps: f64,
}

impl Default for SamMaskDecoderConfig {
    fn default() -> Self {
        SamMaskDecoderConfig {
            hidden_size: 256,
            hidden_act: "relu".into(),
            mlp_dim: 2048,
            num_hidden_layers: 2,
            num_attention_heads: 8,
            attention_downsample_rate: 2,
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: 256,
            layer_norm_eps: 1e-6,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct SamConfig {
    pub vision_config: SamVisionConfig,
    pub prompt_encoder_config: SamPromptEncoderConfig,
    pub mask_decoder_config: SamMaskDecoderConfig,
}

fn act(path: &Path, section: &str, name: &str) -> Result<Activation> {
    Activation::from_hf(name)
        .ok_or_else(|| Error::config(path, format!("{section}.hidden_act `{name}` is not a supported activation")))
}

impl SamConfig {
    /// Read and validate `<dir>/config.json` (or a config file given directly).
    pub fn from_file(path: &Path) -> Result<SamConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        if let Some(mt) = json.get("model_type").and_then(|m| m.as_str()) {
            if mt != "sam" {
                return Err(Error::config(path, format!("model_type is `{mt}`, expected `sam`")));
            }
        }
        for section in ["vision_config", "prompt_encoder_config", "mask_decoder_config"] {
            if !json.get(section).is_some_and(|s| s.is_object()) {
                return Err(Error::config(path, format!("no `{section}` object: not a SamModel config")));
            }
        }
        let cfg: SamConfig =
            serde_json::from_value(json).map_err(|e| Error::config(path, format!("invalid SAM config: {e}")))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Check the relations between sections that the checkpoint's shapes rely on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let v = &self.vision_config;
        let p = &self.prompt_encoder_config;
        let d = &self.mask_decoder_config;
        let bad = |msg: String| Err(Error::config(path, msg));
        if v.patch_size == 0 || v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return bad(format!("vision_config.image_size {} is not a positive multiple of patch_size {}", v.image_size, v.patch_size));
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return bad(format!("vision_config.hidden_size {} is not divisible by num_attention_heads {}", v.hidden_size, v.num_attention_heads));
        }
        if let Some(&i) = v.global_attn_indexes.iter().find(|&&i| i >= v.num_hidden_layers) {
            return bad(format!("vision_config.global_attn_indexes names layer {i}, but there are {} layers", v.num_hidden_layers));
        }
        if 2 * v.num_pos_feats != p.hidden_size || p.hidden_size != d.hidden_size {
            return bad(format!(
                "the positional encoding width 2·vision_config.num_pos_feats = {} must equal prompt_encoder_config.hidden_size {} and mask_decoder_config.hidden_size {}",
                2 * v.num_pos_feats, p.hidden_size, d.hidden_size
            ));
        }
        if v.output_channels != d.hidden_size {
            return bad(format!("vision_config.output_channels {} must equal mask_decoder_config.hidden_size {}", v.output_channels, d.hidden_size));
        }
        if p.patch_size == 0 || p.image_size / p.patch_size != v.grid() {
            return bad(format!(
                "prompt_encoder_config image_size {} / patch_size {} must give the vision grid side {}",
                p.image_size, p.patch_size, v.grid()
            ));
        }
        if p.mask_input_channels < 4 || !p.mask_input_channels.is_multiple_of(4) {
            return bad(format!("prompt_encoder_config.mask_input_channels {} must be a positive multiple of 4", p.mask_input_channels));
        }
        if p.num_point_embeddings < 4 {
            return bad(format!("prompt_encoder_config.num_point_embeddings {} must be at least 4", p.num_point_embeddings));
        }
        if !d.hidden_size.is_multiple_of(8) {
            return bad(format!("mask_decoder_config.hidden_size {} must be a multiple of 8", d.hidden_size));
        }
        if d.attention_downsample_rate == 0 || d.num_attention_heads == 0 || !(d.hidden_size / d.attention_downsample_rate).is_multiple_of(d.num_attention_heads) || !d.hidden_size.is_multiple_of(d.num_attention_heads) {
            return bad(format!(
                "mask_decoder_config: hidden_size {} / attention_downsample_rate {} must be divisible by num_attention_heads {}",
                d.hidden_size, d.attention_downsample_rate, d.num_attention_heads
            ));
        }
        if d.iou_head_depth < 2 {
            return bad(format!("mask_decoder_config.iou_head_depth {} must be at least 2", d.iou_head_depth));
        }
        if d.num_multimask_outputs == 0 {
            return bad("mask_decoder_config.num_multimask_outputs must be at least 1".into());
        }
        act(path, "vision_config", &v.hidden_act)?;
        act(path, "prompt_encoder_config", &p.hidden_act)?;
        act(path, "mask_decoder_config", &d.hidden_act)?;
        Ok(())
    }

    pub fn vision_act(&self) -> Activation {
        Activation::from_hf(&self.vision_config.hidden_act).unwrap_or(Activation::Gelu)
    }
    pub fn prompt_act(&self) -> Activation {
        Activation::from_hf(&self.prompt_encoder_config.hidden_act).unwrap_or(Activation::Gelu)
    }
    pub fn decoder_act(&self) -> Activation {
        Activation::from_hf(&self.mask_decoder_config.hidden_act).unwrap_or(Activation::Relu)
    }
}
