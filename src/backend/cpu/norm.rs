//! LayerNorm, LayerNorm over channels (NCHW), RMSNorm. f64-free: one pass for the mean, one for
//! the variance (two-pass is as accurate as PyTorch's Welford for these widths).

use super::{check_f32, for_chunks, rows_per_task};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn last_dim(op: &'static str, x: &Tensor, w: &Tensor) -> Result<usize> {
    let d = *x.shape().last().ok_or_else(|| Error::shape(op, "scalar input"))?;
    if w.numel() != d {
        return Err(Error::shape(op, format!("weight has {} elements, last dim is {d}", w.numel())));
    }
    Ok(d)
}

/// Σ f(x[i]) in 16 interleaved partial sums (which the compiler keeps in one vector register)
/// instead of one serial chain: a 576-wide RMSNorm row went from ~2300 cycles of add latency to
/// ~150.
#[inline]
fn lanes_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

/// LayerNorm's statistics of one row: its mean and 1 / sqrt(variance + eps).
#[inline]
pub(super) fn mean_inv_std(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = lanes_sum(x, |v| v) / d;
    let var = lanes_sum(x, |v| (v - mean) * (v - mean)) / d;
    (mean, 1.0 / (var + eps).sqrt())
}

pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    let d = last_dim("layer_norm", x, w)?;
    if b.numel() != d {
        return Err(Error::shape("layer_norm", format!("bias has {} elements, last dim is {d}", b.numel())));
    }
    let (xs, ws, bs) = (check_f32("layer_norm", x)?, check_f32("layer_norm", w)?, check_f32("layer_norm", b)?);
    let mut out = vec![0f32; xs.len()];
    let rows = rows_per_task(d);
    for_chunks(&mut out, d * rows, |ci, o| {
        let x = &xs[ci * d * rows..][..o.len()];
        for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
            let (mean, r) = mean_inv_std(x, eps);
            for i in 0..d {
                o[i] = (x[i] - mean) * r * ws[i] + bs[i];
            }
        }
    });
    Tensor::from_f32(out, x.shape().to_vec())
}

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let d = last_dim("rms_norm", x, w)?;
    let (xs, ws) = (check_f32("rms_norm", x)?, check_f32("rms_norm", w)?);
    let mut out = vec![0f32; xs.len()];
    let rows = rows_per_task(d);
    for_chunks(&mut out, d * rows, |ci, o| {
        let x = &xs[ci * d * rows..][..o.len()];
        for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
            let ms = lanes_sum(x, |v| v * v) / d as f32;
            let r = 1.0 / (ms + eps).sqrt();
            for i in 0..d {
                o[i] = ws[i] * (x[i] * r);
            }
        }
    });
    Tensor::from_f32(out, x.shape().to_vec())
}

/// x [B, C, H, W]: normalise each (b, h, w) over C.
pub fn layer_norm_channels(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 4 || w.numel() != s[1] || b.numel() != s[1] {
        return Err(Error::shape("layer_norm_channels", format!("x {:?}, weight {:?}, bias {:?}", s, w.shape(), b.shape())));
    }
    let (c, hw) = (s[1], s[2] * s[3]);
    let (xs, ws, bs) = (check_f32("layer_norm_channels", x)?, check_f32("layer_norm_channels", w)?, check_f32("layer_norm_channels", b)?);
    let mut out = vec![0f32; xs.len()];
    for_chunks(&mut out, c * hw, |ci, o| {
        let x = &xs[ci * c * hw..][..c * hw];
        let mut mean = vec![0f32; hw];
        let mut var = vec![0f32; hw];
        for ch in 0..c {
            for p in 0..hw {
                mean[p] += x[ch * hw + p];
            }
        }
        mean.iter_mut().for_each(|m| *m /= c as f32);
        for ch in 0..c {
            for p in 0..hw {
                let d = x[ch * hw + p] - mean[p];
                var[p] += d * d;
            }
        }
        let r: Vec<f32> = var.iter().map(|v| 1.0 / (v / c as f32 + eps).sqrt()).collect();
        for ch in 0..c {
            for p in 0..hw {
                o[ch * hw + p] = (x[ch * hw + p] - mean[p]) * r[p] * ws[ch] + bs[ch];
            }
        }
    });
    Tensor::from_f32(out, s.to_vec())
}
