//! DINOv2 (HF `Dinov2Model`): patch conv + CLS token + learned positions (bicubically resized to
//! the input's patch grid), pre-norm layers with layer scale and a GELU MLP or SwiGLU FFN, and a
//! final layernorm whose CLS row is the pooled output.
//!
//! Tensor names: released checkpoints (and `save_pretrained` in transformers 5, which writes the
//! original names back) use `attention.attention.{query,key,value}`, `attention.output.dense`
//! and, for SwiGLU, `mlp.weights_in` (gate and up stacked) / `mlp.weights_out`. transformers 5's
//! in-memory names (`attention.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`) are accepted too; both
//! spellings live in `AttentionNames` / `load_ffn` below and nowhere else.

use std::path::Path;

use crate::backend::{Activation, Backend};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::vit::{self, Embeddings, LayerNorm, Linear, PatchEmbed, PositionTable, SelfAttention, VisionOutput};
use crate::tensor::{CpuData, Tensor};
use crate::weights::VarView;

#[derive(Clone, Debug, PartialEq)]
pub struct Dinov2Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub mlp_ratio: f64,
    pub hidden_act: Activation,
    pub layer_norm_eps: f32,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub qkv_bias: bool,
    pub use_swiglu_ffn: bool,
}

/// An int, or a `[n, n]` pair (HF accepts tuples but DINOv2's position grid is square).
fn square_field(path: &Path, json: &serde_json::Value, name: &str, default: usize) -> Result<usize> {
    let v = match json.get(name) {
        Some(serde_json::Value::Array(a)) => {
            let dims: Vec<usize> = a.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect();
            match dims.as_slice() {
                [h, w] if h == w && a.len() == 2 => *h,
                _ => return Err(Error::config(path, format!("field `{name}` must be an integer or a square [n, n], got {a:?}"))),
            }
        }
        _ => vit::field(path, json, name, default)?,
    };
    if v == 0 {
        return Err(Error::config(path, format!("field `{name}` must be positive")));
    }
    Ok(v)
}

impl Dinov2Config {
    pub fn from_json(path: &Path, json: &serde_json::Value) -> Result<Dinov2Config> {
        if let Some(t) = vit::model_type(json) {
            if t != "dinov2" {
                return Err(Error::config(path, format!("model_type `{t}` is not `dinov2`")));
            }
        }
        let cfg = Dinov2Config {
            hidden_size: vit::size_field(path, json, "hidden_size", 768)?,
            num_hidden_layers: vit::field(path, json, "num_hidden_layers", 12)?,
            num_attention_heads: vit::size_field(path, json, "num_attention_heads", 12)?,
            mlp_ratio: vit::field(path, json, "mlp_ratio", 4.0)?,
            hidden_act: vit::activation_field(path, json, "gelu")?,
            layer_norm_eps: vit::field::<f64>(path, json, "layer_norm_eps", 1e-6)? as f32,
            image_size: square_field(path, json, "image_size", 224)?,
            patch_size: square_field(path, json, "patch_size", 14)?,
            num_channels: vit::size_field(path, json, "num_channels", 3)?,
            qkv_bias: vit::field(path, json, "qkv_bias", true)?,
            use_swiglu_ffn: vit::field(path, json, "use_swiglu_ffn", false)?,
        };
        vit::head_dim(path, cfg.hidden_size, cfg.num_attention_heads)?;
        if cfg.patch_size > cfg.image_size {
            return Err(Error::config(path, format!("patch_size {} exceeds image_size {}", cfg.patch_size, cfg.image_size)));
        }
        if !(cfg.mlp_ratio > 0.0 && cfg.mlp_ratio < 1024.0) {
            return Err(Error::config(path, format!("mlp_ratio {} is out of range", cfg.mlp_ratio)));
        }
        Ok(cfg)
    }

    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Width of the MLP: `int(hidden · mlp_ratio)`.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Width of the SwiGLU FFN: two thirds of the MLP width, rounded up to a multiple of 8.
    pub fn swiglu_hidden(&self) -> usize {
        ((self.mlp_hidden() as f64 * 2.0 / 3.0) as usize).div_ceil(8) * 8
    }
}

#[derive(Debug)]
enum Ffn {
    Mlp { fc1: Linear, fc2: Linear, act: Activation },
    SwiGlu { gate: Linear, up: Linear, down: Linear },
}

impl Ffn {
    fn forward(&self, be: &Backend, x: &Tensor) -> Result<Tensor> {
        match self {
            Ffn::Mlp { fc1, fc2, act } => fc2.forward(be, &fc1.forward(be, x, *act, None)?, Activation::None, None),
            Ffn::SwiGlu { gate, up, down } => {
                let g = gate.forward(be, x, Activation::None, None)?;
                let u = up.forward(be, x, Activation::None, None)?;
                down.forward(be, &be.silu_mul(&g, &u)?, Activation::None, None)
            }
        }
    }
}

/// Rows `start..start + len` of a host weight `[R, C]` in its own dtype (load-time split of the
/// stacked SwiGLU input projection).
fn host_rows(t: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let c = t.dim(1);
    let r = start * c..(start + len) * c;
    let data = match t.dtype() {
        DType::F32 => CpuData::F32(t.as_f32()?[r].to_vec()),
        DType::F16 => CpuData::F16(t.as_f16()?[r].to_vec()),
        DType::BF16 => CpuData::BF16(t.as_bf16()?[r].to_vec()),
        dt => return Err(Error::shape("host_rows", format!("weight dtype {dt} is not a float type"))),
    };
    Tensor::from_cpu(data, t.dtype(), vec![len, c])
}

fn load_ffn(vv: &VarView, cfg: &Dinov2Config) -> Result<Ffn> {
    let d = cfg.hidden_size;
    if !cfg.use_swiglu_ffn {
        let m = cfg.mlp_hidden();
        return Ok(Ffn::Mlp { fc1: Linear::load(vv, "fc1", m, d, true)?, fc2: Linear::load(vv, "fc2", d, m, true)?, act: cfg.hidden_act });
    }
    let h = cfg.swiglu_hidden();
    if vv.contains("gate_proj.weight") {
        return Ok(Ffn::SwiGlu {
            gate: Linear::load(vv, "gate_proj", h, d, true)?,
            up: Linear::load(vv, "up_proj", h, d, true)?,
            down: Linear::load(vv, "down_proj", d, h, true)?,
        });
    }
    let be = vv.backend();
    let w_in = vv.get_host("weights_in.weight", &[2 * h, d])?;
    let b_in = vv.get_host("weights_in.bias", &[2 * h])?.to_f32_vec()?;
    let half = |i: usize| -> Result<Linear> {
        Ok(Linear {
            weight: be.upload_weight(&host_rows(&w_in, i * h, h)?)?,
            bias: Some(be.upload(&Tensor::from_f32(b_in[i * h..(i + 1) * h].to_vec(), vec![h])?)?),
        })
    };
    Ok(Ffn::SwiGlu { gate: half(0)?, up: half(1)?, down: Linear::load(vv, "weights_out", d, h, true)? })
}

/// The checkpoint's names for the attention projections (see the module doc).
struct AttentionNames {
    q: &'static str,
    k: &'static str,
    v: &'static str,
    o: &'static str,
}

impl AttentionNames {
    fn of(attn: &VarView) -> AttentionNames {
        if attn.contains("q_proj.weight") {
            AttentionNames { q: "q_proj", k: "k_proj", v: "v_proj", o: "o_proj" }
        } else {
            AttentionNames { q: "attention.query", k: "attention.key", v: "attention.value", o: "output.dense" }
        }
    }
}

#[derive(Debug)]
struct Layer {
    norm1: LayerNorm,
    attention: SelfAttention,
    lambda1: Tensor,
    norm2: LayerNorm,
    mlp: Ffn,
    lambda2: Tensor,
}

impl Layer {
    fn load(vv: &VarView, cfg: &Dinov2Config, pack: bool) -> Result<Layer> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let attn = vv.pp("attention");
        let n = AttentionNames::of(&attn);
        Ok(Layer {
            norm1: LayerNorm::load(vv, "norm1", d, eps)?,
            attention: SelfAttention::load(&attn, [n.q, n.k, n.v, n.o], d, cfg.num_attention_heads, cfg.qkv_bias, pack)?,
            lambda1: vv.get_f32("layer_scale1.lambda1", &[d])?,
            norm2: LayerNorm::load(vv, "norm2", d, eps)?,
            mlp: load_ffn(&vv.pp("mlp"), cfg)?,
            lambda2: vv.get_f32("layer_scale2.lambda1", &[d])?,
        })
    }

    fn forward(&self, be: &Backend, x: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(be, x)?;
        let a = self.attention.forward(be, &h, None)?;
        let x = be.add(&be.mul(&a, &self.lambda1)?, x)?;
        let h = self.norm2.forward(be, &x)?;
        let m = self.mlp.forward(be, &h)?;
        be.add(&be.mul(&m, &self.lambda2)?, &x)
    }
}

#[derive(Debug)]
pub struct Dinov2Model {
    pub config: Dinov2Config,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    layernorm: LayerNorm,
}

impl Dinov2Model {
    /// Load from an HF model directory (config.json + safetensors). Tensors may sit at the root
    /// (`Dinov2Model`) or under `dinov2.` (`Dinov2ForImageClassification`).
    pub fn load(dir: &Path, be: &Backend) -> Result<Dinov2Model> {
        let (path, json) = vit::read_config(dir)?;
        let cfg = Dinov2Config::from_json(&path, &json)?;
        vit::with_weights(dir, be, "dinov2", "embeddings.cls_token", |vv| Self::new(cfg, vv))
    }

    /// Build from weights scoped at the model's root (the level holding `embeddings`).
    pub fn new(cfg: Dinov2Config, vv: &VarView) -> Result<Dinov2Model> {
        let pack = vv.backend().packs_qkv(cfg.hidden_size / cfg.num_attention_heads.max(1));
        Self::with_qkv_packing(cfg, vv, pack)
    }

    /// `new` with q, k and v stacked into one projection or not, whatever the backend prefers
    /// (`vit::Projections`; tests compare the two).
    pub fn with_qkv_packing(cfg: Dinov2Config, vv: &VarView, pack: bool) -> Result<Dinov2Model> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let (g, p) = (cfg.grid(), cfg.patch_size);
        let emb = vv.pp("embeddings");
        let proj = emb.pp("patch_embeddings.projection");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(&vv.pp("encoder.layer").pp(i), &cfg, pack))
            .collect::<Result<Vec<_>>>()?;
        Ok(Dinov2Model {
            embeddings: Embeddings {
                class_token: emb.get_f32("cls_token", &[1, 1, d])?,
                patches: PatchEmbed {
                    weight: proj.get("weight", &[d, cfg.num_channels, p, p])?,
                    bias: Some(proj.get_f32("bias", &[d])?),
                    patch: p,
                    channels: cfg.num_channels,
                },
                positions: PositionTable::load(&emb, "position_embeddings", &[1, g * g + 1, d], g, d)?,
                image_size: cfg.image_size,
            },
            layers,
            layernorm: LayerNorm::load(vv, "layernorm", d, eps)?,
            config: cfg,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// CLS + patch embeddings + positions (always resized to the input's patch grid): HF's
    /// `hidden_states[0]`.
    fn embed(&self, be: &Backend, pixel_values: &Tensor) -> Result<(Tensor, (usize, usize))> {
        self.embeddings.forward(be, pixel_values, true)
    }

    /// The full forward pass: `last_hidden_state` is the final-layernormed sequence and
    /// `pooler_output` its CLS row; `hidden_states` (when asked) are the un-normed embeddings and
    /// layer outputs, as HF returns them.
    pub fn forward(&self, be: &Backend, pixel_values: &Tensor, output_hidden_states: bool) -> Result<VisionOutput> {
        let (x, grid) = self.embed(be, pixel_values)?;
        let (x, hidden_states) = vit::run_layers(&self.layers, x, output_hidden_states, |l, x| l.forward(be, x))?;
        let last_hidden_state = self.layernorm.forward(be, &x)?;
        let (b, d) = (last_hidden_state.dim(0), last_hidden_state.dim(2));
        let pooler_output = be.narrow(&last_hidden_state, 1, 0, 1)?.reshape(&[b, d])?;
        Ok(VisionOutput { last_hidden_state, pooler_output, hidden_states, grid })
    }

    /// HF's `hidden_states[layer]` (`[B, 1 + N, D]`, un-normed), computing only the layers it
    /// needs; negative indices count from the end.
    pub fn feature_layer(&self, be: &Backend, pixel_values: &Tensor, layer: i64) -> Result<Tensor> {
        let stop = vit::resolve_layer(layer, self.layers.len())?;
        let (x, _) = self.embed(be, pixel_values)?;
        Ok(vit::run_layers(&self.layers[..stop], x, false, |l, x| l.forward(be, x))?.0)
    }
}
