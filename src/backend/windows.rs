//! SAM's window partition and its inverse (`Backend::window_partition`,
//! `Backend::window_unpartition`): a grid of tokens [G, G, D] zero-padded bottom/right to a
//! multiple of the window side w and cut into windows [n², w·w, D] (window (wy, wx) in row-major
//! order, its tokens row-major), and back with the padding dropped. Composed of pads, a permute
//! and narrows, four to six passes over the layer's activations; CUDA does each in one
//! (kernels/layout.cu `windows_*`). `composed_*` are the reference.

use super::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Check a grid [G, G, D] for partition into windows of side w ≥ 1: (G, D).
pub(crate) fn grid_shape(x: &Tensor, w: usize) -> Result<(usize, usize)> {
    let s = x.shape();
    if s.len() != 3 || s[0] != s[1] || w == 0 {
        return Err(Error::shape("window_partition", format!("x {s:?}, window {w}: need a square grid [G, G, D] and a window side ≥ 1")));
    }
    Ok((s[0], s[2]))
}

/// Check windows [n², w·w, D] of side w that cover a grid of side g: D.
pub(crate) fn windows_shape(x: &Tensor, w: usize, g: usize) -> Result<usize> {
    let s = x.shape();
    let n = if w == 0 { 0 } else { g.div_ceil(w) };
    if s.len() != 3 || w == 0 || s[0] != n * n || s[1] != w * w {
        return Err(Error::shape("window_unpartition", format!("x {s:?}: need [{}, {}, D] windows of side {w} over a grid of {g}", n * n, w * w)));
    }
    Ok(s[2])
}

/// `[G, G, D]` → `[n², w·w, D]` from pads and a permute (sizes checked by `grid_shape`).
pub(crate) fn composed_partition(be: &Backend, x: &Tensor, w: usize, g: usize, d: usize) -> Result<Tensor> {
    let pad = (w - g % w) % w;
    let gp = g + pad;
    let x = if pad > 0 {
        // pad2d pads the last two dims: first the width (dim 1 of [G, G, D]), then the height
        // (dim 1 of [1, G, Gp·D]).
        let x = be.pad2d(x, 0, pad, 0, 0)?;
        be.pad2d(&x.reshape(&[1, g, gp * d])?, 0, pad, 0, 0)?
    } else {
        x.clone()
    };
    let n = gp / w;
    let x = be.permute(&x.reshape(&[n, w, n, w, d])?, &[0, 2, 1, 3, 4])?;
    x.reshape(&[n * n, w * w, d])
}

/// `[n², w·w, D]` → `[G, G, D]` from a permute and narrows (sizes checked by `windows_shape`).
pub(crate) fn composed_unpartition(be: &Backend, x: &Tensor, w: usize, g: usize, d: usize) -> Result<Tensor> {
    let gp = g.div_ceil(w) * w;
    let n = gp / w;
    let x = be.permute(&x.reshape(&[n, n, w, w, d])?, &[0, 2, 1, 3, 4])?.reshape(&[gp, gp, d])?;
    if gp == g {
        return Ok(x);
    }
    let x = be.narrow(&x, 0, 0, g)?;
    be.narrow(&x, 1, 0, g)
}
