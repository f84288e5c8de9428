//! SAM mask filtering statistics (shaders/masks.wgsl).

use super::elementwise::f32_len;
use super::{u32_of, Shader, WgpuBackend};
use crate::backend::{mask_stats_shape, MASK_STATS_HEADER};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

pub(super) const MASKS: Shader = Shader {
    name: "masks",
    source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/masks.wgsl")),
};

/// Counts, box and bits of each mask plane over a cell rectangle (`Backend::mask_stats`).
pub(super) fn mask_stats(be: &WgpuBackend, logits: &Tensor, rect: [usize; 4], offset: f32) -> Result<Tensor> {
    const OP: &str = "mask_stats";
    let (planes, ph, pw, words) = mask_stats_shape(logits, rect)?;
    f32_len(OP, logits)?;
    let row_len = MASK_STATS_HEADER + rect[2] * words;
    let out = be.alloc(vec![planes, row_len], DType::I32)?;
    u32_of(OP, planes * row_len)?;
    if planes > 0 {
        let [y0, x0, h, w] = rect.map(|v| v as u32);
        let params = [u32_of(OP, planes)?, u32_of(OP, ph)?, u32_of(OP, pw)?, y0, x0, h, w, offset.to_bits()];
        be.dispatch(&MASKS, "mask_stats", &[be.buffer(logits, OP)?, be.buffer(&out, OP)?], &params, [u32_of(OP, planes)?, 1, 1])?;
    }
    Ok(out)
}
