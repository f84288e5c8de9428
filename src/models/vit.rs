//! Pieces shared by the ViT-style vision encoders (CLIP's vision tower, DINOv2): linear and
//! layer-norm modules, the class-token + patch + position embedding step (with bicubic
//! interpolation of the position table), multi-head self-attention, running the layer stack, the
//! outputs struct and HF-style hidden-state indexing.
//!
//! Everything here is written against the `Backend` op set; the one piece of host math is the
//! position-table interpolation, done once per input size on weights, never on activations.

use std::path::Path;

use crate::backend::{Activation, AttnParams, Backend};
use crate::error::{Error, Result};
use crate::dtype::DType;
use crate::tensor::{CpuData, Tensor};
use crate::weights::{VarView, Weights};

/// `y = act(x·Wᵀ + b) (+ residual)`, weights in their stored dtype, bias in f32.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `{name}.weight` [out, in] and, when `bias`, `{name}.bias` [out].
    pub fn load(vv: &VarView, name: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear> {
        let vv = vv.pp(name);
        let weight = vv.get("weight", &[out_dim, in_dim])?;
        let bias = if bias { Some(vv.get_f32("bias", &[out_dim])?) } else { None };
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, be: &Backend, x: &Tensor, act: Activation, residual: Option<&Tensor>) -> Result<Tensor> {
        be.linear(x, &self.weight, self.bias.as_ref(), act, residual)
    }
}

#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn load(vv: &VarView, name: &str, dim: usize, eps: f32) -> Result<LayerNorm> {
        let vv = vv.pp(name);
        Ok(LayerNorm { weight: vv.get_f32("weight", &[dim])?, bias: vv.get_f32("bias", &[dim])?, eps })
    }

    pub fn forward(&self, be: &Backend, x: &Tensor) -> Result<Tensor> {
        be.layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// Non-overlapping patch embedding: a conv with kernel = stride = patch, flattened to tokens.
#[derive(Debug)]
pub struct PatchEmbed {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub patch: usize,
    pub channels: usize,
}

impl PatchEmbed {
    /// `[B, C, H, W]` → (`[B, gh·gw, D]`, gh, gw). Pixels past the last whole patch are ignored,
    /// as the strided convolution in PyTorch ignores them.
    pub fn forward(&self, be: &Backend, pixel_values: &Tensor) -> Result<(Tensor, usize, usize)> {
        let s = pixel_values.shape();
        let (b, h, w) = (s[0], s[2], s[3]);
        let y = be.conv2d(pixel_values, &self.weight, self.bias.as_ref(), self.patch, 0)?;
        let d = y.dim(1);
        let (gh, gw) = (h / self.patch, w / self.patch);
        let y = y.reshape(&[b, d, gh * gw])?;
        Ok((be.permute(&y, &[0, 2, 1])?, gh, gw))
    }
}

/// A learned position table `[1, 1 + grid², D]` (the class token's position first), kept on the
/// host as well so that other input sizes can get a resized copy.
#[derive(Debug)]
pub struct PositionTable {
    /// The table as stored, on the backend: the positions of a native-size input.
    pub native: Tensor,
    host: Vec<f32>,
    grid: usize,
    dim: usize,
}

impl PositionTable {
    /// Load `name` (stored as `shape`, which holds `1 + grid²` rows of `dim`).
    pub fn load(vv: &VarView, name: &str, shape: &[usize], grid: usize, dim: usize) -> Result<PositionTable> {
        let host = vv.get_host(name, shape)?.to_f32_vec()?;
        let native = vv.backend().upload(&Tensor::from_f32(host.clone(), vec![1, 1 + grid * grid, dim])?)?;
        Ok(PositionTable { native, host, grid, dim })
    }

    /// Positions `[1, 1 + gh·gw, D]` for an `h × w` input, as HF's `interpolate_pos_encoding`: the
    /// table itself when the input has the table's patch count and is square, otherwise the patch
    /// part resized bicubically to `(h / patch, w / patch)` (the class position kept as is).
    pub fn for_input(&self, be: &Backend, h: usize, w: usize, patch: usize) -> Result<Tensor> {
        let (g, d) = (self.grid, self.dim);
        let (gh, gw) = (h / patch, w / patch);
        if gh * gw == g * g && h == w {
            return Ok(self.native.clone());
        }
        let mut table = self.host[..d].to_vec();
        table.extend(interpolate_bicubic(&self.host[d..], g, d, gh, gw));
        be.upload(&Tensor::from_f32(table, vec![1, 1 + gh * gw, d])?)
    }
}

/// The embedding step both encoders share: patch embeddings with the class token in front, plus
/// positions.
#[derive(Debug)]
pub struct Embeddings {
    /// `[1, 1, D]`.
    pub class_token: Tensor,
    pub patches: PatchEmbed,
    pub positions: PositionTable,
    /// The square input size the position table was trained for.
    pub image_size: usize,
}

impl Embeddings {
    /// `[B, C, H, W]` → (`[B, 1 + gh·gw, D]`, (gh, gw)). With `resize_positions` off, an input
    /// other than `image_size × image_size` is refused, as HF refuses it without
    /// `interpolate_pos_encoding`.
    pub fn forward(&self, be: &Backend, pixel_values: &Tensor, resize_positions: bool) -> Result<(Tensor, (usize, usize))> {
        check_pixel_values(pixel_values, self.patches.channels, self.patches.patch)?;
        let s = pixel_values.shape();
        let (b, h, w) = (s[0], s[2], s[3]);
        let pos = if resize_positions {
            self.positions.for_input(be, h, w, self.patches.patch)?
        } else if h == self.image_size && w == self.image_size {
            self.positions.native.clone()
        } else {
            return Err(Error::arg(
                "pixel_values",
                format!("input is {h}×{w} but the model takes {0}×{0} (enable interpolate_pos_encoding for other sizes)", self.image_size),
            ));
        };
        let (patches, gh, gw) = self.patches.forward(be, pixel_values)?;
        let cls: Vec<&Tensor> = std::iter::repeat_n(&self.class_token, b).collect();
        let cls = be.concat(&cls, 0)?;
        let x = be.add(&be.concat(&[&cls, &patches], 1)?, &pos)?;
        Ok((x, (gh, gw)))
    }
}

/// Run `layers` in turn on `x`, each by `forward`. Returns the last output and, with
/// `keep_hidden`, HF's `hidden_states`: every layer's input, then the last output.
pub fn run_layers<L>(
    layers: &[L],
    mut x: Tensor,
    keep_hidden: bool,
    forward: impl Fn(&L, &Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Vec<Tensor>)> {
    let mut hidden_states = Vec::new();
    for layer in layers {
        let next = forward(layer, &x)?;
        if keep_hidden {
            hidden_states.push(std::mem::replace(&mut x, next));
        } else {
            x = next;
        }
    }
    if keep_hidden {
        hidden_states.push(x.clone());
    }
    Ok((x, hidden_states))
}

/// Check `pixel_values` is `[B, channels, H, W]` f32 with at least one whole patch each way.
pub fn check_pixel_values(pixel_values: &Tensor, channels: usize, patch: usize) -> Result<()> {
    let s = pixel_values.shape();
    if s.len() != 4 || s[0] == 0 || s[1] != channels {
        return Err(Error::arg("pixel_values", format!("expected shape [batch, {channels}, height, width], got {s:?}")));
    }
    if s[2] < patch || s[3] < patch {
        return Err(Error::arg("pixel_values", format!("a {}×{} image is smaller than one {patch}×{patch} patch", s[2], s[3])));
    }
    if pixel_values.dtype() != crate::DType::F32 {
        return Err(Error::arg("pixel_values", format!("expected f32, got {}", pixel_values.dtype())));
    }
    Ok(())
}

/// The q, k and v projections of a `SelfAttention`.
#[derive(Debug)]
pub enum Projections {
    Separate { q: Linear, k: Linear, v: Linear },
    /// One linear with the three weights (and biases) stacked at load, [3·D, D]: its output
    /// [B, N, 3·D] goes to `Backend::attention_packed`, which reads q, k and v in place on the
    /// backends where `Backend::packs_qkv` holds (one GEMM and its input pass instead of three).
    Packed(Linear),
}

/// Multi-head self-attention without masking: q/k/v projections, attention, output projection
/// (with the residual fused into it when given).
#[derive(Debug)]
pub struct SelfAttention {
    pub proj: Projections,
    pub out: Linear,
    pub heads: usize,
    pub head_dim: usize,
}

impl SelfAttention {
    /// The projections `names` = [q, k, v, out] under `attn`, each [D, D] (q, k and v with
    /// biases when `qkv_bias`, out always), `heads` heads of D / heads. With `pack`, q, k and v
    /// are stacked into one linear on the host before they reach the backend.
    pub fn load(attn: &VarView, names: [&str; 4], d: usize, heads: usize, qkv_bias: bool, pack: bool) -> Result<SelfAttention> {
        let [q, k, v, o] = names;
        let proj = if pack {
            let w = stack_rows(&[q, k, v].map(|n| attn.pp(n).get_host("weight", &[d, d])).into_iter().collect::<Result<Vec<_>>>()?)?;
            let b = if qkv_bias {
                let parts = [q, k, v].map(|n| attn.pp(n).get_host("bias", &[d]).and_then(|t| t.to_f32()));
                Some(attn.backend().upload(&stack_rows(&parts.into_iter().collect::<Result<Vec<_>>>()?)?)?)
            } else {
                None
            };
            Projections::Packed(Linear { weight: attn.backend().upload_weight(&w)?, bias: b })
        } else {
            Projections::Separate {
                q: Linear::load(attn, q, d, d, qkv_bias)?,
                k: Linear::load(attn, k, d, d, qkv_bias)?,
                v: Linear::load(attn, v, d, d, qkv_bias)?,
            }
        };
        Ok(SelfAttention { proj, out: Linear::load(attn, o, d, d, true)?, heads, head_dim: d / heads.max(1) })
    }

    pub fn forward(&self, be: &Backend, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let o = match &self.proj {
            Projections::Separate { q, k, v } => {
                let (qt, kt, vt) = (q.forward(be, x, Activation::None, None)?, k.forward(be, x, Activation::None, None)?, v.forward(be, x, Activation::None, None)?);
                let params = AttnParams { low_precision: q.weight.dtype().is_half(), ..AttnParams::new(self.head_dim) };
                be.attention_tokens(&qt, &kt, &vt, self.heads, &params)?
            }
            Projections::Packed(qkv) => {
                let p = qkv.forward(be, x, Activation::None, None)?;
                be.attention_packed(&p, self.heads, None, qkv.weight.dtype().is_half())?
            }
        };
        self.out.forward(be, &o, Activation::None, residual)
    }
}

/// Host tensors of one dtype stacked along their first dim (their other dims equal).
fn stack_rows(parts: &[Tensor]) -> Result<Tensor> {
    let first = parts.first().ok_or_else(|| Error::shape("stack", "nothing to stack"))?;
    let (dtype, tail) = (first.dtype(), &first.shape()[1..]);
    if let Some(p) = parts.iter().find(|p| p.dtype() != dtype || &p.shape()[1..] != tail) {
        return Err(Error::shape("stack", format!("a {} {:?} tensor does not stack with a {dtype} {:?} one", p.dtype(), p.shape(), first.shape())));
    }
    let mut shape = first.shape().to_vec();
    shape[0] = parts.iter().map(|p| p.dim(0)).sum();
    let data = match dtype {
        DType::F32 => CpuData::F32(parts.iter().map(|p| p.as_f32()).collect::<Result<Vec<_>>>()?.concat()),
        DType::F16 => CpuData::F16(parts.iter().map(|p| p.as_f16()).collect::<Result<Vec<_>>>()?.concat()),
        DType::BF16 => CpuData::BF16(parts.iter().map(|p| p.as_bf16()).collect::<Result<Vec<_>>>()?.concat()),
        other => return Err(Error::shape("stack", format!("{other} weights cannot be stacked (expected f32, f16 or bf16)"))),
    };
    Tensor::from_cpu(data, dtype, shape)
}

/// Everything a vision encoder returns, named as HF's `BaseModelOutputWithPooling`.
#[derive(Debug)]
pub struct VisionOutput {
    /// `[B, 1 + N, D]`.
    pub last_hidden_state: Tensor,
    /// `[B, D]`.
    pub pooler_output: Tensor,
    /// As HF's `output_hidden_states=True`: index 0 is the input of the first layer, index i the
    /// output of layer i (so `layers + 1` entries). Empty unless requested.
    pub hidden_states: Vec<Tensor>,
    /// Patch grid (rows, cols) of this input.
    pub grid: (usize, usize),
}

/// Resolve an HF-style hidden-state index (negative counts from the end, so −1 is the last layer's
/// output and −2 the penultimate, LLaVA's choice) against `layers + 1` hidden states.
pub fn resolve_layer(index: i64, layers: usize) -> Result<usize> {
    let n = layers as i64 + 1;
    let i = if index < 0 { index + n } else { index };
    if i < 0 || i >= n {
        return Err(Error::arg("layer", format!("{index} is out of range for {n} hidden states (use {}..={})", -n, n - 1)));
    }
    Ok(i as usize)
}

/// Resample a square position table `[grid·grid, dim]` (row-major grid) to `new_h × new_w` with
/// PyTorch's `interpolate(mode="bicubic", align_corners=False, antialias=False)` given an output
/// `size`: source coordinate `(dst + 0.5)·in/out − 0.5`, Keys cubic with A = −0.75, borders
/// clamped. Separable: columns first, then rows, which equals PyTorch's 4×4 stencil sum up to
/// rounding.
pub fn interpolate_bicubic(table: &[f32], grid: usize, dim: usize, new_h: usize, new_w: usize) -> Vec<f32> {
    let taps = |in_size: usize, out_size: usize| -> Vec<([usize; 4], [f64; 4])> {
        let scale = in_size as f32 / out_size as f32;
        (0..out_size)
            .map(|o| {
                let src = scale * (o as f32 + 0.5) - 0.5;
                // As PyTorch's guard: the index never passes the last cell, the fraction stays in [0, 1].
                let i0 = (src.floor() as i64).min(in_size as i64 - 1);
                let t = (src - i0 as f32).clamp(0.0, 1.0) as f64;
                let clamp = |i: i64| i.clamp(0, in_size as i64 - 1) as usize;
                ([clamp(i0 - 1), clamp(i0), clamp(i0 + 1), clamp(i0 + 2)], cubic_weights(t))
            })
            .collect()
    };
    let (tx, ty) = (taps(grid, new_w), taps(grid, new_h));
    // Horizontal pass: [grid, new_w, dim].
    let mut tmp = vec![0f64; grid * new_w * dim];
    for y in 0..grid {
        for (x, (idx, w)) in tx.iter().enumerate() {
            let o = &mut tmp[(y * new_w + x) * dim..][..dim];
            for k in 0..4 {
                let src = &table[(y * grid + idx[k]) * dim..][..dim];
                o.iter_mut().zip(src).for_each(|(o, s)| *o += w[k] * *s as f64);
            }
        }
    }
    let mut out = vec![0f32; new_h * new_w * dim];
    for (y, (idx, w)) in ty.iter().enumerate() {
        for x in 0..new_w {
            let o = &mut out[(y * new_w + x) * dim..][..dim];
            for (d, o) in o.iter_mut().enumerate() {
                let mut acc = 0f64;
                for k in 0..4 {
                    acc += w[k] * tmp[(idx[k] * new_w + x) * dim + d];
                }
                *o = acc as f32;
            }
        }
    }
    out
}

/// Keys' cubic convolution weights (A = −0.75, PyTorch's bicubic) for the 4 taps around `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Read and parse `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<(std::path::PathBuf, serde_json::Value)> {
    let path = dir.join("config.json");
    if !dir.is_dir() {
        return Err(Error::config(dir, "model directory does not exist"));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json = serde_json::from_str(&text).map_err(|e| Error::config(&path, format!("not valid JSON: {e}")))?;
    Ok((path, json))
}

/// Open the weights of model directory `dir` and build from them with `build`, given a view at the
/// level holding `probe`: under `prefix` when the checkpoint is a wrapper's (has `{prefix}.{probe}`),
/// else at the root.
pub fn with_weights<T>(dir: &Path, be: &Backend, prefix: &str, probe: &str, build: impl FnOnce(&VarView) -> Result<T>) -> Result<T> {
    let weights = Weights::open(dir)?;
    let vv = VarView::new(&weights, be);
    let vv = if weights.contains(&format!("{prefix}.{probe}")) { vv.pp(prefix) } else { vv };
    build(&vv)
}

/// The `model_type` of a config (at the top level).
pub fn model_type(json: &serde_json::Value) -> Option<&str> {
    json.get("model_type").and_then(|v| v.as_str())
}

/// Read an optional field of a config with a default; a present field of the wrong type is an
/// error naming it.
pub fn field<T: serde::de::DeserializeOwned>(path: &Path, json: &serde_json::Value, name: &str, default: T) -> Result<T> {
    match json.get(name) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| Error::config(path, format!("field `{name}`: {e}"))),
    }
}

/// A positive size field.
pub fn size_field(path: &Path, json: &serde_json::Value, name: &str, default: usize) -> Result<usize> {
    let v: usize = field(path, json, name, default)?;
    if v == 0 {
        return Err(Error::config(path, format!("field `{name}` must be positive")));
    }
    Ok(v)
}

/// The activation named by `hidden_act`.
pub fn activation_field(path: &Path, json: &serde_json::Value, default: &str) -> Result<Activation> {
    let name: String = field(path, json, "hidden_act", default.to_string())?;
    Activation::from_hf(&name).ok_or_else(|| Error::config(path, format!("unsupported hidden_act `{name}`")))
}

/// Split `hidden` into `heads` heads, or say why not.
pub fn head_dim(path: &Path, hidden: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(Error::config(path, format!("hidden_size {hidden} is not divisible by num_attention_heads {heads}")));
    }
    Ok(hidden / heads)
}

/// Either vision encoder, chosen by the `model_type` in config.json.
#[derive(Debug)]
pub enum VisionTower {
    Clip(crate::models::clip::ClipVisionModel),
    Dinov2(crate::models::dinov2::Dinov2Model),
}

impl VisionTower {
    /// Load a CLIP vision tower (`clip_vision_model`, `clip`, or a config with a CLIP
    /// `vision_config`) or a DINOv2 model (`dinov2`) from an HF model directory.
    pub fn load(dir: &Path, be: &Backend) -> Result<VisionTower> {
        let (path, json) = read_config(dir)?;
        match model_type(&json) {
            Some("dinov2") => Ok(VisionTower::Dinov2(crate::models::dinov2::Dinov2Model::load(dir, be)?)),
            Some("clip_vision_model") | Some("clip") => Ok(VisionTower::Clip(crate::models::clip::ClipVisionModel::load(dir, be)?)),
            t => Err(Error::config(path, format!("model_type {t:?} is not a supported vision encoder (clip_vision_model, clip, dinov2)"))),
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            VisionTower::Clip(m) => m.num_layers(),
            VisionTower::Dinov2(m) => m.num_layers(),
        }
    }

    pub fn forward(&self, be: &Backend, pixel_values: &Tensor, output_hidden_states: bool) -> Result<VisionOutput> {
        match self {
            VisionTower::Clip(m) => m.forward(be, pixel_values, output_hidden_states),
            VisionTower::Dinov2(m) => m.forward(be, pixel_values, output_hidden_states),
        }
    }

    pub fn feature_layer(&self, be: &Backend, pixel_values: &Tensor, layer: i64) -> Result<Tensor> {
        match self {
            VisionTower::Clip(m) => m.feature_layer(be, pixel_values, layer),
            VisionTower::Dinov2(m) => m.feature_layer(be, pixel_values, layer),
        }
    }

    /// The patch tokens of layer `layer` for a batch of one image, `[N, C]` (the projectors'
    /// input).
    pub fn patch_features(&self, be: &Backend, pixel_values: &Tensor, layer: i64) -> Result<Tensor> {
        let patches = patch_tokens(be, &self.feature_layer(be, pixel_values, layer)?)?;
        let (n, c) = (patches.dim(1), patches.dim(2));
        patches.reshape(&[n, c])
    }

    pub fn patch_size(&self) -> usize {
        match self {
            VisionTower::Clip(m) => m.config.patch_size,
            VisionTower::Dinov2(m) => m.config.patch_size,
        }
    }
}

/// The patch tokens of a `[B, 1 + N, D]` sequence (the class token dropped): `[B, N, D]`.
pub fn patch_tokens(be: &Backend, seq: &Tensor) -> Result<Tensor> {
    if seq.dims() != 3 || seq.dim(1) == 0 {
        return Err(Error::shape("patch_tokens", format!("expected [B, 1 + N, D], got {:?}", seq.shape())));
    }
    be.narrow(seq, 1, 1, seq.dim(1) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_layer_like_python_indexing() {
        assert_eq!(resolve_layer(-1, 3).unwrap(), 3);
        assert_eq!(resolve_layer(-2, 3).unwrap(), 2);
        assert_eq!(resolve_layer(0, 3).unwrap(), 0);
        assert_eq!(resolve_layer(-4, 3).unwrap(), 0);
        assert!(resolve_layer(4, 3).is_err());
        assert!(resolve_layer(-5, 3).is_err());
    }

    #[test]
    fn bicubic_at_same_size_is_identity() {
        let table: Vec<f32> = (0..4 * 4 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        let out = interpolate_bicubic(&table, 4, 3, 4, 4);
        for (a, b) in out.iter().zip(&table) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn cubic_weights_sum_to_one() {
        for t in [0.0, 0.1, 0.5, 0.9] {
            let s: f64 = cubic_weights(t).iter().sum();
            assert!((s - 1.0).abs() < 1e-12);
        }
    }
}
