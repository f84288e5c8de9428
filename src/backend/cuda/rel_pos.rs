//! SAM's decomposed relative-position bias from token-major queries (kernels/rel_pos.cu), for
//! `attention_packed`.

use cudarc::driver::LaunchConfig;

use super::{kernels, launch, CudaBackend};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Largest grid side the kernel holds (RP_S).
pub(super) const MAX_SIDE: usize = 64;

impl CudaBackend {
    /// rel_h, rel_w [B, H, S², S] for queries at `q` ([B, S², ·] f32 with a row stride of
    /// `q_row` floats, head h at columns h·hd..) and the tables rh, rw [S, S, hd] (shapes checked
    /// by the caller; S ≤ `MAX_SIDE`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rel_pos(&self, q: u64, q_row: usize, rh: &Tensor, rw: &Tensor, b: usize, h: usize, side: usize, hd: usize) -> Result<(Tensor, Tensor)> {
        const OP: &str = "attention_packed";
        let shape = vec![b, h, side * side, side];
        let (rel_h, rel_w) = (self.alloc_f32(&shape)?, self.alloc_f32(&shape)?);
        let bh = u32::try_from(b * h).map_err(|_| Error::shape(OP, format!("{b} × {h} heads exceed the CUDA grid")))?;
        if bh > 0 && side > 0 {
            let (rhp, rwp, ohp, owp) = (self.f32_ptr(rh, OP)?, self.f32_ptr(rw, OP)?, self.ptr(&rel_h), self.ptr(&rel_w));
            let (row, h32, s32, d32) = (q_row as i64, h as i32, side as i32, hd as i32);
            let cfg = LaunchConfig { grid_dim: (bh, side as u32, 2), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            launch!(self, OP, self.function(&kernels::REL_POS, "rel_pos_f32")?, cfg, q, row, rhp, rwp, ohp, owp, h32, s32, d32)?;
        }
        Ok((self.wrap_f32(rel_h, shape.clone()), self.wrap_f32(rel_w, shape)))
    }
}
