//! Pointwise ops: activations, broadcasting binary ops, softmax, RoPE.

use super::{check_f32, for_chunks, rows_per_task};
use crate::backend::Activation;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
}

#[inline]
pub fn act_scalar(x: f32, act: Activation) -> f32 {
    match act {
        Activation::None => x,
        Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            let c = (2.0f32 / std::f32::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        Activation::Relu => x.max(0.0),
        Activation::Silu => x / (1.0 + (-x).exp()),
    }
}

/// Apply `act` in place.
pub fn act_inplace(v: &mut [f32], act: Activation) {
    if act == Activation::None {
        return;
    }
    for_chunks(v, 16384, |_, c| super::vmath::act_slice(c, act));
}

pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    let mut out = check_f32("activate", x)?.to_vec();
    act_inplace(&mut out, act);
    Tensor::from_f32(out, x.shape().to_vec())
}

pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        return Err(Error::shape("silu_mul", format!("gate {:?} vs up {:?}", gate.shape(), up.shape())));
    }
    let (g, u) = (check_f32("silu_mul", gate)?, check_f32("silu_mul", up)?);
    let mut out = vec![0f32; g.len()];
    for_chunks(&mut out, 16384, |ci, o| super::vmath::silu_mul_slice(o, &g[ci * 16384..], &u[ci * 16384..]));
    Tensor::from_f32(out, gate.shape().to_vec())
}

pub fn affine(x: &Tensor, s: f32, t: f32) -> Result<Tensor> {
    let v: Vec<f32> = check_f32("affine", x)?.iter().map(|&a| a * s + t).collect();
    Tensor::from_f32(v, x.shape().to_vec())
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 { da } else if da == 1 { db } else { return None };
    }
    Some(out)
}

/// Strides of `s` aligned to an `n`-dim output, 0 on broadcast dims.
fn bstrides(s: &[usize], out: &[usize]) -> Vec<usize> {
    let n = out.len();
    let mut st = vec![0; n];
    let mut acc = 1;
    for i in (0..s.len()).rev() {
        let oi = i + n - s.len();
        st[oi] = if s[i] == 1 && out[oi] != 1 { 0 } else { acc };
        acc *= s[i];
    }
    st
}

pub fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let (av, bv) = (check_f32("binary", a)?, check_f32("binary", b)?);
    let f = move |x: f32, y: f32| match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
    };
    if a.shape() == b.shape() {
        let mut out = vec![0f32; av.len()];
        for_chunks(&mut out, 16384, |ci, o| {
            let (x, y) = (&av[ci * 16384..], &bv[ci * 16384..]);
            for i in 0..o.len() {
                o[i] = f(x[i], y[i]);
            }
        });
        return Tensor::from_f32(out, a.shape().to_vec());
    }
    let shape = broadcast_shape(a.shape(), b.shape())
        .ok_or_else(|| Error::shape("binary", format!("cannot broadcast {:?} with {:?}", a.shape(), b.shape())))?;
    let (sa, sb) = (bstrides(a.shape(), &shape), bstrides(b.shape(), &shape));
    let last = *shape.last().unwrap_or(&1);
    let n: usize = shape.iter().product();
    let mut out = vec![0f32; n];
    for_chunks(&mut out, last, |row, o| {
        // Offsets of this row's first element.
        let (mut ia, mut ib, mut r) = (0usize, 0usize, row);
        for d in (0..shape.len().saturating_sub(1)).rev() {
            let idx = r % shape[d];
            r /= shape[d];
            ia += idx * sa[d];
            ib += idx * sb[d];
        }
        let (la, lb) = (sa.last().copied().unwrap_or(0), sb.last().copied().unwrap_or(0));
        for (j, o) in o.iter_mut().enumerate() {
            *o = f(av[ia + j * la], bv[ib + j * lb]);
        }
    });
    Tensor::from_f32(out, shape)
}

pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let d = *x.shape().last().ok_or_else(|| Error::shape("softmax", "scalar input"))?;
    let xs = check_f32("softmax", x)?;
    let mut out = xs.to_vec();
    if d == 0 {
        return Tensor::from_f32(out, x.shape().to_vec());
    }
    for_chunks(&mut out, d * rows_per_task(d), |_, c| c.chunks_mut(d).for_each(softmax_row));
    Tensor::from_f32(out, x.shape().to_vec())
}

/// In-place numerically stable softmax of one row. A row of all −∞ becomes zeros.
pub fn softmax_row(r: &mut [f32]) {
    let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if m == f32::NEG_INFINITY {
        r.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let s = super::vmath::exp_shifted_sum(r, m);
    let inv = 1.0 / s;
    r.iter_mut().for_each(|v| *v *= inv);
}

/// HF rotate_half RoPE: out[..i] = x[i]·cos − x[i+h]·sin, out[i+h] = x[i+h]·cos + x[i]·sin.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, pos_offset: usize) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 4 || !s[3].is_multiple_of(2) {
        return Err(Error::shape("rope", format!("x must be [B, H, N, D] with even D, got {s:?}")));
    }
    let (n, d) = (s[2], s[3]);
    let h = d / 2;
    if cos.dims() != 2 || cos.dim(1) != h || cos.shape() != sin.shape() {
        return Err(Error::shape("rope", format!("cos/sin must be [max_pos, {h}], got {:?} / {:?}", cos.shape(), sin.shape())));
    }
    if pos_offset + n > cos.dim(0) {
        return Err(Error::shape("rope", format!("positions {}..{} exceed the table of {}", pos_offset, pos_offset + n, cos.dim(0))));
    }
    let (xs, cs, ss) = (check_f32("rope", x)?, check_f32("rope", cos)?, check_f32("rope", sin)?);
    let mut out = vec![0f32; xs.len()];
    for_chunks(&mut out, d * n, |ci, o| {
        let x = &xs[ci * d * n..][..d * n];
        for t in 0..n {
            let (c, sn) = (&cs[(pos_offset + t) * h..][..h], &ss[(pos_offset + t) * h..][..h]);
            let (xr, or) = (&x[t * d..][..d], &mut o[t * d..][..d]);
            for i in 0..h {
                let (a, b) = (xr[i], xr[i + h]);
                or[i] = a * c[i] - b * sn[i];
                or[i + h] = b * c[i] + a * sn[i];
            }
        }
    });
    Tensor::from_f32(out, s.to_vec())
}
