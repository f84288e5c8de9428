//! Superpixel scatter-mean pooling with the SSPE inputs (shaders/scatter_pool.wgsl).

use super::elementwise::f32_len;
use super::{u32_of, Shader, WgpuBackend};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const SCATTER_POOL: Shader = Shader {
    name: "scatter_pool",
    source: concat!(include_str!("../../../shaders/common.wgsl"), include_str!("../../../shaders/scatter_pool.wgsl")),
};

/// Output columns per workgroup (scatter_pool.wgsl's COLS).
const COLS: usize = 32;

/// out[s, c] = Σ_p weights[s, p] · (feats[p, c] + pos[p, c]); a fixed summation order per output.
pub(super) fn scatter_mean_pool(be: &WgpuBackend, weights: &Tensor, feats: &Tensor, pos: &Tensor) -> Result<Tensor> {
    let (w, f) = (weights.shape(), feats.shape());
    if w.len() != 2 || f.len() != 2 || w[1] != f[0] || pos.shape() != f {
        return Err(Error::shape("scatter_mean_pool", format!("weights {w:?}, feats {f:?}, pos {:?}: expected [S, P], [P, C], [P, C]", pos.shape())));
    }
    for t in [weights, feats, pos] {
        f32_len("scatter_mean_pool", t)?;
    }
    let (s, p, c) = (w[0], w[1], f[1]);
    let out = be.alloc(vec![s, c], DType::F32)?;
    let n = u32_of("scatter_mean_pool", s * c)?;
    if n == 0 {
        return Ok(out);
    }
    let op = "scatter_mean_pool";
    let bufs = [be.buffer(weights, op)?, be.buffer(feats, op)?, be.buffer(pos, op)?, be.buffer(&out, op)?];
    let workgroups = s * c.div_ceil(COLS);
    be.dispatch(&SCATTER_POOL, "scatter_mean_pool", &bufs, &[s as u32, u32_of(op, p)?, c as u32], [u32_of(op, workgroups)?, 1, 1])?;
    Ok(out)
}
