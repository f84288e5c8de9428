//! SAM mask filtering statistics and the fused upscaler tail (kernels/masks.cu).

use std::sync::Arc;

use super::{grid_rows, kernels, launch, CudaBackend, CudaData};
use crate::backend::{mask_stats_shape, UpscaleShape, MASK_STATS_HEADER};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

impl CudaBackend {
    /// Counts, box and bits of each mask plane over a cell rectangle (`Backend::mask_stats`).
    pub fn mask_stats(&self, logits: &Tensor, rect: [usize; 4], offset: f32) -> Result<Tensor> {
        const OP: &str = "mask_stats";
        let (planes, ph, pw, words) = mask_stats_shape(logits, rect)?;
        let xp = self.f32_ptr(logits, OP)?;
        let row_len = MASK_STATS_HEADER + rect[2] * words;
        let u32_of = |v: usize| u32::try_from(v).map_err(|_| Error::shape(OP, format!("plane size {ph}×{pw} exceeds u32")));
        let (ph32, pw32) = (u32_of(ph)?, u32_of(pw)?);
        let [y0, x0, h, w] = rect.map(|v| v as u32);
        let out = self.alloc::<i32>(planes * row_len, OP)?;
        if planes > 0 {
            let (op, n) = (self.ptr(&out), planes as u64);
            launch!(self, OP, self.function(&kernels::MASKS, "mask_stats_f32")?, grid_rows(planes, 256, 0), xp, op, n, ph32, pw32, y0, x0, h, w, offset)?;
        }
        Ok(Tensor::from_storage(Storage::Cuda(Arc::new(CudaData::I32(out))), DType::I32, vec![planes, row_len]))
    }

    /// Whether `upscale_masks_f32` takes these sizes (its register and shared-memory limits in
    /// kernels/masks.cu); `Backend::upscale_masks` composes other ops otherwise.
    pub(crate) fn upscale_masks_fits(s: &UpscaleShape) -> bool {
        s.c1 > 0 && s.c1 <= 64 && s.c1.is_multiple_of(4) && s.c2 <= 64 && 4 * s.c2 * s.c1 <= 8192 && s.m <= 8 && s.e <= 1 << 14
    }

    /// Whether `upscale_masks` takes the tensor-core kernel for these sizes: SAM's own (C1 = 64,
    /// C2 = 32, M ≤ 8), unless switched off.
    fn upscale_masks_on_tensor_cores(&self, s: &UpscaleShape) -> bool {
        self.mma_upscale() && s.c1 == 64 && s.c2 == 32 && s.m <= 8
    }

    /// SAM-sized `upscale_masks` calls (C1 = 64, C2 = 32, at most 8 masks) run on the tensor
    /// cores.
    pub fn mma_upscale(&self) -> bool {
        self.core.mma_upscale.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// SAM-sized `upscale_masks` on the tensor cores (`upscale_masks_mma_f32`: f16 operands for
    /// the transposed conv's GEMM, f32 around it; the default) or on the CUDA cores in f32
    /// (`VISWORD_CUDA_UPSCALE=simt` at start-up, or this with `false`).
    pub fn set_mma_upscale(&self, on: bool) {
        self.core.mma_upscale.store(on, std::sync::atomic::Ordering::Relaxed)
    }

    /// `Backend::upscale_masks` in one kernel (the shape is checked by the caller).
    pub(crate) fn upscale_masks(&self, y: &Tensor, ln: (&Tensor, &Tensor, f32), w2: &Tensor, b2: &Tensor, hyper: &Tensor, s: UpscaleShape) -> Result<Tensor> {
        const OP: &str = "upscale_masks";
        const ROWS: usize = 8; // UPS_ROWS
        const MMA_ROWS: usize = 256; // UPT_ROWS
        let side = 4 * s.e;
        let out = self.alloc_f32(&[s.p, s.m, side, side])?;
        if s.p * s.m * s.e > 0 {
            let (yp, lwp, lbp, eps) = (self.f32_ptr(y, OP)?, self.f32_ptr(ln.0, OP)?, self.f32_ptr(ln.1, OP)?, ln.2);
            let (wp, bp, hp, op) = (self.f32_ptr(w2, OP)?, self.f32_ptr(b2, OP)?, self.f32_ptr(hyper, OP)?, self.ptr(&out));
            let u32_of = |v: usize| u32::try_from(v).map_err(|_| Error::shape(OP, format!("{v} prompts exceed u32")));
            let (p32, e32, c1, c2, m32) = (u32_of(s.p)?, s.e as u32, s.c1 as u32, s.c2 as u32, s.m as u32);
            if self.upscale_masks_on_tensor_cores(&s) {
                let cfg = grid_rows(s.p * (4 * s.e * s.e).div_ceil(MMA_ROWS), 128, 0);
                launch!(self, OP, self.function(&kernels::MASKS, "upscale_masks_mma_f32")?, cfg, yp, lwp, lbp, eps, wp, bp, hp, op, p32, e32, m32)?;
            } else {
                let cfg = grid_rows(s.p * (2 * s.e).div_ceil(ROWS), 128, 0);
                launch!(self, OP, self.function(&kernels::MASKS, "upscale_masks_f32")?, cfg, yp, lwp, lbp, eps, wp, bp, hp, op, p32, e32, c1, c2, m32)?;
            }
        }
        Ok(self.wrap_f32(out, vec![s.p, s.m, side, side]))
    }
}
