//! SAM's two-way attention between a few prompt tokens and many image tokens, on factored
//! weights (`Backend::two_way_update`, `Backend::two_way_pool`): the shape check every backend
//! shares, and the composed implementation built from batched matmuls, softmax and LayerNorm
//! that serves as the reference and as the path for a backend without a fused kernel.
//!
//! Both ops score image token j of prompt b against row r of that prompt's query matrix:
//!
//!   s[b, j, r] = x[b, j] · ax[b, r] + y[j, g(r)] · ay[b, r]
//!
//! with rows in G groups of T (g(r) = r / T, one group per attention head) and y's channels in
//! G slices of Dy. `x` is the image tokens ([B or 1, N, C]: one shared set of keys before the
//! first block's update), `y` a per-image-token term shared by every prompt (the positional
//! encoding through a projection, its bias included). The models fold a head's query and key
//! projections, and its value and output projections, into ax and u (mask_decoder.rs), so no
//! projection of the image tokens is ever formed.

use super::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Parameters of `Backend::two_way_update` / `two_way_pool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwoWayParams {
    /// Groups of query rows (one per attention head; the update's softmax runs within each).
    pub groups: usize,
    /// The caller's weights are half precision, so x, ax, u and the softmax weights may be
    /// rounded to TF32 (10-bit mantissa, f32 range) for the tensor cores (CUDA's
    /// `two_way_*_tf32`), as the image-side projections these ops replace already are; scores,
    /// softmax statistics and outputs stay f32. The CPU and wgpu ignore it.
    pub low_precision: bool,
}

impl TwoWayParams {
    pub fn new(groups: usize) -> Self {
        TwoWayParams { groups, low_precision: false }
    }
}

/// Sizes of a two-way op: `b` prompts, `bx` = B or 1 sets of image tokens, `n` image tokens of
/// `c` channels, `r` = `groups` · T query rows, `dy` channels of y per group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TwoWayShape {
    pub b: usize,
    pub bx: usize,
    pub n: usize,
    pub c: usize,
    pub r: usize,
    pub groups: usize,
    pub dy: usize,
    /// `TwoWayParams::low_precision`.
    pub low_precision: bool,
}

impl TwoWayShape {
    /// Rows per group (T).
    pub fn t(&self) -> usize {
        self.r / self.groups
    }
}

/// Check the operands shared by both ops: x [Bx, N, C], y [1, N, G·Dy], ax [B, R, C],
/// ay [B, R, Dy], all f32, with Bx ∈ {1, B} and R a positive multiple of G.
pub(crate) fn two_way_shape(op: &'static str, x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, p: TwoWayParams) -> Result<TwoWayShape> {
    let groups = p.groups;
    let (xs, ys, axs, ays) = (x.shape(), y.shape(), ax.shape(), ay.shape());
    let f32s = [x, y, ax, ay].iter().all(|t| t.dtype() == DType::F32);
    let ok = f32s
        && xs.len() == 3
        && ys.len() == 3
        && axs.len() == 3
        && ays.len() == 3
        && groups > 0
        && axs[0] > 0
        && (xs[0] == 1 || xs[0] == axs[0])
        && xs[1] > 0
        && xs[2] > 0
        && ys[0] == 1
        && ys[1] == xs[1]
        && axs[1] > 0
        && axs[1] % groups == 0
        && axs[2] == xs[2]
        && ays[0] == axs[0]
        && ays[1] == axs[1]
        && ys[2] == groups * ays[2];
    if !ok {
        return Err(Error::shape(
            op,
            format!(
                "x {xs:?}, y {ys:?}, ax {axs:?}, ay {ays:?}, {groups} groups: expected f32 [B or 1, N, C], [1, N, G·Dy], [B, R, C], [B, R, Dy] with R a multiple of G"
            ),
        ));
    }
    Ok(TwoWayShape { b: axs[0], bx: xs[0], n: xs[1], c: xs[2], r: axs[1], groups, dy: ays[2], low_precision: p.low_precision })
}

/// The extra operands of the update: u [B, R, C], bias, LayerNorm weight and bias [C], f32.
pub(crate) fn check_update(s: &TwoWayShape, u: &Tensor, bias: &Tensor, ln: (&Tensor, &Tensor, f32)) -> Result<()> {
    let ok = [u, bias, ln.0, ln.1].iter().all(|t| t.dtype() == DType::F32)
        && u.shape() == [s.b, s.r, s.c]
        && [bias, ln.0, ln.1].iter().all(|t| t.shape() == [s.c]);
    if ok {
        Ok(())
    } else {
        Err(Error::shape(
            "two_way_update",
            format!(
                "u {:?}, bias {:?}, norm {:?}/{:?}: expected f32 [{}, {}, {}] and [{}]",
                u.shape(),
                bias.shape(),
                ln.0.shape(),
                ln.1.shape(),
                s.b,
                s.r,
                s.c,
                s.c
            ),
        ))
    }
}

/// The scores transposed, sᵀ [B, R, N]: x·axᵀ by prompt (one matmul against the shared x when
/// Bx = 1), plus each group's y slice against its rows of ay.
fn scores_rn(be: &Backend, x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, s: &TwoWayShape) -> Result<Tensor> {
    let xs = if s.bx == 1 { x.reshape(&[s.n, s.c])? } else { x.clone() };
    let sx = be.matmul(ax, &xs, true)?;
    let t = s.t();
    let ay = ay.reshape(&[s.b, s.groups, t, s.dy])?;
    let y = y.reshape(&[s.n, s.groups, s.dy])?;
    let mut parts = Vec::with_capacity(s.groups);
    for g in 0..s.groups {
        let ay_g = be.narrow(&ay, 1, g, 1)?.reshape(&[s.b, t, s.dy])?;
        let y_g = be.narrow(&y, 1, g, 1)?.reshape(&[s.n, s.dy])?;
        parts.push(be.matmul(&ay_g, &y_g, true)?);
    }
    let sy = if parts.len() == 1 { parts.swap_remove(0) } else { be.concat(&parts.iter().collect::<Vec<_>>(), 1)? };
    be.add(&sx, &sy)
}

/// `Backend::two_way_update` from other ops: scores, softmax within each group, the rows of u
/// weighted by it, then the residual, bias and LayerNorm.
#[allow(clippy::too_many_arguments)]
pub(crate) fn composed_update(be: &Backend, x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, u: &Tensor, bias: &Tensor, ln: (&Tensor, &Tensor, f32), s: &TwoWayShape) -> Result<Tensor> {
    let t = s.t();
    let st = scores_rn(be, x, y, ax, ay, s)?.reshape(&[s.b, s.groups, t, s.n])?;
    let p = be.softmax(&be.permute(&st, &[0, 3, 1, 2])?)?.reshape(&[s.b, s.n, s.r])?;
    let z = be.add(&be.matmul(&p, u, false)?, x)?;
    let z = be.add(&z, bias)?;
    be.layer_norm(&z, ln.0, ln.1, ln.2)
}

/// `Backend::two_way_pool` from other ops: scores, softmax over the image tokens, then the image
/// tokens weighted by it.
pub(crate) fn composed_pool(be: &Backend, x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, s: &TwoWayShape) -> Result<Tensor> {
    let p = be.softmax(&scores_rn(be, x, y, ax, ay, s)?)?;
    let xs = if s.bx == 1 { x.reshape(&[s.n, s.c])? } else { x.clone() };
    be.matmul(&p, &xs, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(seed: &mut u64, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        let v = (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect();
        Tensor::from_f32(v, shape.to_vec()).unwrap()
    }

    /// The composed path (what a GPU backend runs for sizes its kernels do not take) against the
    /// CPU's fused ops, which tests/ops_cpu.rs checks against f64 references.
    #[test]
    fn composed_matches_the_fused_cpu_ops() {
        let be = Backend::cpu();
        let mut seed = 0x2_0a1u64;
        for (b, bx, n, c, groups, t, dy) in [(1usize, 1usize, 1usize, 1usize, 1usize, 1usize, 1usize), (3, 1, 70, 16, 8, 3, 2), (2, 2, 37, 32, 2, 7, 8)] {
            let r = groups * t;
            let x = tensor(&mut seed, &[bx, n, c], 1.0);
            let y = tensor(&mut seed, &[1, n, groups * dy], 1.0);
            let ax = tensor(&mut seed, &[b, r, c], 2.0 / (c as f32).sqrt());
            let (ay, u) = (tensor(&mut seed, &[b, r, dy], 1.0), tensor(&mut seed, &[b, r, c], 1.0));
            let (bias, lw, lb) = (tensor(&mut seed, &[c], 1.0), tensor(&mut seed, &[c], 1.0), tensor(&mut seed, &[c], 1.0));
            let p = TwoWayParams::new(groups);
            let s = two_way_shape("test", &x, &y, &ax, &ay, p).unwrap();
            let close = |what: &str, got: &Tensor, want: &Tensor| {
                assert_eq!(got.shape(), want.shape(), "{what}");
                for (i, (p, q)) in got.to_f32_vec().unwrap().iter().zip(want.to_f32_vec().unwrap()).enumerate() {
                    assert!((p - q).abs() <= 1e-4 + 1e-4 * q.abs(), "{what} B{b} N{n} C{c} [{i}]: composed {p}, fused {q}");
                }
            };
            let fused = be.two_way_update(&x, &y, &ax, &ay, &u, &bias, (&lw, &lb, 1e-6), p).unwrap();
            close("update", &composed_update(&be, &x, &y, &ax, &ay, &u, &bias, (&lw, &lb, 1e-6), &s).unwrap(), &fused);
            let fused = be.two_way_pool(&x, &y, &ax, &ay, p).unwrap();
            close("pool", &composed_pool(&be, &x, &y, &ax, &ay, &s).unwrap(), &fused);
        }
    }
}
