//! SAM's two-way ops on factored weights (`Backend::two_way_update`, `two_way_pool`; the
//! definitions are in src/backend/two_way.rs), fused: the update scores a block of 256 image
//! tokens of one prompt (a GEMM against the prompt's R rows), takes the grouped softmax, and
//! adds p·u, the residual and the LayerNorm in place; the pool scores a prompt's image tokens
//! transposed ([R, N], so each softmax runs along a contiguous row) and multiplies back. Neither
//! forms the [B, N, C] sums or the [B, N, R] scores of the composed path.

use rayon::prelude::*;

use super::matmul::sgemm_serial;
use super::norm::mean_inv_std;
use super::vmath::exp_shifted_sum;
use super::{check_f32, for_chunks, gemm_nt};
use crate::backend::TwoWayShape;
use crate::error::Result;
use crate::tensor::Tensor;

/// Image tokens per task of the update: their scores ([256, R], 57 KB at SAM's R = 56) stay in
/// L2, and 256 rows amortise each GEMM call better than 64 (2-core VM: 66 → 56 ms a call).
const UPDATE_ROWS: usize = 256;

/// s [rows, R] = x [rows, C] · ax [R, C]ᵀ: dot products along C (`gemm_nt`, AVX-512), else the
/// packed GEMM.
fn scores(s: &mut [f32], x: &[f32], ax: &[f32], rows: usize, r: usize, c: usize) {
    if gemm_nt::available() {
        gemm_nt::gemm_nt(x, rows, c, &[ax], &[r], &mut [s]);
    } else {
        sgemm_serial(rows, r, c, x, c, 1, ax, 1, c, s, false);
    }
}

/// s[i, r] += y[j0 + i, g(r)]·ay[r] for the rows of one block.
fn add_y_term(s: &mut [f32], y: &[f32], ay: &[f32], j0: usize, sh: &TwoWayShape) {
    let (r, t, dy, yw) = (sh.r, sh.t(), sh.dy, sh.groups * sh.dy);
    for (i, row) in s.chunks_mut(r).enumerate() {
        let yj = &y[(j0 + i) * yw..][..yw];
        for (ri, v) in row.iter_mut().enumerate() {
            *v += dot(&yj[(ri / t) * dy..][..dy], &ay[ri * dy..][..dy]);
        }
    }
}

/// a·b in 8 interleaved partial sums, which the compiler vectorises (a plain `sum()` of
/// products stays a serial chain of scalar adds).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn softmax_in_place(v: &mut [f32]) {
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let inv = 1.0 / exp_shifted_sum(v, m);
    v.iter_mut().for_each(|e| *e *= inv);
}

#[allow(clippy::too_many_arguments)]
pub fn two_way_update(x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, u: &Tensor, bias: &Tensor, ln: (&Tensor, &Tensor, f32), s: TwoWayShape) -> Result<Tensor> {
    const OP: &str = "two_way_update";
    let (xv, yv, axv, ayv, uv) = (check_f32(OP, x)?, check_f32(OP, y)?, check_f32(OP, ax)?, check_f32(OP, ay)?, check_f32(OP, u)?);
    let (bv, lw, lb, eps) = (check_f32(OP, bias)?, check_f32(OP, ln.0)?, check_f32(OP, ln.1)?, ln.2);
    let (n, c, r) = (s.n, s.c, s.r);
    let blocks_per_prompt = n.div_ceil(UPDATE_ROWS);
    let mut out = vec![0f32; s.b * n * c];
    // One task per block of image rows of one prompt; a block never straddles two prompts.
    let chunks: Vec<(usize, &mut [f32])> = out.chunks_mut(n * c).flat_map(|o| o.chunks_mut(UPDATE_ROWS * c)).enumerate().collect();
    chunks.into_par_iter().for_each(|(ci, o)| {
        let (b, j0) = (ci / blocks_per_prompt, (ci % blocks_per_prompt) * UPDATE_ROWS);
        let rows = o.len() / c;
        let xb = if s.bx == 1 { 0 } else { b };
        let xs = &xv[(xb * n + j0) * c..][..rows * c];
        let (axb, ayb, ub) = (&axv[b * r * c..][..r * c], &ayv[b * r * s.dy..][..r * s.dy], &uv[b * r * c..][..r * c]);
        // Scores [rows, R] = x·axᵀ + the y term, softmax within each group of T.
        let mut sc = vec![0f32; rows * r];
        scores(&mut sc, xs, axb, rows, r, c);
        add_y_term(&mut sc, yv, ayb, j0, &s);
        sc.chunks_mut(s.t()).for_each(softmax_in_place);
        // z = x + bias + p·u, then LayerNorm in place.
        for (orow, xrow) in o.chunks_mut(c).zip(xs.chunks(c)) {
            for ((o, &xe), &be) in orow.iter_mut().zip(xrow).zip(bv) {
                *o = xe + be;
            }
        }
        sgemm_serial(rows, c, r, &sc, r, 1, ub, c, 1, o, true);
        for row in o.chunks_mut(c) {
            let (mean, inv) = mean_inv_std(row, eps);
            for ((v, &w), &bb) in row.iter_mut().zip(lw).zip(lb) {
                *v = (*v - mean) * inv * w + bb;
            }
        }
    });
    Tensor::from_f32(out, vec![s.b, n, c])
}

pub fn two_way_pool(x: &Tensor, y: &Tensor, ax: &Tensor, ay: &Tensor, s: TwoWayShape) -> Result<Tensor> {
    const OP: &str = "two_way_pool";
    let (xv, yv, axv, ayv) = (check_f32(OP, x)?, check_f32(OP, y)?, check_f32(OP, ax)?, check_f32(OP, ay)?);
    let (n, c, r, t, dy) = (s.n, s.c, s.r, s.t(), s.dy);
    let yw = s.groups * dy;
    let mut out = vec![0f32; s.b * r * c];
    // One task per prompt: the transposed scores [R, N] (ax·xᵀ plus the y term), a softmax
    // along each row (vectorised exp), then p·x.
    for_chunks(&mut out, r * c, |b, o| {
        let xb = if s.bx == 1 { 0 } else { b };
        let xs = &xv[xb * n * c..][..n * c];
        let (axb, ayb) = (&axv[b * r * c..][..r * c], &ayv[b * r * dy..][..r * dy]);
        let mut sc = vec![0f32; r * n];
        sgemm_serial(r, n, c, axb, c, 1, xs, 1, c, &mut sc, false);
        for (ri, row) in sc.chunks_mut(n).enumerate() {
            let (g, ayr) = (ri / t, &ayb[ri * dy..][..dy]);
            for (j, v) in row.iter_mut().enumerate() {
                *v += dot(&yv[j * yw + g * dy..][..dy], ayr);
            }
            softmax_in_place(row);
        }
        sgemm_serial(r, c, n, &sc, n, 1, xs, c, 1, o, false);
    });
    Tensor::from_f32(out, vec![s.b, r, c])
}
