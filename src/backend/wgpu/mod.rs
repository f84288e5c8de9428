//! The wgpu backend: the CPU backend's op set (src/backend/cpu/ is the spec) in WGSL, on Vulkan,
//! Metal or DX12 (and Mesa's lavapipe, a software Vulkan driver, in CI).
//!
//! # Writing a kernel
//!
//! Each op family has one shader file `shaders/<family>.wgsl` and one wrapper module here that
//! defines its shader as a const, so a new shader needs no central registry:
//!
//! ```ignore
//! const NORM: Shader = Shader { name: "norm", source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/norm.wgsl")) };
//! self.dispatch(&NORM, "rms_norm", &[x, w, out], &[rows, d, eps.to_bits()], [rows, 1, 1])?;
//! ```
//!
//! `name` must be unique across shaders (it keys the module cache); each (name, entry point)
//! pipeline is compiled once, on first use. A shader whose first line is `// needs: a.wgsl
//! b.wgsl` is compiled with those files prepended (the `concat!` above; the naga unit test
//! does the same). shaders/common.wgsl holds workgroup folding, erf, activations and half-weight
//! reads.
//!
//! # Binding convention (group 0)
//!
//! * binding 0: `var<storage, read> params: array<u32>` — the `params` slice of `dispatch`,
//!   counts and offsets as u32, f32 values as their bits (`eps.to_bits()`; `bitcast<f32>` in the
//!   shader).
//! * bindings 1..=n: the `buffers` of `dispatch`, in order (binding i is `buffers[i - 1]`).
//!   Inputs are `var<storage, read>`, outputs `var<storage, read_write>`. Activations are
//!   `array<f32>`; weights that may be f16 are `array<u32>` (f16 pairs packed, or f32 bits;
//!   read them with `half_or_f32`).
//! * An entry point binds only what it statically uses: bindings it never touches are left out
//!   of its bind group (read from the module with naga), so several entry points can share one
//!   file's declarations.
//! * Workgroup counts above the adapter's per-dimension limit (65535) are folded into a 2-D grid
//!   `[limit, ⌈n / limit⌉, 1]`: kernels take their flat workgroup index from `flat_wg(wid,
//!   nwg)` and bounds-check, since the fold rounds up.
//!
//! # Execution
//!
//! Dispatches are recorded into one command encoder (one open compute pass) and submitted
//! lazily: on `to_host`, `synchronize`, or when the batch is full (16 dispatches after a wait
//! for the device, doubling per submission up to 256: the device starts early, long runs go out
//! in few submissions), so a decode step is a handful of submissions. Activations are f32. Weights: f32, or f16 read through `unpack2x16float`
//! (bf16 is converted at upload, see `Runtime::upload`). `alloc` recycles the buffers of dropped
//! tensors, so a new tensor's contents are unspecified: kernels write every output element.
//! Buffers are sized in 16-byte multiples, so shaders may read them as `array<vec4<..>>`.
//! `VISWORD_WGPU_SYNC=1` submits and waits after every dispatch (a failing kernel is then named
//! in the error). Shaders are trusted modules (no injected loop counters or index clamps, and
//! workgroup memory not cleared: `Runtime::module` says why that is sound);
//! `VISWORD_WGPU_CHECKS=1` keeps wgpu's checks. `VISWORD_WGPU_GEMM=wide|tile64` forces one of
//! the plain GEMM kernels where the wide one applies (default: by grid size; see matmul_wide.rs).

mod attention;
mod conv;
mod elementwise;
mod gemv_many;
mod layout;
mod mask_select;
mod masks;
mod matmul;
mod matmul_wide;
mod norm;
mod runtime;
mod scatter_pool;
mod timestamps;
mod two_way;

pub use matmul_wide::GemmKernel;
pub(crate) use runtime::Runtime;

use crate::backend::{Activation, AttnParams, BinaryOp};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

/// A WGSL module: `name` keys the caches, `source` is the full text (usually `concat!` of
/// common.wgsl and the family's file, both `include_str!`).
pub(crate) struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// The device buffer behind one tensor (its size is the tensor's bytes rounded up to 16; the
/// tensor's dtype and shape say how to read it). Buffers made by `alloc` go back to the
/// backend's pool when the last handle is dropped.
pub struct WgpuData {
    pub(crate) buffer: ::wgpu::Buffer,
    pool: Option<std::sync::Arc<runtime::BufferPool>>,
}

impl std::fmt::Debug for WgpuData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuData({} bytes)", self.buffer.size())
    }
}

impl Drop for WgpuData {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.put(self.buffer.clone());
        }
    }
}

pub struct WgpuBackend {
    rt: Arc<runtime::Runtime>,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuBackend({})", self.device_name())
    }
}


/// `n` as a u32 kernel parameter, or an error naming `op` (buffers this large cannot be bound).
pub(crate) fn u32_of(op: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::shape(op, format!("size {n} does not fit the kernels' 32-bit indices")))
}

impl WgpuBackend {
    /// Open the best adapter there is (a discrete GPU first, lavapipe last), or say why there
    /// is none.
    pub fn new() -> Result<WgpuBackend> {
        WgpuBackend { rt: Arc::new(runtime::Runtime::open(false)?) }.checked()
    }

    /// Open a hardware GPU adapter only (not a software rasteriser such as lavapipe), for
    /// `--backend auto`.
    pub fn new_hardware() -> Result<WgpuBackend> {
        WgpuBackend { rt: Arc::new(runtime::Runtime::open(true)?) }.checked()
    }

    /// With the cooperative-matrix GEMM switched on (VISWORD_WGPU_COOP=1), check it against the
    /// plain GEMM once; on a mismatch it stays off and `device_name` says why.
    fn checked(self) -> Result<WgpuBackend> {
        if self.rt.coop_gemm() {
            if let Err(why) = matmul::coop_self_check(&self)? {
                self.rt.use_coop.store(false, std::sync::atomic::Ordering::Relaxed);
                *self.rt.coop_note.lock().unwrap_or_else(|p| p.into_inner()) = format!("cooperative-matrix GEMM off: {why}");
            }
        }
        Ok(self)
    }

    pub fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, act: Activation, residual: Option<&Tensor>) -> Result<Tensor> {
        matmul::linear(self, x, w, bias, act, residual)
    }
    /// One dispatch for a single input row (decode's Q/K/V or gate/up), else a linear per weight.
    pub fn linear_many(&self, x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
        if self.gemv_many_fits(x, ws) {
            return self.gemv_many("linear_many", gemv_many::Mode::Many, x, None, ws);
        }
        ws.iter().map(|w| matmul::linear(self, x, w, None, Activation::None, None)).collect()
    }
    pub fn matmul(&self, a: &Tensor, b: &Tensor, trans_b: bool) -> Result<Tensor> {
        matmul::batched_matmul(self, a, b, trans_b)
    }
    pub fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        norm::layer_norm(self, x, w, b, eps)
    }
    pub fn layer_norm_channels(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        norm::layer_norm_channels(self, x, w, b, eps)
    }
    pub fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        norm::rms_norm(self, x, w, eps)
    }
    pub fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        elementwise::softmax(self, x)
    }
    pub fn activate(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        elementwise::activate(self, x, act)
    }
    pub fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        elementwise::silu_mul(self, gate, up)
    }
    pub fn binary(&self, a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
        elementwise::binary(self, a, b, op)
    }
    pub fn affine(&self, x: &Tensor, s: f32, t: f32) -> Result<Tensor> {
        elementwise::affine(self, x, s, t)
    }
    /// erf of every element with the shaders' hand-written erf (exact GELU's core), so tests
    /// can hold it to its accuracy bound.
    #[doc(hidden)]
    pub fn erf(&self, x: &Tensor) -> Result<Tensor> {
        elementwise::erf(self, x)
    }
    pub fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, p: &AttnParams) -> Result<Tensor> {
        attention::attention(self, q, k, v, p)
    }
    /// `Backend::attention_tokens`: the attention kernels reading and writing [B, N, H·D]
    /// through strides (operands checked by `attention_tokens_shape`).
    pub(crate) fn attention_tokens(&self, q: &Tensor, k: &Tensor, v: &Tensor, t: &crate::backend::TokenAttnShape, p: &AttnParams) -> Result<Tensor> {
        attention::attention_tokens(self, q, k, v, t, p)
    }
    pub fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, pos_offset: usize) -> Result<Tensor> {
        elementwise::rope(self, x, cos, sin, pos_offset)
    }
    pub fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        layout::embedding(self, table, ids)
    }
    pub fn permute(&self, x: &Tensor, dims: &[usize]) -> Result<Tensor> {
        layout::permute(self, x, dims)
    }
    pub fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        layout::narrow(self, x, dim, start, len)
    }
    pub fn concat(&self, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
        layout::concat(self, xs, dim)
    }
    pub fn pad2d(&self, x: &Tensor, top: usize, bottom: usize, left: usize, right: usize) -> Result<Tensor> {
        layout::pad2d(self, x, top, bottom, left, right)
    }
    pub fn conv2d(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
        conv::conv2d(self, x, w, bias, stride, padding)
    }
    pub fn write_kv(&self, cache: &mut Tensor, new: &Tensor, pos: usize) -> Result<()> {
        layout::write_kv(self, cache, new, pos)
    }
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rope_qk_write_kv(&self, q: &Tensor, k: &Tensor, v: &Tensor, k_cache: &mut Tensor, v_cache: &mut Tensor, cos: &Tensor, sin: &Tensor, pos: usize, s: crate::backend::RopeKvShape) -> Result<Tensor> {
        elementwise::rope_qk_write_kv(self, q, k, v, k_cache, v_cache, cos, sin, pos, s)
    }
    pub fn scatter_mean_pool(&self, weights: &Tensor, feats: &Tensor, pos: &Tensor) -> Result<Tensor> {
        scatter_pool::scatter_mean_pool(self, weights, feats, pos)
    }
    pub fn mask_stats(&self, logits: &Tensor, rect: [usize; 4], offset: f32) -> Result<Tensor> {
        masks::mask_stats(self, logits, rect, offset)
    }
    pub(crate) fn mask_select(&self, stats: &Tensor, rows: crate::backend::mask_select::MaskRows, cands: &[crate::backend::MaskCandidate], nms: u32, overlap: u32) -> Result<Vec<i32>> {
        mask_select::mask_select(self, stats, rows, cands, nms, overlap)
    }
    pub(crate) fn mask_paint(&self, stats: &Tensor, rows: crate::backend::mask_select::MaskRows, w: usize, masks: &[(usize, i32)]) -> Result<Vec<i32>> {
        mask_select::mask_paint(self, stats, rows, w, masks)
    }
    pub(crate) fn upscale_masks_fits(s: &crate::backend::UpscaleShape) -> bool {
        masks::upscale_masks_fits(s)
    }
    pub(crate) fn upscale_masks(&self, y: &Tensor, ln: (&Tensor, &Tensor, f32), w2: &Tensor, b2: &Tensor, hyper: &Tensor, s: crate::backend::UpscaleShape) -> Result<Tensor> {
        masks::upscale_masks(self, y, ln, w2, b2, hyper, s)
    }
}

#[cfg(test)]
mod shader_tests;
