//! SAM's image encoder (`vision_encoder.*`): a ViT with windowed and global attention and
//! decomposed relative position biases, then a conv neck down to the mask decoder's width.
//!
//! Layout: tokens stay channels-last as a `[G, G, D]` grid (batch 1), so LayerNorms and linears
//! act on the last dim with no permutes. Windowed layers zero-pad the grid to a multiple of the
//! window (padding tokens take part in attention, exactly as in transformers), attend within
//! each window, and crop back. The relative-position bias is passed to `Backend::attention` as
//! its two factors (rel_h: [B, H, N, k_h], rel_w: [B, H, N, k_w]), so no N×N score or bias
//! matrix is ever built: for the 64×64 global layers of a 1024 input that is 4096² floats per
//! head avoided.

use crate::backend::{Activation, Backend, Mlp};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::weights::VarView;

use super::config::SamVisionConfig;

/// Relative position table for query/key sides `q_size`/`k_size`: `[q_size, k_size, C]` rows of
/// `table` (`[L, C]`), first resampled to 2·max(q, k) − 1 rows with linear interpolation
/// (align_corners False) when L differs, as transformers' `get_rel_pos`. Host math on a weight,
/// done once at load time.
pub fn get_rel_pos(table: &[f32], len: usize, dim: usize, q_size: usize, k_size: usize) -> Result<Vec<f32>> {
    if len == 0 || table.len() != len * dim || q_size == 0 || k_size == 0 {
        return Err(Error::shape("get_rel_pos", format!("table of {} values for [{len}, {dim}], sizes q {q_size} k {k_size}", table.len())));
    }
    let max_rel = 2 * q_size.max(k_size) - 1;
    let resized: Vec<f32> = if len == max_rel {
        table.to_vec()
    } else {
        let scale = len as f32 / max_rel as f32;
        let mut out = vec![0f32; max_rel * dim];
        for i in 0..max_rel {
            let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(len - 1);
            let i1 = if i0 < len - 1 { i0 + 1 } else { i0 };
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            let l0 = 1.0 - l1;
            for c in 0..dim {
                out[i * dim + c] = l0 * table[i0 * dim + c] + l1 * table[i1 * dim + c];
            }
        }
        out
    };
    // Coordinates in f32 as torch computes them (an int tensor times a Python float), then
    // truncated to an index.
    let q_scale = (k_size as f64 / q_size as f64).max(1.0);
    let k_scale = (q_size as f64 / k_size as f64).max(1.0);
    let offset = ((k_size - 1) as f64 * k_scale) as f32;
    let mut out = vec![0f32; q_size * k_size * dim];
    for qi in 0..q_size {
        for ki in 0..k_size {
            let rel = (qi as f32 * q_scale as f32 - ki as f32 * k_scale as f32) + offset;
            let idx = (rel as i64).clamp(0, max_rel as i64 - 1) as usize;
            out[(qi * k_size + ki) * dim..(qi * k_size + ki + 1) * dim].copy_from_slice(&resized[idx * dim..(idx + 1) * dim]);
        }
    }
    Ok(out)
}

struct VisionLayer {
    ln1: (Tensor, Tensor),
    qkv_w: Tensor,
    qkv_b: Option<Tensor>,
    proj: (Tensor, Tensor),
    ln2: (Tensor, Tensor),
    lin1: (Tensor, Tensor),
    lin2: (Tensor, Tensor),
    /// 0: global attention over the whole grid.
    window: usize,
    /// (rel_h table [S, S, hd], rel_w table [S, S, hd]) for the attended side S.
    rel_pos: Option<(Tensor, Tensor)>,
}

pub struct ImageEncoder {
    patch_w: Tensor,
    patch_b: Tensor,
    /// `[G, G, D]`.
    pos_embed: Option<Tensor>,
    layers: Vec<VisionLayer>,
    /// Neck conv1 (1×1, no bias) as a linear weight [O, D].
    neck_conv1: Tensor,
    neck_ln1: (Tensor, Tensor),
    neck_conv2: Tensor,
    neck_ln2: (Tensor, Tensor),
    grid: usize,
    hidden: usize,
    heads: usize,
    patch: usize,
    image_size: usize,
    eps: f32,
    act: Activation,
}

fn lin(vv: &VarView, out: usize, inp: usize) -> Result<(Tensor, Tensor)> {
    Ok((vv.get("weight", &[out, inp])?, vv.get_f32("bias", &[out])?))
}

fn norm(vv: &VarView, d: usize) -> Result<(Tensor, Tensor)> {
    Ok((vv.get_f32("weight", &[d])?, vv.get_f32("bias", &[d])?))
}

/// Load a relative-position table of any length with `dim` columns and expand it for side `size`.
fn rel_table(vv: &VarView, name: &str, dim: usize, size: usize) -> Result<Tensor> {
    let expected = [2 * size - 1, dim];
    let shape = vv.stored_shape(name, &expected)?;
    if shape.len() != 2 || shape[1] != dim || shape[0] == 0 {
        return Err(Error::TensorShape { name: vv.full_name(name), expected: expected.to_vec(), got: shape });
    }
    let len = shape[0];
    let table = vv.get_host(name, &[len, dim])?.to_f32_vec()?;
    let expanded = get_rel_pos(&table, len, dim, size, size)?;
    vv.backend().upload(&Tensor::from_f32(expanded, vec![size, size, dim])?)
}

impl ImageEncoder {
    pub fn load(vv: &VarView, cfg: &SamVisionConfig, act: Activation) -> Result<ImageEncoder> {
        let d = cfg.hidden_size;
        let g = cfg.grid();
        let hd = cfg.head_dim();
        let p = cfg.patch_size;
        let pe = vv.pp("patch_embed").pp("projection");
        let patch_w = pe.get_f32("weight", &[d, cfg.num_channels, p, p])?;
        let patch_b = pe.get_f32("bias", &[d])?;
        let pos_embed = if cfg.use_abs_pos { Some(vv.get_f32("pos_embed", &[1, g, g, d])?.reshape(&[g, g, d])?) } else { None };
        let mlp = cfg.mlp_width();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vv.pp("layers").pp(i);
            let a = l.pp("attn");
            let window = cfg.layer_window(i);
            let side = if window == 0 { g } else { window };
            let rel_pos = if cfg.use_rel_pos {
                Some((rel_table(&a, "rel_pos_h", hd, side)?, rel_table(&a, "rel_pos_w", hd, side)?))
            } else {
                None
            };
            let qkv = a.pp("qkv");
            layers.push(VisionLayer {
                ln1: norm(&l.pp("layer_norm1"), d)?,
                qkv_w: qkv.get("weight", &[3 * d, d])?,
                qkv_b: if cfg.qkv_bias { Some(qkv.get_f32("bias", &[3 * d])?) } else { None },
                proj: lin(&a.pp("proj"), d, d)?,
                ln2: norm(&l.pp("layer_norm2"), d)?,
                lin1: lin(&l.pp("mlp").pp("lin1"), mlp, d)?,
                lin2: lin(&l.pp("mlp").pp("lin2"), d, mlp)?,
                window,
                rel_pos,
            });
        }
        let neck = vv.pp("neck");
        let o = cfg.output_channels;
        Ok(ImageEncoder {
            patch_w,
            patch_b,
            pos_embed,
            layers,
            neck_conv1: neck.pp("conv1").get("weight", &[o, d, 1, 1])?.reshape(&[o, d])?,
            neck_ln1: norm(&neck.pp("layer_norm1"), o)?,
            neck_conv2: neck.pp("conv2").get_f32("weight", &[o, o, 3, 3])?,
            neck_ln2: norm(&neck.pp("layer_norm2"), o)?,
            grid: g,
            hidden: d,
            heads: cfg.num_attention_heads,
            patch: p,
            image_size: cfg.image_size,
            eps: cfg.layer_norm_eps as f32,
            act,
        })
    }

    /// `pixel_values` [1, C, S, S] → image embeddings [1, O, G, G].
    pub fn forward(&self, be: &Backend, pixel_values: &Tensor) -> Result<Tensor> {
        let s = self.image_size;
        let want = [1, self.patch_w.dim(1), s, s];
        if pixel_values.shape() != want {
            return Err(Error::arg(
                "pixel_values",
                format!("shape {:?}, expected {want:?} (batch 1, the model's input size)", pixel_values.shape()),
            ));
        }
        let (g, d) = (self.grid, self.hidden);
        let x = be.conv2d(pixel_values, &self.patch_w, Some(&self.patch_b), self.patch, 0)?;
        let x = be.permute(&x, &[0, 2, 3, 1])?.reshape(&[g, g, d])?;
        let mut x = match &self.pos_embed {
            Some(p) => be.add(&x, p)?,
            None => x,
        };
        for layer in &self.layers {
            x = self.layer_forward(be, layer, &x)?;
        }
        // Neck: 1×1 conv as a linear on the channels-last grid, LayerNorm over channels, then
        // the 3×3 conv in NCHW.
        let h = be.linear(&x, &self.neck_conv1, None, Activation::None, None)?;
        let h = be.layer_norm(&h, &self.neck_ln1.0, &self.neck_ln1.1, 1e-6)?;
        let h = be.permute(&h.reshape(&[1, g, g, usize::MAX])?, &[0, 3, 1, 2])?;
        let h = be.conv2d(&h, &self.neck_conv2, None, 1, 1)?;
        be.layer_norm_channels(&h, &self.neck_ln2.0, &self.neck_ln2.1, 1e-6)
    }

    fn layer_forward(&self, be: &Backend, l: &VisionLayer, x: &Tensor) -> Result<Tensor> {
        let (g, d) = (self.grid, self.hidden);
        let h = be.layer_norm(x, &l.ln1.0, &l.ln1.1, self.eps)?;
        let tokens = if l.window > 0 { be.window_partition(&h, l.window)? } else { h.reshape(&[1, g * g, d])? };
        let attn = self.attention(be, l, &tokens)?;
        let attn = if l.window > 0 { be.window_unpartition(&attn, l.window, g)? } else { attn.reshape(&[g, g, d])? };
        let x = be.linear(&attn, &l.proj.0, Some(&l.proj.1), Activation::None, Some(x))?;
        let mlp = Mlp { fc1: &l.lin1.0, b1: Some(&l.lin1.1), act: self.act, fc2: &l.lin2.0, b2: Some(&l.lin2.1) };
        be.layer_norm_mlp(&x, (&l.ln2.0, &l.ln2.1, self.eps), mlp)
    }

    /// Multi-head attention over `[B, side², D]` token blocks → `[B, side², D]` (before `proj`).
    fn attention(&self, be: &Backend, l: &VisionLayer, tokens: &Tensor) -> Result<Tensor> {
        let qkv = be.linear(tokens, &l.qkv_w, l.qkv_b.as_ref(), Activation::None, None)?;
        let rel = l.rel_pos.as_ref().map(|(rh, rw)| (rh, rw));
        be.attention_packed(&qkv, self.heads, rel, l.qkv_w.dtype().is_half())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_pos_without_interpolation_indexes_the_table() {
        // q = k = 3: rows 0..5, index = qi − ki + 2.
        let table: Vec<f32> = (0..5).map(|i| i as f32).collect();
        let out = get_rel_pos(&table, 5, 1, 3, 3).unwrap();
        assert_eq!(out, vec![2.0, 1.0, 0.0, 3.0, 2.0, 1.0, 4.0, 3.0, 2.0]);
    }

    #[test]
    fn rel_pos_rejects_bad_sizes() {
        assert!(get_rel_pos(&[1.0; 4], 5, 1, 3, 3).is_err());
        assert!(get_rel_pos(&[], 0, 1, 3, 3).is_err());
    }
}
