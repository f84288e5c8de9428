//! Superpixel NMS, level selection and painting on the mask bitmaps (shaders/mask_select.wgsl).

use super::{u32_of, Shader, WgpuBackend};
use crate::backend::mask_select::{pack_candidates, MaskCandidate, MaskRows};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

const MASK_SELECT: Shader = Shader {
    name: "mask_select",
    source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/mask_select.wgsl")),
};

/// `Backend::mask_select` in one workgroup (the caller checked the arguments, the i32 rows
/// included, and that the rectangle's bitmap fits the shader's workgroup memory).
pub(super) fn mask_select(be: &WgpuBackend, stats: &Tensor, rows: MaskRows, cands: &[MaskCandidate], nms: u32, overlap: u32) -> Result<Vec<i32>> {
    const OP: &str = "mask_select";
    u32_of(OP, stats.numel())?;
    if cands.is_empty() {
        return Ok(Vec::new());
    }
    let n = cands.len();
    let packed = pack_candidates(cands);
    let cand_t = be.upload(&Tensor::from_i32(packed, vec![n, 7])?)?;
    let out = be.alloc(vec![n], DType::I32)?;
    let kept = be.alloc(vec![n, 4], DType::I32)?;
    let params = [u32_of(OP, n)?, u32_of(OP, rows.row_len)?, rows.words as u32, rows.h as u32, nms, overlap];
    let bufs = [be.buffer(stats, OP)?, be.buffer(&cand_t, OP)?, be.buffer(&out, OP)?, be.buffer(&kept, OP)?];
    be.dispatch(&MASK_SELECT, "mask_select", &bufs, &params, [1, 1, 1])?;
    Ok(be.to_host(&out)?.as_i32()?.to_vec())
}

/// `Backend::mask_paint`, one invocation per cell (arguments checked by the caller).
pub(super) fn mask_paint(be: &WgpuBackend, stats: &Tensor, rows: MaskRows, w: usize, masks: &[(usize, i32)]) -> Result<Vec<i32>> {
    const OP: &str = "mask_paint";
    u32_of(OP, stats.numel())?;
    let cells = u32_of(OP, rows.h * w)?;
    // An empty list still binds a buffer: one unused pair.
    let mut packed: Vec<i32> = masks.iter().flat_map(|&(p, r)| [p as i32, r]).collect();
    if packed.is_empty() {
        packed = vec![0, -1];
    }
    let mask_t = be.upload(&Tensor::from_i32(packed, vec![masks.len().max(1), 2])?)?;
    let out = be.alloc(vec![rows.h * w], DType::I32)?;
    let params = [u32_of(OP, masks.len())?, u32_of(OP, rows.row_len)?, rows.words as u32, rows.h as u32, w as u32];
    let bufs = [be.buffer(stats, OP)?, be.buffer(&mask_t, OP)?, be.buffer(&out, OP)?];
    be.dispatch(&MASK_SELECT, "mask_paint", &bufs, &params, [cells.div_ceil(64), 1, 1])?;
    Ok(be.to_host(&out)?.as_i32()?.to_vec())
}
