//! CLIP's vision tower (HF `CLIPVisionModel`): patch conv + class token + learned positions,
//! `pre_layrnorm`, pre-norm encoder layers (quick_gelu or gelu MLP), and `post_layernorm` on the
//! class token for the pooled output.
//!
//! Field names follow the checkpoint: `embeddings.{class_embedding, patch_embedding.weight,
//! position_embedding.weight}`, `pre_layrnorm`, `encoder.layers.{i}.{layer_norm1, self_attn.{q,k,v,
//! out}_proj, layer_norm2, mlp.fc1, mlp.fc2}`, `post_layernorm`. Checkpoints of `CLIPModel` and
//! those saved by transformers 4 put them under `vision_model.`; a `CLIPVisionModel` saved by
//! transformers 5 has no prefix. `ClipVisionModel::load` finds either.

use std::path::Path;

use crate::backend::{Activation, Backend, Mlp};
use crate::error::{Error, Result};
use crate::models::vit::{self, Embeddings, LayerNorm, Linear, PatchEmbed, PositionTable, SelfAttention, VisionOutput};
use crate::tensor::Tensor;
use crate::weights::VarView;

#[derive(Clone, Debug, PartialEq)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f32,
}

impl ClipVisionConfig {
    /// Parse a vision config object (HF `CLIPVisionConfig` fields and defaults). `path` is only
    /// used in error messages.
    pub fn from_json(path: &Path, json: &serde_json::Value) -> Result<ClipVisionConfig> {
        if !json.is_object() {
            return Err(Error::config(path, "the vision config is not a JSON object"));
        }
        let cfg = ClipVisionConfig {
            hidden_size: vit::size_field(path, json, "hidden_size", 768)?,
            intermediate_size: vit::size_field(path, json, "intermediate_size", 3072)?,
            num_hidden_layers: vit::field(path, json, "num_hidden_layers", 12)?,
            num_attention_heads: vit::size_field(path, json, "num_attention_heads", 12)?,
            num_channels: vit::size_field(path, json, "num_channels", 3)?,
            image_size: vit::size_field(path, json, "image_size", 224)?,
            patch_size: vit::size_field(path, json, "patch_size", 32)?,
            hidden_act: vit::activation_field(path, json, "quick_gelu")?,
            layer_norm_eps: vit::field::<f64>(path, json, "layer_norm_eps", 1e-5)? as f32,
        };
        vit::head_dim(path, cfg.hidden_size, cfg.num_attention_heads)?;
        if cfg.patch_size > cfg.image_size {
            return Err(Error::config(path, format!("patch_size {} exceeds image_size {}", cfg.patch_size, cfg.image_size)));
        }
        Ok(cfg)
    }

    /// From a whole `config.json`: model_type `clip_vision_model` (the tower itself), or any
    /// config carrying a `vision_config` of that type (`clip`, LLaVA-style wrappers).
    pub fn from_model_config(path: &Path, json: &serde_json::Value) -> Result<ClipVisionConfig> {
        match vit::model_type(json) {
            Some("clip_vision_model") => Self::from_json(path, json),
            _ => match json.get("vision_config") {
                Some(v) if vit::model_type(v).is_none_or(|t| t == "clip_vision_model") => Self::from_json(path, v),
                Some(_) => Err(Error::config(path, "vision_config is not a CLIP vision config")),
                None => Err(Error::config(
                    path,
                    format!("model_type {:?} is not `clip_vision_model` and there is no vision_config", vit::model_type(json)),
                )),
            },
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn load(vv: &VarView, cfg: &ClipVisionConfig, pack: bool) -> Result<EncoderLayer> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let attn = vv.pp("self_attn");
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::load(vv, "layer_norm1", d, eps)?,
            self_attn: SelfAttention::load(&attn, ["q_proj", "k_proj", "v_proj", "out_proj"], d, cfg.num_attention_heads, true, pack)?,
            layer_norm2: LayerNorm::load(vv, "layer_norm2", d, eps)?,
            fc1: Linear::load(&vv.pp("mlp"), "fc1", cfg.intermediate_size, d, true)?,
            fc2: Linear::load(&vv.pp("mlp"), "fc2", d, cfg.intermediate_size, true)?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, be: &Backend, x: &Tensor) -> Result<Tensor> {
        let h = self.layer_norm1.forward(be, x)?;
        let x = self.self_attn.forward(be, &h, Some(x))?;
        let (ln, fc1, fc2) = (&self.layer_norm2, &self.fc1, &self.fc2);
        let mlp = Mlp { fc1: &fc1.weight, b1: fc1.bias.as_ref(), act: self.act, fc2: &fc2.weight, b2: fc2.bias.as_ref() };
        be.layer_norm_mlp(&x, (&ln.weight, &ln.bias, ln.eps), mlp)
    }
}

#[derive(Debug)]
pub struct ClipVisionModel {
    pub config: ClipVisionConfig,
    /// When true, inputs of another size get bicubically interpolated positions (HF's
    /// `interpolate_pos_encoding=True`); when false they are refused, as HF refuses them.
    pub interpolate_pos_encoding: bool,
    embeddings: Embeddings,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
}

impl ClipVisionModel {
    /// Load from an HF model directory (config.json + safetensors).
    pub fn load(dir: &Path, be: &Backend) -> Result<ClipVisionModel> {
        let (path, json) = vit::read_config(dir)?;
        let cfg = ClipVisionConfig::from_model_config(&path, &json)?;
        vit::with_weights(dir, be, "vision_model", "embeddings.class_embedding", |vv| Self::new(cfg, vv))
    }

    /// Build from weights scoped at the tower's root (the level holding `embeddings`).
    pub fn new(cfg: ClipVisionConfig, vv: &VarView) -> Result<ClipVisionModel> {
        let pack = vv.backend().packs_qkv(cfg.head_dim());
        Self::with_qkv_packing(cfg, vv, pack)
    }

    /// `new` with q, k and v stacked into one projection or not, whatever the backend prefers
    /// (`vit::Projections`; tests compare the two).
    pub fn with_qkv_packing(cfg: ClipVisionConfig, vv: &VarView, pack: bool) -> Result<ClipVisionModel> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let emb = vv.pp("embeddings");
        let g = cfg.grid();
        let embeddings = Embeddings {
            class_token: emb.get_f32("class_embedding", &[d])?.reshape(&[1, 1, d])?,
            patches: PatchEmbed {
                weight: emb.get("patch_embedding.weight", &[d, cfg.num_channels, cfg.patch_size, cfg.patch_size])?,
                bias: None,
                patch: cfg.patch_size,
                channels: cfg.num_channels,
            },
            positions: PositionTable::load(&emb, "position_embedding.weight", &[g * g + 1, d], g, d)?,
            image_size: cfg.image_size,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(&vv.pp("encoder.layers").pp(i), &cfg, pack))
            .collect::<Result<Vec<_>>>()?;
        Ok(ClipVisionModel {
            pre_layrnorm: LayerNorm::load(vv, "pre_layrnorm", d, eps)?,
            post_layernorm: LayerNorm::load(vv, "post_layernorm", d, eps)?,
            config: cfg,
            interpolate_pos_encoding: false,
            embeddings,
            layers,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Embeddings followed by `pre_layrnorm`: HF's `hidden_states[0]`. Returns the patch grid too.
    /// Positions are resized for other input sizes only with `interpolate_pos_encoding`.
    fn embed(&self, be: &Backend, pixel_values: &Tensor) -> Result<(Tensor, (usize, usize))> {
        let (x, grid) = self.embeddings.forward(be, pixel_values, self.interpolate_pos_encoding)?;
        Ok((self.pre_layrnorm.forward(be, &x)?, grid))
    }

    /// The full forward pass. `output_hidden_states` keeps every hidden state (HF semantics:
    /// index 0 is the pre-layernormed embeddings, index i the output of layer i).
    pub fn forward(&self, be: &Backend, pixel_values: &Tensor, output_hidden_states: bool) -> Result<VisionOutput> {
        let (x, grid) = self.embed(be, pixel_values)?;
        let (x, hidden_states) = vit::run_layers(&self.layers, x, output_hidden_states, |l, x| l.forward(be, x))?;
        let (b, d) = (x.dim(0), x.dim(2));
        let cls = be.narrow(&x, 1, 0, 1)?.reshape(&[b, d])?;
        let pooler_output = self.post_layernorm.forward(be, &cls)?;
        Ok(VisionOutput { last_hidden_state: x, pooler_output, hidden_states, grid })
    }

    /// HF's `hidden_states[layer]` (`[B, 1 + N, D]`, class token first), computing only the
    /// layers it needs. Negative indices count from the end: LLaVA's `vision_feature_layer = -2`
    /// is the penultimate layer's output.
    pub fn feature_layer(&self, be: &Backend, pixel_values: &Tensor, layer: i64) -> Result<Tensor> {
        let stop = vit::resolve_layer(layer, self.layers.len())?;
        let (x, _) = self.embed(be, pixel_values)?;
        Ok(vit::run_layers(&self.layers[..stop], x, false, |l, x| l.forward(be, x))?.0)
    }
}
