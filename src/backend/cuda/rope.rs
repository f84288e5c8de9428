//! Rotary position embedding, HF rotate_half layout (kernels/rope.cu), alone and fused with a
//! step's KV-cache writes.

use super::{grid_1d, kernels, launch, CudaBackend};
use crate::backend::RopeKvShape;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl CudaBackend {
    pub fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, pos_offset: usize) -> Result<Tensor> {
        const OP: &str = "rope";
        let s = x.shape();
        if s.len() != 4 || !s[3].is_multiple_of(2) {
            return Err(Error::shape(OP, format!("x must be [B, H, N, D] with even D, got {s:?}")));
        }
        let (n, d) = (s[2], s[3]);
        let h = d / 2;
        if cos.dims() != 2 || cos.dim(1) != h || cos.shape() != sin.shape() {
            return Err(Error::shape(OP, format!("cos/sin must be [max_pos, {h}], got {:?} / {:?}", cos.shape(), sin.shape())));
        }
        if pos_offset + n > cos.dim(0) {
            return Err(Error::shape(OP, format!("positions {}..{} exceed the table of {}", pos_offset, pos_offset + n, cos.dim(0))));
        }
        let (xp, cp, sp) = (self.f32_ptr(x, OP)?, self.f32_ptr(cos, OP)?, self.f32_ptr(sin, OP)?);
        let out = self.alloc_f32(s)?;
        let pairs = x.numel() / 2;
        if pairs > 0 {
            let (yp, p64, n32, h32, off) = (self.ptr(&out), pairs as u64, n as u32, h as u32, pos_offset as u64);
            launch!(self, OP, self.function(&kernels::ROPE, "rope_f32")?, grid_1d(pairs), xp, yp, cp, sp, p64, n32, h32, off)?;
        }
        Ok(self.wrap_f32(out, s.to_vec()))
    }

    /// `Backend::rope_qk_write_kv` in one launch (operands checked by `rope_kv_shape`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rope_qk_write_kv(&self, q: &Tensor, k: &Tensor, v: &Tensor, k_cache: &mut Tensor, v_cache: &mut Tensor, cos: &Tensor, sin: &Tensor, pos: usize, s: RopeKvShape) -> Result<Tensor> {
        const OP: &str = "rope_qk_write_kv";
        let (qp, kp, vp) = (self.f32_ptr(q, OP)?, self.f32_ptr(k, OP)?, self.f32_ptr(v, OP)?);
        let (cp, sp) = (self.f32_ptr(cos, OP)?, self.f32_ptr(sin, OP)?);
        let out = self.alloc_f32(q.shape())?;
        let yp = self.ptr(&out);
        let pairs = s.q_pairs + s.kv_pairs;
        // f32 caches, or bf16 ones (`rope_kv_shape` checked both share the dtype).
        let name = if k_cache.dtype() == DType::BF16 { "rope_qk_write_kv_bf16kv" } else { "rope_qk_write_kv_f32" };
        if pairs > 0 {
            let (qn, kvn, n32, h32, p64, max) = (s.q_pairs as u64, s.kv_pairs as u64, s.n as u32, s.h as u32, pos as u64, s.max as u64);
            // A decode step being recorded reads its position on the device (graph.rs).
            let step = self.step_args().filter(|_| s.n == 1).unwrap_or(0);
            self.with_unique(k_cache, OP, |kc| {
                self.with_unique(v_cache, OP, |vc| {
                    launch!(self, OP, self.function(&kernels::ROPE, name)?, grid_1d(pairs), qp, yp, kp, vp, kc, vc, cp, sp, qn, kvn, n32, h32, p64, max, step)
                })
            })?;
        }
        Ok(self.wrap_f32(out, q.shape().to_vec()))
    }
}
