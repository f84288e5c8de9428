//! SAM's prompt encoder (`prompt_encoder.*`, `shared_image_embedding.*`).
//!
//! Sparse prompts (points, box corners) become one token each: a random Fourier feature of the
//! coordinate (`shared_image_embedding.positional_embedding`, a fixed [2, F] Gaussian matrix)
//! plus a learned embedding for the point's role. They are a handful of vectors per prompt, so
//! they are built on the host and uploaded. Dense prompts (a low-res mask) go through a small
//! conv stack on the backend; without a mask, the learned `no_mask_embed` fills the grid.
//!
//! Label semantics follow transformers: 1 foreground, 0 background, −1 "not a point" (the
//! learned not_a_point embedding replaces the feature), −10 padding (a zero token). Without a
//! box, every prompt gets one extra "not a point" token, as in the original SAM.

use crate::backend::{Activation, Backend};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::weights::VarView;

use super::config::SamConfig;

/// One point of a prompt, in the model input frame (pixels of the padded square).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PointPrompt {
    pub x: f32,
    pub y: f32,
    /// 1 foreground, 0 background, −1 not a point, −10 padding.
    pub label: i32,
}

/// The label transformers' processor pads shorter point lists with.
pub const PAD_LABEL: i32 = -10;

/// The prompts for one image: `P` prompts, each with points and/or one box, plus an optional
/// mask shared by all of them. Coordinates are in the model input frame.
#[derive(Clone, Debug, Default)]
pub struct Prompts {
    /// Points of each prompt (empty: no point prompts). Shorter lists are padded with
    /// (0, 0, label −10), as transformers' processor pads them.
    pub points: Vec<Vec<PointPrompt>>,
    /// One box (x0, y0, x1, y1) per prompt (empty: no boxes).
    pub boxes: Vec<[f32; 4]>,
    /// Low-res mask logits `[1, 1, 4·E, 4·E]` (E = the image embedding side).
    pub mask: Option<Tensor>,
}

impl Prompts {
    /// Number of prompts (masks predicted in parallel): 1 for a mask-only prompt.
    pub fn count(&self) -> Result<usize> {
        match (self.points.len(), self.boxes.len()) {
            (0, 0) if self.mask.is_none() => Err(Error::arg("prompts", "no point, box or mask prompt given")),
            (0, 0) => Ok(1),
            (p, 0) | (0, p) => Ok(p),
            (p, b) if p == b => Ok(p),
            (p, b) => Err(Error::arg("prompts", format!("{p} point prompts but {b} boxes: give one box per prompt"))),
        }
    }

    /// Check labels and coordinates, and that at least one prompt has a point if points are used.
    pub fn validate(&self) -> Result<()> {
        self.count()?;
        if !self.points.is_empty() && self.points.iter().all(|p| p.is_empty()) {
            return Err(Error::arg("points", "every point prompt is empty"));
        }
        for (i, prompt) in self.points.iter().enumerate() {
            for p in prompt {
                if !matches!(p.label, 1 | 0 | -1 | PAD_LABEL) {
                    return Err(Error::arg("labels", format!("prompt {i}: label {} (expected 1, 0, -1 or -10)", p.label)));
                }
                if !p.x.is_finite() || !p.y.is_finite() {
                    return Err(Error::arg("points", format!("prompt {i}: point ({}, {}) is not finite", p.x, p.y)));
                }
            }
        }
        for (i, b) in self.boxes.iter().enumerate() {
            if b.iter().any(|v| !v.is_finite()) {
                return Err(Error::arg("boxes", format!("box {i} {b:?} is not finite")));
            }
        }
        Ok(())
    }
}

/// `mask_embed`: conv(2×2, s2) → LayerNorm2d → act → conv(2×2, s2) → LayerNorm2d → act → conv 1×1.
struct MaskEmbed {
    conv1: (Tensor, Tensor),
    ln1: (Tensor, Tensor),
    conv2: (Tensor, Tensor),
    ln2: (Tensor, Tensor),
    conv3: (Tensor, Tensor),
    act: Activation,
    eps: f32,
}

pub struct PromptEncoder {
    /// `positional_embedding` [2, F], host copy (Fourier features are built on the host).
    gaussian: Vec<f32>,
    num_feats: usize,
    hidden: usize,
    /// The prompt encoder's input size: coordinates are divided by it.
    input_image_size: usize,
    /// Side E of the image embedding grid.
    embed_size: usize,
    /// `point_embed.{0..3}` host rows: background, foreground, box top-left, box bottom-right.
    point_embed: Vec<Vec<f32>>,
    not_a_point: Vec<f32>,
    /// `no_mask_embed` as [1, C, 1, 1], broadcast over the grid.
    no_mask: Tensor,
    mask_embed: MaskEmbed,
}

fn host_row(vv: &VarView, name: &str, hidden: usize) -> Result<Vec<f32>> {
    vv.get_host(name, &[1, hidden])?.to_f32_vec()
}

impl PromptEncoder {
    /// `root` is the model root; the Fourier matrix is `shared_image_embedding.positional_embedding`
    /// (transformers ties `prompt_encoder.shared_embedding.positional_embedding` to it, so either
    /// name is accepted).
    pub fn load(root: &VarView, cfg: &SamConfig) -> Result<PromptEncoder> {
        let p = &cfg.prompt_encoder_config;
        let c = p.hidden_size;
        let f = cfg.vision_config.num_pos_feats;
        let shared = "shared_image_embedding.positional_embedding";
        let tied = "prompt_encoder.shared_embedding.positional_embedding";
        let name = if !root.contains(shared) && root.contains(tied) { tied } else { shared };
        let gaussian = root.get_host(name, &[2, f])?.to_f32_vec()?;
        let vv = root.pp("prompt_encoder");
        let point_embed = (0..4).map(|i| host_row(&vv.pp("point_embed").pp(i), "weight", c)).collect::<Result<Vec<_>>>()?;
        let not_a_point = host_row(&vv.pp("not_a_point_embed"), "weight", c)?;
        let no_mask = vv.pp("no_mask_embed").get_f32("weight", &[1, c])?.reshape(&[1, c, 1, 1])?;
        let me = vv.pp("mask_embed");
        let mc = p.mask_input_channels;
        let q = mc / 4;
        let pair = |name: &str, w: &[usize], b: usize| -> Result<(Tensor, Tensor)> {
            let m = me.pp(name);
            Ok((m.get_f32("weight", w)?, m.get_f32("bias", &[b])?))
        };
        let mask_embed = MaskEmbed {
            conv1: pair("conv1", &[q, 1, 2, 2], q)?,
            ln1: pair("layer_norm1", &[q], q)?,
            conv2: pair("conv2", &[mc, q, 2, 2], mc)?,
            ln2: pair("layer_norm2", &[mc], mc)?,
            conv3: pair("conv3", &[c, mc, 1, 1], c)?,
            act: cfg.prompt_act(),
            eps: p.layer_norm_eps as f32,
        };
        Ok(PromptEncoder {
            gaussian,
            num_feats: f,
            hidden: c,
            input_image_size: p.image_size,
            embed_size: p.image_embedding_size(),
            point_embed,
            not_a_point,
            no_mask,
            mask_embed,
        })
    }

    pub fn embed_size(&self) -> usize {
        self.embed_size
    }

    /// Random Fourier feature of a coordinate already normalised to [0, 1]:
    /// [sin(2π·(2c − 1)·G), cos(2π·(2c − 1)·G)].
    fn fourier(&self, x: f32, y: f32, out: &mut [f32]) {
        let (x, y) = (2.0 * x - 1.0, 2.0 * y - 1.0);
        let two_pi = (2.0 * std::f64::consts::PI) as f32;
        let f = self.num_feats;
        for j in 0..f {
            let v = two_pi * (x * self.gaussian[j] + y * self.gaussian[f + j]);
            out[j] = v.sin();
            out[f + j] = v.cos();
        }
    }

    /// Fourier feature of a pixel coordinate of the input frame (shifted to the pixel centre).
    fn encode_pixel(&self, x: f32, y: f32, out: &mut [f32]) {
        let s = self.input_image_size as f32;
        self.fourier((x + 0.5) / s, (y + 0.5) / s, out);
    }

    /// The dense positional encoding of the image grid, `[E·E, C]` (row-major over the grid):
    /// the feature of each cell centre.
    pub fn image_positional_embeddings(&self) -> Result<Tensor> {
        let e = self.embed_size;
        let c = self.hidden;
        let mut data = vec![0f32; e * e * c];
        for i in 0..e {
            for j in 0..e {
                let x = (j as f32 + 1.0 - 0.5) / e as f32;
                let y = (i as f32 + 1.0 - 0.5) / e as f32;
                self.fourier(x, y, &mut data[(i * e + j) * c..(i * e + j + 1) * c]);
            }
        }
        Tensor::from_f32(data, vec![e * e, c])
    }

    /// Sparse tokens `[P, N, C]` for the prompts, or None when there are no points or boxes.
    pub fn sparse(&self, be: &Backend, prompts: &Prompts) -> Result<Option<Tensor>> {
        let n_prompts = prompts.count()?;
        let c = self.hidden;
        let n_points = prompts.points.iter().map(|p| p.len()).max().unwrap_or(0);
        let has_boxes = !prompts.boxes.is_empty();
        let pad = n_points > 0 && !has_boxes;
        let per_prompt = n_points + pad as usize + 2 * has_boxes as usize;
        if per_prompt == 0 {
            return Ok(None);
        }
        let mut data = vec![0f32; n_prompts * per_prompt * c];
        let padding = PointPrompt { x: 0.0, y: 0.0, label: PAD_LABEL };
        for (pi, prompt) in data.chunks_mut(per_prompt * c).enumerate() {
            let mut slots = prompt.chunks_mut(c);
            if n_points > 0 {
                let given = &prompts.points[pi];
                for (k, slot) in slots.by_ref().take(n_points).enumerate() {
                    self.point_token(given.get(k).copied().unwrap_or(padding), slot);
                }
                if pad {
                    // The extra "not a point" token the original SAM appends when there is no box.
                    if let Some(slot) = slots.next() {
                        slot.copy_from_slice(&self.not_a_point);
                    }
                }
            }
            if has_boxes {
                let b = prompts.boxes[pi];
                for (corner, slot) in slots.take(2).enumerate() {
                    self.encode_pixel(b[2 * corner], b[2 * corner + 1], slot);
                    for (v, e) in slot.iter_mut().zip(&self.point_embed[2 + corner]) {
                        *v += e;
                    }
                }
            }
        }
        let t = Tensor::from_f32(data, vec![n_prompts, per_prompt, c])?;
        Ok(Some(be.upload(&t)?))
    }

    fn point_token(&self, p: PointPrompt, out: &mut [f32]) {
        match p.label {
            -1 => out.copy_from_slice(&self.not_a_point),
            PAD_LABEL => out.fill(0.0),
            label => {
                self.encode_pixel(p.x, p.y, out);
                if label == 0 || label == 1 {
                    for (v, e) in out.iter_mut().zip(&self.point_embed[label as usize]) {
                        *v += e;
                    }
                }
            }
        }
    }

    /// Dense embedding `[1, C, E, E]` of the mask prompt, or the broadcastable `[1, C, 1, 1]`
    /// no-mask embedding.
    pub fn dense(&self, be: &Backend, mask: Option<&Tensor>) -> Result<Tensor> {
        let Some(mask) = mask else { return Ok(self.no_mask.clone()) };
        let side = 4 * self.embed_size;
        if mask.shape() != [1, 1, side, side] {
            return Err(Error::arg("input_masks", format!("shape {:?}, expected [1, 1, {side}, {side}]", mask.shape())));
        }
        let m = &self.mask_embed;
        let h = be.conv2d(mask, &m.conv1.0, Some(&m.conv1.1), 2, 0)?;
        let h = be.layer_norm_channels(&h, &m.ln1.0, &m.ln1.1, m.eps)?;
        let h = be.activate(&h, m.act)?;
        let h = be.conv2d(&h, &m.conv2.0, Some(&m.conv2.1), 2, 0)?;
        let h = be.layer_norm_channels(&h, &m.ln2.0, &m.ln2.1, m.eps)?;
        let h = be.activate(&h, m.act)?;
        be.conv2d(&h, &m.conv3.0, Some(&m.conv3.1), 1, 0)
    }
}
