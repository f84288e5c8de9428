//! SAM mask filtering statistics and the fused upscaler tail (shaders/masks.wgsl).

use super::elementwise::f32_len;
use super::{u32_of, Shader, WgpuBackend};
use crate::backend::{mask_stats_shape, UpscaleShape, MASK_STATS_HEADER};
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

/// Whether the `upscale_masks` shader takes these sizes (its private arrays); the backend
/// composes other ops otherwise.
pub(super) fn upscale_masks_fits(s: &UpscaleShape) -> bool {
    s.c1 > 0 && s.c1 <= 64 && s.m <= 8
}

/// `Backend::upscale_masks` in one dispatch (the shape is checked by the caller).
pub(super) fn upscale_masks(be: &WgpuBackend, y: &Tensor, ln: (&Tensor, &Tensor, f32), w2: &Tensor, b2: &Tensor, hyper: &Tensor, s: UpscaleShape) -> Result<Tensor> {
    const OP: &str = "upscale_masks";
    let side = 4 * s.e;
    let out = be.alloc(vec![s.p, s.m, side, side], DType::F32)?;
    let pixels = u32_of(OP, s.p * 4 * s.e * s.e)?;
    u32_of(OP, out.numel())?;
    u32_of(OP, y.numel())?;
    if pixels > 0 && s.m > 0 {
        let params = [s.p as u32, s.e as u32, s.c1 as u32, s.c2 as u32, s.m as u32, ln.2.to_bits()];
        let bufs = [y, &out, ln.0, ln.1, w2, b2, hyper].map(|t| be.buffer(t, OP));
        let bufs = bufs.into_iter().collect::<Result<Vec<_>>>()?;
        be.dispatch(&MASKS, "upscale_masks", &bufs, &params, [pixels.div_ceil(64), 1, 1])?;
    }
    Ok(out)
}
