//! `Backend::upscale_masks` built from other ops, for a backend without a fused kernel for the
//! shape: LayerNorm + GELU per pixel, the second transposed conv as a linear with a GELU
//! epilogue, a permute into [P, C2, 4E, 4E] and the batched hypernetwork matmul. It
//! materialises the upscaled features that the fused kernels avoid.

use super::{Activation, Backend, UpscaleShape};
use crate::error::Result;
use crate::tensor::Tensor;

pub(crate) fn composed(be: &Backend, y: &Tensor, ln: (&Tensor, &Tensor, f32), w2: &Tensor, b2: &Tensor, hyper: &Tensor, s: UpscaleShape) -> Result<Tensor> {
    let UpscaleShape { p, e, c1, c2, m } = s;
    let g = be.layer_norm(&y.reshape(&[p * e * e * 4, c1])?, ln.0, ln.1, ln.2)?;
    let g = be.activate(&g, Activation::Gelu)?;
    let bias4 = be.concat(&[b2, b2, b2, b2], 0)?;
    // [P, i, j, a, b, c, d, C2] → [P, C2, i, a, c, j, b, d] = [P, C2, 4E, 4E].
    let z = be.linear(&g, w2, Some(&bias4), Activation::Gelu, None)?.reshape(&[p, e, e, 2, 2, 2, 2, c2])?;
    let z = be.permute(&z, &[0, 7, 1, 3, 5, 2, 4, 6])?.reshape(&[p, c2, 16 * e * e])?;
    be.matmul(hyper, &z, false)?.reshape(&[p, m, 4 * e, 4 * e])
}
