//! `Backend::layer_norm_mlp`: a pre-norm transformer layer's MLP half, x + fc2(act(fc1(LN(x)))),
//! as CLIP's and SAM's encoders run it. Composed of `layer_norm` and two `linear`s it writes the
//! norm and the hidden layer in f32 and, on CUDA's bf16 tensor-core path, rounds each to bf16
//! in a pass of its own before the GEMM that reads it; CUDA's own version (cuda/mlp.rs) writes
//! both as bf16 in the passes that make them. `composed` is the reference.

use super::{Activation, Backend};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The MLP's weights: fc1 [H, D] with bias [H], the activation, fc2 [D, H] with bias [D].
#[derive(Clone, Copy, Debug)]
pub struct Mlp<'a> {
    pub fc1: &'a Tensor,
    pub b1: Option<&'a Tensor>,
    pub act: Activation,
    pub fc2: &'a Tensor,
    pub b2: Option<&'a Tensor>,
}

/// Check x [.., D], the LayerNorm's [D] weight and bias and the MLP's shapes: (rows, D, H).
pub(crate) fn mlp_shape(x: &Tensor, ln: (&Tensor, &Tensor, f32), m: &Mlp) -> Result<(usize, usize, usize)> {
    let d = x.shape().last().copied().unwrap_or(0);
    let h = if m.fc1.dims() == 2 { m.fc1.dim(0) } else { 0 };
    let fits = d > 0
        && ln.0.numel() == d
        && ln.1.numel() == d
        && m.fc1.shape() == [h, d]
        && m.fc2.shape() == [d, h]
        && m.b1.is_none_or(|b| b.numel() == h)
        && m.b2.is_none_or(|b| b.numel() == d);
    if !fits {
        return Err(Error::shape(
            "layer_norm_mlp",
            format!("x {:?}, norm {:?}/{:?}, fc1 {:?}, fc2 {:?}: need x [.., D], norm [D], fc1 [H, D], fc2 [D, H], biases [H] and [D]", x.shape(), ln.0.shape(), ln.1.shape(), m.fc1.shape(), m.fc2.shape()),
        ));
    }
    Ok((x.numel() / d, d, h))
}

/// x + fc2(act(fc1(LN(x)) + b1)) + b2 from the generic ops.
pub(crate) fn composed(be: &Backend, x: &Tensor, ln: (&Tensor, &Tensor, f32), m: &Mlp) -> Result<Tensor> {
    let h = be.layer_norm(x, ln.0, ln.1, ln.2)?;
    let h = be.linear(&h, m.fc1, m.b1, m.act, None)?;
    be.linear(&h, m.fc2, m.b2, Activation::None, Some(x))
}
