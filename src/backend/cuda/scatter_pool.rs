//! Superpixel scatter-mean pooling with the SSPE inputs in one pass (kernels/scatter_pool.cu).

use cudarc::driver::LaunchConfig;

use super::{kernels, launch, CudaBackend};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl CudaBackend {
    /// out[s, c] = Σ_p weights[s, p] · (feats[p, c] + pos[p, c]), in a fixed order per output.
    pub fn scatter_mean_pool(&self, weights: &Tensor, feats: &Tensor, pos: &Tensor) -> Result<Tensor> {
        const OP: &str = "scatter_mean_pool";
        let (w, f) = (weights.shape(), feats.shape());
        if w.len() != 2 || f.len() != 2 || w[1] != f[0] || pos.shape() != f {
            return Err(Error::shape(OP, format!("weights {w:?}, feats {f:?}, pos {:?}: expected [S, P], [P, C], [P, C]", pos.shape())));
        }
        let (s, p, c) = (w[0], w[1], f[1]);
        if s > 65_535 || p > u32::MAX as usize || c > u32::MAX as usize {
            return Err(Error::shape(OP, format!("{s} superpixels × {p} patches × {c} channels exceeds the kernel's grid (≤ 65535 superpixels)")));
        }
        let (wp, fp, pp) = (self.f32_ptr(weights, OP)?, self.f32_ptr(feats, OP)?, self.f32_ptr(pos, OP)?);
        let out = self.alloc_f32(&[s, c])?;
        if s > 0 && c > 0 {
            // 32 columns × 8 slices of P per block (kernels/scatter_pool.cu).
            let cfg = LaunchConfig { grid_dim: (c.div_ceil(32) as u32, s as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            let (op, s32, p32, c32) = (self.ptr(&out), s as u32, p as u32, c as u32);
            launch!(self, OP, self.function(&kernels::SCATTER_POOL, "scatter_mean_pool_f32")?, cfg, wp, fp, pp, op, s32, p32, c32)?;
        }
        Ok(self.wrap_f32(out, vec![s, c]))
    }
}
