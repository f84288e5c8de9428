//! SAM mask filtering statistics (kernels/masks.cu).

use std::sync::Arc;

use super::{grid_rows, kernels, launch, CudaBackend, CudaData};
use crate::backend::{mask_stats_shape, MASK_STATS_HEADER};
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
}
