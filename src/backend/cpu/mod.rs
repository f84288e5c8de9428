//! The CPU backend: plain, obviously-correct implementations that are the spec for the GPU
//! backends, multi-threaded with rayon and fast where it matters (GEMM/GEMV, attention).
//!
//! Activations are f32. Weights for `linear`/`embedding` may be f32, f16 or bf16 and are read in
//! place (converted per element), so mmap'd weights are never copied.

mod attention;
mod elementwise;
mod gemm_nt;
mod layout;
pub(crate) mod mask_select;
mod masks;
mod matmul;
mod norm;
mod two_way;
mod vmath;

pub use elementwise::BinaryOp;

use crate::backend::{Activation, AttnParams};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }

    pub fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>) -> Result<Tensor> {
        matmul::linear(x, w, bias, act, residual)
    }
    pub fn linear_many(&self, x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        matmul::linear_many(x, ws)
    }
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn two_way_update(&self, x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, u: &Tensor, bias: &Tensor, ln: (&Tensor, &Tensor, f32), s: crate::backend::TwoWayShape) -> Result<Tensor> {
        two_way::two_way_update(x, y, ax, ay, u, bias, ln, s)
    }
    pub(crate) fn two_way_pool(&self, x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, s: crate::backend::TwoWayShape) -> Result<Tensor> {
        two_way::two_way_pool(x, y, ax, ay, s)
    }
    pub fn matmul(&self, a: &Tensor, b: &Tensor, trans_b: bool) -> Result<Tensor> {
        matmul::batched_matmul(a, b, trans_b)
    }
    pub fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        norm::layer_norm(x, w, b, eps)
    }
    pub fn layer_norm_channels(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        norm::layer_norm_channels(x, w, b, eps)
    }
    pub fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        norm::rms_norm(x, w, eps)
    }
    pub fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        elementwise::softmax(x)
    }
    pub fn activate(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        elementwise::activate(x, act)
    }
    pub fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        elementwise::silu_mul(gate, up)
    }
    pub fn binary(&self, a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
        elementwise::binary(a, b, op)
    }
    pub fn affine(&self, x: &Tensor, s: f32, t: f32) -> Result<Tensor> {
        elementwise::affine(x, s, t)
    }
    pub fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, p: &AttnParams) -> Result<Tensor> {
        attention::attention(q, k, v, p)
    }
    pub(crate) fn attention_tokens(&self, q: &Tensor, k: &Tensor, v: &Tensor, t: &crate::backend::TokenAttnShape, p: &AttnParams) -> Result<Tensor> {
        attention::attention_tokens(q, k, v, t, p)
    }
    pub fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, pos_offset: usize) -> Result<Tensor> {
        elementwise::rope(x, cos, sin, pos_offset)
    }
    pub fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        layout::embedding(table, ids)
    }
    pub fn permute(&self, x: &Tensor, dims: &[usize]) -> Result<Tensor> {
        layout::permute(x, dims)
    }
    pub fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        layout::narrow(x, dim, start, len)
    }
    pub fn concat(&self, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
        layout::concat(xs, dim)
    }
    pub fn pad2d(&self, x: &Tensor, top: usize, bottom: usize, left: usize, right: usize) -> Result<Tensor> {
        layout::pad2d(x, top, bottom, left, right)
    }
    pub fn conv2d(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
        layout::conv2d(x, w, bias, stride, padding)
    }
    pub fn write_kv(&self, cache: &mut Tensor, new: &Tensor, pos: usize) -> Result<()> {
        layout::write_kv(cache, new, pos)
    }
    pub fn mask_stats(&self, logits: &Tensor, rect: [usize; 4], offset: f32) -> Result<Tensor> {
        masks::mask_stats(logits, rect, offset)
    }
    pub fn upscale_masks(&self, y: &Tensor, ln: (&Tensor, &Tensor, f32), w2: &Tensor, b2: &Tensor, hyper: &Tensor) -> Result<Tensor> {
        masks::upscale_masks(y, ln, w2, b2, hyper)
    }
    pub fn scatter_mean_pool(&self, weights: &Tensor, feats: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let (w, f) = (weights.shape(), feats.shape());
        if w.len() != 2 || f.len() != 2 || w[1] != f[0] || pos.shape() != f {
            return Err(Error::shape("scatter_mean_pool", format!("weights {w:?}, feats {f:?}, pos {:?}: expected [S, P], [P, C], [P, C]", pos.shape())));
        }
        let patches = self.binary(feats, pos, BinaryOp::Add)?;
        self.matmul(weights, &patches, false)
    }
}

/// Below this many output elements a pointwise or layout op runs on the calling thread. Waking
/// the pool costs tens of µs on a VM, while one core runs these ops at several elements per ns:
/// measured on SmolLM2's prefill ops (128 × 1536 SiLU·up, 128 × 576 RMSNorm, head permutes),
/// the serial kernels took 11–73 µs and the two-thread ones 45–120 µs.
pub(crate) const SERIAL_MAX: usize = 1 << 18;

/// `f(chunk_index, chunk)` over `chunk`-sized pieces of `out`, in parallel only when `out` is
/// large enough to pay for it.
pub(crate) fn for_chunks<F>(out: &mut [f32], chunk: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    use rayon::prelude::*;
    let chunk = chunk.max(1);
    if out.len() <= SERIAL_MAX {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// Rows of work per rayon task: enough to amortise scheduling (~16K elements).
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16384 / row_len.max(1)).max(1)
}

pub(crate) fn check_f32<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a [f32]> {
    t.as_f32().map_err(|_| Error::shape(op, format!("expected an f32 CPU tensor, got {} on {}", t.dtype(), t.device_name())))
}
