//! Superpixel NMS, level selection and painting on the mask bitmaps (kernels/mask_select.cu).

use cudarc::driver::LaunchConfig;

use super::{dev_err, grid_1d, kernels, launch, CudaBackend};
use crate::backend::mask_select::{pack_candidates, MaskCandidate, MaskRows};
use crate::error::Result;
use crate::tensor::Tensor;

impl CudaBackend {
    /// `Backend::mask_select` in one block (the caller checked the arguments, the i32 rows
    /// included, and that the rectangle's bitmap fits the kernel's shared memory).
    pub(crate) fn mask_select(&self, stats: &Tensor, rows: MaskRows, cands: &[MaskCandidate], nms: u32, overlap: u32) -> Result<Vec<i32>> {
        const OP: &str = "mask_select";
        if cands.is_empty() {
            return Ok(Vec::new());
        }
        let sp = self.word_ptr(stats, OP)?;
        let packed = pack_candidates(cands);
        let cand_buf = self.htod(&packed, OP)?;
        let out = self.alloc::<i32>(cands.len(), OP)?;
        let kept = self.alloc::<i32>(4 * cands.len(), OP)?;
        let (cp, op, kp) = (self.ptr(&cand_buf), self.ptr(&out), self.ptr(&kept));
        let (n, row, words, h) = (cands.len() as u32, rows.row_len as u64, rows.words as u32, rows.h as u32);
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (512, 1, 1), shared_mem_bytes: 0 };
        launch!(self, OP, self.function(&kernels::MASK_SELECT, "mask_select")?, cfg, sp, cp, op, kp, n, row, words, h, nms, overlap)?;
        let codes = self.stream().clone_dtoh(&out.slice(..cands.len())).map_err(dev_err(OP))?;
        self.synchronize()?;
        Ok(codes)
    }

    /// `Backend::mask_paint`, one thread per cell (arguments checked by the caller).
    pub(crate) fn mask_paint(&self, stats: &Tensor, rows: MaskRows, w: usize, masks: &[(usize, i32)]) -> Result<Vec<i32>> {
        const OP: &str = "mask_paint";
        let sp = self.word_ptr(stats, OP)?;
        let cells = rows.h * w;
        let packed: Vec<i32> = masks.iter().flat_map(|&(p, r)| [p as i32, r]).collect();
        let mask_buf = self.htod(&packed, OP)?;
        let out = self.alloc::<i32>(cells, OP)?;
        let (mp, op) = (self.ptr(&mask_buf), self.ptr(&out));
        let (m, row, words, h, w32) = (masks.len() as u32, rows.row_len as u64, rows.words as u32, rows.h as u32, w as u32);
        launch!(self, OP, self.function(&kernels::MASK_SELECT, "mask_paint")?, grid_1d(cells), sp, mp, op, m, row, words, h, w32)?;
        let labels = self.stream().clone_dtoh(&out.slice(..cells)).map_err(dev_err(OP))?;
        self.synchronize()?;
        Ok(labels)
    }
}
